"""The native gRPC listener (``--grpc-transport=native``): a port, its connections and their bounds, serving
the same ``grpc.GenericRpcHandler`` objects grpc.aio would (``GrpcApi.handlers()``)."""

from __future__ import annotations

import asyncio
import logging
import ssl
from dataclasses import dataclass
from typing import Any, NamedTuple

import grpc

from tritium.options import ServerOptions

from .connection import GrpcConnection

log = logging.getLogger(__name__)

#: ``--grpc-infer-response-compression-level`` → position in the client's accepted algorithms, ranked as
#: grpc ranks them (gzip, then deflate): low takes the first, medium the middle one, high the last.
_LEVELS = {"low": 0, "medium": 1, "high": 2}


@dataclass
class NativeConfig:
    """The flags a connection needs, in seconds where grpc's are in milliseconds."""

    max_streams: int = 256
    max_rpcs: int = 4096
    max_input: int = 2**31 - 1
    max_connections: int = 1024
    compression: str | None = None  # None | low | medium | high
    keepalive_time: float | None = 7200.0
    keepalive_timeout: float = 20.0
    permit_without_calls: bool = False
    min_ping_interval: float = 300.0
    max_ping_strikes: int = 2
    idle: float | None = 300.0
    age: float | None = None
    age_grace: float | None = None

    @classmethod
    def from_options(cls, options: ServerOptions, max_connections: int) -> NativeConfig:
        def seconds(ms: int | None) -> float | None:
            return None if ms is None else ms / 1000.0

        level = options.grpc_infer_response_compression_level
        return cls(
            max_streams=options.grpc_max_concurrent_streams,
            max_rpcs=options.grpc_max_concurrent_rpcs,
            max_input=options.grpc_max_input_size,
            max_connections=max_connections,
            compression=None if level == "none" else level,
            keepalive_time=seconds(options.grpc_keepalive_time) or None,
            keepalive_timeout=options.grpc_keepalive_timeout / 1000.0,
            permit_without_calls=options.grpc_keepalive_permit_without_calls,
            min_ping_interval=options.grpc_http2_min_recv_ping_interval_without_data / 1000.0,
            max_ping_strikes=options.grpc_http2_max_ping_strikes,
            idle=seconds(options.grpc_max_connection_idle),
            age=seconds(options.grpc_max_connection_age),
            age_grace=seconds(options.grpc_max_connection_age_grace),
        )

    def choose_compression(self, accept: str) -> str | None:
        """The response algorithm for a client accepting ``accept`` (grpc-accept-encoding), at our level."""
        if self.compression is None:
            return None
        offered = [a.strip() for a in accept.split(",")]
        ranked = [a for a in ("gzip", "deflate") if a in offered]
        if not ranked:
            return None
        position = _LEVELS[self.compression]
        return ranked[0] if position == 0 else ranked[len(ranked) // 2] if position == 1 else ranked[-1]


class _CallDetails(NamedTuple):
    """What ``GenericRpcHandler.service`` reads (grpc.HandlerCallDetails)."""

    method: str
    invocation_metadata: tuple[tuple[str, Any], ...]


def ssl_context(options: ServerOptions) -> ssl.SSLContext:
    """TLS as listener.py's ``_credentials``: the server's key and certificate; with ``--grpc-use-ssl-mutual``
    a client certificate signed by ``--grpc-root-cert`` is required; ALPN offers h2 only."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(options.grpc_server_cert, options.grpc_server_key)
    context.set_alpn_protocols(["h2"])
    if options.grpc_root_cert:
        context.load_verify_locations(options.grpc_root_cert)
        context.verify_mode = ssl.CERT_REQUIRED if options.grpc_use_ssl_mutual else ssl.CERT_OPTIONAL
    return context


class NativeServer:
    """The listening socket, its connections, and what they share (handlers, RPC count, bounds)."""

    def __init__(self, handlers: list[grpc.GenericRpcHandler], config: NativeConfig) -> None:
        self.handlers = handlers
        self.config = config
        self.loop = asyncio.get_running_loop()
        self.connections: set[GrpcConnection] = set()
        self.rpcs = 0
        self._methods: dict[str, grpc.RpcMethodHandler] = {}
        self._server: asyncio.base_events.Server | None = None
        self._all_closed: asyncio.Event | None = None

    def method(self, path: str) -> grpc.RpcMethodHandler | None:
        """The handler of ``/service/method`` (found ones remembered; unknown paths are not, to stay bounded)."""
        found = self._methods.get(path)
        if found is not None:
            return found
        details = _CallDetails(path, ())
        for handler in self.handlers:
            found = handler.service(details)
            if found is not None:
                self._methods[path] = found
                return found
        return None

    def admit(self, conn: GrpcConnection) -> bool:
        if self._all_closed is not None or len(self.connections) >= self.config.max_connections:
            return False
        self.connections.add(conn)
        return True

    def forget(self, conn: GrpcConnection) -> None:
        self.connections.discard(conn)
        if self._all_closed is not None and not self.connections:
            self._all_closed.set()

    async def start(self, host: str, port: int, context: ssl.SSLContext | None, reuse_port: bool) -> int:
        self._server = await self.loop.create_server(
            lambda: GrpcConnection(self), host=host or None, port=port, ssl=context,
            reuse_port=reuse_port or None, backlog=1024)
        return int(self._server.sockets[0].getsockname()[1])

    async def stop(self, grace: float) -> None:
        """GOAWAY to every connection, let calls in progress finish for up to ``grace`` seconds, then cut."""
        if self._server is None:
            return
        self._server.close()
        self._all_closed = asyncio.Event()
        for conn in list(self.connections):
            conn.goaway()
        if self.connections:
            try:
                await asyncio.wait_for(self._all_closed.wait(), grace)
            except asyncio.TimeoutError:
                log.warning("gRPC: %d connections still busy after %.0f s; closing them", len(self.connections), grace)
        for conn in list(self.connections):
            conn.abort()  # connection_lost follows, cancelling its calls
        await self._server.wait_closed()
        self._server = None
