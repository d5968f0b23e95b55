"""OpenVINO models through tritonclient (``backend: "openvino"``), compared with OpenVINO run in-process.

Tiny models built with OpenVINO's own opset and saved as IR (and one as ONNX, which Triton's backend
also reads): outputs over HTTP and gRPC equal OpenVINO's on the same inputs; batching (dynamic batch
dimension, and Triton's fixed batch with padding); auto-complete from the model; the parameters Triton's
OpenVINO backend documents, honoured or refused naming the parameter; bad inputs and bad models.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import urllib.request
from collections.abc import Iterator

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from server import RunningServer

ov = pytest.importorskip("openvino")
ops = pytest.importorskip("openvino.opset13")

RNG = np.random.default_rng(3)
W1 = (RNG.standard_normal((8, 16)) * 0.3).astype(np.float32)
W2 = (RNG.standard_normal((16, 3)) * 0.3).astype(np.float32)
#: Batches of different sizes may run different kernels: float outputs agree to this tolerance.
TOL = {"rtol": 1e-5, "atol": 1e-6}
X = RNG.standard_normal((32, 8)).astype(np.float32)


def _mlp(batch: int = -1, layout: bool = False):  # type: ignore[no-untyped-def]
    """x [batch, 8] FP32 -> probs [batch, 3] (softmax of a 2-layer MLP), and doubled [batch, 8] INT32."""
    x = ops.parameter([batch, 8], ov.Type.f32, name="x")
    ids = ops.parameter([batch, 8], ov.Type.i32, name="ids")
    hidden = ops.relu(ops.matmul(x, ops.constant(W1), False, False))
    probs = ops.softmax(ops.matmul(hidden, ops.constant(W2), False, False), 1)
    doubled = ops.multiply(ids, ops.constant(np.array(2, np.int32)))
    probs.output(0).set_names({"probs"})
    doubled.output(0).set_names({"doubled"})
    model = ov.Model([probs, doubled], [x, ids], "mlp")
    if layout:
        for port in (*model.inputs, *model.outputs):
            port.get_rt_info()["layout"] = "NC"
        for param in model.get_parameters():
            param.set_layout(ov.Layout("NC"))
        for result in model.get_results():
            result.set_layout(ov.Layout("NC"))
    return model


#: The compile properties of model "mlp" (INFERENCE_PRECISION_HINT f32: exact float32 on CPUs where OpenVINO
#: would run it in bfloat16 by default).
MLP_PROPERTIES = {"NUM_STREAMS": "2", "PERFORMANCE_HINT": "THROUGHPUT", "INFERENCE_NUM_THREADS": 1,
                  "INFERENCE_PRECISION_HINT": "f32"}


def _reference(x: np.ndarray, ids: np.ndarray, properties: dict | None = None) -> dict[str, np.ndarray]:
    """The same model file compiled by OpenVINO in this process, with the same properties (the expected
    outputs); ``save_model`` stores the weights as FP16 by default, so the file is what is compared."""
    with tempfile.TemporaryDirectory() as folder:
        ov.save_model(_mlp(), os.path.join(folder, "model.xml"))
        model = ov.Core().read_model(os.path.join(folder, "model.xml"))
    compiled = ov.Core().compile_model(model, "CPU", properties or {})
    result = compiled.create_infer_request().infer({"x": x, "ids": ids})
    return {"probs": np.array(result["probs"]), "doubled": np.array(result["doubled"])}


IO = ('input [ { name: "x" data_type: TYPE_FP32 dims: [ 8 ] }, { name: "ids" data_type: TYPE_INT32 dims: [ 8 ] } ]\n'
      'output [ { name: "probs" data_type: TYPE_FP32 dims: [ 3 ] }, '
      '{ name: "doubled" data_type: TYPE_INT32 dims: [ 8 ] } ]\n')


def _params(**values: str) -> str:
    return "".join(f'parameters {{ key: "{k}" value {{ string_value: "{v}" }} }}\n' for k, v in values.items())


def _write(repo: str, name: str, config: str | None, files: dict[str, object]) -> None:
    version = os.path.join(repo, name, "1")
    os.makedirs(version, exist_ok=True)
    if config is not None:
        with open(os.path.join(repo, name, "config.pbtxt"), "w") as f:
            f.write(config)
    for filename, content in files.items():
        if isinstance(content, bytes):
            with open(os.path.join(version, filename), "wb") as f:
                f.write(content)
        else:
            ov.save_model(content, os.path.join(version, filename))


def _repository(repo: str, workdir: str) -> None:
    batched = 'backend: "openvino"\nmax_batch_size: 16\ndynamic_batching { max_queue_delay_microseconds: 2000 }\n'
    _write(repo, "mlp", batched + IO + 'instance_group [ { count: 2 kind: KIND_CPU } ]\n'
           + _params(NUM_STREAMS="2", PERFORMANCE_HINT="throughput", INFERENCE_NUM_THREADS="1",
                     INFERENCE_PRECISION_HINT="f32"),
           {"model.xml": _mlp()})
    # a model with a static batch of 1: the batch dimension is made dynamic
    _write(repo, "mlp_static", batched + IO, {"model.xml": _mlp(batch=1)})
    # Triton's fixed batch: SKIP_OV_DYNAMIC_BATCHSIZE runs at max_batch_size, padding smaller batches
    _write(repo, "mlp_fixed_padded", batched.replace("16", "4") + IO
           + _params(SKIP_OV_DYNAMIC_BATCHSIZE="YES", ENABLE_BATCH_PADDING="YES", INFERENCE_PRECISION_HINT="f32"), {"model.xml": _mlp()})
    _write(repo, "mlp_fixed", batched.replace("16", "4").replace("dynamic_batching { max_queue_delay_microseconds: "
                                                                 "2000 }\n", "") + IO
           + _params(SKIP_OV_DYNAMIC_BATCHSIZE="yes", INFERENCE_PRECISION_HINT="f32"), {"model.xml": _mlp()})
    # no batching: the model's full shape, [-1, 8] -> dims [ -1, 8 ]
    _write(repo, "mlp_nobatch", 'backend: "openvino"\n' + IO.replace("[ 8 ]", "[ -1, 8 ]").replace("[ 3 ]", "[ -1, 3 ]")
           + _params(INFERENCE_PRECISION_HINT="F32"), {"model.xml": _mlp()})
    # RESHAPE_IO_LAYERS: a model made for batch 2, reshaped to the config's dims
    _write(repo, "mlp_reshaped", 'backend: "openvino"\n' + IO.replace("[ 8 ]", "[ -1, 8 ]").replace("[ 3 ]", "[ -1, 3 ]")
           + _params(RESHAPE_IO_LAYERS="YES", INFERENCE_PRECISION_HINT="f32"), {"model.xml": _mlp(batch=2)})
    # auto-complete: no config at all (batching from the model's 'N' layout), and a model without layout
    _write(repo, "auto_layout", None, {"model.xml": _mlp(layout=True)})
    _write(repo, "auto_plain", None, {"model.xml": _mlp()})
    # an identity graph: OpenVINO may hand the input's memory back as the output
    x = ops.parameter([-1, 16], ov.Type.f32, name="INPUT0")
    same = ops.convert(x, "f32")
    same.output(0).set_names({"OUTPUT0"})
    _write(repo, "identity", 'backend: "openvino"\nmax_batch_size: 8\ndynamic_batching { }\n'
           'input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 16 ] } ]\n'
           'output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 16 ] } ]\n',
           {"model.xml": ov.Model([same], [x], "identity")})
    # outputs whose shape depends on the values (NonZero): the instance reuses its request's tensors, whose
    # shapes must follow each run
    v = ops.parameter([-1, 4], ov.Type.f32, name="VALUES")
    where = ops.non_zero(v, "i64")
    where.output(0).set_names({"WHERE"})
    _write(repo, "nonzero", 'backend: "openvino"\n'
           'input [ { name: "VALUES" data_type: TYPE_FP32 dims: [ -1, 4 ] } ]\n'
           'output [ { name: "WHERE" data_type: TYPE_INT64 dims: [ 2, -1 ] } ]\n',
           {"model.xml": ov.Model([where], [v], "nonzero")})
    # ONNX read by OpenVINO (Triton's backend loads model.onnx named by default_model_filename)
    onnx_path = os.path.join(workdir, "identity.onnx")
    _onnx_identity(onnx_path)
    with open(onnx_path, "rb") as f:
        _write(repo, "onnx_via_openvino", 'backend: "openvino"\ndefault_model_filename: "model.onnx"\nmax_batch_size: 8\n'
               'input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 4 ] } ]\n'
               'output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 4 ] } ]\n', {"model.onnx": f.read()})
    # refused, each alone
    bad = {
        "bad_hint": (_params(PERFORMANCE_HINT="fastest"), _mlp()),
        "bad_streams": (_params(NUM_STREAMS="many"), _mlp()),
        "bad_threads": (_params(INFERENCE_NUM_THREADS="-2"), _mlp()),
        "bad_flag": (_params(RESHAPE_IO_LAYERS="perhaps"), _mlp()),
        "bad_precision": (_params(INFERENCE_PRECISION_HINT="f8"), _mlp()),
        "bad_device": (_params(TARGET_DEVICE="NPU"), _mlp()),
        "bad_kind_gpu": ("instance_group [ { kind: KIND_GPU } ]\n", _mlp()),
        "bad_input_name": ("", _mlp()),
        "bad_dims": ("", _mlp()),
        "bad_string": ("", _mlp()),
    }
    for name, (extra, model) in bad.items():
        io = IO
        if name == "bad_input_name":
            io = IO.replace('"ids"', '"tokens"')
        elif name == "bad_dims":
            io = IO.replace('"x" data_type: TYPE_FP32 dims: [ 8 ]', '"x" data_type: TYPE_FP32 dims: [ 9 ]')
        elif name == "bad_string":
            io = IO.replace('"ids" data_type: TYPE_INT32', '"ids" data_type: TYPE_STRING')
        _write(repo, name, batched + io + extra, {"model.xml": model})
    _write(repo, "bad_corrupt", batched + IO, {"model.xml": b"<?xml version='1.0'?><net name='x'><layers>",
                                               "model.bin": b"\0" * 16})
    _write(repo, "bad_missing", batched + IO, {})


def _onnx_identity(path: str) -> None:
    onnx = pytest.importorskip("onnx")
    helper = onnx.helper
    node = helper.make_node("Identity", ["INPUT0"], ["OUTPUT0"])
    graph = helper.make_graph([node], "identity",
                              [helper.make_tensor_value_info("INPUT0", onnx.TensorProto.FLOAT, ["batch", 4])],
                              [helper.make_tensor_value_info("OUTPUT0", onnx.TensorProto.FLOAT, ["batch", 4])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)


BAD = {
    "bad_hint": ["PERFORMANCE_HINT", "fastest".upper()],
    "bad_streams": ["NUM_STREAMS", "MANY"],
    "bad_threads": ["INFERENCE_NUM_THREADS", "-2"],
    "bad_flag": ["RESHAPE_IO_LAYERS", "perhaps"],
    "bad_precision": ["INFERENCE_PRECISION_HINT", "f8"],
    "bad_device": ["TARGET_DEVICE", "NPU"],
    "bad_kind_gpu": ["KIND_GPU"],
    "bad_input_name": ["tokens", "ids"],
    "bad_dims": ["'x'", "[9]" if False else "9"],
    "bad_string": ["TYPE_STRING", "ids"],
    "bad_corrupt": ["model.xml", "OpenVINO cannot read"],
    "bad_missing": ["model.xml", "unable to find"],
}


@pytest.fixture(scope="module")
def server() -> Iterator[RunningServer]:
    workdir = tempfile.mkdtemp(prefix="tritium-openvino-")
    try:
        repo = os.path.join(workdir, "repo")
        _repository(repo, workdir)
        with RunningServer([repo], ["--exit-on-error=false"], timeout=120) as running:
            yield running
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _inputs(module, x: np.ndarray, ids: np.ndarray):  # type: ignore[no-untyped-def]
    tensors = [module.InferInput("x", list(x.shape), "FP32"), module.InferInput("ids", list(ids.shape), "INT32")]
    tensors[0].set_data_from_numpy(x)
    tensors[1].set_data_from_numpy(ids)
    return tensors


def _ids(n: int) -> np.ndarray:
    return np.arange(n * 8, dtype=np.int32).reshape(n, 8) - 17


@pytest.mark.parametrize("model,properties", [("mlp", MLP_PROPERTIES), ("mlp_static", {}), ("auto_layout", {})])
def test_outputs_equal_openvino_in_process(server: RunningServer, model: str, properties: dict) -> None:
    http = httpclient.InferenceServerClient(server.url)
    grpc = grpcclient.InferenceServerClient(server.grpc_url)
    largest = 4 if model == "auto_layout" else 16  # auto-complete gave max_batch_size 4
    for rows in (slice(0, 1), slice(3, 7), slice(16, 16 + largest)):
        x, ids = X[rows], _ids(32)[rows]
        expected = _reference(x, ids, properties)  # the same batch in process: the same kernels
        for module, client in ((httpclient, http), (grpcclient, grpc)):
            result = client.infer(model, _inputs(module, x, ids))
            np.testing.assert_allclose(result.as_numpy("probs"), expected["probs"], **TOL)
            np.testing.assert_array_equal(result.as_numpy("doubled"), expected["doubled"])


def test_requested_output_only(server: RunningServer) -> None:
    client = httpclient.InferenceServerClient(server.url)
    result = client.infer("mlp", _inputs(httpclient, X[:2], _ids(2)),
                          outputs=[httpclient.InferRequestedOutput("doubled")])
    assert result.as_numpy("probs") is None
    np.testing.assert_array_equal(result.as_numpy("doubled"), _ids(2) * 2)


def test_concurrent_requests_are_batched_and_split(server: RunningServer) -> None:
    expected = _reference(X, _ids(32), MLP_PROPERTIES)
    client = httpclient.InferenceServerClient(server.url, concurrency=16)
    pending = []
    for i in range(40):
        start, n = i % 29, 1 + i % 3
        pending.append((start, n, client.async_infer("mlp", _inputs(httpclient, X[start:start + n],
                                                                   _ids(32)[start:start + n]))))
    for start, n, result in pending:
        out = result.get_result(timeout=60)
        np.testing.assert_allclose(out.as_numpy("probs"), expected["probs"][start:start + n], **TOL)
    stats = client.get_inference_statistics("mlp")["model_stats"][0]
    assert int(stats["inference_count"]) >= sum(n for _, n, _ in pending)
    assert int(stats["inference_stats"]["compute_input"]["ns"]) > 0  # the backend's timing stamps


def test_identity_under_concurrent_binary_requests(server: RunningServer) -> None:
    """Inputs arrive in request bodies the server frees after each request: OpenVINO must not keep them
    (with shared inputs, an identity graph's output overwrote freed memory and crashed the server)."""
    client = httpclient.InferenceServerClient(server.url, concurrency=8)
    pending = []
    for i in range(400):
        data = np.full((1 + i % 3, 16), i, dtype=np.float32)
        tensor = httpclient.InferInput("INPUT0", list(data.shape), "FP32")
        tensor.set_data_from_numpy(data, binary_data=True)
        pending.append((data, client.async_infer("identity", [tensor], outputs=[
            httpclient.InferRequestedOutput("OUTPUT0", binary_data=True)])))
    for data, result in pending:
        np.testing.assert_array_equal(result.get_result(timeout=60).as_numpy("OUTPUT0"), data)
    assert server.proc.poll() is None and client.is_server_live()


def test_output_shapes_follow_each_run(server: RunningServer) -> None:
    """The instance keeps its infer request's tensors between runs: inputs of new shapes and outputs whose
    shape depends on the values (NonZero) must still come back exact, in any order of shapes."""
    client = httpclient.InferenceServerClient(server.url)
    for values in ([[1, 0, 2, 0]], [[1, 1, 1, 1], [0, 0, 0, 3], [5, 5, 5, 5]], [[0, 0, 0, 0], [0, 0, 0, 0]],
                   [[-1, 0, 2, 3]], [[0, 0, 0, 7]]):
        x = np.array(values, np.float32)
        tensor = httpclient.InferInput("VALUES", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        got = client.infer("nonzero", [tensor]).as_numpy("WHERE")
        np.testing.assert_array_equal(got, np.array(np.nonzero(x), np.int64))


def test_fixed_batch_pads_or_refuses(server: RunningServer) -> None:
    expected = _reference(X, _ids(32), {"INFERENCE_PRECISION_HINT": "f32"})
    client = httpclient.InferenceServerClient(server.url)
    for n in (1, 3, 4):
        result = client.infer("mlp_fixed_padded", _inputs(httpclient, X[:n], _ids(n)))
        np.testing.assert_allclose(result.as_numpy("probs"), expected["probs"][:n], **TOL)
    result = client.infer("mlp_fixed", _inputs(httpclient, X[:4], _ids(4)))
    np.testing.assert_allclose(result.as_numpy("probs"), expected["probs"][:4], **TOL)
    with pytest.raises(InferenceServerException, match="ENABLE_BATCH_PADDING") as e:
        client.infer("mlp_fixed", _inputs(httpclient, X[:2], _ids(2)))
    assert e.value.status() == "400"


def test_unbatched_and_reshaped_models(server: RunningServer) -> None:
    expected = _reference(X, _ids(32), {"INFERENCE_PRECISION_HINT": "f32"})
    client = httpclient.InferenceServerClient(server.url)
    for model in ("mlp_nobatch", "mlp_reshaped"):
        result = client.infer(model, _inputs(httpclient, X[:5], _ids(5)))
        np.testing.assert_allclose(result.as_numpy("probs"), expected["probs"][:5], **TOL)


def test_onnx_read_by_openvino(server: RunningServer) -> None:
    client = grpcclient.InferenceServerClient(server.grpc_url)
    data = RNG.standard_normal((3, 4)).astype(np.float32)
    tensor = grpcclient.InferInput("INPUT0", [3, 4], "FP32")
    tensor.set_data_from_numpy(data)
    np.testing.assert_array_equal(client.infer("onnx_via_openvino", [tensor]).as_numpy("OUTPUT0"), data)


def test_auto_complete(server: RunningServer) -> None:
    client = httpclient.InferenceServerClient(server.url)
    config = client.get_model_config("auto_layout")
    assert config["backend"] == "openvino"
    assert config["max_batch_size"] == 4  # default-max-batch-size: every tensor's layout has a batch ('N')
    assert "dynamic_batching" in config
    assert [(t["name"], t["data_type"], t["dims"]) for t in config["input"]] == [
        ("x", "TYPE_FP32", [8]), ("ids", "TYPE_INT32", [8])]
    assert [(t["name"], t["data_type"], t["dims"]) for t in config["output"]] == [
        ("probs", "TYPE_FP32", [3]), ("doubled", "TYPE_INT32", [8])]
    # no layout: no batching, the full shapes
    config = client.get_model_config("auto_plain")
    assert config.get("max_batch_size", 0) == 0
    assert [(t["name"], t["dims"]) for t in config["input"]] == [("x", [-1, 8]), ("ids", [-1, 8])]
    result = client.infer("auto_plain", _inputs(httpclient, X[:2], _ids(2)))
    np.testing.assert_array_equal(result.as_numpy("doubled"), _ids(2) * 2)


def test_bad_inputs_are_client_errors_naming_the_input(server: RunningServer) -> None:
    client = httpclient.InferenceServerClient(server.url)
    wrong_type = [httpclient.InferInput("x", [2, 8], "FP64"), _inputs(httpclient, X[:2], _ids(2))[1]]
    wrong_type[0].set_data_from_numpy(X[:2].astype(np.float64))
    wrong_shape = _inputs(httpclient, np.zeros((2, 5), np.float32), _ids(2))
    wrong_name = _inputs(httpclient, X[:2], _ids(2))
    wrong_name[1] = httpclient.InferInput("tokens", [2, 8], "INT32")
    wrong_name[1].set_data_from_numpy(_ids(2))
    for inputs, word in ((wrong_type, "x"), (wrong_shape, "x"), (wrong_name, "tokens")):
        with pytest.raises(InferenceServerException) as e:
            client.infer("mlp", inputs)
        assert e.value.status() == "400"
        assert f"'{word}'" in str(e.value) or word in str(e.value)
    grpc = grpcclient.InferenceServerClient(server.grpc_url)
    with pytest.raises(InferenceServerException, match="x") as e:
        grpc.infer("mlp", _inputs(grpcclient, np.zeros((2, 5), np.float32), _ids(2)))
    assert e.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert client.is_model_ready("mlp")


def test_refused_models_fail_alone_with_reasons(server: RunningServer) -> None:
    request = urllib.request.Request(f"http://{server.url}/v2/repository/index", data=b"{}", method="POST")
    with urllib.request.urlopen(request, timeout=30) as r:
        index = {m["name"]: m for m in json.loads(r.read())}
    for name, words in BAD.items():
        assert index[name]["state"] == "UNAVAILABLE", name
        for word in words:
            assert word in index[name]["reason"], (name, word, index[name]["reason"])
    assert index["mlp"]["state"] == "READY"


def test_bare_infer_runs_the_request_without_the_wrapper() -> None:
    """The backend runs each request through the binding's own ``infer`` (no per-run dictionary of output
    copies); on the OpenVINO this suite installs, that entry point exists and fills the request's tensors as
    the public ``infer()`` does."""
    import functools

    from tritium.backends.openvino import _bare_infer

    x = ops.parameter([-1, 4], ov.Type.f32, name="x")
    compiled = ov.Core().compile_model(ov.Model([ops.relu(x)], [x], "relu"), "CPU", {"INFERENCE_NUM_THREADS": 1})
    request = compiled.create_infer_request()
    run = _bare_infer(request)
    assert isinstance(run, functools.partial)
    for rows in (1, 3, 2):
        values = RNG.standard_normal((rows, 4)).astype(np.float32)
        tensor = request.get_input_tensor(0)
        tensor.shape = values.shape
        tensor.data[...] = values
        run()
        np.testing.assert_array_equal(request.get_output_tensor(0).data, np.maximum(values, 0))
