"""After it answers, the event loop keeps turning for a short while instead of sleeping in ``epoll_wait``.

A client that sends its next request as soon as it has the answer (one connection, or a few) finds the
server asleep: on a virtual machine whose idle CPUs halt, waking the loop costs 15-30 µs before the first
byte is read, and the loop then runs its Python with cold caches.  Like the kernel's ``SO_BUSY_POLL``, the
loop polls its sockets for up to ``--busy-poll-us`` after an answer (each turn is a non-blocking ``epoll``
and a ``sched_yield``, which gives the CPU to any process that wants it), and only while the next request
lately came within that time of the answer before: a client that pauses longer finds the loop asleep, as
before, and costs no polling.  Measured in ``benchmarks/grpc_infer.py`` (ARCHITECTURE.md, decisions).

Frontends call :meth:`BusyPoll.answered` when they write a response and :meth:`BusyPoll.arrived` when data
comes in; the server turns it on (``configure``) only when it tunes the process: an embedded server leaves
its host program's loop alone.
"""

from __future__ import annotations

import asyncio
import os
from time import perf_counter as _clock

#: Weight of the newest gap in the moving average of gaps between an answer and the next arrival.
_WEIGHT = 0.25


class BusyPoll:
    """One per process: the loop that polls, until when, and how soon requests lately followed answers."""

    __slots__ = ("budget_s", "until", "loop", "answered_at", "gap_s")

    def __init__(self) -> None:
        #: How long the loop polls after an answer (0: never).
        self.budget_s = 0.0
        #: Polling stops at this ``perf_counter`` time, or at the next arrival.
        self.until = 0.0
        #: The loop polling now (``None``: none).
        self.loop: asyncio.AbstractEventLoop | None = None
        #: When the last answer was written, until the next arrival (0: an arrival came since).
        self.answered_at = 0.0
        #: Moving average of seconds from an answer to the next arrival.
        self.gap_s = 1.0

    def configure(self, budget_us: float) -> None:
        self.budget_s = budget_us / 1e6
        self.until = 0.0

    def answered(self, loop: asyncio.AbstractEventLoop) -> None:
        """A response was written on ``loop``: poll for the next request if requests lately came soon."""
        budget = self.budget_s
        if not budget:
            return
        now = _clock()
        self.answered_at = now
        if self.gap_s >= budget:
            return
        self.until = now + budget
        current = self.loop
        # (a second loop in the process sleeps as before while this one polls)
        if current is None or (current is not loop and current.is_closed()):
            self.loop = loop
            loop.call_soon(self._turn)

    def arrived(self) -> None:
        """Data came in: the loop has work, polling has done its job."""
        answered_at = self.answered_at
        if answered_at:
            self.gap_s += (_clock() - answered_at - self.gap_s) * _WEIGHT
            self.answered_at = 0.0
        self.until = 0.0

    def _turn(self) -> None:
        loop = self.loop
        if loop is None or _clock() >= self.until:
            self.loop = None
            return
        os.sched_yield()
        loop.call_soon(self._turn)


BUSY_POLL = BusyPoll()

__all__ = ["BUSY_POLL", "BusyPoll"]
