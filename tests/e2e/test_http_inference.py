"""A real tritium server, driven through tritonclient.http as users drive Triton."""

from __future__ import annotations

import gzip
import json
import urllib.error
import urllib.request

import ml_dtypes
import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from models import add_sub_graph, identity_graph, mlp_graph, mlp_reference, write_model
from server import RunningServer

ALL_TYPES = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32", "FP64",
             "BYTES", "BF16"]


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    root = tmp_path_factory.mktemp("repo")
    repo = str(root)
    # No config.pbtxt at all: completed from the graph.
    write_model(repo, "identity_fp32", identity_graph("FP32", ("batch", 16)))
    write_model(repo, "add_sub", add_sub_graph("INT32", ("batch", 16)), config="""
        name: "add_sub"
        platform: "onnxruntime_onnx"
        max_batch_size: 8
        input [ { name: "INPUT0" data_type: TYPE_INT32 dims: [ 16 ] },
                { name: "INPUT1" data_type: TYPE_INT32 dims: [ 16 ] } ]
        output [ { name: "OUTPUT0" data_type: TYPE_INT32 dims: [ 16 ] },
                 { name: "OUTPUT1" data_type: TYPE_INT32 dims: [ 16 ] } ]
    """)
    for dt in ALL_TYPES[:-1]:  # BF16: onnxruntime's Python API cannot return it (see test_bf16_model_refused)
        write_model(repo, f"id_{dt.lower()}", identity_graph(dt, (-1,)), config=f"""
            backend: "onnxruntime"
            max_batch_size: 0
            input [ {{ name: "INPUT0" data_type: TYPE_{'STRING' if dt == 'BYTES' else dt} dims: [ -1 ] }} ]
            output [ {{ name: "OUTPUT0" data_type: TYPE_{'STRING' if dt == 'BYTES' else dt} dims: [ -1 ] }} ]
        """)
    graph, weights = mlp_graph((8, 32, 4), seed=1)
    write_model(repo, "mlp", graph)
    np.save(root / "mlp_weights.npy", np.array(weights, dtype=object), allow_pickle=True)
    # Two versions; the default policy serves only the latest.
    write_model(repo, "versioned", identity_graph("FP32", ("batch", 4)), version=1)
    write_model(repo, "versioned", identity_graph("FP32", ("batch", 4)), version=2)
    write_model(repo, "all_versions", identity_graph("FP32", ("batch", 4)), version=1,
                config='version_policy: { all: {} }')
    write_model(repo, "all_versions", identity_graph("FP32", ("batch", 4)), version=3)
    # classification: labels for the first classes only (as files often are)
    write_model(repo, "classes", identity_graph("FP32", ("batch", 4)), config="""
        max_batch_size: 2
        input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 4 ] } ]
        output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 4 ] label_filename: "labels.txt" } ]
    """)
    (root / "classes" / "labels.txt").write_text("cat\ndog\nbird\n")
    # reshape: the client sends [4], the model sees [2, 2].
    write_model(repo, "reshaped", identity_graph("FP32", ("batch", 2, 2)), config="""
        max_batch_size: 4
        input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 4 ] reshape: { shape: [ 2, 2 ] } } ]
        output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 4 ] reshape: { shape: [ 2, 2 ] } } ]
    """)
    return root


@pytest.fixture(scope="module")
def server(repo):
    with RunningServer([str(repo)]) as s:
        yield s


@pytest.fixture
def client(server):
    c = httpclient.InferenceServerClient(server.url)
    yield c
    c.close()


def _input(name, array, datatype, binary):
    inp = httpclient.InferInput(name, list(array.shape), datatype)
    inp.set_data_from_numpy(array, binary_data=binary)
    return inp


def test_health_and_metadata(client):
    assert client.is_server_live()
    assert client.is_server_ready()
    meta = client.get_server_metadata()
    assert meta["name"] == "triton"
    assert "binary_tensor_data" in meta["extensions"]
    assert client.is_model_ready("add_sub")
    assert not client.is_model_ready("no_such_model")


def test_model_metadata_and_config(client):
    meta = client.get_model_metadata("add_sub")
    assert meta == {
        "name": "add_sub",
        "versions": ["1"],
        "platform": "onnxruntime_onnx",
        "inputs": [{"name": "INPUT0", "datatype": "INT32", "shape": [-1, 16]},
                   {"name": "INPUT1", "datatype": "INT32", "shape": [-1, 16]}],
        "outputs": [{"name": "OUTPUT0", "datatype": "INT32", "shape": [-1, 16]},
                    {"name": "OUTPUT1", "datatype": "INT32", "shape": [-1, 16]}],
    }
    config = client.get_model_config("add_sub")
    assert config["max_batch_size"] == 8
    assert config["input"][0]["data_type"] == "TYPE_INT32"
    assert config["input"][0]["dims"] == [16]
    assert config["backend"] == "onnxruntime"
    assert config["instance_group"][0]["kind"] == "KIND_CPU"


def test_auto_complete_from_onnx_graph(client):
    config = client.get_model_config("identity_fp32")
    assert config["name"] == "identity_fp32"
    assert config["platform"] == "onnxruntime_onnx"
    assert config["max_batch_size"] == 4  # Triton's default-max-batch-size for a batchable model
    assert [(i["name"], i["data_type"], i["dims"]) for i in config["input"]] == [("INPUT0", "TYPE_FP32", [16])]
    assert [(o["name"], o["data_type"], o["dims"]) for o in config["output"]] == [("OUTPUT0", "TYPE_FP32", [16])]
    assert "dynamic_batching" in config
    assert config["instance_group"][0]["count"] == 2  # ONNX Runtime's default CPU instance count


@pytest.mark.parametrize("binary", [False, True])
def test_infer_add_sub(client, binary):
    a = np.arange(32, dtype=np.int32).reshape(2, 16)
    b = np.full((2, 16), 3, dtype=np.int32)
    outputs = [httpclient.InferRequestedOutput("OUTPUT0", binary_data=binary),
               httpclient.InferRequestedOutput("OUTPUT1", binary_data=binary)]
    result = client.infer("add_sub", [_input("INPUT0", a, "INT32", binary), _input("INPUT1", b, "INT32", binary)],
                          outputs=outputs, request_id="req-7")
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)
    response = result.get_response()
    assert response["id"] == "req-7"
    assert response["model_name"] == "add_sub"
    assert response["model_version"] == "1"


def test_requested_output_subset_and_order(client):
    a = np.ones((1, 16), dtype=np.int32)
    outputs = [httpclient.InferRequestedOutput("OUTPUT1"), ]
    result = client.infer("add_sub", [_input("INPUT0", a, "INT32", True), _input("INPUT1", a, "INT32", True)],
                          outputs=outputs)
    assert [o["name"] for o in result.get_response()["outputs"]] == ["OUTPUT1"]
    assert result.as_numpy("OUTPUT0") is None
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), np.zeros((1, 16), np.int32))


def _sample(datatype, n=5):
    if datatype == "BYTES":
        return np.array([b"a", b"", b"hello world", "ünï".encode(), b"x" * 300][:n], dtype=object)
    if datatype == "BOOL":
        return np.array([True, False, True, True, False][:n])
    if datatype == "BF16":
        return np.array([1.5, -2.0, 0.25, 3.0, 0.0][:n], dtype=ml_dtypes.bfloat16)
    dtype = {"FP16": np.float16, "FP32": np.float32, "FP64": np.float64}.get(datatype) or np.dtype(datatype.lower())
    return (np.arange(n) * 3 + 1).astype(dtype)


@pytest.mark.parametrize("datatype", ALL_TYPES[:-1])
@pytest.mark.parametrize("binary", [False, True])
def test_every_datatype_round_trips(client, server, datatype, binary):
    data = _sample(datatype)
    model = f"id_{datatype.lower()}"
    if datatype in ("FP16", "BF16") and not binary:
        # JSON cannot carry 16-bit floats; Triton tells the client to use binary data.
        body = {"inputs": [{"name": "INPUT0", "shape": [5], "datatype": datatype, "data": [1.0] * 5}]}
        status, doc = _post(server, f"/v2/models/{model}/infer", json.dumps(body).encode())
        assert status == 400 and "binary" in doc["error"]
        return
    out = httpclient.InferRequestedOutput("OUTPUT0", binary_data=binary or datatype in ("FP16", "BF16"))
    result = client.infer(model, [_input("INPUT0", data, datatype, binary)], outputs=[out])
    got = result.as_numpy("OUTPUT0")
    if datatype == "BYTES":
        assert [x.encode() if isinstance(x, str) else bytes(x) for x in got] == list(data)
    else:
        assert got.dtype == data.dtype
        np.testing.assert_array_equal(got, data)


def _post(server, path, body, headers=None):
    req = urllib.request.Request(f"http://{server.url}{path}", data=body, headers=headers or {})
    try:
        with urllib.request.urlopen(req) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def test_mlp_matches_numpy(client, repo):
    weights = np.load(repo / "mlp_weights.npy", allow_pickle=True)
    x = np.random.default_rng(3).standard_normal((3, 8)).astype(np.float32)
    result = client.infer("mlp", [_input("INPUT0", x, "FP32", True)])
    np.testing.assert_allclose(result.as_numpy("OUTPUT0"), mlp_reference(x, weights), rtol=1e-4, atol=1e-5)


def test_async_infer(client):
    x = np.random.default_rng(0).standard_normal((2, 16)).astype(np.float32)
    futures = [client.async_infer("identity_fp32", [_input("INPUT0", x * i, "FP32", True)]) for i in range(8)]
    for i, future in enumerate(futures):
        np.testing.assert_array_equal(future.get_result().as_numpy("OUTPUT0"), x * i)


@pytest.mark.parametrize("request_algo", [None, "gzip", "deflate"])
@pytest.mark.parametrize("response_algo", [None, "gzip", "deflate"])
def test_compression(client, request_algo, response_algo):
    x = np.arange(16, dtype=np.float32).reshape(1, 16)
    result = client.infer("identity_fp32", [_input("INPUT0", x, "FP32", True)],
                          request_compression_algorithm=request_algo, response_compression_algorithm=response_algo)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), x)


def test_response_is_compressed_when_asked(server):
    body = json.dumps({"inputs": [{"name": "INPUT0", "shape": [1, 16], "datatype": "FP32", "data": [0.5] * 16}]})
    req = urllib.request.Request(f"http://{server.url}/v2/models/identity_fp32/infer", data=body.encode(),
                                 headers={"Accept-Encoding": "gzip"})
    with urllib.request.urlopen(req) as r:
        assert r.headers["Content-Encoding"] == "gzip"
        doc = json.loads(gzip.decompress(r.read()))
    assert doc["outputs"][0]["data"] == [0.5] * 16


def test_versions(client):
    assert client.get_model_metadata("versioned")["versions"] == ["2"]
    assert not client.is_model_ready("versioned", "1")
    assert client.is_model_ready("versioned", "2")
    assert client.get_model_metadata("all_versions")["versions"] == ["1", "3"]
    x = np.ones((1, 4), np.float32)
    for v in ("1", "3"):
        result = client.infer("all_versions", [_input("INPUT0", x, "FP32", True)], model_version=v)
        assert result.get_response()["model_version"] == v
    with pytest.raises(InferenceServerException, match="version"):
        client.infer("versioned", [_input("INPUT0", x, "FP32", True)], model_version="1")


def test_reshape(client):
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    result = client.infer("reshaped", [_input("INPUT0", x, "FP32", True)])
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), x)


def test_nested_and_flat_json_data(server):
    for data in ([[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16]], list(range(1, 17))):
        body = {"inputs": [{"name": "INPUT0", "shape": [1, 16], "datatype": "INT32", "data": data},
                           {"name": "INPUT1", "shape": [1, 16], "datatype": "INT32", "data": data}]}
        req = urllib.request.Request(f"http://{server.url}/v2/models/add_sub/infer", data=json.dumps(body).encode())
        with urllib.request.urlopen(req) as r:
            doc = json.loads(r.read())
        assert doc["outputs"][0]["data"] == [2 * i for i in range(1, 17)]
        assert doc["outputs"][0]["shape"] == [1, 16]


def test_concurrent_requests_are_batched_correctly(client):
    """Many clients at once: each gets its own rows back, whatever batches the server formed."""
    rng = np.random.default_rng(5)
    inputs = [rng.standard_normal((1 + i % 3, 16)).astype(np.float32) for i in range(40)]
    futures = [client.async_infer("identity_fp32", [_input("INPUT0", x, "FP32", True)]) for x in inputs]
    for x, f in zip(inputs, futures):
        np.testing.assert_array_equal(f.get_result().as_numpy("OUTPUT0"), x)


def test_classification_extension(client, server):
    """Triton's answer for the top 2 of an identity over [0..15] is ["15.000000:15","14.000000:14"]."""
    x = np.array([[0.1, 0.7, 0.2, 0.9], [0.5, 0.1, 0.4, 0.3]], np.float32)
    out = httpclient.InferRequestedOutput("OUTPUT0", class_count=3)
    result = client.infer("classes", [_input("INPUT0", x, "FP32", True)], outputs=[out])
    got = result.as_numpy("OUTPUT0")
    assert got.shape == (2, 3)
    assert [[v.decode() if isinstance(v, bytes) else v for v in row] for row in got] == [
        ["0.900000:3", "0.700000:1:dog", "0.200000:2:bird"],
        ["0.500000:0:cat", "0.400000:2:bird", "0.300000:3"],
    ]
    body = {"inputs": [{"name": "INPUT0", "shape": [1, 16], "datatype": "FP32", "data": list(range(16))}],
            "outputs": [{"name": "OUTPUT0", "parameters": {"classification": 2}}]}
    status, doc = _post(server, "/v2/models/identity_fp32/infer", json.dumps(body).encode())
    assert status == 200
    assert doc["outputs"] == [{"name": "OUTPUT0", "datatype": "BYTES", "shape": [1, 2],
                               "data": ["15.000000:15", "14.000000:14"]}]
    body["outputs"][0]["parameters"]["classification"] = "two"
    status, doc = _post(server, "/v2/models/identity_fp32/infer", json.dumps(body).encode())
    assert status == 400 and "classification" in doc["error"]
