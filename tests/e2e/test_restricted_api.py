"""Triton's restricted APIs (``--http-restricted-api``, ``--grpc-restricted-protocol``) through real sockets.

Every group is tried on both protocols with no header, a wrong value, another group's header, and the
right one: refused requests get Triton's answer (HTTP 403 text/plain ``{"error": "This API is restricted,
expecting header '<key>'"}``; gRPC UNAVAILABLE ``This protocol is restricted, expecting header
'triton-grpc-protocol-<key>'``) and never reach the API; allowed ones are served as usual.
``test_against_real_triton.py`` compares the same answers with real Triton's.
"""

from __future__ import annotations

import json
import queue
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tritium._proto import health_pb2, health_pb2_grpc
from tritium.frontends.restrictions import GROUPS

from models import write_add_sub
from server import RunningServer

#: Each group its own key, so that a route checked against another group's key would show; health's in
#: mixed case (HTTP header names are case-insensitive); the values hold '=' and ':', which the flag allows.
KEYS = {group: (f"{group}-key", f"{group}-s3cret=with:colon") for group in GROUPS}
KEYS["health"] = ("Probe-Key", "p-value")
FLAGS = [f"--http-restricted-api={group}:{key}={value}" for group, (key, value) in KEYS.items()]
FLAGS += [f"--grpc-restricted-protocol={group}:{key.lower()}={value}" for group, (key, value) in KEYS.items()]
#: An operator's split: administration behind one key (a list of groups in one flag), the rest open.
ADMIN_GROUPS = ("model-repository", "logging", "trace")
ADMIN_FLAGS = [f"--http-restricted-api={','.join(ADMIN_GROUPS)}:admin-key=a",
               f"--grpc-restricted-protocol={','.join(ADMIN_GROUPS)}:admin-key=a"]


def http_key(group: str) -> tuple[str, str]:
    return KEYS[group]


def other_group(group: str) -> str:
    return GROUPS[(GROUPS.index(group) + 1) % len(GROUPS)]


def grpc_key(group: str) -> tuple[str, str]:
    key, value = http_key(group)
    return f"triton-grpc-protocol-{key.lower()}", value


def http_refusal(key: str) -> bytes:
    return json.dumps({"error": f"This API is restricted, expecting header '{key}'"}, separators=(",", ":")).encode()


def grpc_refusal(key: str) -> str:
    return f"This protocol is restricted, expecting header '{key}'"


def start(tmp_path_factory: pytest.TempPathFactory, flags: list[str], headers: dict[str, str] | None) -> RunningServer:
    repo = tmp_path_factory.mktemp("repo")
    write_add_sub(str(repo))
    server = RunningServer([str(repo)], ["--model-control-mode=explicit", "--load-model=add_sub", *flags],
                           wait_ready=False)
    try:
        server.wait_live(120, headers=headers)
    except RuntimeError:
        server.stop()
        raise
    return server


@pytest.fixture(scope="module")
def server(tmp_path_factory):  # type: ignore[no-untyped-def]
    s = start(tmp_path_factory, FLAGS, dict([KEYS["health"]]))
    yield s
    s.stop()


@pytest.fixture(scope="module")
def admin_only(tmp_path_factory):  # type: ignore[no-untyped-def]
    """The README's advice: the administrative APIs (the repository API uploads code) behind one key."""
    s = start(tmp_path_factory, ADMIN_FLAGS, None)
    yield s
    s.stop()


def raw(server: RunningServer, method: str, path: str, body: bytes | None = None,
        headers: dict[str, str] | None = None) -> tuple[int, str, bytes]:
    request = urllib.request.Request(f"http://{server.url}{path}", data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=60) as r:
            return r.status, r.headers.get("Content-Type", ""), r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type", ""), e.read()


X = list(range(16))
INFER_BODY = json.dumps({"inputs": [{"name": "INPUT0", "shape": [1, 16], "datatype": "INT32", "data": X},
                                    {"name": "INPUT1", "shape": [1, 16], "datatype": "INT32", "data": X}]}).encode()
GENERATE_BODY = json.dumps({"INPUT0": X, "INPUT1": X}).encode()

#: (group, method, path, body, status when allowed): every HTTP route of Triton's, by group.
HTTP_ROUTES = [
    ("health", "GET", "/v2/health/live", None, 200),
    ("health", "GET", "/v2/health/ready", None, 200),
    ("health", "GET", "/v2/models/add_sub/ready", None, 200),
    ("health", "GET", "/v2/models/add_sub/versions/1/ready", None, 200),
    ("metadata", "GET", "/v2", None, 200),
    ("metadata", "GET", "/v2/models/add_sub", None, 200),
    ("metadata", "GET", "/v2/models/add_sub/versions/1", None, 200),
    ("inference", "POST", "/v2/models/add_sub/infer", INFER_BODY, 200),
    ("inference", "POST", "/v2/models/add_sub/versions/1/infer", INFER_BODY, 200),
    ("inference", "POST", "/v2/models/add_sub/generate", GENERATE_BODY, None),
    ("inference", "POST", "/v2/models/add_sub/generate_stream", GENERATE_BODY, None),
    ("shared-memory", "GET", "/v2/systemsharedmemory/status", None, 200),
    ("shared-memory", "GET", "/v2/systemsharedmemory/region/r/status", None, 404),
    ("shared-memory", "POST", "/v2/systemsharedmemory/region/r/register",
     b'{"key": "/nope", "offset": 0, "byte_size": 4}', None),
    ("shared-memory", "POST", "/v2/systemsharedmemory/unregister", b"", 200),
    ("shared-memory", "GET", "/v2/cudasharedmemory/status", None, 200),
    ("shared-memory", "POST", "/v2/cudasharedmemory/region/r/unregister", b"", 200),
    ("model-config", "GET", "/v2/models/add_sub/config", None, 200),
    ("model-config", "GET", "/v2/models/add_sub/versions/1/config", None, 200),
    ("model-repository", "POST", "/v2/repository/index", b"{}", 200),
    ("model-repository", "POST", "/v2/repository/models/nope/unload", b"{}", 200),
    ("model-repository", "POST", "/v2/repository/models/nope/load", b"{}", 500),
    ("statistics", "GET", "/v2/models/stats", None, 200),
    ("statistics", "GET", "/v2/models/add_sub/stats", None, 200),
    ("statistics", "GET", "/v2/models/add_sub/versions/1/stats", None, 200),
    ("trace", "GET", "/v2/trace/setting", None, 200),
    ("trace", "GET", "/v2/models/add_sub/trace/setting", None, 200),
    ("logging", "GET", "/v2/logging", None, 200),
]


@pytest.mark.parametrize("group, method, path, body, allowed", HTTP_ROUTES,
                         ids=[f"{m} {p}" for _, m, p, _, _ in HTTP_ROUTES])
def test_http_route_needs_its_groups_header(server, group, method, path, body, allowed):  # type: ignore[no-untyped-def]
    key, value = http_key(group)
    other = http_key(other_group(group))
    for headers in ({}, {key: "wrong"}, {key: value.upper()}, {key: value + " x"}, {other[0]: other[1]}):
        assert raw(server, method, path, body, headers) == (403, "text/plain", http_refusal(key)), headers
    status, _, answer = raw(server, method, path, body, {key: value})
    assert status != 403 and b"restricted" not in answer
    if allowed is not None:
        assert status == allowed, answer
    # header names are case-insensitive, values are not
    assert raw(server, method, path, body, {key.upper(): value})[0] == status
    # a wrong method is refused as restricted first, as Triton checks the header before the method
    assert raw(server, "DELETE", path, None)[0] == 403


def test_generate_stream_with_the_header_streams(server):  # type: ignore[no-untyped-def]
    headers = dict([KEYS["inference"]])
    status, content_type, answer = raw(server, "POST", "/v2/models/add_sub/generate", GENERATE_BODY, headers)
    status_stream, stream_type, _ = raw(server, "POST", "/v2/models/add_sub/generate_stream", GENERATE_BODY, headers)
    assert (status, status_stream) == (200, 200), answer
    assert json.loads(answer)["OUTPUT0"] == [2 * v for v in X]
    assert stream_type.startswith("text/event-stream")


def test_unknown_paths_are_not_found_without_any_header(server):  # type: ignore[no-untyped-def]
    """Paths outside every group answer 404 as before (Triton checks nothing there either)."""
    for path in ("/v2/nope", "/v2/models/add_sub/bogus", "/v2/models/add_sub/versions/1/trace/setting", "/v2/health"):
        status, _, answer = raw(server, "GET", path)
        assert status == 404 and b"restricted" not in answer, path


def test_first_of_repeated_headers_counts(server):  # type: ignore[no-untyped-def]
    """As Triton (libevhtp finds the first): right then wrong passes, wrong then right does not."""
    import http.client

    def call(values: list[str]) -> int:
        connection = http.client.HTTPConnection(server.url, timeout=30)
        connection.putrequest("GET", "/v2/health/live")
        for v in values:
            connection.putheader(KEYS["health"][0], v)
        connection.endheaders()
        status = connection.getresponse().status
        connection.close()
        return status

    assert call([KEYS["health"][1], "wrong"]) == 200
    assert call(["wrong", KEYS["health"][1]]) == 403


def test_non_ascii_value_is_compared_as_bytes(tmp_path_factory):  # type: ignore[no-untyped-def]
    """A value given in UTF-8 on the command line matches the same bytes sent by a client."""
    import http.client

    s = start(tmp_path_factory, ["--http-restricted-api=metadata:k=clé"], None)
    try:
        def status(value: bytes) -> int:
            connection = http.client.HTTPConnection(s.url, timeout=30)
            connection.putrequest("GET", "/v2")
            connection.putheader("k", value)
            connection.endheaders()
            answer = connection.getresponse().status
            connection.close()
            return answer

        assert status("clé".encode()) == 200
        assert status("clé".encode("latin-1")) == 403
    finally:
        s.stop()


def test_metrics_port_is_never_restricted(server):  # type: ignore[no-untyped-def]
    with urllib.request.urlopen(server.metrics_url, timeout=30) as r:
        assert r.status == 200 and b"nv_inference_count" in r.read()


def infer_inputs(module: Any) -> list[Any]:
    inputs = []
    for name in ("INPUT0", "INPUT1"):
        t = module.InferInput(name, [1, 16], "INT32")
        t.set_data_from_numpy(np.arange(16, dtype=np.int32).reshape(1, 16))
        inputs.append(t)
    return inputs


def infer(client: Any, headers: dict[str, str] | None) -> Any:
    module = httpclient if isinstance(client, httpclient.InferenceServerClient) else grpcclient
    return client.infer("add_sub", infer_inputs(module), headers=headers).as_numpy("OUTPUT0").tolist()


#: group -> calls of tritonclient's API (client, headers) -> result, for either protocol.
CLIENT_CALLS: dict[str, list[Callable[[Any, dict[str, str] | None], Any]]] = {
    "health": [lambda c, h: c.is_server_live(headers=h), lambda c, h: c.is_server_ready(headers=h),
               lambda c, h: c.is_model_ready("add_sub", headers=h)],
    "metadata": [lambda c, h: c.get_server_metadata(headers=h),
                 lambda c, h: c.get_model_metadata("add_sub", headers=h)],
    "inference": [lambda c, h: infer(c, h)],
    "shared-memory": [lambda c, h: c.get_system_shared_memory_status(headers=h),
                      lambda c, h: c.unregister_system_shared_memory(headers=h),
                      lambda c, h: c.get_cuda_shared_memory_status(headers=h)],
    "model-config": [lambda c, h: c.get_model_config("add_sub", headers=h)],
    "model-repository": [lambda c, h: c.get_model_repository_index(headers=h),
                         lambda c, h: c.unload_model("nope", headers=h)],
    "statistics": [lambda c, h: c.get_inference_statistics("add_sub", headers=h)],
    "trace": [lambda c, h: c.get_trace_settings(headers=h)],
    "logging": [lambda c, h: c.get_log_settings(headers=h)],
}


def outcome(call: Callable[[], Any]) -> tuple[str, Any]:
    try:
        return "ok", call()
    except InferenceServerException as e:
        return "error", (e.status(), e.message())


@pytest.mark.parametrize("group", GROUPS)
def test_tritonclient_http(server, group):  # type: ignore[no-untyped-def]
    client = httpclient.InferenceServerClient(server.url)
    key, value = http_key(group)
    for call in CLIENT_CALLS[group]:
        for headers in (None, {key: "wrong"}):
            result = outcome(lambda: call(client, headers))
            if group == "health":  # tritonclient.http answers False for any refusal of a health check
                assert result == ("ok", False)
            else:
                assert result == ("error", ("403", f"This API is restricted, expecting header '{key}'"))
        kind, answer = outcome(lambda: call(client, {key: value}))
        assert kind == "ok" and answer is not False, answer


@pytest.mark.parametrize("group", GROUPS)
def test_tritonclient_grpc(server, group):  # type: ignore[no-untyped-def]
    client = grpcclient.InferenceServerClient(server.grpc_url)
    key, value = grpc_key(group)
    refused = ("error", ("StatusCode.UNAVAILABLE", grpc_refusal(key)))
    other = grpc_key(other_group(group))
    for call in CLIENT_CALLS[group]:
        for headers in (None, {key: "wrong"}, {key: value.upper()}, {other[0]: other[1]},
                        {key.removeprefix("triton-grpc-protocol-"): value}):  # the prefix is required
            result = outcome(lambda: call(client, headers))
            assert (result[0], (str(result[1][0]), result[1][1])) == refused, headers
        kind, answer = outcome(lambda: call(client, {key: value}))
        assert kind == "ok" and answer is not False, answer


def test_grpc_stream_is_refused_before_any_request_is_read(server):  # type: ignore[no-untyped-def]
    key, value = grpc_key("inference")
    for headers, expect_ok in ((None, False), ({key: "wrong"}, False), ({key: value}, True)):
        client = grpcclient.InferenceServerClient(server.grpc_url)
        results: queue.Queue[Any] = queue.Queue()
        client.start_stream(callback=lambda result, error: results.put((result, error)), headers=headers)
        try:
            client.async_stream_infer("add_sub", infer_inputs(grpcclient))
        except InferenceServerException:
            pass  # the stream may already be over: its error comes through the callback
        result, error = results.get(timeout=60)
        client.stop_stream()
        if expect_ok:
            assert error is None and result.as_numpy("OUTPUT0").tolist() == [[2 * v for v in range(16)]]
        else:
            assert result is None
            assert (str(error.status()), error.message()) == ("StatusCode.UNAVAILABLE", grpc_refusal(key))


def test_grpc_health_service_is_in_the_health_group(server):  # type: ignore[no-untyped-def]
    key, value = grpc_key("health")
    with grpc.insecure_channel(server.grpc_url) as channel:
        check = health_pb2_grpc.HealthStub(channel).Check
        for metadata in (None, [(key, "wrong")], [grpc_key("metadata")], [grpc_key("inference")]):
            with pytest.raises(grpc.RpcError) as info:
                check(health_pb2.HealthCheckRequest(), metadata=metadata, timeout=30)
            assert (info.value.code(), info.value.details()) == (grpc.StatusCode.UNAVAILABLE, grpc_refusal(key))
        answer = check(health_pb2.HealthCheckRequest(), metadata=[(key, value)], timeout=30)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING


def test_first_of_repeated_metadata_counts(server):  # type: ignore[no-untyped-def]
    key, value = grpc_key("health")
    client = grpcclient.InferenceServerClient(server.grpc_url)
    stub = client._client_stub
    from tritonclient.grpc import service_pb2 as pb

    assert stub.ServerLive(pb.ServerLiveRequest(), metadata=[(key, value), (key, "x")], timeout=30).live
    with pytest.raises(grpc.RpcError) as info:
        stub.ServerLive(pb.ServerLiveRequest(), metadata=[(key, "x"), (key, value)], timeout=30)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize("group", [g for g in GROUPS if g not in ADMIN_GROUPS])
def test_unrestricted_groups_stay_open(admin_only, group):  # type: ignore[no-untyped-def]
    for client in (httpclient.InferenceServerClient(admin_only.url),
                   grpcclient.InferenceServerClient(admin_only.grpc_url)):
        for call in CLIENT_CALLS[group]:
            kind, answer = outcome(lambda: call(client, None))
            assert kind == "ok" and answer is not False, answer


@pytest.mark.parametrize("group", ADMIN_GROUPS)
def test_one_flag_restricts_a_list_of_groups(admin_only, group):  # type: ignore[no-untyped-def]
    for client, key in ((httpclient.InferenceServerClient(admin_only.url), "admin-key"),
                        (grpcclient.InferenceServerClient(admin_only.grpc_url), "triton-grpc-protocol-admin-key")):
        for call in CLIENT_CALLS[group]:
            kind, answer = outcome(lambda: call(client, None))
            assert kind == "error" and answer[1] == f"This {'API' if key == 'admin-key' else 'protocol'} is " \
                                                   f"restricted, expecting header '{key}'"
            kind, answer = outcome(lambda: call(client, {key: "a"}))
            assert kind == "ok", answer


def test_repository_overrides_need_the_key(admin_only):  # type: ignore[no-untyped-def]
    """Loading with ``file:`` overrides uploads model code that then runs: without the key it is refused and
    the model stays as it was."""
    for client, key, refused_status in (
            (httpclient.InferenceServerClient(admin_only.url), "admin-key", "403"),
            (grpcclient.InferenceServerClient(admin_only.grpc_url), "triton-grpc-protocol-admin-key",
             "StatusCode.UNAVAILABLE")):
        for call in (lambda h: client.load_model("add_sub", config='{"max_batch_size": 2}',
                                                 files={"file:1/model.onnx": b"junk"}, headers=h),
                     lambda h: client.unload_model("add_sub", headers=h)):
            for headers in (None, {key: "wrong"}):
                kind, answer = outcome(lambda: call(headers))
                assert kind == "error" and str(answer[0]) == refused_status and key in answer[1]
        assert client.is_model_ready("add_sub")
        config = client.get_model_config("add_sub")
        max_batch = config["max_batch_size"] if isinstance(config, dict) else config.config.max_batch_size
        assert max_batch == 8  # untouched: the override was refused
    with urllib.request.urlopen(admin_only.metrics_url, timeout=30) as r:
        assert r.status == 200
