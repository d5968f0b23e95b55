"""Responses that arrive over time: the channel between a decoupled model and a frontend.

A decoupled model (``model_transaction_policy { decoupled: true }``) sends zero,
one or many responses per request, from whatever thread or process runs it,
ending with a final flag.  The backend calls :meth:`ResponseStream.send`
(thread-safe); the frontend iterates the stream on the event loop and gets
each response as soon as it is sent, not when the request completes.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
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

    def send(self, response: InferenceResponse | None, final: bool = False) -> None:
        """Deliver a response (or only the final flag, with ``response=None``); callable from any thread."""
        self._put(StreamItem(response, final))

    def fail(self, error: TritiumError) -> None:
        """End the stream with an error; callable from any thread."""
        self._put(StreamItem(None, True, error))

    def _put(self, item: StreamItem) -> None:
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            pass

    async def items(self) -> AsyncIterator[StreamItem]:
        """Every event until the final one (inclusive); an error item is always final."""
        while not self._finished:
            item = await self._queue.get()
            if item.final or item.error is not None:
                self._finished = True
            yield item
