"""The event loop's polling after an answer (frontends/busy_poll.py): it keeps the loop turning without
sleeping until the next request or the budget, only while requests lately followed answers that soon."""

from __future__ import annotations

import asyncio
import time

import pytest

from tritium.frontends import busy_poll
from tritium.frontends.busy_poll import BusyPoll


class Counted(BusyPoll):
    """Counts the loop's turns spent polling."""

    __slots__ = ("turns",)

    def _turn(self) -> None:
        self.turns += 1
        super()._turn()


def _turns(poll: Counted, seconds: float, arrive_after: float | None = None) -> tuple[int, float]:
    """Answer once, then let the loop run for ``seconds`` (an arrival after ``arrive_after`` seconds).
    Returns (the turns it spent polling, when it stopped polling)."""
    poll.turns = 0
    stopped = 0.0

    async def main() -> None:
        nonlocal stopped
        pending = arrive_after
        loop = asyncio.get_running_loop()
        start = time.perf_counter()
        poll.answered(loop)
        while time.perf_counter() - start < seconds:
            if pending is not None and time.perf_counter() - start >= pending:
                poll.arrived()
                pending = None
            if poll.loop is None and not stopped:
                stopped = time.perf_counter() - start
            await asyncio.sleep(0)

    asyncio.run(main())
    return poll.turns, stopped


def _poll(budget_us: float) -> Counted:
    poll = Counted()
    poll.configure(budget_us)
    poll.gap_s = 0.0  # requests lately came at once
    return poll


def test_the_loop_polls_until_the_budget_is_spent():
    poll = _poll(20_000)  # 20 ms: long against the loop's turns, short for a test
    turns, stopped = _turns(poll, 0.06)
    assert turns > 50  # it kept turning on its own
    assert 0.015 <= stopped <= 0.05  # and stopped once the budget was spent
    assert poll.loop is None


def test_an_arrival_ends_the_polling_and_records_the_gap():
    poll = _poll(500_000)
    poll.gap_s = 0.0
    _, stopped = _turns(poll, 0.06, arrive_after=0.01)
    assert 0.009 <= stopped < 0.05  # stopped at the arrival, long before the budget
    assert poll.gap_s == pytest.approx(0.01 * busy_poll._WEIGHT, rel=0.8)  # a quarter of the new gap
    assert poll.answered_at == 0.0


def test_no_polling_when_requests_come_later_than_the_budget_or_when_off():
    late = _poll(1_000)
    late.gap_s = 0.005  # the client lately paused 5 ms between an answer and its next request
    assert _turns(late, 0.02)[0] == 0
    assert late.answered_at > 0  # the gap is still measured, so polling comes back when requests come sooner
    off = _poll(0)
    assert _turns(off, 0.02)[0] == 0 and off.answered_at == 0.0


def test_polling_comes_back_when_the_gaps_shrink():
    poll = _poll(1_000)
    poll.gap_s = 0.005
    loop = asyncio.new_event_loop()
    try:
        for _ in range(20):  # answers each followed at once by a request
            poll.answered(loop)
            poll.arrived()
        assert poll.gap_s < 0.001
        poll.answered(loop)
        assert poll.loop is loop
    finally:
        loop.close()
    poll.loop = None
