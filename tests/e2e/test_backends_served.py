"""Backends from outside tritium, end to end through tritonclient.

- the example package ``examples/backends/tritium-example-backend`` is installed with pip (into a folder
  put on the server's PYTHONPATH) and found through its ``tritium.backends`` entry point; its
  ``--backend-config`` reaches its initialize, auto-complete fills its config, its timing stamps show
  in the statistics, its undeclared instance kind is refused;
- Python-based backends: ``--backend-directory=DIR`` with ``DIR/<name>/model.py`` serving several models,
  ``runtime: "model.py"``, the ``args`` the model gets (compared with real Triton where it is here);
- unknown backend names fail only their model, with a reason.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Iterator
from unittest import mock

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from server import ROOT, RunningServer

EXAMPLE = os.path.join(ROOT, "examples", "backends", "tritium-example-backend")

AFFINE = '''
backend: "example_affine"
max_batch_size: 8
dynamic_batching { max_queue_delay_microseconds: 2000 }
parameters { key: "offset" value { string_value: "0.5" } }
'''

#: A Python-based backend: one model.py for every model that names it; it reports what it was given.
ECHO_ARGS = '''
import json, os
import numpy as np
import triton_python_backend_utils as pb_utils
import helper  # a module beside model.py in the backend's folder


class TritonPythonModel:
    def initialize(self, args):
        self.info = {k: v for k, v in args.items() if k != "model_config"}
        config = json.loads(args["model_config"])
        self.info["backend"] = config.get("backend")
        self.info["runtime"] = config.get("runtime")
        self.info["module"] = __name__
        self.info["helper"] = helper.TAG
        self.info["file"] = os.path.basename(__file__)
        self.info["param"] = config.get("parameters", {}).get("greeting", {}).get("string_value")

    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            info = np.array([json.dumps(self.info, sort_keys=True).encode()], dtype=np.object_)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", x * 2),
                                                         pb_utils.Tensor("INFO", info)]))
        return responses
'''

ECHO_CONFIG = '''
backend: "{backend}"
{runtime}
max_batch_size: 0
input [{{ name: "INPUT0" data_type: TYPE_FP32 dims: [ 2 ] }}]
output [{{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 2 ] }}, {{ name: "INFO" data_type: TYPE_STRING dims: [ 1 ] }}]
parameters {{ key: "greeting" value {{ string_value: "hi-{name}" }} }}
'''

UNKNOWN = '''
backend: "no_such_backend"
max_batch_size: 0
input [{ name: "INPUT0" data_type: TYPE_FP32 dims: [ 2 ] }]
output [{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 2 ] }]
'''


def _write(repo: str, name: str, config: str) -> None:
    os.makedirs(os.path.join(repo, name, "1"), exist_ok=True)
    with open(os.path.join(repo, name, "config.pbtxt"), "w") as f:
        f.write(config)


def build_backend_dir(directory: str) -> None:
    os.makedirs(os.path.join(directory, "echoargs"), exist_ok=True)
    with open(os.path.join(directory, "echoargs", "model.py"), "w") as f:
        f.write(ECHO_ARGS)
    with open(os.path.join(directory, "echoargs", "helper.py"), "w") as f:
        f.write('TAG = "helper from the backend folder"\n')


def build_python_based_repo(repo: str) -> None:
    """Models of the Python-based backend ``echoargs``, and ones whose backend cannot be found."""
    _write(repo, "pb_plain", ECHO_CONFIG.format(backend="echoargs", runtime="", name="pb_plain"))
    _write(repo, "pb_runtime", ECHO_CONFIG.format(backend="echoargs", runtime='runtime: "model.py"', name="pb_runtime"))
    # runtime model.py names the Python-based backend even for a built-in's name; there is none here
    _write(repo, "pb_missing_runtime", ECHO_CONFIG.format(backend="pytorch", runtime='runtime: "model.py"',
                                                          name="pb_missing_runtime"))
    _write(repo, "unknown_backend", UNKNOWN)


@pytest.fixture(scope="module")
def example_target() -> Iterator[str]:
    """The example backend package installed by pip into a folder of its own (``--target``): putting that
    folder on PYTHONPATH makes its entry point visible to ``importlib.metadata``, as an installed package."""
    target = tempfile.mkdtemp(prefix="tritium-example-backend-")
    build = tempfile.mkdtemp(prefix="tritium-example-build-")
    source = os.path.join(build, "src")
    shutil.copytree(EXAMPLE, source)  # build in a copy: nothing is written into the checkout
    try:
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                        "--no-index", "--target", target, source], check=True, timeout=300,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        yield target
    finally:
        shutil.rmtree(target, ignore_errors=True)
        shutil.rmtree(build, ignore_errors=True)


@pytest.fixture(scope="module")
def server(example_target: str) -> Iterator[RunningServer]:
    workdir = tempfile.mkdtemp(prefix="tritium-backend-api-")
    repo, backends = os.path.join(workdir, "repo"), os.path.join(workdir, "backends")
    build_backend_dir(backends)
    build_python_based_repo(repo)
    _write(repo, "affine", AFFINE)
    _write(repo, "affine_kind_model", AFFINE + 'instance_group [{ kind: KIND_MODEL }]\n')
    python_path = os.pathsep.join(p for p in (example_target, os.environ.get("PYTHONPATH")) if p)
    try:
        with mock.patch.dict(os.environ, {"PYTHONPATH": python_path}), \
                RunningServer([repo], ["--exit-on-error=false", "--backend-config=example_affine,scale=3",
                                       f"--backend-directory={backends}"]) as running:
            yield running
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _index(url: str) -> dict[str, dict]:
    request = urllib.request.Request(f"http://{url}/v2/repository/index", data=b"{}", method="POST")
    with urllib.request.urlopen(request, timeout=30) as r:
        return {m["name"]: m for m in json.loads(r.read())}


def _affine_http(client: httpclient.InferenceServerClient, x: np.ndarray) -> np.ndarray:
    tensor = httpclient.InferInput("INPUT0", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    return client.infer("affine", [tensor]).as_numpy("OUTPUT0")


def test_out_of_tree_backend_serves(server: RunningServer) -> None:
    """scale 3 from --backend-config (backend initialize), offset 0.5 from the model's parameters."""
    client = httpclient.InferenceServerClient(server.url, concurrency=8)
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    np.testing.assert_allclose(_affine_http(client, x), x * 3 + 0.5)
    grpc = grpcclient.InferenceServerClient(server.grpc_url)
    tensor = grpcclient.InferInput("INPUT0", [1, 2], "FP32")
    tensor.set_data_from_numpy(np.array([[1, -1]], dtype=np.float32))
    np.testing.assert_allclose(grpc.infer("affine", [tensor]).as_numpy("OUTPUT0"), [[3.5, -2.5]])
    # concurrent requests go through the dynamic batcher as one batch, each gets its own rows back
    inputs = [np.full((1 + i % 3, 5), i, dtype=np.float32) for i in range(24)]
    pending = []
    for x in inputs:
        tensor = httpclient.InferInput("INPUT0", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        pending.append(client.async_infer("affine", [tensor]))
    for x, p in zip(inputs, pending):
        np.testing.assert_allclose(p.get_result(timeout=60).as_numpy("OUTPUT0"), x * 3 + 0.5)


def test_out_of_tree_backend_auto_completes_and_stamps(server: RunningServer) -> None:
    client = httpclient.InferenceServerClient(server.url)
    config = client.get_model_config("affine")
    assert [(t["name"], t["data_type"], t["dims"]) for t in config["input"]] == [("INPUT0", "TYPE_FP32", [-1])]
    assert [(t["name"], t["data_type"], t["dims"]) for t in config["output"]] == [("OUTPUT0", "TYPE_FP32", [-1])]
    assert config["backend"] == "example_affine"
    _affine_http(client, np.ones((1, 3), dtype=np.float32))
    stats = client.get_inference_statistics("affine")["model_stats"][0]["inference_stats"]
    # compute_input is only non-zero when the backend stamped input_end_ns (else it all counts as infer)
    assert int(stats["compute_input"]["ns"]) > 0
    assert int(stats["compute_infer"]["ns"]) > 0
    assert int(stats["compute_output"]["ns"]) > 0


def test_undeclared_instance_kind_and_unknown_backend_fail_alone(server: RunningServer) -> None:
    index = _index(server.url)
    assert index["affine"]["state"] == "READY"
    assert index["affine_kind_model"]["state"] == "UNAVAILABLE"
    reason = index["affine_kind_model"]["reason"]
    assert "KIND_MODEL" in reason and "example_affine" in reason and "KIND_CPU" in reason
    assert index["unknown_backend"]["state"] == "UNAVAILABLE"
    reason = index["unknown_backend"]["reason"]
    assert "no_such_backend" in reason and "tritium.backends" in reason and "model.py" in reason
    client = httpclient.InferenceServerClient(server.url)
    with pytest.raises(InferenceServerException, match="unknown_backend"):
        client.infer("unknown_backend", [httpclient.InferInput("INPUT0", [2], "FP32")])


def _echo(client: httpclient.InferenceServerClient, model: str) -> tuple[np.ndarray, dict]:
    tensor = httpclient.InferInput("INPUT0", [2], "FP32")
    tensor.set_data_from_numpy(np.array([1, 2], dtype=np.float32))
    result = client.infer(model, [tensor])
    return result.as_numpy("OUTPUT0"), json.loads(result.as_numpy("INFO")[0])


def python_based_expectations(repo: str) -> dict[str, dict]:
    """What Triton 2.51 gives a Python-based backend's model (checked against it by the test below)."""
    return {name: {"backend": "echoargs", "runtime": "model.py", "module": "model", "file": "model.py",
                   "helper": "helper from the backend folder", "param": f"hi-{name}",
                   "model_name": name, "model_repository": os.path.join(repo, name), "model_version": "1",
                   "model_instance_name": f"{name}_0", "model_instance_kind": "CPU",
                   "model_instance_device_id": "0"}
            for name in ("pb_plain", "pb_runtime")}


def test_python_based_backend(server: RunningServer) -> None:
    client = httpclient.InferenceServerClient(server.url)
    repo = os.path.dirname(_index_repo_dir(server))
    for name, expected in python_based_expectations(repo).items():
        output, info = _echo(client, name)
        np.testing.assert_allclose(output, [2, 4])
        assert info == expected
        assert client.get_model_config(name)["runtime"] == "model.py"
    index = _index(server.url)
    assert index["pb_missing_runtime"]["state"] == "UNAVAILABLE"
    assert "model.py" in index["pb_missing_runtime"]["reason"] and "pytorch" in index["pb_missing_runtime"]["reason"]


def _index_repo_dir(server: RunningServer) -> str:
    """The repository folder the server was started with (its --model-repository flag)."""
    for arg in server.proc.args:
        if str(arg).startswith("--model-repository="):
            return os.path.join(str(arg).split("=", 1)[1], "pb_plain")
    raise AssertionError("no --model-repository")


REAL_TRITON_PYTHON = os.environ.get("TRITIUM_TRITON_PYTHON", "/work/triton-ref/.venv-triton/bin/python")


@pytest.mark.skipif(not os.path.exists(REAL_TRITON_PYTHON), reason="real Triton is not available here")
def test_python_based_backend_against_real_triton() -> None:
    """The same backend folder and repository on real Triton and on tritium: the same args, outputs and
    load outcomes."""
    from test_against_real_triton import SCRIPT, start_pair

    if not os.path.exists(SCRIPT):
        pytest.skip("real Triton's launcher is not here")
    backends = tempfile.mkdtemp(prefix="tritium-pb-backends-")
    build_backend_dir(backends)
    try:
        for tritium, triton in start_pair((f"--backend-directory={backends}",), build_python_based_repo):
            repo = None
            for name in ("pb_plain", "pb_runtime"):
                ours, theirs = _echo(tritium.http, name), _echo(triton.http, name)
                np.testing.assert_allclose(ours[0], theirs[0])
                assert ours[1] == theirs[1]
                repo = os.path.dirname(theirs[1]["model_repository"])
            assert repo is not None
            assert python_based_expectations(repo)["pb_plain"] == _echo(triton.http, "pb_plain")[1]
            ours_index, theirs_index = _index(tritium.url), _index(triton.url)
            for name in ("pb_plain", "pb_runtime", "pb_missing_runtime", "unknown_backend"):
                assert ours_index[name]["state"] == theirs_index[name]["state"], name
            assert tritium.http.get_model_config("pb_plain")["runtime"] == \
                triton.http.get_model_config("pb_plain")["runtime"]
    finally:
        shutil.rmtree(backends, ignore_errors=True)
