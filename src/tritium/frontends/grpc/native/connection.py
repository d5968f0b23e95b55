"""One gRPC-over-HTTP/2 connection as an ``asyncio.Protocol``: frames in, calls dispatched to the handlers
``GrpcApi.handlers()`` returns, responses out under HTTP/2 flow control.

Why our own: grpcio costs 135-190 µs of server CPU per call before any model runs, and pure-Python ``h2``
about 600 µs (``benchmarks/grpc_transports``); a gRPC server needs only a small part of HTTP/2 (no push,
no priorities, responses that never use the HPACK dynamic table), which fits in this module.

What the hot path does per unary call: one cached HPACK decode (the same header block bytes decode to the
same headers while the decoder's dynamic table is unchanged), one task, and one write holding the
response's HEADERS, DATA and trailers (precomputed header blocks).  Bounds: frames (our
SETTINGS_MAX_FRAME_SIZE), header blocks (:data:`MAX_HEADER_BLOCK`), streams (SETTINGS_MAX_CONCURRENT_STREAMS,
REFUSED_STREAM beyond), request data (flow control windows; a message beyond ``--grpc-max-input-size`` is
RESOURCE_EXHAUSTED), and responses a client does not read (reading stops while the transport's write
buffer is over its high-water mark, so a client that never reads cannot make the server queue more).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
import socket
import struct
import time
import zlib
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol
from urllib.parse import quote

import grpc
from grpc.aio import AbortError
from hpack import Decoder
from hpack.exceptions import HPACKError
from hpack.hpack import encode_integer

from tritium.frontends.busy_poll import BUSY_POLL

from . import frames as F
from .config import NativeConfig
from .context import Metadata, NativeContext

log = logging.getLogger(__name__)
#: hpack logs every header field it encodes or decodes at debug level: kept out of --log-verbose output.
logging.getLogger("hpack").setLevel(logging.WARNING)

#: Largest frame payload we accept (SETTINGS_MAX_FRAME_SIZE we announce): big request messages arrive in
#: fewer frames; a frame is buffered whole, so this bounds the receive buffer too.
MAX_FRAME = 1 << 20
#: Request data a stream (SETTINGS_INITIAL_WINDOW_SIZE) and the connection may have in flight to us.
STREAM_WINDOW = 4 << 20
CONNECTION_WINDOW = 16 << 20
#: A request's header block (HEADERS + CONTINUATION) at most, compressed and decoded.
MAX_HEADER_BLOCK = 64 << 10
#: Responses written but not yet taken by the client's socket: beyond, the connection's requests are not read.
WRITE_HIGH = 4 << 20
#: Header blocks remembered per connection (decoded and parsed) while the HPACK table is unchanged.
HEAD_CACHE = 64

_PREFIX = struct.Struct(">BL")
_NEVER = float("-inf")
_DATA_HEADER = F.HEADER


def _literal(name: bytes, value: bytes) -> bytes:
    """HPACK literal header field without indexing, new name (§6.2.2): the encoder's table stays empty."""
    return b"\x00" + bytes(encode_integer(len(name), 7)) + name + bytes(encode_integer(len(value), 7)) + value


#: ``:status: 200`` (static index 8) and ``content-type: application/grpc`` (name: static index 31).
_OK_HEAD = b"\x88" + b"\x0f\x10" + bytes(encode_integer(16, 7)) + b"application/grpc"
RESPONSE_HEADERS = {None: _OK_HEAD, "gzip": _OK_HEAD + _literal(b"grpc-encoding", b"gzip"),
                    "deflate": _OK_HEAD + _literal(b"grpc-encoding", b"deflate")}
TRAILERS_OK = _literal(b"grpc-status", b"0")


def percent_encode(message: str) -> bytes:
    """grpc-message's encoding (gRPC over HTTP/2): UTF-8, then bytes outside printable ASCII and '%' as %XX."""
    return quote(message, safe=" !\"#$&'()*+,-./:;<=>?@[\\]^_`{|}~", encoding="utf-8").encode("ascii")


def status_block(code: int, details: str, trailing: Any = ()) -> bytes:
    """The header block of a call's trailers: its status, its message, trailing metadata."""
    block = _literal(b"grpc-status", str(code).encode())
    if details:
        block += _literal(b"grpc-message", percent_encode(details))
    for key, value in trailing:
        key = key.lower()
        if isinstance(value, bytes):
            value = base64.b64encode(value).rstrip(b"=")
        block += _literal(key.encode("ascii"), value if isinstance(value, bytes) else str(value).encode("latin-1"))
    return block


_TIMEOUT_UNITS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}
_NOT_METADATA = frozenset({"te", "content-type", "grpc-timeout", "grpc-encoding", "grpc-accept-encoding"})


class Listener(Protocol):
    """What a connection needs of its server (``server.NativeServer``)."""

    loop: asyncio.AbstractEventLoop
    config: NativeConfig
    rpcs: int

    def method(self, path: str) -> grpc.RpcMethodHandler | None: ...

    def admit(self, conn: GrpcConnection) -> bool: ...

    def forget(self, conn: GrpcConnection) -> None: ...


class Head:
    """A request's headers as the server uses them (cached by header block)."""

    __slots__ = ("path", "valid", "timeout", "encoding", "accept", "metadata")

    def __init__(self, headers: list[tuple[str, str]]) -> None:
        self.path = ""
        self.timeout: float | None = None
        self.encoding = "identity"
        self.accept = ""
        method = content_type = ""
        metadata: list[tuple[str, str | bytes]] = []
        for name, value in headers:
            if name[0] == ":":
                if name == ":path":
                    self.path = value
                elif name == ":method":
                    method = value
            elif name in _NOT_METADATA:
                if name == "content-type":
                    content_type = value
                elif name == "grpc-timeout":
                    unit = _TIMEOUT_UNITS.get(value[-1:])
                    if unit is not None and value[:-1].isdigit() and len(value) <= 9:
                        self.timeout = int(value[:-1]) * unit
                elif name == "grpc-encoding":
                    self.encoding = value
                elif name == "grpc-accept-encoding":
                    self.accept = value
            elif name.endswith("-bin"):
                try:
                    metadata.append((name, base64.b64decode(value + "=" * (-len(value) % 4))))
                except ValueError:
                    continue  # as grpc: a binary header that is not base64 is dropped
            else:
                metadata.append((name, value))
        self.valid = method == "POST" and content_type.startswith("application/grpc") and bool(self.path)
        self.metadata: Metadata = tuple(metadata)


class Stream:
    """One call: its handler's task, the request data received, the response data waiting for window."""

    __slots__ = ("id", "conn", "method", "context", "buf", "messages", "remote_closed", "task", "send_window",
                 "recv_window", "recv_unacked", "pending", "trailer", "headers_sent", "cancelled", "finished",
                 "deadline", "timer", "encoding", "compress", "waiter", "drained", "streaming")

    def __init__(self, sid: int, conn: GrpcConnection, method: grpc.RpcMethodHandler, head: Head) -> None:
        self.id = sid
        self.conn = conn
        self.method = method
        self.context = NativeContext(self, head.metadata)
        self.buf = bytearray()
        self.messages: deque[bytes] = deque()
        self.remote_closed = False
        self.task: asyncio.Task[None] | None = None
        self.send_window = conn.peer_window
        self.recv_window = STREAM_WINDOW
        self.recv_unacked = 0
        self.pending: deque[memoryview] = deque()
        self.trailer: bytes | None = None
        self.headers_sent = False
        self.cancelled = False
        self.finished = False
        self.deadline: float | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.encoding = head.encoding
        self.compress: str | None = None
        #: the handler waiting for a request message (``waiter``), for window to send (``drained``)
        self.waiter: asyncio.Future[None] | None = None
        self.drained: asyncio.Future[None] | None = None
        self.streaming = bool(method.request_streaming)


class CallError(Exception):
    """A call refused before or while reading its request (a status, not a connection error)."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code, self.details = code, details


class ConnectionError_(Exception):
    """An HTTP/2 connection error (§5.4.1): GOAWAY with ``code``, then close."""

    def __init__(self, code: int, debug: str) -> None:
        super().__init__(debug)
        self.code = code


def _wake(stream: Stream) -> None:
    """Wake the stream's request reader."""
    waiter = stream.waiter
    if waiter is not None:
        stream.waiter = None
        if not waiter.done():
            waiter.set_result(None)


def _drained(stream: Stream) -> None:
    """Wake the stream's response writer."""
    waiter = stream.drained
    if waiter is not None:
        stream.drained = None
        if not waiter.done():
            waiter.set_result(None)


class _Requests:
    """A streaming call's request messages, as the handler's async iterator."""

    __slots__ = ("stream", "deserializer")

    def __init__(self, stream: Stream, deserializer: Callable[[Any], Any] | None) -> None:
        self.stream, self.deserializer = stream, deserializer

    def __aiter__(self) -> _Requests:
        return self

    async def __anext__(self) -> Any:
        stream = self.stream
        while True:
            if stream.messages:
                message = stream.messages.popleft()
                if not stream.messages and (stream.buf or stream.recv_unacked >= STREAM_WINDOW // 4):
                    stream.conn.consumed(stream)
                return self.deserializer(message) if self.deserializer is not None else message
            if stream.remote_closed or stream.finished:
                raise StopAsyncIteration
            stream.waiter = stream.conn.loop.create_future()
            await stream.waiter


class GrpcConnection(asyncio.Protocol):
    """One client connection (see the module's docstring)."""

    def __init__(self, server: Listener) -> None:
        self.server = server
        self.loop = server.loop
        self.transport: asyncio.Transport | None = None
        self.peer = ""
        self.auth: dict[str, list[bytes]] = {}
        self.streams: dict[int, Stream] = {}
        self.last_id = 0
        self.peer_window = F.DEFAULT_WINDOW  # the peer's SETTINGS_INITIAL_WINDOW_SIZE
        self.peer_max_frame = F.DEFAULT_MAX_FRAME
        self.send_window = F.DEFAULT_WINDOW
        self.recv_window = CONNECTION_WINDOW
        self.recv_unacked = 0
        self.decoder = Decoder(max_header_list_size=MAX_HEADER_BLOCK)
        self.decoder.max_allowed_table_size = 4096
        self.heads: dict[bytes, Head] = {}
        self._buf = bytearray()
        self._preface = False
        self._continuation: tuple[int, int, bytearray] | None = None
        self._out: list[bytes | memoryview] = []
        self._flush_scheduled = False
        self._receiving = False
        self._blocked: dict[Stream, None] = {}
        self._write_paused = False
        self._drain_waiters: list[asyncio.Future[None]] = []
        self.closing = False  # GOAWAY sent: no new streams; closed when the last one ends
        self.dead = False
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._idle_since = time.monotonic()
        self._ping_payload: bytes | None = None
        self._ping_timeout: asyncio.TimerHandle | None = None
        self._last_ping_recv = _NEVER
        self._ping_strikes = 0

    # -- asyncio.Protocol ---------------------------------------------------------------------------

    def connection_made(self, base: asyncio.BaseTransport) -> None:
        transport: asyncio.Transport = base  # type: ignore[assignment]  # a stream transport (TCP or TLS)
        self.transport = transport
        server = self.server
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and len(peer) >= 2:
            self.peer = f"ipv6:[{peer[0]}]:{peer[1]}" if ":" in str(peer[0]) else f"ipv4:{peer[0]}:{peer[1]}"
        if not server.admit(self):
            transport.abort()  # beyond --grpc-max-connections: closed at once
            self.dead = True
            return
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is not None:
            self.auth = {"transport_security_type": [b"ssl"]}
        transport.set_write_buffer_limits(high=WRITE_HIGH)
        with contextlib.suppress(OSError, AttributeError):
            sock = transport.get_extra_info("socket")
            if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        config = server.config
        self._out.append(F.settings({F.SETTINGS_MAX_CONCURRENT_STREAMS: config.max_streams,
                                     F.SETTINGS_INITIAL_WINDOW_SIZE: STREAM_WINDOW,
                                     F.SETTINGS_MAX_FRAME_SIZE: MAX_FRAME,
                                     F.SETTINGS_MAX_HEADER_LIST_SIZE: MAX_HEADER_BLOCK}))
        self._out.append(F.window_update(0, CONNECTION_WINDOW - F.DEFAULT_WINDOW))
        self._flush()
        if config.keepalive_time is not None:
            self._later("keepalive", config.keepalive_time, self._keepalive)
        if config.idle is not None:
            self._later("idle", config.idle, self._idle_check)
        if config.age is not None:  # with jitter, as grpc, so connections made together do not all end together
            self._later("age", config.age * (0.9 + 0.2 * int.from_bytes(os.urandom(1), "big") / 255), self._too_old)

    def _later(self, name: str, delay: float, callback: Callable[[], None]) -> None:
        old = self._timers.get(name)
        if old is not None:
            old.cancel()
        self._timers[name] = self.loop.call_later(delay, callback)

    def connection_lost(self, exc: Exception | None) -> None:
        self.dead = True
        for timer in self._timers.values():
            timer.cancel()
        if self._ping_timeout is not None:
            self._ping_timeout.cancel()
        for stream in list(self.streams.values()):
            self._cancel(stream)
        for waiter in self._drain_waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._drain_waiters.clear()
        self.server.forget(self)

    def pause_writing(self) -> None:
        """The client is not reading: stop taking its requests until it does."""
        self._write_paused = True
        if self.transport is not None and not self.dead:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        if self.transport is not None and not self.dead:
            self.transport.resume_reading()
        waiters, self._drain_waiters = self._drain_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def data_received(self, data: bytes) -> None:
        BUSY_POLL.arrived()
        if self.dead:
            return
        self._receiving = True
        try:
            self._receive(data)
        except ConnectionError_ as e:
            self._fail(e.code, str(e))
        finally:
            self._receiving = False
            if self._out:
                self._flush()

    def eof_received(self) -> bool | None:
        return None

    # -- receiving ----------------------------------------------------------------------------------

    def _receive(self, data: bytes) -> None:
        buf = self._buf
        view: bytes | bytearray
        if buf:
            buf += data
            view = buf
        else:
            view = data
        pos = 0
        if not self._preface:
            if len(view) < 24:
                if not F.PREFACE.startswith(bytes(view)):
                    raise ConnectionError_(F.PROTOCOL_ERROR, "not an HTTP/2 client preface")
                if view is data:
                    self._buf = bytearray(data)
                return
            if view[:24] != F.PREFACE:
                raise ConnectionError_(F.PROTOCOL_ERROR, "not an HTTP/2 client preface")
            self._preface = True
            pos = 24
        size = len(view)
        unpack = F.HEADER.unpack_from
        while size - pos >= 9:
            hi, lo, kind, flags, sid = unpack(view, pos)
            length = (hi << 8) | lo
            if length > MAX_FRAME:
                raise ConnectionError_(F.FRAME_SIZE_ERROR, f"frame of {length} bytes")
            end = pos + 9 + length
            if end > size:
                break
            payload = view[pos + 9:end]
            pos = end
            self._frame(kind, flags, sid & 0x7FFFFFFF, payload)
            if self.dead:
                return
        if view is buf:
            del buf[:pos]
        elif pos < size:
            self._buf = bytearray(view[pos:])

    def _frame(self, kind: int, flags: int, sid: int, payload: bytes | bytearray) -> None:
        if self._continuation is not None and kind != F.CONTINUATION:
            raise ConnectionError_(F.PROTOCOL_ERROR, "expected CONTINUATION")
        if kind == F.DATA:
            self._data(flags, sid, payload)
        elif kind == F.HEADERS:
            self._headers(flags, sid, payload)
        elif kind == F.WINDOW_UPDATE:
            self._window_update(sid, payload)
        elif kind == F.SETTINGS:
            self._settings(flags, sid, payload)
        elif kind == F.PING:
            self._ping(flags, sid, payload)
        elif kind == F.RST_STREAM:
            self._rst_stream(sid, payload)
        elif kind == F.CONTINUATION:
            self._continue(flags, sid, payload)
        else:
            self._rare_frame(kind, sid, payload)

    def _rst_stream(self, sid: int, payload: bytes | bytearray) -> None:
        if sid == 0:
            raise ConnectionError_(F.PROTOCOL_ERROR, "RST_STREAM on stream 0")
        if len(payload) != 4:
            raise ConnectionError_(F.FRAME_SIZE_ERROR, "RST_STREAM size")
        stream = self.streams.get(sid)
        if stream is not None:
            self._cancel(stream)

    def _rare_frame(self, kind: int, sid: int, payload: bytes | bytearray) -> None:
        if kind == F.GOAWAY:
            if sid != 0:
                raise ConnectionError_(F.PROTOCOL_ERROR, "GOAWAY on a stream")
            self.closing = True  # the client leaves: finish what is in progress, take nothing new
            if not self.streams:
                self._close()
        elif kind == F.PRIORITY:
            if sid == 0 or len(payload) != 5:
                raise ConnectionError_(F.PROTOCOL_ERROR, "bad PRIORITY frame")
        elif kind == F.PUSH_PROMISE:
            raise ConnectionError_(F.PROTOCOL_ERROR, "PUSH_PROMISE from a client")
        # other frame types are ignored (§5.5)

    def _data(self, flags: int, sid: int, payload: bytes | bytearray) -> None:
        if sid == 0:
            raise ConnectionError_(F.PROTOCOL_ERROR, "DATA on stream 0")
        length = len(payload)
        self.recv_window -= length
        if self.recv_window < 0:
            raise ConnectionError_(F.FLOW_CONTROL_ERROR, "connection window exceeded")
        self.recv_unacked += length
        if self.recv_unacked >= CONNECTION_WINDOW // 2:
            self._out.append(F.window_update(0, self.recv_unacked))
            self.recv_window += self.recv_unacked
            self.recv_unacked = 0
        stream = self.streams.get(sid)
        if stream is None or stream.remote_closed:
            if sid > self.last_id:
                raise ConnectionError_(F.PROTOCOL_ERROR, "DATA on an idle stream")
            return  # a stream we have ended: its data is dropped (its window is given back above)
        if flags & F.PADDED:
            if not payload or payload[0] >= length:
                raise ConnectionError_(F.PROTOCOL_ERROR, "bad padding")
            payload = payload[1:length - payload[0]]
        stream.recv_window -= length
        if stream.recv_window < 0:
            raise ConnectionError_(F.FLOW_CONTROL_ERROR, "stream window exceeded")
        stream.recv_unacked += length
        end = bool(flags & F.END_STREAM)
        try:
            if stream.streaming:
                self._stream_data(stream, payload, end)
            else:
                self._unary_data(stream, payload, end)
        except CallError as e:
            self._finish(stream, e.code, e.details)
            if stream.task is not None:
                stream.task.cancel()

    def _stream_data(self, stream: Stream, payload: bytes | bytearray, end: bool) -> None:
        if payload:
            stream.buf += payload
            self._split_messages(stream)
        if end:
            stream.remote_closed = True
            if stream.buf:
                raise CallError(grpc.StatusCode.INTERNAL, "the request stream ended inside a message")
            _wake(stream)
        elif not stream.messages and (stream.buf or stream.recv_unacked >= STREAM_WINDOW // 4):
            # the handler has taken every message: give back their window (and any a message still arriving
            # needs); while messages wait for it, none is given back, so a client cannot queue more
            self.consumed(stream)

    def _unary_data(self, stream: Stream, payload: bytes | bytearray, end: bool) -> None:
        buf = stream.buf
        if end and not buf and len(payload) >= 5:  # the usual unary request: one frame, one message
            message = self._one_message(stream, memoryview(payload))
            stream.remote_closed = True
            self._dispatch_unary(stream, message)
            return
        if payload:
            buf += payload
            if len(buf) >= 5:
                self._check_size(stream, _PREFIX.unpack_from(buf)[1])
        if end:
            stream.remote_closed = True
            self._dispatch_unary(stream, self._one_message(stream, memoryview(buf)))
        elif stream.recv_unacked >= STREAM_WINDOW // 2:
            self.consumed(stream)

    def _check_size(self, stream: Stream, size: int) -> None:
        limit = self.server.config.max_input
        if size > limit:
            raise CallError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                            f"Received message larger than max ({size} vs. {limit})")

    def _one_message(self, stream: Stream, data: memoryview) -> memoryview | bytes:
        """A unary request's one message (its 5-byte prefix checked and removed, decompressed)."""
        if len(data) < 5:
            raise CallError(grpc.StatusCode.INTERNAL, "a unary call ended without its request message")
        flag, size = _PREFIX.unpack_from(data)
        self._check_size(stream, size)
        if len(data) != 5 + size:
            raise CallError(grpc.StatusCode.INTERNAL,
                            "a unary call must send exactly one request message" if len(data) > 5 + size
                            else "the request ended inside its message")
        message = data[5:]
        return self._decompress(stream, message) if flag else message

    def _split_messages(self, stream: Stream) -> None:
        """A streaming call's complete messages, from its buffer to its queue."""
        buf = stream.buf
        while len(buf) >= 5:
            flag, size = _PREFIX.unpack_from(buf)
            self._check_size(stream, size)
            if len(buf) < 5 + size:
                break
            message = bytes(buf[5:5 + size])
            del buf[:5 + size]
            stream.messages.append(self._decompress(stream, memoryview(message)) if flag else message)
        if stream.messages:
            _wake(stream)

    def _decompress(self, stream: Stream, data: memoryview) -> bytes:
        encoding = stream.encoding
        if encoding == "gzip":
            wbits = 31
        elif encoding == "deflate":
            wbits = 15
        else:
            raise CallError(grpc.StatusCode.UNIMPLEMENTED if encoding != "identity" else grpc.StatusCode.INTERNAL,
                            f"a compressed message with grpc-encoding '{encoding}' (supported: gzip, deflate)")
        limit = self.server.config.max_input
        inflater = zlib.decompressobj(wbits)
        try:
            out = inflater.decompress(data, limit + 1)
        except zlib.error as e:
            raise CallError(grpc.StatusCode.INTERNAL, f"could not decompress the request ({encoding}): {e}") from None
        if len(out) > limit:
            raise CallError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                            f"Received message larger than max (decompressed beyond {limit})")
        return out

    def consumed(self, stream: Stream) -> None:
        """Give the client back the window of the request data taken so far."""
        if stream.recv_unacked and not stream.remote_closed and not stream.finished:
            self._write(F.window_update(stream.id, stream.recv_unacked))
            stream.recv_window += stream.recv_unacked
            stream.recv_unacked = 0

    def _headers(self, flags: int, sid: int, payload: bytes | bytearray) -> None:
        if sid == 0 or not sid & 1:
            raise ConnectionError_(F.PROTOCOL_ERROR, f"HEADERS on stream {sid}")
        start, end = 0, len(payload)
        if flags & F.PADDED:
            if not payload:
                raise ConnectionError_(F.PROTOCOL_ERROR, "bad padding")
            start, end = 1, end - payload[0]
        if flags & F.PRIORITY_FLAG:
            start += 5
        if start > end:
            raise ConnectionError_(F.PROTOCOL_ERROR, "bad HEADERS padding")
        block = payload[start:end] if start or end != len(payload) else payload
        if not flags & F.END_HEADERS:
            if len(block) > MAX_HEADER_BLOCK:
                raise ConnectionError_(F.ENHANCE_YOUR_CALM, "header block too large")
            self._continuation = (sid, flags, bytearray(block))
            return
        self._header_block(sid, flags, bytes(block))

    def _continue(self, flags: int, sid: int, payload: bytes | bytearray) -> None:
        if self._continuation is None or self._continuation[0] != sid:
            raise ConnectionError_(F.PROTOCOL_ERROR, "unexpected CONTINUATION")
        block = self._continuation[2]
        block += payload
        if len(block) > MAX_HEADER_BLOCK:
            raise ConnectionError_(F.ENHANCE_YOUR_CALM, "header block too large")
        if flags & F.END_HEADERS:
            first_flags = self._continuation[1]
            self._continuation = None
            self._header_block(sid, first_flags, bytes(block))

    def _head(self, block: bytes) -> Head:
        """The block's headers: from the cache while HPACK's dynamic table is unchanged."""
        head = self.heads.get(block)
        if head is not None:
            return head
        table = self.decoder.header_table
        entries = table.dynamic_entries
        before = (len(entries), entries[0] if entries else None, table.maxsize)
        try:
            headers = self.decoder.decode(block)
        except HPACKError as e:
            raise ConnectionError_(F.COMPRESSION_ERROR, f"bad header block: {e}") from None
        except (ValueError, IndexError, UnicodeDecodeError) as e:
            raise ConnectionError_(F.COMPRESSION_ERROR, f"bad header block: {e}") from None
        head = Head(headers)  # type: ignore[arg-type]
        entries = table.dynamic_entries
        after = (len(entries), entries[0] if entries else None, table.maxsize)
        if before[0] != after[0] or before[1] is not after[1] or before[2] != after[2]:
            self.heads.clear()  # indexes moved: every remembered block may mean something else now
        else:
            if len(self.heads) >= HEAD_CACHE:
                self.heads.clear()
            self.heads[block] = head
        return head

    def _header_block(self, sid: int, flags: int, block: bytes) -> None:
        head = self._head(block)  # always decoded: HPACK's state must follow every block
        if sid <= self.last_id:
            self._trailers_received(sid, flags)
            return
        self.last_id = sid
        server = self.server
        config = server.config
        if self.closing or len(self.streams) >= config.max_streams:
            self._out.append(F.rst_stream(sid, F.REFUSED_STREAM))
            return
        end = bool(flags & F.END_STREAM)
        method = server.method(head.path) if head.valid else None
        if method is None or not (method.unary_unary or method.stream_stream) or server.rpcs >= config.max_rpcs:
            code, details = (
                (grpc.StatusCode.UNIMPLEMENTED, "not a gRPC request (POST with content-type application/grpc)")
                if not head.valid else (grpc.StatusCode.UNIMPLEMENTED, "Method not found!")
                if method is None or not (method.unary_unary or method.stream_stream)
                else (grpc.StatusCode.RESOURCE_EXHAUSTED, "Concurrent RPC limit exceeded!"))
            self._trailers_only(sid, code.value[0], details, end)
            return
        self._open(sid, head, method, end)

    def _trailers_received(self, sid: int, flags: int) -> None:
        """A header block on a stream already open (the client's trailers end its side) or ended (ignored)."""
        stream = self.streams.get(sid)
        if stream is None or not flags & F.END_STREAM:
            return
        stream.remote_closed = True
        if stream.streaming:
            _wake(stream)
        elif stream.task is None:
            try:
                self._dispatch_unary(stream, self._one_message(stream, memoryview(stream.buf)))
            except CallError as e:
                self._finish(stream, e.code, e.details)

    def _open(self, sid: int, head: Head, method: grpc.RpcMethodHandler, end: bool) -> None:
        server = self.server
        config = server.config
        stream = Stream(sid, self, method, head)
        self.streams[sid] = stream
        server.rpcs += 1
        if config.compression is not None and head.accept:
            stream.compress = config.choose_compression(head.accept)
        if head.timeout is not None:
            stream.deadline = self.loop.time() + head.timeout
            stream.timer = self.loop.call_later(head.timeout, self._expire, stream)
        self._last_ping_recv = _NEVER
        if stream.streaming:
            stream.task = self.loop.create_task(self._run_stream(stream))
            if end:
                stream.remote_closed = True
        elif end:
            stream.remote_closed = True
            try:
                self._one_message(stream, memoryview(b""))
            except CallError as e:
                self._finish(stream, e.code, e.details)

    def _dispatch_unary(self, stream: Stream, message: memoryview | bytes) -> None:
        if stream.buf:
            stream.buf = bytearray()  # the message may be a view of it: a new buffer, not a cleared one
        stream.task = self.loop.create_task(self._run_unary(stream, message))

    def _window_update(self, sid: int, payload: bytes | bytearray) -> None:
        if len(payload) != 4:
            raise ConnectionError_(F.FRAME_SIZE_ERROR, "WINDOW_UPDATE size")
        increment = F.u32(bytes(payload)) & 0x7FFFFFFF
        if sid == 0:
            if increment == 0:
                raise ConnectionError_(F.PROTOCOL_ERROR, "WINDOW_UPDATE of 0")
            self.send_window += increment
            if self.send_window > F.MAX_WINDOW:
                raise ConnectionError_(F.FLOW_CONTROL_ERROR, "connection window above 2^31-1")
            for stream in list(self._blocked):
                self._pump(stream)
            return
        target = self.streams.get(sid)
        if target is None:
            return
        stream = target
        if increment == 0:
            self._out.append(F.rst_stream(sid, F.PROTOCOL_ERROR))
            self._cancel(stream)
            return
        stream.send_window += increment
        if stream.send_window > F.MAX_WINDOW:
            self._out.append(F.rst_stream(sid, F.FLOW_CONTROL_ERROR))
            self._cancel(stream)
            return
        if stream.pending:
            self._pump(stream)

    def _settings(self, flags: int, sid: int, payload: bytes | bytearray) -> None:
        if sid != 0:
            raise ConnectionError_(F.PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & F.ACK:
            if payload:
                raise ConnectionError_(F.FRAME_SIZE_ERROR, "SETTINGS ack with a payload")
            return
        if len(payload) % 6:
            raise ConnectionError_(F.FRAME_SIZE_ERROR, "SETTINGS size")
        for key, value in F.parse_settings(bytes(payload)):
            if key == F.SETTINGS_INITIAL_WINDOW_SIZE:
                if value > F.MAX_WINDOW:
                    raise ConnectionError_(F.FLOW_CONTROL_ERROR, "SETTINGS_INITIAL_WINDOW_SIZE above 2^31-1")
                delta = value - self.peer_window
                self.peer_window = value
                for stream in self.streams.values():
                    stream.send_window += delta
            elif key == F.SETTINGS_MAX_FRAME_SIZE:
                if not F.DEFAULT_MAX_FRAME <= value <= 16_777_215:
                    raise ConnectionError_(F.PROTOCOL_ERROR, "bad SETTINGS_MAX_FRAME_SIZE")
                self.peer_max_frame = value
            elif key == F.SETTINGS_ENABLE_PUSH and value > 1:
                raise ConnectionError_(F.PROTOCOL_ERROR, "bad SETTINGS_ENABLE_PUSH")
        self._out.append(F.SETTINGS_ACK)
        for stream in list(self._blocked):
            self._pump(stream)

    def _ping(self, flags: int, sid: int, payload: bytes | bytearray) -> None:
        if sid != 0:
            raise ConnectionError_(F.PROTOCOL_ERROR, "PING on a stream")
        if len(payload) != 8:
            raise ConnectionError_(F.FRAME_SIZE_ERROR, "PING size")
        if flags & F.ACK:
            if self._ping_payload is not None and bytes(payload) == self._ping_payload:
                self._ping_payload = None
                if self._ping_timeout is not None:
                    self._ping_timeout.cancel()
                    self._ping_timeout = None
            return
        # grpc's ping policy: pings closer together than allowed are strikes; too many end the connection
        config = self.server.config
        now = time.monotonic()
        idle = not self.streams
        interval = 7200.0 if idle and not config.permit_without_calls else config.min_ping_interval
        too_soon = now < self._last_ping_recv + interval
        self._last_ping_recv = now
        if too_soon:
            self._ping_strikes += 1
            if config.max_ping_strikes and self._ping_strikes > config.max_ping_strikes:
                raise ConnectionError_(F.ENHANCE_YOUR_CALM, "too_many_pings")
        self._out.append(F.ping(bytes(payload), ack=True))

    # -- calls --------------------------------------------------------------------------------------

    async def _run_unary(self, stream: Stream, message: memoryview | bytes) -> None:
        method = stream.method
        context = stream.context
        try:
            deserializer = method.request_deserializer
            try:
                request = deserializer(message) if deserializer is not None else message
            except Exception:  # noqa: BLE001 - as grpcio: a request that does not parse is INTERNAL
                self._finish(stream, grpc.StatusCode.INTERNAL, "Exception deserializing request!")
                return
            response = await method.unary_unary(request, context)
            serializer = method.response_serializer
            data = serializer(response) if serializer is not None else response
        except (AbortError, asyncio.CancelledError, Exception) as e:  # noqa: BLE001 - each becomes the status
            self._finish_failed(stream, e, "unary")
            return
        if context.code is not grpc.StatusCode.OK:
            self._finish(stream, context.code, context.details, context.trailing)
            return
        self._respond(stream, data, context.trailing)

    async def _run_stream(self, stream: Stream) -> None:
        method = stream.method
        context = stream.context
        serializer = method.response_serializer
        try:
            responses: AsyncIterator[Any] = method.stream_stream(_Requests(stream, method.request_deserializer),
                                                                 context)
            async with contextlib.aclosing(responses):  # type: ignore[type-var]
                async for item in responses:
                    if stream.finished:
                        break
                    self._send_message(stream, serializer(item) if serializer is not None else item)
                    if stream.pending or self._write_paused:
                        await self._drain(stream)
        except (AbortError, asyncio.CancelledError, Exception) as e:  # noqa: BLE001 - each becomes the status
            self._finish_failed(stream, e, "streaming")
            return
        self._finish(stream, context.code, context.details, context.trailing)

    def _finish_failed(self, stream: Stream, error: BaseException, kind: str) -> None:
        """End a call whose handler raised, with the status grpcio gives: the handler's own on abort,
        CANCELLED when it was cancelled, UNKNOWN (logged) for any other exception.  Called in the except block."""
        context = stream.context
        if isinstance(error, AbortError):
            self._finish(stream, context.code, context.details, context.trailing)
        elif isinstance(error, asyncio.CancelledError):
            self._finish(stream, grpc.StatusCode.CANCELLED, "Cancelled")
        else:
            log.exception("unexpected error in a %s gRPC method", kind)
            self._finish(stream, grpc.StatusCode.UNKNOWN, f"Unexpected {type(error)}: {error}")

    async def _drain(self, stream: Stream) -> None:
        """Wait until the stream's response data has window and the client reads again."""
        while not stream.finished and not self.dead:
            if stream.pending:
                stream.drained = self.loop.create_future()
                await stream.drained
            elif self._write_paused:
                waiter = self.loop.create_future()
                self._drain_waiters.append(waiter)
                await waiter
            else:
                return

    def _expire(self, stream: Stream) -> None:
        stream.timer = None
        if stream.finished:
            return
        stream.cancelled = True
        stream.pending.clear()
        self._finish(stream, grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
        if stream.task is not None:
            stream.task.cancel()

    def _cancel(self, stream: Stream) -> None:
        """The client cancelled (RST_STREAM), or the connection is gone: end the handler, send nothing."""
        stream.cancelled = True
        if not stream.finished:
            self._release(stream)
        if stream.task is not None:
            stream.task.cancel()

    # -- sending ------------------------------------------------------------------------------------

    def _write(self, data: bytes | memoryview) -> None:
        self._out.append(data)
        if not self._flush_scheduled and not self._receiving:
            self._flush_scheduled = True
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        out = self._out
        if not out:
            return
        self._out = []  # (a connection that is gone drops what its calls still write)
        if not self.dead and self.transport is not None:
            if len(out) == 1:
                self.transport.write(out[0])
            else:
                self.transport.writelines(out)

    def _compressed(self, stream: Stream, data: bytes) -> tuple[int, bytes]:
        algorithm = stream.compress
        if algorithm is None:
            return 0, data
        if algorithm == "gzip":
            compressor = zlib.compressobj(wbits=31)
        else:
            compressor = zlib.compressobj()
        return 1, compressor.compress(data) + compressor.flush()

    def _respond(self, stream: Stream, data: bytes, trailing: Any) -> None:
        """A unary call's answer: HEADERS, DATA, trailers, in one write when the windows allow."""
        if stream.finished:
            return
        self._ping_strikes = 0  # as grpc: sending headers or data resets the ping policy's strikes
        self._last_ping_recv = _NEVER
        flag, body = self._compressed(stream, data) if stream.compress else (0, data)
        size = 5 + len(body)
        sid = stream.id
        head = RESPONSE_HEADERS[stream.compress if flag else None]
        tail = TRAILERS_OK if not trailing else status_block(0, "", trailing)
        stream.headers_sent = True
        if size <= self.peer_max_frame and size <= stream.send_window and size <= self.send_window \
                and size < 65536:
            stream.send_window -= size
            self.send_window -= size
            data = b"".join((
                F.frame_header(F.HEADERS, F.END_HEADERS, sid, len(head)), head,
                F.frame_header(F.DATA, 0, sid, size), _PREFIX.pack(flag, len(body)), body,
                F.frame_header(F.HEADERS, F.END_HEADERS | F.END_STREAM, sid, len(tail)), tail))
            if len(self.streams) == 1 and not self._out and not self._receiving and stream.remote_closed \
                    and self.transport is not None and not self.dead:
                self.transport.write(data)  # the connection's only call: now (coalescing would only delay it)
            else:
                self._write(data)  # answers finishing together on one connection go out in one write
            self._end(stream)
            return
        self._write(F.frame_header(F.HEADERS, F.END_HEADERS, sid, len(head)) + head)
        self._queue_message(stream, flag, body)
        stream.trailer = F.frame_header(F.HEADERS, F.END_HEADERS | F.END_STREAM, sid, len(tail)) + tail
        self._pump(stream)

    def _send_message(self, stream: Stream, data: bytes) -> None:
        """One message of a streaming response (its headers first)."""
        self._ping_strikes = 0
        self._last_ping_recv = _NEVER
        if not stream.headers_sent:
            stream.headers_sent = True
            head = RESPONSE_HEADERS[stream.compress]
            self._write(F.frame_header(F.HEADERS, F.END_HEADERS, stream.id, len(head)) + head)
        flag, body = self._compressed(stream, data) if stream.compress else (0, data)
        self._queue_message(stream, flag, body)
        self._pump(stream)

    @staticmethod
    def _queue_message(stream: Stream, flag: int, body: bytes) -> None:
        if len(body) < 65536:
            stream.pending.append(memoryview(_PREFIX.pack(flag, len(body)) + body))
        else:
            stream.pending.append(memoryview(_PREFIX.pack(flag, len(body))))
            stream.pending.append(memoryview(body))

    def _pump(self, stream: Stream) -> None:
        """Send the stream's waiting data as far as both windows allow, then its trailers."""
        pending = stream.pending
        sid = stream.id
        max_frame = self.peer_max_frame
        while pending:
            room = min(stream.send_window, self.send_window, max_frame)
            if room <= 0:
                self._blocked[stream] = None
                return
            item = pending[0]
            n = min(len(item), room)
            self._write(F.frame_header(F.DATA, 0, sid, n))
            if n == len(item):
                pending.popleft()
                self._write(item)
            else:
                self._write(item[:n])
                pending[0] = item[n:]
            stream.send_window -= n
            self.send_window -= n
        self._blocked.pop(stream, None)
        if stream.trailer is not None:
            self._write(stream.trailer)
            stream.trailer = None
            self._end(stream)
        _drained(stream)

    def _finish(self, stream: Stream, code: grpc.StatusCode, details: str, trailing: Any = ()) -> None:
        """End the call with a status (after its data, or as a trailers-only response)."""
        if stream.finished:
            return
        block = status_block(code.value[0], details, trailing)
        if not stream.headers_sent:
            stream.headers_sent = True
            block = _OK_HEAD + block
        frame = F.frame_header(F.HEADERS, F.END_HEADERS | F.END_STREAM, stream.id, len(block)) + block
        if stream.pending:
            stream.trailer = frame
            self._pump(stream)
        else:
            self._write(frame)
            self._end(stream)

    def _trailers_only(self, sid: int, code: int, details: str, ended: bool) -> None:
        """A call refused before it has a stream object."""
        block = _OK_HEAD + status_block(code, details)
        self._write(F.frame_header(F.HEADERS, F.END_HEADERS | F.END_STREAM, sid, len(block)) + block)
        if not ended:
            self._write(F.rst_stream(sid, F.NO_ERROR))

    def _end(self, stream: Stream) -> None:
        """The call's last frame is written."""
        if not stream.remote_closed:  # the client may stop sending (gRPC over HTTP/2: RST_STREAM NO_ERROR)
            self._write(F.rst_stream(stream.id, F.NO_ERROR))
        self._release(stream)
        BUSY_POLL.answered(self.loop)

    def _release(self, stream: Stream) -> None:
        stream.finished = True
        if self.streams.pop(stream.id, None) is not None:
            self.server.rpcs -= 1
        self._blocked.pop(stream, None)
        stream.pending.clear()
        stream.messages.clear()
        if stream.buf:
            stream.buf = bytearray()
        if stream.timer is not None:
            stream.timer.cancel()
            stream.timer = None
        stream.context._done()
        _wake(stream)
        _drained(stream)
        if not self.streams:
            self._idle_since = time.monotonic()
            if self.closing:
                self._flush()
                self._close()

    # -- connection lifetime ------------------------------------------------------------------------

    def goaway(self, code: int = F.NO_ERROR, debug: bytes = b"") -> None:
        """Take no new streams; close once those in progress are answered."""
        if self.dead or self.closing:
            return
        self.closing = True
        self._write(F.goaway(self.last_id, code, debug))
        if not self.streams:
            self._flush()
            self._close()

    def _close(self) -> None:
        if self.transport is not None and not self.dead:
            self._flush()
            self.dead = True
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.dead = True
            self.transport.abort()

    def _fail(self, code: int, debug: str) -> None:
        """A connection error: GOAWAY with its code, then close (calls in progress are cancelled)."""
        if self.dead:
            return
        log.debug("gRPC connection from %s: %s", self.peer, debug)
        self._out.append(F.goaway(self.last_id, code, debug.encode("utf-8", "replace")[:256]))
        self._flush()
        for stream in list(self.streams.values()):
            self._cancel(stream)
        self._close()

    def _keepalive(self) -> None:
        config = self.server.config
        if self.dead or config.keepalive_time is None:
            return
        if self._ping_payload is None:
            self._ping_payload = os.urandom(8)
            self._write(F.ping(self._ping_payload))
            self._ping_timeout = self.loop.call_later(config.keepalive_timeout, self._keepalive_expired)
        self._later("keepalive", config.keepalive_time, self._keepalive)

    def _keepalive_expired(self) -> None:
        log.debug("gRPC connection from %s: no answer to a keepalive ping; closing", self.peer)
        self._ping_timeout = None
        for stream in list(self.streams.values()):
            self._cancel(stream)
        self.abort()

    def _idle_check(self) -> None:
        idle = self.server.config.idle
        if self.dead or idle is None:
            return
        left = self._idle_since + idle - time.monotonic()
        if not self.streams and left <= 0:
            self.goaway()
            return
        self._later("idle", max(left, 0.05) if not self.streams else idle, self._idle_check)

    def _too_old(self) -> None:
        self.goaway()
        grace = self.server.config.age_grace
        if grace is not None and not self.dead:
            self._later("grace", grace, self._cut)

    def _cut(self) -> None:
        for stream in list(self.streams.values()):
            self._cancel(stream)
        self._close()
