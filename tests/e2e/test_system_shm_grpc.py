"""The system shared-memory extension over gRPC, driven by tritonclient.grpc and tritonclient.utils.shared_memory
as users drive Triton.

Requests tritonclient cannot express (a typed ``contents`` beside a region, wrong parameter types, placeholder
raw contents) are sent with the stubs tritonclient ships.  Expected texts, codes and layouts (an empty
``raw_output_contents`` entry for each output written into a region; raw contents going, in order, to the
inputs not in shared memory) were checked against a real tritonserver (2.51).
"""

from __future__ import annotations

import queue

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.utils.shared_memory as shm
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc
from tritonclient.utils import InferenceServerException, serialize_byte_tensor

from models import copy_examples, identity_graph, write_model
from server import RunningServer

A = np.arange(8, dtype=np.float32).reshape(2, 4)
B = np.full((2, 4), 10, np.float32)


@pytest.fixture(scope="module")
def server(tmp_path_factory):  # type: ignore[no-untyped-def]
    repo = str(tmp_path_factory.mktemp("shm_grpc_repo"))
    copy_examples(repo, "simple", "add_sub_python")
    write_model(repo, "id_bytes", identity_graph("BYTES", (-1,)), config="""
        backend: "onnxruntime"
        input [ { name: "INPUT0" data_type: TYPE_STRING dims: [ -1 ] } ]
        output [ { name: "OUTPUT0" data_type: TYPE_STRING dims: [ -1 ] } ]
    """)
    with RunningServer([repo], ["--allow-metrics=false", "--allow-client-shm=true"]) as s:
        yield s


@pytest.fixture()
def client(server: RunningServer):  # type: ignore[no-untyped-def]
    c = grpcclient.InferenceServerClient(server.grpc_url)
    yield c
    c.unregister_system_shared_memory()
    c.close()


@pytest.fixture(scope="module")
def stub(server: RunningServer):  # type: ignore[no-untyped-def]
    channel = grpc.insecure_channel(server.grpc_url)
    yield pb_grpc.GRPCInferenceServiceStub(channel)
    channel.close()


@pytest.fixture()
def add_sub_regions(client, regions):  # type: ignore[no-untyped-def]
    """Region "in" (64 bytes: A then B) and region "out" (64 bytes, zeroed), both registered."""
    key_in, handle_in = regions("in", 64)
    key_out, handle_out = regions("out", 64)
    shm.set_shared_memory_region(handle_in, [A, B])
    shm.set_shared_memory_region(handle_out, [np.zeros(16, np.float32)])
    client.register_system_shared_memory("in", key_in, 64)
    client.register_system_shared_memory("out", key_out, 64)
    return handle_in, handle_out


def _shm_input(name: str, offset: int = 0, region: str = "in", byte_size: int = 32) -> grpcclient.InferInput:
    return grpcclient.InferInput(name, [2, 4], "FP32").set_shared_memory(region, byte_size, offset=offset)


def _raw_input(name: str, array: np.ndarray) -> grpcclient.InferInput:
    inp = grpcclient.InferInput(name, list(array.shape), "FP32")
    inp.set_data_from_numpy(array)
    return inp


def _shm_output(name: str, offset: int = 0, region: str = "out", byte_size: int = 32):  # type: ignore[no-untyped-def]
    out = grpcclient.InferRequestedOutput(name)
    out.set_shared_memory(region, byte_size, offset=offset)
    return out


def _out(handle, offset: int = 0) -> list:  # type: ignore[no-untyped-def]
    return shm.get_contents_as_numpy(handle, np.float32, [2, 4], offset=offset).tolist()


def _expect(call, code: str, message: str):  # type: ignore[no-untyped-def]
    with pytest.raises(InferenceServerException) as info:
        call()
    assert info.value.status() == f"StatusCode.{code}", (info.value.status(), info.value.message())
    assert info.value.message() == message


# -- register, status, unregister ---------------------------------------------------------------------


def test_register_status_unregister(client, regions) -> None:  # type: ignore[no-untyped-def]
    key, _ = regions("a", 8192)
    key_b, _ = regions("b", 128)
    assert client.get_system_shared_memory_status(as_json=True) == {}
    client.register_system_shared_memory("a", key, 64, offset=4096)
    client.register_system_shared_memory("b", key_b, 128)
    status = client.get_system_shared_memory_status(as_json=True)
    assert status == {"regions": {"a": {"name": "a", "key": key, "offset": "4096", "byte_size": "64"},
                                  "b": {"name": "b", "key": key_b, "byte_size": "128"}}}
    assert client.get_system_shared_memory_status("a", as_json=True) == {"regions": {"a": status["regions"]["a"]}}
    one = client.get_system_shared_memory_status("b")  # the protobuf message
    assert one.regions["b"].byte_size == 128 and one.regions["b"].offset == 0
    client.unregister_system_shared_memory("nosuch")  # unknown: not an error, as in Triton
    client.unregister_system_shared_memory("a")
    assert list(client.get_system_shared_memory_status(as_json=True)["regions"]) == ["b"]


def test_register_and_status_errors(client, regions) -> None:  # type: ignore[no-untyped-def]
    key, _ = regions("r", 64)
    client.register_system_shared_memory("r", key, 64)
    _expect(lambda: client.register_system_shared_memory("r", key, 64), "ALREADY_EXISTS",
            "shared memory region 'r' already in manager")
    _expect(lambda: client.register_system_shared_memory("zz", "/nosuch", 64), "INTERNAL",
            "Unable to open shared memory region: '/nosuch'")
    _expect(lambda: client.register_system_shared_memory("big", key, 1 << 20), "INTERNAL",
            f"Invalid shared memory region: '{key}'")
    # the key is opened before the size is checked (Triton's order)
    _expect(lambda: client.register_system_shared_memory("zz", "/nosuch", 0), "INTERNAL",
            "Unable to open shared memory region: '/nosuch'")
    _expect(lambda: client.register_system_shared_memory("again", key, 64), "INTERNAL",
            f"Invalid shared memory region: '{key}'")  # a key is registered once
    _expect(lambda: client.get_system_shared_memory_status("nosuch"), "NOT_FOUND",
            "Unable to find system shared memory region: 'nosuch'")
    assert list(client.get_system_shared_memory_status(as_json=True)["regions"]) == ["r"]


def test_unregister_all(client, stub, add_sub_regions) -> None:  # type: ignore[no-untyped-def]
    assert sorted(client.get_system_shared_memory_status(as_json=True)["regions"]) == ["in", "out"]
    client.unregister_system_shared_memory()
    assert client.get_system_shared_memory_status(as_json=True) == {}
    _expect(lambda: client.infer("add_sub_python", [_shm_input("INPUT0"), _shm_input("INPUT1", 32)]), "NOT_FOUND",
            "Unable to find shared memory region: 'in'")


def test_cuda_shared_memory(client, stub) -> None:  # type: ignore[no-untyped-def]
    """No CUDA regions: status and unregister answer as Triton's with none registered (NVIDIA's examples
    unregister CUDA regions while cleaning up); register fails as a GPU-enabled Triton's that cannot open the
    handle."""
    assert client.get_cuda_shared_memory_status(as_json=True) == {}
    _expect(lambda: client.get_cuda_shared_memory_status("x"), "NOT_FOUND",
            "Unable to find cuda shared memory region: 'x'")
    client.unregister_cuda_shared_memory()
    client.unregister_cuda_shared_memory("c")
    stub.CudaSharedMemoryUnregister(pb.CudaSharedMemoryUnregisterRequest(name="c"))
    with pytest.raises(grpc.RpcError) as info:
        stub.CudaSharedMemoryRegister(pb.CudaSharedMemoryRegisterRequest(name="c", raw_handle=bytes(64), byte_size=8))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details() == "failed to register shared memory region: invalid args"
    assert client.get_cuda_shared_memory_status(as_json=True) == {}


# -- inference ----------------------------------------------------------------------------------------


def test_inputs_and_one_output_in_shm(client, add_sub_regions) -> None:  # type: ignore[no-untyped-def]
    _, out = add_sub_regions
    result = client.infer("add_sub_python", [_shm_input("INPUT0"), _shm_input("INPUT1", 32)],
                          outputs=[_shm_output("OUTPUT0"), grpcclient.InferRequestedOutput("OUTPUT1")])
    response = result.get_response()
    assert [(o.name, o.datatype, list(o.shape), dict(o.parameters)) for o in response.outputs] == [
        ("OUTPUT0", "FP32", [2, 4], {}), ("OUTPUT1", "FP32", [2, 4], {})]
    assert response.raw_output_contents[0] == b""  # Triton's placeholder: one entry per output
    assert result.as_numpy("OUTPUT1").tolist() == (A - B).tolist()
    assert _out(out) == (A + B).tolist()
    assert _out(out, 32) == np.zeros((2, 4)).tolist()  # nothing past the output's place


def test_all_outputs_in_shm(client, add_sub_regions) -> None:  # type: ignore[no-untyped-def]
    _, out = add_sub_regions
    result = client.infer("add_sub_python", [_shm_input("INPUT0"), _shm_input("INPUT1", 32)],
                          outputs=[_shm_output("OUTPUT0"), _shm_output("OUTPUT1", 32)])
    response = result.get_response()
    assert [o.name for o in response.outputs] == ["OUTPUT0", "OUTPUT1"]
    assert list(response.raw_output_contents) == [b"", b""]
    assert _out(out) == (A + B).tolist() and _out(out, 32) == (A - B).tolist()
    # only one output asked for, into a place larger than it needs
    result = client.infer("add_sub_python", [_shm_input("INPUT0", 32), _shm_input("INPUT1")],
                          outputs=[_shm_output("OUTPUT1", byte_size=64)])
    assert [o.name for o in result.get_response().outputs] == ["OUTPUT1"]
    assert list(result.get_response().raw_output_contents) == [b""]
    assert _out(out) == (B - A).tolist()


def test_mixed_shm_and_raw_inputs(client, add_sub_regions) -> None:  # type: ignore[no-untyped-def]
    raw = A * 3
    result = client.infer("add_sub_python", [_shm_input("INPUT0", 32), _raw_input("INPUT1", raw)])
    assert result.as_numpy("OUTPUT0").tolist() == (B + raw).tolist()
    result = client.infer("add_sub_python", [_raw_input("INPUT0", raw), _shm_input("INPUT1")])
    assert result.as_numpy("OUTPUT1").tolist() == (raw - A).tolist()


def _request(inputs, raw=(), outputs=(), model="add_sub_python"):  # type: ignore[no-untyped-def]
    """A ModelInferRequest: each input or output is (name, parameters, typed contents or None)."""
    request = pb.ModelInferRequest(model_name=model, raw_input_contents=list(raw))
    for name, params, contents in inputs:
        tensor = request.inputs.add(name=name, datatype="FP32", shape=[2, 4])
        _set_params(tensor.parameters, params)
        if contents is not None:
            tensor.contents.fp32_contents.extend(contents)
    for name, params in outputs:
        _set_params(request.outputs.add(name=name).parameters, params)
    return request


def _set_params(target, params: dict) -> None:  # type: ignore[no-untyped-def]
    for key, value in params.items():
        if isinstance(value, str):
            target[key].string_param = value
        elif isinstance(value, tuple):  # (value,): the uint64 choice
            target[key].uint64_param = value[0]
        else:
            target[key].int64_param = value


IN0 = ("INPUT0", {"shared_memory_region": "in", "shared_memory_byte_size": 32}, None)
IN1 = ("INPUT1", {"shared_memory_region": "in", "shared_memory_byte_size": 32, "shared_memory_offset": 32}, None)


def test_raw_contents_go_to_the_inputs_not_in_shm(stub, add_sub_regions) -> None:  # type: ignore[no-untyped-def]
    """As Triton: raw entry i belongs to the i-th input that is not in shared memory, not to input i."""
    raw = (A * 3).tobytes()
    response = stub.ModelInfer(_request([IN0, ("INPUT1", {}, None)], [raw]))
    assert np.frombuffer(response.raw_output_contents[0], np.float32).tolist() == (A + A * 3).reshape(-1).tolist()
    with pytest.raises(grpc.RpcError) as info:  # an empty placeholder for the shm input is taken as INPUT1's data
        stub.ModelInfer(_request([IN0, ("INPUT1", {}, None)], [b"", raw]))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details() == "input byte size mismatch for input 'INPUT1' for model 'add_sub_python'. " \
                                   "Expected 32, got 0"
    # typed contents beside an input in shared memory are fine when no raw contents are sent
    response = stub.ModelInfer(_request([IN0, ("INPUT1", {}, [1.0] * 8)]))
    assert np.frombuffer(response.raw_output_contents[1], np.float32).tolist() == (A - 1).reshape(-1).tolist()


def test_region_offset_and_int32_model(client, regions) -> None:  # type: ignore[no-untyped-def]
    """A region registered at an offset of its file: tensor offsets count from the region's start."""
    key, handle = regions("page", 8192)
    a = np.arange(16, dtype=np.int32).reshape(1, 16)
    b = np.full((1, 16), 7, np.int32)
    shm.set_shared_memory_region(handle, [a, b], offset=4096)
    client.register_system_shared_memory("page", key, 256, offset=4096)
    inputs = [grpcclient.InferInput("INPUT0", [1, 16], "INT32").set_shared_memory("page", 64),
              grpcclient.InferInput("INPUT1", [1, 16], "INT32").set_shared_memory("page", 64, offset=64)]
    outputs = [grpcclient.InferRequestedOutput("OUTPUT0"), grpcclient.InferRequestedOutput("OUTPUT1")]
    outputs[0].set_shared_memory("page", 64, offset=128)
    outputs[1].set_shared_memory("page", 64, offset=192)
    client.infer("simple", inputs, outputs=outputs)
    assert shm.get_contents_as_numpy(handle, np.int32, [1, 16], offset=4096 + 128).tolist() == (a + b).tolist()
    assert shm.get_contents_as_numpy(handle, np.int32, [1, 16], offset=4096 + 192).tolist() == (a - b).tolist()


def test_bytes_in_shm(client, regions) -> None:  # type: ignore[no-untyped-def]
    key, handle = regions("bytes", 256)
    data = np.array([b"hello", b"", "ünï".encode(), b"x" * 40], dtype=object)
    blob = serialize_byte_tensor(data).item()
    shm.set_shared_memory_region(handle, [np.frombuffer(blob, np.uint8)], offset=16)
    client.register_system_shared_memory("bytes", key, 256)
    inp = grpcclient.InferInput("INPUT0", [4], "BYTES").set_shared_memory("bytes", len(blob), offset=16)
    assert client.infer("id_bytes", [inp]).as_numpy("OUTPUT0").tolist() == data.tolist()
    out = grpcclient.InferRequestedOutput("OUTPUT0")
    out.set_shared_memory("bytes", 128, offset=128)
    result = client.infer("id_bytes", [inp], outputs=[out])
    assert list(result.get_response().raw_output_contents) == [b""]
    assert bytes(shm.get_contents_as_numpy(handle, np.uint8, [len(blob)], offset=128)) == blob
    assert shm.get_contents_as_numpy(handle, np.object_, [4], offset=128).tolist() == data.tolist()
    small = grpcclient.InferRequestedOutput("OUTPUT0")
    small.set_shared_memory("bytes", 8)
    _expect(lambda: client.infer("id_bytes", [inp], outputs=[small]), "INTERNAL",
            f"shared memory size specified with the request for output 'OUTPUT0' (8 bytes) should be at least "
            f"{len(blob)} bytes to hold the results")


def test_stream(server, client, add_sub_regions) -> None:  # type: ignore[no-untyped-def]
    """ModelStreamInfer reads and writes regions too; a request's shared-memory error is in-band."""
    _, out = add_sub_regions
    results: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    try:
        client.async_stream_infer("add_sub_python", [_shm_input("INPUT0"), _shm_input("INPUT1", 32)],
                                  outputs=[_shm_output("OUTPUT0"), grpcclient.InferRequestedOutput("OUTPUT1")],
                                  request_id="good")
        result, error = results.get(timeout=30)
        assert error is None and result.get_response().id == "good"
        assert result.get_response().raw_output_contents[0] == b""
        assert result.as_numpy("OUTPUT1").tolist() == (A - B).tolist() and _out(out) == (A + B).tolist()
        client.async_stream_infer("add_sub_python", [_shm_input("INPUT0", region="nosuch"), _shm_input("INPUT1")],
                                  request_id="bad")
        result, error = results.get(timeout=30)
        assert result is None and "Unable to find shared memory region: 'nosuch'" in str(error)
        client.async_stream_infer("add_sub_python", [_shm_input("INPUT0", 32), _shm_input("INPUT1")],
                                  outputs=[_shm_output("OUTPUT1", 32)], request_id="again")
        result, error = results.get(timeout=30)
        assert error is None and result.get_response().id == "again" and _out(out, 32) == (B - A).tolist()
    finally:
        client.stop_stream()


# -- errors ----------------------------------------------------------------------------------------------

SHM = "shared_memory_region"
SIZE = "shared_memory_byte_size"
OFFSET = "shared_memory_offset"
BAD_INPUTS = {
    "unknown region": ({SHM: "nosuch", SIZE: 32}, "NOT_FOUND", "Unable to find shared memory region: 'nosuch'"),
    "past the end": ({SHM: "in", SIZE: 32, OFFSET: 48}, "INVALID_ARGUMENT",
                     "Invalid offset + byte size for shared memory region: 'in'"),
    "negative offset": ({SHM: "in", SIZE: 32, OFFSET: -8}, "INVALID_ARGUMENT",
                        "Invalid offset for shared memory region: 'in'"),
    "zero size": ({SHM: "in", SIZE: 0}, "INVALID_ARGUMENT",
                  "Invalid offset + byte size for shared memory region: 'in'"),
    "size too small": ({SHM: "in", SIZE: 16}, "INVALID_ARGUMENT",
                       "[request id: <id_unknown>] input byte size mismatch for input 'INPUT0' for model 'add_sub_python'. Expected 32, got 16"),
    "size too large": ({SHM: "in", SIZE: 48}, "INVALID_ARGUMENT",
                       "[request id: <id_unknown>] input byte size mismatch for input 'INPUT0' for model 'add_sub_python'. Expected 32, got 48"),
    "no byte size": ({SHM: "in"}, "INVALID_ARGUMENT",
                     ("'shared_memory_byte_size' must be specified along with 'shared_memory_region' parameter for "
                      "tensor 'INPUT0'")),
    "byte size without region": ({SIZE: 32}, "INVALID_ARGUMENT",
                                 ("'shared_memory_byte_size' can not be specified without 'shared_memory_region' "
                                  "parameter for tensor 'INPUT0'")),
    "offset without region": ({OFFSET: 32}, "INVALID_ARGUMENT",
                              ("'shared_memory_offset' can not be specified without 'shared_memory_region' parameter "
                               "for tensor 'INPUT0'")),
    "uint64 byte size": ({SHM: "in", SIZE: (32,)}, "INVALID_ARGUMENT",
                         ("invalid value type for 'shared_memory_byte_size' parameter for tensor 'INPUT0', expected "
                          "int64_param.")),
    "uint64 offset": ({SHM: "in", SIZE: 32, OFFSET: (0,)}, "INVALID_ARGUMENT",
                      ("invalid value type for 'shared_memory_offset' parameter for tensor 'INPUT0', expected "
                       "int64_param.")),
    "int region": ({SHM: 3, SIZE: 32}, "INVALID_ARGUMENT",
                   ("invalid value type for 'shared_memory_region' parameter for tensor 'INPUT0', expected "
                    "string_param.")),
}


def _expect_rpc(call, request, code: str, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as info:
        call(request)
    assert (info.value.code(), info.value.details()) == (getattr(grpc.StatusCode, code), message)


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_shm_input(stub, add_sub_regions, case) -> None:  # type: ignore[no-untyped-def]
    params, code, message = BAD_INPUTS[case]
    _expect_rpc(stub.ModelInfer, _request([("INPUT0", params, None), IN1]), code, message)


def test_shm_input_with_contents(stub, add_sub_regions) -> None:  # type: ignore[no-untyped-def]
    _expect_rpc(stub.ModelInfer, _request([(IN0[0], IN0[1], [1.0] * 8), IN1]), "INVALID_ARGUMENT",
                "unexpected 'content' provided when using shared memory for input tensor 'INPUT0' for model "
                "'add_sub_python'")


BAD_OUTPUTS = {
    "unknown region": ({SHM: "nosuch", SIZE: 32}, "NOT_FOUND", "Unable to find shared memory region: 'nosuch'"),
    "past the end": ({SHM: "out", SIZE: 32, OFFSET: 48}, "INVALID_ARGUMENT",
                     "Invalid offset + byte size for shared memory region: 'out'"),
    "negative offset": ({SHM: "out", SIZE: 32, OFFSET: -4}, "INVALID_ARGUMENT",
                        "Invalid offset for shared memory region: 'out'"),
    "too small": ({SHM: "out", SIZE: 16}, "INTERNAL",
                  ("shared memory size specified with the request for output 'OUTPUT0' (16 bytes) should be at least "
                   "32 bytes to hold the results")),
    "no byte size": ({SHM: "out"}, "INVALID_ARGUMENT",
                     ("'shared_memory_byte_size' must be specified along with 'shared_memory_region' parameter for "
                      "tensor 'OUTPUT0'")),
    "offset without region": ({OFFSET: 4}, "INVALID_ARGUMENT",
                              ("'shared_memory_offset' can not be specified without 'shared_memory_region' parameter "
                               "for tensor 'OUTPUT0'")),
    "with classification": ({SHM: "out", SIZE: 64, "classification": 2}, "INVALID_ARGUMENT",
                            "output can't set both 'shared_memory_region' and 'classification'"),
}


@pytest.mark.parametrize("case", list(BAD_OUTPUTS))
def test_bad_shm_output(stub, add_sub_regions, case) -> None:  # type: ignore[no-untyped-def]
    params, code, message = BAD_OUTPUTS[case]
    _expect_rpc(stub.ModelInfer, _request([IN0, IN1], outputs=[("OUTPUT0", params)]), code, message)


def test_bad_output_region_stops_the_request_before_inference(  # type: ignore[no-untyped-def]
        client, add_sub_regions) -> None:
    """The good output's region is left alone when another output's region is unknown."""
    _, out = add_sub_regions
    _expect(lambda: client.infer("add_sub_python", [_shm_input("INPUT0"), _shm_input("INPUT1", 32)],
                                 outputs=[_shm_output("OUTPUT0"), _shm_output("OUTPUT1", region="nosuch")]),
            "NOT_FOUND", "Unable to find shared memory region: 'nosuch'")
    assert _out(out) == np.zeros((2, 4)).tolist()


def test_zz_server_still_serves(server, client) -> None:  # type: ignore[no-untyped-def]
    assert server.proc.poll() is None
    result = client.infer("add_sub_python", [_raw_input("INPUT0", A), _raw_input("INPUT1", B)])
    assert result.as_numpy("OUTPUT0").tolist() == (A + B).tolist()
    log = server.output()
    assert "Traceback" not in log
