"""The HTTP/1.1 transport: an asyncio protocol around httptools' parser (uvloop when installed).

No ASGI layer: its per-request objects cost more than a small model's whole inference
(``benchmarks/http_stacks``; ARCHITECTURE.md, decisions).  This module only moves bytes (the port and
its connections are ``listener.py``'s): it parses
requests with httptools, enforces ``--http-max-input-size`` before reading a
body, keeps connections alive, answers requests of one connection in order,
and writes each response with one ``writelines``.  Everything the API means
lives in ``routes.py``.

What one client may hold is bounded (``ConnectionLimits``): a connection whose unsent responses pass
the write buffer's high-water mark is neither read nor answered until they drain, and one that queues
too many pipelined requests stops being read; request heads, stalled bodies, unread responses and idle
keep-alive connections time out (one sweep per listener and second at most, no timer per request); and
the listener holds at most ``max_connections``, closing the longest-idle one to admit a new client.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections import OrderedDict, deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from http import HTTPStatus
from typing import Protocol

import httptools
import numpy as np

from tritium.core import shared_memory
from tritium.frontends.busy_poll import BUSY_POLL
from tritium.options import ServerOptions

from .routes import HttpApi, HttpRequest, HttpResponse, compress_body, error_response

log = logging.getLogger(__name__)

_REASONS = {s.value: s.phrase.encode() for s in HTTPStatus}
_REASONS[405] = b"Not Allowed"  # Triton's phrase

#: Most bytes of request line and headers accepted; the body has its own limit (--http-max-input-size).
MAX_HEAD_BYTES = 64 * 1024

#: Unsent response bytes of one connection above which it is neither read nor answered further, and below
#: which both resume (the transport's write-buffer water marks: ``pause_writing`` / ``resume_writing``).
WRITE_HIGH_WATER = 256 * 1024
WRITE_LOW_WATER = 64 * 1024
#: Parsed requests waiting behind the one being answered (pipelining), and their body bytes, beyond which the
#: connection stops being read until they are answered.
PIPELINE_DEPTH = 16
PIPELINE_BYTES = 4 * 1024 * 1024

#: What the sweep watches a connection doing (``HttpProtocol.check``).
_SENDING, _HEAD, _BODY, _IDLE = range(4)


@dataclass(frozen=True)
class ConnectionLimits:
    """How long a client may take and how many connections a listener holds (``--http-*`` flags)."""

    header_timeout: float = 60.0
    body_timeout: float = 60.0
    send_timeout: float = 60.0
    idle_timeout: float = 75.0
    #: 0: derived from the descriptor limit (``frontends.limits``).
    max_connections: int = 0

    @classmethod
    def from_options(cls, options: ServerOptions, max_connections: int) -> ConnectionLimits:
        return cls(options.http_header_timeout_secs, options.http_body_timeout_secs,
                   options.http_send_timeout_secs, options.http_idle_timeout_secs, max_connections)


#: Header names as clients send them -> the lower-case text the API reads (saves a decode per header).
_HEADER_NAMES: dict[bytes, str] = {}
_METHODS = {m.encode(): m for m in ("GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH")}
_OK_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n"
_OK_HEAD_1 = b"HTTP/1.1 200 OK\r\nContent-Type: %s\r\n%s: %s\r\nContent-Length: %d\r\n\r\n"


def _head(response: HttpResponse, length: int, keep_alive: bool) -> bytes:
    if response.status == 200 and keep_alive and response.content_type is not None:
        # the common cases, in one formatting: JSON answers, and binary ones (Inference-Header-Content-Length)
        headers = response.headers
        if not headers:
            return _OK_HEAD % (response.content_type, length)
        if len(headers) == 1:
            return _OK_HEAD_1 % (response.content_type, headers[0][0], headers[0][1], length)
    return _any_head(response, b"Content-Length: %d\r\n" % length, keep_alive)


def _any_head(response: HttpResponse, framing: bytes, keep_alive: bool) -> bytes:
    """Status line and headers of any response; ``framing`` says where its body ends (length or chunked)."""
    lines = [b"HTTP/1.1 %d %s\r\n" % (response.status, _REASONS.get(response.status, b"Unknown"))]
    if response.content_type is not None:
        lines.append(b"Content-Type: " + response.content_type + b"\r\n")
    for name, value in response.headers:
        lines.append(name + b": " + value + b"\r\n")
    lines.append(framing)
    if not keep_alive:
        lines.append(b"Connection: close\r\n")
    lines.append(b"\r\n")
    return b"".join(lines)


class Admission(Protocol):
    """What a connection knows of its listener (:class:`~tritium.frontends.http.listener.HttpListener`)."""

    #: Its connections, least recently active first.
    connections: OrderedDict[HttpProtocol, None]
    #: True once it stops: answers close their connection.
    draining: bool

    def admit(self, conn: HttpProtocol) -> None: ...

    def forget(self, conn: HttpProtocol) -> None: ...


class HttpProtocol(asyncio.Protocol):
    """One client connection."""

    __slots__ = (
        "api", "max_body", "loop", "transport", "parser", "url", "headers", "body", "body_size",
        "queue", "busy", "closing", "tasks", "head_size", "refusal", "in_head", "shared",
        "listener", "requests", "in_body", "write_paused", "reading_paused", "queued_bytes", "mark", "mark_at",
        "drained", "raw_headers",
    )

    def __init__(self, api: HttpApi, max_body: int, loop: asyncio.AbstractEventLoop, listener: Admission) -> None:
        self.api = api
        self.max_body = max_body
        self.loop = loop
        self.listener = listener
        #: Requests begun on this connection (the sweep tells a new request from a slow one by it).
        self.requests = 0
        #: True while the current request's body is still arriving.
        self.in_body = False
        #: Unsent responses are above the high-water mark (``pause_writing``): answer nothing more until they drain.
        self.write_paused = False
        self.reading_paused = False
        #: Body bytes of the requests in ``queue``.
        self.queued_bytes = 0
        #: What the sweep saw this connection doing, and since when (``check``).
        self.mark: tuple[int, ...] | None = None
        self.mark_at = 0.0
        #: Resolved when the write buffer drains, for a streamed response that waits on it.
        self.drained: asyncio.Future[None] | None = None
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.headers: dict[str, str] = {}
        #: Every header as received (names' case, repeats), kept only for --http-header-forward-pattern.
        # (the metrics endpoint's api has no patterns to forward by)
        forwarding = getattr(api, "forward_headers", None) is not None
        self.raw_headers: list[tuple[bytes, bytes]] | None = [] if forwarding else None
        self.body: list[bytes] = []
        self.body_size = 0
        self.queue: deque[tuple[HttpRequest, bool]] = deque()
        self.busy = False
        self.closing = False
        self.tasks: set[asyncio.Task[None]] = set()
        self.head_size = 0
        #: True while the current request's head (line and headers) is still arriving.
        self.in_head = False
        #: Why a callback refused the request (httptools wraps exceptions raised in callbacks).
        self.refusal: str | None = None
        #: A big body's memory, when it is received into shared memory (``core.shared_memory``).
        self.shared: np.ndarray | None = None

    # -- asyncio.Protocol -------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.set_write_buffer_limits(WRITE_HIGH_WATER, WRITE_LOW_WATER)  # type: ignore[attr-defined]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        self.listener.admit(self)

    def data_received(self, data: bytes) -> None:
        BUSY_POLL.arrived()
        if self.closing:
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(400, "protocol upgrades are not supported")
            return
        except httptools.HttpParserError as e:
            self._fail(400, self.refusal or f"malformed HTTP request: {e}")
            return
        if self.in_head:
            # httptools buffers a header until it ends: bound what it may hold.
            self.head_size += len(data)
            if self.head_size > MAX_HEAD_BYTES:
                self._fail(400, f"request line and headers are larger than {MAX_HEAD_BYTES} bytes")

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.transport = None
        self.queue.clear()
        for task in self.tasks:
            task.cancel()
        self.listener.forget(self)

    def pause_writing(self) -> None:
        """The client reads less than we send: stop reading and answering it until it catches up."""
        self.write_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.drained is not None:
            if not self.drained.done():
                self.drained.set_result(None)
            self.drained = None
        if not self.busy and self.queue and not self.closing:
            self._next()
        self._update_reading()

    def _update_reading(self) -> None:
        """Read while nothing is held back: no unsent responses over the mark, a short pipeline."""
        pause = self.write_paused or len(self.queue) >= PIPELINE_DEPTH or self.queued_bytes > PIPELINE_BYTES
        transport = self.transport
        if pause != self.reading_paused and transport is not None and not self.closing:
            self.reading_paused = pause
            if pause:
                transport.pause_reading()
            else:
                transport.resume_reading()

    # -- limits (called by the listener) --------------------------------------------------------------

    def idle(self) -> bool:
        """Between requests: nothing is being received or answered."""
        return not (self.busy or self.in_head or self.in_body or self.queue or self.closing)

    def check(self, now: float, limits: ConnectionLimits) -> None:
        """The sweep: close this connection if what it is doing has not moved on for longer than allowed.

        What it does is a mark (state and progress); a changed mark restarts its clock, so the hot path
        keeps no timers.  A request being answered has no limit (a model may take long, a stream may last)."""
        transport = self.transport
        if transport is None:
            return
        if self.write_paused or self.closing:
            mark: tuple[int, ...] = (_SENDING, transport.get_write_buffer_size())
            limit = limits.send_timeout
        elif self.busy or self.queue:
            self.mark = None
            return
        elif self.in_head:
            mark, limit = (_HEAD, self.requests), limits.header_timeout
        elif self.in_body:
            mark, limit = (_BODY, self.requests, self.body_size), limits.body_timeout
        else:
            mark, limit = (_IDLE, self.requests), limits.idle_timeout
        if mark != self.mark:
            self.mark, self.mark_at = mark, now
            return
        if now - self.mark_at < limit:
            return
        state = mark[0]
        if state == _SENDING:
            log.info("closing an HTTP connection whose client read nothing for %g s", limit)
            self.closing = True
            transport.abort()
        elif state == _HEAD:
            self._fail(408, f"request line and headers did not arrive within {limit:g} s")
        elif state == _BODY:
            self._fail(408, f"request body stopped arriving for {limit:g} s")
        else:
            self.close()

    def close(self) -> None:
        """Close between requests (idle timeout, eviction, shutdown); at once, even when the client left a
        response unread (a graceful close would keep the descriptor until it reads)."""
        self.closing = True
        transport = self.transport
        if transport is not None:
            if transport.get_write_buffer_size():
                transport.abort()
            else:
                transport.close()

    # -- httptools callbacks --------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.requests += 1
        try:  # most recently active last: the listener closes the longest-idle connection first
            self.listener.connections.move_to_end(self)
        except KeyError:
            pass
        self.url = b""
        self.headers = {}
        if self.raw_headers is not None:
            self.raw_headers = []
        self.body = []
        self.body_size = 0
        self.head_size = 0
        self.in_head = True
        self.shared = None

    def _refuse(self, message: str) -> None:
        self.refusal = message
        raise _Refused(message)

    def on_url(self, url: bytes) -> None:
        self.head_size += len(url)
        if self.head_size > MAX_HEAD_BYTES:
            self._refuse(f"request line and headers are larger than {MAX_HEAD_BYTES} bytes")
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.head_size += len(name) + len(value)
        if self.head_size > MAX_HEAD_BYTES:
            self._refuse(f"request line and headers are larger than {MAX_HEAD_BYTES} bytes")
        key = _HEADER_NAMES.get(name)
        if key is None:
            key = name.decode("latin-1").lower()
            if len(_HEADER_NAMES) < 256:  # bounded: clients choose header names
                _HEADER_NAMES[name] = key
        if key not in self.headers:  # a repeated header: the first counts, as in Triton (libevhtp's lookup)
            self.headers[key] = value.decode("latin-1")
        raw = self.raw_headers
        if raw is not None:
            raw.append((name, value))

    def on_headers_complete(self) -> None:
        self.in_head = False
        self.in_body = True
        declared = self.headers.get("content-length")
        if declared is not None and declared.isdigit():
            length = int(declared)
            if length > self.max_body:
                self._refuse(
                    f"request body of {declared} bytes is larger than the maximum input size of {self.max_body} bytes"
                )
            if length >= shared_memory.MIN_BYTES:
                # received straight into shared memory: a model in another process reads the tensors there
                self.shared = shared_memory.take(length)

    def on_body(self, body: bytes) -> None:
        start = self.body_size
        self.body_size += len(body)
        if self.body_size > self.max_body:
            self._refuse(f"request body is larger than the maximum input size of {self.max_body} bytes")
        if self.shared is not None:  # the parser stops at Content-Length: it fits
            self.shared[start : self.body_size] = np.frombuffer(body, np.uint8)
            return
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.in_body = False
        url = self.url
        if b"?" in url or b"#" in url or not url.startswith(b"/"):
            url = httptools.parse_url(url).path
        path = url.decode("utf-8", errors="replace")
        if self.shared is not None:
            body: bytes | memoryview = memoryview(self.shared)  # type: ignore[arg-type]  # numpy stubs: no Buffer
            self.shared = None
        else:
            body = self.body[0] if len(self.body) == 1 else b"".join(self.body)
        raw_method = self.parser.get_method()
        method = _METHODS.get(raw_method) or raw_method.decode("ascii")
        request = HttpRequest(method, path, self.headers, body, self.raw_headers)
        self.queue.append((request, self.parser.should_keep_alive()))
        self.queued_bytes += len(body)
        if not (self.busy or self.write_paused):
            self._next()
        elif len(self.queue) >= PIPELINE_DEPTH or self.queued_bytes > PIPELINE_BYTES:
            self._update_reading()

    # -- answering --------------------------------------------------------------------------------

    def _next(self) -> None:
        request, keep_alive = self.queue.popleft()
        self.queued_bytes -= len(request.body)
        if self.reading_paused:
            self._update_reading()
        self.busy = True
        task = self.loop.create_task(self._answer(request, keep_alive))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _answer(self, request: HttpRequest, keep_alive: bool) -> None:
        try:
            response = await self.api.handle(request)
        except asyncio.CancelledError:
            return
        except Exception as e:  # a bug must cost one request, never the connection or server
            log.exception("unhandled error answering %s %s", request.method, request.path)
            response = error_response(f"internal error: {type(e).__name__}: {e}", 500)
        self._write(request, response, keep_alive and not self.listener.draining)

    def _write(self, request: HttpRequest, response: HttpResponse, keep_alive: bool) -> None:
        transport = self.transport
        if transport is None:
            return
        if response.stream is not None:
            self._start_stream(response, keep_alive)
            return
        pieces = response.body
        accept = request.headers.get("accept-encoding")
        if accept and pieces and response.status == 200 and request.path.endswith("/infer"):
            pieces, encoding = compress_body(pieces, accept)
            if encoding is not None:
                response.headers.append((b"Content-Encoding", encoding))
        length = sum(map(len, pieces))
        trace = response.trace
        if trace is None:
            transport.writelines([_head(response, length, keep_alive), *pieces])
        else:
            trace.stamp("HTTP_SEND_START")
            transport.writelines([_head(response, length, keep_alive), *pieces])
            trace.stamp("HTTP_SEND_END")
            trace.finish()
        self._answered(transport, keep_alive)

    def _answered(self, transport: asyncio.Transport, keep_alive: bool) -> None:
        """A response is out: close, or answer the next request that waited on this connection."""
        self.busy = False
        BUSY_POLL.answered(self.loop)
        if not keep_alive:
            self.closing = True
            transport.close()
        elif self.queue and not self.write_paused:
            self._next()

    def _start_stream(self, response: HttpResponse, keep_alive: bool) -> None:
        """A body that comes as it is made (``generate_stream``): chunked, the connection's next request
        waits until it ends; a client that goes away cancels it (``connection_lost`` cancels the task)."""
        assert self.transport is not None and response.stream is not None
        head = _any_head(response, b"Transfer-Encoding: chunked\r\n", keep_alive)
        self.transport.writelines([head, *map(_chunk, response.body)])
        task = self.loop.create_task(self._pump(response.stream, keep_alive))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _pump(self, stream: AsyncIterator[bytes], keep_alive: bool) -> None:
        try:
            async for piece in stream:
                if self.transport is None:
                    return
                self.transport.write(_chunk(piece))
                if self.write_paused:  # the client reads slower than the model makes: wait for it
                    self.drained = self.loop.create_future()
                    await self.drained
        except asyncio.CancelledError:
            return
        except Exception:  # a bug must cost this response, never the server: the client sees it cut short
            log.exception("streaming a response failed")
            if self.transport is not None:
                self.closing = True
                self.transport.close()
            return
        transport = self.transport
        if transport is None:
            return
        transport.write(b"0\r\n\r\n")
        self._answered(transport, keep_alive)

    def _fail(self, status: int, message: str) -> None:
        """Answer a request we could not parse and close the connection."""
        self.closing = True
        if self.transport is not None:
            response = error_response(message, status)
            body = response.body[0]
            self.transport.write(_head(response, len(body), False) + bytes(body))
            self.transport.close()


def _chunk(piece: bytes | memoryview) -> bytes:
    """One chunk of a chunked body (an empty piece would end the body, so it is skipped)."""
    return b"%x\r\n%s\r\n" % (len(piece), bytes(piece)) if len(piece) else b""


class _Refused(Exception):
    """Raised in a parser callback to stop reading a request we will not serve."""
