"""The logging extension: /v2/logging reads and changes Triton's log settings at run time."""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request

import pytest

from models import identity_graph, write_model
from server import RunningServer


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    repo = tmp_path_factory.mktemp("repo")
    write_model(str(repo), "identity_fp32", identity_graph("FP32", ("batch", 4)))
    log_file = repo / "server.log"
    with RunningServer([str(repo)], [f"--log-file={log_file}"]) as s:
        s.log_file = log_file
        yield s


def _call(server, method, body=None):
    req = urllib.request.Request(f"http://{server.url}/v2/logging", method=method,
                                 data=None if body is None else json.dumps(body).encode())
    try:
        with urllib.request.urlopen(req) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _log_text(server, wait_for=None):
    deadline = time.monotonic() + 5
    while True:
        text = server.log_file.read_text()
        if wait_for is None or re.search(wait_for, text) or time.monotonic() > deadline:
            return text
        time.sleep(0.05)


def test_defaults_match_triton(server):
    status, doc = _call(server, "GET")
    assert status == 200
    assert doc == {"log_file": str(server.log_file), "log_info": True, "log_warning": True, "log_error": True,
                   "log_verbose_level": 0, "log_format": "default"}


def test_log_file_receives_triton_format_lines(server):
    text = _log_text(server, r"loaded 'identity_fp32'")
    assert re.search(r"^I\d{4} \d\d:\d\d:\d\d\.\d{6} \d+ manager\.py:\d+\] successfully loaded 'identity_fp32'", text, re.M)


def test_verbose_and_iso8601_take_effect_at_run_time(server):
    status, doc = _call(server, "POST", {"log_verbose_level": 1, "log_format": "ISO8601"})
    assert status == 200 and doc["log_verbose_level"] == 1 and doc["log_format"] == "ISO8601"
    with urllib.request.urlopen(f"http://{server.url}/v2/models/identity_fp32/ready") as response:
        response.read()
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(f"http://{server.url}/v2/models/no_such_model/config")
    info.value.close()
    text = _log_text(server, r"no_such_model")
    assert re.search(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ D \d+ routes\.py:\d+\] GET /v2/models/no_such_model/config "
                     r"failed: Request for unknown model", text, re.M)
    # Switched off again: the next failure is not logged.
    _call(server, "POST", {"log_verbose_level": 0, "log_format": "default"})
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(f"http://{server.url}/v2/models/other_missing_model/config")
    info.value.close()
    time.sleep(0.2)
    assert "other_missing_model" not in _log_text(server)


def test_unknown_keys_are_ignored_and_bad_values_refused(server):
    status, doc = _call(server, "POST", {"bogus": 1})
    assert status == 200 and "bogus" not in doc
    status, doc = _call(server, "POST", {"log_info": "yes"})
    assert status == 400 and "log_info" in doc["error"]
    status, doc = _call(server, "POST", {"log_verbose_level": -1})
    assert status == 400 and "log_verbose_level" in doc["error"]
    status, doc = _call(server, "POST", {"log_format": "fancy"})
    assert status == 400 and "fancy" in doc["error"]
    status, doc = _call(server, "POST", {"log_file": "/tmp/elsewhere.log"})
    assert status == 501 and "can not be updated" in doc["error"]
    status, doc = _call(server, "PUT", {})
    assert status == 405


def test_log_info_off_silences_info_lines(server):
    _call(server, "POST", {"log_info": False})
    try:
        assert _call(server, "GET")[1]["log_info"] is False
    finally:
        _call(server, "POST", {"log_info": True})


def test_grpc_log_settings(server):
    import tritonclient.grpc as grpcclient

    g = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        settings = g.update_log_settings({"log_verbose_level": 3, "log_warning": False}, as_json=True)["settings"]
        assert settings["log_verbose_level"] == {"uint32_param": 3}
        assert settings["log_warning"] == {"bool_param": False}
        assert settings["log_format"] == {"string_param": "default"}
        assert _call(server, "GET")[1]["log_verbose_level"] == 3  # one setting, seen by both protocols
        assert g.get_log_settings(as_json=True)["settings"]["log_file"] == {"string_param": str(server.log_file)}
    finally:
        g.update_log_settings({"log_verbose_level": 0, "log_warning": True})
        g.close()
