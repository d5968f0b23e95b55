"""The direct scheduler, the dynamic batcher and the sequence batcher under ``--rate-limit=execution_count``.

Only the point where an instance is chosen changes: a batch formed for a free instance (the instance of
lowest scaled priority, as Triton picks among a model's available instances) waits until the
:class:`~tritium.scheduler.rate_limiter.RateLimiter` allocates that instance's resources, then runs; its end
releases them.  No batch waits in an instance thread's queue (it would start without its resources), so
batches are formed when an instance frees up.  A batch whose clients all left while it waited is not run.
The sequence batcher's batch belongs to the instance that holds its sequences' slots: it is formed as
before and waits for that instance's resources.  These classes are used only when rate limiting is on: the
``off`` path is the plain schedulers, unchanged.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from tritium._proto import model_config_pb2 as mc
from tritium.config.sequence import SequenceSettings
from tritium.core.errors import UnavailableError
from tritium.core.inference import InferenceRequest, InferenceResponse
from tritium.core.stats import ExecutionTiming, ModelStats

from .direct import DirectScheduler, _resolve
from .dynamic import DynamicBatcher
from .rate_limiter import InstanceLimit
from .sequence import SequenceBatcher, _Lane
from .workers import Done, InstanceWorker, Responses

Futures = list["asyncio.Future[InferenceResponse]"]


class RateLimited(DirectScheduler):
    """What rate limiting changes in :class:`DirectScheduler` (and, mixed in first, in the dynamic batcher)."""

    def _init_limits(self, limits: Sequence[InstanceLimit]) -> None:
        self._limits = dict(zip(self._workers, limits, strict=True))
        #: Worker -> (requests, futures, ordering slot) of the batch waiting for its resources.
        self._waiting: dict[InstanceWorker, tuple[list[InferenceRequest], Futures, list | None]] = {}
        self.dispatch_when_busy = False

    def _thread_to_queue_behind(self) -> InstanceWorker | None:
        return None

    def _dispatch_idle(self) -> None:
        idle = self._idle
        limits = self._limits
        while idle:
            batch = self._take()
            if not batch:
                return
            if len(idle) == 1:
                worker = idle.popleft()
            else:  # the model's free instance of lowest scaled priority, as Triton stages
                worker = min(idle, key=lambda w: limits[w].scaled_priority)
                idle.remove(worker)
            self._load[worker] = 1
            futures = [f for _, f in batch]
            slot = None
            if self._ordered is not None:  # the order is the order batches were formed in
                slot = [futures, None]
                self._ordered.append(slot)
            self._waiting[worker] = ([r for r, _ in batch], futures, slot)
            limits[worker].stage(lambda worker=worker: self._granted(worker))  # type: ignore[misc]

    def _granted(self, worker: InstanceWorker) -> None:
        """``worker``'s resources are allocated: run its batch (the requests whose clients still wait)."""
        requests, futures, slot = self._waiting.pop(worker)
        if not any(future.cancelled() for future in futures):
            self._executing += len(futures)
            worker.submit(requests, self._make_done(worker, futures, slot))
            return
        live_requests, live_futures = [], []
        for request, future in zip(requests, futures, strict=True):
            if future.cancelled():
                self._in_flight -= 1
                self.stats.record_rejected(request, "CANCELED")
            else:
                live_requests.append(request)
                live_futures.append(future)
        if not live_requests:  # every client left while it waited: nothing runs
            self._limits[worker].release(executed=False)
            self._load[worker] = 0
            self._idle.append(worker)
            if slot is not None:
                slot[1] = []
                self._flush_ordered()
            self._maybe_drained()
            if self._queued:
                self._schedule_dispatch()
            return
        if slot is not None:
            slot[0] = live_futures
        self._executing += len(live_futures)
        worker.submit(live_requests, self._make_done(worker, live_futures, slot))

    def _flush_ordered(self) -> None:
        ordered = self._ordered
        assert ordered is not None
        while ordered and ordered[0][1] is not None:
            head = ordered.popleft()
            _resolve(head[0], head[1])

    def _make_done(self, worker: InstanceWorker, futures: Futures, slot: list | None) -> Done:
        done = super()._make_done(worker, futures, slot)
        limit = self._limits[worker]

        def release_then_done(batch: Sequence[InferenceRequest], responses: Responses | None,
                              error: Any, timing: ExecutionTiming) -> None:
            limit.release()  # before this model dispatches again: a staged instance of another may go first
            done(batch, responses, error, timing)

        return release_then_done

    def close(self) -> None:
        error = UnavailableError("model is being unloaded")
        for worker, (_, futures, _) in self._waiting.items():
            self._limits[worker].unstage()
            self._in_flight -= len(futures)
            for future in futures:
                if not future.done():
                    future.set_exception(error)
        self._waiting.clear()
        super().close()


class LimitedDirectScheduler(RateLimited):
    def __init__(self, workers: Sequence[InstanceWorker], loop: asyncio.AbstractEventLoop,
                 limits: Sequence[InstanceLimit], stats: ModelStats | None = None) -> None:
        super().__init__(workers, loop, stats)
        self._init_limits(limits)


class LimitedDynamicBatcher(RateLimited, DynamicBatcher):
    def __init__(self, workers: Sequence[InstanceWorker], loop: asyncio.AbstractEventLoop,
                 limits: Sequence[InstanceLimit], *args: Any) -> None:
        DynamicBatcher.__init__(self, workers, loop, *args)
        self._init_limits(limits)


class LimitedSequenceBatcher(SequenceBatcher):
    def __init__(self, workers: Sequence[InstanceWorker], loop: asyncio.AbstractEventLoop,
                 limits: Sequence[InstanceLimit], config: mc.ModelConfig, settings: SequenceSettings) -> None:
        super().__init__(workers, loop, config, settings)
        self._limits = dict(zip(self._workers, limits, strict=True))
        #: Batches formed and waiting for their instance's resources: limit -> (rows, completion).
        self._waiting: dict[InstanceLimit, tuple[list[InferenceRequest], Done]] = {}

    def _submit(self, lane: _Lane, rows: list[InferenceRequest], done: Done) -> None:
        worker = lane.worker
        limit = self._limits[worker]

        def release_then_done(batch: Sequence[InferenceRequest], responses: Responses | None, error: Any,
                              timing: ExecutionTiming) -> None:
            limit.release()
            done(batch, responses, error, timing)

        def granted() -> None:
            del self._waiting[limit]
            worker.submit(rows, release_then_done)

        self._waiting[limit] = (rows, done)
        limit.stage(granted)

    def close(self) -> None:
        """Batches still waiting for resources are answered UNAVAILABLE, as requests of a model going away."""
        waiting = list(self._waiting.items())
        self._waiting.clear()
        super().close()
        for limit, (rows, done) in waiting:
            limit.unstage()
            done(rows, None, UnavailableError("model is being unloaded"), ExecutionTiming(0, 0, 0, 0))
