"""Broken models next to good ones: each bad model fails alone, with a reason that names it, and the rest serve.

One repository holds a good model beside models broken in every way a user tends to break them.
A server started with ``--exit-on-error=false`` must come up, serve the good model, report each
bad one not ready, and log for each a reason that names the file, field or line at fault.
With the default ``--exit-on-error=true`` the same kind of repository must stop the process.
"""

from __future__ import annotations

import json
import os
import re
import urllib.error
import urllib.request
from unittest import mock

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from models import identity_graph, write_model
from server import RunningServer

# model name -> substrings its failure reason (in the log) must contain.
BAD_MODELS: dict[str, list[str]] = {
    "bad_syntax": ["config.pbtxt", "line 3"],
    "bad_unknown_field": ["config.pbtxt", "line 2", "no_such_field"],
    "bad_enum_value": ["config.pbtxt", "line 1", "TYPE_NOPE"],
    "bad_missing_file": ["missing.onnx"],
    "bad_missing_file_no_platform": ["missing.onnx"],
    "bad_corrupt_onnx": ["model.onnx"],
    "bad_unknown_backend": ["nosuch"],
    "bad_tensorflow": ["tensorflow"],
    "bad_name_mismatch": ["other_name", "bad_name_mismatch"],
    "bad_no_dims": ["INPUT0", "dims"],
    "bad_no_data_type": ["INPUT0", "data_type"],
    "bad_kind_gpu": ["KIND_GPU"],
    "bad_cpu_with_gpus": ["KIND_CPU", "GPU"],
    "bad_inputs_not_in_graph": ["NOT_IN_GRAPH", "INPUT0"],
    "bad_dims_vs_graph": ["INPUT0", "[-1, 8]", "[-1, 4]"],
    "bad_rank_vs_graph": ["INPUT0", "[4]", "[-1, 4]"],
    "bad_type_vs_graph": ["INPUT0", "TYPE_INT32", "TYPE_FP32"],
    "bad_no_versions": ["version"],
    "bad_parameter": ["intra_op_thread_count", "many"],
    "bad_ensemble": ["ensemble", "output 'OUT' is not written by any step"],
    "bad_preferred_batch": ["preferred", "16"],
    "bad_reshape": ["INPUT0", "reshape"],
    "bad_config_is_dir": ["config.pbtxt"],
    "dup": ["not unique across all model repositories"],  # Triton's words; its index says "appears in two or more"
}
GOOD_MODELS = ["good", "good_configured"]


def _graph():
    return identity_graph("FP32", ("batch", 4))


def _build_repository(repo: str) -> None:
    write_model(repo, "good", _graph())
    write_model(repo, "good_configured", _graph(), config="""
        name: "good_configured"
        backend: "onnxruntime"
        max_batch_size: 2
        input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 4 ] } ]
        output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 4 ] } ]
    """)
    # A syntax error on line 3 (the list is never closed).
    write_model(repo, "bad_syntax", _graph(),
                config='name: "bad_syntax"\nmax_batch_size: 4\ninput [ { name: "INPUT0" \n')
    write_model(repo, "bad_unknown_field", _graph(), config='max_batch_size: 4\nno_such_field: 3\n')
    write_model(repo, "bad_enum_value", _graph(),
                config='input [ { name: "INPUT0" data_type: TYPE_NOPE dims: [ 4 ] } ]\n')
    write_model(repo, "bad_missing_file", _graph(),
                config='platform: "onnxruntime_onnx"\ndefault_model_filename: "missing.onnx"\n')
    write_model(repo, "bad_missing_file_no_platform", _graph(), config='default_model_filename: "missing.onnx"\n')
    corrupt = write_model(repo, "bad_corrupt_onnx")
    with open(os.path.join(corrupt, "1", "model.onnx"), "wb") as f:
        f.write(np.random.default_rng(0).bytes(512))
    write_model(repo, "bad_unknown_backend", _graph(), config='backend: "nosuch"\n')
    write_model(repo, "bad_tensorflow", _graph(), config='platform: "tensorflow_graphdef"\n')
    write_model(repo, "bad_name_mismatch", _graph(), config='name: "other_name"\n')
    write_model(repo, "bad_no_dims", _graph(),
                config='max_batch_size: 4\ninput [ { name: "INPUT0" data_type: TYPE_FP32 } ]\n')
    write_model(repo, "bad_no_data_type", _graph(),
                config='max_batch_size: 4\ninput [ { name: "INPUT0" dims: [ 4 ] } ]\n')
    write_model(repo, "bad_kind_gpu", _graph(), config='instance_group [ { kind: KIND_GPU count: 1 } ]\n')
    write_model(repo, "bad_cpu_with_gpus", _graph(), config='instance_group [ { kind: KIND_CPU gpus: [ 0 ] } ]\n')
    write_model(repo, "bad_inputs_not_in_graph", _graph(), config="""
        max_batch_size: 4
        input [ { name: "NOT_IN_GRAPH" data_type: TYPE_FP32 dims: [ 4 ] } ]
    """)
    # Configs the graph cannot take: refused at load, not with a 500 on every request.
    write_model(repo, "bad_dims_vs_graph", _graph(),
                config='max_batch_size: 4\ninput [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 8 ] } ]\n')
    write_model(repo, "bad_rank_vs_graph", _graph(),
                config='max_batch_size: 0\ninput [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 4 ] } ]\n')
    write_model(repo, "bad_type_vs_graph", _graph(),
                config='max_batch_size: 4\ninput [ { name: "INPUT0" data_type: TYPE_INT32 dims: [ 4 ] } ]\n')
    write_model(repo, "bad_parameter", _graph(),
                config='parameters { key: "intra_op_thread_count" value: { string_value: "many" } }\n')
    write_model(repo, "bad_ensemble", config="""
        platform: "ensemble"
        max_batch_size: 4
        input [ { name: "IN" data_type: TYPE_FP32 dims: [ 4 ] } ]
        output [ { name: "OUT" data_type: TYPE_FP32 dims: [ 4 ] } ]
        ensemble_scheduling { step [ { model_name: "good" model_version: -1
                                       input_map { key: "INPUT0" value: "IN" }
                                       output_map { key: "OUTPUT0" value: "LOST" } } ] }
    """)
    os.makedirs(os.path.join(repo, "bad_no_versions", "not_a_version"))
    with open(os.path.join(repo, "bad_no_versions", "config.pbtxt"), "w") as f:
        f.write('platform: "onnxruntime_onnx"\n')
    write_model(repo, "bad_preferred_batch", _graph(),
                config="max_batch_size: 4\ndynamic_batching { preferred_batch_size: [ 16 ] }\n")
    write_model(repo, "bad_reshape", _graph(), config="""
        max_batch_size: 4
        input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 4 ] reshape: { shape: [ 3 ] } } ]
    """)
    os.makedirs(os.path.join(write_model(repo, "bad_config_is_dir", _graph()), "config.pbtxt"))
    write_model(repo, "dup", _graph())
    # Things in a repository that are not models at all.
    with open(os.path.join(repo, "README.md"), "w") as f:
        f.write("not a model\n")
    os.makedirs(os.path.join(repo, ".hidden", "1"))


@pytest.fixture(scope="module")
def repos(tmp_path_factory):
    main = str(tmp_path_factory.mktemp("bad_repo"))
    _build_repository(main)
    other = str(tmp_path_factory.mktemp("other_repo"))
    write_model(other, "dup", _graph())  # the same name in a second --model-repository
    write_model(other, "good_elsewhere", _graph())
    return main, other


def _start(repos, *args, **kwargs) -> RunningServer:
    # This machine may or may not have a GPU; KIND_GPU must fail either way, so hide them.
    with mock.patch.dict(os.environ, {"TRITIUM_DISABLE_GPUS": "1"}):
        return RunningServer(list(repos), args, **kwargs)


@pytest.fixture(scope="module")
def server(repos):
    s = _start(repos, "--exit-on-error=false")
    yield s
    s.stop()


@pytest.fixture
def client(server):
    c = httpclient.InferenceServerClient(server.url)
    yield c
    c.close()


def _get(server, path):
    try:
        with urllib.request.urlopen(f"http://{server.url}{path}", timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _failure_line(log: str, name: str) -> str:
    """The log line(s) saying why ``name`` failed."""
    lines = [line for line in log.splitlines()
             if f"failed to load '{name}'" in line or f"failed to poll model '{name}'" in line]
    assert lines, f"no failure logged for model '{name}':\n{log}"
    return "\n".join(lines)


def test_good_models_serve(client):
    assert client.is_server_live()
    for name in [*GOOD_MODELS, "good_elsewhere"]:
        assert client.is_model_ready(name), name
        x = np.arange(8, dtype=np.float32).reshape(2, 4)
        inp = httpclient.InferInput("INPUT0", [2, 4], "FP32")
        inp.set_data_from_numpy(x)
        np.testing.assert_array_equal(client.infer(name, [inp]).as_numpy("OUTPUT0"), x)


@pytest.mark.parametrize("name", sorted(BAD_MODELS))
def test_bad_model_is_not_ready(client, name):
    assert not client.is_model_ready(name)
    assert not client.is_model_ready(name, "1")
    with pytest.raises(InferenceServerException) as info:
        client.get_model_metadata(name)
    assert name in info.value.message()
    assert info.value.status() in ("400", "404", "503")
    with pytest.raises(InferenceServerException) as info:
        client.get_model_config(name)
    assert name in info.value.message()


@pytest.mark.parametrize("name", sorted(BAD_MODELS))
def test_bad_model_infer_is_refused(server, name):
    body = json.dumps({"inputs": [{"name": "INPUT0", "shape": [1, 4], "datatype": "FP32", "data": [0, 0, 0, 0]}]})
    req = urllib.request.Request(f"http://{server.url}/v2/models/{name}/infer", data=body.encode())
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(req, timeout=10)
    assert info.value.code in (400, 404, 503)
    assert info.value.headers["Content-Type"] in ("application/json", "text/plain")  # Triton says text/plain here
    error = json.loads(info.value.read())["error"]
    info.value.close()
    assert name in error


@pytest.mark.parametrize("name", sorted(BAD_MODELS))
def test_log_names_model_and_reason(server, name):
    line = _failure_line(server.output(), name)
    for needle in BAD_MODELS[name]:
        assert needle in line, f"reason for '{name}' should mention {needle!r}: {line}"


def test_config_errors_name_the_file_path(server, repos):
    """The log names the model folder and the file in it; what a client reads names no absolute path."""
    log = server.output()
    for name in ("bad_syntax", "bad_unknown_field"):
        line = _failure_line(log, name)
        assert os.path.join(repos[0], name) in line and "configuration config.pbtxt" in line, line


def test_not_a_model_entries_are_ignored(server):
    log = server.output()
    assert "README.md" not in log
    assert ".hidden" not in log


def test_strict_readiness_reports_not_ready_while_a_model_failed(server):
    assert _get(server, "/v2/health/live")[0] == 200
    assert _get(server, "/v2/health/ready")[0] == 400


def test_server_process_survives(server, client):
    assert server.proc.poll() is None
    assert client.is_model_ready("good")


@pytest.fixture(scope="module")
def small_repo(tmp_path_factory):
    repo = str(tmp_path_factory.mktemp("small_repo"))
    write_model(repo, "good", _graph())
    write_model(repo, "bad_syntax", _graph(), config='max_batch_size: [\n')
    write_model(repo, "bad_kind_gpu", _graph(), config='instance_group [ { kind: KIND_GPU } ]\n')
    return repo


def test_lenient_readiness_is_ready_despite_failed_model(small_repo):
    with _start([small_repo], "--exit-on-error=false", "--strict-readiness=false") as s:
        assert _get(s, "/v2/health/ready")[0] == 200
        assert _get(s, "/v2/models/good/ready")[0] == 200
        assert _get(s, "/v2/models/bad_syntax/ready")[0] == 400


def test_exit_on_error_stops_the_process_and_names_the_models(small_repo):
    s = _start([small_repo], wait_ready=False)
    try:
        code = s.wait_exit(60)
        out = s.output()
    finally:
        s.stop()
    assert code != 0
    summary = [line for line in out.splitlines() if "failed to load all models" in line]
    assert summary, out
    assert re.search(r"\bbad_kind_gpu\b", summary[0]) and re.search(r"\bbad_syntax\b", summary[0])
    assert not re.search(r"\bgood\b", summary[0])
    assert "KIND_GPU" in _failure_line(out, "bad_kind_gpu")
    assert "line 1" in _failure_line(out, "bad_syntax")


def test_exit_on_error_with_all_good_models_starts(tmp_path):
    write_model(str(tmp_path), "good", _graph())
    with _start([str(tmp_path)]) as s:
        assert _get(s, "/v2/health/ready")[0] == 200


@pytest.mark.parametrize("exit_on_error", ["true", "false"])
def test_missing_repository_exits_naming_it(tmp_path, exit_on_error):
    missing = str(tmp_path / "no_such_repository")
    s = _start([missing], f"--exit-on-error={exit_on_error}", wait_ready=False)
    try:
        code = s.wait_exit(60)
        out = s.output()
    finally:
        s.stop()
    assert code != 0
    assert missing in out
    assert "Traceback" not in out
