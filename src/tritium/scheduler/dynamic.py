"""Triton's dynamic batcher, in its default form: when an instance frees up, it takes
as many queued requests as fit in ``max_batch_size`` and whose shapes can be joined.

Requests are taken in arrival order; the first request that cannot join the
batch (other shapes or other inputs) starts the next batch.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from tritium.core.inference import InferenceRequest, InferenceResponse

from .direct import DirectScheduler
from .workers import InstanceWorker


def _batch_key(request: InferenceRequest) -> tuple[tuple[str, tuple[int, ...]], ...]:
    """Requests with equal keys can be concatenated on the batch dimension."""
    return tuple(sorted((t.name, t.data.shape[1:]) for t in request.inputs))


class DynamicBatcher(DirectScheduler):
    def __init__(self, workers: Sequence[InstanceWorker], loop: asyncio.AbstractEventLoop, max_batch_size: int) -> None:
        super().__init__(workers, loop)
        self._max_batch_size = max_batch_size

    def _next_batch(self) -> list[tuple[InferenceRequest, asyncio.Future[InferenceResponse]]]:
        pending = self._pending
        first = pending.popleft()
        batch = [first]
        size = first[0].batch_size
        if not pending or size >= self._max_batch_size:
            return batch
        key = _batch_key(first[0])
        while pending and size < self._max_batch_size:
            request = pending[0][0]
            if size + request.batch_size > self._max_batch_size or _batch_key(request) != key:
                break
            batch.append(pending.popleft())
            size += request.batch_size
        return batch
