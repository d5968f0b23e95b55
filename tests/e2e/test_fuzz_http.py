"""Mutated bodies (hypothesis) through a real socket to a running server: every answer is a JSON error or a
success, never an internal error from a decoder, the server never dies, and it still serves a valid request.

The unit-level property tests (``tests/unit/test_fuzz_decoders.py``) run each decoder many more times; this
one checks the whole path as a client sees it: the HTTP transport, the routes, the status codes.
"""

from __future__ import annotations

import http.client
import json
import os

import numpy as np
import pytest
import tritonclient.http as httpclient
from fuzz_strategies import (
    generate_bodies,
    infer_bodies,
    logging_bodies,
    repository_requests,
    shm_requests,
    trace_bodies,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from models import identity_graph, write_model
from server import RunningServer

pytestmark = pytest.mark.timeout(600)

#: Models the fuzzed requests name: 'm' has the inputs the strategies generate, 'strings' is a BYTES identity.
M_CONFIG = """
backend: "onnxruntime"
max_batch_size: 0
input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ -1 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ -1 ] } ]
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    repo = str(tmp_path_factory.mktemp("fuzz_repo"))
    write_model(repo, "m", identity_graph("FP32", (-1,)), config=M_CONFIG)
    write_model(repo, "strings", identity_graph("BYTES", (-1,)), config="""
        backend: "onnxruntime"
        input [ { name: "INPUT0" data_type: TYPE_STRING dims: [ -1 ] } ]
        output [ { name: "OUTPUT0" data_type: TYPE_STRING dims: [ -1 ] } ]
    """)
    with RunningServer([repo], ["--model-control-mode=explicit", "--load-model=*", "--allow-client-shm=true",
                                "--http-max-input-size=1048576"]) as s:
        yield s


@st.composite
def requests(draw):
    """(method, path, headers, body) of a mutated request to one of the endpoints that decode a body."""
    kind = draw(st.sampled_from(["infer", "infer", "infer_strings", "generate", "repository", "logging", "trace",
                                 "shm", "random"]))
    headers: dict[str, str] = {}
    if kind in ("infer", "infer_strings"):
        body, length = draw(infer_bodies())
        if length is not None:
            headers["Inference-Header-Content-Length"] = str(length)
        model = "m" if kind == "infer" else "strings"
        return "POST", f"/v2/models/{model}/infer", headers, body
    if kind == "generate":
        return "POST", "/v2/models/m/generate", headers, draw(generate_bodies())
    if kind == "repository":
        path, body = draw(repository_requests())
        return "POST", path.replace("/broken/", "/missing/"), headers, body  # leave 'm' and 'strings' loaded
    if kind == "logging":
        return "POST", "/v2/logging", headers, draw(logging_bodies())
    if kind == "trace":
        return "POST", draw(st.sampled_from(["/v2/trace/setting", "/v2/models/m/trace/setting"])), headers, \
            draw(trace_bodies())
    if kind == "shm":
        path, action, doc = draw(shm_requests())
        return ("GET" if action == "status" else "POST"), path, headers, json.dumps(doc).encode()
    path = draw(st.sampled_from(["/v2/models/m/infer", "/v2/models/m/generate", "/v2/repository/index",
                                 "/v2/logging", "/v2/trace/setting"]))
    if draw(st.booleans()):
        headers["Content-Encoding"] = draw(st.sampled_from(["gzip", "deflate", "br"]))
    return "POST", path, headers, draw(st.binary(max_size=200))


@settings(max_examples=int(os.environ.get("FUZZ_E2E_EXAMPLES", "60")), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(requests())
def test_mutated_bodies_get_json_errors_and_the_server_stays_up(server, request_):
    method, path, headers, body = request_
    connection = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=60)
    try:
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        payload = response.read()
    finally:
        connection.close()
    assert server.proc.poll() is None, f"the server died on {method} {path} {body[:200]!r}:\n{server.output()[-3000:]}"
    if response.status >= 400:
        try:
            message = json.loads(payload)["error"]
        except (ValueError, KeyError, TypeError):
            pytest.fail(f"{method} {path} answered {response.status} without a JSON error: {payload[:300]!r}")
        assert isinstance(message, str) and message
        # the transport's catch-all: a decoder let something other than a TritiumError out
        assert not message.startswith("internal error:"), f"{method} {path} {body[:300]!r}: {message}"
    else:
        assert response.status == 200, (response.status, payload[:300])


def test_still_serves_after_fuzzing(server):
    """Runs after the fuzzing test (file order): the models still answer correctly, health says live."""
    client = httpclient.InferenceServerClient(server.url)
    try:
        assert client.is_server_live()
        data = np.arange(5, dtype=np.float32)
        x = httpclient.InferInput("INPUT0", [5], "FP32")
        x.set_data_from_numpy(data, binary_data=True)
        result = client.infer("m", [x])
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), data)
        words = np.array([b"a", b"", "\u00e9".encode()], dtype=object)
        s = httpclient.InferInput("INPUT0", [3], "BYTES")
        s.set_data_from_numpy(words)
        np.testing.assert_array_equal(client.infer("strings", [s]).as_numpy("OUTPUT0"), words)
    finally:
        client.close()
    assert server.proc.poll() is None
    # the transport logs this when a route let something other than a TritiumError out
    assert "unhandled error answering" not in server.output()
