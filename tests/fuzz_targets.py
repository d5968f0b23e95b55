"""The decoders a client reaches, wrapped with the contract every one of them must keep.

Shared by the property-based tests (``tests/unit/test_fuzz_decoders.py``) and the coverage-guided harnesses
(``fuzz/harness.py``): each target takes what a client sends and asserts

* only the server's own error type comes out (:class:`TritiumError`): any other exception is a bug;
* no allocation beyond what the input justifies (tracemalloc's peak, numpy's arrays included), so a
  declared size (a BYTES length prefix of 4 GiB, a shape of ``[2**40]``) is refused before allocating;
* the server-side state is unchanged by a refused input (the binary header plan cache, shared-memory
  regions, log and trace settings, the repository index) and caches stay bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import tempfile
import tracemalloc
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from tritium._proto import model_config_pb2 as mc
from tritium.config.autocomplete import fill_backend_fields
from tritium.config.ensemble import ensemble_steps, is_ensemble
from tritium.config.parse import config_from_json, config_to_dict, parse_config_text
from tritium.config.validate import check_instance_groups, normalize, validate
from tritium.core.bytes_codec import deserialize_bytes_tensor, serialize_bytes_tensor
from tritium.core.errors import TritiumError
from tritium.core.model import Model
from tritium.core.shm_regions import SystemSharedMemory
from tritium.frontends.grpc import codec as grpc_codec
from tritium.frontends.http import codec as http_codec
from tritium.frontends.http.generate import decode_generate_request

#: Memory a decoder may use beyond what its input justifies (tracemalloc counts Python's and numpy's).
BASE_BYTES = 4 << 20
#: ... and per byte of input: parsed JSON, object arrays of BYTES elements and copies stay well under it.
PER_INPUT_BYTE = 64


class ContractError(AssertionError):
    """A decoder broke its contract: the message says how (the cause is chained)."""


@contextlib.contextmanager
def bounded_memory(input_size: int, what: str) -> Iterator[None]:
    """Fail when the block's peak allocation exceeds ``BASE_BYTES + PER_INPUT_BYTE * input_size``."""
    started = not tracemalloc.is_tracing()
    if started:
        tracemalloc.start()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    try:
        yield
    finally:
        peak = tracemalloc.get_traced_memory()[1] - base
        if started:
            tracemalloc.stop()
    limit = BASE_BYTES + PER_INPUT_BYTE * input_size
    if peak > limit:
        raise ContractError(f"{what}: allocated {peak} bytes for {input_size} bytes of input (limit {limit})")


def refused_or_result(fn: Callable[..., Any], *args: Any, size: int, what: str) -> tuple[Any, TritiumError | None]:
    """Run a decoder: (result, None), or (None, the TritiumError it raised); anything else is a bug."""
    try:
        with bounded_memory(size, what):
            return fn(*args), None
    except TritiumError as e:
        if not str(e):
            raise ContractError(f"{what}: {type(e).__name__} without a message") from e
        return None, e
    except ContractError:
        raise
    except BaseException as e:  # noqa: BLE001 - the point: nothing but TritiumError may escape
        if isinstance(e, KeyboardInterrupt):
            raise
        raise ContractError(f"{what}: raised {type(e).__name__}: {e}") from e


# -- the models requests are checked against -----------------------------------------------------------

from fuzz_strategies import MODEL_CONFIG  # noqa: E402  (the model config requests are checked against)


def make_model(max_batch_size: int) -> Model:
    """A model to check decoded requests against (validation needs no scheduler)."""
    config = parse_config_text(MODEL_CONFIG % max_batch_size, "m")
    return Model("m", 1, config, scheduler=None)  # type: ignore[arg-type]


MODELS = (make_model(0), make_model(4))


# -- shared-memory regions tensors may name -------------------------------------------------------------

SHM_PREFIX = "tritium_fuzz_"


def shm_file(tag: str, size: int) -> str:
    """A /dev/shm file (``tritium_fuzz_<tag>_<pid>``) for regions to map; first removes those of processes
    that are gone (a libFuzzer run ends without running Python's cleanup)."""
    for entry in os.listdir("/dev/shm"):
        if entry.startswith(SHM_PREFIX):
            pid = entry.rsplit("_", 1)[-1]
            if pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join("/dev/shm", entry))
    key = f"{SHM_PREFIX}{tag}_{os.getpid()}"
    with open(os.path.join("/dev/shm", key), "wb") as f:
        f.write(bytes(range(256)) * (size // 256) + bytes(range(size % 256)))
    return key


class Regions:
    """A real registered region (``r0``, 64 bytes of a file in /dev/shm) for tensors to name."""

    SIZE = 64

    def __init__(self) -> None:
        self.key = shm_file("regions", self.SIZE)
        self.regions = SystemSharedMemory()
        self.regions.register("r0", self.key, 0, self.SIZE)

    def snapshot(self) -> list[tuple[str, str, int, int]]:
        return [(r.name, r.key, r.offset, r.byte_size) for r in self.regions.status()]

    def close(self) -> None:
        self.regions.unregister()
        with contextlib.suppress(OSError):
            os.unlink(os.path.join("/dev/shm", self.key))


_REGIONS: Regions | None = None


def regions() -> Regions:
    global _REGIONS
    if _REGIONS is None:
        _REGIONS = Regions()
    return _REGIONS


# -- HTTP infer (JSON, binary extension) -----------------------------------------------------------------

def _tensors(request: Any) -> list[tuple[str, str, tuple[int, ...], bytes]]:
    out = []
    for t in request.inputs:
        data = t.data
        raw = serialize_bytes_tensor(data) if t.datatype.wire_name == "BYTES" else np.ascontiguousarray(data).tobytes()
        out.append((t.name, t.datatype.wire_name, tuple(data.shape), raw))
    return out


def http_infer(body: bytes, header_length: int | None, model: Model | None = None) -> TritiumError | None:
    """``/v2/models/m/infer``: decode (twice: the second time through the header plan cache) and validate.

    Also: a refused body adds no plan, the cache stays at its bound, and a request decoded through a cached
    plan equals the full decode of the same body.
    """
    cache = http_codec._PLANS
    before = dict(cache)
    shm = regions()
    shm_before = shm.snapshot()
    model = model or MODELS[0]
    size = len(body)
    decoded, error = refused_or_result(http_codec.decode_infer_request, body, header_length, "m", 1, shm.regions,
                                       size=size, what="HTTP infer decode")
    if len(cache) > http_codec.MAX_PLANS:
        raise ContractError(f"binary header plan cache grew to {len(cache)} (bound {http_codec.MAX_PLANS})")
    if shm.snapshot() != shm_before:
        raise ContractError("decoding an infer request changed the registered shared-memory regions")
    if error is not None:
        if cache.keys() - before.keys():
            raise ContractError("a refused infer request added a binary header plan")
        return error
    again, error2 = refused_or_result(http_codec.decode_infer_request, body, header_length, "m", 1, shm.regions,
                                      size=size, what="HTTP infer decode (cached plan)")
    if error2 is not None:
        raise ContractError(f"a body decoded once was refused the second time: {error2}")
    request, encoding = decoded
    request2, encoding2 = again
    if _tensors(request) != _tensors(request2) or request.requested_outputs != request2.requested_outputs \
            or encoding.binary_default != encoding2.binary_default or encoding.binary != encoding2.binary:
        raise ContractError("the cached header plan decoded a body differently from the full decode")
    _, error = refused_or_result(model.validate, request, size=size, what="request validation")
    return error


def raw_infer(body: bytes, datatype: str, shape: list[int]) -> TritiumError | None:
    """Triton's raw binary request (``Inference-Header-Content-Length: 0``) for a one-input model."""
    from tritium.core.types import DataType

    _, error = refused_or_result(http_codec.decode_raw_request, body, "m", 1, "INPUT0", DataType(datatype), shape,
                                 size=len(body), what="raw binary infer decode")
    return error


# -- BYTES -----------------------------------------------------------------------------------------------

def bytes_tensor(buffer: bytes, count: int) -> TritiumError | None:
    """Triton's BYTES serialization: a decoded buffer re-serializes to the same bytes."""
    array, error = refused_or_result(deserialize_bytes_tensor, buffer, count, "x", size=len(buffer) + 8,
                                     what="BYTES deserialization")
    if error is None:
        if array.shape != (count,) or serialize_bytes_tensor(array) != bytes(buffer):
            raise ContractError("a BYTES buffer did not decode to exactly its elements")
    return error


# -- gRPC ModelInferRequest -----------------------------------------------------------------------------

def _outcome(fn: Callable[..., Any], *args: Any) -> Any:
    """What ``fn`` returns, or the text of the error it raises."""
    try:
        return fn(*args)
    except TritiumError as e:
        return f"{type(e).__name__}: {e}"


def _same_as_without_plans(decoded: Any, data: bytes, shm_regions: Any) -> None:
    """A request decoded by plan equals the one the full decode (protobuf's parse) makes of the same bytes."""
    saved, last = dict(grpc_codec._PLANS), grpc_codec._last[0]
    grpc_codec._PLANS.clear()
    grpc_codec._last[0] = None
    try:
        full = grpc_codec.decode_request_bytes(data)
        fast: Any = _outcome(grpc_codec.to_inference_request, decoded, "m", 1, shm_regions)
        slow: Any = _outcome(grpc_codec.to_inference_request, full, "m", 1, shm_regions)
    finally:
        grpc_codec._PLANS.clear()
        grpc_codec._PLANS.update(saved)
        grpc_codec._last[0] = last
    if isinstance(fast, str) or isinstance(slow, str):
        if fast != slow:
            raise ContractError(f"a gRPC request decoded by plan fails otherwise than its full decode: {fast} / {slow}")
        return
    if full.message is None or (fast.id, fast.requested_outputs, fast.parameters) != (
            slow.id, slow.requested_outputs, slow.parameters):
        raise ContractError("a gRPC request decoded by plan differs from its full decode")
    for a, b in zip(fast.inputs, slow.inputs, strict=True):
        values = (lambda t: t.data.tolist()) if a.data.dtype == object else (lambda t: t.data.tobytes())
        if (a.name, a.datatype, a.data.shape) != (b.name, b.datatype, b.data.shape) or values(a) != values(b):
            raise ContractError(f"input {a.name!r} decoded by plan differs from its full decode")


def grpc_infer(data: bytes, model: Model | None = None) -> TritiumError | None:
    """``ModelInfer``: the wire pre-parser (raw contents cut out), the request, validation.

    The pre-parser must agree with protobuf: what it accepts protobuf parses to the same message and
    raw contents.
    """
    from tritium._proto import grpc_service_pb2 as pb

    shm = regions()
    shm_before = shm.snapshot()
    model = model or MODELS[0]
    size = len(data)
    decoded, error = refused_or_result(grpc_codec.decode_request_bytes, data, size=size, what="gRPC pre-parse")
    if error is not None:
        raise ContractError(f"decode_request_bytes must never raise, it raised {error!r}")
    reference = pb.ModelInferRequest()
    try:
        reference.ParseFromString(data)
        parsed = True
    except Exception:  # noqa: BLE001 - protobuf's own verdict, compared below
        parsed = False
    if decoded.error is None:
        if not parsed:
            raise ContractError("the gRPC pre-parser accepted a message protobuf refuses")
        if [bytes(r) for r in decoded.raw] != list(reference.raw_input_contents):
            raise ContractError("the gRPC pre-parser cut out other raw_input_contents than protobuf reads")
        if (decoded.model_name, decoded.model_version, decoded.id) != (
                reference.model_name, reference.model_version, reference.id):
            raise ContractError("the gRPC pre-parser read another model, version or id than protobuf")
        if decoded.message is None:  # a plan stood for the message: it must mean what the full decode says
            _same_as_without_plans(decoded, data, shm.regions)
        else:
            rest = pb.ModelInferRequest()
            rest.CopyFrom(reference)
            del rest.raw_input_contents[:]
            if rest != decoded.message:
                raise ContractError("the gRPC pre-parser's message differs from protobuf's")
    else:
        if parsed:
            raise ContractError(f"the gRPC pre-parser refused a message protobuf parses: {decoded.error}")
        return None
    request, error = refused_or_result(grpc_codec.to_inference_request, decoded, "m", 1, shm.regions, size=size,
                                       what="gRPC request decode")
    if shm.snapshot() != shm_before:
        raise ContractError("decoding a gRPC request changed the registered shared-memory regions")
    if error is not None:
        return error
    _, error = refused_or_result(model.validate, request, size=size, what="request validation")
    return error


# -- generate extension ---------------------------------------------------------------------------------

def generate(body: bytes, model: Model | None = None) -> TritiumError | None:
    """``/v2/models/m/generate``: the flat JSON body, then validation as the route does."""
    model = model or MODELS[0]
    request, error = refused_or_result(decode_generate_request, body, model, size=len(body), what="generate decode")
    if error is not None:
        return error
    _, error = refused_or_result(model.validate, request, size=len(body), what="request validation")
    return error


# -- model configuration --------------------------------------------------------------------------------

_EMPTY_DIR: str | None = None


def _empty_dir() -> str:
    global _EMPTY_DIR
    if _EMPTY_DIR is None:
        _EMPTY_DIR = tempfile.mkdtemp(prefix="tritium-fuzz-model-")
    return _EMPTY_DIR


def _check_config(config: mc.ModelConfig) -> None:
    """What a load does with a config before a backend sees it (ModelRepositoryManager._build)."""
    from tritium.config.sequence import sequence_settings

    fill_backend_fields(config, _empty_dir())
    if not config.name:
        config.name = "m"
    normalize(config, "m", [], 1)
    validate(config, "m")
    if is_ensemble(config):
        ensemble_steps(config, "m")
        return
    check_instance_groups(config, "m", [])
    if config.HasField("sequence_batching"):
        sequence_settings(config, _empty_dir())
    config_to_dict(config)  # what /config answers
    if config.model_warmup:
        from tritium.repository import warmup

        model = Model("m", 1, config, scheduler=None)  # type: ignore[arg-type]
        saved, warmup.MAX_INPUT_BYTES = warmup.MAX_INPUT_BYTES, 1 << 20  # within the test's memory bound
        try:
            for sample in config.model_warmup:
                warmup.sample_request(model, sample, _empty_dir())
        finally:
            warmup.MAX_INPUT_BYTES = saved


def config_text(text: str) -> TritiumError | None:
    """``config.pbtxt`` text → ModelConfig → the checks of a load."""
    size = len(text.encode("utf-8", "surrogatepass")) + 1
    config, error = refused_or_result(parse_config_text, text, "m", size=size, what="config.pbtxt parse")
    if error is not None:
        return error
    _, error = refused_or_result(_check_config, config, size=size, what="config checks")
    return error


def config_json(text: str | bytes) -> TritiumError | None:
    """A JSON config (the repository API's ``config`` override) → ModelConfig → the checks of a load."""
    size = len(text) + 1
    config, error = refused_or_result(config_from_json, text, "m", size=size, what="JSON config parse")
    if error is not None:
        return error
    _, error = refused_or_result(_check_config, config, size=size, what="config checks")
    return error


# -- the HTTP API's other bodies, against a running server (no sockets) ------------------------------------

class ApiTarget:
    """A started :class:`Server` (explicit model control, no listeners) and its HTTP API, for the bodies of
    the repository, logging, trace and shared-memory extensions, and of ``/infer`` and ``/generate`` (model
    ``m``: ONNX identity, FP32 ``[-1]``).  ``handle`` sends one request and checks that the answer is a JSON
    error or success, that nothing but a TritiumError comes out of the route, and that a refused request changed
    nothing."""

    def __init__(self) -> None:
        from tritium.frontends.http.routes import HttpApi
        from tritium.logsettings import LogManager, LogSettings
        from tritium.options import ServerOptions
        from tritium.server import Server

        self.root = tempfile.mkdtemp(prefix="tritium-fuzz-api-")
        self.repo = os.path.join(self.root, "repo")
        self.temp = os.path.join(self.root, "tmp")  # override folders go under the server's temporary area
        os.makedirs(self.temp)
        broken = os.path.join(self.repo, "broken", "1")
        os.makedirs(broken)
        with open(os.path.join(self.repo, "broken", "config.pbtxt"), "w") as f:
            f.write('name: "broken"\nbackend: "no_such_backend"\n')
        from models import identity_graph, write_model

        write_model(self.repo, "m", identity_graph("FP32", (-1,)), config=IDENTITY_CONFIG)
        self._saved_tempdir = tempfile.tempdir
        self._saved_handlers = logging.getLogger().handlers[:]
        self._saved_level = logging.getLogger().level
        tempfile.tempdir = self.temp
        self.loop = asyncio.new_event_loop()
        options = ServerOptions(model_repositories=[self.repo], model_control_mode="explicit", load_models=["m"],
                                allow_http=False,
                                allow_grpc=False, allow_metrics=False, allow_client_shm=True)
        logs = LogManager(LogSettings())
        logs.handler.setLevel(logging.CRITICAL + 1)  # settings change, nothing is printed
        self.server = Server(options, logs)
        self.loop.run_until_complete(self.server.start())
        self.api = HttpApi(self.server, 1 << 20)
        self.shm_key = shm_file("api", 8192)

    def state(self) -> dict[str, Any]:
        server = self.server
        return {
            "index": self.loop.run_until_complete(server.repository_index()),
            "log": dict(server.log_settings()),
            "trace": server.trace_settings(),
            "trace_models": {name: dict(v) for name, v in server.tracer._overrides.items()},
            "shm": [(r.name, r.key, r.offset, r.byte_size) for r in server.system_shm.status()],
            "temp": _override_folders(self.temp),
        }

    def handle(self, method: str, path: str, body: bytes, headers: dict[str, str] | None = None) -> int:
        """One request; returns the status.  Refused: state unchanged.  Any answer: JSON, no leftovers."""
        import orjson

        from tritium.frontends.http.routes import HttpRequest

        before = self.state()
        request = HttpRequest(method, path, headers or {}, body)
        try:
            with bounded_memory(len(body), f"{method} {path}"):
                response = self.loop.run_until_complete(self.api.handle(request))
        except ContractError:
            raise
        except BaseException as e:  # noqa: BLE001
            if isinstance(e, KeyboardInterrupt):
                raise
            raise ContractError(f"{method} {path}: raised {type(e).__name__}: {e}") from e
        after = self.state()
        payload = b"".join(bytes(p) for p in response.body)
        if response.status >= 400:
            try:
                message = orjson.loads(payload)["error"]
            except Exception as e:  # noqa: BLE001
                raise ContractError(f"{method} {path}: error answer is not a JSON error: {payload[:200]!r}") from e
            if not message:
                raise ContractError(f"{method} {path}: empty error message")
            if not _load_attempted(path, before, after) and before != after:
                raise ContractError(f"{method} {path} was refused ({message}) but changed the server: "
                                    f"{_diff(before, after)}")
        if after["temp"]:
            # a refused load leaves nothing; a successful one keeps its folder while the model serves
            if response.status >= 400:
                raise ContractError(f"{method} {path}: a refused load left {after['temp']} behind")
        self.reset()
        return response.status

    def grpc(self, method: str, request: Any) -> TritiumError | None:
        """One gRPC call (the servicer method, as the gRPC frontend runs it without its status mapping): only a
        TritiumError may come out, and a refused call changes nothing (a load that was attempted aside)."""
        from tritium.frontends.grpc.server import GrpcApi

        before = self.state()
        handler = getattr(GrpcApi(self.server), method)
        size = request.ByteSize()
        _, error = refused_or_result(lambda: self.loop.run_until_complete(handler(request, None)), size=size,
                                    what=f"gRPC {method}")
        after = self.state()
        if error is not None and not (method == "repository_model_load" and _load_attempted("/load", before, after)) \
                and before != after:
            raise ContractError(f"gRPC {method} was refused ({error}) but changed the server: {_diff(before, after)}")
        if error is not None and after["temp"]:
            raise ContractError(f"gRPC {method}: a refused load left {after['temp']} behind")
        self.reset()
        return error

    def reset(self) -> None:
        """Back to the starting state after a request that was accepted (so examples stay independent)."""
        server = self.server
        server.system_shm.unregister()
        server.log_settings({"log_info": True, "log_warning": True, "log_error": True, "log_verbose_level": 0,
                             "log_format": "default"})
        tracer = server.tracer
        for model in list(tracer._overrides):
            tracer.settings(model, {key: None for key in ("trace_level", "trace_rate", "trace_count", "log_frequency")})
        tracer.settings("", {key: None for key in ("trace_level", "trace_rate", "trace_count", "log_frequency")})
        repository = server.repository
        assert repository is not None
        for name in [n for n in repository._models if n not in ("broken", "m")]:
            self.loop.run_until_complete(repository.unload(name))
            repository._models.pop(name, None)
        self.loop.run_until_complete(repository.wait_retired())
        for entry in os.listdir(self.temp):
            shutil.rmtree(os.path.join(self.temp, entry), ignore_errors=True)

    def close(self) -> None:
        try:
            self.loop.run_until_complete(self.server.stop())
        finally:
            self.loop.close()
            tempfile.tempdir = self._saved_tempdir
            root = logging.getLogger()
            root.handlers[:] = self._saved_handlers
            root.setLevel(self._saved_level)
            with contextlib.suppress(OSError):
                os.unlink(os.path.join("/dev/shm", self.shm_key))
            shutil.rmtree(self.root, ignore_errors=True)


IDENTITY_CONFIG = """
backend: "onnxruntime"
max_batch_size: 0
input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ -1 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ -1 ] } ]
"""


def _override_folders(temp: str) -> list[str]:
    """What the server left in its temporary area: its own folder of override folders (made once, kept until
    shutdown) counts only by the override folders inside it."""
    found = []
    for entry in sorted(os.listdir(temp)):
        path = os.path.join(temp, entry)
        if entry.startswith("tritium-overrides-") and os.path.isdir(path):
            found.extend(f"{entry}/{inner}" for inner in sorted(os.listdir(path)))
        else:
            found.append(entry)
    return found


def _load_attempted(path: str, before: dict[str, Any], after: dict[str, Any]) -> bool:
    """A load that got as far as reading its config records its outcome in the index, as Triton's does."""
    return path.endswith("/load") and before["index"] != after["index"] and before["temp"] == after["temp"] \
        and before["log"] == after["log"] and before["shm"] == after["shm"] and before["trace"] == after["trace"]


def _diff(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    return {k: (before[k], after[k]) for k in before if before[k] != after[k]}
