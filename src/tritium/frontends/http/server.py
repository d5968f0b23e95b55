"""The HTTP/1.1 transport: an asyncio protocol around httptools' parser (uvloop when installed).

Chosen by measurement (``benchmarks/http_stacks``): an ASGI server adds a
layer of per-request dictionaries and callbacks that costs more than the whole
inference path of a small model.  This module only moves bytes: it parses
requests with httptools, enforces ``--http-max-input-size`` before reading a
body, keeps connections alive, answers requests of one connection in order,
and writes each response with one ``writelines``.  Everything the API means
lives in ``routes.py``.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections import deque
from collections.abc import AsyncIterator
from http import HTTPStatus

import httptools
import numpy as np

from tritium.core import shared_memory
from tritium.options import ServerOptions

from .routes import HttpApi, HttpRequest, HttpResponse, compress_body, error_response

log = logging.getLogger(__name__)

_REASONS = {s.value: s.phrase.encode() for s in HTTPStatus}
_REASONS[405] = b"Not Allowed"  # Triton's phrase

#: Most bytes of request line and headers accepted; the body has its own limit (--http-max-input-size).
MAX_HEAD_BYTES = 64 * 1024

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


class HttpProtocol(asyncio.Protocol):
    """One client connection."""

    __slots__ = (
        "api", "max_body", "loop", "transport", "parser", "url", "headers", "body", "body_size",
        "queue", "busy", "closing", "tasks", "head_size", "refusal", "in_head", "shared",
    )

    def __init__(self, api: HttpApi, max_body: int, loop: asyncio.AbstractEventLoop) -> None:
        self.api = api
        self.max_body = max_body
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.headers: dict[str, str] = {}
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
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass

    def data_received(self, data: bytes) -> None:
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
        for task in self.tasks:
            task.cancel()

    # -- httptools callbacks --------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.url = b""
        self.headers = {}
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

    def on_headers_complete(self) -> None:
        self.in_head = False
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
        url = self.url
        if b"?" in url or b"#" in url or not url.startswith(b"/"):
            url = httptools.parse_url(url).path
        path = url.decode("utf-8", errors="replace")
        if self.shared is not None:
            body: bytes | memoryview = memoryview(self.shared)
            self.shared = None
        else:
            body = self.body[0] if len(self.body) == 1 else b"".join(self.body)
        raw_method = self.parser.get_method()
        method = _METHODS.get(raw_method) or raw_method.decode("ascii")
        request = HttpRequest(method, path, self.headers, body)
        self.queue.append((request, self.parser.should_keep_alive()))
        if not self.busy:
            self._next()

    # -- answering --------------------------------------------------------------------------------

    def _next(self) -> None:
        request, keep_alive = self.queue.popleft()
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
        self._write(request, response, keep_alive)

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
        if not keep_alive:
            self.closing = True
            transport.close()
        elif self.queue:
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


class HttpListener:
    """Serves one API object (anything with ``async handle(HttpRequest) -> HttpResponse``) on a port.

    The inference API and the metrics endpoint both use it, so there is one HTTP/1.1 implementation.
    """

    def __init__(self, api: HttpApi, host: str, port: int, max_body: int, name: str, reuse_port: bool = False) -> None:
        self.api = api
        self.host, self.requested_port, self.max_body = host, port, max_body
        self.name = name
        self.reuse_port = reuse_port
        self._server: asyncio.base_events.Server | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        api, limit = self.api, self.max_body

        def factory() -> HttpProtocol:
            return HttpProtocol(api, limit, loop)

        self._server = await loop.create_server(
            factory, host=self.host, port=self.requested_port, reuse_port=self.reuse_port or None, backlog=1024
        )
        log.info("started %s at %s:%d", self.name, self.host, self.port)

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None


class HttpFrontend(HttpListener):
    """Serves the KServe v2 API (:class:`HttpApi`) on ``--http-address``:``--http-port``."""

    def __init__(self, server, options: ServerOptions) -> None:  # type: ignore[no-untyped-def]
        super().__init__(
            HttpApi(server, options.http_max_input_size, options.http_restricted_apis),
            options.http_address,
            options.http_port,
            options.http_max_input_size,
            "HTTPService",
            options.reuse_http_port,
        )
