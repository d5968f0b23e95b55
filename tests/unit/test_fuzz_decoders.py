"""Property-based tests of every decoder a client reaches (hypothesis).

Inputs are structured where that reaches deeper than random bytes: valid requests first, then one or two
mutations (a field replaced by other JSON, a size or header length off by some bytes, a length prefix made
huge, bytes flipped or cut).  Each target (``tests/fuzz_targets.py``) asserts that only a
:class:`TritiumError` comes out, that memory stays within what the input justifies, and that refused input
changes no server state.  The coverage-guided harnesses in ``fuzz/`` run the same targets for longer.

Bounded for CI: the ``ci`` profile (the default) runs ``FUZZ_EXAMPLES`` examples per test with no
deadline; ``HYPOTHESIS_PROFILE=long`` runs many more by hand.
"""

from __future__ import annotations

import json
import os
import struct
import tracemalloc

import fuzz_targets as targets
import numpy as np
import orjson
import pytest
from fuzz_strategies import (
    WIRE_TYPES,
    bytes_buffers,
    config_jsons,
    config_texts,
    dumps,
    generate_bodies,
    grpc_messages,
    infer_bodies,
    logging_bodies,
    plain_grpc_messages,
    repository_requests,
    shm_requests,
    trace_bodies,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tritium._proto import grpc_service_pb2 as pb
from tritium.core.bytes_codec import deserialize_bytes_tensor
from tritium.core.errors import InvalidArgumentError, TritiumError
from tritium.core.types import DataType
from tritium.frontends.grpc import codec as grpc_codec
from tritium.frontends.http import codec as http_codec

settings.register_profile(
    "ci", max_examples=int(os.environ.get("FUZZ_EXAMPLES", "120")), deadline=None, derandomize=False,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    print_blob=True,
)
settings.register_profile(
    "long", max_examples=20_000, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(scope="module", autouse=True)
def _cleanup():
    yield
    if targets._REGIONS is not None:
        targets._REGIONS.close()
        targets._REGIONS = None


@given(infer_bodies(), st.sampled_from(targets.MODELS))
def test_http_infer_bodies(case, model):
    body, length = case
    if length is not None and not 0 < length <= len(body):
        return  # the route answers these itself (tested below through the API)
    targets.http_infer(body, length, model)


@given(st.binary(max_size=300), st.none() | st.integers(1, 300))
def test_http_infer_random_bytes(body, length):
    if length is not None and length > len(body):
        length = len(body) or None
    targets.http_infer(body, length)


@given(st.lists(st.tuples(st.sampled_from(WIRE_TYPES), st.lists(st.integers(0, 2), max_size=2)),
                min_size=1, max_size=400))
def test_http_plan_cache_stays_bounded(headers):
    """Headers that vary per request never grow the plan cache past its bound."""
    for wire, shape in headers:
        dtype = DataType.from_wire(wire)
        count = int(np.prod(shape)) if shape else 1
        size = 4 * count if dtype is DataType.BYTES else dtype.itemsize * count
        blob = struct.pack("<I", 0) * count if dtype is DataType.BYTES else bytes(size)
        header = dumps({"inputs": [{"name": f"x{len(http_codec._PLANS)}", "datatype": wire, "shape": shape,
                                    "parameters": {"binary_data_size": size}}]})
        http_codec.decode_infer_request(header + blob, len(header), "m", 1)
        assert len(http_codec._PLANS) <= http_codec.MAX_PLANS


@given(st.binary(max_size=64), st.sampled_from(WIRE_TYPES),
       st.lists(st.sampled_from([-1, 0, 1, 2, 3, 2**31, 2**62]), max_size=3))
def test_http_raw_binary_request(body, wire, shape):
    targets.raw_infer(body, wire, shape)


@given(bytes_buffers())
def test_bytes_deserialization(case):
    targets.bytes_tensor(*case)


def test_bytes_huge_length_prefix_is_refused_before_allocating():
    """A 4 GiB length prefix, and 2**40 elements declared by a shape: refused, nothing large allocated."""
    for buffer, count in ((struct.pack("<I", 2**32 - 1) + b"abc", 1), (b"\0" * 16, 2**40), (b"", 2**62)):
        assert isinstance(targets.bytes_tensor(buffer, count), InvalidArgumentError)
    header = dumps({"inputs": [{"name": "INPUT1", "datatype": "BYTES", "shape": [2**40],
                                "parameters": {"binary_data_size": 8}}]})
    error = targets.http_infer(header + struct.pack("<I", 2**32 - 1) + b"abcd", len(header))
    assert isinstance(error, InvalidArgumentError), error
    tracemalloc.start()
    try:
        with pytest.raises(InvalidArgumentError, match="BYTES"):
            deserialize_bytes_tensor(b"\0\0\0\0" * 4, 2**40, "x")
        assert tracemalloc.get_traced_memory()[1] < 1 << 20
    finally:
        tracemalloc.stop()


@given(grpc_messages(), st.sampled_from(targets.MODELS))
def test_grpc_infer_messages(data, model):
    targets.grpc_infer(data, model)


@given(grpc_messages() | plain_grpc_messages(), st.text(max_size=300), st.data())
def test_grpc_infer_messages_again_by_plan(data, new_id, draw):
    """The same message with another id and raw contents, decoded by the plan the first one left (when it
    could have one): the contract checks that the plan's request is the full decode's."""
    targets.grpc_infer(data)
    message = pb.ModelInferRequest()
    try:
        message.ParseFromString(data)
    except Exception:  # noqa: BLE001 - a mutated message protobuf refuses: covered above
        return
    message.id = new_id
    for i, raw in enumerate(message.raw_input_contents):
        if draw.draw(st.booleans()):
            message.raw_input_contents[i] = draw.draw(st.binary(min_size=len(raw), max_size=len(raw))
                                                      | st.binary(max_size=len(raw) + 8))
    targets.grpc_infer(message.SerializeToString())


@given(st.binary(max_size=200))
def test_grpc_infer_random_bytes(data):
    targets.grpc_infer(data)


@given(generate_bodies(), st.sampled_from(targets.MODELS))
def test_generate_bodies(body, model):
    targets.generate(body, model)


@given(config_texts())
def test_config_text(text):
    targets.config_text(text)


@given(config_jsons())
def test_config_json(text):
    targets.config_json(text)


@pytest.fixture(scope="module")
def api():
    target = targets.ApiTarget()
    yield target
    target.close()


@settings(max_examples=max(20, settings().max_examples // 2))
@given(repository_requests())
def test_repository_bodies(api, case):
    path, body = case
    api.handle("POST", path, body)


@given(logging_bodies())
def test_logging_bodies(api, body):
    api.handle("POST", "/v2/logging", body)


@given(trace_bodies(), st.sampled_from(["/v2/trace/setting", "/v2/models/broken/trace/setting"]))
def test_trace_setting_bodies(api, body, path):
    api.handle("POST", path, body)


@given(trace_bodies(), st.sampled_from(["", "some_model"]))
def test_trace_settings_of_a_model(body, model):
    """The trace manager's per-model settings (the route checks the model is loaded first)."""
    from tritium.trace import TraceConfig, TraceManager

    tracer = TraceManager(TraceConfig.parse([]))
    try:
        changes = orjson.loads(body)
    except orjson.JSONDecodeError:
        return
    if not isinstance(changes, dict):
        return
    before = (dict(tracer._global_values), {k: dict(v) for k, v in tracer._overrides.items()})
    _, error = targets.refused_or_result(tracer.settings, model, changes, size=len(body), what="trace settings")
    after = (dict(tracer._global_values), {k: dict(v) for k, v in tracer._overrides.items()})
    if error is not None:
        assert before == after, f"refused trace settings changed the tracer: {error}"


@given(shm_requests())
def test_shared_memory_register_bodies(api, case):
    path, action, doc = case
    if isinstance(doc, dict) and isinstance(doc.get("key"), str):
        doc["key"] = doc["key"].replace("KEY", api.shm_key)
    body = dumps(doc)
    api.handle("GET" if action == "status" else "POST", path, body)


@given(infer_bodies(), st.sampled_from(["/v2/models/m/infer", "/v2/models/m/generate"]),
       st.sampled_from([None, "gzip", "deflate"]))
def test_infer_bodies_through_the_route(api, case, path, encoding):
    """The route's own part: Inference-Header-Content-Length parsing, decompression, then a real model."""
    import zlib

    body, length = case
    headers = {}
    if length is not None:
        headers["inference-header-content-length"] = str(length)
    if encoding is not None:
        headers["content-encoding"] = encoding
        body = zlib.compress(body) if encoding == "deflate" else __import__("gzip").compress(body)
    api.handle("POST", path, body, headers)
    assert len(http_codec._PLANS) <= http_codec.MAX_PLANS


@given(st.sampled_from(["/v2/repository/index", "/v2/repository/models/fuzzed/load", "/v2/logging",
                        "/v2/trace/setting", "/v2/systemsharedmemory/region/r/register",
                        "/v2/models/m/generate", "/v2/models/m/infer"]),
       st.binary(max_size=120),
       st.fixed_dictionaries({}, optional={"content-encoding": st.sampled_from(["gzip", "deflate", "br", "identity"]),
                                           "inference-header-content-length": st.sampled_from(
                                               ["0", "-1", "5", "x", "99999999999999999999", ""])}))
def test_api_random_bodies(api, path, body, headers):
    api.handle("POST", path, body, headers)


# -- what the fuzzing found (each was a crash: an exception other than TritiumError) ----------------------

@pytest.mark.parametrize("shape", [[0, 2**64 - 1], [0, 2**62, 2**62], [2**63, 0]])
def test_found_shapes_without_elements_that_no_array_can_have(shape):
    """numpy refuses them even with no elements (ValueError 'array is too big' / 'Maximum allowed dimension')."""
    doc = {"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": shape, "data": []}]}
    with pytest.raises(InvalidArgumentError, match="larger than any tensor"):
        http_codec.decode_infer_request(dumps(doc), None, "m", 1)
    header = dumps({"inputs": [{"name": "INPUT1", "datatype": "BYTES", "shape": shape,
                                "parameters": {"binary_data_size": 0}}]})
    with pytest.raises(InvalidArgumentError, match="larger than any tensor"):
        http_codec.decode_infer_request(header, len(header), "m", 1)
    if max(shape) < 2**63:
        message = pb.ModelInferRequest(model_name="m")
        message.inputs.add(name="INPUT0", datatype="FP32", shape=shape)
        message.raw_input_contents.append(b"")
        decoded = grpc_codec.decode_request_bytes(message.SerializeToString())
        with pytest.raises(InvalidArgumentError, match="larger than any tensor"):
            grpc_codec.to_inference_request(decoded, "m", 1)
    with pytest.raises(InvalidArgumentError, match="larger than any tensor"):
        http_codec.decode_raw_request(b"", "m", 1, "INPUT0", DataType.UINT16, [-1, 2**62])


def test_found_generate_integers_out_of_the_input_types_range():
    from tritium.frontends.http.generate import decode_generate_request

    for value in (2**63, 300, -129):
        with pytest.raises(InvalidArgumentError, match="INPUT2.*INT8"):
            decode_generate_request(dumps({"INPUT2": [0, value, 1, 2]}), targets.MODELS[0])


def test_found_grpc_groups_are_skipped_as_protobuf_skips_them():
    """A group (wire type 3) is an unknown field to protobuf; the pre-parser refused the whole message."""
    message = pb.ModelInferRequest(model_name="m")
    message.inputs.add(name="INPUT0", datatype="FP32", shape=[1])
    raw = b"\0\0\x80\x3f"
    group = b"\x5b" + b"\x0a\x01x" + b"\x63\x64" + b"\x3a\x01y" + b"\x5c"  # group 11 { 1: "x", group 12 {}, 7: "y" }
    data = message.SerializeToString() + group + b"\x3a\x04" + raw
    decoded = grpc_codec.decode_request_bytes(data)
    assert decoded.error is None and [bytes(r) for r in decoded.raw] == [raw]
    request = grpc_codec.to_inference_request(decoded, "m", 1)
    assert request.inputs[0].data.tolist() == [1.0]
    for bad in (b"\x5b\x0a\x01x", b"\x5b\x64", b"\x5c"):  # unterminated, mismatched, an end without a start
        assert grpc_codec.decode_request_bytes(message.SerializeToString() + bad).error is not None
    assert "missing required" in str(targets.grpc_infer(data))  # decoded, then validated against the model


def test_found_repository_bodies(api):
    """Base64 text with non-ASCII characters; override file names with NUL, too long, or clashing."""
    import base64

    config = dumps({"name": "fuzzed", "backend": "onnxruntime"}).decode()
    ok = base64.b64encode(b"x").decode()
    for files in ({"file:1/model.onnx": "\u00e9AAA"}, {"file:a\0b": ok}, {"file:1/" + "a" * 300: ok},
                  {"file:1/a": ok, "file:1/a/b": ok}):
        status = api.handle("POST", "/v2/repository/models/fuzzed/load",
                            dumps({"parameters": {"config": config, **files}}))
        assert status == 400


def test_found_shared_memory_key_with_nul(api):
    status = api.handle("POST", "/v2/systemsharedmemory/region/r/register",
                        dumps({"key": api.shm_key + "\0x", "offset": 0, "byte_size": 8}))
    assert status == 500  # Triton's code for a region it cannot open


@pytest.mark.parametrize("text", [
    'name: "m" backend: "onnxruntime" input [{ name: "a" data_type: 77 dims: [1] }]',
    'name: "m" backend: "onnxruntime" instance_group [{ kind: 9 }]',
    'name: "m" backend: "onnxruntime" output [{ name: "z" data_type: 2147483648 dims: [1] }]',
    'name: "m" backend: "onnxruntime" model_warmup [{ name: "w" inputs { key: "a" value { data_type: 99 '
    'dims: [1] zero_data: true } } }]',
    'name: "m" backend: "onnxruntime" model_warmup [{ name: "w" inputs { key: "a" value { data_type: TYPE_FP32 '
    'dims: [1] input_data_file: "w\\000.bin" } } }]',
    'name: "m" backend: "onnxruntime" output [{ name: "z" data_type: TYPE_FP32 dims: [1] label_filename: "l\\0" }]',
])
def test_found_config_enum_numbers_and_nul_characters(text):
    """Open enums take any number; a NUL in a file name made open() raise ValueError."""
    from tritium.config.parse import parse_config_text
    from tritium.core.errors import ModelConfigError

    with pytest.raises(ModelConfigError):
        parse_config_text(text, "m")
    assert isinstance(targets.config_text(text), ModelConfigError)


def test_found_config_json_enum_numbers_and_bytes():
    from tritium.config.parse import config_from_json
    from tritium.core.errors import ModelConfigError

    with pytest.raises(ModelConfigError, match=r"input\[0\]\.data_type"):
        config_from_json('{"input": [{"name": "a", "data_type": 2147483647, "dims": [1]}]}', "m")
    with pytest.raises(ModelConfigError):
        config_from_json(b'\xff{"name": "m"}', "m")


def test_found_warmup_samples_declaring_huge_or_untyped_inputs():
    from tritium.config.parse import parse_config_text
    from tritium.core.model import Model
    from tritium.repository.warmup import sample_request

    config = parse_config_text(
        'name: "m" backend: "onnxruntime" max_batch_size: 8 model_warmup [{ name: "w" batch_size: 8 inputs { '
        'key: "a" value { data_type: TYPE_FP32 dims: [65536, 65536] zero_data: true } } }, { name: "t" inputs { '
        'key: "a" value { dims: [1] zero_data: true } } }, { name: "o" inputs { key: "a" value { data_type: '
        'TYPE_INT8 dims: [4611686018427387904, 4] random_data: true } } }]', "m")
    model = Model("m", 1, config, scheduler=None)
    tracemalloc.start()
    try:
        for sample, match in zip(config.model_warmup, ["more than", "data_type", "more than"]):
            with pytest.raises(InvalidArgumentError, match=match):
                sample_request(model, sample, "/nonexistent")
        assert tracemalloc.get_traced_memory()[1] < 1 << 20
    finally:
        tracemalloc.stop()


def test_found_refused_model_trace_settings_change_nothing():
    from tritium.trace import TraceConfig, TraceManager

    tracer = TraceManager(TraceConfig.parse([]))
    with pytest.raises(InvalidArgumentError, match="trace file"):
        tracer.settings("some_model", {"trace_level": ["TIMESTAMPS"]})
    assert tracer._overrides == {} and tracer.settings("some_model") == tracer.settings()


# -- the gRPC frontend's other messages (settings, repository, shared memory) -------------------------------

def _repository_param(draw, value):
    param = pb.ModelRepositoryParameter()
    choice = draw(st.sampled_from(["string_param", "bytes_param", "bool_param", "int64_param", None]))
    if choice == "string_param":
        param.string_param = value if isinstance(value, str) else draw(st.text(max_size=8))
    elif choice == "bytes_param":
        param.bytes_param = value.encode() if isinstance(value, str) else draw(st.binary(max_size=16))
    elif choice == "bool_param":
        param.bool_param = draw(st.booleans())
    elif choice == "int64_param":
        param.int64_param = draw(st.integers(-(2**63), 2**63 - 1))
    return param


@st.composite
def grpc_control_calls(draw):
    """(servicer method, request message) for the logging, trace, repository and shared-memory RPCs."""
    kind = draw(st.sampled_from(["log", "trace", "load", "unload", "index", "shm"]))
    if kind == "log":
        request = pb.LogSettingsRequest()
        for key in draw(st.lists(st.sampled_from(["log_info", "log_warning", "log_error", "log_verbose_level",
                                                  "log_format", "log_file", "x"]), max_size=4)):
            param = request.settings[key]
            choice = draw(st.sampled_from(["bool_param", "uint32_param", "string_param", None]))
            if choice == "bool_param":
                param.bool_param = draw(st.booleans())
            elif choice == "uint32_param":
                param.uint32_param = draw(st.integers(0, 2**32 - 1))
            elif choice == "string_param":
                param.string_param = draw(st.sampled_from(["default", "ISO8601", "", "/tmp/x"]) | st.text(max_size=5))
        return "log_settings", request
    if kind == "trace":
        request = pb.TraceSettingRequest(model_name=draw(st.sampled_from(["", "", "m", "broken", "nope"])))
        for key in draw(st.lists(st.sampled_from(["trace_level", "trace_rate", "trace_count", "log_frequency",
                                                  "trace_file", "trace_mode", "x"]), max_size=4)):
            request.settings[key].value.extend(draw(st.lists(
                st.sampled_from(["OFF", "TIMESTAMPS", "TENSORS", "0", "1", "-1", "100", "triton", "x", ""])
                | st.text(max_size=4), max_size=3)))
        return "trace_setting", request
    if kind in ("load", "unload"):
        cls = pb.RepositoryModelLoadRequest if kind == "load" else pb.RepositoryModelUnloadRequest
        request = cls(model_name=draw(st.sampled_from(["broken", "fuzzed", "missing", ""])),
                      repository_name=draw(st.sampled_from(["", "", "other"])))
        config = json.dumps({"name": request.model_name, "backend": "onnxruntime",
                             "input": [{"name": "a", "data_type": "TYPE_FP32", "dims": [1]}]})
        for key in draw(st.lists(st.sampled_from(["config", "file:1/model.onnx", "file:../x", "file:a\0b",
                                                  "unload_dependents", "file:"]), max_size=3)):
            request.parameters[key].CopyFrom(_repository_param(draw, config if key == "config" else "xyz"))
        return f"repository_model_{kind}", request
    if kind == "index":
        return "repository_index", pb.RepositoryIndexRequest(repository_name=draw(st.sampled_from(["", "x"])),
                                                             ready=draw(st.booleans()))
    request = pb.SystemSharedMemoryRegisterRequest(
        name=draw(st.sampled_from(["r", ""]) | st.text(max_size=4)),
        key=draw(st.sampled_from(["KEY", "/KEY", "nope", "a\0b", "", "../x"])),
        offset=draw(st.sampled_from([0, 4096, 4095, 2**63, 2**64 - 1])),
        byte_size=draw(st.sampled_from([0, 1, 8192, 8193, 2**64 - 1])))
    return "system_shared_memory_register", request


@given(grpc_control_calls())
def test_grpc_control_messages(api, call):
    method, request = call
    if method == "system_shared_memory_register":
        request.key = request.key.replace("KEY", api.shm_key)
    api.grpc(method, request)



def test_found_override_folder_named_after_the_client_chosen_model_name(api):
    """A NUL in the name made mkdtemp raise ValueError; '../' in it put the folder outside the temporary area."""
    before = sorted(os.listdir(api.root))
    for name in ("f\0zed", "../../escape", "a/b"):
        request = pb.RepositoryModelLoadRequest(model_name=name)
        request.parameters["config"].string_param = json.dumps({"backend": "onnxruntime"})
        request.parameters["file:1/model.onnx"].bytes_param = b"not onnx"
        assert isinstance(api.grpc("repository_model_load", request), TritiumError)
        assert sorted(os.listdir(api.root)) == before and os.listdir(api.temp) == []


@pytest.mark.parametrize("datatype", ["FP32", "BYTES", "INT8"])
def test_declared_sizes_are_refused_before_allocating(datatype):
    """Shapes of 2**40 and 2**62 elements in every decoder: refused, and the peak stays under 1 MiB."""
    small = b"\0\0\0\0"
    for shape in ([2**40], [2**31, 2**31], [2**62]):
        doc = {"inputs": [{"name": "INPUT0", "datatype": datatype, "shape": shape,
                           "data": ["a"] if datatype == "BYTES" else [1]}]}
        header = dumps({"inputs": [{"name": "INPUT0", "datatype": datatype, "shape": shape,
                                    "parameters": {"binary_data_size": 4}}]})
        message = pb.ModelInferRequest(model_name="m")
        message.inputs.add(name="INPUT0", datatype=datatype, shape=shape)
        message.raw_input_contents.append(small)
        typed = pb.ModelInferRequest(model_name="m")
        item = typed.inputs.add(name="INPUT0", datatype=datatype, shape=shape)
        if datatype == "BYTES":
            item.contents.bytes_contents.append(b"a")
        elif datatype == "INT8":
            item.contents.int_contents.append(1)
        else:
            item.contents.fp32_contents.append(1)
        for decode in (lambda: http_codec.decode_infer_request(dumps(doc), None, "m", 1),
                       lambda: http_codec.decode_infer_request(header + small, len(header), "m", 1),
                       lambda: grpc_codec.to_inference_request(
                           grpc_codec.decode_request_bytes(message.SerializeToString()), "m", 1),
                       lambda: grpc_codec.to_inference_request(
                           grpc_codec.decode_request_bytes(typed.SerializeToString()), "m", 1)):
            tracemalloc.start()
            try:
                with pytest.raises(InvalidArgumentError):
                    decode()
                assert tracemalloc.get_traced_memory()[1] < 1 << 20
            finally:
                tracemalloc.stop()


def test_found_json_floats_beyond_fp32_become_inf_as_tritons_cast():
    """3.4028235677973366e+38 is just above FP32's largest value: a C++ cast gives inf (Triton), numpy warned
    (an error under -W error, and noise in a server's log)."""
    from tritium.frontends.http.generate import decode_generate_request

    request = decode_generate_request(dumps({"INPUT0": 3.4028235677973366e38}), targets.MODELS[0])
    assert np.isinf(request.inputs[0].data).all()
    for data in ([3.5e38, 1.0], [[3.5e38], [1]]):
        request, _ = http_codec.decode_infer_request(
            dumps({"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [2], "data": data}]}), None, "m", 1)
        assert np.isinf(request.inputs[0].data[0]) and request.inputs[0].data[1] == 1.0
