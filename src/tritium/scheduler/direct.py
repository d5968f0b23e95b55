"""Triton's default scheduler: each request runs alone on the first free instance.

Requests wait in one FIFO queue when every instance is busy.  Everything here
runs on the event loop; only ``execute`` runs on the instance workers.

Dispatch happens in its own event-loop callback, scheduled once when work
arrives: requests that arrive in the same turn of the loop (several connections'
data read in one poll) wait for each other, so the dynamic batcher can join them
even when an instance is free, at the cost of one ``call_soon``.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Sequence

from tritium.core.errors import TritiumError, UnavailableError
from tritium.core.inference import InferenceRequest, InferenceResponse

from .base import Scheduler
from .workers import InstanceWorker


class DirectScheduler(Scheduler):
    def __init__(self, workers: Sequence[InstanceWorker], loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._dispatch_scheduled = False
        self._workers = list(workers)
        self._idle: deque[InstanceWorker] = deque(self._workers)
        self._pending: deque[tuple[InferenceRequest, asyncio.Future[InferenceResponse]]] = deque()
        self._in_flight = 0
        self._drained: asyncio.Event | None = None
        self._closed = False

    async def infer(self, request: InferenceRequest) -> InferenceResponse:
        if self._closed:
            raise UnavailableError("model is being unloaded")
        future: asyncio.Future[InferenceResponse] = asyncio.get_running_loop().create_future()
        self._in_flight += 1
        self._pending.append((request, future))
        if self._idle:
            self._schedule_dispatch()
        return await future

    def _schedule_dispatch(self) -> None:
        if not self._dispatch_scheduled:
            self._dispatch_scheduled = True
            self._loop.call_soon(self._dispatch)

    def _next_batch(self) -> list[tuple[InferenceRequest, asyncio.Future[InferenceResponse]]]:
        """The next batch to run; one request here, more in the dynamic batcher."""
        return [self._pending.popleft()]

    def _dispatch(self) -> None:
        self._dispatch_scheduled = False
        while self._idle and self._pending:
            entries = []
            for request, future in self._next_batch():
                if future.cancelled():  # the client went away while it waited
                    self._in_flight -= 1
                else:
                    entries.append((request, future))
            if not entries:
                self._maybe_drained()
                continue
            worker = self._idle.popleft()
            futures = [f for _, f in entries]
            worker.submit([r for r, _ in entries], self._make_done(worker, futures))

    def _make_done(self, worker: InstanceWorker, futures: list[asyncio.Future[InferenceResponse]]):  # type: ignore[no-untyped-def]
        def done(
            batch: Sequence[InferenceRequest],
            responses: list[InferenceResponse] | None,
            error: TritiumError | None,
        ) -> None:
            for i, future in enumerate(futures):
                if future.done():
                    continue
                if responses is not None:
                    future.set_result(responses[i])
                else:
                    future.set_exception(error or UnavailableError("execution failed"))
            self._in_flight -= len(futures)
            self._idle.append(worker)
            if self._pending:
                self._schedule_dispatch()
            self._maybe_drained()

        return done

    def _maybe_drained(self) -> None:
        if self._in_flight == 0 and self._drained is not None:
            self._drained.set()

    async def drain(self) -> None:
        while self._in_flight > 0:
            self._drained = asyncio.Event()
            await self._drained.wait()

    def close(self) -> None:
        self._closed = True
        for worker in self._workers:
            worker.stop()
