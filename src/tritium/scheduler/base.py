"""What every scheduler offers the core: take one validated request, return its response."""

from __future__ import annotations

from abc import ABC, abstractmethod

from tritium.core.inference import InferenceRequest, InferenceResponse


class Scheduler(ABC):
    """Queues requests for a model's instances and resolves each with its response."""

    @abstractmethod
    async def infer(self, request: InferenceRequest) -> InferenceResponse:
        """Run one validated request; raise a TritiumError on failure."""

    @abstractmethod
    async def drain(self) -> None:
        """Wait until no request is queued or executing (used before unloading)."""

    @abstractmethod
    def close(self) -> None:
        """Stop the workers; the instances are finalized by their owner."""
