"""The per-call context handed to :class:`~tritium.frontends.grpc.server.GrpcApi`'s handlers: the part of
``grpc.aio.ServicerContext`` they (and ``_restricted``) use, so the same handlers serve both transports."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

import grpc
from grpc.aio import AbortError

log = logging.getLogger(__name__)

Metadata = tuple[tuple[str, str | bytes], ...]


class NativeContext:
    """What a handler may ask of its call: metadata, deadline, peer, cancellation; how it ends it
    (``abort`` raises ``grpc.aio.AbortError``, which the transport turns into the status)."""

    __slots__ = ("_stream", "_conn", "_cancelled", "_deadline", "_metadata", "code", "details", "trailing",
                 "_callbacks")

    def __init__(self, stream: Any, metadata: Metadata) -> None:
        """``stream``: its ``connection.Stream`` (typed loosely: connection.py imports this module), until the
        call ends: then what the context still answers is kept here, so that the stream and its context
        (which reference each other) are freed by reference counting, not left to the cycle collector."""
        self._stream = stream
        self._conn = stream.conn
        self._cancelled = False
        self._deadline: float | None = None
        self._metadata = metadata
        self.code: grpc.StatusCode = grpc.StatusCode.OK
        self.details = ""
        self.trailing: Sequence[tuple[str, str | bytes]] = ()
        self._callbacks: list[Callable[[Any], None]] | None = None

    def invocation_metadata(self) -> Metadata:
        return self._metadata

    async def abort(self, code: grpc.StatusCode, details: str = "",
                    trailing_metadata: Sequence[tuple[str, str | bytes]] = ()) -> NoReturn:
        if code == grpc.StatusCode.OK:  # as grpc.aio: aborting with OK is a usage error, reported as UNKNOWN
            code = grpc.StatusCode.UNKNOWN
        self.code, self.details = code, details
        if trailing_metadata:
            self.trailing = tuple(trailing_metadata)
        raise AbortError()

    def set_code(self, code: grpc.StatusCode) -> None:
        self.code = code

    def set_details(self, details: str) -> None:
        self.details = details

    def set_trailing_metadata(self, metadata: Sequence[tuple[str, str | bytes]]) -> None:
        self.trailing = tuple(metadata)

    def trailing_metadata(self) -> Sequence[tuple[str, str | bytes]]:
        return self.trailing

    async def send_initial_metadata(self, metadata: Sequence[tuple[str, str | bytes]]) -> None:
        """Accepted for compatibility; the response headers carry no custom metadata."""

    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        """``callback(self)`` once the call is over (its answer written, or the call cancelled)."""
        if self._callbacks is None:
            self._callbacks = []
        self._callbacks.append(callback)

    def _done(self) -> None:
        stream = self._stream
        if stream is not None:
            self._cancelled, self._deadline, self._stream = stream.cancelled, stream.deadline, None
        callbacks, self._callbacks = self._callbacks, None
        for callback in callbacks or ():
            try:
                callback(self)
            except Exception:  # noqa: BLE001 - a callback's failure must not break the connection
                log.exception("a gRPC call's done callback failed")

    def cancelled(self) -> bool:
        stream = self._stream
        return self._cancelled if stream is None else stream.cancelled

    def done(self) -> bool:
        stream = self._stream
        return True if stream is None else stream.finished

    def time_remaining(self) -> float | None:
        stream = self._stream
        deadline = self._deadline if stream is None else stream.deadline
        if deadline is None:
            return None
        return max(0.0, deadline - asyncio.get_running_loop().time())

    def peer(self) -> str:
        return self._conn.peer

    def auth_context(self) -> dict[str, list[bytes]]:
        return self._conn.auth

    def disable_next_message_compression(self) -> None:
        """Accepted for compatibility (responses are compressed per the server's flag)."""
