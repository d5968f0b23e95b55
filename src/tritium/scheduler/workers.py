"""One worker thread per model instance, and when to skip it.

A worker owns its :class:`ModelInstanceState` and runs ``execute`` on its own
thread (ONNX Runtime and torch release the GIL while they compute, so instances
truly run at the same time).  The result comes back to the event loop with one
``call_soon_threadsafe``: a single thread hop each way, no executor machinery.

Handing a batch to another thread costs two GIL hand-offs, measured at about
50 µs per request on this project's 2-core reference machine while the loop is
otherwise idle: more than an identity model's whole ``execute``.  While the loop
is busy it is far more: a woken thread waits for the switch interval and a forced
GIL drop, 290 µs median there (29 µs with the loop asleep;
``benchmarks/handoffs.py``).  So a worker measures its instance: while
recent executions of it take less than its inline bound (a moving
average), it runs the batch right on the event loop, where a call that short
costs the loop less than the hop would; a slower execution moves the instance
back to its thread from the next batch on.  ``--inline-execute-us=0``
(``ServerOptions.inline_execute_us``) always uses the thread.

Each execution is timed (:class:`~tritium.core.stats.ExecutionTiming`); a backend
that can tell its phases apart sets ``input_end_ns`` and ``infer_end_ns`` on its
instance during ``execute`` (monotonic ns; declared with defaults of 0 on
:class:`ModelInstanceState`), which the worker copies.  What an instance declares
(``executes_async``, ``may_run_inline``) is read once, when its worker is made.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence

from tritium.backends.base import ModelInstanceState
from tritium.core.errors import CancelledError, InternalError, TritiumError
from tritium.core.inference import InferenceRequest, InferenceResponse
from tritium.core.stats import ExecutionTiming

log = logging.getLogger(__name__)

#: What executing a batch gives: for each request, its response or the error that failed it alone.
Responses = list[InferenceResponse | TritiumError]

#: Called on the event loop with the batch, either its responses or the error that failed it, and its timing.
Done = Callable[
    [Sequence[InferenceRequest], "Responses | None", "TritiumError | None", ExecutionTiming], None
]

#: Executions shorter than this (moving average) run on the event loop instead of the worker thread (the
#: default of ``ServerOptions.inline_execute_us``).
INLINE_EXECUTE_S = 150e-6

_STOP = object()


class AbandonedError(CancelledError):
    """What a batch that was not executed gets: it waited in the worker's queue and nobody waits for it."""


class Ticket:
    """A batch waiting in a worker's queue behind the one its thread executes.  Whoever claims it first runs
    it: the thread, or the event loop taking it back for an instance that freed up first.  Until then the
    loop may add requests to it, as Triton's dynamic batcher adds requests to a batch that waits for an
    instance; the lock makes "not claimed yet, so add" one step against the thread's claim."""

    __slots__ = ("batch", "done", "abandoned", "claimed", "_lock")

    def __init__(self, batch: list[InferenceRequest], done: Done, abandoned: Callable[[], bool] | None) -> None:
        self.batch = batch
        self.done = done
        self.abandoned = abandoned
        self.claimed = False
        self._lock = threading.Lock()

    def claim(self) -> bool:
        with self._lock:
            if self.claimed:
                return False
            self.claimed = True
            return True

    def extend(self, requests: Sequence[InferenceRequest]) -> bool:
        with self._lock:
            if self.claimed:
                return False
            self.batch.extend(requests)
            return True


class InstanceWorker:
    """Runs batches on one instance, one at a time."""

    def __init__(self, instance: ModelInstanceState, loop: asyncio.AbstractEventLoop,
                 inline_execute_s: float = INLINE_EXECUTE_S) -> None:
        self.instance = instance
        self._inline_s = inline_execute_s
        self.name = instance.spec.name
        self._loop = loop
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=f"instance-{self.name}", daemon=True)
        self._thread.start()
        #: Moving average of execute() wall time; starts high so first runs use the thread.
        self._adaptive = inline_execute_s > 0 and instance.may_run_inline
        self._average_s = 1.0 if self._adaptive else float("inf")
        #: A backend that waits for its work on the event loop (``execute_async``) needs no thread hop.
        self._execute_async = instance.execute_async if instance.executes_async else None
        #: Requests handed to the thread (written on the loop) and taken up by it (written by the thread):
        #: their difference is what waits in the thread's queue.
        self._handed = 0
        self._taken = 0

    @property
    def queues_on_thread(self) -> bool:
        """Whether a batch may wait in this worker's own queue (:meth:`queue_ticket`) while it executes
        another, so that its thread starts it the moment the one before ends, without waiting for the
        event loop.  Never inline (it would run at the same time as the one before) nor for a backend
        that executes on the loop."""
        return self._execute_async is None

    @property
    def waiting(self) -> int:
        """Requests in this worker's queue that its thread has not started yet."""
        return self._handed - self._taken

    @property
    def runs_inline(self) -> bool:
        return self._average_s < self._inline_s

    def submit(self, batch: Sequence[InferenceRequest], done: Done) -> None:
        """Run ``batch``; ``done`` is called on the event loop (possibly before this returns)."""
        if self._execute_async is not None:
            start = time.monotonic_ns()

            answered = False

            def finished(responses: Responses | None, error: TritiumError | None) -> None:
                nonlocal answered
                if answered:
                    return
                answered = True
                if responses is not None and len(responses) != len(batch):
                    error = InternalError(f"instance {self.name} returned {len(responses)} "
                                          f"responses for {len(batch)} requests")
                    responses = None
                done(batch, responses, error, ExecutionTiming(start, 0, 0, time.monotonic_ns()))

            try:
                handed = self._execute_async(batch, self._loop, finished)
            except Exception as e:  # a bug in a backend must fail its batch, not leave its clients waiting
                log.exception("instance %s: execute_async raised", self.name)
                finished(None, InternalError(f"{type(e).__name__}: {e}"))
                return
            if handed:
                return
        if self._average_s < self._inline_s:
            responses, error, timing = self._execute(batch)
            done(batch, responses, error, timing)
        else:
            self._handed += len(batch)
            self._queue.put((batch, done))

    def queue_ticket(self, batch: list[InferenceRequest], done: Done,
                     abandoned: Callable[[], bool] | None = None) -> Ticket:
        """Queue ``batch`` for the thread as a :class:`Ticket`: until the thread takes it up, the event loop
        may add requests to it (:meth:`Ticket.extend`) or take it back (:meth:`reclaim`).  When the thread
        takes it and ``abandoned()`` says nobody waits for it any more, the batch is not executed: ``done``
        gets an :class:`AbandonedError` instead."""
        ticket = Ticket(batch, done, abandoned)
        self._handed += len(batch)
        self._queue.put(ticket)
        return ticket

    def extend(self, ticket: Ticket, requests: Sequence[InferenceRequest]) -> bool:
        """Add ``requests`` to a queued ticket's batch; ``False`` when the thread has taken it up already."""
        if not ticket.extend(requests):
            return False
        self._handed += len(requests)
        return True

    def reclaim(self, ticket: Ticket) -> tuple | None:
        """Take a queued ticket's batch back (to run elsewhere); ``None`` when the thread has started it."""
        if not ticket.claim():
            return None
        self._handed -= len(ticket.batch)
        return ticket.batch, ticket.done

    def stop(self) -> None:
        self._queue.put(_STOP)

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def _execute(
        self, batch: Sequence[InferenceRequest]
    ) -> tuple[Responses | None, TritiumError | None, ExecutionTiming]:
        instance = self.instance
        start = time.monotonic_ns()
        try:
            responses = instance.execute(batch)
            if len(responses) != len(batch):
                raise InternalError(
                    f"instance {self.name} returned {len(responses)} responses for {len(batch)} requests"
                )
            result: tuple[Responses | None, TritiumError | None] = (responses, None)
        except TritiumError as e:
            result = (None, e)
        except Exception as e:  # a backend bug must fail the batch, not kill the worker or the loop
            log.exception("instance %s failed", self.name)
            result = (None, InternalError(f"{type(e).__name__}: {e}"))
        end = time.monotonic_ns()
        timing = ExecutionTiming(
            start, instance.input_end_ns, instance.infer_end_ns, end
        )
        if timing.input_end_ns < start:  # the backend did not stamp this execution
            timing.input_end_ns = timing.infer_end_ns = 0
        if self._adaptive:
            self._average_s += ((end - start) / 1e9 - self._average_s) * 0.2
        return result[0], result[1], timing

    def _run(self) -> None:
        call_back = self._loop.call_soon_threadsafe
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            if type(item) is Ticket:  # taken back, or ours to run
                if not item.claim():
                    continue
                batch, done, abandoned = item.batch, item.done, item.abandoned
            else:
                batch, done = item  # type: ignore[misc]
                abandoned = None
            self._taken += len(batch)
            error: TritiumError | None
            if abandoned is not None and abandoned():
                now = time.monotonic_ns()
                responses, error, timing = None, AbandonedError("the client went away"), ExecutionTiming(now, 0, 0, now)
            else:
                responses, error, timing = self._execute(batch)
            try:
                call_back(done, batch, responses, error, timing)
            except RuntimeError:  # loop closed during shutdown
                return
