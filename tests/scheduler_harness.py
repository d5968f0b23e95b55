"""Real schedulers on a real event loop, fed by an instance that records what it is given.

The unit tests of ``tritium.scheduler`` drive :class:`DirectScheduler` and :class:`DynamicBatcher`
through their public ``infer`` / ``drain`` / ``close`` with a :class:`Recorder` instance run by a real
:class:`InstanceWorker` (its own thread), so what the instance saw is what a backend would have seen.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import numpy as np
from google.protobuf import text_format

from tritium._proto import model_config_pb2 as mc
from tritium.backends.base import InstanceSpec, ModelInstanceState
from tritium.core.errors import InternalError, InvalidArgumentError, TritiumError
from tritium.core.inference import InferenceRequest, InferenceResponse
from tritium.core.types import DataType, Tensor
from tritium.scheduler.direct import DirectScheduler
from tritium.scheduler.dynamic import DynamicBatcher
from tritium.scheduler.workers import InstanceWorker

#: No test of these modules may take longer than this (a hang fails fast instead of at pytest's timeout).
TEST_TIMEOUT_S = 5.0


class Recorder(ModelInstanceState):
    """Answers each request with its own input under the request's id; records every batch it is given.

    ``gate`` (a threading.Event, open by default) holds ``execute`` until the test releases it, so a test
    can keep the instance busy while requests queue.  Requests whose id starts with ``boom`` make the
    whole batch raise a TritiumError, ``crash`` a plain exception (a backend bug), ``bad`` fail alone
    (a TritiumError in place of their response), and ``short`` makes the batch return one response too few.
    """

    may_run_inline = False  # a held gate must never block the event loop

    def __init__(self, name: str = "rec_0", held: bool = False) -> None:
        super().__init__(InstanceSpec(name, "KIND_CPU", 0, mc.ModelInstanceGroup()))
        #: Request ids of every batch, recorded when execute starts (so a test sees what is executing).
        self.batches: list[list[str]] = []
        #: Rows (sum of batch sizes) of every batch.
        self.rows: list[int] = []
        #: The thread each execution ran on.
        self.threads: list[int] = []
        #: Executions that returned or raised.
        self.finished = 0
        #: The worker that runs this instance (set by the harness).
        self.worker: InstanceWorker | None = None
        self.gate = threading.Event()
        if not held:
            self.gate.set()

    def execute(self, requests: Sequence[InferenceRequest]) -> list[InferenceResponse | TritiumError]:
        self.batches.append([r.id for r in requests])
        self.rows.append(sum(r.batch_size for r in requests))
        self.threads.append(threading.get_ident())
        try:
            if not self.gate.wait(TEST_TIMEOUT_S):
                raise InternalError("the test never released the instance")
            responses = [self._answer(r) for r in requests]
            if any(r.id.startswith("short") for r in requests):
                responses.pop()
            return responses
        finally:
            self.finished += 1

    def _answer(self, request: InferenceRequest) -> InferenceResponse | TritiumError:
        if request.id.startswith("boom"):
            raise InternalError(f"instance {self.spec.name} broke on {request.id}")
        if request.id.startswith("crash"):
            raise ValueError(f"bug on {request.id}")
        if request.id.startswith("bad"):
            return InvalidArgumentError(f"{request.id} is not acceptable")
        first = request.inputs[0]
        return InferenceResponse("m", 1, request.id, [Tensor("OUTPUT", first.datatype, first.data)])


def req(rid: str, rows: int = 1, width: int = 2, priority: int = 0, timeout_us: int = 0,
        extra: dict[str, tuple[int, ...]] | None = None) -> InferenceRequest:
    """A validated request of ``rows`` rows: INPUT [rows, width] plus FP32 inputs of the given shapes."""
    inputs = [Tensor("INPUT", DataType.FP32, np.full((rows, width), float(rows), np.float32))]
    for name, shape in (extra or {}).items():
        inputs.append(Tensor(name, DataType.FP32, np.zeros(shape, np.float32)))
    return InferenceRequest("m", 1, rid, inputs, None, {}, batch_size=rows, priority=priority,
                            timeout_us=timeout_us)


def on_loop(test: Callable[..., Awaitable[None]]) -> Callable[..., None]:
    """Run an async test on a fresh event loop, failing it after TEST_TIMEOUT_S instead of hanging."""

    @functools.wraps(test)
    def run(*args: Any, **kwargs: Any) -> None:
        asyncio.run(asyncio.wait_for(test(*args, **kwargs), TEST_TIMEOUT_S))

    return run


@contextlib.asynccontextmanager
async def _running(make: Callable[[list[InstanceWorker], asyncio.AbstractEventLoop], DirectScheduler],
                   instances: Sequence[Recorder]) -> AsyncIterator[Any]:
    loop = asyncio.get_running_loop()
    loop_errors: list[dict[str, Any]] = []  # an exception in a scheduler callback lands here, not in the test
    loop.set_exception_handler(lambda _loop, context: loop_errors.append(context))
    workers = [InstanceWorker(instance, loop) for instance in instances]
    for instance, worker in zip(instances, workers):
        instance.worker = worker
    scheduler = make(workers, loop)
    try:
        yield scheduler
    finally:
        for instance in instances:
            instance.gate.set()
        scheduler.close()
        for worker in workers:
            worker.join(2)
    assert not loop_errors, loop_errors


def dynamic(*instances: Recorder, max_batch_size: int = 8, config: str = "",
            ragged: Sequence[str] = ()) -> contextlib.AbstractAsyncContextManager[DynamicBatcher]:
    """A DynamicBatcher over ``instances``; ``config`` is the body of ``dynamic_batching { }`` in pbtxt."""
    settings = text_format.Parse(config, mc.ModelDynamicBatching())
    return _running(lambda w, loop: DynamicBatcher(w, loop, max_batch_size, settings, ragged), instances)


def direct(*instances: Recorder) -> contextlib.AbstractAsyncContextManager[DirectScheduler]:
    return _running(lambda w, loop: DirectScheduler(w, loop), instances)


def submit(scheduler: DirectScheduler, *requests: InferenceRequest) -> list[asyncio.Task[InferenceResponse]]:
    """Start ``requests`` in this turn of the loop (they reach the scheduler before it dispatches)."""
    return [asyncio.ensure_future(scheduler.infer(r)) for r in requests]


async def submit_apart(scheduler: DirectScheduler,
                       *requests: InferenceRequest) -> list[asyncio.Task[InferenceResponse]]:
    """Start ``requests`` one per turn of the loop, 10 ms apart (each reaches the scheduler on its own)."""
    tasks = []
    for request in requests:
        tasks += submit(scheduler, request)
        await asyncio.sleep(0.01)
    return tasks


def completion_order(tasks: Sequence[asyncio.Task[Any]]) -> list[int]:
    """A list that gets each task's index as the task finishes (so, in the order they finish)."""
    order: list[int] = []
    for i, task in enumerate(tasks):
        task.add_done_callback(lambda _t, i=i: order.append(i))
    return order


async def until(condition: Callable[[], bool], timeout: float = 2.0) -> None:
    """Wait (on the loop) until ``condition()`` holds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition never held"
        await asyncio.sleep(0.002)


async def occupy(scheduler: DirectScheduler, instance: Recorder, rid: str = "busy") -> asyncio.Task[Any]:
    """Hold ``instance`` executing the request ``rid`` (release with ``instance.gate.set()``)."""
    instance.gate.clear()
    (task,) = submit(scheduler, req(rid))
    await until(lambda: bool(instance.batches) and instance.batches[-1] == [rid])
    return task


async def settled(scheduler: DirectScheduler) -> None:
    """Nothing is left queued or executing: drain returns and no request counts as pending."""
    await asyncio.wait_for(scheduler.drain(), 2)
    assert scheduler.pending_count() == 0
