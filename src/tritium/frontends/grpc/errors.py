"""Triton's mapping of error status to gRPC status codes, applied once at the edge."""

from __future__ import annotations

import grpc

from tritium.core.errors import Status

GRPC_STATUS: dict[Status, grpc.StatusCode] = {
    Status.UNKNOWN: grpc.StatusCode.UNKNOWN,
    Status.INTERNAL: grpc.StatusCode.INTERNAL,
    Status.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    Status.INVALID_ARG: grpc.StatusCode.INVALID_ARGUMENT,
    Status.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    Status.UNSUPPORTED: grpc.StatusCode.UNIMPLEMENTED,
    Status.ALREADY_EXISTS: grpc.StatusCode.ALREADY_EXISTS,
    Status.CANCELLED: grpc.StatusCode.CANCELLED,
}


def grpc_status(status: Status) -> grpc.StatusCode:
    return GRPC_STATUS.get(status, grpc.StatusCode.UNKNOWN)
