"""Header forwarding and what the repository index shows, on one real server in poll mode (the differential
file compares both with Triton 2.51 where it is installed; these run everywhere)."""

from __future__ import annotations

import json
import os
import queue
import shutil
import time
import urllib.request
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from models import write_python_model
from server import RunningServer

PARAMETERS_SEEN = '''
import numpy as np
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.Tensor("OUT", np.array([r.parameters().encode()], np.object_))])
                for r in requests]
'''
CONFIG = """
    backend: "python"
    max_batch_size: 0
    input [ { name: "INPUT0" data_type: TYPE_INT32 dims: [ 1 ] } ]
    output [ { name: "OUT" data_type: TYPE_STRING dims: [ 1 ] } ]
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("issue26")
    repo, other = str(root / "repo"), str(root / "other")
    write_python_model(repo, "params", PARAMETERS_SEEN, CONFIG)
    write_python_model(repo, "gone", PARAMETERS_SEEN, CONFIG)
    write_python_model(repo, "dup", PARAMETERS_SEEN, CONFIG)
    write_python_model(other, "dup", PARAMETERS_SEEN, CONFIG)
    write_python_model(repo, "unparsable", PARAMETERS_SEEN, 'backend: "python"\nmax_batch_size: [[[\n')
    with RunningServer([repo, other], ["--model-control-mode=poll", "--repository-poll-secs=0.5",
                                       "--exit-on-error=false", "--http-header-forward-pattern=^x-|^a$",
                                       "--grpc-header-forward-pattern=^x-"], timeout=120) as running:
        running.repo = repo  # type: ignore[attr-defined]
        yield running


def seen(result: Any) -> dict[str, Any]:
    return dict(json.loads(result.as_numpy("OUT")[0]))


def test_http_headers_that_match_reach_the_model_as_sent(server):
    client = httpclient.InferenceServerClient(server.url)
    x = httpclient.InferInput("INPUT0", [1], "INT32")
    x.set_data_from_numpy(np.array([1], np.int32))
    result = client.infer("params", [x], parameters={"a": 1, "b": 2},
                          headers={"X-Trace": "Abc Def", "x-lower": "1", "Other": "no", "A": "header"})
    # names in the case sent, after the body's parameters (a header named as one replaces it)
    assert seen(result) == {"a": 1, "b": 2, "X-Trace": "Abc Def", "x-lower": "1", "A": "header"}


def test_grpc_metadata_that_matches_reaches_the_model(server):
    client = grpcclient.InferenceServerClient(server.grpc_url)
    x = grpcclient.InferInput("INPUT0", [1], "INT32")
    x.set_data_from_numpy(np.array([1], np.int32))
    result = client.infer("params", [x], parameters={"a": 1}, headers={"x-trace": "t", "other": "no"})
    assert seen(result) == {"a": 1, "x-trace": "t"}
    answers: queue.Queue[Any] = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)), headers={"x-stream": "s"})
    try:
        client.async_stream_infer("params", [x])
        client.async_stream_infer("params", [x], parameters={"k": "v"})
        got = [answers.get(timeout=60) for _ in range(2)]
    finally:
        client.stop_stream()
    assert all(error is None for _, error in got), got
    assert sorted((seen(r) for r, _ in got), key=len) == [{"x-stream": "s"}, {"k": "v", "x-stream": "s"}]


def test_without_a_pattern_nothing_is_forwarded(tmp_path):
    write_python_model(str(tmp_path), "params", PARAMETERS_SEEN, CONFIG)
    with RunningServer([str(tmp_path)], timeout=120) as running:
        client = httpclient.InferenceServerClient(running.url)
        x = httpclient.InferInput("INPUT0", [1], "INT32")
        x.set_data_from_numpy(np.array([1], np.int32))
        assert seen(client.infer("params", [x], headers={"X-Trace": "t"})) == {}


def index(url: str) -> list[dict[str, str]]:
    request = urllib.request.Request(f"http://{url}/v2/repository/index", data=b"{}", method="POST")
    with urllib.request.urlopen(request, timeout=30) as r:
        return list(json.loads(r.read()))


def test_index_shows_why_models_do_not_serve(server):
    rows = {row["name"]: row for row in index(server.url)}
    assert rows["dup"] == {"name": "dup", "state": "UNAVAILABLE", "reason": "model appears in two or more repositories"}
    assert rows["unparsable"]["state"] == "UNAVAILABLE"
    assert "config.pbtxt" in rows["unparsable"]["reason"] and "max_batch_size" in rows["unparsable"]["reason"]
    assert str(server.repo) not in rows["unparsable"]["reason"]  # paths relative to the model folder
    client = httpclient.InferenceServerClient(server.url)
    with pytest.raises(InferenceServerException, match="Request for unknown model: 'dup' is not found"):
        client.get_model_metadata("dup")


def test_a_model_whose_folder_is_removed_leaves_the_index(server):
    assert any(row["name"] == "gone" and row.get("state") == "READY" for row in index(server.url))
    shutil.move(os.path.join(server.repo, "gone"), os.path.join(os.path.dirname(server.repo), "gone_away"))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and any(row["name"] == "gone" for row in index(server.url)):
        time.sleep(0.2)
    assert all(row["name"] != "gone" for row in index(server.url))
    assert not httpclient.InferenceServerClient(server.url).is_model_ready("gone")
