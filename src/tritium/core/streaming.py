"""Responses that arrive over time: the channel between a decoupled model and a frontend.

A decoupled model (``model_transaction_policy { decoupled: true }``) sends zero,
one or many responses per request, from whatever thread or process runs it,
ending with a final flag.  The backend calls :meth:`ResponseStream.send`
(thread-safe); the frontend iterates the stream on the event loop and gets
each response as soon as it is sent, not when the request completes.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from .errors import TritiumError
from .inference import InferenceResponse


@dataclass(slots=True)
class StreamItem:
    """One event of a stream: a response, a final flag, or an error (which ends the stream)."""

    response: InferenceResponse | None
    final: bool
    error: TritiumError | None = None


class ResponseStream:
    """An async iterator of one request's responses, fed from any thread."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._queue: asyncio.Queue[StreamItem] = asyncio.Queue()
        self._finished = False
        #: Called (on the loop) when the consumer goes away before the final item: the client cancelled.
        self._on_cancel: list[Callable[[], None]] = []
        self.cancelled = False

    def on_cancel(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` on the loop if the consumer stops before the final item (a cancelled request)."""
        self._on_cancel.append(callback)

    def send(self, response: InferenceResponse | None, final: bool = False) -> None:
        """Deliver a response (or only the final flag, with ``response=None``); callable from any thread."""
        self._put(StreamItem(response, final))

    def fail(self, error: TritiumError, final: bool = True) -> None:
        """Deliver an error; it ends the stream unless ``final`` is False (a decoupled model may send an
        error response and go on, as in Triton); callable from any thread."""
        self._put(StreamItem(None, final, error))

    def _put(self, item: StreamItem) -> None:
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            pass

    async def items(self) -> AsyncIterator[StreamItem]:
        """Every event until the final one (inclusive)."""
        try:
            while not self._finished:
                item = await self._queue.get()
                if item.final:
                    self._finished = True
                yield item
        finally:
            if not self._finished and not self.cancelled:
                self.cancelled = True
                for callback in self._on_cancel:
                    callback()
