"""Clients that try to exhaust the server (issue 22, item 4), on real sockets against a real server process.

Each test asserts the class: the hostile connection is bounded (closed after its timeout, or held back
from taking memory or descriptors), other clients are served correctly meanwhile, and the server's
resident memory and descriptors (read in /proc) return to where they were.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import socket
import struct
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from hostile import (
    IdleFlood,
    closed_by_server,
    connect,
    fd_count,
    get,
    inflating_infer_request,
    read_response,
    request_bytes,
    rss_mib,
)
from models import echo_config, identity_graph, sleep_then_echo, write_model, write_python_model
from server import RunningServer

IDENTITY_U8 = """
    backend: "onnxruntime"
    max_batch_size: 0
    input [ { name: "INPUT0" data_type: TYPE_UINT8 dims: [ -1 ] } ]
    output [ { name: "OUTPUT0" data_type: TYPE_UINT8 dims: [ -1 ] } ]
"""

#: Timeouts of the quick server, seconds (the sweep acts within a quarter of the shortest after it).
QUICK = ["--http-header-timeout-secs=1", "--http-body-timeout-secs=1", "--http-idle-timeout-secs=1",
         "--http-send-timeout-secs=2"]


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> str:
    root = str(tmp_path_factory.mktemp("hostile"))
    write_model(root, "identity_u8", identity_graph("UINT8", (-1,)), config=IDENTITY_U8)
    write_python_model(root, "py_sleep", sleep_then_echo(None), echo_config(0))
    return root


@pytest.fixture(scope="module")
def quick(repo: str):  # type: ignore[no-untyped-def]
    """A server with 1 s header/body/idle timeouts and a 2 s send timeout."""
    with RunningServer([repo], QUICK) as server:
        _wait_ready(server.http_port)
        yield server


def _wait_ready(port: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if get(port, "/v2/health/ready", 5)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError("server not ready")


def _json_infer(model: str, x: np.ndarray) -> bytes:
    return json.dumps({"inputs": [{"name": "INPUT0", "datatype": "UINT8" if x.dtype == np.uint8 else "FP32",
                                   "shape": list(x.shape), "data": x.tolist()}]}).encode()


def _served(port: int) -> None:
    """Another client is answered correctly."""
    client = httpclient.InferenceServerClient(f"127.0.0.1:{port}", network_timeout=60)
    try:
        x = (np.arange(100) % 7).astype(np.uint8)
        inp = httpclient.InferInput("INPUT0", [100], "UINT8")
        inp.set_data_from_numpy(x, binary_data=True)
        out = client.infer("identity_u8", [inp]).as_numpy("OUTPUT0")
        np.testing.assert_array_equal(out, x)
    finally:
        client.close()


# -- timeouts -----------------------------------------------------------------------------------------


def test_slowloris_head_is_cut_after_the_header_timeout(quick: RunningServer) -> None:
    """A head that keeps trickling in (a byte every 0.2 s) is cut by its total time, not by a pause."""
    with connect(quick.http_port) as s:
        s.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        start = time.monotonic()
        got = b""
        s.settimeout(0.2)
        closed_after = None
        while time.monotonic() - start < 15:
            try:
                s.send(b"a")
            except OSError:
                closed_after = time.monotonic() - start
                break
            try:
                chunk = s.recv(4096)
                if not chunk:
                    closed_after = time.monotonic() - start
                    break
                got += chunk
            except TimeoutError:
                pass
            except ConnectionResetError:
                closed_after = time.monotonic() - start
                break
        _served(quick.http_port)  # and others were served meanwhile
    assert closed_after is not None, "a head that never completes was never cut"
    assert 0.9 <= closed_after < 10, closed_after
    assert got.startswith(b"HTTP/1.1 408 "), got
    assert b"did not arrive within 1 s" in got


def test_stalled_body_is_cut_after_the_body_timeout(quick: RunningServer) -> None:
    with connect(quick.http_port) as s:
        s.sendall(b"POST /v2/models/identity_u8/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{\"in")
        result = closed_by_server(s, 15)
    assert result is not None, "a body that stopped arriving was never cut"
    seconds, got = result
    assert 0.9 <= seconds < 10, seconds
    assert got.startswith(b"HTTP/1.1 408 "), got
    assert b"request body stopped arriving for 1 s" in got


def test_body_that_keeps_arriving_slowly_is_served(quick: RunningServer) -> None:
    """The body timeout is between reads (as nginx's client_body_timeout): a slow but moving upload is served
    even when it takes longer in all than the timeout."""
    x = (np.arange(64) % 5).astype(np.uint8)
    body = _json_infer("identity_u8", x)
    pieces = [body[i:i + len(body) // 8 + 1] for i in range(0, len(body), len(body) // 8 + 1)]
    with connect(quick.http_port, 30) as s:
        s.sendall(request_bytes("POST", "/v2/models/identity_u8/infer", b"", {}).replace(
            b"Content-Length: 0", b"Content-Length: %d" % len(body)))
        start = time.monotonic()
        for piece in pieces:
            s.sendall(piece)
            time.sleep(0.25)
        assert time.monotonic() - start > 1.5  # longer in all than the 1 s body timeout
        status, _, answer = read_response(s)
    assert status == 200, answer
    assert json.loads(answer)["outputs"][0]["data"] == x.tolist()


def test_idle_keep_alive_connection_is_closed_after_the_idle_timeout(quick: RunningServer) -> None:
    with connect(quick.http_port) as s:
        s.sendall(request_bytes("GET", "/v2/health/live"))
        assert read_response(s)[0] == 200
        s.sendall(request_bytes("GET", "/v2/health/live"))  # kept alive
        assert read_response(s)[0] == 200
        result = closed_by_server(s, 15)
    assert result is not None, "an idle keep-alive connection was never closed"
    seconds, got = result
    assert 0.9 <= seconds < 10, seconds
    assert got == b""  # closed quietly, between requests


def test_fresh_connection_that_sends_nothing_is_closed(quick: RunningServer) -> None:
    with connect(quick.http_port) as s:
        result = closed_by_server(s, 15)
    assert result is not None and 0.9 <= result[0] < 10, result


def test_request_in_progress_is_not_cut_by_the_idle_timeout(quick: RunningServer) -> None:
    """A model that executes for 2.5 s (longer than every timeout of this server) is answered, and the
    connection stays usable."""
    with connect(quick.http_port, 60) as s:
        x = np.array([2.5], dtype=np.float32)
        s.sendall(request_bytes("POST", "/v2/models/py_sleep/infer", _json_infer("py_sleep", x)))
        start = time.monotonic()
        status, _, body = read_response(s)
        assert status == 200, body
        assert time.monotonic() - start >= 2.4
        assert json.loads(body)["outputs"][0]["data"] == [2.5]
        s.sendall(request_bytes("GET", "/v2/health/ready"))
        assert read_response(s)[0] == 200


def test_client_that_reads_nothing_is_cut_after_the_send_timeout(quick: RunningServer) -> None:
    """Responses a client leaves unread are not held for ever: after --http-send-timeout-secs without
    progress, the connection is cut."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", quick.http_port))
    try:
        s.sendall(inflating_infer_request("identity_u8", 8 << 20) * 3)
        time.sleep(0.5)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        deadline = time.monotonic() + 30
        received, closed = 0, False
        time.sleep(4)  # read nothing for longer than the 2 s send timeout
        s.settimeout(0.5)
        while time.monotonic() < deadline:
            try:
                chunk = s.recv(1 << 20)
            except TimeoutError:
                continue
            except ConnectionResetError:
                closed = True
                break
            if not chunk:
                closed = True
                break
            received += len(chunk)
        assert closed, "the server kept a non-reading client"
        assert received < 3 * (8 << 20)  # cut short, not every response delivered
    finally:
        s.close()
    _served(quick.http_port)


# -- back-pressure ------------------------------------------------------------------------------------


def test_pipelining_client_that_never_reads_holds_bounded_memory(repo: str) -> None:
    """40 pipelined requests each inflating to 16 MiB, never read: the server stops reading the connection
    while one response waits unsent, so its memory grows by about one response, not 40 (640 MiB)."""
    with RunningServer([repo]) as server:
        _wait_ready(server.http_port)
        pid, port = server.proc.pid, server.http_port
        request = inflating_infer_request("identity_u8", 16 << 20)
        for _ in range(2):  # warm up the model and the allocator with one such response, read in full
            with connect(port, 60) as s:
                s.sendall(request)
                status, _, body = read_response(s)
                assert status == 200 and len(body) > 16 << 20
        time.sleep(0.5)
        base_rss, base_fds = rss_mib(pid), fd_count(pid)

        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect(("127.0.0.1", port))
        s.sendall(request * 40)
        peak = base_rss
        start = time.monotonic()
        while time.monotonic() - start < 4:
            peak = max(peak, rss_mib(pid))
            time.sleep(0.05)
        for _ in range(3):  # others are served correctly meanwhile
            _served(port)
            peak = max(peak, rss_mib(pid))
        s.close()

        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and (rss_mib(pid) - base_rss > 48 or fd_count(pid) != base_fds):
            time.sleep(0.2)
        after = rss_mib(pid)
        assert peak - base_rss < 300, f"resident memory grew by {peak - base_rss:.0f} MiB"
        assert after - base_rss < 48, f"resident memory stayed {after - base_rss:.0f} MiB above its baseline"
        assert fd_count(pid) == base_fds
        _served(port)


# -- descriptors ----------------------------------------------------------------------------------------


def _raise_own_descriptor_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < needed:
        pytest.skip(f"this test opens {needed} sockets; the descriptor limit is {hard}")
    if soft != resource.RLIM_INFINITY and soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed if hard == resource.RLIM_INFINITY else hard, hard))


def test_idle_flood_under_a_descriptor_limit_leaves_room_for_health_metrics_and_models(
    repo: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A server limited to 1,024 descriptors while 1,100 idle connections try to hold it (reconnecting as
    they are closed): new clients' health checks and metrics scrapes are answered within the idle timeout,
    and a Python model loads (its process needs descriptors).  Afterwards descriptors return to baseline."""
    _raise_own_descriptor_limit(1500)
    root = str(tmp_path_factory.mktemp("flood"))
    write_python_model(root, "py_echo", sleep_then_echo(0.0), echo_config(0))

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 1024))

    args = ["--model-control-mode=explicit", "--allow-metrics=true", "--http-idle-timeout-secs=30"]
    with _LimitedServer([root], args, limit) as server:
        pid, port = server.proc.pid, server.http_port
        base_fds = fd_count(pid)
        flood = IdleFlood(port, 1100).start()
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and fd_count(pid) < 200:
                time.sleep(0.1)
            assert fd_count(pid) >= 200, "the flood did not reach the server"
            for _ in range(5):
                start = time.monotonic()
                assert get(port, "/v2/health/ready", timeout=30)[0] == 200
                assert time.monotonic() - start < 30
            with urllib.request.urlopen(server.metrics_url, timeout=30) as r:
                assert r.status == 200 and b"nv_inference_request_success" in r.read()
            request = urllib.request.Request(f"http://127.0.0.1:{port}/v2/repository/models/py_echo/load",
                                             data=b"", method="POST")
            with urllib.request.urlopen(request, timeout=120) as r:
                assert r.status == 200
            assert get(port, "/v2/models/py_echo/ready", timeout=30)[0] == 200
            assert fd_count(pid) < 1024
            assert flood.reconnects > 0  # the server closed idle connections to admit new ones
        finally:
            flood.stop()
        request = urllib.request.Request(f"http://127.0.0.1:{port}/v2/repository/models/py_echo/unload",
                                         data=b"", method="POST")
        with urllib.request.urlopen(request, timeout=60) as r:
            assert r.status == 200
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and fd_count(pid) > base_fds:
            time.sleep(0.2)
        assert fd_count(pid) <= base_fds


def test_connection_limit_closes_the_longest_idle_and_refuses_when_all_are_busy(repo: str) -> None:
    """--http-max-connections=3: a new client is admitted by closing the least recently active idle
    connection; when every connection is being answered, the new one gets 503 and the others go on."""
    with RunningServer([repo], ["--http-max-connections=3"]) as server:
        _wait_ready(server.http_port)
        port = server.http_port
        first, second = connect(port), connect(port)
        for s in (first, second):
            s.sendall(request_bytes("GET", "/v2/health/live"))
            assert read_response(s)[0] == 200
        second.sendall(request_bytes("GET", "/v2/health/live"))  # second is now the more recently active
        assert read_response(second)[0] == 200
        third, fourth = connect(port), connect(port)  # a 4th connection: the longest idle (first) goes
        assert closed_by_server(first, 10) is not None
        for s in (second, third, fourth):
            s.sendall(request_bytes("GET", "/v2/health/ready"))
            assert read_response(s)[0] == 200
        busy = [second, third, fourth]
        for s in busy:
            s.settimeout(60)
            s.sendall(request_bytes("POST", "/v2/models/py_sleep/infer",
                                    _json_infer("py_sleep", np.array([0.7], dtype=np.float32))))
        time.sleep(0.3)
        with connect(port) as refused:
            status, _, body = read_response(refused)
            assert status == 503 and b"connection limit (3 connections, all busy)" in body
        for s in busy:
            status, _, body = read_response(s)
            assert status == 200 and json.loads(body)["outputs"][0]["data"] == pytest.approx([0.7])
            s.close()
        first.close()
        assert get(port, "/v2/health/ready")[0] == 200


class _LimitedServer(RunningServer):
    """RunningServer whose process starts under ``preexec`` (a descriptor limit)."""

    def __init__(self, repos: list[str], args: list[str], preexec) -> None:  # type: ignore[no-untyped-def]
        import sys

        from server import ServerProcess, free_port

        http, grpc, metrics = free_port(), free_port(), free_port()
        cmd = [sys.executable, "-m", "tritium", f"--http-port={http}", "--http-address=127.0.0.1",
               f"--grpc-port={grpc}", "--grpc-address=127.0.0.1", f"--metrics-port={metrics}",
               "--metrics-address=127.0.0.1", *[f"--model-repository={r}" for r in repos], *args]
        log = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"tritium-{http}.log")
        ServerProcess.__init__(self, cmd, log, dict(os.environ, PYTHONUNBUFFERED="1"), http, grpc, metrics,
                               preexec)
        self.wait_live(120)


# -- shutdown ---------------------------------------------------------------------------------------------


def test_graceful_shutdown_closes_idle_connections_and_finishes_requests(repo: str) -> None:
    """SIGTERM with idle, half-sent and busy connections: the idle ones are closed at once (the exit timeout
    is 30 s; the server exits in a few), the request being answered still gets its answer."""
    with RunningServer([repo], ["--exit-timeout-secs=30"]) as server:
        _wait_ready(server.http_port)
        port = server.http_port
        idle = [connect(port) for _ in range(40)]
        kept = []
        for _ in range(5):
            s = connect(port)
            s.sendall(request_bytes("GET", "/v2/health/live"))
            assert read_response(s)[0] == 200
            kept.append(s)
        slow = connect(port)
        slow.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n")
        busy = connect(port, 60)
        busy.sendall(request_bytes("POST", "/v2/models/py_sleep/infer",
                                   _json_infer("py_sleep", np.array([1.5], dtype=np.float32))))
        time.sleep(0.3)
        start = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        status, headers, body = read_response(busy)
        assert status == 200, body
        assert headers.get("connection") == "close"
        code = server.proc.wait(60)
        took = time.monotonic() - start
        for s in [*idle, *kept, slow, busy]:
            s.close()
    assert code == 0, server.output()
    assert took < 20, f"shutdown took {took:.1f} s with idle connections open"


# -- gRPC -------------------------------------------------------------------------------------------------


def _h2_settings(port: int) -> dict[int, int]:
    """The server's HTTP/2 SETTINGS, read from its first frame on a raw connection."""
    with connect(port) as s:
        s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + struct.pack(">I", 0)[1:] + b"\x04\x00" + b"\x00\x00\x00\x00")
        data = b""
        while len(data) < 9 or len(data) < 9 + int.from_bytes(data[:3], "big"):
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    length, kind = int.from_bytes(data[:3], "big"), data[3]
    assert kind == 0x4, f"first frame is not SETTINGS: {data[:20]!r}"
    payload = data[9:9 + length]
    return {int.from_bytes(payload[i:i + 2], "big"): int.from_bytes(payload[i + 2:i + 6], "big")
            for i in range(0, len(payload), 6)}


def _at_eof(s: socket.socket) -> bool:
    """Whether the server has closed this connection (reads what it sent without waiting)."""
    s.setblocking(False)
    try:
        while True:
            if not s.recv(65536):
                return True
    except BlockingIOError:
        return False
    except ConnectionResetError:
        return True


def test_grpc_bounds_streams_rpcs_and_connections(repo: str) -> None:
    args = ["--grpc-max-concurrent-streams=4", "--grpc-max-concurrent-rpcs=6", "--grpc-max-connections=8"]
    with RunningServer([repo], args) as server:
        _wait_ready(server.http_port)
        # per connection: the server announces at most 4 concurrent streams (SETTINGS_MAX_CONCURRENT_STREAMS)
        assert _h2_settings(server.grpc_port).get(0x3) == 4

        # in all: 12 RPCs at once from 3 connections (each a model execution queued 0.5 s) exceed 6
        clients = [grpcclient.InferenceServerClient(server.grpc_url,
                                                    channel_args=[("grpc.use_local_subchannel_pool", 1)])
                   for _ in range(3)]

        def call(i: int) -> str:
            inp = grpcclient.InferInput("INPUT0", [1], "FP32")
            inp.set_data_from_numpy(np.array([0.5], dtype=np.float32))
            try:
                clients[i % 3].infer("py_sleep", [inp], client_timeout=60)
                return "ok"
            except InferenceServerException as e:
                return str(e.status())

        try:
            with ThreadPoolExecutor(12) as pool:
                outcomes = list(pool.map(call, range(12)))
            assert "StatusCode.RESOURCE_EXHAUSTED" in outcomes, outcomes
            assert "ok" in outcomes, outcomes
            assert set(outcomes) <= {"ok", "StatusCode.RESOURCE_EXHAUSTED"}, outcomes
            assert call(0) == "ok"  # and it keeps serving
        finally:
            for c in clients:
                c.close()

        # connections: beyond 8, a new one is closed at once; the server keeps serving afterwards
        held = [connect(server.grpc_port) for _ in range(12)]
        try:
            for s in held:
                s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
            time.sleep(1.5)
            closed = sum(_at_eof(s) for s in held)
            assert closed >= 4, f"{closed} of 12 connections closed with a limit of 8"
        finally:
            for s in held:
                s.close()
        client = grpcclient.InferenceServerClient(server.grpc_url)
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    assert client.is_server_live()
                    break
                except InferenceServerException:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)
        finally:
            client.close()


def test_grpc_stream_that_sends_without_reading_holds_bounded_memory(repo: str) -> None:
    """2,000 requests of 256 KiB on one ModelStreamInfer stream whose client reads no response: the server
    keeps a bounded number in progress and queued (not 500 MiB of responses) and serves others meanwhile.
    Twice: what the first attack left (the allocator keeps freed memory for reuse) is reused by the second,
    and the server's descriptors return to baseline when the client cancels."""
    import grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    size = 256 << 10

    def request(i: int) -> service_pb2.ModelInferRequest:
        r = service_pb2.ModelInferRequest(model_name="identity_u8", id=str(i))
        tensor = r.inputs.add(name="INPUT0", datatype="UINT8")
        tensor.shape.append(size)
        r.raw_input_contents.append(bytes([i % 251]) * size)
        return r

    with RunningServer([repo]) as server:
        _wait_ready(server.http_port)
        pid = server.proc.pid
        channel = grpc.insecure_channel(server.grpc_url, options=[("grpc.max_receive_message_length", -1)])
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)

        def attack() -> tuple[float, float]:
            """Peak RSS while a non-reading stream is open, RSS after it is cancelled."""
            call = stub.ModelStreamInfer((request(i) for i in range(2000)), timeout=120)  # never read
            peak = 0.0
            start = time.monotonic()
            while time.monotonic() - start < 3:
                peak = max(peak, rss_mib(pid))
                time.sleep(0.05)
            others = list(stub.ModelStreamInfer(iter([request(7)]), timeout=60))  # another stream is served
            assert others[0].infer_response.raw_output_contents[0] == bytes([7]) * size
            _served(server.http_port)
            peak = max(peak, rss_mib(pid))
            call.cancel()
            time.sleep(1)
            return peak, rss_mib(pid)

        try:
            warm = list(stub.ModelStreamInfer(iter([request(i) for i in range(20)]), timeout=60))
            assert len(warm) == 20 and not any(w.error_message for w in warm)
            time.sleep(0.5)
            base_rss, base_fds = rss_mib(pid), fd_count(pid)
            peak1, after1 = attack()
            peak2, after2 = attack()
        finally:
            channel.close()
        assert peak1 - base_rss < 200, f"resident memory grew by {peak1 - base_rss:.0f} MiB"
        assert peak2 - base_rss < 200, f"resident memory grew by {peak2 - base_rss:.0f} MiB on a second attack"
        assert after2 - after1 < 48, f"each attack leaves more memory behind ({after1:.0f} -> {after2:.0f} MiB)"
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and fd_count(pid) > base_fds:
            time.sleep(0.2)
        assert fd_count(pid) <= base_fds
