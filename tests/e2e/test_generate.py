"""The generate extension over a real server: ``/generate`` answers one JSON object, ``/generate_stream``
sends each response of a decoupled model as a Server-Sent Event as the model sends it.  The wording and
status codes were taken from real Triton 2.51 (``test_against_real_triton.py`` compares them directly)."""

from __future__ import annotations

import http.client
import json
import socket
import time

import pytest

from models import write_add_sub, write_python_model
from server import RunningServer

#: Decoupled: for input n, n responses 0..n-1, ``pause`` seconds apart (a request parameter), then FINAL.
SLOW_REPEAT = '''
import json, time
import numpy as np
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def execute(self, requests):
        for r in requests:
            sender = r.get_response_sender()
            pause = float(json.loads(r.parameters()).get("pause", 0))
            for i in range(int(r.inputs()[0].as_numpy()[0])):
                if r.is_cancelled():
                    break
                sender.send(pb_utils.InferenceResponse([pb_utils.Tensor("OUT", np.array([i], np.int32))]))
                time.sleep(pause)
            if int(r.inputs()[0].as_numpy()[0]) == 99:
                sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError("gave up after some")),
                            flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
                continue
            sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        return None
'''
REPEAT_CONFIG = """
    backend: "python"
    max_batch_size: 0
    input [ { name: "N" data_type: TYPE_INT32 dims: [ 1 ] } ]
    output [ { name: "OUT" data_type: TYPE_INT32 dims: [ 1 ] } ]
    model_transaction_policy { decoupled: true }
"""

UPPER = '''
import numpy as np
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def execute(self, requests):
        out = []
        for r in requests:
            text = r.inputs()[0].as_numpy().reshape(-1)
            upper = np.array([t.upper() for t in text], dtype=np.object_)
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("text_output", upper),
                                                   pb_utils.Tensor("length", np.array([len(text)], np.int64))]))
        return out
'''
UPPER_CONFIG = """
    backend: "python"
    max_batch_size: 8
    input [ { name: "text_input" data_type: TYPE_STRING dims: [ -1 ] } ]
    output [ { name: "text_output" data_type: TYPE_STRING dims: [ -1 ] },
             { name: "length" data_type: TYPE_INT64 dims: [ 1 ] } ]
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    repo = str(tmp_path_factory.mktemp("generate"))
    write_add_sub(repo)
    write_python_model(repo, "repeat", SLOW_REPEAT, REPEAT_CONFIG)
    write_python_model(repo, "upper", UPPER, UPPER_CONFIG)
    with RunningServer([repo]) as s:
        yield s


def post(server: RunningServer, path: str, doc: object) -> tuple[int, str, str]:
    connection = http.client.HTTPConnection(server.url, timeout=30)
    try:
        body = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
        connection.request("POST", path, body, {"Content-Type": "application/json"})
        response = connection.getresponse()
        return response.status, response.getheader("Content-Type") or "", response.read().decode()
    finally:
        connection.close()


def events(text: str) -> list[dict]:
    assert text == "" or text.endswith("\n\n"), text
    return [json.loads(block[len("data: "):]) for block in text.split("\n\n") if block]


def test_generate_maps_keys_to_inputs_and_outputs_to_keys(server: RunningServer) -> None:
    status, content_type, text = post(server, "/v2/models/add_sub/generate",
                                      {"INPUT0": list(range(16)), "INPUT1": [1] * 16, "id": "q1", "note": "x"})
    assert (status, content_type) == (200, "application/json")
    assert text.startswith('{"OUTPUT0":')  # keys sorted, as Triton writes them
    assert json.loads(text) == {"OUTPUT0": list(range(1, 17)), "OUTPUT1": list(range(-1, 15)), "id": "q1",
                                "model_name": "add_sub", "model_version": "1"}


def test_generate_text_model_with_one_element_answers_scalars(server: RunningServer) -> None:
    status, _, text = post(server, "/v2/models/upper/generate", {"text_input": "héllo"})
    assert status == 200
    assert json.loads(text) == {"text_output": "HéLLO", "length": 1, "model_name": "upper", "model_version": "1"}
    status, _, text = post(server, "/v2/models/upper/versions/1/generate", {"text_input": ["a", "b"]})
    assert json.loads(text)["text_output"] == ["A", "B"] and json.loads(text)["length"] == 2


def test_generate_refusals(server: RunningServer) -> None:
    status, _, text = post(server, "/v2/models/add_sub/generate", {"INPUT0": [[1, 2]], "INPUT1": [1] * 16})
    assert status == 400
    assert json.loads(text) == {"error": "The schema can not convert input 'INPUT0' to tensor with proper shape"}
    status, _, text = post(server, "/v2/models/add_sub/generate", {"INPUT0": list(range(16))})
    assert status == 400 and "missing required input(s) ['INPUT1']" in json.loads(text)["error"]
    status, _, text = post(server, "/v2/models/nope/generate", {"x": 1})
    assert status == 404 and json.loads(text) == {"error": "Request for unknown model: 'nope' is not found"}
    status, _, text = post(server, "/v2/models/add_sub/generate", b"{bad")
    assert status == 400 and json.loads(text)["error"].startswith("failed to parse the request JSON buffer")
    status, _, text = post(server, "/v2/models/add_sub/generate", {"INPUT0": [1] * 16, "INPUT1": [1] * 16,
                                                                  "parameters": {"nested": [1]}})
    assert status == 400 and "parameter 'nested' has invalid type" in json.loads(text)["error"]
    # a decoupled model must give exactly one response on /generate (Triton answers this with 200)
    status, _, text = post(server, "/v2/models/repeat/generate", {"N": 3})
    assert status == 200 and json.loads(text)["error"].startswith("generate expects model to produce exactly 1 response")
    status, _, text = post(server, "/v2/models/repeat/generate", {"N": 1})
    assert json.loads(text) == {"OUT": 0, "model_name": "repeat", "model_version": "1"}


def test_generate_stream_sends_each_response_as_an_event(server: RunningServer) -> None:
    status, content_type, text = post(server, "/v2/models/repeat/generate_stream", {"N": 5})
    assert (status, content_type) == (200, "text/event-stream; charset=utf-8")
    assert [e["OUT"] for e in events(text)] == [0, 1, 2, 3, 4]
    status, _, text = post(server, "/v2/models/repeat/generate_stream", {"N": 0})
    assert (status, text) == (200, "")
    status, _, text = post(server, "/v2/models/add_sub/generate_stream", {"INPUT0": [2] * 16, "INPUT1": [1] * 16})
    assert status == 200 and events(text) == [{"OUTPUT0": [3] * 16, "OUTPUT1": [1] * 16, "model_name": "add_sub",
                                               "model_version": "1"}]


def test_generate_stream_errors(server: RunningServer) -> None:
    # refused before anything is sent: a JSON error
    status, content_type, text = post(server, "/v2/models/repeat/generate_stream", {"N": [1, 2]})
    assert (status, content_type) == (400, "application/json")
    # the model fails after two responses: two events, then an error event; the status was already sent
    status, _, text = post(server, "/v2/models/repeat/generate_stream", {"N": 99, "pause": 0})
    got = events(text)
    assert status == 200 and len(got) == 100 and got[-1] == {"error": "gave up after some"}


def test_generate_stream_events_arrive_as_they_are_made(server: RunningServer) -> None:
    connection = http.client.HTTPConnection(server.url, timeout=30)
    try:
        connection.request("POST", "/v2/models/repeat/generate_stream", json.dumps({"N": 3, "pause": 0.6}).encode())
        start = time.monotonic()
        response = connection.getresponse()
        assert response.getheader("Transfer-Encoding") == "chunked"
        first = response.readline()
        first_at = time.monotonic() - start
        rest = response.read().decode()
        total = time.monotonic() - start
    finally:
        connection.close()
    assert json.loads(first[len(b"data: "):]) == {"OUT": 0, "model_name": "repeat", "model_version": "1"}
    assert first_at < 0.5 and total > 1.1, (first_at, total)  # the first came before the model went on
    assert [e["OUT"] for e in events(rest.lstrip("\n"))] == [1, 2]


def test_keep_alive_connection_serves_streams_one_after_another(server: RunningServer) -> None:
    connection = http.client.HTTPConnection(server.url, timeout=30)
    try:
        for n in (2, 3):
            connection.request("POST", "/v2/models/repeat/generate_stream", json.dumps({"N": n}).encode())
            response = connection.getresponse()
            assert [e["OUT"] for e in events(response.read().decode())] == list(range(n))
        connection.request("GET", "/v2/health/ready")
        assert connection.getresponse().status == 200
    finally:
        connection.close()


def test_client_leaving_a_stream_cancels_it_and_the_server_serves_on(server: RunningServer) -> None:
    body = json.dumps({"N": 50, "pause": 0.1}).encode()
    with socket.create_connection(("127.0.0.1", int(server.url.split(":")[1])), timeout=10) as sock:
        sock.sendall(b"POST /v2/models/repeat/generate_stream HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s"
                     % (len(body), body))
        assert b"data: " in sock.recv(4096)
    # the model's instance is free again soon: its next stream completes quickly
    start = time.monotonic()
    status, _, text = post(server, "/v2/models/repeat/generate_stream", {"N": 2})
    assert status == 200 and len(events(text)) == 2
    assert time.monotonic() - start < 3, "the abandoned stream kept the instance busy"


def test_generate_with_a_big_body(server: RunningServer) -> None:
    """A body of 64 KiB or more is received into shared memory (a memoryview): it is decoded all the same."""
    text_input = "big text " * 10_000
    status, _, text = post(server, "/v2/models/upper/generate", {"text_input": text_input})
    assert status == 200, text
    assert json.loads(text)["text_output"] == text_input.upper()
