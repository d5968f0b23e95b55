"""The gRPC listener: ``grpc.aio`` serving :class:`~.server.GrpcApi` with the options' channel settings,
keepalive, bounds and TLS."""

from __future__ import annotations

import logging
from typing import Any

import grpc

from tritium.api import InferenceAPI
from tritium.frontends.limits import default_grpc_connections
from tritium.frontends.restrictions import GRPC_HEADER_PREFIX
from tritium.options import ServerOptions

from .server import GrpcApi

log = logging.getLogger(__name__)

#: ``--grpc-infer-response-compression-level`` → gRPC's compression levels (``grpc_compression_level``).
COMPRESSION_LEVELS = {"none": 0, "low": 1, "medium": 2, "high": 3}


def server_options(options: ServerOptions) -> list[tuple[str, Any]]:
    """gRPC channel arguments from tritonserver's flags."""
    args: list[tuple[str, Any]] = [
        ("grpc.max_receive_message_length", options.grpc_max_input_size),
        ("grpc.max_send_message_length", -1),
        ("grpc.so_reuseport", 1 if options.reuse_grpc_port else 0),
        ("grpc.keepalive_time_ms", options.grpc_keepalive_time),
        ("grpc.keepalive_timeout_ms", options.grpc_keepalive_timeout),
        ("grpc.keepalive_permit_without_calls", 1 if options.grpc_keepalive_permit_without_calls else 0),
        ("grpc.http2.max_pings_without_data", options.grpc_http2_max_pings_without_data),
        ("grpc.http2.min_ping_interval_without_data_ms", options.grpc_http2_min_recv_ping_interval_without_data),
        ("grpc.http2.max_ping_strikes", options.grpc_http2_max_ping_strikes),
        # what one client may hold: streams per connection, connections (beyond: accepted and closed at once,
        # so the process keeps descriptors for models and HTTP; see frontends.limits)
        ("grpc.max_concurrent_streams", options.grpc_max_concurrent_streams),
        ("grpc.max_allowed_incoming_connections", options.grpc_max_connections or default_grpc_connections()),
    ]
    if options.grpc_max_connection_idle is not None:
        args.append(("grpc.max_connection_idle_ms", options.grpc_max_connection_idle))
    if options.grpc_max_connection_age is not None:
        args.append(("grpc.max_connection_age_ms", options.grpc_max_connection_age))
    if options.grpc_max_connection_age_grace is not None:
        args.append(("grpc.max_connection_age_grace_ms", options.grpc_max_connection_age_grace))
    level = COMPRESSION_LEVELS[options.grpc_infer_response_compression_level]
    if level:
        args.append(("grpc.default_compression_level", level))
    return args


def _credentials(options: ServerOptions) -> grpc.ServerCredentials:
    def read(path: str) -> bytes:
        with open(path, "rb") as f:
            return f.read()

    root = read(options.grpc_root_cert) if options.grpc_root_cert else None
    return grpc.ssl_server_credentials(
        [(read(options.grpc_server_key), read(options.grpc_server_cert))],
        root_certificates=root,
        require_client_auth=options.grpc_use_ssl_mutual,
    )


class GrpcFrontend:
    """Serves :class:`GrpcApi` on ``--grpc-address``:``--grpc-port``."""

    def __init__(self, api: InferenceAPI, options: ServerOptions) -> None:
        self.api = GrpcApi(api, options.grpc_restricted_protocols, options.grpc_header_forward_pattern)
        self.options = options
        for key, _ in options.grpc_restricted_protocols.values():
            if key != key.lower():  # gRPC metadata keys are lower-case on the wire; Triton compares as configured
                log.warning("--grpc-restricted-protocol key '%s' has upper-case letters: no client can send the "
                            "metadata '%s%s', so its RPCs refuse every call (as in Triton)",
                            key, GRPC_HEADER_PREFIX, key)
        self._server: grpc.aio.Server | None = None
        self._native: Any = None  # native.server.NativeServer with --grpc-transport=native
        if options.grpc_transport == "native":  # imported now, so that start() only binds (HTTP is up by then)
            from .native import server as _native  # noqa: F401
        self.port = options.grpc_port

    async def start(self) -> None:
        options = self.options
        if options.grpc_transport == "native":
            await self._start_native()
            return
        server = grpc.aio.server(options=server_options(options),
                                 maximum_concurrent_rpcs=options.grpc_max_concurrent_rpcs)
        server.add_generic_rpc_handlers(self.api.handlers())
        address = f"{options.grpc_address}:{options.grpc_port}"
        if ":" in options.grpc_address and not options.grpc_address.startswith("["):
            address = f"[{options.grpc_address}]:{options.grpc_port}"
        try:
            if options.grpc_use_ssl or options.grpc_use_ssl_mutual:
                self.port = server.add_secure_port(address, _credentials(options))
            else:
                self.port = server.add_insecure_port(address)
        except RuntimeError as e:
            raise OSError(f"failed to listen for gRPC on {address}: {e}") from None
        if self.port == 0:
            raise OSError(f"failed to listen for gRPC on {address}")
        await server.start()
        self._server = server
        log.info("Started GRPCInferenceService at %s:%d", options.grpc_address, self.port)

    async def _start_native(self) -> None:
        from .native.config import NativeConfig
        from .native.server import NativeServer, ssl_context

        options = self.options
        context = ssl_context(options) if options.grpc_use_ssl or options.grpc_use_ssl_mutual else None
        server = NativeServer(self.api.handlers(), NativeConfig.from_options(
            options, options.grpc_max_connections or default_grpc_connections()))
        address = options.grpc_address.strip("[]")
        self.port = await server.start(address, options.grpc_port, context, options.reuse_grpc_port)
        self._native = server
        log.info("Started GRPCInferenceService at %s:%d (native transport)", options.grpc_address, self.port)

    async def stop(self) -> None:
        if self._native is not None:
            await self._native.stop(self.options.exit_timeout_secs)
            self._native = None
        if self._server is not None:
            await self._server.stop(grace=self.options.exit_timeout_secs)
            self._server = None
