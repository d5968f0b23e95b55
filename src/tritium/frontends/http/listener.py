"""The HTTP listeners: :class:`HttpListener` (a port, its connections and their bounds) and the inference
endpoint :class:`HttpFrontend` on it; the metrics endpoint uses the same listener."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict

from tritium.api import InferenceAPI
from tritium.frontends.limits import METRICS_MAX_CONNECTIONS, MIN_RESERVE, default_http_connections, descriptor_limit
from tritium.options import ServerOptions

from .routes import HttpApi
from .server import ConnectionLimits, HttpProtocol

log = logging.getLogger(__name__)


class HttpListener:
    """Serves one API object (anything with ``async handle(HttpRequest) -> HttpResponse``) on a port.

    The inference API and the metrics endpoint both use it, so there is one HTTP/1.1 implementation, and
    both are bounded by ``limits``.  It keeps its connections least recently active first: at
    ``max_connections`` a new client is admitted by closing the longest-idle one (or, when none is idle,
    the oldest whose request head is still arriving); when every connection is being answered, the new
    one gets 503 and is closed.  So clients can hold neither the port nor the process's descriptors, and
    the listener never stops accepting.
    """

    def __init__(self, api: HttpApi, host: str, port: int, max_body: int, name: str, reuse_port: bool = False,
                 limits: ConnectionLimits | None = None) -> None:
        self.api = api
        self.host, self.requested_port, self.max_body = host, port, max_body
        self.name = name
        self.reuse_port = reuse_port
        self.limits = limits or ConnectionLimits()
        self.max_connections = self.limits.max_connections or default_http_connections()
        #: Open connections, least recently active first (``HttpProtocol.on_message_begin`` moves to the end).
        self.connections: OrderedDict[HttpProtocol, None] = OrderedDict()
        #: Stopping: answer what is in progress with ``Connection: close``, then close.
        self.draining = False
        self._all_closed: asyncio.Event | None = None
        self._server: asyncio.base_events.Server | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        self._warned = 0.0
        shortest = min(self.limits.header_timeout, self.limits.body_timeout, self.limits.send_timeout,
                       self.limits.idle_timeout)
        #: Seconds between sweeps: a timeout acts between its value and its value plus this.
        self.tick = min(1.0, max(0.05, shortest / 4))

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        api, limit = self.api, self.max_body

        def factory() -> HttpProtocol:
            return HttpProtocol(api, limit, loop, self)

        self._server = await loop.create_server(
            factory, host=self.host, port=self.requested_port, reuse_port=self.reuse_port or None, backlog=1024
        )
        self._sweeper = loop.call_later(self.tick, self._sweep)
        log.info("started %s at %s:%d", self.name, self.host, self.port)
        available = descriptor_limit() - MIN_RESERVE
        if self.max_connections > available:
            log.warning("%s: %d connections allowed, but only about %d descriptors are free for connections "
                        "(RLIMIT_NOFILE %d): clients could leave none for models", self.name,
                        self.max_connections, available, descriptor_limit())

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    # -- connections ------------------------------------------------------------------------------

    def admit(self, conn: HttpProtocol) -> None:
        """A new connection: make room for it at the limit."""
        connections = self.connections
        connections[conn] = None
        if self.draining:
            self._drop(conn)
            conn.close()
            return
        if len(connections) <= self.max_connections:
            return
        victim = None
        for other in connections:  # least recently active first
            if other is conn:
                break
            if other.idle():
                victim = other
                break
            if victim is None and other.in_head and not other.busy:
                victim = other  # a head still arriving, if nothing is idle (slow clients go first)
        if victim is not None:
            self._drop(victim)
            victim.close()
            return
        now = time.monotonic()
        if now - self._warned > 10:  # once in a while: under a flood this happens at every accept
            self._warned = now
            log.warning("%s: all %d connections are busy; refusing new ones", self.name, self.max_connections)
        self._drop(conn)
        conn._fail(503, f"the server is at its connection limit ({self.max_connections} connections, all busy)")

    def _drop(self, conn: HttpProtocol) -> None:
        """Stop counting a connection that is being closed (its descriptor goes with the close)."""
        self.connections.pop(conn, None)
        if self._all_closed is not None and not self.connections:
            self._all_closed.set()

    def forget(self, conn: HttpProtocol) -> None:
        self._drop(conn)

    def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        limits = self.limits
        for conn in list(self.connections):
            conn.check(now, limits)
        self._sweeper = loop.call_at(now + self.tick, self._sweep)

    async def stop(self) -> None:
        """Stop accepting, close idle connections at once, let those being answered finish (the caller
        bounds this by --exit-timeout-secs; whatever is still open then is cut)."""
        if self._server is None:
            return
        self._server.close()
        self.draining = True
        self._all_closed = asyncio.Event()
        try:
            for conn in list(self.connections):
                if conn.idle() or (conn.in_head and not conn.busy and not conn.queue):
                    self._drop(conn)
                    conn.close()
            if self.connections:
                await self._all_closed.wait()
            await self._server.wait_closed()
        finally:
            for conn in list(self.connections):
                self._drop(conn)
                if conn.transport is not None:
                    conn.transport.abort()
            if self._sweeper is not None:
                self._sweeper.cancel()
                self._sweeper = None
            self._server = None


class HttpFrontend(HttpListener):
    """Serves the KServe v2 API (:class:`HttpApi`) on ``--http-address``:``--http-port``."""

    def __init__(self, api: InferenceAPI, options: ServerOptions) -> None:
        super().__init__(
            HttpApi(api, options.http_max_input_size, options.http_restricted_apis,
                    options.http_header_forward_pattern),
            options.http_address,
            options.http_port,
            options.http_max_input_size,
            "HTTPService",
            options.reuse_http_port,
            ConnectionLimits.from_options(options, options.http_max_connections or default_http_connections()),
        )


def metrics_limits(options: ServerOptions) -> ConnectionLimits:
    """The metrics endpoint: the same timeouts, a few connections (a scraper needs one)."""
    return ConnectionLimits.from_options(options, METRICS_MAX_CONNECTIONS)
