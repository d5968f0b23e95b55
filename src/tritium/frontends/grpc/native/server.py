"""The native gRPC listener (``--grpc-transport=native``): a port, its connections and their bounds, serving
the same ``grpc.GenericRpcHandler`` objects grpc.aio would (``GrpcApi.handlers()``)."""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import Any, NamedTuple

import grpc

from tritium.options import ServerOptions

from .config import NativeConfig
from .connection import GrpcConnection

log = logging.getLogger(__name__)

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
