"""Candidate gRPC transports as echo servers: one unary method that returns the request's bytes untouched.

What is left per call is the transport's own cost (HTTP/2, gRPC framing, the hand-off to Python), the floor
under any ModelInfer served on it.  Run by ``bench.py``; ``python echo_servers.py MODE PORT`` serves one.
"""

from __future__ import annotations

import asyncio
import sys
from concurrent import futures

import grpc

SERVICE, METHOD = "inference.GRPCInferenceService", "ModelInfer"


def _identity(data: bytes) -> bytes:
    return data


def _handlers(handler: object) -> list[grpc.GenericRpcHandler]:
    method = grpc.unary_unary_rpc_method_handler(handler, _identity, _identity)  # type: ignore[arg-type]
    return [grpc.method_handlers_generic_handler(SERVICE, {METHOD: method})]


def serve_aio(port: int, uvloop: bool) -> None:
    """grpc.aio on an asyncio loop (tritium's transport today), with or without uvloop."""
    if uvloop:
        import uvloop as _uvloop

        _uvloop.install()

    async def handler(request: bytes, context: object) -> bytes:
        return request

    async def main() -> None:
        server = grpc.aio.server()
        server.add_generic_rpc_handlers(_handlers(handler))
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        await server.wait_for_termination()

    asyncio.run(main())


def serve_sync(port: int, threads: int) -> None:
    """grpc's synchronous server: C-core polling thread, handlers on a thread pool."""

    def handler(request: bytes, context: object) -> bytes:
        return request

    server = grpc.server(futures.ThreadPoolExecutor(threads))
    server.add_generic_rpc_handlers(_handlers(handler))
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    server.wait_for_termination()


def serve_native(port: int, uvloop: bool) -> None:
    """tritium's own HTTP/2 server (``frontends/grpc/native``), the same generic handlers as grpc.aio gets."""
    if uvloop:
        import uvloop as _uvloop

        _uvloop.install()
    from tritium.frontends.grpc.native.config import NativeConfig
    from tritium.frontends.grpc.native.server import NativeServer

    async def handler(request: bytes, context: object) -> bytes:
        return request

    async def main() -> None:
        server = NativeServer(_handlers(handler), NativeConfig())
        await server.start("127.0.0.1", port, None, False)
        await asyncio.Event().wait()

    asyncio.run(main())


MODES = {
    "grpc.aio": lambda port: serve_aio(port, uvloop=False),
    "grpc.aio+uvloop": lambda port: serve_aio(port, uvloop=True),
    "grpc-sync-1-thread": lambda port: serve_sync(port, 1),
    "grpc-sync-4-threads": lambda port: serve_sync(port, 4),
    "native": lambda port: serve_native(port, uvloop=False),
    "native+uvloop": lambda port: serve_native(port, uvloop=True),
}

if __name__ == "__main__":
    MODES[sys.argv[1]](int(sys.argv[2]))
