"""Sub-millisecond timers on the event loop, for queue delays measured in microseconds.

``loop.call_later`` has millisecond granularity under uvloop (libuv rounds the delay to whole
milliseconds): a batcher that waits out a 500 µs ``max_queue_delay_microseconds`` is woken at once,
finds the delay not yet over, and arms again, spinning the loop (and holding the GIL an instance
worker needs) until it is; a wait of 0.5–1.5 ms becomes 1 ms.  Triton's batchers wait to the
microsecond.  On Linux one ``timerfd`` per event loop, armed to the earliest deadline (absolute,
``CLOCK_MONOTONIC``: the clock of ``time.monotonic_ns``) and watched by a reader that stays
registered, wakes the loop within tens of microseconds of the deadline.  Python 3.11 has no
``os.timerfd_create``, so it is called through ctypes (about 2 µs an arm).  Elsewhere, or when that
fails, :class:`LoopTimer` falls back to ``call_later``.
"""

from __future__ import annotations

import asyncio
import ctypes
import heapq
import itertools
import logging
import os
import sys
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any, Protocol

log = logging.getLogger(__name__)


class Cancellable(Protocol):
    def cancel(self) -> None: ...


class Timer(Protocol):
    def call_at_ns(self, deadline_ns: int, callback: Callable[..., None], *args: Any) -> Cancellable:
        """Call ``callback(*args)`` on the loop at ``deadline_ns`` (``time.monotonic_ns`` clock)."""
        ...


class LoopTimer:
    """``call_later``: the loop's own timers (millisecond granularity under uvloop)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def call_at_ns(self, deadline_ns: int, callback: Callable[..., None], *args: Any) -> Cancellable:
        return self._loop.call_later(max(0, deadline_ns - time.monotonic_ns()) / 1e9, callback, *args)


class _Entry:
    __slots__ = ("args", "callback", "cancelled", "deadline_ns", "seq", "timer")

    def __init__(self, deadline_ns: int, seq: int, callback: Callable[..., None], args: tuple,
                 timer: TimerFd) -> None:
        self.deadline_ns = deadline_ns
        self.seq = seq
        self.callback = callback
        self.args = args
        self.cancelled = False
        self.timer = timer

    def __lt__(self, other: _Entry) -> bool:
        return (self.deadline_ns, self.seq) < (other.deadline_ns, other.seq)

    def cancel(self) -> None:
        if not self.cancelled:
            self.cancelled = True
            self.timer._cancelled += 1


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


_CLOCK_MONOTONIC = 1
_TFD_TIMER_ABSTIME = 1


class TimerFd:
    """A heap of deadlines behind one ``timerfd`` armed to the earliest.

    Made wherever a scheduler is built (model loads run on a thread pool); used on the loop's thread
    only, where the first :meth:`call_at_ns` registers the reader.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        self._settime = libc.timerfd_settime
        fd = libc.timerfd_create(_CLOCK_MONOTONIC, os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            raise OSError(ctypes.get_errno(), "timerfd_create failed")
        self._fd = fd
        self._spec = _Itimerspec()
        self._heap: list[_Entry] = []
        self._seq = itertools.count()
        self._cancelled = 0
        self._armed_ns = 0  # the deadline the fd is set to; 0: none
        self._loop: asyncio.AbstractEventLoop | None = loop  # until the reader is registered
        weakref.finalize(loop, os.close, fd)

    def call_at_ns(self, deadline_ns: int, callback: Callable[..., None], *args: Any) -> Cancellable:
        if self._loop is not None:
            self._loop.add_reader(self._fd, self._fire)
            self._loop = None
        entry = _Entry(max(deadline_ns, 1), next(self._seq), callback, args, self)
        heapq.heappush(self._heap, entry)
        if not self._armed_ns or entry.deadline_ns < self._armed_ns:
            self._arm(entry.deadline_ns)
        if self._cancelled > 64 and self._cancelled * 2 > len(self._heap):
            self._heap = [e for e in self._heap if not e.cancelled]
            heapq.heapify(self._heap)
            self._cancelled = 0
        return entry

    def _arm(self, deadline_ns: int) -> None:
        spec = self._spec
        spec.it_value.tv_sec, spec.it_value.tv_nsec = divmod(deadline_ns, 1_000_000_000)
        if self._settime(self._fd, _TFD_TIMER_ABSTIME, ctypes.byref(spec), None) != 0:
            raise OSError(ctypes.get_errno(), "timerfd_settime failed")
        self._armed_ns = deadline_ns

    def _fire(self) -> None:
        try:
            os.read(self._fd, 8)
        except BlockingIOError:
            return
        self._armed_ns = 0
        heap = self._heap
        now = time.monotonic_ns()
        due = []
        while heap and (heap[0].cancelled or heap[0].deadline_ns <= now):
            entry = heapq.heappop(heap)
            if entry.cancelled:
                self._cancelled -= 1
            else:
                due.append(entry)
        if heap:
            self._arm(heap[0].deadline_ns)
        for entry in due:
            entry.cancelled = True  # ran: a later cancel() is a no-op
            try:
                entry.callback(*entry.args)
            except Exception:  # one failing callback must not stop the others
                log.exception("timer callback failed")


class Wakeup:
    """A scheduler's one pending wakeup: asked again for the same moment it stays (requests arriving during
    a queue delay do not re-arm it), asked for another it moves; cleared when it runs."""

    __slots__ = ("_args", "_callback", "_due_ns", "_handle", "_timer")

    def __init__(self, timer: Timer, callback: Callable[..., None], *args: Any) -> None:
        self._timer = timer
        self._callback = callback
        self._args = args
        self._handle: Cancellable | None = None
        self._due_ns = 0

    def at(self, due_ns: int) -> None:
        if self._handle is not None and self._due_ns == due_ns:
            return
        self.cancel()
        self._handle = self._timer.call_at_ns(due_ns, self._fire)
        self._due_ns = due_ns

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _fire(self) -> None:
        self._handle = None
        self._callback(*self._args)


_timers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Timer] = weakref.WeakKeyDictionary()
_timers_lock = threading.Lock()  # models load on several threads


def precise_timer(loop: asyncio.AbstractEventLoop) -> Timer:
    """The loop's microsecond timer (one per loop), or its ``call_later`` where there is no timerfd."""
    with _timers_lock:
        timer = _timers.get(loop)
        if timer is None:
            timer = LoopTimer(loop)
            if sys.platform.startswith("linux"):
                try:
                    timer = TimerFd(loop)
                except (OSError, AttributeError, NotImplementedError) as e:
                    log.warning("no timerfd (%s): queue delays use the event loop's millisecond timers", e)
            _timers[loop] = timer
        return timer
