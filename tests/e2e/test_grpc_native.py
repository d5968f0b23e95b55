"""The native gRPC transport (``--grpc-transport=native``) driven by real clients: tritonclient.grpc sync,
aio and streaming, TLS and mutual TLS, compression both ways, big messages, cancellation and deadlines,
many concurrent streams; and by a raw HTTP/2 client that misbehaves (the server must stay up and keep
answering others).  The whole existing gRPC suite runs on this transport too with
``TRITIUM_TEST_GRPC_TRANSPORT=native`` (tests/server.py)."""

from __future__ import annotations

import asyncio
import contextlib
import queue
import shutil
import socket
import struct
import subprocess
import threading
import time
import zlib
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
from hpack import Decoder, Encoder
from tritonclient.grpc import service_pb2 as pb
from tritonclient.utils import InferenceServerException

from hostile import rss_mib
from models import identity_graph, write_model, write_python_model
from server import RunningServer

NATIVE = "--grpc-transport=native"
MAX_INPUT = 32 << 20

#: Decoupled: INPUT0 = n sends n responses (0..n-1), then the final flag alone.
COUNTER = '''
import numpy as np
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def execute(self, requests):
        for r in requests:
            n = int(r.inputs()[0].as_numpy()[0])
            sender = r.get_response_sender()
            for i in range(n):
                sender.send(pb_utils.InferenceResponse([pb_utils.Tensor("OUT", np.array([i], np.int32))]))
            sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        return None
'''

#: INPUT0 = 0: waits up to 20 s for ``is_cancelled()``; 1: answers what the last wait saw.
CANCEL_WATCH = '''
import time
import numpy as np
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def initialize(self, args):
        self.last = 0

    def execute(self, requests):
        out = []
        for r in requests:
            if int(r.inputs()[0].as_numpy()[0]) == 0:
                self.last = 1
                deadline = time.monotonic() + 20
                while time.monotonic() < deadline and not r.is_cancelled():
                    time.sleep(0.01)
                self.last = 2 if r.is_cancelled() else 3
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUT", np.array([self.last], np.int32))]))
        return out
'''

INT_CONFIG = """
    backend: "python"
    max_batch_size: 0
    input [ {{ name: "INPUT0" data_type: TYPE_INT32 dims: [ 1 ] }} ]
    output [ {{ name: "OUT" data_type: TYPE_INT32 dims: [ 1 ] }} ]
    {extra}
"""


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> str:
    repo = str(tmp_path_factory.mktemp("native_repo"))
    write_model(repo, "identity", identity_graph("FP32", (-1,)), config="""
        backend: "onnxruntime"
        input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ -1 ] } ]
        output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ -1 ] } ]
    """)
    write_python_model(repo, "counter", COUNTER,
                       INT_CONFIG.format(extra="model_transaction_policy { decoupled: true }"))
    write_python_model(repo, "cancel_watch", CANCEL_WATCH, INT_CONFIG.format(extra=""))
    return repo


@pytest.fixture(scope="module")
def server(repo: str):  # type: ignore[no-untyped-def]
    args = [NATIVE, f"--grpc-max-input-size={MAX_INPUT}", "--grpc-max-concurrent-streams=16",
            "--grpc-infer-response-compression-level=low"]
    with RunningServer([repo], args) as s:
        yield s


@pytest.fixture(scope="module")
def client(server: RunningServer):  # type: ignore[no-untyped-def]
    c = grpcclient.InferenceServerClient(server.grpc_url)
    yield c
    c.close()


def _fp32(data: np.ndarray) -> list[grpcclient.InferInput]:
    inp = grpcclient.InferInput("INPUT0", list(data.shape), "FP32")
    inp.set_data_from_numpy(data)
    return [inp]


def _int(value: int) -> list[grpcclient.InferInput]:
    inp = grpcclient.InferInput("INPUT0", [1], "INT32")
    inp.set_data_from_numpy(np.array([value], np.int32))
    return [inp]


# -- tritonclient ---------------------------------------------------------------------------------


def test_sync_client(client: grpcclient.InferenceServerClient) -> None:
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("identity")
    assert client.get_server_metadata().name == "triton"
    assert client.get_model_metadata("identity").inputs[0].name == "INPUT0"
    assert client.get_model_config("identity").config.backend == "onnxruntime"
    data = np.arange(100, dtype=np.float32)
    for _ in range(3):  # the same header block again: decoded from the connection's cache
        np.testing.assert_array_equal(client.infer("identity", _fp32(data)).as_numpy("OUTPUT0"), data)
    with pytest.raises(InferenceServerException) as info:
        client.infer("no_such_model", _fp32(data))
    assert "no_such_model" in info.value.message() and info.value.status() == "StatusCode.NOT_FOUND"


def test_unknown_method_and_health_service(server: RunningServer) -> None:
    from tritium._proto import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(server.grpc_url) as channel:
        unknown = channel.unary_unary("/inference.GRPCInferenceService/NoSuchRpc")
        with pytest.raises(grpc.RpcError) as info:
            unknown(b"")
        assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert health.status == health_pb2.HealthCheckResponse.SERVING


def test_requests_that_lie_after_a_known_layout_are_refused(server: RunningServer) -> None:
    """Messages laid out as an earlier request's (which the codec then matches by layout, without protobuf) but
    lying: an id or raw contents longer than the message, a short tensor, an id that is not
    UTF-8, a message cut short.  Each is refused with a status naming the problem; the same request done right still answers."""
    values = np.arange(4, dtype=np.float32)

    def message(request_id: str = "r", raw: bytes = values.tobytes()) -> bytes:
        m = pb.ModelInferRequest(model_name="identity", id=request_id)
        m.inputs.add(name="INPUT0", datatype="FP32", shape=[4])
        m.raw_input_contents.append(raw)
        return m.SerializeToString()

    good = message()
    name_field = b"\x0a\x08identity"
    bad = {
        "id past the end": good.replace(b"\x1a\x01r", b"\x1a\x7fr"),
        "raw past the end": good[:-17] + b"\x3a\x7f" + good[-16:],
        "short tensor": message(raw=values.tobytes()[:12]),
        "cut short": good[:-1],
        "id not UTF-8": good.replace(b"\x1a\x01r", b"\x1a\x02\xff\xfe"),
    }
    assert good.startswith(name_field) and good[-18:-16] == b"\x3a\x10"
    with grpc.insecure_channel(server.grpc_url) as channel:
        infer = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        for _ in range(3):  # the layout is known from now on
            answer = pb.ModelInferResponse.FromString(infer(good, timeout=30))
            assert np.frombuffer(answer.raw_output_contents[0], np.float32).tolist() == values.tolist()
        for what, data in bad.items():
            with pytest.raises(grpc.RpcError) as info:
                infer(data, timeout=30)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, what
            assert info.value.details(), what
        assert "byte size mismatch" in _details(infer, bad["short tensor"])
        # raw contents beyond the inputs' are ignored, as Triton ignores them: the layout differs, the answer not
        answer = pb.ModelInferResponse.FromString(infer(good + b"\x3a\x00", timeout=30))
        assert np.frombuffer(answer.raw_output_contents[0], np.float32).tolist() == values.tolist()
        answer = pb.ModelInferResponse.FromString(infer(message("again"), timeout=30))
        assert answer.id == "again" and np.frombuffer(answer.raw_output_contents[0], np.float32).tolist() == values.tolist()


def _details(call: Any, data: bytes) -> str:
    try:
        call(data, timeout=30)
    except grpc.RpcError as e:
        return str(e.details())
    raise AssertionError("the call succeeded")


def test_aio_client(server: RunningServer) -> None:
    async def run() -> None:
        async with aioclient.InferenceServerClient(server.grpc_url) as c:
            assert await c.is_server_ready()
            data = np.arange(7, dtype=np.float32)
            results = await asyncio.gather(*(c.infer("identity", _fp32(data + i)) for i in range(20)))
            for i, result in enumerate(results):
                np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), data + i)

    asyncio.run(run())


def test_stream_of_a_decoupled_model_with_many_responses(server: RunningServer) -> None:
    results: queue.Queue[Any] = queue.Queue()
    c = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        c.start_stream(callback=lambda result, error: results.put(error or result))
        for i in range(3):
            c.async_stream_infer("counter", _int(100), request_id=str(i))
        seen: dict[str, list[int]] = {}
        for _ in range(300):
            item = results.get(timeout=60)
            assert not isinstance(item, Exception), item
            seen.setdefault(item.get_response().id, []).append(int(item.as_numpy("OUT")[0]))
        c.stop_stream()
    finally:
        c.close()
    assert seen == {str(i): list(range(100)) for i in range(3)}


def test_big_messages_cross_frames_and_windows(client: grpcclient.InferenceServerClient) -> None:
    """20 KiB (beyond 16 KiB frames), 300 KiB (beyond 64 KiB windows), 12 MiB (beyond the server's windows)."""
    for n in (5 * 1024, 75 * 1024, 3 * 1024 * 1024):
        data = np.random.default_rng(n).standard_normal(n).astype(np.float32)
        np.testing.assert_array_equal(client.infer("identity", _fp32(data)).as_numpy("OUTPUT0"), data)


def test_oversize_request_is_resource_exhausted(client: grpcclient.InferenceServerClient) -> None:
    with pytest.raises(InferenceServerException) as info:
        client.infer("identity", _fp32(np.zeros(MAX_INPUT // 4 + 1024, np.float32)))
    assert info.value.status() == "StatusCode.RESOURCE_EXHAUSTED"
    assert client.is_server_live()


def test_request_compression(client: grpcclient.InferenceServerClient) -> None:
    data = np.zeros(4096, dtype=np.float32)
    for algorithm in ("gzip", "deflate"):
        out = client.infer("identity", _fp32(data + 1), compression_algorithm=algorithm).as_numpy("OUTPUT0")
        np.testing.assert_array_equal(out, data + 1)


def test_response_compression_on_the_wire(server: RunningServer) -> None:
    """--grpc-infer-response-compression-level=low: gzip when the client accepts it, identity otherwise."""
    request = pb.ModelInferRequest(model_name="identity")
    request.inputs.add(name="INPUT0", datatype="FP32", shape=[4096])
    request.raw_input_contents.append(bytes(4 * 4096))
    for accept, expected in (("identity,deflate,gzip", "gzip"), ("identity", None)):
        with H2(server.grpc_port) as h2:
            headers, messages, trailers = h2.call("/inference.GRPCInferenceService/ModelInfer",
                                                  request.SerializeToString(), accept=accept)
        assert trailers.get("grpc-status") == "0", trailers
        assert headers.get("grpc-encoding") == expected, headers
        flag, body = messages[0]
        assert flag == (1 if expected else 0)
        if expected:
            assert len(body) < 4096
            body = zlib.decompress(body, 31)
        response = pb.ModelInferResponse.FromString(body)
        assert response.raw_output_contents[0] == bytes(4 * 4096)


def test_cancel_and_deadline_reach_the_model(client: grpcclient.InferenceServerClient) -> None:
    with pytest.raises(InferenceServerException) as info:
        client.infer("cancel_watch", _int(0), client_timeout=1.0)
    assert info.value.status() == "StatusCode.DEADLINE_EXCEEDED"
    assert client.infer("cancel_watch", _int(1)).as_numpy("OUT").tolist() == [2]  # the model saw it cancelled

    errors: queue.Queue[Any] = queue.Queue()
    call = client.async_infer("cancel_watch", _int(0), callback=lambda result, error: errors.put(error))
    time.sleep(1.0)
    call.cancel()
    assert errors.get(timeout=30).status() == "StatusCode.CANCELLED"
    deadline = time.monotonic() + 20
    while client.infer("cancel_watch", _int(1)).as_numpy("OUT").tolist() != [2] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert client.infer("cancel_watch", _int(1)).as_numpy("OUT").tolist() == [2]


def test_server_deadline_without_client_cancel(server: RunningServer) -> None:
    """The server itself ends a call at its grpc-timeout (a raw client that would wait forever)."""
    request = pb.ModelInferRequest(model_name="cancel_watch")
    request.inputs.add(name="INPUT0", datatype="INT32", shape=[1])
    request.raw_input_contents.append(struct.pack("<i", 0))
    started = time.monotonic()
    with H2(server.grpc_port) as h2:
        _, _, trailers = h2.call("/inference.GRPCInferenceService/ModelInfer", request.SerializeToString(),
                                 extra=[("grpc-timeout", "500m")])
    assert trailers.get("grpc-status") == str(grpc.StatusCode.DEADLINE_EXCEEDED.value[0]), trailers
    assert time.monotonic() - started < 15


def test_many_concurrent_streams(server: RunningServer) -> None:
    """200 calls at once on one connection that allows 16 streams, and 8 connections beside it."""
    async def run() -> None:
        clients = [aioclient.InferenceServerClient(server.grpc_url,
                                                   channel_args=[("grpc.use_local_subchannel_pool", 1)])
                   for _ in range(8)]
        try:
            data = np.arange(16, dtype=np.float32)
            results = await asyncio.gather(*(clients[i % 8].infer("identity", _fp32(data * i)) for i in range(200)))
            for i, result in enumerate(results):
                np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), data * i)
        finally:
            for c in clients:
                await c.close()

    asyncio.run(run())


# -- TLS ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Any:
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command")
    d = tmp_path_factory.mktemp("native_certs")

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=str(d), check=True, capture_output=True)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
            "-subj", "/CN=tritium test CA")
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name in ("server", "client"):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
                "-subj", f"/CN={name}")
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                "-out", f"{name}.crt", "-days", "2", "-extfile", "san.ext")
    return d


def test_tls_and_mutual_tls(repo: str, certs: Any) -> None:
    tls = [f"--grpc-server-cert={certs / 'server.crt'}", f"--grpc-server-key={certs / 'server.key'}"]
    data = np.arange(64, dtype=np.float32)
    with RunningServer([repo], [NATIVE, *tls, "--grpc-use-ssl=true"]) as s:
        c = grpcclient.InferenceServerClient(s.grpc_url, ssl=True, root_certificates=str(certs / "ca.crt"))
        np.testing.assert_array_equal(c.infer("identity", _fp32(data)).as_numpy("OUTPUT0"), data)
        c.close()
        plain = grpcclient.InferenceServerClient(s.grpc_url)
        with pytest.raises(InferenceServerException):
            plain.is_server_live()
        plain.close()
    with RunningServer([repo], [NATIVE, *tls, "--grpc-use-ssl-mutual=true",
                                f"--grpc-root-cert={certs / 'ca.crt'}"]) as s:
        c = grpcclient.InferenceServerClient(s.grpc_url, ssl=True, root_certificates=str(certs / "ca.crt"),
                                             private_key=str(certs / "client.key"),
                                             certificate_chain=str(certs / "client.crt"))
        np.testing.assert_array_equal(c.infer("identity", _fp32(data)).as_numpy("OUTPUT0"), data)
        c.close()
        anonymous = grpcclient.InferenceServerClient(s.grpc_url, ssl=True, root_certificates=str(certs / "ca.crt"))
        with pytest.raises(InferenceServerException):
            anonymous.is_server_live()
        anonymous.close()


# -- a raw HTTP/2 client, well-behaved or not -----------------------------------------------------

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


class H2:
    """Enough of an HTTP/2 client to make gRPC calls by hand and to send what no library would."""

    def __init__(self, port: int, window: int = 1 << 30) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.encoder, self.decoder = Encoder(), Decoder()
        self.buf = b""
        self.sock.sendall(PREFACE + frame(0x4, 0, 0, struct.pack(">HI", 0x4, min(window, 2**31 - 1)))
                          + (frame(0x8, 0, 0, struct.pack(">I", window - 65535)) if window > 65535 else b""))

    def __enter__(self) -> H2:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def request(self, stream: int, path: str, message: bytes, accept: str = "identity",
                extra: list[tuple[str, str]] | None = None) -> None:
        block = self.encoder.encode([(":method", "POST"), (":scheme", "http"), (":path", path),
                                     (":authority", "localhost"), ("content-type", "application/grpc"),
                                     ("te", "trailers"), ("grpc-accept-encoding", accept), *(extra or [])])
        body = struct.pack(">BI", 0, len(message)) + message
        chunks = [body[i:i + 16384] for i in range(0, len(body), 16384)]  # the default SETTINGS_MAX_FRAME_SIZE
        self.sock.sendall(frame(0x1, 0x4, stream, block) + b"".join(
            frame(0x0, 0x1 if i == len(chunks) - 1 else 0, stream, chunk) for i, chunk in enumerate(chunks)))

    def read_frame(self) -> tuple[int, int, int, bytes]:
        while len(self.buf) < 9 or len(self.buf) < 9 + int.from_bytes(self.buf[:3], "big"):
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                raise EOFError("the server closed the connection")
            self.buf += chunk
        length = int.from_bytes(self.buf[:3], "big")
        kind, flags, stream = self.buf[3], self.buf[4], int.from_bytes(self.buf[5:9], "big") & 0x7FFFFFFF
        payload, self.buf = self.buf[9:9 + length], self.buf[9 + length:]
        return kind, flags, stream, payload

    def call(self, path: str, message: bytes, accept: str = "identity", stream: int = 1,
             extra: list[tuple[str, str]] | None = None) -> tuple[dict[str, str], list[tuple[int, bytes]], dict[str, str]]:
        """One unary call: response headers, messages (flag, bytes), trailers."""
        self.request(stream, path, message, accept, extra)
        blocks: list[dict[str, str]] = []
        data = b""
        while True:
            kind, flags, sid, payload = self.read_frame()
            if kind == 0x1 and sid == stream:
                blocks.append(dict(self.decoder.decode(payload)))
            elif kind == 0x0 and sid == stream:
                data += payload
            elif kind == 0x6 and not flags & 1:
                self.sock.sendall(frame(0x6, 1, 0, payload))
            elif kind == 0x3 and sid == stream:
                raise AssertionError(f"stream reset: {payload.hex()}")
            if sid == stream and flags & 0x1 and kind in (0x0, 0x1):
                break
        messages = []
        while data:
            flag, size = struct.unpack(">BI", data[:5])
            messages.append((flag, data[5:5 + size]))
            data = data[5 + size:]
        return blocks[0], messages, blocks[-1]

    def until_goaway(self) -> int | None:
        """The error code of the server's GOAWAY, or None if it closed without one."""
        try:
            while True:
                kind, _, _, payload = self.read_frame()
                if kind == 0x7:
                    return int.from_bytes(payload[4:8], "big")
        except (EOFError, ConnectionResetError):
            return None


def _live(server: RunningServer) -> None:
    c = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        data = np.arange(4, dtype=np.float32)
        np.testing.assert_array_equal(c.infer("identity", _fp32(data)).as_numpy("OUTPUT0"), data)
    finally:
        c.close()


def test_bad_preface_is_closed(server: RunningServer) -> None:
    with socket.create_connection(("127.0.0.1", server.grpc_port), timeout=10) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    kinds = []
    while len(data) >= 9:
        length = int.from_bytes(data[:3], "big")
        kinds.append((data[3], data[9:9 + length]))
        data = data[9 + length:]
    assert kinds[0][0] == 0x4 and kinds[-1][0] == 0x7, kinds  # its SETTINGS, then GOAWAY
    assert int.from_bytes(kinds[-1][1][4:8], "big") == 0x1  # PROTOCOL_ERROR
    _live(server)


@pytest.mark.parametrize("garbage", [
    frame(0x0, 0x1, 0, b"data on stream 0"),
    frame(0x1, 0x4, 2, b"\x82"),  # HEADERS on an even (server) stream
    frame(0x4, 0, 0, b"\x00\x04\x80\x00\x00\x00"),  # SETTINGS_INITIAL_WINDOW_SIZE above 2^31-1
    frame(0x6, 0, 0, b"short"),  # PING of 5 bytes
    frame(0x8, 0, 0, b"\x00\x00\x00\x00"),  # WINDOW_UPDATE of 0
    frame(0x1, 0x4 | 0x1, 1, b"\xff\xff\xff\xff\xff"),  # an HPACK block that does not decode
    b"\xff" * 64,  # a frame longer than SETTINGS_MAX_FRAME_SIZE
])
def test_garbage_frames_get_goaway(server: RunningServer, garbage: bytes) -> None:
    with H2(server.grpc_port) as h2:
        h2.sock.sendall(garbage)
        assert h2.until_goaway() is not None
    _live(server)


def test_huge_header_block_is_refused(server: RunningServer) -> None:
    with H2(server.grpc_port) as h2:
        h2.sock.sendall(frame(0x1, 0, 1, b"\x00" * 16000))
        try:
            for _ in range(100):  # 1.6 MB of CONTINUATION: refused long before
                h2.sock.sendall(frame(0x9, 0, 1, b"\x00" * 16000))
        except OSError:
            pass
        assert h2.until_goaway() == 0xB  # ENHANCE_YOUR_CALM
    _live(server)


def test_streams_beyond_the_limit_are_refused(server: RunningServer) -> None:
    """--grpc-max-concurrent-streams=16: the 17th open stream is reset with REFUSED_STREAM."""
    request = pb.ModelInferRequest(model_name="cancel_watch")
    request.inputs.add(name="INPUT0", datatype="INT32", shape=[1])
    request.raw_input_contents.append(struct.pack("<i", 1))
    with H2(server.grpc_port) as h2:
        block = h2.encoder.encode([(":method", "POST"), (":scheme", "http"),
                                   (":path", "/inference.GRPCInferenceService/ModelInfer"),
                                   (":authority", "x"), ("content-type", "application/grpc")])
        # headers without END_STREAM: the calls stay open, waiting for their message
        h2.sock.sendall(b"".join(frame(0x1, 0x4, 1 + 2 * i, block) for i in range(17)))
        while True:
            kind, _, sid, payload = h2.read_frame()
            if kind == 0x3:
                assert sid == 33 and int.from_bytes(payload, "big") == 0x7
                break
    _live(server)


def test_client_that_never_reads_is_bounded(server: RunningServer) -> None:
    """A client that sends calls with 1 MiB answers and reads nothing: the server stops taking its requests
    (its memory stays bounded) and keeps serving other clients."""
    request = pb.ModelInferRequest(model_name="identity")
    request.inputs.add(name="INPUT0", datatype="FP32", shape=[1 << 18])
    request.raw_input_contents.append(bytes(1 << 20))
    message = request.SerializeToString()
    pid = server.proc.pid
    before = rss_mib(pid)
    h2 = H2(server.grpc_port)
    h2.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stop = threading.Event()
    sent = [0]

    def flood() -> None:
        sid = 1
        try:
            while not stop.is_set() and sid < 2000:
                h2.request(sid, "/inference.GRPCInferenceService/ModelInfer", message)
                sid += 2
                sent[0] += 1
        except OSError:
            pass

    thread = threading.Thread(target=flood, daemon=True)
    thread.start()
    try:
        peak = 0.0
        for _ in range(40):
            time.sleep(0.1)
            peak = max(peak, rss_mib(pid))
        _live(server)
        assert sent[0] < 1000, f"{sent[0]} calls of 1 MiB taken from a client that reads nothing"
        assert peak - before < 300, f"resident memory grew by {peak - before:.0f} MiB"
    finally:
        stop.set()
        with contextlib.suppress(OSError):
            h2.sock.shutdown(socket.SHUT_RDWR)
        thread.join(30)
        h2.sock.close()
    _live(server)


# -- keepalive, connection lifetime, shutdown -----------------------------------------------------


def test_keepalive_pings_and_ping_abuse(repo: str) -> None:
    """The server pings every --grpc-keepalive-time and closes a connection whose client does not answer
    within --grpc-keepalive-timeout; a client pinging without calls too often gets GOAWAY ENHANCE_YOUR_CALM."""
    args = [NATIVE, "--grpc-keepalive-time=300", "--grpc-keepalive-timeout=500", "--grpc-max-connection-idle=0"]
    with RunningServer([repo], args) as server:
        with H2(server.grpc_port) as answering, H2(server.grpc_port) as silent:
            pings, started = 0, time.monotonic()
            while pings < 3 and time.monotonic() - started < 20:
                kind, flags, _, payload = answering.read_frame()
                if kind == 0x6 and not flags & 1:
                    pings += 1
                    answering.sock.sendall(frame(0x6, 1, 0, payload))
            assert pings == 3
            silent.sock.settimeout(15)  # a timeout here (socket.timeout) fails the test: it must be cut
            assert silent.until_goaway() is None  # cut at the keepalive timeout, without GOAWAY
            _, messages, trailers = answering.call("/inference.GRPCInferenceService/ServerLive", b"")
            assert trailers["grpc-status"] == "0" and messages[0][1] == b"\x08\x01"  # live: true
        with H2(server.grpc_port) as abuser:
            abuser.sock.sendall(b"".join(frame(0x6, 0, 0, bytes(8)) for _ in range(5)))
            code = None
            while code is None:
                kind, _, _, payload = abuser.read_frame()
                if kind == 0x7:
                    code = int.from_bytes(payload[4:8], "big")
                    assert payload[8:] == b"too_many_pings"
            assert code == 0xB
        _live(server)


def test_idle_and_aged_connections_are_closed(repo: str) -> None:
    args = [NATIVE, "--grpc-max-connection-idle=500", "--grpc-max-connection-age=1500",
            "--grpc-max-connection-age-grace=500"]
    with RunningServer([repo], args) as server:
        started = time.monotonic()
        with H2(server.grpc_port) as idle:
            assert idle.until_goaway() == 0  # NO_ERROR
        assert time.monotonic() - started < 10
        request = pb.ModelInferRequest(model_name="cancel_watch")
        request.inputs.add(name="INPUT0", datatype="INT32", shape=[1])
        request.raw_input_contents.append(struct.pack("<i", 0))  # would wait 20 s
        started = time.monotonic()
        with H2(server.grpc_port) as busy:
            busy.request(1, "/inference.GRPCInferenceService/ModelInfer", request.SerializeToString())
            assert busy.until_goaway() == 0  # at its age: no new calls; the one in flight gets the grace
            with pytest.raises((EOFError, ConnectionResetError)):
                while True:
                    busy.read_frame()
        assert time.monotonic() - started < 15  # cut after age + grace, not after the model's 20 s
        _live(server)


def test_shutdown_finishes_calls_in_flight(tmp_path: Any) -> None:
    from models import echo_config, sleep_then_echo

    repo = str(tmp_path)
    write_python_model(repo, "sleepy", sleep_then_echo(), echo_config(0))
    server = RunningServer([repo], [NATIVE])
    try:
        c = grpcclient.InferenceServerClient(server.grpc_url)
        results: queue.Queue[Any] = queue.Queue()
        c.async_infer("sleepy", _fp32(np.array([2.0], np.float32)),
                      callback=lambda result, error: results.put(error or result))
        time.sleep(0.5)
        server.proc.terminate()  # SIGTERM: GOAWAY, the call in flight still answered
        result = results.get(timeout=30)
        assert not isinstance(result, Exception), result
        assert result.as_numpy("OUTPUT0").tolist() == [2.0]
        assert server.proc.wait(30) == 0
        c.close()
    finally:
        server.stop()


def test_reuse_grpc_port(repo: str) -> None:
    """--reuse-grpc-port=true: a second server listens on the same gRPC port (SO_REUSEPORT); both answer."""
    with RunningServer([repo], [NATIVE, "--reuse-grpc-port=true"]) as first:
        with RunningServer([repo], [NATIVE, "--reuse-grpc-port=true", f"--grpc-port={first.grpc_port}"]) as second:
            assert second.proc.poll() is None  # it bound the same port (without the flag it exits: below)
            for _ in range(4):
                _live(first)  # each new connection goes to one of the two listeners
    with RunningServer([repo], [NATIVE]) as alone:
        taken = RunningServer([repo], [NATIVE, f"--grpc-port={alone.grpc_port}"], wait_ready=False)
        assert taken.wait_exit(60) != 0  # without the flag the port is taken: the second cannot start
        taken.stop()
