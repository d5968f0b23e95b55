"""Triton's dynamic batcher: priority queues with queue policies, preferred batch sizes, queue delay.

When an instance is free, the batcher walks the queued requests in priority
order (level 1 first; within a level arrival order, then requests whose timeout
expired under ``timeout_action: DELAY``) and gathers them while the batch stays
within ``max_batch_size`` and their shapes can be joined: the first request that
does not fit ends the walk (requests are never reordered past it).  Then, as
Triton's ``DynamicBatchScheduler::GetDynamicBatch`` decides:

- a batch whose size is one of ``preferred_batch_size`` (the largest such prefix)
  runs at once, unless the oldest request already waited ``max_queue_delay``;
- a batch that cannot grow (the walk stopped, or it reached the largest preferred
  size, or ``max_batch_size`` without preferred sizes) runs at once;
- otherwise it runs when the oldest request has waited ``max_queue_delay_microseconds``
  (at once when that is 0); a timer wakes the batcher then.

Queue policies (``default_queue_policy``, ``priority_queue_policy``): a level
with ``max_queue_size`` refuses requests beyond it with UNAVAILABLE "[request id:
...] Exceeds maximum queue size" (the id prefix as Triton's); a request whose
timeout (the policy's default, or the request's ``timeout`` parameter when
``allow_timeout_override`` lets it lower it) expires while queued is rejected
with UNAVAILABLE "Request timeout expired" (``REJECT``), or moves behind the
other requests of its level (``DELAY``).  A timer per such request fires at its
deadline, so an expired request is answered at that moment even when every
instance is busy.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Collection, Iterator, Sequence

from tritium._proto import model_config_pb2 as mc
from tritium.core.errors import UnavailableError, request_error
from tritium.core.inference import InferenceRequest, InferenceResponse
from tritium.core.stats import ModelStats

from .direct import Batch, DirectScheduler
from .timer import Cancellable, Wakeup, precise_timer
from .workers import InstanceWorker

QUEUED, DELAYED, GONE = 0, 1, 2


class _Entry:
    __slots__ = ("request", "future", "level", "state", "timer")

    def __init__(self, request: InferenceRequest, future: asyncio.Future[InferenceResponse], level: _Level) -> None:
        self.request = request
        self.future = future
        self.level = level
        self.state = QUEUED
        self.timer: Cancellable | None = None


class _Level:
    """One priority level: its policy, its queue, and the requests delayed past their timeout."""

    __slots__ = ("queue", "delayed", "size", "delay_on_timeout", "default_timeout_us", "allow_override", "max_size")

    def __init__(self, policy: mc.ModelQueuePolicy) -> None:
        self.queue: deque[_Entry] = deque()
        self.delayed: deque[_Entry] = deque()
        self.size = 0  # live entries in queue + delayed
        self.delay_on_timeout = policy.timeout_action == mc.ModelQueuePolicy.DELAY
        self.default_timeout_us = policy.default_timeout_microseconds
        self.allow_override = policy.allow_timeout_override
        self.max_size = policy.max_queue_size

    def timeout_us(self, request: InferenceRequest) -> int:
        """Triton's rule: the request may only lower the policy's default timeout.  Where the policy has
        none (0), a request's timeout is ignored: real Triton does not start one for it either."""
        timeout = self.default_timeout_us
        requested = request.timeout_us
        if self.allow_override and 0 < requested < timeout:
            return requested
        return timeout


def batch_key(request: InferenceRequest, ragged: Collection[str] = ()) -> tuple[tuple[str, tuple[int, ...]], ...]:
    """Requests with equal keys can be joined on the batch dimension (ragged inputs join at any shape)."""
    inputs = request.inputs
    if ragged:
        return tuple(sorted((t.name, () if t.name in ragged else t.data.shape[1:]) for t in inputs))
    if len(inputs) == 1:  # the common case, without a sort
        tensor = inputs[0]
        return ((tensor.name, tensor.data.shape[1:]),)
    return tuple(sorted((t.name, t.data.shape[1:]) for t in inputs))


class DynamicBatcher(DirectScheduler):
    #: A batch taken while every instance is busy would be taken smaller than one taken when an instance
    #: frees up.
    queue_behind = False

    def __init__(self, workers: Sequence[InstanceWorker], loop: asyncio.AbstractEventLoop, max_batch_size: int,
                 settings: mc.ModelDynamicBatching | None = None, ragged_inputs: Collection[str] = (),
                 stats: ModelStats | None = None) -> None:
        super().__init__(workers, loop, stats)
        settings = settings if settings is not None else mc.ModelDynamicBatching()
        self._max_batch_size = max_batch_size
        self._preferred = frozenset(settings.preferred_batch_size)
        self._max_preferred = max(self._preferred) if self._preferred else max_batch_size
        self._delay_ns = settings.max_queue_delay_microseconds * 1000
        self._ragged = frozenset(ragged_inputs)
        levels = settings.priority_levels
        self._levels = [
            _Level(settings.priority_queue_policy[p] if p in settings.priority_queue_policy
                   else settings.default_queue_policy)
            for p in range(1, levels + 1)
        ] or [_Level(settings.default_queue_policy)]
        self._default_level = settings.default_priority_level - 1 if levels else 0
        self._count = 0  # live queued entries over all levels
        #: Microsecond timers: queue delays are hundreds of µs, below the event loop's own granularity.
        self._timer = precise_timer(loop)
        self._wakeup = Wakeup(self._timer, self._schedule_dispatch)
        if settings.preserve_ordering:
            self._ordered = deque()

    # -- queue ----------------------------------------------------------------------------------------

    @property
    def _queued(self) -> bool:
        return self._count > 0

    def _enqueue(self, request: InferenceRequest, future: asyncio.Future[InferenceResponse]) -> None:
        priority = request.priority
        levels = self._levels
        level = levels[priority - 1] if 0 < priority <= len(levels) else levels[self._default_level]
        if level.max_size and level.size >= level.max_size and self._purge_cancelled(level) >= level.max_size:
            self.stats.record_rejected(request)
            raise request_error(request.id, "Exceeds maximum queue size", UnavailableError)
        entry = _Entry(request, future, level)
        level.queue.append(entry)
        level.size += 1
        self._count += 1
        timeout_us = level.timeout_us(request) if (level.default_timeout_us or request.timeout_us) else 0
        if timeout_us:
            entry.timer = self._timer.call_at_ns(request.queued_ns + timeout_us * 1000, self._expire, entry)

    def _purge_cancelled(self, level: _Level) -> int:
        """Drop the requests of ``level`` whose clients went away (they must not fill the queue); its size after."""
        for _ in self._walk_level(level):  # walking drops them
            pass
        self._maybe_drained()
        return level.size

    def _expire(self, entry: _Entry) -> None:
        if entry.state != QUEUED:
            return
        entry.timer = None
        if entry.level.delay_on_timeout:
            entry.state = DELAYED
            entry.level.delayed.append(entry)
            return
        self._remove(entry)
        self._in_flight -= 1
        self.stats.record_rejected(entry.request)
        if not entry.future.done():
            entry.future.set_exception(UnavailableError("Request timeout expired"))
        self._maybe_drained()

    def _remove(self, entry: _Entry) -> None:
        """Take a live entry out of the counts; its deque slots are dropped lazily."""
        entry.state = GONE
        entry.level.size -= 1
        self._count -= 1
        if entry.timer is not None:
            entry.timer.cancel()
            entry.timer = None

    def _walk(self) -> Iterator[_Entry]:
        """Live entries in scheduling order; drops dead heads and cancelled requests on the way."""
        for level in self._levels:
            yield from self._walk_level(level)

    def _walk_level(self, level: _Level) -> Iterator[_Entry]:
        for queue, state in ((level.queue, QUEUED), (level.delayed, DELAYED)):
            while queue and queue[0].state != state:
                queue.popleft()
            for entry in queue:
                if entry.state != state:
                    continue
                if entry.future.cancelled():  # the client went away while it waited
                    self._remove(entry)
                    self._in_flight -= 1
                    self.stats.record_rejected(entry.request, "CANCELED")
                    continue
                yield entry

    def _take(self) -> Batch | None:
        if not self._count:
            self._wakeup.cancel()
            self._maybe_drained()
            return None
        max_batch_size = self._max_batch_size
        max_preferred = self._max_preferred
        preferred = self._preferred
        chosen: list[_Entry] = []
        size = 0
        best = 0  # entries in the best batch found (a preferred size, or the largest one within max preferred)
        full = False
        key = None
        ragged = self._ragged
        for entry in self._walk():
            request_size = entry.request.batch_size
            if chosen:
                if size + request_size > max_preferred and not best:
                    best = len(chosen)
                if size + request_size > max_batch_size or batch_key(entry.request, ragged) != key:
                    full = True
                    break
            else:
                key = batch_key(entry.request, ragged)
            chosen.append(entry)
            size += request_size
            if size in preferred:
                best = len(chosen)
        if not chosen:
            self._wakeup.cancel()
            self._maybe_drained()
            return None
        delay_ns = self._delay_ns
        if delay_ns:
            now = time.monotonic_ns()
            oldest = min(e.request.queued_ns for e in chosen)
            delay_exceeded = now - oldest >= delay_ns
        else:
            delay_exceeded = True
        if best and not (delay_ns and delay_exceeded):
            chosen = chosen[:best]
        elif not (full or size >= max_preferred or delay_exceeded):
            # Wait for more requests, at most until the oldest has waited max_queue_delay.
            self._wakeup.at(oldest + delay_ns)
            return None
        self._wakeup.cancel()
        for entry in chosen:
            self._remove(entry)
        return [(e.request, e.future) for e in chosen]

    def close(self) -> None:
        self._wakeup.cancel()
        super().close()

    def _take_all(self) -> Batch:
        entries = list(self._walk())
        for entry in entries:
            self._remove(entry)
        return [(e.request, e.future) for e in entries]
