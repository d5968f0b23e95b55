"""What every scheduler offers the core: take one validated request, return its response."""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod

from tritium.core.inference import InferenceRequest, InferenceResponse
from tritium.core.stats import ModelStats


class Scheduler(ABC):
    """Queues requests for a model's instances and resolves each with its response."""

    #: The model version's counters, recorded by the scheduler (the statistics extension and metrics read them).
    stats: ModelStats

    @abstractmethod
    async def infer(self, request: InferenceRequest) -> InferenceResponse:
        """Run one validated request; raise a TritiumError on failure."""

    @abstractmethod
    async def drain(self) -> None:
        """Wait until no request is queued or executing (used before unloading)."""

    @abstractmethod
    def close(self) -> None:
        """Stop the workers; the instances are finalized by their owner."""

    def pending_count(self) -> int:
        """Requests accepted but not executing yet (``nv_inference_pending_request_count``)."""
        return 0


class InFlightScheduler(Scheduler):
    """A scheduler that counts the requests it holds (queued or executing) in ``_in_flight`` and those
    executing in ``_executing``, so that unloading can wait for them (subclasses call :meth:`_maybe_drained`
    when the count drops) and metrics can tell how many wait."""

    _in_flight: int = 0
    _executing: int = 0
    _drained: asyncio.Event | None = None

    def pending_count(self) -> int:
        return self._in_flight - self._executing

    def _maybe_drained(self) -> None:
        if self._in_flight == 0 and self._drained is not None:
            self._drained.set()

    async def drain(self) -> None:
        while self._in_flight > 0:
            self._drained = asyncio.Event()
            await self._drained.wait()
