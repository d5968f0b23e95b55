"""Candidate HTTP server stacks for tritium, all serving the same tiny app.

Every stack serves:
  POST /v2/models/identity/infer  (KServe v2 JSON, identity over a float32 tensor)
  GET  /v2/health/live            (200, empty body)
and 404 for anything else.

Run one stack in the foreground:
    python benchmarks/http_stacks/apps.py <stack> --port 8000
Granian (CLI mode) is started by run.py as ``python -m granian ... apps:rsgi_app``.
Single process, single event loop for every stack (granian additionally has its
own Rust I/O thread inside the same process).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import queue
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import orjson

INFER_PATH = "/v2/models/identity/infer"
LIVE_PATH = "/v2/health/live"
INFER_PATH_B = INFER_PATH.encode()
LIVE_PATH_B = LIVE_PATH.encode()

_loads = orjson.loads
_dumps = orjson.dumps
_OPT = orjson.OPT_SERIALIZE_NUMPY
_f32 = np.float32


# --------------------------------------------------------------------------
# Shared application logic (identical for every stack)
# --------------------------------------------------------------------------
def parse_request(body: bytes) -> np.ndarray:
    inp = _loads(body)["inputs"][0]
    return np.array(inp["data"], dtype=_f32).reshape(inp["shape"])


def model(arr: np.ndarray) -> np.ndarray:
    """The 'model': identity. In the thread-hop variants this runs on a worker thread."""
    return arr


def build_response(arr: np.ndarray) -> bytes:
    return _dumps(
        {
            "model_name": "identity",
            "model_version": "1",
            "outputs": [
                {
                    "name": "OUTPUT0",
                    "datatype": "FP32",
                    "shape": list(arr.shape),
                    "data": arr.ravel(),
                }
            ],
        },
        option=_OPT,
    )


def infer_bytes(body: bytes) -> bytes:
    return build_response(model(parse_request(body)))


ERROR_BODY = b'{"error":"bad request"}'


# --------------------------------------------------------------------------
# 1. Raw ASGI callable (uvicorn; also granian --interface asginl)
# --------------------------------------------------------------------------
_JSON_HDRS = b"content-type", b"application/json"


async def asgi_app(scope, receive, send):
    if scope["type"] != "http":
        if scope["type"] == "lifespan":  # minimal lifespan support
            while True:
                msg = await receive()
                if msg["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif msg["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        return
    path = scope["path"]
    method = scope["method"]
    if path == INFER_PATH and method == "POST":
        msg = await receive()
        body = msg.get("body", b"")
        if msg.get("more_body", False):
            parts = [body]
            while msg.get("more_body", False):
                msg = await receive()
                parts.append(msg.get("body", b""))
            body = b"".join(parts)
        try:
            out = infer_bytes(body)
            status = 200
        except Exception:
            out, status = ERROR_BODY, 400
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [_JSON_HDRS, (b"content-length", b"%d" % len(out))],
            }
        )
        await send({"type": "http.response.body", "body": out})
        return
    status = 200 if (path == LIVE_PATH and method == "GET") else 404
    await send({"type": "http.response.start", "status": status, "headers": [(b"content-length", b"0")]})
    await send({"type": "http.response.body", "body": b""})


def serve_uvicorn(host: str, port: int) -> None:
    import uvicorn

    uvicorn.run(
        asgi_app,
        host=host,
        port=port,
        loop="uvloop",
        http="httptools",
        ws="none",
        lifespan="off",
        access_log=False,
        log_level="warning",
        server_header=False,
        date_header=False,
    )


# --------------------------------------------------------------------------
# 2. Granian RSGI callable
# --------------------------------------------------------------------------
_RSGI_JSON = [("content-type", "application/json")]


async def rsgi_app(scope, proto):
    if scope.proto != "http":
        return
    path = scope.path
    method = scope.method
    if path == INFER_PATH and method == "POST":
        body = await proto()
        try:
            proto.response_bytes(200, _RSGI_JSON, infer_bytes(body))
        except Exception:
            proto.response_bytes(400, _RSGI_JSON, ERROR_BODY)
        return
    proto.response_empty(200 if (path == LIVE_PATH and method == "GET") else 404, [])


def serve_granian_embed(host: str, port: int, interface: str = "rsgi") -> None:
    """Granian's experimental *embedded* server: runs inside our own uvloop loop."""
    import uvloop
    from granian.constants import HTTPModes, Interfaces
    from granian.server.embed import Server

    iface = {"rsgi": Interfaces.RSGI, "asginl": Interfaces.ASGINL}[interface]
    target = rsgi_app if interface == "rsgi" else asgi_app
    server = Server(
        target,
        address=host,
        port=port,
        interface=iface,
        runtime_threads=1,
        http=HTTPModes.http1,
        websockets=False,
        log_enabled=False,
    )
    uvloop.run(server.serve())


# --------------------------------------------------------------------------
# 3. Hand-written asyncio.Protocol + httptools.HttpRequestParser on uvloop
# --------------------------------------------------------------------------
_STATUS = {200: b"200 OK", 400: b"400 Bad Request", 404: b"404 Not Found", 500: b"500 Internal Server Error"}


def _response(status: int, body: bytes, content_type: bytes | None, keep_alive: bool) -> bytes:
    head = b"HTTP/1.1 %s\r\n" % _STATUS[status]
    if content_type is not None:
        head += b"Content-Type: " + content_type + b"\r\n"
    if not keep_alive:
        head += b"Connection: close\r\n"
    return head + b"Content-Length: %d\r\n\r\n" % len(body) + body


_LIVE_OK = _response(200, b"", None, True)
_NOT_FOUND = _response(404, b"", None, True)


class _Worker:
    """Dedicated model thread fed by a SimpleQueue; results via call_soon_threadsafe.

    coalesce=True: only one call_soon_threadsafe (one loop wake-up) is pending at a
    time; completed results are pushed on a deque and drained in a batch.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, coalesce: bool) -> None:
        self.loop = loop
        self.q: queue.SimpleQueue = queue.SimpleQueue()
        self.done: collections.deque = collections.deque()
        self.scheduled = False
        target = self._run_coalesced if coalesce else self._run
        threading.Thread(target=target, name="model-worker", daemon=True).start()

    def submit(self, fn, arg, cb) -> None:
        self.q.put((fn, arg, cb))

    def _run(self) -> None:
        get = self.q.get
        call = self.loop.call_soon_threadsafe
        while True:
            fn, arg, cb = get()
            try:
                r = fn(arg)
            except BaseException as e:  # noqa: BLE001
                call(cb, None, e)
            else:
                call(cb, r, None)

    def _run_coalesced(self) -> None:
        get = self.q.get
        call = self.loop.call_soon_threadsafe
        done = self.done
        while True:
            fn, arg, cb = get()
            try:
                item = (cb, fn(arg), None)
            except BaseException as e:  # noqa: BLE001
                item = (cb, None, e)
            done.append(item)
            if not self.scheduled:
                self.scheduled = True
                call(self._drain)

    def _drain(self) -> None:
        self.scheduled = False  # set first: a result appended after this re-schedules
        done = self.done
        while done:
            cb, r, e = done.popleft()
            cb(r, e)


class HttpProtocol(asyncio.Protocol):
    """Minimal HTTP/1.1 server protocol.

    Handles keep-alive / Connection: close, Content-Length and chunked request
    bodies (httptools de-chunks), pipelining (responses are produced in request
    order: inline handling is synchronous and the hop variants use one FIFO
    worker), Expect: 100-continue, and write back-pressure.
    mode: "inline" | "executor" | "queue" | "queue-coalesced".
    """

    __slots__ = ("transport", "parser", "url", "body", "mode", "pool", "worker", "expect", "pending")

    def __init__(self, mode: str, pool=None, worker=None) -> None:
        self.mode = mode
        self.pool = pool
        self.worker = worker
        self.transport = None
        self.parser = None
        self.url = b""
        self.body = []
        self.expect = False
        # Responses not yet written, in request order: [bytes-or-None, keep_alive].
        # Only used once a request was handed to a worker thread (pipelining order).
        self.pending = collections.deque()

    # -- asyncio.Protocol
    def connection_made(self, transport) -> None:
        self.transport = transport
        self.parser = _httptools.HttpRequestParser(self)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except _httptools.HttpParserUpgrade:
            self._send_final(_response(400, ERROR_BODY, b"application/json", False))
        except _httptools.HttpParserError:
            self._send_final(_response(400, ERROR_BODY, b"application/json", False))

    def connection_lost(self, exc) -> None:
        self.transport = None

    def pause_writing(self) -> None:
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.transport is not None:
            self.transport.resume_reading()

    # -- httptools callbacks
    def on_message_begin(self) -> None:
        self.url = b""
        self.body = []
        self.expect = False

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        # only Expect matters to us; lower() is cheap on short header names
        if len(name) == 6 and name.lower() == b"expect" and value.lower() == b"100-continue":
            self.expect = True

    def on_headers_complete(self) -> None:
        if self.expect and self.transport is not None:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        parser = self.parser
        keep_alive = parser.should_keep_alive()
        method = parser.get_method()
        url = self.url
        if b"?" in url:
            url = url.partition(b"?")[0]
        if url == INFER_PATH_B and method == b"POST":
            body = self.body[0] if len(self.body) == 1 else b"".join(self.body)
            mode = self.mode
            if mode == "inline":
                try:
                    out = infer_bytes(body)
                except Exception:
                    self._write(_response(400, ERROR_BODY, b"application/json", keep_alive), keep_alive)
                    return
                self._write(_response(200, out, b"application/json", keep_alive), keep_alive)
                return
            try:
                arr = parse_request(body)
            except Exception:
                self._write(_response(400, ERROR_BODY, b"application/json", keep_alive), keep_alive)
                return

            slot = [None, keep_alive]
            self.pending.append(slot)

            def done(result, exc, slot=slot):
                if exc is not None:
                    slot[0] = _response(500, ERROR_BODY, b"application/json", slot[1])
                else:
                    slot[0] = _response(200, build_response(result), b"application/json", slot[1])
                self._flush()

            if mode == "executor":
                fut = asyncio.get_running_loop().run_in_executor(self.pool, model, arr)
                fut.add_done_callback(lambda f: done(None, f.exception()) if f.exception() else done(f.result(), None))
            else:
                self.worker.submit(model, arr, done)
            return
        if url == LIVE_PATH_B and method == b"GET":
            self._write(_LIVE_OK if keep_alive else _response(200, b"", None, False), keep_alive)
        else:
            self._write(_NOT_FOUND if keep_alive else _response(404, b"", None, False), keep_alive)

    # -- helpers
    def _write(self, data: bytes, keep_alive: bool) -> None:
        if self.pending:  # an earlier request is still being processed: keep order
            self.pending.append([data, keep_alive])
            return
        t = self.transport
        if t is None or t.is_closing():
            return
        t.write(data)
        if not keep_alive:
            t.close()

    def _flush(self) -> None:
        pending = self.pending
        t = self.transport
        while pending and pending[0][0] is not None:
            data, keep_alive = pending.popleft()
            if t is None or t.is_closing():
                continue
            t.write(data)
            if not keep_alive:
                t.close()

    def _send_final(self, data: bytes) -> None:
        t = self.transport
        if t is not None and not t.is_closing():
            t.write(data)
            t.close()


_httptools = None


def serve_protocol(host: str, port: int, mode: str) -> None:
    global _httptools
    import httptools
    import uvloop

    _httptools = httptools

    async def main():
        loop = asyncio.get_running_loop()
        pool = ThreadPoolExecutor(1) if mode == "executor" else None
        worker = _Worker(loop, coalesce=(mode == "queue-coalesced")) if mode.startswith("queue") else None
        server = await loop.create_server(
            lambda: HttpProtocol(mode, pool, worker), host, port, reuse_address=True, backlog=1024
        )
        async with server:
            await server.serve_forever()

    uvloop.run(main())


# --------------------------------------------------------------------------
# 4. aiohttp low-level server (aiohttp.web.Server), on uvloop
# --------------------------------------------------------------------------
def serve_aiohttp(host: str, port: int) -> None:
    import uvloop
    from aiohttp import web

    async def handler(request):
        path = request.path
        method = request.method
        if path == INFER_PATH and method == "POST":
            body = await request.read()
            try:
                return web.Response(body=infer_bytes(body), content_type="application/json")
            except Exception:
                return web.Response(status=400, body=ERROR_BODY, content_type="application/json")
        if path == LIVE_PATH and method == "GET":
            return web.Response(status=200)
        return web.Response(status=404)

    async def main():
        loop = asyncio.get_running_loop()
        server = web.Server(handler, access_log=None)
        srv = await loop.create_server(server, host, port, reuse_address=True, backlog=1024)
        async with srv:
            await srv.serve_forever()

    uvloop.run(main())


# --------------------------------------------------------------------------
# 5. socketify (uWebSockets via cffi), sync handlers
# --------------------------------------------------------------------------
def serve_socketify(host: str, port: int) -> None:
    from socketify import App

    app = App()

    def infer(res, req):
        parts = []

        def on_data(res, chunk, is_end):
            if chunk:
                parts.append(chunk)
            if is_end:
                body = b"".join(parts)
                try:
                    out, status = infer_bytes(body), "200 OK"
                except Exception:
                    out, status = ERROR_BODY, "400 Bad Request"

                def write(res):
                    res.write_status(status)
                    res.write_header("Content-Type", "application/json")
                    res.end(out)

                res.cork(write)

        res.on_data(on_data)

    def live(res, req):
        res.end("")

    def not_found(res, req):
        res.write_status(404).end("")

    app.post(INFER_PATH, infer)
    app.get(LIVE_PATH, live)
    app.any("/*", not_found)
    app.listen({"port": port, "host": host}, lambda cfg: None)
    app.run()


STACKS = {
    "uvicorn": lambda h, p: serve_uvicorn(h, p),
    "protocol": lambda h, p: serve_protocol(h, p, "inline"),
    "protocol-executor": lambda h, p: serve_protocol(h, p, "executor"),
    "protocol-queue": lambda h, p: serve_protocol(h, p, "queue"),
    "protocol-queue-coalesced": lambda h, p: serve_protocol(h, p, "queue-coalesced"),
    "aiohttp": lambda h, p: serve_aiohttp(h, p),
    "socketify": lambda h, p: serve_socketify(h, p),
    "granian-embed-rsgi": lambda h, p: serve_granian_embed(h, p, "rsgi"),
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("stack", choices=sorted(STACKS))
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    a = ap.parse_args()
    STACKS[a.stack](a.host, a.port)


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    main()
