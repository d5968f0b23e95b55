"""The native transport's settings, from tritonserver's gRPC flags (seconds where the flags say ms)."""

from __future__ import annotations

from dataclasses import dataclass

from tritium.options import ServerOptions

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
