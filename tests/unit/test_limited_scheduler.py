"""The rate-limited direct scheduler and batcher (``scheduler/limited.py``) on a real loop with recording
instances: a batch waits for its instance's resources across models, a client that leaves meanwhile is not
executed, and an unload answers what still waits."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest
from google.protobuf import text_format

from tritium._proto import model_config_pb2 as mc
from tritium.backends.base import InstanceSpec
from tritium.core.errors import UnavailableError
from tritium.scheduler.limited import LimitedDirectScheduler, LimitedDynamicBatcher
from tritium.scheduler.rate_limiter import RateLimiter

from scheduler_harness import Recorder, _running, on_loop, req, settled, submit, until


def limited_recorder(name: str, resource: str, count: int, held: bool = False) -> Recorder:
    instance = Recorder(name, held=held)
    group = mc.ModelInstanceGroup()
    group.rate_limiter.resources.add(name=resource, count=count)
    instance.spec = InstanceSpec(name, "KIND_CPU", 0, group)
    return instance


def limited(limiter: RateLimiter, *instances: Recorder) -> contextlib.AbstractAsyncContextManager[Any]:
    limits = limiter.register([i.spec for i in instances])
    return _running(lambda w, loop: LimitedDirectScheduler(w, loop, limits), instances)


@on_loop
async def test_another_models_request_waits_for_the_shared_resource() -> None:
    limiter = RateLimiter()
    first, second = limited_recorder("a_0", "R", 1, held=True), limited_recorder("b_0", "R", 1)
    async with limited(limiter, first) as a, limited(limiter, second) as b:
        (holding,) = submit(a, req("a1"))
        await until(lambda: first.batches == [["a1"]])
        (waiting,) = submit(b, req("b1"))
        await asyncio.sleep(0.05)
        assert second.batches == [] and b.pending_count() == 1  # its instance is free, R is not
        first.gate.set()
        assert (await waiting).id == "b1" and (await holding).id == "a1"
        assert second.batches == [["b1"]]
        await settled(a)
        await settled(b)


@on_loop
async def test_a_request_whose_client_left_while_waiting_is_not_executed_and_gives_the_resource_back() -> None:
    limiter = RateLimiter()
    first, second = limited_recorder("a_0", "R", 1, held=True), limited_recorder("b_0", "R", 1)
    async with limited(limiter, first) as a, limited(limiter, second) as b:
        (holding,) = submit(a, req("a1"))
        await until(lambda: first.batches == [["a1"]])
        (gone,) = submit(b, req("gone"))
        await asyncio.sleep(0.02)
        gone.cancel()
        first.gate.set()
        await holding
        await until(lambda: b.stats.failures == {"CANCELED": 1})
        assert second.batches == []
        assert (await asyncio.gather(*submit(b, req("b2"))))[0].id == "b2"  # R came back
        await settled(b)


@on_loop
async def test_unloading_answers_a_batch_still_waiting_for_resources() -> None:
    limiter = RateLimiter()
    first, second = limited_recorder("a_0", "R", 1, held=True), limited_recorder("b_0", "R", 1)
    async with limited(limiter, first) as a:
        (holding,) = submit(a, req("a1"))
        await until(lambda: first.batches == [["a1"]])
        async with limited(limiter, second) as b:
            (waiting,) = submit(b, req("b1"))
            await asyncio.sleep(0.02)
            b.close()
            with pytest.raises(UnavailableError):
                await waiting
        first.gate.set()
        await holding
        assert second.batches == []


@on_loop
async def test_the_dynamic_batcher_forms_its_batch_when_the_resources_come() -> None:
    limiter = RateLimiter()
    first, second = limited_recorder("a_0", "R", 1, held=True), limited_recorder("b_0", "R", 1)
    settings = text_format.Parse("", mc.ModelDynamicBatching())
    async with limited(limiter, first) as a:
        limits = limiter.register([second.spec])
        async with _running(lambda w, loop: LimitedDynamicBatcher(w, loop, limits, 8, settings, ()), [second]) as b:
            (holding,) = submit(a, req("a1"))
            await until(lambda: first.batches == [["a1"]])
            tasks = submit(b, req("b1"))
            await asyncio.sleep(0.02)
            tasks += submit(b, req("b2"), req("b3"))
            await asyncio.sleep(0.02)
            first.gate.set()
            await asyncio.gather(holding, *tasks)
            # b1's batch was formed for the free instance and waited for R; b2 and b3 ran together next
            assert second.batches == [["b1"], ["b2", "b3"]]
            await settled(b)
