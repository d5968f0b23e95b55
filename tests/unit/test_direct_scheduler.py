"""Triton's default scheduler and the instance workers, on a real loop with a recording instance.

The direct scheduler runs each request alone on the first free instance, in arrival order; the
InstanceWorker runs a batch on its thread, or right on the event loop while its instance is fast
(workers.py), or hands it to an instance that completes on the loop (``execute_async``).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Sequence

import pytest

from tritium.core.errors import InternalError, TritiumError, UnavailableError
from tritium.core.inference import InferenceRequest, InferenceResponse
from tritium.scheduler import workers
from tritium.scheduler.workers import InstanceWorker

from scheduler_harness import Recorder, direct, occupy, on_loop, req, settled, submit, until


@on_loop
async def test_each_request_runs_alone_even_when_they_arrive_together() -> None:
    instance = Recorder()
    async with direct(instance) as scheduler:
        responses = await asyncio.gather(*submit(scheduler, req("a"), req("b"), req("c")))
        assert [r.id for r in responses] == ["a", "b", "c"]
        assert instance.batches == [["a"], ["b"], ["c"]]
        await settled(scheduler)


@on_loop
async def test_requests_wait_in_arrival_order_while_every_instance_is_busy() -> None:
    instance = Recorder()
    async with direct(instance) as scheduler:
        busy = await occupy(scheduler, instance)
        tasks = []
        for rid in ("q1", "q2", "q3"):
            tasks += submit(scheduler, req(rid))
            await asyncio.sleep(0.005)
        assert scheduler.pending_count() == 3
        instance.gate.set()
        await asyncio.gather(busy, *tasks)
        assert instance.batches == [["busy"], ["q1"], ["q2"], ["q3"]]
        await settled(scheduler)


@on_loop
async def test_two_instances_execute_at_the_same_time() -> None:
    one, two = Recorder("rec_0", held=True), Recorder("rec_1", held=True)
    async with direct(one, two) as scheduler:
        tasks = submit(scheduler, req("a"), req("b"), req("c"))
        # Both instances hold a request at once; the third waits for whichever frees first.
        await until(lambda: one.batches == [["a"]] and two.batches == [["b"]])
        assert scheduler.pending_count() == 1
        two.gate.set()
        await until(lambda: two.batches == [["b"], ["c"]])
        one.gate.set()
        assert [r.id for r in await asyncio.gather(*tasks)] == ["a", "b", "c"]
        await settled(scheduler)


@on_loop
async def test_the_next_request_waits_in_the_busy_instance_and_starts_without_the_event_loop() -> None:
    instance = Recorder()
    async with direct(instance) as scheduler:
        busy = await occupy(scheduler, instance)
        (after,) = submit(scheduler, req("next"))
        await asyncio.sleep(0.01)
        assert scheduler.pending_count() == 1  # handed to the instance's queue, not started
        instance.gate.set()
        deadline = time.monotonic() + 2
        while instance.batches != [["busy"], ["next"]] and time.monotonic() < deadline:
            time.sleep(0.001)  # the event loop is blocked: only the instance's thread can start "next"
        assert instance.batches == [["busy"], ["next"]]
        assert [r.id for r in await asyncio.gather(busy, after)] == ["busy", "next"]
        await settled(scheduler)


@on_loop
async def test_a_request_waiting_behind_a_busy_instance_goes_to_the_instance_that_frees_first() -> None:
    slow, fast = Recorder("rec_0", held=True), Recorder("rec_1", held=True)
    async with direct(slow, fast) as scheduler:
        tasks = submit(scheduler, req("a"), req("b"), req("c"), req("d"))
        await until(lambda: slow.batches == [["a"]] and fast.batches == [["b"]])
        assert scheduler.pending_count() == 2  # c and d wait behind a and b, one each
        fast.gate.set()  # b ends: fast runs what waited behind it and takes back what waited behind slow
        await until(lambda: fast.batches == [["b"], ["c"], ["d"]] or fast.batches == [["b"], ["d"], ["c"]])
        assert slow.batches == [["a"]]
        slow.gate.set()
        assert [r.id for r in await asyncio.gather(*tasks)] == ["a", "b", "c", "d"]
        assert slow.batches == [["a"]]
        await settled(scheduler)


@on_loop
async def test_a_request_whose_client_went_away_is_skipped() -> None:
    instance = Recorder()
    async with direct(instance) as scheduler:
        busy = await occupy(scheduler, instance)
        # "next" waits in the busy instance's own queue (handed over already, it runs); the others wait
        # in the scheduler's
        after, gone, kept = submit(scheduler, req("next"), req("gone"), req("kept"))
        await asyncio.sleep(0.01)
        gone.cancel()
        instance.gate.set()
        assert (await kept).id == "kept"
        await busy
        await after
        assert instance.batches == [["busy"], ["next"], ["kept"]]
        assert scheduler.stats.failures == {"CANCELED": 1} and scheduler.stats.fail.count == 1
        await settled(scheduler)


@on_loop
async def test_a_request_waiting_in_the_busy_instance_whose_client_went_away_is_not_executed() -> None:
    instance = Recorder()
    async with direct(instance) as scheduler:
        busy = await occupy(scheduler, instance)
        gone, kept = submit(scheduler, req("gone"), req("kept"))  # "gone" waits in the instance's queue
        await asyncio.sleep(0.01)
        assert instance.worker.waiting == 1
        gone.cancel()
        instance.gate.set()
        assert (await kept).id == "kept"
        await busy
        assert instance.batches == [["busy"], ["kept"]]
        assert scheduler.stats.failures == {"CANCELED": 1} and scheduler.stats.execution_count == 2
        await settled(scheduler)


@on_loop
async def test_an_instance_error_fails_its_request_and_the_next_one_runs() -> None:
    instance = Recorder()
    async with direct(instance) as scheduler:
        tasks = submit(scheduler, req("boom"), req("crash"), req("bad"), req("ok"))
        await asyncio.wait(tasks)
        errors = [t.exception() for t in tasks[:3]]  # None where a result was set instead
        assert [type(e).__name__ for e in errors] == ["InternalError", "InternalError", "InvalidArgumentError"]
        assert str(errors[1]) == "ValueError: bug on crash"
        assert tasks[3].result().id == "ok"
        assert scheduler.stats.failures.get("BACKEND") == 2  # 'bad' was answered by a working execution
        await settled(scheduler)


@on_loop
async def test_close_refuses_new_requests() -> None:
    instance = Recorder()
    async with direct(instance) as scheduler:
        await scheduler.infer(req("before"))
        await settled(scheduler)
        scheduler.close()
        with pytest.raises(UnavailableError, match="model is being unloaded"):
            await scheduler.infer(req("after"))


@on_loop
async def test_close_answers_requests_still_queued_with_unavailable() -> None:
    instance = Recorder()
    async with direct(instance) as scheduler:
        busy = await occupy(scheduler, instance)
        (queued,) = submit(scheduler, req("queued"))
        await asyncio.sleep(0.01)
        scheduler.close()
        instance.gate.set()
        await busy
        with pytest.raises(UnavailableError):
            await asyncio.wait_for(queued, 0.5)
        assert instance.batches == [["busy"]]
        await settled(scheduler)


# -- InstanceWorker: thread, inline, execute_async ------------------------------------------------------


class FastRecorder(Recorder):
    """An instance whose executions take microseconds (so may run inline), unless a request is 'slow'."""

    may_run_inline = True

    def execute(self, requests: Sequence[InferenceRequest]) -> list[InferenceResponse | TritiumError]:
        if any(r.id.startswith("slow") for r in requests):
            time.sleep(0.02)
        return super().execute(requests)


@pytest.mark.skipif(workers.INLINE_EXECUTE_S <= 0, reason="TRITIUM_INLINE_EXECUTE_US=0 turns inline runs off")
@on_loop
async def test_a_fast_instance_moves_onto_the_loop_and_a_slow_run_moves_it_back() -> None:
    instance = FastRecorder()
    loop_thread = threading.get_ident()
    async with direct(instance) as scheduler:
        worker = instance.worker
        assert worker is not None
        assert not worker.runs_inline  # every instance starts on its thread
        for i in range(200):
            await scheduler.infer(req(f"r{i}"))
            if worker.runs_inline:
                break
        assert worker.runs_inline, "200 fast executions never moved the instance onto the loop"
        assert instance.threads[0] != loop_thread
        await scheduler.infer(req("inline"))
        assert instance.threads[-1] == loop_thread
        await scheduler.infer(req("slow"))  # runs inline (it cannot be known in advance) and is measured
        assert not worker.runs_inline
        await scheduler.infer(req("after_slow"))
        assert instance.threads[-1] != loop_thread
        await settled(scheduler)


@on_loop
async def test_an_instance_that_waits_on_the_loop_never_runs_inline() -> None:
    instance = Recorder()  # may_run_inline = False
    loop_thread = threading.get_ident()
    async with direct(instance) as scheduler:
        for i in range(60):
            await scheduler.infer(req(f"r{i}"))
        assert loop_thread not in instance.threads
        await settled(scheduler)


class LoopRecorder(Recorder):
    """Completes on the event loop (``execute_async``) a moment later, as the Python backend's reply reader
    does; ``decline`` makes it ask for the thread instead (the Python backend before its stub started)."""

    executes_async = True

    def __init__(self) -> None:
        super().__init__("loop_0")
        self.decline = False
        self.async_batches: list[list[str]] = []

    def execute_async(self, requests: Sequence[InferenceRequest], loop: asyncio.AbstractEventLoop,
                      done: Callable[[list[InferenceResponse] | None, TritiumError | None], None]) -> bool:
        if self.decline:
            return False
        if any(r.id.startswith("bug") for r in requests):
            raise KeyError("a bug in the backend")
        self.async_batches.append([r.id for r in requests])
        responses = [InferenceResponse("m", 1, r.id) for r in requests]
        if any(r.id.startswith("short") for r in requests):
            responses.pop()
        loop.call_later(0.01, done, responses, None)
        if any(r.id.startswith("twice") for r in requests):
            loop.call_later(0.02, done, None, InternalError("a second answer"))
        return True


@on_loop
async def test_an_instance_completing_on_the_loop_needs_no_thread() -> None:
    instance = LoopRecorder()
    async with direct(instance) as scheduler:
        assert (await scheduler.infer(req("async"))).id == "async"
        assert instance.async_batches == [["async"]] and instance.batches == []
        with pytest.raises(InternalError, match="returned 0 responses for 1 requests"):
            await scheduler.infer(req("short"))
        with pytest.raises(InternalError, match="KeyError: 'a bug in the backend'"):  # not a client left waiting
            await asyncio.wait_for(scheduler.infer(req("bug")), 5)
        assert (await scheduler.infer(req("twice"))).id == "twice"  # a second answer is dropped
        await asyncio.sleep(0.05)
        assert (await scheduler.infer(req("after"))).id == "after"
        instance.decline = True
        assert (await scheduler.infer(req("threaded"))).id == "threaded"
        assert instance.batches == [["threaded"]] and instance.threads[0] != threading.get_ident()
        await settled(scheduler)


def test_a_stopped_worker_thread_ends() -> None:
    loop = asyncio.new_event_loop()
    try:
        worker = InstanceWorker(Recorder("stopping_0"), loop)
        worker.stop()
        worker.join(2)
        assert not any(t.name == "instance-stopping_0" for t in threading.enumerate())
    finally:
        loop.close()
