"""TensorFlow models through tritonclient (``backend: "tensorflow"``), compared with TensorFlow in-process.

A tf.Module saved as a SavedModel (float, int and string tensors) and the same computation frozen as a
GraphDef: outputs over HTTP and gRPC equal TensorFlow's on the same inputs; batching; BYTES as tf.string;
auto-complete from the serving signature; Triton's TensorFlow parameters honoured or refused naming
the parameter; bad inputs (400 naming the input) and bad models (UNAVAILABLE with the reason, alone).
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

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
tf = pytest.importorskip("tensorflow")

RNG = np.random.default_rng(5)
W1 = (RNG.standard_normal((8, 16)) * 0.3).astype(np.float32)
W2 = (RNG.standard_normal((16, 3)) * 0.3).astype(np.float32)
X = RNG.standard_normal((32, 8)).astype(np.float32)
WORDS = np.array([b"alpha", b"Beta", b"\xc3\xa9t\xc3\xa9", b"", b"x y"] * 7, dtype=object)[:32]


class Mlp(tf.Module):
    """probs = softmax(relu(x W1) W2); doubled = 2 ids (INT64); upper = upper-case words (tf.string)."""

    def __init__(self) -> None:
        super().__init__()
        self.w1 = tf.Variable(W1)
        self.w2 = tf.Variable(W2)

    @tf.function(input_signature=[tf.TensorSpec([None, 8], tf.float32, name="x"),
                                  tf.TensorSpec([None, 2], tf.int64, name="ids"),
                                  tf.TensorSpec([None], tf.string, name="words")])
    def serve(self, x, ids, words):  # type: ignore[no-untyped-def]
        probs = tf.nn.softmax(tf.matmul(tf.nn.relu(tf.matmul(x, self.w1)), self.w2))
        return {"probs": probs, "doubled": ids * 2, "upper": tf.strings.upper(words)}


def _ids(n: int) -> np.ndarray:
    return np.arange(2 * n, dtype=np.int64).reshape(n, 2) - 7


def _expected(module: Mlp, x: np.ndarray, ids: np.ndarray, words: np.ndarray) -> dict[str, np.ndarray]:
    out = module.serve(tf.constant(x), tf.constant(ids), tf.constant(words))
    return {k: v.numpy() for k, v in out.items()}


def _frozen_graph() -> bytes:
    """The float part as a frozen GraphDef: placeholder ``x`` [None, 8] -> ``probs`` [None, 3]."""
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    @tf.function(input_signature=[tf.TensorSpec([None, 8], tf.float32, name="x")])
    def probs(x):  # type: ignore[no-untyped-def]
        return tf.identity(tf.nn.softmax(tf.matmul(tf.nn.relu(tf.matmul(x, W1)), W2)), name="probs")

    return convert_variables_to_constants_v2(probs.get_concrete_function()).graph.as_graph_def().SerializeToString()


IO = ('input [ { name: "x" data_type: TYPE_FP32 dims: [ 8 ] }, { name: "ids" data_type: TYPE_INT64 dims: [ 2 ] },'
      ' { name: "words" data_type: TYPE_STRING dims: [ 1 ] reshape: { shape: [ ] } } ]\n'
      'output [ { name: "probs" data_type: TYPE_FP32 dims: [ 3 ] }, { name: "doubled" data_type: TYPE_INT64 '
      'dims: [ 2 ] }, { name: "upper" data_type: TYPE_STRING dims: [ 1 ] reshape: { shape: [ ] } } ]\n')
GRAPH_IO = ('input [ { name: "x" data_type: TYPE_FP32 dims: [ 8 ] } ]\n'
            'output [ { name: "probs" data_type: TYPE_FP32 dims: [ 3 ] } ]\n')


def _params(**values: str) -> str:
    return "".join(f'parameters {{ key: "{k}" value {{ string_value: "{v}" }} }}\n' for k, v in values.items())


def _repository(repo: str, saved: str, graph: bytes) -> None:
    def model(name: str, config: str | None, savedmodel: bool = True, filename: str | None = None) -> None:
        version = os.path.join(repo, name, "1")
        os.makedirs(version)
        if config is not None:
            with open(os.path.join(repo, name, "config.pbtxt"), "w") as f:
                f.write(config)
        if savedmodel:
            shutil.copytree(saved, os.path.join(version, filename or "model.savedmodel"))
        else:
            with open(os.path.join(version, filename or "model.graphdef"), "wb") as f:
                f.write(graph)

    batched = 'max_batch_size: 16\ndynamic_batching { max_queue_delay_microseconds: 2000 }\n'
    model("saved", 'platform: "tensorflow_savedmodel"\n' + batched + IO
          + 'instance_group [ { count: 2 kind: KIND_CPU } ]\n'
          + _params(TF_NUM_INTRA_THREADS="1", TF_NUM_INTER_THREADS="1", TF_USE_PER_SESSION_THREADS="true",
                    MAX_SESSION_SHARE_COUNT="2"))
    model("saved_custom_name", 'backend: "tensorflow"\ndefault_model_filename: "my.savedmodel"\n' + batched + IO,
          filename="my.savedmodel")
    model("graphdef", 'platform: "tensorflow_graphdef"\n' + batched + GRAPH_IO
          + "optimization { graph { level: -1 } }\n", savedmodel=False)
    # the graph fixes x's 8 values, the config leaves them open: the backend checks each call
    model("graphdef_open", 'platform: "tensorflow_graphdef"\n' + batched + GRAPH_IO.replace("[ 8 ]", "[ -1 ]"),
          savedmodel=False)
    model("graphdef_xla", 'platform: "tensorflow_graphdef"\n' + batched + GRAPH_IO
          + "optimization { graph { level: 1 } }\n", savedmodel=False)
    model("saved_auto", None)
    # refused, each alone
    model("bad_graphdef_no_config", None, savedmodel=False)
    model("bad_threads", 'platform: "tensorflow_savedmodel"\n' + batched + IO + _params(TF_NUM_INTRA_THREADS="lots"))
    model("bad_share", 'platform: "tensorflow_savedmodel"\n' + batched + IO + _params(MAX_SESSION_SHARE_COUNT="0"))
    model("bad_signature", 'platform: "tensorflow_savedmodel"\n' + batched + IO + _params(TF_SIGNATURE_DEF="predict"))
    model("bad_tag", 'platform: "tensorflow_savedmodel"\n' + batched + IO + _params(TF_GRAPH_TAG="train"))
    model("bad_input_name", 'platform: "tensorflow_savedmodel"\n' + batched + IO.replace('"ids"', '"tokens"'))
    model("bad_dtype", 'platform: "tensorflow_savedmodel"\n' + batched
          + IO.replace('"ids" data_type: TYPE_INT64', '"ids" data_type: TYPE_INT32'))
    model("bad_dims", 'platform: "tensorflow_graphdef"\n' + batched + GRAPH_IO.replace("[ 8 ]", "[ 7 ]"),
          savedmodel=False)
    model("bad_graph_tensor", 'platform: "tensorflow_graphdef"\n' + batched + GRAPH_IO.replace('"probs"', '"scores"'),
          savedmodel=False)
    model("bad_kind_gpu", 'platform: "tensorflow_savedmodel"\n' + batched + IO
          + "instance_group [ { kind: KIND_GPU } ]\n")
    os.makedirs(os.path.join(repo, "bad_corrupt", "1"))
    with open(os.path.join(repo, "bad_corrupt", "config.pbtxt"), "w") as f:
        f.write('platform: "tensorflow_graphdef"\n' + batched + GRAPH_IO)
    with open(os.path.join(repo, "bad_corrupt", "1", "model.graphdef"), "wb") as f:
        f.write(b"\x0a\xff\xff\xff garbage")


BAD = {
    "bad_graphdef_no_config": ["GraphDef", "inputs and outputs"],
    "bad_threads": ["TF_NUM_INTRA_THREADS", "lots"],
    "bad_share": ["MAX_SESSION_SHARE_COUNT", "'0'"],
    "bad_signature": ["TF_SIGNATURE_DEF", "predict", "serving_default"],
    "bad_tag": ["TF_GRAPH_TAG", "train", "serve"],
    "bad_input_name": ["tokens", "ids"],
    "bad_dtype": ["TYPE_INT32", "'ids'", "int64"],
    "bad_dims": ["'x'", "7"],
    "bad_graph_tensor": ["scores"],
    "bad_kind_gpu": ["KIND_GPU"],
    "bad_corrupt": ["bad_corrupt", "model.graphdef"],
}


@pytest.fixture(scope="module")
def trained() -> Iterator[tuple[str, Mlp, bytes]]:
    workdir = tempfile.mkdtemp(prefix="tritium-tf-")
    try:
        module = Mlp()
        saved = os.path.join(workdir, "saved")
        tf.saved_model.save(module, saved, signatures=module.serve)
        yield workdir, module, _frozen_graph()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="module")
def server(trained) -> Iterator[RunningServer]:  # type: ignore[no-untyped-def]
    workdir, _, graph = trained
    repo = os.path.join(workdir, "repo")
    _repository(repo, os.path.join(workdir, "saved"), graph)
    with RunningServer([repo], ["--exit-on-error=false"], timeout=180) as running:
        yield running


def _inputs(module, x: np.ndarray, ids: np.ndarray, words: np.ndarray):  # type: ignore[no-untyped-def]
    tensors = [module.InferInput("x", list(x.shape), "FP32"), module.InferInput("ids", list(ids.shape), "INT64"),
               module.InferInput("words", [len(words), 1], "BYTES")]
    tensors[0].set_data_from_numpy(x)
    tensors[1].set_data_from_numpy(ids)
    tensors[2].set_data_from_numpy(words.reshape(-1, 1))
    return tensors


@pytest.mark.parametrize("model", ["saved", "saved_custom_name", "saved_auto"])
def test_savedmodel_outputs_equal_tensorflow_in_process(server: RunningServer, trained, model: str) -> None:  # type: ignore[no-untyped-def]
    module = trained[1]
    http = httpclient.InferenceServerClient(server.url)
    grpc = grpcclient.InferenceServerClient(server.grpc_url)
    largest = 4 if model == "saved_auto" else 16  # auto-complete gives max_batch_size 4
    for rows in (slice(0, 1), slice(2, 5), slice(16, 16 + largest)):
        x, ids, words = X[rows], _ids(32)[rows], WORDS[rows]
        expected = _expected(module, x, ids, words)
        for client_module, client in ((httpclient, http), (grpcclient, grpc)):
            result = client.infer(model, _inputs(client_module, x, ids, words))
            np.testing.assert_allclose(result.as_numpy("probs"), expected["probs"], rtol=1e-6, atol=1e-7)
            np.testing.assert_array_equal(result.as_numpy("doubled"), expected["doubled"])
            assert list(result.as_numpy("upper").reshape(-1)) == list(expected["upper"])


@pytest.mark.parametrize("model", ["graphdef", "graphdef_xla", "graphdef_open"])
def test_graphdef_outputs_equal_tensorflow_in_process(server: RunningServer, trained, model: str) -> None:  # type: ignore[no-untyped-def]
    module = trained[1]
    client = grpcclient.InferenceServerClient(server.grpc_url)
    for rows in (slice(0, 1), slice(0, 16)):
        tensor = grpcclient.InferInput("x", [rows.stop - rows.start, 8], "FP32")
        tensor.set_data_from_numpy(X[rows])
        expected = _expected(module, X[rows], _ids(32)[rows], WORDS[rows])["probs"]
        np.testing.assert_allclose(client.infer(model, [tensor]).as_numpy("probs"), expected, rtol=1e-5, atol=1e-6)


def test_concurrent_requests_are_batched_and_split(server: RunningServer, trained) -> None:  # type: ignore[no-untyped-def]
    module = trained[1]
    expected = _expected(module, X, _ids(32), WORDS)
    client = httpclient.InferenceServerClient(server.url, concurrency=16)
    pending = []
    for i in range(40):
        start, n = i % 29, 1 + i % 3
        part = slice(start, start + n)
        pending.append((part, client.async_infer("saved", _inputs(httpclient, X[part], _ids(32)[part], WORDS[part]))))
    for part, result in pending:
        out = result.get_result(timeout=60)
        np.testing.assert_allclose(out.as_numpy("probs"), expected["probs"][part], rtol=1e-5, atol=1e-6)
        assert list(out.as_numpy("upper").reshape(-1)) == list(expected["upper"][part])
    stats = client.get_inference_statistics("saved")["model_stats"][0]
    assert int(stats["inference_count"]) >= 40
    assert int(stats["inference_stats"]["compute_input"]["ns"]) > 0


def test_auto_complete_from_serving_signature(server: RunningServer) -> None:
    config = httpclient.InferenceServerClient(server.url).get_model_config("saved_auto")
    assert config["backend"] == "tensorflow"
    assert config["max_batch_size"] == 4
    assert "dynamic_batching" in config
    inputs = {t["name"]: (t["data_type"], t["dims"]) for t in config["input"]}
    outputs = {t["name"]: (t["data_type"], t["dims"]) for t in config["output"]}
    assert inputs["x"] == ("TYPE_FP32", [8]) and inputs["ids"] == ("TYPE_INT64", [2])
    assert outputs["probs"] == ("TYPE_FP32", [3]) and outputs["doubled"] == ("TYPE_INT64", [2])
    assert inputs["words"][0] == "TYPE_STRING" and outputs["upper"][0] == "TYPE_STRING"


def test_requested_output_only(server: RunningServer) -> None:
    client = httpclient.InferenceServerClient(server.url)
    result = client.infer("saved", _inputs(httpclient, X[:2], _ids(2), WORDS[:2]),
                          outputs=[httpclient.InferRequestedOutput("doubled")])
    assert result.as_numpy("probs") is None
    np.testing.assert_array_equal(result.as_numpy("doubled"), _ids(2) * 2)


def test_bad_inputs_are_client_errors_naming_the_input(server: RunningServer) -> None:
    client = httpclient.InferenceServerClient(server.url)
    wrong_type = _inputs(httpclient, X[:2], _ids(2), WORDS[:2])
    wrong_type[1] = httpclient.InferInput("ids", [2, 2], "INT32")
    wrong_type[1].set_data_from_numpy(_ids(2).astype(np.int32))
    wrong_shape = _inputs(httpclient, np.zeros((2, 5), np.float32), _ids(2), WORDS[:2])
    wrong_name = _inputs(httpclient, X[:2], _ids(2), WORDS[:2])
    wrong_name[1] = httpclient.InferInput("tokens", [2, 2], "INT64")
    wrong_name[1].set_data_from_numpy(_ids(2))
    for inputs, word in ((wrong_type, "ids"), (wrong_shape, "x"), (wrong_name, "tokens")):
        with pytest.raises(InferenceServerException) as e:
            client.infer("saved", inputs)
        assert e.value.status() == "400"
        assert word in str(e.value)
    grpc = grpcclient.InferenceServerClient(server.grpc_url)
    with pytest.raises(InferenceServerException, match="x") as e:
        grpc.infer("saved", _inputs(grpcclient, np.zeros((2, 5), np.float32), _ids(2), WORDS[:2]))
    assert e.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert client.is_model_ready("saved")
    open_x = httpclient.InferInput("x", [2, 5], "FP32")  # the config allows any width, the graph takes 8
    open_x.set_data_from_numpy(np.zeros((2, 5), np.float32))
    with pytest.raises(InferenceServerException, match=r"'x'.*\[2, 5\].*\[-1, 8\]") as e:
        client.infer("graphdef_open", [open_x])
    assert e.value.status() == "400"
    assert client.is_model_ready("graphdef_open")


def test_refused_models_fail_alone_with_reasons(server: RunningServer) -> None:
    request = urllib.request.Request(f"http://{server.url}/v2/repository/index", data=b"{}", method="POST")
    with urllib.request.urlopen(request, timeout=30) as r:
        index = {m["name"]: m for m in json.loads(r.read())}
    for name, words in BAD.items():
        assert index[name]["state"] == "UNAVAILABLE", name
        for word in words:
            assert word in index[name]["reason"], (name, word, index[name]["reason"])
    for name in ("saved", "graphdef", "graphdef_open", "saved_auto", "saved_custom_name"):
        assert index[name]["state"] == "READY", (name, index[name].get("reason"))
