"""The trace extension on a real server: settings over HTTP and gRPC, and the trace file Triton writes."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from models import identity_graph, write_model
from server import RunningServer

STAGES = ["REQUEST_START", "QUEUE_START", "COMPUTE_START", "COMPUTE_INPUT_END", "COMPUTE_OUTPUT_START",
          "COMPUTE_END", "REQUEST_END"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    repo = tmp_path_factory.mktemp("repo")
    write_model(str(repo), "identity_fp32", identity_graph("FP32", ("batch", 4)))
    write_model(str(repo), "other", identity_graph("FP32", ("batch", 4)))
    trace_file = tmp_path_factory.mktemp("trace") / "trace.json"
    # Deprecated and current spellings together, as operators mix them.
    args = ["--trace-file", str(trace_file), "--trace-config", "level=TIMESTAMPS", "--trace-config", "rate=1",
            "--trace-config", "triton,log-frequency=1"]
    with RunningServer([str(repo)], args) as s:
        s.trace_file = trace_file
        yield s


@pytest.fixture
def http(server):
    client = httpclient.InferenceServerClient(server.url)
    yield client
    client.update_trace_settings(settings={"trace_rate": "1", "trace_count": "-1", "log_frequency": "1",
                                           "trace_level": ["TIMESTAMPS"]})
    for model in ("identity_fp32", "other"):
        client.update_trace_settings(model, {"trace_rate": None, "trace_count": None, "trace_level": None,
                                             "log_frequency": None})
    client.close()


def _infer_http(server, request_id, model="identity_fp32"):
    client = httpclient.InferenceServerClient(server.url)
    x = np.arange(4, dtype=np.float32).reshape(1, 4)
    inp = httpclient.InferInput("INPUT0", [1, 4], "FP32")
    inp.set_data_from_numpy(x)
    result = client.infer(model, [inp], request_id=request_id)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), x)
    client.close()


def _infer_grpc(server, request_id):
    client = grpcclient.InferenceServerClient(server.grpc_url)
    inp = grpcclient.InferInput("INPUT0", [1, 4], "FP32")
    inp.set_data_from_numpy(np.ones((1, 4), np.float32))
    client.infer("identity_fp32", [inp], request_id=request_id)
    client.close()


def _traces(server, wait_for=(), timeout=5.0):
    """Every trace written so far (all ``<file>.<n>`` files), by request id; waits for ``wait_for`` ids."""
    deadline = time.monotonic() + timeout
    while True:
        by_id: dict[int, dict] = {}
        for path in sorted(server.trace_file.parent.glob(server.trace_file.name + ".*")):
            text = path.read_text()
            if not text:
                continue
            for entry in json.loads(text):
                trace = by_id.setdefault(entry["id"], {"stamps": []})
                if "model_name" in entry:
                    trace.update(entry)
                for stamp in entry.get("timestamps", ()):
                    trace["stamps"].append((stamp["name"], stamp["ns"]))
        traces = {t.get("request_id", ""): t for t in by_id.values()}
        if all(w in traces for w in wait_for) or time.monotonic() > deadline:
            return traces
        time.sleep(0.05)


def _check_order(trace, frontend):
    names = [n for n, _ in trace["stamps"]]
    stamps = dict(trace["stamps"])
    for stage in STAGES:
        assert stage in stamps, (stage, names)
    ordered = [stamps[s] for s in STAGES]
    assert ordered == sorted(ordered)
    if frontend == "HTTP":
        assert stamps["HTTP_RECV_START"] <= stamps["HTTP_RECV_END"] <= stamps["REQUEST_START"]
    else:
        assert stamps["GRPC_WAITREAD_END"] <= stamps["REQUEST_START"]
    assert stamps["REQUEST_END"] <= stamps[f"{frontend}_SEND_START"] <= stamps[f"{frontend}_SEND_END"]


def test_settings_as_triton_shows_them(server, http):
    assert http.get_trace_settings() == {
        "trace_level": ["TIMESTAMPS"], "trace_rate": "1", "trace_count": "-1", "log_frequency": "1",
        "trace_file": str(server.trace_file), "trace_mode": "triton"}
    assert "trace" in http.get_server_metadata()["extensions"]


def test_http_request_stages_in_order(server, http):
    _infer_http(server, "http-1")
    trace = _traces(server, ["http-1"])["http-1"]
    assert trace["model_name"] == "identity_fp32" and trace["model_version"] == 1
    _check_order(trace, "HTTP")


def test_grpc_request_stages_in_order(server, http):
    _infer_grpc(server, "grpc-1")
    trace = _traces(server, ["grpc-1"])["grpc-1"]
    assert trace["model_name"] == "identity_fp32" and trace["model_version"] == 1
    _check_order(trace, "GRPC")


def test_grpc_stream_request_traced(server, http):
    client = grpcclient.InferenceServerClient(server.grpc_url)
    results = []
    client.start_stream(callback=lambda result, error: results.append((result, error)))
    inp = grpcclient.InferInput("INPUT0", [1, 4], "FP32")
    inp.set_data_from_numpy(np.ones((1, 4), np.float32))
    client.async_stream_infer("identity_fp32", [inp], request_id="stream-1")
    client.stop_stream()
    client.close()
    assert len(results) == 1 and results[0][1] is None
    stamps = dict(_traces(server, ["stream-1"])["stream-1"]["stamps"])
    ordered = [stamps[s] for s in ["GRPC_WAITREAD_END", *STAGES, "GRPC_SEND_START"]]
    assert ordered == sorted(ordered)


def test_failed_request_trace_is_written(server, http):
    client = httpclient.InferenceServerClient(server.url)
    inp = httpclient.InferInput("INPUT0", [1, 5], "FP32")  # wrong shape: refused by validation
    inp.set_data_from_numpy(np.ones((1, 5), np.float32))
    with pytest.raises(InferenceServerException, match="unexpected shape"):
        client.infer("identity_fp32", [inp], request_id="bad-1")
    client.close()
    trace = _traces(server, ["bad-1"])["bad-1"]
    assert [n for n, _ in trace["stamps"]] == ["HTTP_RECV_START", "HTTP_RECV_END"]


def test_rate_samples_one_in_n_and_count_limits(server, http):
    http.update_trace_settings(settings={"trace_rate": "3", "trace_count": "2"})
    for i in range(9):
        _infer_http(server, f"rate-{i}")
    traces = _traces(server, ["rate-2", "rate-5"])
    assert sorted(k for k in traces if k.startswith("rate-")) == ["rate-2", "rate-5"]  # 3rd, 6th; then count is 0
    assert http.get_trace_settings()["trace_count"] == "0"


def test_model_setting_overrides_global_and_null_clears(server, http):
    doc = http.update_trace_settings("other", {"trace_level": ["OFF"]})
    assert doc["trace_level"] == ["OFF"] and doc["trace_rate"] == "1"
    assert http.get_trace_settings()["trace_level"] == ["TIMESTAMPS"]
    _infer_http(server, "other-off", "other")
    _infer_http(server, "main-on")
    traces = _traces(server, ["main-on"])
    assert "other-off" not in traces
    # A global change reaches the model's settings it does not override.
    assert http.update_trace_settings(settings={"trace_rate": "2"})["trace_rate"] == "2"
    assert http.get_trace_settings("other")["trace_rate"] == "2"
    assert http.update_trace_settings("other", {"trace_level": None})["trace_level"] == ["TIMESTAMPS"]
    http.update_trace_settings(settings={"trace_rate": "1"})
    _infer_http(server, "other-on", "other")
    assert _traces(server, ["other-on"])["other-on"]["model_name"] == "other"


def test_log_frequency_groups_traces_per_file(server, http):
    before = set(server.trace_file.parent.glob(server.trace_file.name + ".*"))
    http.update_trace_settings(settings={"log_frequency": "2"})
    for i in range(4):
        _infer_http(server, f"freq-{i}")
    _traces(server, [f"freq-{i}" for i in range(4)])
    new = sorted(set(server.trace_file.parent.glob(server.trace_file.name + ".*")) - before)
    assert len(new) == 2
    for path in new:
        ids = {e["id"] for e in json.loads(path.read_text())}
        assert len(ids) == 2


def test_grpc_trace_setting(server, http):
    client = grpcclient.InferenceServerClient(server.grpc_url)
    doc = client.update_trace_settings("identity_fp32", {"trace_rate": "7"}, as_json=True)
    assert doc["settings"]["trace_rate"]["value"] == ["7"]
    assert doc["settings"]["trace_level"]["value"] == ["TIMESTAMPS"]
    doc = client.update_trace_settings("identity_fp32", {"trace_rate": None}, as_json=True)
    assert doc["settings"]["trace_rate"]["value"] == ["1"]
    assert client.get_trace_settings(as_json=True)["settings"]["trace_file"]["value"] == [str(server.trace_file)]
    with pytest.raises(InferenceServerException, match="Unable to parse 'trace_rate'"):
        client.update_trace_settings(settings={"trace_rate": "abc"})
    client.close()


@pytest.mark.parametrize("body, status, message", [
    ({"trace_rate": "abc"}, 400, "Unable to parse 'trace_rate', got: abc"),
    ({"trace_rate": "0"}, 400, "sample rate must be non-zero"),
    ({"trace_count": "-2"}, 400, "Expecting value >= -1, got:-2"),
    ({"trace_level": ["OFF", "TIMESTAMPS"]}, 400, "only one trace level 'OFF'"),
    ({"trace_level": ["BOGUS"]}, 400, "invalid value for trace level option: bogus"),
    ({"trace_level": "TIMESTAMPS"}, 400, "'trace_level' must be a list of strings"),
    ({"trace_file": "/tmp/elsewhere.json"}, 501, "can not be updated through network protocol"),
])
def test_bad_settings_are_refused(server, http, body, status, message):
    import urllib.error
    import urllib.request

    req = urllib.request.Request(f"http://{server.url}/v2/trace/setting", data=json.dumps(body).encode(), method="POST")
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(req)
    assert info.value.code == status
    assert message in json.loads(info.value.read())["error"]
    info.value.close()
    assert http.get_trace_settings()["trace_rate"] == "1"  # nothing applied


def test_model_urls(server, http):
    import urllib.error
    import urllib.request

    for url, code in [("/v2/models/nosuch/trace/setting", 400), ("/v2/models/identity_fp32/versions/1/trace/setting", 404)]:
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(f"http://{server.url}{url}")
        assert info.value.code == code
        info.value.close()
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(urllib.request.Request(f"http://{server.url}/v2/trace/setting", method="PUT"))
    assert info.value.code == 405
    info.value.close()


def test_shutdown_writes_the_rest_to_the_trace_file(tmp_path):
    repo = tmp_path / "repo"
    write_model(str(repo), "identity_fp32", identity_graph("FP32", ("batch", 4)))
    trace_file = tmp_path / "trace.json"
    with RunningServer([str(repo)], [f"--trace-config=triton,file={trace_file}", "--trace-config=level=TIMESTAMPS",
                                     "--trace-config=rate=1"]) as s:
        s.trace_file = trace_file
        assert trace_file.read_text() == ""  # made at start, written at shutdown (log_frequency 0)
        _infer_http(s, "last")
    entries = json.loads(trace_file.read_text())
    assert {"id": 1, "model_name": "identity_fp32", "model_version": 1, "request_id": "last"} in entries
