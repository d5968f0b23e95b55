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

While every instance is busy, the batch is formed by the same rules as soon as they
say it should run, and waits for an instance as Triton's "payload" does: later
requests still join it (when the rules say so for them: a preferred size reached,
their own delay expired) until it is saturated — it reached the largest preferred
size (possibly passing it by one request, as Triton's does) or ``max_batch_size``,
or the next request's shapes differ.  Behind an instance that runs on a thread it
waits in that thread's queue, so the thread starts it the moment the batch before
ends; the instance that frees up first takes it.  Measured on Triton 2.51: five
single rows queued behind a busy instance with ``preferred_batch_size: [2]`` run
as 3 then 2.  As in Triton, no batch is formed ahead under priority levels or
queue policies (timeouts, ``max_queue_size``): there every waiting request stays
in the queue, where a later one of higher priority may pass it and its timeout
and the queue's size apply.  Triton's batcher adds to a waiting batch only when
its thread wakes (an arrival that reaches the next preferred size, its own
timer), so a request whose delay expires shortly before the instance frees up may
miss the batch there that joins it here.

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
from .workers import InstanceWorker, Ticket

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
        policy = settings.default_queue_policy
        #: Whether a batch may be formed while every instance is busy (:meth:`_dispatch_busy`).  As in Triton,
        #: not under priority levels or queue policies: a request taken out of the queue early could not be
        #: passed by a later one of higher priority, time out, or count against the queue's size any more.
        self.dispatch_when_busy = not levels and not (
            policy.default_timeout_microseconds or policy.allow_timeout_override or policy.max_queue_size)
        self._count = 0  # live queued entries over all levels
        #: Microsecond timers: queue delays are hundreds of µs, below the event loop's own granularity.
        self._timer = precise_timer(loop)
        self._wakeup = Wakeup(self._timer, self._schedule_dispatch)
        if settings.preserve_ordering:
            self._ordered = deque()
        #: The batch formed while every instance is busy (Triton's "payload"), growing until an instance takes
        #: it: its entries while it waits here; its rows and shape key; whether it may not grow any more; and
        #: (worker, ticket, futures) while it waits in a busy thread's queue instead.
        self._payload: list[_Entry] = []
        self._payload_rows = 0
        self._payload_key: tuple | None = None
        self._saturated = False
        self._ticket: tuple[InstanceWorker, Ticket, list[asyncio.Future[InferenceResponse]]] | None = None

    # -- queue ----------------------------------------------------------------------------------------

    @property
    def _queued(self) -> bool:
        return self._count > 0 or bool(self._payload)

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

    def _decide(self, base_rows: int, key: tuple | None) -> tuple[list[_Entry], bool, int]:
        """Triton's ``GetDynamicBatch``, for a batch that holds ``base_rows`` rows of shape ``key`` already
        (0 and ``None`` for a new one): the queued entries that join it now (none when it should wait),
        whether it is saturated (it may not grow any more), and when to look again (monotonic ns, 0: not
        for the queue delay)."""
        max_batch_size = self._max_batch_size
        max_preferred = self._max_preferred
        preferred = self._preferred
        ragged = self._ragged
        chosen: list[_Entry] = []
        rows = base_rows
        best = 0  # entries in the best batch found (a preferred size, or the largest one within max preferred)
        full = saturated = False
        for entry in self._walk():
            request_rows = entry.request.batch_size
            if rows:
                if rows + request_rows > max_preferred and not best:
                    best = len(chosen)
                    saturated = True
                if rows + request_rows > max_batch_size:
                    full = True
                    break
                if key is None:
                    key = batch_key(chosen[0].request, ragged)
                if batch_key(entry.request, ragged) != key:
                    full = saturated = True
                    break
            chosen.append(entry)
            rows += request_rows
            if rows in preferred:
                best = len(chosen)
        if not chosen:
            return chosen, saturated, 0
        delay_ns = self._delay_ns
        oldest = min(e.request.queued_ns for e in chosen)
        delay_exceeded = delay_ns > 0 and time.monotonic_ns() - oldest >= delay_ns
        if best and not delay_exceeded:
            return chosen[:best], saturated or not delay_ns, 0
        if full or rows >= max_preferred:
            return chosen, True, 0
        if delay_exceeded or not delay_ns:
            return chosen, saturated, 0
        return [], saturated, oldest + delay_ns  # wait for more, at most until the oldest waited the delay

    def _take(self) -> Batch | None:
        """An instance is free: the batch that waited for one runs now as it is, else a batch decided now."""
        payload = self._payload
        if self._ticket is not None or payload:
            self._reset_payload()  # a batch queued behind a thread was taken back before this is called
            batch = self._live(payload)
            if batch:
                return batch
        if not self._count:
            self._wakeup.cancel()
            self._maybe_drained()
            return None
        if self._count == 1 and not self._delay_ns:
            # One request and no queue delay: _decide would take it as it is (the common case at low load,
            # where the whole request runs with cold caches, so every step saved shows in its latency).
            entry = next(self._walk(), None)  # (drops dead heads and cancelled requests on the way)
            if entry is not None:
                self._wakeup.cancel()
                self._remove(entry)
                return [(entry.request, entry.future)]
        entries, _, wait_ns = self._decide(0, None)
        if not entries:
            if wait_ns:
                self._wakeup.at(wait_ns)
            self._maybe_drained()
            return None
        self._wakeup.cancel()
        for entry in entries:
            self._remove(entry)
        return [(e.request, e.future) for e in entries]

    def _dispatch_busy(self) -> None:
        """Every instance is busy.  As Triton's batcher does, the next batch is formed now and grows while it
        waits for an instance, by the same rules (preferred sizes, queue delay), until it is saturated: it
        reached the largest preferred size (or ``max_batch_size``), or the next request cannot join it.  It
        waits in the queue of an instance that runs on a thread (its thread starts it the moment the batch
        before ends, without waiting for the event loop), else here."""
        if not self.dispatch_when_busy:
            return
        while self._count:
            ticket = self._ticket
            if ticket is not None and ticket[1].claimed:  # its instance started it: the next batch begins
                self._reset_payload()
            if self._saturated:
                break
            entries, saturated, wait_ns = self._decide(self._payload_rows, self._payload_key)
            self._saturated = saturated
            if wait_ns:
                self._wakeup.at(wait_ns)
            else:
                self._wakeup.cancel()
            if not entries:
                break
            for entry in entries:
                self._remove(entry)
            self._grow(entries)
        self._queue_payload()

    def _grow(self, entries: list[_Entry]) -> None:
        """Add entries taken from the queue to the batch that waits for an instance."""
        rows = sum(e.request.batch_size for e in entries)
        ticket = self._ticket
        if ticket is not None:
            worker, queued, futures = ticket
            if worker.extend(queued, [e.request for e in entries]):
                futures.extend(e.future for e in entries)
                self._executing += len(entries)
                self._payload_rows += rows
                return
            self._reset_payload()  # its thread took it up meanwhile: these start the next batch
        if not self._payload:
            self._payload_key = batch_key(entries[0].request, self._ragged)
        self._payload.extend(entries)
        self._payload_rows += rows

    def _queue_payload(self) -> None:
        """Move the batch waiting here into the queue of a busy instance that runs on a thread, if one has
        nothing queued yet (:meth:`_thread_to_queue_behind`)."""
        if self._ticket is not None or not self._payload:
            return
        worker = self._thread_to_queue_behind()
        if worker is None:
            return
        batch = self._live(self._payload)
        if not batch:
            self._reset_payload()
            return
        self._payload = []
        futures = [f for _, f in batch]
        self._submit(worker, [r for r, _ in batch], futures, True)
        self._ticket = (worker, self._behind[worker][0], futures)

    def _live(self, entries: list[_Entry]) -> Batch:
        """The entries of a formed batch whose clients still wait (the others count as CANCELED)."""
        batch = []
        for entry in entries:
            if entry.future.cancelled():
                self._in_flight -= 1
                self.stats.record_rejected(entry.request, "CANCELED")
            else:
                batch.append((entry.request, entry.future))
        if len(batch) < len(entries):
            self._maybe_drained()
        return batch

    def _reset_payload(self) -> None:
        self._payload = []
        self._payload_rows = 0
        self._payload_key = None
        self._saturated = False
        self._ticket = None

    def close(self) -> None:
        self._wakeup.cancel()
        super().close()

    def _take_all(self) -> Batch:
        entries = list(self._walk())
        for entry in entries:
            self._remove(entry)
        payload = self._payload
        self._reset_payload()  # one queued behind a thread is the base class's to answer
        return [(e.request, e.future) for e in payload + entries]
