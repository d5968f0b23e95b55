"""The system shared-memory extension over HTTP, driven by tritonclient.http and tritonclient.utils.shared_memory
as users drive Triton.  Expected texts and codes were checked against a real tritonserver (2.51)."""

from __future__ import annotations

import base64
import json
import os
import urllib.error
import urllib.request

import numpy as np
import pytest
import tritonclient.http as httpclient
import tritonclient.utils.shared_memory as shm
from tritonclient.utils import InferenceServerException

from models import copy_examples, write_model
from server import RunningServer

#: Its input as is, and whether a client's region (these tests' keys) is mapped into the model's process.
SEES_REGION = """
import numpy as np
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def execute(self, requests):
        out = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "X").as_numpy()
            with open("/proc/self/maps") as f:
                mapped = "tritium_test_" in f.read()
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("Y", x), pb_utils.Tensor("MAPPED", np.array([mapped]))]))
        return out
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):  # type: ignore[no-untyped-def]
    repo = str(tmp_path_factory.mktemp("shm_repo"))
    copy_examples(repo, "simple", "add_sub_python")
    model_dir = write_model(repo, "sees_region", config="""
        backend: "python"
        max_batch_size: 0
        input [ { name: "X" data_type: TYPE_FP32 dims: [ -1 ] } ]
        output [ { name: "Y" data_type: TYPE_FP32 dims: [ -1 ] }, { name: "MAPPED" data_type: TYPE_BOOL dims: [ 1 ] } ]
    """)
    with open(os.path.join(model_dir, "1", "model.py"), "w") as f:
        f.write(SEES_REGION)
    with RunningServer([repo], ["--allow-metrics=false", "--allow-client-shm=true"]) as s:
        yield s


@pytest.fixture()
def client(server: RunningServer):  # type: ignore[no-untyped-def]
    c = httpclient.InferenceServerClient(server.url)
    yield c
    c.unregister_system_shared_memory()


def _post(server: RunningServer, path: str, body: object) -> tuple[int, dict]:
    request = urllib.request.Request(f"http://{server.url}{path}", data=json.dumps(body).encode(), method="POST")
    try:
        with urllib.request.urlopen(request) as r:
            return r.status, {}
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_register_status_unregister(client, server, regions) -> None:  # type: ignore[no-untyped-def]
    key, _ = regions("a", 8192)
    assert client.get_system_shared_memory_status() == []
    client.register_system_shared_memory("a", key, 64, offset=4096)
    assert client.get_system_shared_memory_status() == [{"name": "a", "key": key, "offset": 4096, "byte_size": 64}]
    assert client.get_system_shared_memory_status("a") == [{"name": "a", "key": key, "offset": 4096, "byte_size": 64}]
    with pytest.raises(InferenceServerException, match="shared memory region 'a' already in manager") as e:
        client.register_system_shared_memory("a", key, 64)
    assert e.value.status() == "400"
    with pytest.raises(InferenceServerException, match="Unable to find system shared memory region: 'b'") as e:
        client.get_system_shared_memory_status("b")
    assert e.value.status() == "404"
    client.unregister_system_shared_memory("b")  # unknown: not an error, as in Triton
    client.unregister_system_shared_memory("a")
    assert client.get_system_shared_memory_status() == []


def test_register_errors(client, server, regions) -> None:  # type: ignore[no-untyped-def]
    key, _ = regions("small", 64)
    with pytest.raises(InferenceServerException, match="Unable to open shared memory region: '/tritium_no_such'") as e:
        client.register_system_shared_memory("x", "/tritium_no_such", 64)
    assert e.value.status() == "500"
    with pytest.raises(InferenceServerException) as e:
        client.register_system_shared_memory("x", key, 1 << 20)  # beyond the end of the file
    assert (e.value.status(), e.value.message()) == ("400", "failed to register shared memory region 'x': invalid args")
    with pytest.raises(InferenceServerException, match="Unable to open shared memory region"):
        client.register_system_shared_memory("x", "/tritium_no_such", 0)  # the key first, as Triton
    for offset, size in ((60, 8), (4096, 0)):  # beyond the end, even empty: the range before the mapping
        with pytest.raises(InferenceServerException, match="'x': invalid args"):
            client.register_system_shared_memory("x", key, size, offset=offset)
    for offset, size in ((3, 16), (0, 0)):  # not page-aligned; empty
        with pytest.raises(InferenceServerException) as e:
            client.register_system_shared_memory("x", key, size, offset=offset)
        assert (e.value.status(), e.value.message()) == (
            "400", "failed to register shared memory region 'x': unable to process address spaceInvalid argument")
    client.register_system_shared_memory("y", key, 64)
    with pytest.raises(InferenceServerException, match=f"Invalid shared memory region: '{key}'"):
        client.register_system_shared_memory("x", key, 64)  # a key is registered once
    client.unregister_system_shared_memory("y")
    assert _post(server, "/v2/systemsharedmemory/region/x/register", {"key": key}) == (
        400, {"error": "Shared memory register request has no 'byte_size' field"})
    assert _post(server, "/v2/systemsharedmemory/region/x/register", {"key": 5, "byte_size": 8})[0] == 400
    assert client.get_system_shared_memory_status() == []


def test_inputs_and_outputs_in_shared_memory(client, regions) -> None:  # type: ignore[no-untyped-def]
    """Inputs read from one region, one output written into another, the other output in the body."""
    in_key, in_handle = regions("in", 64)
    out_key, out_handle = regions("out", 64)
    a = np.arange(8, dtype=np.float32).reshape(2, 4)
    b = np.ones((2, 4), np.float32)
    shm.set_shared_memory_region(in_handle, [a, b])
    client.register_system_shared_memory("in", in_key, 64)
    client.register_system_shared_memory("out", out_key, 64)
    i0 = httpclient.InferInput("INPUT0", [2, 4], "FP32")
    i0.set_shared_memory("in", 32)
    i1 = httpclient.InferInput("INPUT1", [2, 4], "FP32")
    i1.set_shared_memory("in", 32, offset=32)
    o0 = httpclient.InferRequestedOutput("OUTPUT0")
    o0.set_shared_memory("out", 32, offset=32)
    o1 = httpclient.InferRequestedOutput("OUTPUT1", binary_data=True)
    result = client.infer("add_sub_python", [i0, i1], outputs=[o0, o1])
    assert result.get_response()["outputs"][0] == {"name": "OUTPUT0", "datatype": "FP32", "shape": [2, 4]}
    np.testing.assert_array_equal(shm.get_contents_as_numpy(out_handle, np.float32, [2, 4], offset=32), a + b)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)


def test_onnx_model_with_everything_in_shared_memory(client, regions) -> None:  # type: ignore[no-untyped-def]
    key, handle = regions("all", 256)
    a = np.arange(16, dtype=np.int32).reshape(1, 16)
    b = np.full((1, 16), 3, np.int32)
    shm.set_shared_memory_region(handle, [a, b])
    client.register_system_shared_memory("all", key, 256)
    inputs = [httpclient.InferInput(n, [1, 16], "INT32") for n in ("INPUT0", "INPUT1")]
    inputs[0].set_shared_memory("all", 64)
    inputs[1].set_shared_memory("all", 64, offset=64)
    outputs = [httpclient.InferRequestedOutput(n) for n in ("OUTPUT0", "OUTPUT1")]
    outputs[0].set_shared_memory("all", 64, offset=128)
    outputs[1].set_shared_memory("all", 64, offset=192)
    result = client.infer("simple", inputs, outputs=outputs)
    assert [o.get("parameters") for o in result.get_response()["outputs"]] == [None, None]
    np.testing.assert_array_equal(shm.get_contents_as_numpy(handle, np.int32, [1, 16], offset=128), a + b)
    np.testing.assert_array_equal(shm.get_contents_as_numpy(handle, np.int32, [1, 16], offset=192), a - b)


def test_inference_errors_name_the_problem(client, server, regions) -> None:  # type: ignore[no-untyped-def]
    key, handle = regions("e", 64)
    shm.set_shared_memory_region(handle, [np.zeros((2, 4), np.float32), np.zeros((2, 4), np.float32)])
    client.register_system_shared_memory("e", key, 64)

    def infer(byte_size: int = 32, offset: int = 0, region: str = "e", out_size: int | None = None) -> None:
        i0 = httpclient.InferInput("INPUT0", [2, 4], "FP32")
        i0.set_shared_memory(region, byte_size, offset=offset)
        i1 = httpclient.InferInput("INPUT1", [2, 4], "FP32")
        i1.set_shared_memory("e", 32, offset=32)
        outputs = None
        if out_size is not None:
            o0 = httpclient.InferRequestedOutput("OUTPUT0")
            o0.set_shared_memory("e", out_size)
            outputs = [o0]
        client.infer("add_sub_python", [i0, i1], outputs=outputs)

    cases = [
        (dict(region="nosuch"), "404", "Unable to find shared memory region: 'nosuch'"),
        (dict(offset=48), "400", "Invalid offset + byte size for shared memory region: 'e'"),
        (dict(byte_size=16), "400", "[request id: <id_unknown>] input byte size mismatch for input 'INPUT0' for "
                                    "model 'add_sub_python'. Expected 32, got 16"),
        (dict(out_size=16), "500", "shared memory size specified with the request for output 'OUTPUT0' (16 bytes) "
                                   "should be at least 32 bytes to hold the results"),
    ]
    for kwargs, status, message in cases:
        with pytest.raises(InferenceServerException) as e:
            infer(**kwargs)  # type: ignore[arg-type]
        assert (e.value.status(), e.value.message()) == (status, message)
    body = {"inputs": [{"name": "INPUT0", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4],
                        "parameters": {"shared_memory_region": "e", "shared_memory_byte_size": 16}},
                       {"name": "INPUT1", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}
    assert _post(server, "/v2/models/add_sub_python/infer", body) == (400, {"error": (
        "Input must set only one of the following fields: 'data', 'binary_data_size' in 'parameters', "
        "'shared_memory_region' in 'parameters'. But set 'data' 'shared_memory_region'")})
    infer()  # and the server serves on
    client.unregister_system_shared_memory()
    with pytest.raises(InferenceServerException, match="Unable to find shared memory region: 'e'"):
        infer()


def test_python_model_never_maps_a_client_region(client, regions) -> None:  # type: ignore[no-untyped-def]
    """A client's region is copied into the server's own shared memory, never mapped by a model's process
    (its owner could shrink it under the mapping: SIGBUS); an output that is that input is written into the
    output region."""
    key, handle = regions("py", 3 * 16384)
    x = np.random.default_rng(4).standard_normal(4096).astype(np.float32)
    shm.set_shared_memory_region(handle, [x])
    client.register_system_shared_memory("py", key, 3 * 16384)
    i = httpclient.InferInput("X", [4096], "FP32")
    i.set_shared_memory("py", 16384)
    y = httpclient.InferRequestedOutput("Y")
    y.set_shared_memory("py", 16384, offset=16384)
    result = client.infer("sees_region", [i], outputs=[y, httpclient.InferRequestedOutput("MAPPED")])
    assert result.as_numpy("MAPPED").tolist() == [False]
    np.testing.assert_array_equal(shm.get_contents_as_numpy(handle, np.float32, [4096], offset=16384), x)
    big = np.random.default_rng(5).standard_normal(65536).astype(np.float32)  # read into a pooled block
    shm.set_shared_memory_region(handle, [big[:8192]])
    i = httpclient.InferInput("X", [8192], "FP32")
    i.set_shared_memory("py", 32768)
    result = client.infer("sees_region", [i], outputs=[httpclient.InferRequestedOutput("Y"),
                                                       httpclient.InferRequestedOutput("MAPPED")])
    np.testing.assert_array_equal(result.as_numpy("Y"), big[:8192])
    assert result.as_numpy("MAPPED").tolist() == [False]
    client.unregister_system_shared_memory("py")


def test_a_region_shrunk_after_registering_is_refused_not_a_crash(client, regions) -> None:  # type: ignore[no-untyped-def]
    key, _ = regions("shrink", 8192)
    client.register_system_shared_memory("shrink", key, 8192)
    os.truncate(os.path.join("/dev/shm", key.lstrip("/")), 16)  # the client's mistake
    i0 = httpclient.InferInput("INPUT0", [2, 4], "FP32")
    i0.set_shared_memory("shrink", 32, offset=4096)
    i1 = httpclient.InferInput("INPUT1", [2, 4], "FP32")
    i1.set_data_from_numpy(np.ones((2, 4), np.float32))
    with pytest.raises(InferenceServerException, match="smaller than it was registered") as e:
        client.infer("add_sub_python", [i0, i1])
    assert e.value.status() == "400"
    assert client.is_server_live()


def test_client_shared_memory_is_off_by_default(regions, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """As Triton since 26.04: a region is any file in /dev/shm the server can open, so registering one takes
    ``--allow-client-shm=true``."""
    key, _ = regions("off", 64)
    with RunningServer([str(tmp_path)], ["--allow-metrics=false", "--allow-grpc=false"]) as s:
        c = httpclient.InferenceServerClient(s.url)
        with pytest.raises(InferenceServerException) as e:
            c.register_system_shared_memory("off", key, 64)
        assert e.value.status() == "503"
        assert "--allow-client-shm=true" in e.value.message()
        assert c.get_system_shared_memory_status() == []


def test_cuda_shared_memory_has_no_regions(client, server) -> None:  # type: ignore[no-untyped-def]
    """Status and unregister answer as Triton's with none registered; register checks the request as Triton does
    and then fails as a GPU-enabled Triton that cannot open the handle."""
    assert client.get_cuda_shared_memory_status() == []
    client.unregister_cuda_shared_memory()
    client.unregister_cuda_shared_memory("c")
    handle = base64.b64encode(bytes(64)).decode()
    for doc, expected in (
            ({"raw_handle": {"b64": "AAAA"}, "device_id": 0, "byte_size": 64},
             "'raw_handle' must be a valid base64 encoded cudaIpcMemHandle_t"),
            ({"device_id": 0, "byte_size": 64}, "Shared memory register request has no 'raw_handle' field"),
            ({"raw_handle": {"b64": handle}, "device_id": 0}, "attempt to access non-existing object member 'byte_size'"),
            ({"raw_handle": {"b64": handle}, "device_id": 0, "byte_size": 64},
             "failed to register shared memory region: invalid args")):
        status, body = _post(server, "/v2/cudasharedmemory/region/c/register", doc)
        assert status == 400 and body["error"].startswith(expected), body
    assert "system_shared_memory" in client.get_server_metadata()["extensions"]
