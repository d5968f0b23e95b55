"""Model management over HTTP: control modes, the repository extension (index/load/unload), warmup.

Answers are compared with what real Triton 2.51 sent (triton-ref FINDINGS §A, §E, §F, §G).
"""

from __future__ import annotations

import base64
import glob
import json
import os
import tempfile
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from models import identity_graph, save_model, write_model
from server import RunningServer

IDENT_CONFIG = """
name: "{name}"
backend: "onnxruntime"
max_batch_size: 8
input [ {{ name: "INPUT0" data_type: TYPE_FP32 dims: [ 16 ] }} ]
output [ {{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 16 ] }} ]
{extra}
"""

WARMUP = """
model_warmup [
  {{ name: "zeros" batch_size: 2 count: 3 inputs {{ key: "INPUT0" value: {{ data_type: TYPE_FP32 dims: [ 16 ] zero_data: true }} }} }},
  {{ name: "random" batch_size: 1 inputs {{ key: "INPUT0" value: {{ data_type: TYPE_FP32 dims: [ 16 ] random_data: true }} }} }},
  {{ name: "file" batch_size: 4 inputs {{ key: "INPUT0" value: {{ data_type: TYPE_FP32 dims: [ 16 ] input_data_file: "{file}" }} }} }}
]
"""


def ident_config(name: str, extra: str = "") -> str:
    return IDENT_CONFIG.format(name=name, extra=extra)


def add_ident(repo: str, name: str, versions=(1,), extra: str = "") -> None:
    for version in versions:
        write_model(repo, name, identity_graph(), ident_config(name, extra), version=version)


def post(url: str, path: str, body: dict | None = None) -> tuple[int, str, bytes]:
    data = json.dumps(body).encode() if body is not None else b""
    request = urllib.request.Request(f"http://{url}{path}", data=data, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=60) as r:
            return r.status, r.headers.get("Content-Type"), r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type"), e.read()


def index(url: str, ready: bool | None = None) -> list[dict]:
    status, _, body = post(url, "/v2/repository/index", None if ready is None else {"ready": ready})
    assert status == 200, body
    return json.loads(body)


def rows(url: str, name: str) -> list[dict]:
    return [row for row in index(url) if row["name"] == name]


def wait_for(predicate, timeout: float = 30.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.05)


def infer(client: httpclient.InferenceServerClient, name: str, value: float = 1.0, version: str = ""):  # type: ignore[no-untyped-def]
    x = np.full((1, 16), value, dtype=np.float32)
    inp = httpclient.InferInput("INPUT0", [1, 16], "FP32")
    inp.set_data_from_numpy(x)
    result = client.infer(name, [inp], model_version=version)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), x)
    return result.get_response()["model_version"]


@pytest.fixture(scope="module")
def explicit(tmp_path_factory):  # type: ignore[no-untyped-def]
    repo = str(tmp_path_factory.mktemp("explicit_repo"))
    add_ident(repo, "ident")
    add_ident(repo, "other")
    add_ident(repo, "versions", versions=(1, 2, 3))
    os.makedirs(os.path.join(repo, "broken", "1"))
    with open(os.path.join(repo, "broken", "config.pbtxt"), "w") as f:
        f.write('backend: "onnxruntime"\nbogus_field: 3\n')
    add_ident(repo, "warm_ok", extra=WARMUP.format(file="input0.bin"))
    os.makedirs(os.path.join(repo, "warm_ok", "warmup"))
    np.arange(16, dtype=np.float32).tofile(os.path.join(repo, "warm_ok", "warmup", "input0.bin"))
    add_ident(repo, "warm_bad", extra=WARMUP.format(file="short.bin"))
    os.makedirs(os.path.join(repo, "warm_bad", "warmup"))
    np.arange(3, dtype=np.float32).tofile(os.path.join(repo, "warm_bad", "warmup", "short.bin"))
    with RunningServer([repo], ["--model-control-mode=explicit", "--load-model=ident", "--allow-grpc=false"]) as server:
        server.repo = repo  # type: ignore[attr-defined]
        yield server


def test_index_at_start_lists_every_model_and_only_the_loaded_one_with_a_state(explicit):
    assert index(explicit.url) == [
        {"name": "broken"},
        {"name": "ident", "version": "1", "state": "READY"},
        {"name": "other"},
        {"name": "versions"},
        {"name": "warm_bad"},
        {"name": "warm_ok"},
    ]
    assert index(explicit.url, ready=True) == [{"name": "ident", "version": "1", "state": "READY"}]


def test_index_is_post_only_and_named_repositories_are_refused(explicit):
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(f"http://{explicit.url}/v2/repository/index")
    assert e.value.code == 405
    e.value.close()
    status, _, body = post(explicit.url, "/v2/repository/somerepo/index")
    assert (status, json.loads(body)) == (501, {"error": "'repository_name' specification is not supported"})


def test_load_answers_an_empty_200_and_the_model_serves(explicit):
    client = httpclient.InferenceServerClient(explicit.url)
    assert not client.is_model_ready("other")
    assert post(explicit.url, "/v2/repository/models/other/load") == (200, "application/json", b"")
    assert client.is_model_ready("other")
    assert infer(client, "other") == "1"
    assert rows(explicit.url, "other") == [{"name": "other", "version": "1", "state": "READY"}]
    # Loading again what is loaded and unchanged is fine.
    client.load_model("other")
    assert infer(client, "other") == "1"


def test_load_of_unreadable_or_unknown_models_is_a_500_with_tritons_text(explicit):
    for name in ("broken", "unknown"):
        status, content_type, body = post(explicit.url, f"/v2/repository/models/{name}/load")
        assert (status, content_type) == (500, "application/json")
        assert json.loads(body) == {"error": f"failed to load '{name}', failed to poll from model repository"}
    # Triton 2.51 lists it by name only; here the index says why it cannot load
    [broken] = rows(explicit.url, "broken")
    assert broken["state"] == "UNAVAILABLE" and "bogus_field" in broken["reason"] and "version" not in broken
    assert rows(explicit.url, "unknown") == []


def test_unload_stops_serving_and_the_index_says_unloaded(explicit):
    client = httpclient.InferenceServerClient(explicit.url)
    client.load_model("other")
    assert post(explicit.url, "/v2/repository/models/other/unload",
                {"parameters": {"unload_dependents": True}}) == (200, "application/json", b"")
    assert not client.is_model_ready("other")
    with pytest.raises(InferenceServerException, match="'other' has no available versions"):
        client.get_model_metadata("other")
    assert wait_for(lambda: rows(explicit.url, "other")[0]["state"] == "UNAVAILABLE")
    assert rows(explicit.url, "other") == [{"name": "other", "version": "1", "state": "UNAVAILABLE", "reason": "unloaded"}]
    assert post(explicit.url, "/v2/repository/models/unknown/unload") == (200, "application/json", b"")
    client.load_model("other")  # and it comes back
    assert infer(client, "other") == "1"


def test_config_override_changes_the_version_policy_and_dropping_a_version_leaves_the_others(explicit):
    client = httpclient.InferenceServerClient(explicit.url)
    client.load_model("versions")
    assert index(explicit.url, ready=True).count({"name": "versions", "version": "3", "state": "READY"}) == 1
    config = json.loads(json.dumps(client.get_model_config("versions")))
    config["version_policy"] = {"all": {}}
    client.load_model("versions", config=json.dumps(config))
    assert [r["version"] for r in rows(explicit.url, "versions") if r["state"] == "READY"] == ["1", "2", "3"]
    assert [infer(client, "versions", version=v) for v in ("1", "2", "3")] == ["1", "2", "3"]
    config["version_policy"] = {"specific": {"versions": [2, 3]}}
    client.load_model("versions", config=json.dumps(config))
    assert infer(client, "versions", version="2") == "2"
    assert infer(client, "versions") == "3"
    assert wait_for(lambda: rows(explicit.url, "versions")[0].get("reason") == "unloaded")
    assert rows(explicit.url, "versions") == [
        {"name": "versions", "version": "1", "state": "UNAVAILABLE", "reason": "unloaded"},
        {"name": "versions", "version": "2", "state": "READY"},
        {"name": "versions", "version": "3", "state": "READY"},
    ]
    assert not client.is_model_ready("versions", "1")


def test_bad_config_override_is_refused_and_the_model_keeps_serving(explicit):
    client = httpclient.InferenceServerClient(explicit.url)
    status, _, body = post(explicit.url, "/v2/repository/models/ident/load",
                           {"parameters": {"config": "{\"max_batch_size\": \"many\"}"}})
    assert status == 400 and json.loads(body)["error"].startswith("failed to load 'ident': Invalid config override: ")
    # logged as Triton words it, the model named once
    logged = [line for line in explicit.output().splitlines() if "Invalid config override" in line]
    assert logged and "failed to load 'ident': Invalid config override: " in logged[-1]
    assert "failed to load 'ident': failed to load" not in logged[-1]
    status, _, body = post(explicit.url, "/v2/repository/models/ident/load",
                           {"parameters": {"config": json.dumps({"backend": "onnxruntime", "max_batch_size": 8,
                                                                 "input": [{"name": "WRONG", "data_type": "TYPE_FP32",
                                                                            "dims": [16]}]})}})
    assert status == 400 and json.loads(body)["error"].startswith("load failed for model 'ident': version 1 is at UNAVAILABLE state: ")
    assert infer(client, "ident") == "1"  # the failed reload left the serving version in place
    assert rows(explicit.url, "ident") == [{"name": "ident", "version": "1", "state": "READY"}]


def test_file_override_loads_a_model_from_the_request_and_cleans_up(explicit, tmp_path):
    save_model(identity_graph(), str(tmp_path / "m.onnx"))
    content = base64.b64encode((tmp_path / "m.onnx").read_bytes()).decode()
    config = {"backend": "onnxruntime", "max_batch_size": 8,
              "input": [{"name": "INPUT0", "data_type": "TYPE_FP32", "dims": [16]}],
              "output": [{"name": "OUTPUT0", "data_type": "TYPE_FP32", "dims": [16]}]}
    def override_folders() -> set[str]:  # the server's own folder of override folders, named by the server
        pattern = os.path.join(tempfile.gettempdir(), f"tritium-overrides-{explicit.proc.pid}-*")
        return {os.path.join(root, d) for root in glob.glob(pattern) for d in os.listdir(root)}

    before = override_folders()
    status, _, body = post(explicit.url, "/v2/repository/models/from_files/load",
                           {"parameters": {"config": json.dumps(config), "file:5/model.onnx": content}})
    assert status == 200, body
    client = httpclient.InferenceServerClient(explicit.url)
    assert infer(client, "from_files") == "5"
    made = override_folders() - before
    assert len(made) == 1 and "from_files" not in made.pop()
    client.unload_model("from_files")
    assert wait_for(lambda: override_folders() == before)
    # Files without a config, bad paths and bad base64 are refused by name.
    for parameters, needle in [
        ({"file:1/model.onnx": content}, "'config' parameter"),
        ({"config": json.dumps(config), "file:../x": content}, "file:../x"),
        ({"config": json.dumps(config), "file:1/model.onnx": "%%%"}, "not valid base64"),
    ]:
        status, _, body = post(explicit.url, "/v2/repository/models/from_files/load", {"parameters": parameters})
        assert status == 400 and needle in json.loads(body)["error"], body


def test_warmup_runs_before_ready(explicit):
    client = httpclient.InferenceServerClient(explicit.url)
    client.load_model("warm_ok")
    assert infer(client, "warm_ok") == "1"
    log = explicit.output()
    assert "successfully loaded 'warm_ok' version 1" in log


def test_failing_warmup_fails_the_load_with_its_reason(explicit):
    status, _, body = post(explicit.url, "/v2/repository/models/warm_bad/load")
    error = json.loads(body)["error"]
    assert status == 400
    assert error.startswith("load failed for model 'warm_bad': version 1 is at UNAVAILABLE state: Invalid argument: "
                            "failed to run warmup sample 'file': warmup data of input 'INPUT0'")
    [row] = rows(explicit.url, "warm_bad")
    assert row["state"] == "UNAVAILABLE" and "failed to run warmup sample 'file'" in row["reason"]
    assert not httpclient.InferenceServerClient(explicit.url).is_server_ready()  # strict readiness: a failed model


def test_none_mode_refuses_load_and_unload_with_tritons_503(tmp_path):
    add_ident(str(tmp_path), "ident")
    with RunningServer([str(tmp_path)], ["--allow-grpc=false"]) as server:
        for path in ("/v2/repository/models/ident/load", "/v2/repository/models/ident/unload",
                     "/v2/repository/models/unknown/load"):
            assert post(server.url, path) == (
                503, "application/json", b'{"error":"explicit model load / unload is not allowed if polling is enabled"}')
        assert index(server.url) == [{"name": "ident", "version": "1", "state": "READY"}]
        assert "model_repository" in httpclient.InferenceServerClient(server.url).get_server_metadata()["extensions"]


def test_grpc_repository_rpcs(tmp_path):
    import tritonclient.grpc as grpcclient

    repo = str(tmp_path / "repo")
    add_ident(repo, "ident")
    add_ident(repo, "other")
    save_model(identity_graph(), str(tmp_path / "m.onnx"))
    with RunningServer([repo], ["--model-control-mode=explicit", "--load-model=ident"]) as server:
        client = grpcclient.InferenceServerClient(server.grpc_url)
        index_rows = client.get_model_repository_index(as_json=True)["models"]
        assert index_rows == [{"name": "ident", "version": "1", "state": "READY"}, {"name": "other"}]
        client.load_model("other")
        assert client.is_model_ready("other")
        config = json.dumps({"backend": "onnxruntime", "max_batch_size": 8,
                             "input": [{"name": "INPUT0", "data_type": "TYPE_FP32", "dims": [16]}],
                             "output": [{"name": "OUTPUT0", "data_type": "TYPE_FP32", "dims": [16]}]})
        client.load_model("from_files", config=config, files={"file:2/model.onnx": (tmp_path / "m.onnx").read_bytes()})
        assert infer(httpclient.InferenceServerClient(server.url), "from_files") == "2"
        client.unload_model("other", unload_dependents=True)
        assert not client.is_model_ready("other")
        with pytest.raises(InferenceServerException) as e:
            client.load_model("nothing_here")
        assert e.value.status() == "StatusCode.INTERNAL"
        assert e.value.message() == "failed to load 'nothing_here', failed to poll from model repository"
    with RunningServer([repo]) as server:
        client = grpcclient.InferenceServerClient(server.grpc_url)
        with pytest.raises(InferenceServerException) as e:
            client.unload_model("ident")
        assert e.value.status() == "StatusCode.UNAVAILABLE"
        assert e.value.message() == "explicit model load / unload is not allowed if polling is enabled"
