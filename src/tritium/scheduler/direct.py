"""Triton's default scheduler: each request runs alone on the first free instance.

Requests wait in one FIFO queue when every instance is busy.  Everything here
runs on the event loop; only ``execute`` runs on the instance workers.

Dispatch happens in its own event-loop callback, scheduled once when work
arrives: requests that arrive in the same turn of the loop (several connections'
data read in one poll) wait for each other, so the dynamic batcher can join them
even when an instance is free, at the cost of one ``call_soon``.

When every instance is busy, the next request is also handed to an instance
that runs on its own thread, to wait in that thread's queue behind the batch it
is executing (one deep): the thread starts it the moment the earlier one ends,
instead of idling while its completion crosses to the event loop and the next
dispatch crosses back (two thread wake-ups; on a VM whose idle CPUs halt, the
MLP unbatched at 32 connections ran 260 µs and then idled 430 µs per request).
The dynamic batcher queues its next batch there too, and adds requests to it
until the thread takes it up (``dynamic.py``).  A batch waiting there whose
clients have all gone is not executed: the thread checks before it starts it,
and its requests count as CANCELED, as in the queue.

Subclasses change only the queue: :meth:`_enqueue`, :meth:`_take` and
:attr:`_queued`; completion, statistics, draining and ordering live here.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections import deque
from collections.abc import Sequence

from tritium.core.errors import TritiumError, UnavailableError
from tritium.core.inference import InferenceRequest, InferenceResponse
from tritium.core.stats import ExecutionTiming, ModelStats

from .base import InFlightScheduler
from .workers import AbandonedError, Done, InstanceWorker, Responses, Ticket

Future = asyncio.Future  # of InferenceResponse
Batch = list[tuple[InferenceRequest, "asyncio.Future[InferenceResponse]"]]


class DirectScheduler(InFlightScheduler):
    #: Whether arrivals are dispatched while every instance is busy (to queue behind one, or, in the dynamic
    #: batcher, to grow the batch that waits for an instance).
    dispatch_when_busy = True

    def __init__(self, workers: Sequence[InstanceWorker], loop: asyncio.AbstractEventLoop,
                 stats: ModelStats | None = None) -> None:
        self._loop = loop
        self._dispatch_scheduled = False
        self._dispatching = False
        self._workers = list(workers)
        self._idle: deque[InstanceWorker] = deque(self._workers)
        #: Batches submitted to each worker and not done yet: 0 (idle), 1, or 2 (one waits behind).
        self._load: dict[InstanceWorker, int] = dict.fromkeys(self._workers, 0)
        #: Worker -> (ticket, futures) of the batch waiting behind its executing one, oldest first: an
        #: instance that frees up first takes it back (requests go to the first free instance).
        self._behind: dict[InstanceWorker, tuple[Ticket, list[asyncio.Future[InferenceResponse]]]] = {}
        self._pending: deque[tuple[InferenceRequest, asyncio.Future[InferenceResponse]]] = deque()
        #: Requests accepted and not yet answered (queued or executing).
        self._in_flight = 0
        self._drained: asyncio.Event | None = None
        self._closed = False
        self.stats = stats if stats is not None else ModelStats()
        #: With ``preserve_ordering``: dispatched batches in order, each [futures, results or None].
        self._ordered: deque[list] | None = None

    async def infer(self, request: InferenceRequest) -> InferenceResponse:
        if self._closed:
            raise UnavailableError("model is being unloaded")
        future: asyncio.Future[InferenceResponse] = self._loop.create_future()
        request.queued_ns = time.monotonic_ns()
        self._enqueue(request, future)  # may refuse (full queue)
        self._in_flight += 1
        if self._idle or self.dispatch_when_busy:
            self._schedule_dispatch()
        return await future

    # -- the queue (overridden by the dynamic batcher) ----------------------------------------------

    def _enqueue(self, request: InferenceRequest, future: asyncio.Future[InferenceResponse]) -> None:
        self._pending.append((request, future))

    @property
    def _queued(self) -> bool:
        return bool(self._pending)

    def _take(self) -> Batch | None:
        """The next batch to run now, or ``None`` when nothing should run yet."""
        pending = self._pending
        while pending:
            entry = pending.popleft()
            if not entry[1].cancelled():
                return [entry]
            self._in_flight -= 1  # the client went away while it waited
            self.stats.record_rejected(entry[0], "CANCELED")
        self._maybe_drained()
        return None

    # -- dispatch and completion --------------------------------------------------------------------

    def _schedule_dispatch(self) -> None:
        if not self._dispatch_scheduled:
            self._dispatch_scheduled = True
            self._loop.call_soon(self._dispatch)

    def _dispatch(self) -> None:
        self._dispatch_scheduled = False
        if self._closed:
            return
        # An instance that runs inline answers within submit(); its completion must not dispatch again
        # from inside this call (unbounded recursion over a long queue): it schedules a dispatch instead.
        self._dispatching = True
        try:
            self._dispatch_idle()
        finally:
            self._dispatching = False

    def _dispatch_idle(self) -> None:
        idle = self._idle
        load = self._load
        behind = self._behind
        while idle and behind:  # the oldest waiting-behind batch goes to the instance that freed up
            owner = next(iter(behind))
            ticket, futures = behind.pop(owner)
            taken = owner.reclaim(ticket)
            if taken is None:
                continue  # its thread has started it
            load[owner] -= 1
            self._executing -= len(futures)
            worker = idle.popleft()
            load[worker] = 1
            self._submit(worker, taken[0], futures, False)
        while idle:
            batch = self._take()
            if not batch:
                return
            worker = idle.popleft()
            load[worker] = 1
            self._submit(worker, [r for r, _ in batch], [f for _, f in batch], False)
        self._dispatch_busy()

    def _dispatch_busy(self) -> None:
        """Every instance is busy: the next requests wait in the queues of instances that run on threads."""
        while (worker := self._thread_to_queue_behind()) is not None:
            batch = self._take()
            if not batch:
                return
            self._submit(worker, [r for r, _ in batch], [f for _, f in batch], True)

    def _thread_to_queue_behind(self) -> InstanceWorker | None:
        """A busy instance that runs on a thread with no batch waiting behind it yet; ``None`` when there is
        none, or with ``preserve_ordering`` (a batch taken back from one instance's queue for another would
        take a second place in the order)."""
        if self._ordered is not None:
            return None
        load = self._load
        for worker in self._workers:
            if load[worker] == 1 and worker.queues_on_thread:
                return worker
        return None

    def _submit(self, worker: InstanceWorker, requests: list[InferenceRequest],
                futures: list[asyncio.Future[InferenceResponse]], behind: bool) -> None:
        """Run ``requests`` on ``worker``; ``behind``: in its queue, behind the batch it executes."""
        slot = None
        if self._ordered is not None:
            slot = [futures, None]
            self._ordered.append(slot)
        self._executing += len(futures)
        done = self._make_done(worker, futures, slot)
        if behind:
            self._load[worker] = 2
            # Reading a future's state from the instance's thread is safe: it is one field, under the GIL.
            abandoned = functools.partial(_all_cancelled, futures)
            self._behind[worker] = (worker.queue_ticket(requests, done, abandoned), futures)
        else:
            worker.submit(requests, done)

    def pending_count(self) -> int:
        # requests waiting in a worker's own queue have not started executing
        return self._in_flight - self._executing + sum(worker.waiting for worker in self._workers)

    def _make_done(self, worker: InstanceWorker, futures: list[asyncio.Future[InferenceResponse]],
                   slot: list | None) -> Done:
        def done(
            batch: Sequence[InferenceRequest],
            responses: Responses | None,
            error: TritiumError | None,
            timing: ExecutionTiming,
        ) -> None:
            if type(error) is AbandonedError:  # waited in the instance's queue, its clients gone: not run
                for request in batch:
                    self.stats.record_rejected(request, "CANCELED")
            else:
                self.stats.record_execution(batch, timing, responses is not None)
                for request in batch:
                    if request.trace is not None:
                        request.trace.execution(request.queued_ns, timing.start_ns, timing.input_end_ns,
                                                timing.infer_end_ns, timing.end_ns)
            if responses is None:
                outcome: Responses | TritiumError = error or UnavailableError("execution failed")
            else:
                outcome = responses
            self._in_flight -= len(futures)
            self._executing -= len(futures)
            left = self._load[worker] = self._load[worker] - 1
            if left:
                self._behind.pop(worker, None)  # what waited behind is this instance's now
            else:
                self._idle.append(worker)
            if self._queued or (not left and self._behind):
                # The next batch goes to the instance before this one's responses are written: resolving
                # the futures wakes one task per request, and a dispatch scheduled behind them would leave
                # the instance idle while the loop encodes and writes every response of this batch.
                if self._dispatching:
                    self._schedule_dispatch()
                else:
                    self._dispatch()
            if slot is None:
                _resolve(futures, outcome)
            else:
                slot[1] = outcome
                ordered = self._ordered
                assert ordered is not None
                while ordered and ordered[0][1] is not None:
                    head = ordered.popleft()
                    _resolve(head[0], head[1])
            self._maybe_drained()

        return done

    def close(self) -> None:
        """Stop the workers.  Requests still queued (draining timed out) are answered UNAVAILABLE rather than
        left waiting for workers that will not run them; executing batches finish and are answered."""
        self._closed = True
        error = UnavailableError("model is being unloaded")
        for _, future in self._take_all():
            self._in_flight -= 1
            if not future.done():
                future.set_exception(error)
        for owner, (ticket, futures) in self._behind.items():
            if owner.reclaim(ticket) is not None:  # not started: answered like the queue
                self._in_flight -= len(futures)
                self._executing -= len(futures)
                for future in futures:
                    if not future.done():
                        future.set_exception(error)
        self._behind.clear()
        self._maybe_drained()
        for worker in self._workers:
            worker.stop()

    def _take_all(self) -> Batch:
        """Every queued request, taken out of the queue (for :meth:`close`)."""
        taken = list(self._pending)
        self._pending.clear()
        return taken


def _all_cancelled(futures: list[asyncio.Future[InferenceResponse]]) -> bool:
    return all(future.cancelled() for future in futures)


def _resolve(futures: list[asyncio.Future[InferenceResponse]],
             outcome: Responses | TritiumError) -> None:
    if isinstance(outcome, TritiumError):
        for future in futures:
            if not future.done():
                future.set_exception(outcome)
    else:
        for future, response in zip(futures, outcome):  # noqa: B905  the worker checks the count; hot path
            if not future.done():
                if isinstance(response, TritiumError):  # this request alone failed
                    future.set_exception(response)
                else:
                    future.set_result(response)
