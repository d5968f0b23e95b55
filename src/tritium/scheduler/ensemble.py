"""Triton's ensemble scheduler: one request flows through a graph of composing models.

Each step runs as soon as the ensemble tensors it reads exist, so independent
steps run at the same time (asyncio tasks on the loop, no threads).  A step
calls its composing model through the same path a client request takes
(:meth:`tritium.core.model.Model.infer`: validation, then that model's own
scheduler), so the composing models' dynamic batchers join the step requests of
concurrent ensemble requests, and their statistics count those requests.
Tensors pass between steps as the numpy arrays the steps returned: nothing is
encoded or copied on the way.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from tritium.config.ensemble import EnsembleStep
from tritium.core.errors import InternalError, InvalidArgumentError, TritiumError, UnavailableError
from tritium.core.inference import InferenceRequest, InferenceResponse
from tritium.core.stats import ModelStats
from tritium.core.types import Tensor

from .base import Scheduler

if TYPE_CHECKING:
    from tritium.core.model import Model

#: Finds a READY composing model by name and version (-1 = latest); raises a TritiumError when there is none.
ModelLookup = Callable[[str, int], "Model"]


class EnsembleScheduler(Scheduler):
    """Runs the steps of one ensemble for each request; holds no queue of its own."""

    def __init__(self, name: str, steps: Sequence[EnsembleStep], outputs: Sequence[str], lookup: ModelLookup) -> None:
        self._name = name
        self._steps = list(steps)
        self._outputs = list(outputs)
        self._lookup = lookup
        #: Per step, the distinct ensemble tensors it reads; per tensor, the steps reading it.
        self._reads = [sorted({tensor for _, tensor in step.inputs}) for step in self._steps]
        self._readers: dict[str, list[int]] = {}
        for position, tensors in enumerate(self._reads):
            for tensor in tensors:
                self._readers.setdefault(tensor, []).append(position)
        self.stats = ModelStats()
        self._in_flight = 0
        self._drained: asyncio.Event | None = None
        self._closed = False

    async def infer(self, request: InferenceRequest) -> InferenceResponse:
        if self._closed:
            raise UnavailableError(f"ensemble '{self._name}' is being unloaded")
        self._in_flight += 1
        start = time.monotonic_ns()
        try:
            response = await self._run(request)
        except TritiumError:
            self._record(start, request, ok=False)
            raise
        finally:
            self._in_flight -= 1
            if self._in_flight == 0 and self._drained is not None:
                self._drained.set()
        self._record(start, request, ok=True)
        return response

    async def _run(self, request: InferenceRequest) -> InferenceResponse:
        tensors: dict[str, Tensor] = {t.name: t for t in request.inputs}
        missing = [sum(1 for t in reads if t not in tensors) for reads in self._reads]
        running: dict[asyncio.Task[InferenceResponse], EnsembleStep] = {}

        def start(position: int) -> None:
            step = self._steps[position]
            task = asyncio.ensure_future(self._call(step, request, tensors))
            running[task] = step

        for position, count in enumerate(missing):
            if count == 0:
                start(position)
        try:
            while running:
                done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    step = running.pop(task)
                    response = task.result()  # a failed step raises here, naming itself (see _call)
                    produced = {t.name: t for t in response.outputs}
                    for output, tensor in step.outputs:
                        result = produced.get(output)
                        if result is None:
                            raise InternalError(f"in ensemble '{self._name}', {step.label} did not return its "
                                                f"output '{output}' (ensemble tensor '{tensor}')")
                        tensors[tensor] = result
                        for reader in self._readers.get(tensor, ()):
                            missing[reader] -= 1
                            if missing[reader] == 0:
                                start(reader)
        finally:
            for task in running:  # another step failed, or the caller went away
                if task.done():
                    if not task.cancelled():
                        task.exception()  # retrieved: only the first failure is reported
                else:
                    task.cancel()
        outputs = []
        for name in self._outputs:
            found = tensors.get(name)
            if found is None:
                # Only an optional ensemble input left out can starve a step.
                starved = [self._steps[i].label for i, count in enumerate(missing) if count > 0]
                raise InvalidArgumentError(
                    f"in ensemble '{self._name}', output '{name}' could not be computed: "
                    + ", ".join(starved) + " never received all of its inputs")
            outputs.append(Tensor(name, found.datatype, found.data))
        return InferenceResponse(self._name, -1, request.id, outputs)

    async def _call(
        self, step: EnsembleStep, request: InferenceRequest, tensors: dict[str, Tensor]
    ) -> InferenceResponse:
        """One step: the composing model's request made from the ensemble tensors, run as any other."""
        try:
            model = self._lookup(step.model_name, step.model_version)
        except TritiumError as e:
            raise UnavailableError(f"in ensemble '{self._name}', composing model '{step.model_name}' of "
                                   f"{step.label} is not available: {e}") from None
        step_request = InferenceRequest(
            step.model_name, step.model_version, request.id,
            inputs=[Tensor(model_input, tensors[tensor].datatype, tensors[tensor].data)
                    for model_input, tensor in step.inputs],
            requested_outputs=[output for output, _ in step.outputs],
            parameters=dict(request.parameters),
            priority=request.priority,
            timeout_us=request.timeout_us,
        )
        try:
            return await model.infer(step_request)
        except TritiumError as e:
            raise type(e)(f"in ensemble '{self._name}', {step.label} failed: {e}", e.status) from None
        except Exception as e:  # a bug below must still answer the request
            raise InternalError(f"in ensemble '{self._name}', {step.label} failed: {type(e).__name__}: {e}") from None

    def _record(self, start_ns: int, request: InferenceRequest, ok: bool) -> None:
        """The ensemble's own counters: one execution per request; failures under Triton's reason OTHER."""
        stats = self.stats
        elapsed = time.monotonic_ns() - start_ns
        if not ok:
            stats.fail.add(elapsed)
            stats.failures["OTHER"] = stats.failures.get("OTHER", 0) + 1
            return
        stats.success.add(elapsed)
        stats.inference_count += request.batch_size
        stats.execution_count += 1
        stats.last_inference_ms = time.time_ns() // 1_000_000

    async def drain(self) -> None:
        while self._in_flight > 0:
            self._drained = asyncio.Event()
            await self._drained.wait()

    def close(self) -> None:
        self._closed = True
