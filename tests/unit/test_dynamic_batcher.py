"""Triton's dynamic batcher rules, checked on the real DynamicBatcher with a recording instance.

Each test runs the batcher on a fresh event loop with real InstanceWorker threads (scheduler_harness);
requests are plain validated InferenceRequests.  Timings only use generous bounds: the claim checked is
"waited for the delay" or "did not wait for it", never how long something took to the millisecond.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time

import pytest

from tritium.core.errors import InternalError, InvalidArgumentError, Status, UnavailableError

from scheduler_harness import (
    Recorder,
    completion_order,
    dynamic,
    occupy,
    on_loop,
    req,
    settled,
    submit,
    submit_apart,
    until,
)

# -- forming batches ------------------------------------------------------------------------------------


@on_loop
async def test_requests_arriving_in_one_loop_turn_run_as_one_batch() -> None:
    instance = Recorder()
    async with dynamic(instance) as batcher:
        responses = await asyncio.gather(*submit(batcher, req("a"), req("b"), req("c")))
        assert [r.id for r in responses] == ["a", "b", "c"]  # each request got its own response
        assert instance.batches == [["a", "b", "c"]]
        # Requests sent one after the other (each awaited) find the instance idle and run alone.
        await batcher.infer(req("d"))
        await batcher.infer(req("e"))
        assert instance.batches[1:] == [["d"], ["e"]]
        await settled(batcher)


@on_loop
async def test_requests_queued_while_the_instance_is_busy_run_together_next() -> None:
    instance = Recorder()
    async with dynamic(instance) as batcher:
        busy = await occupy(batcher, instance)
        later = await submit_apart(batcher, req("x"), req("y"), req("z"))  # three separate loop turns
        instance.gate.set()
        await asyncio.gather(busy, *later)
        assert instance.batches == [["busy"], ["x", "y", "z"]]
        await settled(batcher)


@on_loop
async def test_a_batch_never_exceeds_max_batch_size() -> None:
    instance = Recorder()
    async with dynamic(instance, max_batch_size=2) as batcher:
        busy = await occupy(batcher, instance)
        tasks = submit(batcher, *(req(f"r{i}") for i in range(5)))
        instance.gate.set()
        await asyncio.gather(busy, *tasks)
        assert instance.batches == [["busy"], ["r0", "r1"], ["r2", "r3"], ["r4"]]
        await settled(batcher)


@on_loop
async def test_max_batch_size_counts_rows_not_requests() -> None:
    instance = Recorder()
    async with dynamic(instance, max_batch_size=4) as batcher:
        busy = await occupy(batcher, instance)
        tasks = submit(batcher, req("two", rows=2), req("also_two", rows=2), req("one", rows=1))
        instance.gate.set()
        responses = await asyncio.gather(*tasks)
        await busy
        assert instance.batches[1:] == [["two", "also_two"], ["one"]]
        assert instance.rows[1:] == [4, 1]
        assert [r.outputs[0].data.shape[0] for r in responses] == [2, 2, 1]
        await settled(batcher)


@on_loop
async def test_preferred_batch_size_takes_the_largest_preferred_prefix_at_once() -> None:
    instance = Recorder()
    # A delay far longer than the test: any batch that waited for it would fail the time bound below.
    config = "preferred_batch_size: [2, 4] max_queue_delay_microseconds: 3000000"
    async with dynamic(instance, max_batch_size=8, config=config) as batcher:
        start = time.monotonic()
        tasks = submit(batcher, *(req(f"r{i}") for i in range(5)))
        await asyncio.gather(*tasks[:4])
        assert instance.batches == [["r0", "r1", "r2", "r3"]]  # 4, not 2 (smaller) nor 5 (not preferred)
        # The fifth is no preferred size alone: it waits for the delay, or for a partner.
        done, _ = await asyncio.wait([tasks[4]], timeout=0.1)
        assert not done
        tasks += submit(batcher, req("r5"))
        await asyncio.gather(*tasks[4:])
        assert instance.batches[1:] == [["r4", "r5"]]  # size 2 is preferred: ran without the delay
        assert time.monotonic() - start < 2.0
        await settled(batcher)


@on_loop
async def test_preferred_size_is_ignored_once_the_oldest_request_waited_the_delay() -> None:
    instance = Recorder()
    config = "preferred_batch_size: [2] max_queue_delay_microseconds: 50000"
    async with dynamic(instance, max_batch_size=3, config=config) as batcher:
        busy = await occupy(batcher, instance)
        tasks = submit(batcher, req("a"), req("b"), req("c"), req("d"))
        await asyncio.sleep(0.15)  # all four have waited longer than max_queue_delay
        instance.gate.set()
        await asyncio.gather(busy, *tasks)
        # Everything pending up to max_batch_size, as Triton sends it, rather than the preferred 2.
        assert instance.batches == [["busy"], ["a", "b", "c"], ["d"]]
        await settled(batcher)


@on_loop
async def test_without_preferred_sizes_a_partial_batch_waits_max_queue_delay() -> None:
    instance = Recorder()
    async with dynamic(instance, max_batch_size=8, config="max_queue_delay_microseconds: 400000") as batcher:
        start = time.monotonic()
        (first,) = submit(batcher, req("a"))
        await asyncio.sleep(0.05)
        assert not instance.batches  # still waiting for partners
        (second,) = submit(batcher, req("b"))  # joins the waiting batch
        await asyncio.gather(first, second)
        elapsed = time.monotonic() - start
        assert instance.batches == [["a", "b"]]
        assert 0.38 <= elapsed < 2.0, elapsed  # waited the oldest request's delay (0.4 s), not more
        await settled(batcher)


@on_loop
async def test_a_batch_stopped_by_a_request_of_another_shape_does_not_wait_for_the_delay() -> None:
    instance = Recorder()
    async with dynamic(instance, max_batch_size=2, config="max_queue_delay_microseconds: 3000000") as batcher:
        start = time.monotonic()
        a2, c3 = submit(batcher, req("a2"), req("c3", width=3))
        await a2  # cannot grow past c3, so it runs at once
        (d3,) = submit(batcher, req("d3", width=3))
        await asyncio.gather(c3, d3)  # full at max_batch_size
        assert instance.batches == [["a2"], ["c3", "d3"]]
        assert time.monotonic() - start < 2.0
        await settled(batcher)


@on_loop
async def test_a_batch_that_reaches_max_batch_size_does_not_wait_for_the_delay() -> None:
    instance = Recorder()
    async with dynamic(instance, max_batch_size=2, config="max_queue_delay_microseconds: 3000000") as batcher:
        start = time.monotonic()
        await asyncio.gather(*submit(batcher, req("a"), req("b")))
        assert time.monotonic() - start < 2.0
        assert instance.batches == [["a", "b"]]
        # A request of max_batch_size rows alone is full as well.
        await batcher.infer(req("big", rows=2))
        assert time.monotonic() - start < 2.0
        await settled(batcher)


@on_loop
async def test_requests_of_different_shapes_are_not_mixed_and_keep_their_order() -> None:
    instance = Recorder()
    async with dynamic(instance) as batcher:
        busy = await occupy(batcher, instance)
        tasks = submit(batcher, req("a2"), req("b2"), req("c3", width=3), req("d2"), req("e2"))
        instance.gate.set()
        responses = await asyncio.gather(busy, *tasks)
        # d2 fits a2/b2's shape but never jumps ahead of c3: the walk stops at the first misfit.
        assert instance.batches == [["busy"], ["a2", "b2"], ["c3"], ["d2", "e2"]]
        assert [r.outputs[0].data.shape for r in responses[1:]] == [(1, 2), (1, 2), (1, 3), (1, 2), (1, 2)]
        await settled(batcher)


@on_loop
async def test_ragged_inputs_join_at_any_shape_while_other_inputs_must_match() -> None:
    instance = Recorder()
    async with dynamic(instance, ragged=["INPUT"]) as batcher:
        busy = await occupy(batcher, instance)
        scale = {"SCALE": (1, 1)}
        tasks = submit(batcher, req("w2", width=2, extra=scale), req("w5", width=5, extra=scale),
                       req("w3", width=3, extra=scale), req("wide_scale", width=2, extra={"SCALE": (1, 4)}))
        instance.gate.set()
        await asyncio.gather(busy, *tasks)
        assert instance.batches == [["busy"], ["w2", "w5", "w3"], ["wide_scale"]]
        await settled(batcher)


# -- while every instance is busy ------------------------------------------------------------------


@on_loop
async def test_a_batch_formed_while_the_instance_is_busy_grows_until_saturated() -> None:
    """Triton's payload: with preferred size 2, two requests form a batch at once; while it waits for the
    instance, a third still joins it (saturating it: past the largest preferred size); the next two form
    the following batch (measured on Triton 2.51 with fresh state: 3 then 2, where forming batches only
    when the instance frees up gives 2, 2, 1; after other traffic its batcher thread may sleep through the
    arrivals and run all five at once)."""
    instance = Recorder()
    config = "preferred_batch_size: [2] max_queue_delay_microseconds: 400000"
    async with dynamic(instance, max_batch_size=8, config=config) as batcher:
        busy = await occupy(batcher, instance)
        tasks = await submit_apart(batcher, *(req(name) for name in "abcde"))
        assert batcher.pending_count() == 5
        instance.gate.set()
        await asyncio.gather(busy, *tasks)
        assert instance.batches == [["busy"], ["a", "b", "c"], ["d", "e"]]
        await settled(batcher)


@on_loop
async def test_while_the_instance_is_busy_a_request_joins_the_waiting_batch_once_its_delay_expired() -> None:
    """Without preferred sizes: the first request's delay expiring forms the batch, a later one joins it
    when its own delay expires; one whose delay has not expired when the instance frees up waits for the
    next batch (Triton 2.51: [1, 2, 3] then [4] for requests 0.3, 0.6, 0.9 and 1.1 s into a 1 s execution
    with a 200 ms delay)."""
    instance = Recorder()
    async with dynamic(instance, max_batch_size=8, config="max_queue_delay_microseconds: 150000") as batcher:
        busy = await occupy(batcher, instance)
        (a,) = submit(batcher, req("a"))
        await asyncio.sleep(0.3)
        (b,) = submit(batcher, req("b"))
        await asyncio.sleep(0.3)
        (c,) = submit(batcher, req("c"))
        await asyncio.sleep(0.005)
        instance.gate.set()
        await asyncio.gather(busy, a, b, c)
        assert instance.batches == [["busy"], ["a", "b"], ["c"]]
        await settled(batcher)


@on_loop
async def test_the_batch_waiting_behind_one_busy_instance_runs_on_the_instance_that_frees_up_first() -> None:
    first, second = Recorder("rec_0", held=True), Recorder("rec_1", held=True)
    async with dynamic(first, second, max_batch_size=8) as batcher:
        tasks = submit(batcher, req("one"))
        await until(lambda: first.batches == [["one"]])
        tasks += submit(batcher, req("two"))
        await until(lambda: second.batches == [["two"]])
        # formed at once (no delay), they wait in the first instance's queue
        tasks += await submit_apart(batcher, req("a"), req("b"))
        assert batcher.pending_count() == 2
        second.gate.set()  # the second frees up first: it takes the batch back from the first's queue
        await until(lambda: second.batches[-1] == ["a", "b"])
        first.gate.set()
        await asyncio.gather(*tasks)
        assert first.batches == [["one"]] and second.batches == [["two"], ["a", "b"]]
        await settled(batcher)


@on_loop
async def test_a_waiting_batch_whose_clients_all_went_away_is_not_executed() -> None:
    instance = Recorder()
    async with dynamic(instance, max_batch_size=4) as batcher:
        busy = await occupy(batcher, instance)
        gone = submit(batcher, req("gone1"), req("gone2"))  # formed at once (no delay), waiting behind "busy"
        await asyncio.sleep(0.01)
        for task in gone:
            task.cancel()
        instance.gate.set()
        await busy
        await settled(batcher)
        assert instance.batches == [["busy"]]
        assert batcher.stats.failures == {"CANCELED": 2}
        await batcher.infer(req("after"))  # still serving
        assert instance.batches[-1] == ["after"]


# -- priorities ----------------------------------------------------------------------------------------


@on_loop
async def test_a_higher_priority_request_queued_later_runs_first() -> None:
    instance = Recorder()
    async with dynamic(instance, max_batch_size=1, config="priority_levels: 2 default_priority_level: 2") as b:
        busy = await occupy(b, instance)
        tasks = submit(b, req("low1", priority=2), req("low2", priority=2))
        await asyncio.sleep(0.01)
        tasks += submit(b, req("high", priority=1))
        instance.gate.set()
        await asyncio.gather(busy, *tasks)
        assert instance.batches == [["busy"], ["high"], ["low1"], ["low2"]]
        await settled(b)


@on_loop
async def test_default_priority_level_places_requests_without_a_priority() -> None:
    instance = Recorder()
    config = "priority_levels: 3 default_priority_level: 2"
    async with dynamic(instance, max_batch_size=1, config=config) as batcher:
        busy = await occupy(batcher, instance)
        # Priority 0 (none given) and a priority beyond the levels both take the default level, 2.
        tasks = submit(batcher, req("p3", priority=3), req("none", priority=0), req("beyond", priority=9),
                       req("p1", priority=1), req("p2", priority=2))
        instance.gate.set()
        await asyncio.gather(busy, *tasks)
        assert instance.batches == [["busy"], ["p1"], ["none"], ["beyond"], ["p2"], ["p3"]]
        await settled(batcher)


@on_loop
async def test_requests_of_different_levels_share_a_batch_in_priority_order() -> None:
    instance = Recorder()
    async with dynamic(instance, max_batch_size=4, config="priority_levels: 2 default_priority_level: 2") as b:
        busy = await occupy(b, instance)
        tasks = submit(b, req("low"), req("high", priority=1))
        instance.gate.set()
        await asyncio.gather(busy, *tasks)
        assert instance.batches == [["busy"], ["high", "low"]]
        await settled(b)


# -- queue policies ------------------------------------------------------------------------------------


@on_loop
async def test_max_queue_size_refuses_requests_beyond_it_with_unavailable() -> None:
    instance = Recorder()
    async with dynamic(instance, max_batch_size=1, config="default_queue_policy { max_queue_size: 2 }") as b:
        busy = await occupy(b, instance)  # executing: no longer in the queue
        queued = submit(b, req("q1"), req("q2"))
        await asyncio.sleep(0)
        with pytest.raises(UnavailableError, match=r"^\[request id: q3\] Exceeds maximum queue size$") as refused:
            await b.infer(req("q3"))
        assert refused.value.status == Status.UNAVAILABLE
        assert b.stats.failures.get("REJECTED") == 1
        instance.gate.set()
        await asyncio.gather(busy, *queued)
        assert await b.infer(req("q4"))  # room again once the queue emptied
        assert [ids for ids in instance.batches] == [["busy"], ["q1"], ["q2"], ["q4"]]
        await settled(b)


@on_loop
async def test_cancelled_requests_do_not_fill_the_queue() -> None:
    instance = Recorder()
    async with dynamic(instance, max_batch_size=1, config="default_queue_policy { max_queue_size: 2 }") as b:
        busy = await occupy(b, instance)
        gone = submit(b, req("gone1"), req("gone2"))
        await asyncio.sleep(0)
        for task in gone:  # the clients went away while their requests waited
            task.cancel()
        await asyncio.sleep(0)
        kept = submit(b, req("q1"), req("q2"))  # room: the cancelled ones no longer count
        await asyncio.sleep(0)
        with pytest.raises(UnavailableError, match=r"^\[request id: q3\] Exceeds maximum queue size$"):
            await b.infer(req("q3"))
        instance.gate.set()
        await asyncio.gather(busy, *kept)
        assert [ids for ids in instance.batches] == [["busy"], ["q1"], ["q2"]]
        await settled(b)


@on_loop
async def test_max_queue_size_is_per_priority_level() -> None:
    instance = Recorder()
    config = """priority_levels: 2 default_priority_level: 2
                priority_queue_policy { key: 1 value { max_queue_size: 1 } }"""
    async with dynamic(instance, max_batch_size=1, config=config) as batcher:
        busy = await occupy(batcher, instance)
        accepted = submit(batcher, req("high1", priority=1), *(req(f"low{i}") for i in range(3)))
        await asyncio.sleep(0)
        with pytest.raises(UnavailableError, match="Exceeds maximum queue size"):
            await batcher.infer(req("high2", priority=1))
        instance.gate.set()
        await asyncio.gather(busy, *accepted)
        await settled(batcher)


@on_loop
async def test_reject_timeout_fails_a_queued_request_at_its_deadline_while_the_instance_is_busy() -> None:
    instance = Recorder()
    config = "default_queue_policy { timeout_action: REJECT default_timeout_microseconds: 200000 }"
    async with dynamic(instance, max_batch_size=1, config=config) as batcher:
        busy = await occupy(batcher, instance)  # dispatched at once: its own timeout no longer applies
        start = time.monotonic()
        with pytest.raises(UnavailableError, match="^Request timeout expired$") as expired:
            await batcher.infer(req("late"))
        elapsed = time.monotonic() - start
        assert expired.value.status == Status.UNAVAILABLE
        assert 0.18 <= elapsed < 1.5, elapsed
        assert not busy.done() and instance.batches == [["busy"]]  # the instance is still busy
        assert batcher.stats.failures.get("REJECTED") == 1
        instance.gate.set()
        assert (await busy).id == "busy"  # the executing request is not subject to the queue timeout
        assert instance.batches == [["busy"]]  # the expired request never ran
        await settled(batcher)


@on_loop
async def test_delay_timeout_moves_an_expired_request_behind_its_level() -> None:
    instance = Recorder()
    config = """priority_levels: 2 default_priority_level: 1
                default_queue_policy { timeout_action: DELAY default_timeout_microseconds: 300000 }"""
    async with dynamic(instance, max_batch_size=1, config=config) as batcher:
        busy = await occupy(batcher, instance)
        tasks = submit(batcher, req("expired"))
        await asyncio.sleep(0.4)  # 'expired' waited past its timeout; DELAY keeps it queued
        assert not tasks[0].done()
        tasks += submit(batcher, req("fresh"), req("low", priority=2))
        instance.gate.set()
        responses = await asyncio.gather(busy, *tasks)
        assert [r.id for r in responses] == ["busy", "expired", "fresh", "low"]  # none failed
        # Behind the requests of its own level, still ahead of the lower level.
        assert instance.batches == [["busy"], ["fresh"], ["expired"], ["low"]]
        await settled(batcher)


@on_loop
async def test_allow_timeout_override_lets_a_request_lower_the_timeout_never_raise_it() -> None:
    instance = Recorder()
    config = """default_queue_policy { default_timeout_microseconds: 300000 allow_timeout_override: true }"""
    async with dynamic(instance, max_batch_size=1, config=config) as batcher:
        busy = await occupy(batcher, instance)
        start = time.monotonic()
        tasks = submit(batcher, req("longer", timeout_us=10_000_000), req("default"),
                       req("shorter", timeout_us=50_000))
        failed_at = {}
        for task, rid in zip(tasks, ("longer", "default", "shorter")):
            task.add_done_callback(lambda _t, rid=rid: failed_at.setdefault(rid, time.monotonic() - start))
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert all(isinstance(r, UnavailableError) and str(r) == "Request timeout expired" for r in results)
        assert failed_at["shorter"] < min(failed_at["default"], failed_at["longer"]), failed_at
        # Both at the policy's 0.3 s: the request could not raise its timeout to 10 s.
        assert 0.28 <= failed_at["default"] < 2.0 and 0.28 <= failed_at["longer"] < 2.0, failed_at
        instance.gate.set()
        await busy
        await settled(batcher)


@on_loop
async def test_without_allow_timeout_override_the_request_timeout_is_ignored() -> None:
    instance = Recorder()
    config = "default_queue_policy { default_timeout_microseconds: 300000 }"
    async with dynamic(instance, max_batch_size=1, config=config) as batcher:
        busy = await occupy(batcher, instance)
        start = time.monotonic()
        with pytest.raises(UnavailableError, match="Request timeout expired"):
            await batcher.infer(req("shorter", timeout_us=20_000))
        assert time.monotonic() - start >= 0.28  # the policy's 0.3 s, not the request's 20 ms
        instance.gate.set()
        await busy
        await settled(batcher)


@on_loop
async def test_without_a_default_timeout_the_request_timeout_is_ignored() -> None:
    # As real Triton: a request may only lower the policy's timeout, and 0 (none) is not lowered.
    instance = Recorder()
    config = "default_queue_policy { timeout_action: REJECT allow_timeout_override: true }"
    async with dynamic(instance, max_batch_size=1, config=config) as batcher:
        busy = await occupy(batcher, instance)
        waiting = submit(batcher, req("brief", timeout_us=20_000))
        await asyncio.sleep(0.1)  # five times its timeout: still queued
        assert not waiting[0].done()
        instance.gate.set()
        await asyncio.gather(busy, *waiting)
        assert instance.batches == [["busy"], ["brief"]]
        await settled(batcher)


# -- ordering, cancellation, failures ------------------------------------------------------------------


async def _turns(n: int) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


async def _finish_out_of_order(config: str) -> tuple[list[int], bool]:
    """Two instances run 'first' and 'second'; 'second' finishes first.  Returns the completion order
    and whether 'second' was answered while 'first' still executed."""
    one, two = Recorder("rec_0", held=True), Recorder("rec_1", held=True)
    async with dynamic(one, two, max_batch_size=1, config=config) as batcher:
        tasks = submit(batcher, req("first"), req("second"))
        order = completion_order(tasks)
        await until(lambda: one.batches == [["first"]] and two.batches == [["second"]])
        two.gate.set()
        await until(lambda: batcher.stats.execution_count == 1)  # its completion reached the loop
        await _turns(5)  # enough for an answered request's task to finish
        second_answered_early = tasks[1].done()
        one.gate.set()
        responses = await asyncio.gather(*tasks)
        assert [r.id for r in responses] == ["first", "second"]
        await settled(batcher)
    return order, second_answered_early


@on_loop
async def test_preserve_ordering_answers_in_arrival_order_when_instances_finish_out_of_order() -> None:
    order, early = await _finish_out_of_order("preserve_ordering: true")
    assert not early
    assert order == [0, 1]


@on_loop
async def test_without_preserve_ordering_a_response_leaves_as_soon_as_it_is_ready() -> None:
    order, early = await _finish_out_of_order("")
    assert early
    assert order == [1, 0]


@on_loop
async def test_preserve_ordering_keeps_order_when_the_earlier_batch_fails() -> None:
    one, two = Recorder("rec_0", held=True), Recorder("rec_1", held=True)
    async with dynamic(one, two, max_batch_size=1, config="preserve_ordering: true") as batcher:
        tasks = submit(batcher, req("boom_first"), req("second"))
        order = completion_order(tasks)
        await until(lambda: len(one.batches) == 1 and len(two.batches) == 1)
        two.gate.set()
        await until(lambda: batcher.stats.execution_count == 1)
        await _turns(5)
        assert not tasks[1].done()
        one.gate.set()
        await asyncio.wait(tasks)
        assert isinstance(tasks[0].exception(), InternalError) and tasks[1].result().id == "second"
        assert order == [0, 1]
        await settled(batcher)


@on_loop
async def test_a_request_whose_client_went_away_is_skipped_and_counts_return_to_zero() -> None:
    instance = Recorder()
    # The queue delay keeps both queued (no batch is formed yet) while the instance is busy.
    async with dynamic(instance, max_batch_size=4, config="max_queue_delay_microseconds: 100000") as batcher:
        busy = await occupy(batcher, instance)
        gone, kept = submit(batcher, req("gone"), req("kept"))
        await asyncio.sleep(0.01)
        assert batcher.pending_count() == 2
        gone.cancel()
        instance.gate.set()
        assert (await kept).id == "kept"
        await busy
        assert instance.batches == [["busy"], ["kept"]]
        assert batcher.stats.failures == {"CANCELED": 1} and batcher.stats.fail.count == 1
        await settled(batcher)


@on_loop
async def test_a_lone_queued_request_without_queue_delay_runs_alone_or_is_dropped_if_its_client_left() -> None:
    """The batcher's shortcut for one queued request and no queue delay takes what _decide would take."""
    instance = Recorder()
    # Priority levels keep requests in the queue while the instance is busy (no batch is formed early).
    async with dynamic(instance, max_batch_size=4, config="priority_levels: 2 default_priority_level: 1") as batcher:
        busy = await occupy(batcher, instance)
        (gone,) = submit(batcher, req("gone"))
        await asyncio.sleep(0.01)
        gone.cancel()
        instance.gate.set()
        await busy
        assert batcher.stats.failures == {"CANCELED": 1}
        assert (await batcher.infer(req("alone"))).id == "alone"
        assert instance.batches == [["busy"], ["alone"]]
        await settled(batcher)


@on_loop
async def test_a_client_that_goes_away_while_its_batch_executes_leaves_no_count_behind() -> None:
    instance = Recorder()
    async with dynamic(instance, max_batch_size=4) as batcher:
        instance.gate.clear()
        gone, kept = submit(batcher, req("gone"), req("kept"))
        await until(lambda: instance.batches == [["gone", "kept"]])
        gone.cancel()
        instance.gate.set()
        assert (await kept).id == "kept"
        with pytest.raises(asyncio.CancelledError):
            await gone
        await settled(batcher)
        await batcher.infer(req("after"))  # still serving


@on_loop
async def test_a_request_cancelled_while_waiting_for_the_delay_is_dropped() -> None:
    instance = Recorder()
    async with dynamic(instance, config="max_queue_delay_microseconds: 300000") as batcher:
        (gone,) = submit(batcher, req("gone"))
        await asyncio.sleep(0.01)
        assert not instance.batches
        gone.cancel()
        await settled(batcher)  # the delay timer fires, finds nothing to run
        assert instance.batches == []


@on_loop
async def test_an_instance_error_fails_only_its_batch_and_the_batcher_keeps_serving() -> None:
    instance = Recorder()
    async with dynamic(instance, max_batch_size=2) as batcher:
        busy = await occupy(batcher, instance)
        tasks = submit(batcher, req("boom"), req("with_boom"), req("next1"), req("next2"))
        instance.gate.set()
        await asyncio.wait([busy, *tasks])
        assert instance.batches == [["busy"], ["boom", "with_boom"], ["next1", "next2"]]
        errors = [t.exception() for t in tasks[:2]]  # None where a result was set instead
        assert [type(e) for e in errors] == [InternalError, InternalError]
        assert str(errors[0]) == "instance rec_0 broke on boom" and errors[0] is errors[1]
        assert [t.result().id for t in tasks[2:]] == ["next1", "next2"]
        assert batcher.stats.failures.get("BACKEND") == 2
        await settled(batcher)


@on_loop
async def test_a_backend_bug_becomes_an_internal_error_for_its_batch() -> None:
    instance = Recorder()
    async with dynamic(instance) as batcher:
        with pytest.raises(InternalError, match="ValueError: bug on crash"):
            await batcher.infer(req("crash"))
        with pytest.raises(InternalError, match="returned 1 responses for 2 requests"):
            await asyncio.gather(*submit(batcher, req("short"), req("short_too")))
        assert (await batcher.infer(req("fine"))).id == "fine"  # the worker thread survived
        await settled(batcher)


@on_loop
async def test_an_error_in_place_of_one_response_fails_only_that_request() -> None:
    instance = Recorder()
    async with dynamic(instance) as batcher:
        ok1, bad, ok2 = submit(batcher, req("ok1"), req("bad"), req("ok2"))
        with pytest.raises(InvalidArgumentError, match="^bad is not acceptable$"):
            await bad
        assert [(await ok1).id, (await ok2).id] == ["ok1", "ok2"]
        assert instance.batches == [["ok1", "bad", "ok2"]]
        await settled(batcher)


# -- drain and close -------------------------------------------------------------------------------------


@on_loop
async def test_drain_waits_for_queued_and_executing_requests() -> None:
    instance = Recorder()
    async with dynamic(instance, max_batch_size=1) as batcher:
        busy = await occupy(batcher, instance)
        queued = submit(batcher, req("q1"), req("q2"))
        drained = asyncio.ensure_future(batcher.drain())
        await asyncio.sleep(0.05)
        assert not drained.done()
        assert batcher.pending_count() == 2  # queued, not executing
        instance.gate.set()
        await asyncio.wait_for(drained, 2)
        assert busy.done() and all(t.done() for t in queued)
        assert instance.batches == [["busy"], ["q1"], ["q2"]]


@on_loop
async def test_close_refuses_new_requests_and_stops_the_workers() -> None:
    instance = Recorder("closing_0")
    async with dynamic(instance) as batcher:
        await batcher.infer(req("before"))
        await settled(batcher)
        batcher.close()
        with pytest.raises(UnavailableError, match="model is being unloaded"):
            await batcher.infer(req("after"))
        await until(lambda: not any(t.name == "instance-closing_0" for t in threading.enumerate()))


@on_loop
async def test_close_answers_requests_still_queued_with_unavailable() -> None:
    instance = Recorder()
    config = "default_queue_policy { timeout_action: DELAY default_timeout_microseconds: 50000 }"
    async with dynamic(instance, max_batch_size=1, config=config) as batcher:
        busy = await occupy(batcher, instance)
        (delayed,) = submit(batcher, req("delayed"))
        await asyncio.sleep(0.1)  # past its timeout: now in the delayed queue
        (queued,) = submit(batcher, req("queued"))
        await asyncio.sleep(0)
        batcher.close()  # as unloading does once --exit-timeout-secs ran out
        instance.gate.set()
        assert (await busy).id == "busy"  # the executing batch finishes and is answered
        for task in (delayed, queued):
            with pytest.raises(UnavailableError):
                await asyncio.wait_for(task, 0.5)
        assert instance.batches == [["busy"]]
        await settled(batcher)


@on_loop
async def test_close_answers_a_request_waiting_for_the_queue_delay() -> None:
    instance = Recorder()
    async with dynamic(instance, config="max_queue_delay_microseconds: 100000") as batcher:
        (waiting,) = submit(batcher, req("waiting"))
        await asyncio.sleep(0)
        batcher.close()
        with pytest.raises(UnavailableError):
            await asyncio.wait_for(waiting, 0.5)
        await asyncio.sleep(0.15)  # past the delay: nothing may run after close
        assert instance.batches == []
        await settled(batcher)


class _Slow(Recorder):
    """A Recorder whose executions take a little while (random), so batches wait behind one another."""

    def __init__(self, name: str, seed: int) -> None:
        super().__init__(name)
        self.random = random.Random(seed)

    def execute(self, requests):  # type: ignore[no-untyped-def]
        time.sleep(self.random.uniform(0.001, 0.004))
        return super().execute(requests)


@pytest.mark.parametrize("config", ["", "max_queue_delay_microseconds: 500",
                                    "preferred_batch_size: [2, 4] max_queue_delay_microseconds: 300",
                                    "preserve_ordering: true", "default_queue_policy { max_queue_size: 1000 }"])
@on_loop
async def test_under_load_with_clients_leaving_every_request_is_answered_once_and_counts_return_to_zero(
        config: str) -> None:
    """Many requests arriving over time at two busy instances, some clients leaving at random moments (while
    queued, in a batch waiting for an instance, or while executing): each request that stays gets its own
    answer, nothing runs twice, and the counts settle."""
    rng = random.Random(7)
    instances = (_Slow("rec_0", 1), _Slow("rec_1", 2))
    async with dynamic(*instances, max_batch_size=6, config=config) as batcher:
        tasks = []
        for i in range(400):
            tasks += submit(batcher, req(f"r{i}", rows=rng.choice((1, 1, 2))))
            if rng.random() < 0.25:
                victim = rng.choice(tasks[-20:])
                asyncio.get_running_loop().call_later(rng.uniform(0, 0.004), victim.cancel)
            if rng.random() < 0.3:
                await asyncio.sleep(rng.uniform(0, 0.001))
        await asyncio.wait(tasks)
        answered = [t.result().id for t in tasks if not t.cancelled()]
        assert answered == [f"r{i}" for i, t in enumerate(tasks) if not t.cancelled()]
        executed = [rid for instance in instances for batch in instance.batches for rid in batch]
        assert len(executed) == len(set(executed))  # nothing ran twice
        assert set(answered) <= set(executed)
        assert all(rows <= 6 for instance in instances for rows in instance.rows)
        await settled(batcher)
        stats = batcher.stats
        assert stats.success.count == len(answered) + sum(
            1 for i, t in enumerate(tasks) if t.cancelled() and f"r{i}" in set(executed))
        assert stats.success.count + stats.failures.get("CANCELED", 0) == len(tasks)
