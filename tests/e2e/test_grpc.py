"""A real tritium server driven through tritonclient.grpc (sync, aio and streaming), as users drive Triton.

Bad input that tritonclient cannot express is sent with the stubs tritonclient ships
(``tritonclient.grpc.service_pb2``): the wire format is Triton's, so they must work unchanged.
Expected error texts and codes were checked against a real tritonserver (2.51).
"""

from __future__ import annotations

import asyncio
import base64
import queue
import threading

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc
from tritonclient.utils import InferenceServerException

from models import identity_graph, write_add_sub, write_model
from server import RunningServer

ALL_TYPES = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32", "FP64",
             "BYTES"]
MAX_INPUT = 80 * 1024 * 1024  # --grpc-max-input-size of this module's server
NUMPY = {"BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
         "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64, "FP16": np.float16,
         "FP32": np.float32, "FP64": np.float64, "BYTES": np.object_}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    repo = str(tmp_path_factory.mktemp("grpc_repo"))
    write_add_sub(repo)
    for dt in ALL_TYPES:
        config_type = "TYPE_STRING" if dt == "BYTES" else f"TYPE_{dt}"
        write_model(repo, f"id_{dt.lower()}", identity_graph(dt, (-1,)), config=f"""
            backend: "onnxruntime"
            input [ {{ name: "INPUT0" data_type: {config_type} dims: [ -1 ] }} ]
            output [ {{ name: "OUTPUT0" data_type: {config_type} dims: [ -1 ] }} ]
        """)
    with RunningServer([repo], [f"--grpc-max-input-size={MAX_INPUT}"]) as s:
        yield s


@pytest.fixture(scope="module")
def client(server):
    c = grpcclient.InferenceServerClient(server.grpc_url)
    yield c
    c.close()


@pytest.fixture(scope="module")
def stub(server):
    channel = grpc.insecure_channel(server.grpc_url, options=[("grpc.max_receive_message_length", -1),
                                                             ("grpc.max_send_message_length", -1)])
    yield pb_grpc.GRPCInferenceServiceStub(channel)
    channel.close()


def _input(name, array, datatype=None):
    inp = grpcclient.InferInput(name, list(array.shape), datatype or ("INT32" if array.dtype == np.int32 else "FP32"))
    inp.set_data_from_numpy(array)
    return inp


def _add_sub_inputs(a=None, b=None):
    a = np.arange(16, dtype=np.int32).reshape(1, 16) if a is None else a
    b = np.ones((1, 16), np.int32) if b is None else b
    return [_input("INPUT0", a), _input("INPUT1", b)]


def _sample(dt, n=7):
    if dt == "BYTES":
        return np.array([b"hello", b"", "ünï".encode(), "€".encode(), b"x" * 300, b"a", b"b"][:n], dtype=object)
    if dt == "BOOL":
        return np.array([True, False] * 4, dtype=bool)[:n]
    info = np.finfo if dt.startswith("FP") else np.iinfo
    dtype = NUMPY[dt]
    return np.array([info(dtype).min, info(dtype).max, 0, 1, 2, 3, 5][:n], dtype=dtype)


# -- health and metadata ------------------------------------------------------------------------------


def test_health(client):
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("add_sub")
    assert not client.is_model_ready("no_such_model")
    assert not client.is_model_ready("add_sub", "7")


def test_server_metadata(client, server):
    meta = client.get_server_metadata()
    assert meta.name == "triton" and meta.version
    assert "binary_tensor_data" in meta.extensions
    as_json = client.get_server_metadata(as_json=True)
    assert as_json["name"] == "triton"


def test_model_metadata(client):
    meta = client.get_model_metadata("add_sub")
    assert meta.name == "add_sub" and list(meta.versions) == ["1"] and meta.platform == "onnxruntime_onnx"
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [
        ("INPUT0", "INT32", [-1, 16]), ("INPUT1", "INT32", [-1, 16])]
    doc = client.get_model_metadata("add_sub", as_json=True)
    assert doc["outputs"][1] == {"name": "OUTPUT1", "datatype": "INT32", "shape": ["-1", "16"]}


def test_model_config_protobuf_and_json(client, server):
    config = client.get_model_config("add_sub").config
    assert config.name == "add_sub" and config.max_batch_size == 8
    assert [i.name for i in config.input] == ["INPUT0", "INPUT1"]
    assert config.input[0].data_type == 8  # TYPE_INT32 in Triton's model_config.proto
    doc = client.get_model_config("add_sub", as_json=True)["config"]
    assert doc["name"] == "add_sub" and doc["backend"] == "onnxruntime"
    assert doc["output"][0]["data_type"] == "TYPE_INT32"
    import tritonclient.http as httpclient

    http_doc = httpclient.InferenceServerClient(server.url).get_model_config("add_sub")
    assert http_doc["instance_group"][0]["count"] == int(doc["instance_group"][0]["count"])


def test_health_service(server):
    from tritium._proto import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(server.grpc_url) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""))
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


# -- inference ------------------------------------------------------------------------------------------


def test_add_sub(client):
    a = np.arange(32, dtype=np.int32).reshape(2, 16)
    b = np.full((2, 16), 3, np.int32)
    result = client.infer("add_sub", _add_sub_inputs(a, b), request_id="req-1")
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)
    response = result.get_response()
    assert response.id == "req-1" and response.model_name == "add_sub" and response.model_version == "1"


@pytest.mark.parametrize("dt", ALL_TYPES)
def test_every_datatype(client, dt):
    data = _sample(dt)
    result = client.infer(f"id_{dt.lower()}", [_input("INPUT0", data, dt)])
    out = result.as_numpy("OUTPUT0")
    assert out.shape == data.shape
    if dt == "BYTES":
        assert list(out) == list(data)
    else:
        assert out.dtype == data.dtype
        np.testing.assert_array_equal(out, data)


def test_requested_outputs_in_the_models_order(client):
    # as Triton's backends answer: in the order the model gives its outputs, not the order asked
    outputs = [grpcclient.InferRequestedOutput("OUTPUT1"), grpcclient.InferRequestedOutput("OUTPUT0")]
    response = client.infer("add_sub", _add_sub_inputs(), outputs=outputs).get_response()
    assert [o.name for o in response.outputs] == ["OUTPUT0", "OUTPUT1"]
    only = client.infer("add_sub", _add_sub_inputs(), outputs=outputs[:1]).get_response()
    assert [o.name for o in only.outputs] == ["OUTPUT1"]


def test_request_parameters_accepted(client):
    result = client.infer("add_sub", _add_sub_inputs(), parameters={"text": "v", "number": 3, "flag": True})
    assert result.as_numpy("OUTPUT0") is not None


def test_empty_tensor(client):
    result = client.infer("id_int32", [_input("INPUT0", np.zeros(0, np.int32))])
    assert result.as_numpy("OUTPUT0").shape == (0,)


def _typed_request(model, dt, field, values, shape):
    contents = pb.InferTensorContents(**{field: values})
    tensor = pb.ModelInferRequest.InferInputTensor(name="INPUT0", datatype=dt, shape=shape, contents=contents)
    return pb.ModelInferRequest(model_name=model, inputs=[tensor], id="typed")


@pytest.mark.parametrize("dt, field, values, expected", [
    ("BOOL", "bool_contents", [True, False, True], np.array([True, False, True])),
    ("INT8", "int_contents", [-128, 127, 5], np.array([-128, 127, 5], np.int8)),
    ("INT16", "int_contents", [-3, 300], np.array([-3, 300], np.int16)),
    ("INT32", "int_contents", [1, 2, 3], np.array([1, 2, 3], np.int32)),
    ("INT64", "int64_contents", [-(2**62), 2**62], np.array([-(2**62), 2**62], np.int64)),
    ("UINT8", "uint_contents", [0, 255], np.array([0, 255], np.uint8)),
    ("UINT16", "uint_contents", [65535], np.array([65535], np.uint16)),
    ("UINT32", "uint_contents", [2**32 - 1], np.array([2**32 - 1], np.uint32)),
    ("UINT64", "uint64_contents", [2**64 - 1, 0], np.array([2**64 - 1, 0], np.uint64)),
    ("FP32", "fp32_contents", [1.5, -2.25], np.array([1.5, -2.25], np.float32)),
    ("FP64", "fp64_contents", [1e300, -0.5], np.array([1e300, -0.5], np.float64)),
    ("BYTES", "bytes_contents", [b"ab", b"", b"\x00"], np.array([b"ab", b"", b"\x00"], dtype=object)),
])
def test_typed_contents(stub, dt, field, values, expected):
    request = _typed_request(f"id_{dt.lower()}", dt, field, values, [len(values)])
    response = stub.ModelInfer(request)
    assert response.id == "typed" and len(response.raw_output_contents) == 1  # answers are raw, as Triton's
    result = grpcclient.InferResult(response)
    out = result.as_numpy("OUTPUT0")
    if dt == "BYTES":
        assert list(out) == list(expected)
    else:
        np.testing.assert_array_equal(out, expected)


def test_large_tensor_64mib(client):
    data = np.arange(16 * 1024 * 1024, dtype=np.float32)  # 64 MiB
    out = client.infer("id_fp32", [_input("INPUT0", data)]).as_numpy("OUTPUT0")
    assert out.shape == data.shape and out[-1] == data[-1] and np.array_equal(out[::4096], data[::4096])


def test_oversize_request_is_resource_exhausted(client):
    data = np.zeros(MAX_INPUT // 4 + 1024, dtype=np.float32)
    with pytest.raises(InferenceServerException) as info:
        client.infer("id_fp32", [_input("INPUT0", data)])
    assert info.value.status() == "StatusCode.RESOURCE_EXHAUSTED", info.value
    assert client.is_server_live()


def test_client_request_compression(client):
    a = np.arange(32, dtype=np.int32).reshape(2, 16)
    for algorithm in ("gzip", "deflate"):
        result = client.infer("add_sub", _add_sub_inputs(a, a), compression_algorithm=algorithm)
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), 2 * a)


def test_aio_client(server):
    async def run():
        async with aioclient.InferenceServerClient(server.grpc_url) as c:
            assert await c.is_server_ready()
            meta = await c.get_model_metadata("add_sub")
            assert meta.name == "add_sub"
            a = np.arange(16, dtype=np.int32).reshape(1, 16)
            results = await asyncio.gather(*[
                c.infer("add_sub", [_aio_input("INPUT0", a + i), _aio_input("INPUT1", a)], request_id=str(i))
                for i in range(16)])
            for i, result in enumerate(results):
                assert result.get_response().id == str(i)
                np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), np.full((1, 16), i, np.int32))

    asyncio.run(run())


def _aio_input(name, array, datatype="INT32"):
    inp = aioclient.InferInput(name, list(array.shape), datatype)
    inp.set_data_from_numpy(array)
    return inp


# -- streaming ----------------------------------------------------------------------------------------


def test_stream_interleaves_two_models(server):
    """Many requests of two models on one stream; every response arrives, matched by id, in any order."""
    c = grpcclient.InferenceServerClient(server.grpc_url)
    results: queue.Queue = queue.Queue()
    c.start_stream(callback=lambda result, error: results.put((result, error)))
    n = 40
    try:
        for i in range(n):
            if i % 2:
                c.async_stream_infer("id_int64", [_input("INPUT0", np.arange(i, dtype=np.int64), "INT64")],
                                     request_id=f"id-{i}")
            else:
                a = np.full((1, 16), i, np.int32)
                c.async_stream_infer("add_sub", _add_sub_inputs(a, a), request_id=f"as-{i}")
        got = {}
        for _ in range(n):
            result, error = results.get(timeout=30)
            assert error is None, error
            response = result.get_response()
            assert response.parameters["triton_final_response"].bool_param is True
            got[response.id] = result
    finally:
        c.stop_stream()
        c.close()
    assert len(got) == n
    for i in range(n):
        if i % 2:
            np.testing.assert_array_equal(got[f"id-{i}"].as_numpy("OUTPUT0"), np.arange(i, dtype=np.int64))
        else:
            np.testing.assert_array_equal(got[f"as-{i}"].as_numpy("OUTPUT0"), np.full((1, 16), 2 * i, np.int32))


def test_stream_errors_are_per_response_and_the_stream_goes_on(server):
    c = grpcclient.InferenceServerClient(server.grpc_url)
    results: queue.Queue = queue.Queue()
    c.start_stream(callback=lambda result, error: results.put((result, error)))
    try:
        c.async_stream_infer("no_such_model", _add_sub_inputs(), request_id="bad-model")
        c.async_stream_infer("add_sub", [_input("INPUT0", np.ones((1, 16), np.float32)), _add_sub_inputs()[1]],
                             request_id="bad-type")
        c.async_stream_infer("add_sub", _add_sub_inputs(), request_id="good")
        outcomes = [results.get(timeout=30) for _ in range(3)]
    finally:
        c.stop_stream()
        c.close()
    errors = sorted((str(e) for _, e in outcomes if e is not None), key=lambda text: "unknown model" in text)
    assert len(errors) == 2
    assert "unknown model" in errors[1] and "no_such_model" in errors[1]
    assert "FP32" in errors[0] and "INPUT0" in errors[0] and "bad-type" in errors[0]
    good = [r for r, e in outcomes if e is None]
    assert len(good) == 1 and good[0].get_response().id == "good"


def test_aio_stream(server):
    async def run():
        async with aioclient.InferenceServerClient(server.grpc_url) as c:
            async def requests():
                for i in range(10):
                    a = np.full((1, 16), i, np.int32)
                    yield {"model_name": "add_sub", "inputs": [_aio_input("INPUT0", a), _aio_input("INPUT1", a)],
                           "request_id": str(i)}
            seen = {}
            async for result, error in c.stream_infer(requests()):
                assert error is None, error
                seen[result.get_response().id] = result.as_numpy("OUTPUT0")
                if len(seen) == 10:
                    break
            for i in range(10):
                np.testing.assert_array_equal(seen[str(i)], np.full((1, 16), 2 * i, np.int32))

    asyncio.run(run())


def test_raw_stream_error_carries_the_request_id(stub):
    good = np.zeros((1, 16), np.int32).tobytes()
    tensor = pb.ModelInferRequest.InferInputTensor
    requests = [
        pb.ModelInferRequest(model_name="add_sub", id="e1", inputs=[tensor(name="INPUT0", datatype="FP32", shape=[1, 16]),
                                                                   tensor(name="INPUT1", datatype="INT32", shape=[1, 16])],
                             raw_input_contents=[good, good]),
        pb.ModelInferRequest(model_name="add_sub", id="ok", inputs=[tensor(name="INPUT0", datatype="INT32", shape=[1, 16]),
                                                                   tensor(name="INPUT1", datatype="INT32", shape=[1, 16])],
                             raw_input_contents=[good, good]),
    ]
    responses = list(stub.ModelStreamInfer(iter(requests)))
    by_id = {r.infer_response.id: r for r in responses}
    assert "data-type is 'FP32'" in by_id["e1"].error_message
    assert by_id["ok"].error_message == "" and len(by_id["ok"].infer_response.raw_output_contents) == 2


def test_extra_raw_contents_are_ignored_and_outputs_come_once_in_model_order(stub):
    """As Triton 2.51: raw contents beyond the inputs' are ignored; an output asked for twice, or in another
    order, comes back once, in the order the model gives its outputs."""
    response = stub.ModelInfer(_req([I0, I1], [GOOD] * 3, outputs=["OUTPUT1", "OUTPUT0", "OUTPUT1"]))
    assert [o.name for o in response.outputs] == ["OUTPUT0", "OUTPUT1"]
    assert len(response.raw_output_contents) == 2
    x = np.frombuffer(GOOD, np.int32)
    np.testing.assert_array_equal(np.frombuffer(response.raw_output_contents[0], np.int32), x + x)


# -- errors ---------------------------------------------------------------------------------------------


def _expect(stub_call, request, code, *needles):
    with pytest.raises(grpc.RpcError) as info:
        stub_call(request)
    assert info.value.code() == code, (info.value.code(), info.value.details())
    for needle in needles:
        assert needle in info.value.details(), f"{needle!r} not in {info.value.details()!r}"


def test_unknown_model(stub, client):
    request = pb.ModelInferRequest(model_name="no_such_model")
    _expect(stub.ModelInfer, request, grpc.StatusCode.NOT_FOUND, "Request for unknown model: 'no_such_model'")
    _expect(stub.ModelMetadata, pb.ModelMetadataRequest(name="no_such_model"), grpc.StatusCode.NOT_FOUND,
            "no_such_model")
    _expect(stub.ModelConfig, pb.ModelConfigRequest(name="no_such_model"), grpc.StatusCode.NOT_FOUND, "no_such_model")
    _expect(stub.ModelInfer, pb.ModelInferRequest(model_name="add_sub", model_version="7"), grpc.StatusCode.NOT_FOUND,
            "add_sub", "7")
    with pytest.raises(InferenceServerException) as info:
        client.infer("no_such_model", _add_sub_inputs())
    assert info.value.status() == "StatusCode.NOT_FOUND"


def _req(inputs, raw=None, outputs=(), model="add_sub", **kwargs):
    tensor = pb.ModelInferRequest.InferInputTensor
    return pb.ModelInferRequest(
        model_name=model,
        inputs=[tensor(name=n, datatype=d, shape=s, **({"contents": c} if c is not None else {}))
                for n, d, s, c in inputs],
        raw_input_contents=raw or [],
        outputs=[pb.ModelInferRequest.InferRequestedOutputTensor(name=o) for o in outputs],
        **kwargs,
    )


GOOD = np.arange(16, dtype=np.int32).reshape(1, 16).tobytes()
I0 = ("INPUT0", "INT32", [1, 16], None)
I1 = ("INPUT1", "INT32", [1, 16], None)
BAD_REQUESTS = {
    "unknown input": (_req([I0, I1, ("NOPE", "INT32", [1, 16], None)], [GOOD] * 3), ["NOPE", "add_sub"]),
    "missing input": (_req([I0], [GOOD]), ["INPUT1", "add_sub"]),
    "duplicate input": (_req([I0, I0, I1], [GOOD] * 3), ["INPUT0", "already exists"]),
    "wrong datatype": (_req([("INPUT0", "FP32", [1, 16], None), I1], [GOOD] * 2), ["INPUT0", "FP32", "INT32"]),
    "unknown datatype": (_req([("INPUT0", "FP128", [1, 16], None), I1], [GOOD] * 2), ["INPUT0", "datatype"]),
    "wrong shape": (_req([("INPUT0", "INT32", [2, 8], None), I1], [GOOD] * 2), ["INPUT0"]),
    "negative dim": (_req([("INPUT0", "INT32", [1, -16], None), I1], [GOOD] * 2), ["INPUT0", "shape"]),
    "too many dims": (_req([("INPUT0", "INT32", [1] * 65, None), I1], [GOOD] * 2), ["INPUT0", "dimensions"]),
    "scalar for batching": (_req([("INPUT0", "INT32", [], None), I1], [GOOD[:4], GOOD]), ["INPUT0"]),
    "batch too large": (_req([("INPUT0", "INT32", [9, 16], None), ("INPUT1", "INT32", [9, 16], None)], [GOOD * 9] * 2),
                        ["batch-size", "8"]),
    "batch zero": (_req([("INPUT0", "INT32", [0, 16], None), ("INPUT1", "INT32", [0, 16], None)], [b"", b""]),
                   ["batch-size", ">= 1"]),
    "different batch sizes": (_req([("INPUT0", "INT32", [2, 16], None), ("INPUT1", "INT32", [3, 16], None)],
                                   [GOOD * 2, GOOD * 3]), ["INPUT1", "batch"]),
    "raw too short": (_req([I0, I1], [GOOD[:-4], GOOD]), ["INPUT0", "Expected 64, got 60"]),
    "raw too long": (_req([I0, I1], [GOOD + b"\0", GOOD]), ["INPUT0", "Expected 64, got 65"]),
    "huge shape tiny data": (_req([("INPUT0", "INT32", [1, 2**40], None), I1], [GOOD] * 2), ["INPUT0"]),
    "no data": (_req([I0, I1]), ["unable to find data", "INPUT0"]),
    "missing raw for one input": (_req([I0, I1], [GOOD]), ["unable to find data", "INPUT1"]),
    "raw and contents": (_req([("INPUT0", "INT32", [1, 16], pb.InferTensorContents(int_contents=range(16))), I1],
                              [GOOD] * 2), ["contents field must not be specified", "INPUT0"]),
    "typed count mismatch": (_req([("INPUT0", "INT32", [1, 16], pb.InferTensorContents(int_contents=range(15))),
                                   ("INPUT1", "INT32", [1, 16], pb.InferTensorContents(int_contents=range(16)))]),
                             ["INPUT0", "Expected 64, got 60"]),
    "typed wrong field": (_req([("INPUT0", "INT32", [1, 16], pb.InferTensorContents(fp32_contents=[1.0] * 16)),
                                ("INPUT1", "INT32", [1, 16], pb.InferTensorContents(int_contents=range(16)))]),
                          ["INPUT0", "int_contents", "fp32_contents"]),
    "unknown output": (_req([I0, I1], [GOOD] * 2, outputs=["OUTPUT0", "NOPE"]), ["NOPE", "add_sub"]),
    "empty parameter": (_req([I0, I1], [GOOD] * 2, parameters={"x": pb.InferParameter()}), ["'x'", "parameter"]),
    "bad version": (_req([I0, I1], [GOOD] * 2, model_version="one"), ["version", "one"]),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_input(stub, case):
    request, needles = BAD_REQUESTS[case]
    _expect(stub.ModelInfer, request, grpc.StatusCode.INVALID_ARGUMENT, *needles)


def test_bad_bytes_tensor(stub):
    raw = np.array([5], "<u4").tobytes() + b"abc"  # declares 5 bytes, holds 3
    request = _req([("INPUT0", "BYTES", [1], None)], [raw], model="id_bytes")
    _expect(stub.ModelInfer, request, grpc.StatusCode.INVALID_ARGUMENT, "INPUT0")


def test_fp16_has_no_typed_contents(stub):
    request = _req([("INPUT0", "FP16", [2], pb.InferTensorContents(fp32_contents=[1.0, 2.0]))], model="id_fp16")
    _expect(stub.ModelInfer, request, grpc.StatusCode.INVALID_ARGUMENT, "FP16", "raw_input_contents")


def test_malformed_message(server):
    with grpc.insecure_channel(server.grpc_url) as channel:
        call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        with pytest.raises(grpc.RpcError) as info:
            call(b"\x0a\x07add_sub\x3a\xff\xff\xff\x0f")  # raw_input_contents claiming 32 MiB
        assert info.value.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND)
        with pytest.raises(grpc.RpcError) as info:
            call(b"\x0a\x07add_sub\x3a\x05ab")
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "parse" in info.value.details()


def test_classification(stub):
    """add_sub's OUTPUT0 = INPUT0 + INPUT1 = 2 * [0..15]: the top 2 are 30 at index 15 and 28 at index 14."""
    request = _req([I0, I1], [GOOD] * 2)
    request.outputs.add(name="OUTPUT0").parameters["classification"].int64_param = 2
    response = stub.ModelInfer(request)
    assert response.outputs[0].datatype == "BYTES" and list(response.outputs[0].shape) == [1, 2]
    raw = response.raw_output_contents[0]
    assert raw == b"\x05\x00\x00\x0030:15\x05\x00\x00\x0028:14"
    bad = _req([I0, I1], [GOOD] * 2)
    bad.outputs.add(name="OUTPUT0").parameters["classification"].int64_param = 0
    _expect(stub.ModelInfer, bad, grpc.StatusCode.INVALID_ARGUMENT, "classification", "OUTPUT0")


def test_cuda_shared_memory_registration_refused_without_client_shm(client):
    # (with --allow-client-shm=true, and the system shared-memory extension: tests/e2e/test_system_shm_grpc.py)
    with pytest.raises(InferenceServerException) as info:
        client.register_cuda_shared_memory("c", base64.b64encode(b"\0" * 64), 0, 64)
    assert info.value.status() == "StatusCode.UNAVAILABLE"
    assert "--allow-client-shm=true" in info.value.message()
    client.unregister_cuda_shared_memory()  # nothing registered: nothing to do


def test_many_clients_at_once(server):
    errors = []

    def work(k):
        try:
            c = grpcclient.InferenceServerClient(server.grpc_url)
            for i in range(10):
                a = np.full((1, 16), k * 100 + i, np.int32)
                out = c.infer("add_sub", _add_sub_inputs(a, a)).as_numpy("OUTPUT0")
                assert (out == 2 * a).all()
            c.close()
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors


def test_zz_server_still_serves(server, client):
    assert server.proc.poll() is None
    result = client.infer("add_sub", _add_sub_inputs())
    assert result.as_numpy("OUTPUT1").tolist() == [list(range(-1, 15))]
    log = server.output()
    assert "Traceback" not in log and "MemoryError" not in log
