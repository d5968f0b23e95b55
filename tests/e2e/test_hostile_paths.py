"""Attacks through paths and names, as a hostile client (or a careless repository) makes them.

A server in explicit mode serves a repository whose models try to reach files outside their folders
(``..`` in config fields, symlinks, absolute paths), and clients send config overrides, file overrides
and model names that try the same over HTTP and gRPC.  Outside the repository lie marker files: their
content must never appear in any answer, nothing may be written outside the server's own temporary
folder (the server runs with a private ``TMPDIR`` nested two levels deep, so an escape from it would
land in the watched tree), no refused load may leave an entry in the index, no answer may show an
absolute path of the server, and after every attack the server still serves another model correctly.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import time
import uuid
from collections.abc import Iterator

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from models import identity_graph, write_model, write_python_model
from server import RunningServer

MARKER = f"TRITIUM-SECRET-{uuid.uuid4().hex}"
#: A Python model that answers with the marker: if it ever runs, the attack worked.
LEAKING_MODEL = f'''
import numpy as np
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def execute(self, requests):
        out = np.array([b"{MARKER}"], dtype=np.object_)
        return [pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", out)]) for _ in requests]
'''
ECHO_MODEL = '''
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", r.inputs()[0].as_numpy() * 2)])
                for r in requests]
'''
PY_CONFIG = """
    backend: "python"
    max_batch_size: 0
    input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 1 ] } ]
    output [ { name: "OUTPUT0" data_type: TYPE_STRING dims: [ 1 ] } ]
    EXTRA
"""
ONNX_CONFIG = """
    backend: "onnxruntime"
    max_batch_size: 8
    input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 4 ] } ]
    output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 4 ] LABELS } ]
    EXTRA
"""
PY_OVERRIDE = {"backend": "python", "max_batch_size": 0,
               "input": [{"name": "INPUT0", "data_type": "TYPE_FP32", "dims": [1]}],
               "output": [{"name": "OUTPUT0", "data_type": "TYPE_FP32", "dims": [1]}]}

#: Shell metacharacters (Triton's Python backend refuses them in names), path separators, dots, NUL, length.
HOSTILE_NAMES = ["a;b", "a|b", "a&b", "a$b", "a`b", "a<b", "a>b", "a(b)", "a\\b", 'a"b', "a'b", "a*b", "a~b", "a!b",
                 "a/b", "../x", "..", ".", ".hidden", "../../../../etc", "a\0b", "a\nb", "x" * 300]


def onnx_config(labels: str = "", extra: str = "") -> str:
    return ONNX_CONFIG.replace("LABELS", labels).replace("EXTRA", extra)


def py_config(extra: str = "") -> str:
    return PY_CONFIG.replace("EXTRA", extra)


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """``root/outside`` (markers), ``root/repo`` (the models), ``root/a/b/tmp`` (the server's TMPDIR)."""
    root = str(tmp_path_factory.mktemp("hostile"))
    outside = os.path.join(root, "outside")
    os.makedirs(os.path.join(outside, "version"))
    for name in ("secret.txt", "secret.bin", "config_secret.txt"):
        with open(os.path.join(outside, name), "w") as f:
            f.write(f"{MARKER}\n{MARKER}-line-2\n")
    with open(os.path.join(outside, "model.py"), "w") as f:
        f.write(LEAKING_MODEL)
    with open(os.path.join(outside, "version", "model.py"), "w") as f:
        f.write(LEAKING_MODEL)
    with open(os.path.join(outside, "config.pbtxt"), "w") as f:
        f.write(py_config())
    os.makedirs(os.path.join(outside, "env", "bin"))
    tmp = os.path.join(root, "a", "b", "tmp")
    os.makedirs(tmp)
    repo = os.path.join(root, "repo")
    rel = os.path.relpath(outside, os.path.join(repo, "m"))  # '../../outside' from a model folder

    write_model(repo, "good", identity_graph("FP32", ("batch", 4)), config=onnx_config())
    write_model(repo, "labels_dotdot", identity_graph("FP32", ("batch", 4)),
                config=onnx_config(f'label_filename: "{rel}/secret.txt"'))
    write_model(repo, "labels_absolute", identity_graph("FP32", ("batch", 4)),
                config=onnx_config(f'label_filename: "{outside}/secret.txt"'))
    linked = write_model(repo, "labels_symlink", identity_graph("FP32", ("batch", 4)),
                         config=onnx_config('label_filename: "labels.txt"'))
    os.symlink(os.path.join(outside, "secret.txt"), os.path.join(linked, "labels.txt"))
    write_model(repo, "warmup_dotdot", identity_graph("FP32", ("batch", 4)), config=onnx_config(extra=(
        'model_warmup [ { name: "w" batch_size: 1 inputs { key: "INPUT0" value: { data_type: TYPE_FP32 dims: [ 4 ] '
        f'input_data_file: "../{rel}/secret.bin" }} }} }} ]')))
    write_model(repo, "initial_state_dotdot", identity_graph("FP32", ("batch", 4)), config=onnx_config(extra=(
        'sequence_batching { state [ { input_name: "S" output_name: "S_OUT" data_type: TYPE_FP32 dims: [ 1 ] '
        f'initial_state [ {{ data_type: TYPE_FP32 dims: [ 1 ] data_file: "../{rel}/secret.bin" }} ] }} ] }}')))
    model_dir = write_python_model(repo, "model_symlink", ECHO_MODEL, py_config())
    os.remove(os.path.join(model_dir, "1", "model.py"))
    os.symlink(os.path.join(outside, "model.py"), os.path.join(model_dir, "1", "model.py"))
    model_dir = os.path.join(repo, "version_symlink")
    os.makedirs(model_dir)
    with open(os.path.join(model_dir, "config.pbtxt"), "w") as f:
        f.write(py_config())
    os.symlink(os.path.join(outside, "version"), os.path.join(model_dir, "1"))
    write_python_model(repo, "model_file_dotdot", ECHO_MODEL,
                       py_config(f'default_model_filename: "../{rel}/model.py"'))
    write_python_model(repo, "model_file_absolute", ECHO_MODEL,
                       py_config(f'default_model_filename: "{outside}/model.py"'))
    model_dir = write_python_model(repo, "config_symlink", ECHO_MODEL, py_config())
    os.remove(os.path.join(model_dir, "config.pbtxt"))
    os.symlink(os.path.join(outside, "config.pbtxt"), os.path.join(model_dir, "config.pbtxt"))
    write_python_model(repo, "env_dotdot", ECHO_MODEL, py_config(
        f'parameters {{ key: "EXECUTION_ENV_PATH" value: {{ string_value: "$$TRITON_MODEL_DIRECTORY/{rel}/env" }} }}'))
    model_dir = os.path.join(repo, "extension_dotdot")  # OpenVINO's native library of custom kernels
    os.makedirs(os.path.join(model_dir, "1"))
    with open(os.path.join(model_dir, "config.pbtxt"), "w") as f:
        f.write('backend: "openvino" max_batch_size: 0 '
                f'parameters {{ key: "CPU_EXTENSION_PATH" value: {{ string_value: "../{rel}/secret.txt" }} }}')
    write_model(repo, "bad;name", identity_graph("FP32", ("batch", 4)), config=onnx_config())  # an operator's folder
    return {"root": root, "outside": outside, "repo": repo, "tmp": tmp}


def snapshot(root: str, skip: str) -> dict[str, tuple[int, int]]:
    """Every path under ``root`` (not following symlinks) with its size and mtime, except under ``skip``."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        if dirpath == skip or dirpath.startswith(skip + os.sep):
            continue
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            if path == skip:
                continue
            st = os.lstat(path)
            found[path] = (st.st_size, st.st_mtime_ns)
    return found


@pytest.fixture(scope="module")
def server(layout: dict[str, str]) -> Iterator[RunningServer]:
    before = snapshot(layout["root"], layout["tmp"])
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TMPDIR", layout["tmp"])
        s = RunningServer([layout["repo"]], ["--model-control-mode=explicit", "--load-model=good",
                                             "--strict-readiness=false", "--log-verbose=1"])
    with s:
        yield s
        # nothing was written outside the server's own temporary folder, and in it only its own folders
        assert snapshot(layout["root"], layout["tmp"]) == before
        # its log, onnxruntime's session file, and its one folder of override folders, empty again
        own = {f"tritium-{s.http_port}.log", ".ses"}
        roots = [n for n in os.listdir(layout["tmp"]) if n not in own]
        assert all(n.startswith(f"tritium-overrides-{s.proc.pid}-") for n in roots), roots
        deadline = time.monotonic() + 30
        while any(os.listdir(os.path.join(layout["tmp"], n)) for n in roots) and time.monotonic() < deadline:
            time.sleep(0.1)  # the last unload's folder goes once its version is finalized
        assert not any(os.listdir(os.path.join(layout["tmp"], n)) for n in roots)
        assert MARKER not in s.output()  # not even the log: no outside file was read
    # at shutdown the server removes its folder of override folders
    assert [n for n in os.listdir(layout["tmp"]) if n.startswith("tritium-overrides-")] == []


def raw_http(url: str, method: str, path: bytes, body: bytes = b"") -> tuple[int, bytes]:
    """One HTTP request with the path as given (no client-side quoting or normalization)."""
    host, port = url.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=60) as sock:
        sock.sendall(method.encode() + b" " + path + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                     + f"Content-Length: {len(body)}\r\nContent-Type: application/json\r\n\r\n".encode() + body)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), rest


def check_answer(layout: dict[str, str], text: str | bytes, config_says: str = "") -> None:
    """No marker and no absolute path of the server in anything a client reads (but what the config says)."""
    text = text.decode("utf-8", "replace") if isinstance(text, bytes) else text
    assert MARKER not in text, text
    text = text.replace("/" + config_says, "").replace(config_says, "") if config_says else text
    assert layout["root"] not in text, text


def still_serves(s: RunningServer) -> None:
    x = np.arange(4, dtype=np.float32).reshape(1, 4)
    inp = httpclient.InferInput("INPUT0", [1, 4], "FP32")
    inp.set_data_from_numpy(x)
    result = httpclient.InferenceServerClient(s.url).infer("good", [inp])
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), x)
    ginp = grpcclient.InferInput("INPUT0", [1, 4], "FP32")
    ginp.set_data_from_numpy(x)
    gresult = grpcclient.InferenceServerClient(s.grpc_url).infer("good", [ginp])
    np.testing.assert_array_equal(gresult.as_numpy("OUTPUT0"), x)


def index(s: RunningServer) -> list[dict]:
    return httpclient.InferenceServerClient(s.url).get_model_repository_index()


# -- models of the repository whose configs or files lead outside --------------------------------------------

REPOSITORY_ATTACKS = {
    "labels_dotdot": "label_filename of output 'OUTPUT0'",
    "labels_symlink": "label_filename of output 'OUTPUT0' 'labels.txt' leaves the model directory",
    "warmup_dotdot": "input_data_file of warmup sample 'w' input 'INPUT0'",
    "initial_state_dotdot": "initial_state data_file of state 'S'",
    "model_symlink": "default_model_filename 'model.py' leaves the model directory",
    "version_symlink": "version folder 1",
    "model_file_dotdot": "default_model_filename",
    "env_dotdot": "parameter EXECUTION_ENV_PATH",
    "extension_dotdot": "parameter CPU_EXTENSION_PATH",
}


@pytest.mark.parametrize("model", sorted(REPOSITORY_ATTACKS))
@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_repository_model_leading_outside_fails_naming_the_field(server, layout, model, protocol):
    client = (httpclient.InferenceServerClient(server.url) if protocol == "http"
              else grpcclient.InferenceServerClient(server.grpc_url))
    with pytest.raises(InferenceServerException) as e:
        client.load_model(model)
    message = e.value.message()
    assert REPOSITORY_ATTACKS[model] in message and "leaves the model directory" in message, message
    assert e.value.status() in ("400", "StatusCode.INVALID_ARGUMENT")
    check_answer(layout, message)
    assert not client.is_model_ready(model)
    [row] = [r for r in index(server) if r["name"] == model]
    assert row["state"] == "UNAVAILABLE" and REPOSITORY_ATTACKS[model] in row["reason"]
    check_answer(layout, json.dumps(index(server)))
    still_serves(server)


def test_absolute_paths_in_a_config_stay_in_the_model_folder(server, layout):
    """Triton joins an absolute path to the model folder: it names a file there, never the outside one."""
    client = httpclient.InferenceServerClient(server.url)
    for model, needle in (("labels_absolute", "cannot read label file"),
                          ("model_file_absolute", "Python model file not found in '1/")):
        with pytest.raises(InferenceServerException) as e:
            client.load_model(model)
        assert needle in e.value.message(), e.value.message()
        # the config's own text, read relative to the folder ('1/<abs path>')
        check_answer(layout, e.value.message(), config_says=layout["outside"].lstrip("/"))
    still_serves(server)


def test_a_symlinked_config_file_is_not_read(server, layout):
    client = grpcclient.InferenceServerClient(server.grpc_url)
    with pytest.raises(InferenceServerException) as e:
        client.load_model("config_symlink")
    assert e.value.message() == "failed to load 'config_symlink', failed to poll from model repository"
    assert "config.pbtxt leaves the model directory" in server.output()
    still_serves(server)


def test_classification_never_returns_outside_lines(server, layout):
    """Labels are what the classification extension returns: a model with outside labels must not serve."""
    x = np.arange(4, dtype=np.float32).reshape(1, 4)
    for model in ("labels_dotdot", "labels_symlink", "labels_absolute"):
        status, body = raw_http(server.url, "POST", f"/v2/models/{model}/infer".encode(), json.dumps({
            "inputs": [{"name": "INPUT0", "shape": [1, 4], "datatype": "FP32", "data": x.ravel().tolist()}],
            "outputs": [{"name": "OUTPUT0", "parameters": {"classification": 4}}]}).encode())
        assert status != 200
        check_answer(layout, body)
    still_serves(server)


def test_the_operators_folder_with_a_metacharacter_name_is_ignored(server):
    assert "bad;name" not in [r["name"] for r in index(server)]
    assert "model folder 'bad;name'" in server.output() and "is ignored" in server.output()


# -- config and file overrides from a client ----------------------------------------------------------------

def override_attacks(layout: dict[str, str]) -> list[tuple[dict, str]]:
    outside = layout["outside"]
    onnx = {"backend": "onnxruntime", "max_batch_size": 8,
            "input": [{"name": "INPUT0", "data_type": "TYPE_FP32", "dims": [4]}],
            "output": [{"name": "OUTPUT0", "data_type": "TYPE_FP32", "dims": [4]}]}

    def with_(base: dict, **changes: object) -> dict:
        return json.loads(json.dumps(base)) | changes

    labelled = with_(onnx)
    labelled["output"][0]["label_filename"] = "../../outside/secret.txt"
    return [
        ({"config": json.dumps(labelled)}, "label_filename of output 'OUTPUT0'"),
        ({"config": json.dumps(with_(onnx, default_model_filename="../../outside/model.onnx"))}, "default_model_filename"),
        ({"config": json.dumps(with_(PY_OVERRIDE, default_model_filename="../" * 20 + outside.lstrip("/") + "/model.py"))},
         "default_model_filename"),
        ({"config": json.dumps(with_(PY_OVERRIDE, parameters={"EXECUTION_ENV_PATH": {"string_value": f"{outside}/env"}}))},
         "EXECUTION_ENV_PATH"),
        ({"config": json.dumps(with_(PY_OVERRIDE, parameters={
            "EXECUTION_ENV_PATH": {"string_value": "$$TRITON_MODEL_DIRECTORY/../../outside/env"}}))},
         "EXECUTION_ENV_PATH"),
    ]


def test_config_overrides_naming_outside_paths_are_refused(server, layout):
    """A refused reload of a serving model keeps it serving; nothing of the outside is read or run."""
    for parameters, needle in override_attacks(layout):
        for protocol in ("http", "grpc"):
            if protocol == "http":
                client = httpclient.InferenceServerClient(server.url)
                with pytest.raises(InferenceServerException) as e:
                    client.load_model("good", config=parameters["config"])
            else:
                gclient = grpcclient.InferenceServerClient(server.grpc_url)
                with pytest.raises(InferenceServerException) as e:
                    gclient.load_model("good", config=parameters["config"])
            assert needle in e.value.message(), e.value.message()
            check_answer(layout, e.value.message(), config_says=layout["outside"].lstrip("/"))  # the client's text
            still_serves(server)  # the version that served before still serves


@pytest.mark.parametrize("relative", ["../x", "1/../../x", "/../x", "../../outside/secret.txt", "1/../../../a/b/x",
                                      "..", "/", ""])
def test_file_overrides_that_escape_are_refused_and_leave_nothing(server, layout, relative):
    client = grpcclient.InferenceServerClient(server.grpc_url)
    with pytest.raises(InferenceServerException) as e:
        client.load_model("fresh", config=json.dumps(PY_OVERRIDE), files={f"file:{relative}": b"x"})
    assert e.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "must name a file inside the model folder" in e.value.message()
    check_answer(layout, e.value.message())
    status, body = raw_http(server.url, "POST", b"/v2/repository/models/fresh/load", json.dumps(
        {"parameters": {"config": json.dumps(PY_OVERRIDE), f"file:{relative}": base64.b64encode(b"x").decode()}}
    ).encode())
    assert status == 400 and json.loads(body)["error"] == e.value.message()
    assert "fresh" not in [r["name"] for r in index(server)]
    still_serves(server)


def onnx_with_external_data(location: str) -> bytes:
    """An ONNX model whose weight W is read from ``location`` (ONNX external data) and added to X."""
    from onnx import TensorProto, helper

    weight = TensorProto(name="W", data_type=TensorProto.FLOAT, dims=[4], data_location=TensorProto.EXTERNAL)
    entry = weight.external_data.add()
    entry.key, entry.value = "location", location
    x = helper.make_tensor_value_info("INPUT0", TensorProto.FLOAT, ["batch", 4])
    y = helper.make_tensor_value_info("OUTPUT0", TensorProto.FLOAT, ["batch", 4])
    graph = helper.make_graph([helper.make_node("Add", ["INPUT0", "W"], ["OUTPUT0"])], "g", [x], [y],
                              initializer=[weight])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9).SerializeToString()


def test_uploaded_onnx_model_with_external_data_outside_is_refused(server, layout):
    """The model file itself names files (ONNX external data): onnxruntime's own check refuses escapes, and
    its message, which names resolved paths, reaches the client without them."""
    config = json.dumps({"backend": "onnxruntime", "max_batch_size": 8,
                         "input": [{"name": "INPUT0", "data_type": "TYPE_FP32", "dims": [4]}],
                         "output": [{"name": "OUTPUT0", "data_type": "TYPE_FP32", "dims": [4]}]})
    secret = os.path.join(layout["outside"], "secret.bin")
    for location in ("../" * 30 + secret.lstrip("/"), secret):
        client = grpcclient.InferenceServerClient(server.grpc_url)
        with pytest.raises(InferenceServerException) as e:
            client.load_model("external", config=config, files={"file:1/model.onnx": onnx_with_external_data(location)})
        check_answer(layout, e.value.message(), config_says=secret.lstrip("/"))
        assert "tritium-overrides" not in e.value.message(), e.value.message()
        assert "external" not in [r["name"] for r in index(server)]
    still_serves(server)


def test_a_failed_override_only_model_leaves_no_index_entry(server, layout):
    broken = dict(PY_OVERRIDE, input=[{"name": "INPUT0", "data_type": "TYPE_FP32"}])  # no dims
    with pytest.raises(InferenceServerException):
        httpclient.InferenceServerClient(server.url).load_model(
            "fresh2", config=json.dumps(broken), files={"file:1/model.py": ECHO_MODEL.encode()})
    assert "fresh2" not in [r["name"] for r in index(server)]
    still_serves(server)


def test_file_override_with_a_leading_slash_is_relative_to_the_model_folder(server, layout):
    """Issue 30 item 6: ``file:/1/model.py`` is ``1/model.py`` of the model folder, as in Triton."""
    client = grpcclient.InferenceServerClient(server.grpc_url)
    client.load_model("slashed", config=json.dumps(PY_OVERRIDE), files={"file:/1/model.py": ECHO_MODEL.encode()})
    try:
        inp = grpcclient.InferInput("INPUT0", [1], "FP32")
        inp.set_data_from_numpy(np.array([21], dtype=np.float32))
        assert client.infer("slashed", [inp]).as_numpy("OUTPUT0")[0] == 42
    finally:
        client.unload_model("slashed")


# -- hostile model names ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", HOSTILE_NAMES, ids=lambda n: repr(n)[:24])
def test_hostile_names_are_refused_alike_over_grpc_and_http(server, layout, name):
    gclient = grpcclient.InferenceServerClient(server.grpc_url)
    answers = {}
    for what, call in (("load", lambda: gclient.load_model(name)),
                       ("load files", lambda: gclient.load_model(name, config=json.dumps(PY_OVERRIDE),
                                                                 files={"file:1/model.py": ECHO_MODEL.encode()})),
                       ("unload", lambda: gclient.unload_model(name)),
                       ("metadata", lambda: gclient.get_model_metadata(name)),
                       ("config", lambda: gclient.get_model_config(name)),
                       ("statistics", lambda: gclient.get_inference_statistics(name))):
        with pytest.raises(InferenceServerException) as e:
            call()
        assert e.value.status() == "StatusCode.INVALID_ARGUMENT", (what, e.value)
        assert e.value.message().startswith("invalid model name '"), (what, e.value.message())
        check_answer(layout, e.value.message())
        answers[what] = e.value.message()
    assert len(set(answers.values())) == 1  # one check, one answer
    inp = grpcclient.InferInput("INPUT0", [1, 4], "FP32")
    inp.set_data_from_numpy(np.zeros((1, 4), dtype=np.float32))
    with pytest.raises(InferenceServerException) as e:
        gclient.infer(name, [inp])
    assert e.value.message() == answers["load"]
    if "/" not in name and "\0" not in name and "\n" not in name:  # what an HTTP path can carry
        path = name.encode()
        body = json.dumps({"parameters": {"config": json.dumps(PY_OVERRIDE),
                                          "file:1/model.py": base64.b64encode(ECHO_MODEL.encode()).decode()}})
        for method, url, payload in (("POST", b"/v2/repository/models/" + path + b"/load", b""),
                                     ("POST", b"/v2/repository/models/" + path + b"/load", body.encode()),
                                     ("POST", b"/v2/repository/models/" + path + b"/unload", b""),
                                     ("GET", b"/v2/models/" + path, b""),
                                     ("GET", b"/v2/models/" + path + b"/config", b""),
                                     ("POST", b"/v2/models/" + path + b"/infer", b"{}")):
            status, answer = raw_http(server.url, method, url, payload)
            if name in (".", ".."):
                assert status in (400, 404)  # a path segment of dots may not even reach the API
                continue
            assert status == 400, (method, url, answer)
            assert json.loads(answer)["error"] == answers["load"], (method, url)
    assert not any(r["name"] == name for r in index(server))
    still_serves(server)


def test_http_paths_with_nul_or_separators_do_not_reach_the_file_system(server, layout):
    for path in (b"/v2/repository/models/a%00b/load", b"/v2/repository/models/..%2F..%2Fetc/load",
                 b"/v2/repository/models/a\x00b/load", b"/v2/repository/models/../../outside/load"):
        status, answer = raw_http(server.url, "POST", path)
        assert status in (400, 404, 500), (path, status)
        check_answer(layout, answer)
    still_serves(server)
