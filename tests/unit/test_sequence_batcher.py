"""The sequence batcher's batches, seen by an instance that records what it executes.

The instance is a real :class:`ModelInstanceState` (an accumulator keyed by batch row, as a stateful
``direct`` model keeps its state), run by a real :class:`InstanceWorker` on its thread.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence

import numpy as np
from google.protobuf import text_format

from tritium._proto import model_config_pb2 as mc
from tritium.backends.base import InstanceSpec, ModelInstanceState
from tritium.config.sequence import sequence_settings
from tritium.core.inference import InferenceRequest, InferenceResponse
from tritium.core.types import DataType, Tensor
from tritium.scheduler.sequence import SequenceBatcher
from tritium.scheduler.workers import InstanceWorker


class RowAccumulator(ModelInstanceState):
    """Keeps one sum per batch row; records (READY, START, CORRID) of every row it executes."""

    may_run_inline = False

    def __init__(self) -> None:
        super().__init__(InstanceSpec("acc_0", "KIND_CPU", 0, mc.ModelInstanceGroup()))
        self.sums: dict[int, int] = {}
        self.batches: list[list[tuple[int, int, int]]] = []
        self.gate = threading.Event()
        self.gate.set()

    def execute(self, requests: Sequence[InferenceRequest]) -> list[InferenceResponse]:
        self.gate.wait(5)
        rows = []
        responses = []
        for row, request in enumerate(requests):
            t = {x.name: x.data for x in request.inputs}
            ready, start, corrid = int(t["READY"][0, 0]), int(t["START"][0, 0]), int(t["CORRID"][0, 0])
            rows.append((ready, start, corrid))
            if ready:
                self.sums[row] = int(t["INPUT"][0, 0]) + (0 if start else self.sums[row])
            out = np.array([[self.sums.get(row, 0)]], np.int32)
            responses.append(InferenceResponse("acc", 1, request.id, [Tensor("OUTPUT", DataType.INT32, out)]))
        self.batches.append(rows)
        return responses


CONFIG = """
  control_input [
    { name: "START" control [ { kind: CONTROL_SEQUENCE_START int32_false_true: [ 0, 1 ] } ] },
    { name: "READY" control [ { kind: CONTROL_SEQUENCE_READY int32_false_true: [ 0, 1 ] } ] },
    { name: "CORRID" control [ { kind: CONTROL_SEQUENCE_CORRID data_type: TYPE_INT64 } ] } ]
"""


def request(sequence_id: int, value: int, start: bool = False, end: bool = False) -> InferenceRequest:
    params = {"sequence_id": sequence_id, "sequence_start": start, "sequence_end": end}
    return InferenceRequest("acc", 1, "", [Tensor("INPUT", DataType.INT32, np.array([[value]], np.int32))],
                            None, params)


async def _direct_rows() -> tuple[RowAccumulator, list[int]]:
    loop = asyncio.get_running_loop()
    config = mc.ModelConfig(name="acc", max_batch_size=3)
    text_format.Parse(CONFIG + " direct { }", config.sequence_batching)
    instance = RowAccumulator()
    worker = InstanceWorker(instance, loop)
    batcher = SequenceBatcher([worker], loop, config, sequence_settings(config, "/nowhere"))
    try:
        # Three sequences take slots 0, 1, 2; the first ends, so only slot 2's sequence sends next.
        outs = [await batcher.infer(request(s, v, start=True, end=s == 11)) for s, v in ((11, 1), (12, 2), (13, 3))]
        outs.append(await batcher.infer(request(13, 10)))
        # With the instance held, requests of two sequences queue and then run as one batch.
        instance.gate.clear()
        first = asyncio.ensure_future(batcher.infer(request(12, 5)))
        await asyncio.sleep(0.05)
        pair = [asyncio.ensure_future(batcher.infer(request(12, 6, end=True))),
                asyncio.ensure_future(batcher.infer(request(13, 7)))]
        await asyncio.sleep(0.05)
        instance.gate.set()
        outs += [await first] + list(await asyncio.gather(*pair))
        await batcher.drain()
    finally:
        batcher.close()
    return instance, [int(o.outputs[0].data[0, 0]) for o in outs]


def test_direct_batches_are_positional_with_null_rows():
    instance, outs = asyncio.run(_direct_rows())
    assert outs == [1, 2, 3, 13, 7, 13, 20]
    # Sequence 13 sits in row 2: its lone request runs behind two null rows (READY 0, CORRID 0).
    assert instance.batches[3] == [(0, 0, 0), (0, 0, 0), (1, 0, 13)]
    # Sequences 12 (row 1) and 13 (row 2) share the last batch; row 0 is a null row.
    assert instance.batches[-1] == [(0, 0, 0), (1, 0, 12), (1, 0, 13)]
