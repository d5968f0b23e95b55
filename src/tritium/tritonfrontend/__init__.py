"""Network endpoints for an in-process server, with the API of Triton's ``tritonfrontend`` package.

::

    import tritium.tritonserver as tritonserver
    from tritium.tritonfrontend import KServeGrpc, KServeHttp, Metrics

    server = tritonserver.Server(model_repository="models").start(wait_until_ready=True)
    with KServeHttp(server, KServeHttp.Options(port=8000)), KServeGrpc(server, KServeGrpc.Options(port=8001)):
        ...  # tritonclient reaches the same models the program calls in process

Each endpoint is tritium's own frontend, started on the server's private event loop over the same core as the
in-process calls; ``stop()`` (or leaving the ``with`` block, or ``Server.stop()``) closes it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from tritium.app import Frontend
from tritium.core.errors import InvalidArgumentError
from tritium.tritonserver import Server


class _Endpoint:
    """An endpoint over a started in-process server; start/stop, or use it as a context manager."""

    def __init__(self, server: Server, settings: dict[str, Any]) -> None:
        handle = server._handle()
        if handle is None:
            raise InvalidArgumentError("Server not started")
        self._handle = handle
        self._settings = settings
        self._frontend: Frontend | None = None

    def _make(self, core: Any, options: Any) -> Frontend:
        raise NotImplementedError

    def start(self) -> None:
        if self._frontend is not None:
            raise InvalidArgumentError(f"{type(self).__name__} is already started")
        self._frontend = self._handle.runtime.open_frontend(self._make, **self._settings)

    def stop(self) -> None:
        frontend, self._frontend = self._frontend, None
        if frontend is not None:
            self._handle.runtime.close_frontend(frontend)

    def __enter__(self) -> _Endpoint:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _port(port: int) -> int:
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise InvalidArgumentError(f"port must be an integer in [0, 65535], got {port!r}")
    return port


def _pattern(pattern: str) -> str:
    """A header forwarding pattern, refused here (as the flag is at start) when it is not a regular expression."""
    try:
        re.compile(pattern)
    except re.error as e:
        raise InvalidArgumentError(f"header forward pattern {pattern!r} is not a regular expression: {e}") from None
    return pattern


class KServeHttp(_Endpoint):
    """The KServe v2 HTTP/REST endpoint (with Triton's extensions)."""

    @dataclass
    class Options:
        address: str = "0.0.0.0"
        port: int = 8000
        reuse_port: bool = False
        #: Accepted for compatibility: tritium's HTTP server is one event loop, not a thread pool.
        thread_count: int = 8
        header_forward_pattern: str = ""
        restricted_features: list[Any] = field(default_factory=list)

    def __init__(self, server: Server, options: KServeHttp.Options | None = None) -> None:
        options = options or KServeHttp.Options()
        if options.restricted_features:
            raise InvalidArgumentError("restricted_features are not supported here; use tritium's "
                                       "--http-restricted-api on the command line")
        super().__init__(server, {"allow_http": True, "http_address": options.address,
                                  "http_port": _port(options.port), "reuse_http_port": options.reuse_port,
                                  "http_header_forward_pattern": _pattern(options.header_forward_pattern)})

    def _make(self, core: Any, options: Any) -> Frontend:
        from tritium.frontends.http.listener import HttpFrontend

        return HttpFrontend(core, options)


class KServeGrpc(_Endpoint):
    """The KServe v2 gRPC endpoint (with Triton's extensions)."""

    @dataclass
    class Options:
        address: str = "0.0.0.0"
        port: int = 8001
        reuse_port: bool = False
        use_ssl: bool = False
        server_cert: str = ""
        server_key: str = ""
        root_cert: str = ""
        use_ssl_mutual: bool = False
        keepalive_time_ms: int = 7_200_000
        keepalive_timeout_ms: int = 20_000
        keepalive_permit_without_calls: bool = False
        http2_max_pings_without_data: int = 2
        http2_min_recv_ping_interval_without_data_ms: int = 300_000
        http2_max_ping_strikes: int = 2
        max_connection_age_ms: int = 0
        max_connection_age_grace_ms: int = 0
        infer_compression_level: str = "none"
        #: Accepted for compatibility (a Triton allocation pool; tritium has none).
        infer_allocation_pool_size: int = 8
        forward_header_pattern: str = ""
        restricted_features: list[Any] = field(default_factory=list)

    def __init__(self, server: Server, options: KServeGrpc.Options | None = None) -> None:
        o = options or KServeGrpc.Options()
        if o.restricted_features:
            raise InvalidArgumentError("restricted_features are not supported here; use tritium's "
                                       "--grpc-restricted-protocol on the command line")
        level = getattr(o.infer_compression_level, "name", o.infer_compression_level)
        super().__init__(server, {
            "allow_grpc": True, "grpc_address": o.address, "grpc_port": _port(o.port),
            "reuse_grpc_port": o.reuse_port, "grpc_use_ssl": o.use_ssl, "grpc_use_ssl_mutual": o.use_ssl_mutual,
            "grpc_server_cert": o.server_cert, "grpc_server_key": o.server_key, "grpc_root_cert": o.root_cert,
            "grpc_keepalive_time": o.keepalive_time_ms, "grpc_keepalive_timeout": o.keepalive_timeout_ms,
            "grpc_keepalive_permit_without_calls": o.keepalive_permit_without_calls,
            "grpc_http2_max_pings_without_data": o.http2_max_pings_without_data,
            "grpc_http2_min_recv_ping_interval_without_data": o.http2_min_recv_ping_interval_without_data_ms,
            "grpc_http2_max_ping_strikes": o.http2_max_ping_strikes,
            "grpc_max_connection_age": o.max_connection_age_ms or None,
            "grpc_max_connection_age_grace": o.max_connection_age_grace_ms or None,
            "grpc_infer_response_compression_level": str(level).lower(),
            "grpc_header_forward_pattern": _pattern(o.forward_header_pattern),
        })

    def _make(self, core: Any, options: Any) -> Frontend:
        from tritium.frontends.grpc.listener import GrpcFrontend

        return GrpcFrontend(core, options)


class Metrics(_Endpoint):
    """The Prometheus metrics endpoint (``GET /metrics``)."""

    @dataclass
    class Options:
        address: str = "0.0.0.0"
        port: int = 8002
        #: Accepted for compatibility.
        thread_count: int = 1

    def __init__(self, server: Server, options: Metrics.Options | None = None) -> None:
        options = options or Metrics.Options()
        super().__init__(server, {"allow_metrics": True, "metrics_address": options.address,
                                  "metrics_port": _port(options.port)})

    def _make(self, core: Any, options: Any) -> Frontend:
        from tritium.frontends.metrics import MetricsFrontend

        return MetricsFrontend(core, options)


__all__ = ["KServeGrpc", "KServeHttp", "Metrics"]
