"""The microsecond timer behind queue delays (``tritium.scheduler.timer``), and a batcher that uses it.

Bounds are generous (this machine is noisy): the claims are "never before the deadline", "in order",
"cancelled never runs" and "a sub-millisecond queue delay is waited out without spinning the loop".
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time

import pytest
import uvloop

from tritium.scheduler import dynamic as dynamic_module
from tritium.scheduler.timer import LoopTimer, TimerFd, precise_timer

from scheduler_harness import TEST_TIMEOUT_S, Recorder, dynamic, req, submit

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="timerfd is Linux's")


def run_on(loop_runner, test):  # type: ignore[no-untyped-def]
    return loop_runner(asyncio.wait_for(test(), TEST_TIMEOUT_S))


LOOPS = pytest.mark.parametrize("loop_runner", [asyncio.run, uvloop.run], ids=["asyncio", "uvloop"])


@linux_only
@LOOPS
def test_one_timerfd_per_loop(loop_runner) -> None:  # type: ignore[no-untyped-def]
    async def test() -> None:
        loop = asyncio.get_running_loop()
        assert isinstance(precise_timer(loop), TimerFd)
        assert precise_timer(loop) is precise_timer(loop)

    run_on(loop_runner, test)


@linux_only
@LOOPS
def test_made_on_another_thread_it_runs_on_the_loop(loop_runner) -> None:  # type: ignore[no-untyped-def]
    """Schedulers are built where models load (a thread pool); the reader is registered on the loop."""
    async def test() -> None:
        loop = asyncio.get_running_loop()
        timer = await loop.run_in_executor(None, precise_timer, loop)
        assert isinstance(timer, TimerFd) and timer is precise_timer(loop)
        done = loop.create_future()
        timer.call_at_ns(time.monotonic_ns() + 200_000, done.set_result, threading.get_ident())
        assert await done == threading.get_ident()  # called on the loop's thread

    run_on(loop_runner, test)


@LOOPS
@pytest.mark.parametrize("kind", ["precise", "loop"])
def test_deadlines_run_in_order_never_early_and_cancelled_ones_never(loop_runner, kind) -> None:  # type: ignore[no-untyped-def]
    async def test() -> None:
        loop = asyncio.get_running_loop()
        timer = precise_timer(loop) if kind == "precise" else LoopTimer(loop)
        start = time.monotonic_ns()
        fired: list[tuple[str, int]] = []
        done = loop.create_future()

        def hit(name: str, due: int) -> None:
            fired.append((name, time.monotonic_ns() - due))
            if name == "last":
                done.set_result(None)

        offsets = {"c": 3_000_000, "a": 300_000, "b": 1_200_000, "gone": 700_000, "last": 5_000_000}
        handles = {name: timer.call_at_ns(start + ns, hit, name, start + ns) for name, ns in offsets.items()}
        handles["gone"].cancel()
        await done
        names = [name for name, _ in fired]
        if kind == "loop" and loop_runner is uvloop.run:
            # uvloop rounds delays to whole milliseconds (so its timers may run early), and runs one rounded
            # to 0 as call_soon, after any timer already due: deadlines under a millisecond apart may swap.
            assert sorted(names[:2]) == ["a", "b"] and names[2:] == ["c", "last"], names
        else:
            assert names == ["a", "b", "c", "last"]
        if kind == "precise":
            assert all(late >= 0 for _, late in fired), fired

    run_on(loop_runner, test)


@linux_only
def test_many_cancelled_deadlines_do_not_pile_up() -> None:
    async def test() -> None:
        timer = precise_timer(asyncio.get_running_loop())
        assert isinstance(timer, TimerFd)
        far = time.monotonic_ns() + 3_600 * 10**9
        for _ in range(10):
            for handle in [timer.call_at_ns(far, print) for _ in range(100)]:
                handle.cancel()
        assert len(timer._heap) <= 201

    asyncio.run(test())


@linux_only
def test_a_sub_millisecond_queue_delay_is_waited_out_without_spinning(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Under uvloop a 400 µs ``call_later`` runs at once: re-armed until the delay was over, the batcher
    spun the loop through hundreds of takes per request."""
    takes = 0
    take = dynamic_module.DynamicBatcher._take

    def counted(self):  # type: ignore[no-untyped-def]
        nonlocal takes
        takes += 1
        return take(self)

    monkeypatch.setattr(dynamic_module.DynamicBatcher, "_take", counted)

    async def test() -> None:
        instance = Recorder()
        async with dynamic(instance, max_batch_size=8, config="max_queue_delay_microseconds: 400") as batcher:
            for i in range(20):
                started = time.monotonic()
                (future,) = submit(batcher, req(f"r{i}"))
                await future
                assert time.monotonic() - started >= 0.0004  # it waited for the delay
        assert takes <= 20 * 4, takes  # one take on arrival, one at the deadline (and slack), not hundreds

    uvloop.run(asyncio.wait_for(test(), TEST_TIMEOUT_S))
