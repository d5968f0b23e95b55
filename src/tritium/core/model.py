"""A loaded model version: validates requests against its config, then hands them to its scheduler.

Validation happens here, once, before anything is queued, so schedulers and
backends can trust names, data types and shapes.  Checks are precomputed from
the config at load time to keep the per-request cost small.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tritium._proto import model_config_pb2 as mc
from tritium.config.parse import config_to_dict

from .classification import classify
from .errors import InternalError, InvalidArgumentError, TritiumError, request_error
from .inference import InferenceRequest, InferenceResponse
from .response_cache import CachedResponse, ResponseCache, cache_key, now_ns
from .streaming import ResponseStream, StreamItem
from .types import DataType, Tensor

if TYPE_CHECKING:
    from tritium.scheduler.base import Scheduler


log = logging.getLogger(__name__)

#: Loads of cache-enabled models in this process (each load's local cache entries are its own).
_LOADS = itertools.count(1)

#: What C's ``strtol`` reads (as Triton's ``std::stol``): blanks, a sign, digits; the rest is ignored.
_VERSION_TEXT = re.compile(r"[ \t\n\v\f\r]*([+-]?[0-9]+)")
_LONG_MAX = 2**63 - 1


def parse_version(text: str) -> int:
    """A model version as a client names it in a URL or a request, read as Triton reads it: empty is ``-1``
    (the version policy chooses), otherwise the leading integer, which must fit a 64-bit ``long`` and not be
    negative, in Triton's words when it does not."""
    if not text:
        return -1
    if text.isascii() and text.isdigit() and len(text) < 19:
        return int(text)
    match = _VERSION_TEXT.match(text)
    version = int(match.group(1)) if match else None
    if version is None or not -_LONG_MAX - 1 <= version <= _LONG_MAX:
        raise InvalidArgumentError(f"failed to get model version from specified version string '{text}' (details: "
                                   "stol), version should be an integral value > 0")
    if version < 0:
        raise InvalidArgumentError(
            f"invalid model version specified '{text}' , version should be an integral value > 0")
    return version


def _cancelled(request: InferenceRequest) -> None:
    """The caller stopped waiting (its task was cancelled): tell the backend executing the request, if any."""
    if request.on_cancel is not None:
        request.on_cancel()


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """One input or output of the config, with the shapes precomputed."""

    name: str
    datatype: DataType
    dims: tuple[int, ...]
    #: Shape the model itself sees (``reshape``), or ``None`` when equal to ``dims``.
    reshape: tuple[int, ...] | None
    optional: bool = False

    @classmethod
    def from_config(cls, tensor: mc.ModelInput | mc.ModelOutput) -> TensorSpec:
        reshape = tuple(tensor.reshape.shape) if tensor.HasField("reshape") else None
        return cls(
            name=tensor.name,
            datatype=DataType.from_config(mc.DataType.Name(tensor.data_type)),
            dims=tuple(tensor.dims),
            reshape=reshape,
            optional=getattr(tensor, "optional", False),
        )

    def metadata_shape(self, max_batch_size: int) -> list[int]:
        return ([-1] if max_batch_size > 0 else []) + list(self.dims)


def _shape_str(shape: Sequence[int]) -> str:
    return "[" + ",".join(str(d) for d in shape) + "]"


class Model:
    """One READY version of a model."""

    def __init__(
        self,
        name: str,
        version: int,
        config: mc.ModelConfig,
        scheduler: Scheduler,
        labels: dict[str, list[str]] | None = None,
        cache: ResponseCache | None = None,
    ) -> None:
        self.name = name
        self.version = version
        self.config = config
        self.scheduler = scheduler
        self.max_batch_size = config.max_batch_size
        self.inputs = {t.name: TensorSpec.from_config(t) for t in config.input}
        self.outputs = {t.name: TensorSpec.from_config(t) for t in config.output}
        self.required_inputs = [s.name for s in self.inputs.values() if not s.optional]
        self.decoupled = config.model_transaction_policy.decoupled
        self._config_dict: dict[str, Any] | None = None
        #: Class labels per output (``label_filename``), for the classification extension.
        self.labels = labels or {}
        #: The server's response cache when the config enables it (``response_cache { enable: true }``).
        self.cache = cache
        #: The model as its cache keys name it: this load of it, unless other servers share the cache.
        self._cache_name = name if cache is None or cache.shared else f"{name}\0load {next(_LOADS)}"

    # -- metadata ---------------------------------------------------------------------------------

    @property
    def platform(self) -> str:
        return self.config.platform or self.config.backend

    def config_dict(self) -> dict[str, Any]:
        if self._config_dict is None:
            self._config_dict = config_to_dict(self.config)
        return self._config_dict

    # -- inference --------------------------------------------------------------------------------

    async def infer(self, request: InferenceRequest, validated: bool = False) -> InferenceResponse:
        """One request, one response (models that are not decoupled); ``validated``: the caller has run
        :meth:`validate` (which applies ``reshape``, so it runs once)."""
        if not validated:
            self.validate(request)
        if self.cache is not None:
            return await self._cached(request)
        if request.trace is None:  # the common path, with no frame in between
            try:
                return self._shape_response(request, await self.scheduler.infer(request))
            except asyncio.CancelledError:
                _cancelled(request)
                raise
        return await self._execute(request)

    async def _execute(self, request: InferenceRequest, stamp: bool = True) -> InferenceResponse:
        """Through the scheduler, traced when sampled (``stamp``: the trace's start is still to be stamped)."""
        trace = request.trace
        try:
            if trace is None:
                return self._shape_response(request, await self.scheduler.infer(request))
            if stamp:
                trace.stamp("REQUEST_START")
                trace.add_tensors("TENSOR_QUEUE_INPUT", request.inputs)
            response = self._shape_response(request, await self.scheduler.infer(request))
        except asyncio.CancelledError:
            _cancelled(request)
            raise
        trace.add_tensors("TENSOR_BACKEND_OUTPUT", response.outputs)
        return response

    async def _cached(self, request: InferenceRequest, stamp: bool = True) -> InferenceResponse:
        """Answer from the cache, or execute and store a successful response.  Statistics as Triton's: a hit
        counts as a success (and its queue), never as an inference or execution; a miss adds its lookup and
        insertion time to ``cache_miss``, the execution counting as usual."""
        cache = self.cache
        assert cache is not None
        counters = cache.counters
        stats = self.scheduler.stats
        start = now_ns()
        key = cache_key(request, self._cache_name, self.version)
        entry = await cache.lookup(key)
        if entry is not None and cache.shared and not self._answers(request, entry):
            entry = None
        looked = now_ns()
        counters.lookups += 1
        counters.lookup_ns += looked - start
        if entry is not None:
            counters.hits += 1
            response = entry.response(request, self.name, self.version)
            end = now_ns()
            stats.record_cache_hit(start, looked, end)
            trace = request.trace
            if trace is not None:  # no execution to stamp: the request's start, its lookup and its end
                if stamp:
                    trace.stamp("REQUEST_START", start)
                    trace.add_tensors("TENSOR_QUEUE_INPUT", request.inputs)
                trace.stamp("QUEUE_START", start)
                trace.stamp("REQUEST_END", end)
                trace.add_tensors("TENSOR_BACKEND_OUTPUT", response.outputs)
            return response
        counters.misses += 1
        try:
            response = await self._execute(request, stamp)
        except BaseException:
            stats.record_cache_miss(looked - start)
            raise
        inserting = now_ns()
        await cache.insert(key, response)
        inserted = now_ns()
        counters.insertion_ns += inserted - inserting
        stats.record_cache_miss(looked - start + inserted - inserting)
        return response

    def _answers(self, request: InferenceRequest, entry: CachedResponse) -> bool:
        """Whether an entry of a cache other servers write (Redis) fits this model and request: outputs of its
        config with their data types (BYTES where classification was asked), and only those asked for.  One that
        does not (another repository's model of the same name, a tampered entry) is a miss, logged."""
        wanted = request.requested_outputs
        classification = request.classification or {}
        for tensor in entry.outputs:
            spec = self.outputs.get(tensor.name)
            classified = tensor.name in classification
            expected = DataType.BYTES if classified else (spec.datatype if spec is not None else None)
            if tensor.datatype is not expected or (wanted is not None and tensor.name not in wanted):
                log.warning("model '%s': a response cache entry with output '%s' (%s) does not fit the model; "
                            "it is executed instead", self.name, tensor.name, tensor.datatype.wire_name)
                return False
        return True

    async def stream(self, request: InferenceRequest, validated: bool = False) -> AsyncIterator[StreamItem]:
        """Every response of one request as the model sends it, ending with a final item.

        For a model that is not decoupled this is its one response, marked final.  Errors come as a
        final item with ``error`` set, so a streaming frontend can report them per request.
        """
        try:
            if not validated:
                self.validate(request)
        except TritiumError as e:
            yield StreamItem(None, True, e)
            return
        if request.trace is not None:
            request.trace.stamp("REQUEST_START")
            request.trace.add_tensors("TENSOR_QUEUE_INPUT", request.inputs)
        if not self.decoupled:
            try:
                if self.cache is not None:
                    response = await self._cached(request, stamp=False)
                else:
                    response = self._shape_response(request, await self.scheduler.infer(request))
            except TritiumError as e:
                yield StreamItem(None, True, e)
                return
            except asyncio.CancelledError:
                _cancelled(request)
                raise
            yield StreamItem(response, True)
            return
        stream = ResponseStream(asyncio.get_running_loop())
        request.response_stream = stream
        execution = asyncio.ensure_future(self.scheduler.infer(request))

        def failed(task: asyncio.Future[InferenceResponse]) -> None:
            # execute() returning ends nothing (responses may still come); an error ends the stream.
            if not task.cancelled() and task.exception() is not None:
                error = task.exception()
                stream.fail(error if isinstance(error, TritiumError) else InternalError(str(error)))

        execution.add_done_callback(failed)
        try:
            async for item in stream.items():
                if item.response is not None:
                    item.response = self._shape_response(request, item.response)
                yield item
        finally:
            if not execution.done():
                execution.cancel()

    def validate(self, request: InferenceRequest) -> None:  # noqa: C901  every check inline: once per request
        """Check names, data types, shapes and batch size; apply input ``reshape``.

        Raises :class:`InvalidArgumentError` with Triton's wording (clients match on it): errors Triton's
        core raises carry its ``[request id: ...]`` prefix, those its frontends raise do not.
        """
        name = self.name
        inputs = self.inputs
        mbs = self.max_batch_size
        batch_size = -1
        seen: set[str] = set()
        for tensor in request.inputs:
            spec = inputs.get(tensor.name)
            if spec is None:
                raise InvalidArgumentError(f"unexpected inference input '{tensor.name}' for model '{name}'")
            if tensor.name in seen:
                raise request_error(request.id, f"input '{tensor.name}' already exists in request")
            seen.add(tensor.name)
            if tensor.datatype is not spec.datatype:
                raise request_error(
                    request.id,
                    f"inference input '{tensor.name}' data-type is '{tensor.datatype.wire_name}', "
                    f"but model '{name}' expects '{spec.datatype.wire_name}'",
                )
            shape = tensor.data.shape
            if mbs > 0:
                if not shape:
                    raise request_error(
                        request.id,
                        f"unexpected shape for input '{tensor.name}' for model '{name}'. Expected "
                        f"{_shape_str(spec.metadata_shape(mbs))}, got []. {_BATCH_NOTE}",
                    )
                if batch_size < 0:
                    batch_size = shape[0]
                    if batch_size > mbs:
                        raise request_error(request.id, f"inference request batch-size must be <= {mbs} for '{name}'")
                    if batch_size < 1:
                        raise request_error(request.id, f"inference request batch-size must be >= 1 for '{name}'")
                elif shape[0] != batch_size:
                    raise request_error(
                        request.id, f"input '{tensor.name}' batch size does not match other inputs for '{name}'"
                    )
                item_shape = shape[1:]
            else:
                item_shape = shape
            if not _dims_match(item_shape, spec.dims):
                raise request_error(
                    request.id,
                    f"unexpected shape for input '{tensor.name}' for model '{name}'. Expected "
                    f"{_shape_str(spec.metadata_shape(mbs))}, got {_shape_str(shape)}. "
                    + (_BATCH_NOTE if mbs > 0 else ""),
                )
            if spec.reshape is not None:
                lead = shape[:1] if mbs > 0 else ()
                tensor.data = tensor.data.reshape(lead + _resolve(spec.reshape, item_shape, spec.dims))
        if len(seen) < len(self.inputs):
            missing = [n for n in self.required_inputs if n not in seen]
            if missing:
                got = ",".join(f"'{n}'" for n in sorted(seen))
                want = ",".join(f"'{n}'" for n in missing)
                required = len(self.required_inputs)
                if len(request.inputs) < required:
                    head = f"expected {required} inputs but got {len(request.inputs)} inputs for model '{name}'. "
                else:  # optional inputs in place of required ones (Triton counts only, and runs the model)
                    head = f"missing required inputs for model '{name}'. "
                raise request_error(
                    request.id,
                    f"{head}Got input(s) [{got}], but missing required input(s) [{want}]. Please provide "
                    "all required input(s).",
                )
        if request.requested_outputs is not None:
            for output in request.requested_outputs:
                if output not in self.outputs:
                    raise InvalidArgumentError(f"unexpected inference output '{output}' for model '{name}'")
        request.batch_size = batch_size if mbs > 0 else 1
        params = request.parameters
        if params and ("priority" in params or "timeout" in params):
            # Scheduling parameters, not the model's: taken out as Triton's frontends do.
            if "priority" in params:
                request.priority = _uint_parameter(params.pop("priority"), "priority")
            if "timeout" in params:
                request.timeout_us = _uint_parameter(params.pop("timeout"), "timeout")

    def _shape_response(self, request: InferenceRequest, response: InferenceResponse) -> InferenceResponse:
        """Keep the outputs the client asked for, each once, in the order the model gave them (as Triton
        answers: not in the order asked), and undo output ``reshape``.  Asking for none asks for every output
        of the configuration, and only those: one the model makes up is dropped, as Triton drops it."""
        outputs = response.outputs
        wanted = request.requested_outputs
        if wanted is not None:
            outputs = [t for t in outputs if t.name in wanted]
        elif self.outputs and any(t.name not in self.outputs for t in outputs):
            outputs = [t for t in outputs if t.name in self.outputs]
        for i, tensor in enumerate(outputs):
            spec = self.outputs.get(tensor.name)
            if spec is not None and spec.reshape is not None:
                lead = tensor.data.shape[:1] if self.max_batch_size > 0 else ()
                dims = tuple(-1 if d < 0 else d for d in spec.dims)
                outputs[i] = Tensor(tensor.name, tensor.datatype, tensor.data.reshape(lead + dims))
        if request.classification:
            for i, tensor in enumerate(outputs):
                count = request.classification.get(tensor.name)
                if count is not None:
                    outputs[i] = classify(tensor, count, self.max_batch_size > 0, self.labels.get(tensor.name))
        response.outputs = outputs
        response.model_name = self.name
        response.model_version = self.version
        response.id = request.id
        return response


_BATCH_NOTE = (
    "NOTE: Setting a non-zero max_batch_size in the model config requires a batch dimension to be prepended to each "
    "input shape. If you want to specify the full shape including the batch dim in your input dims config, try "
    "setting max_batch_size to zero. See the model configuration docs for more info on max_batch_size."
)



def _uint_parameter(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidArgumentError(f"request parameter '{name}' must be a non-negative integer, got {value!r}")
    return value


def _dims_match(shape: Sequence[int], dims: Sequence[int]) -> bool:
    if len(shape) != len(dims):
        return False
    for got, want in zip(shape, dims):  # noqa: B905  lengths compared above; hot path
        if want != -1 and got != want:
            return False
    return True


def _resolve(reshape: tuple[int, ...], item_shape: Sequence[int], dims: Sequence[int]) -> tuple[int, ...]:
    """The model-side shape of one item: ``reshape`` with its variable dims taken from the request."""
    if -1 not in reshape:
        return reshape
    variable = iter(g for g, d in zip(item_shape, dims) if d == -1)  # noqa: B905  matched by _dims_match
    return tuple(next(variable, -1) if d == -1 else d for d in reshape)
