"""Ensemble graphs and the ensemble scheduler without a server: step order, checks, concurrency, errors."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from google.protobuf import text_format

from tritium._proto import model_config_pb2 as mc
from tritium.config.ensemble import check_composing_models, composing_models, ensemble_steps
from tritium.core.errors import InvalidArgumentError, ModelConfigError, NotFoundError, TritiumError
from tritium.core.inference import InferenceRequest, InferenceResponse
from tritium.core.model import Model
from tritium.core.types import DataType, Tensor
from tritium.scheduler.base import Scheduler
from tritium.scheduler.ensemble import EnsembleScheduler


def config(text: str) -> mc.ModelConfig:
    return text_format.Parse(text, mc.ModelConfig())


def io(name: str, dtype: str = "TYPE_FP32", dims: str = "2") -> str:
    return f'{{ name: "{name}" data_type: {dtype} dims: [ {dims} ] }}'


def ensemble(steps: str, inputs: str = io("IN"), outputs: str = io("OUT"), extra: str = "") -> mc.ModelConfig:
    return config(f'name: "e" platform: "ensemble" max_batch_size: 4 input [ {inputs} ] output [ {outputs} ] '
                  f'ensemble_scheduling {{ step [ {steps} ] }} {extra}')


def step(model: str, inputs: dict[str, str], outputs: dict[str, str], version: int = -1) -> str:
    maps = "".join(f' input_map {{ key: "{k}" value: "{v}" }}' for k, v in inputs.items())
    maps += "".join(f' output_map {{ key: "{k}" value: "{v}" }}' for k, v in outputs.items())
    return f'{{ model_name: "{model}" model_version: {version}{maps} }}'


# A diamond: IN → a → (b, c) → d → OUT, written out of order.
DIAMOND = ",".join([
    step("d", {"X": "fromb", "Y": "fromc"}, {"Z": "OUT"}),
    step("b", {"X": "froma"}, {"Z": "fromb"}),
    step("a", {"X": "IN"}, {"Z": "froma"}),
    step("c", {"X": "froma"}, {"Z": "fromc"}),
])


def test_steps_come_in_dependency_order() -> None:
    steps = ensemble_steps(ensemble(DIAMOND), "e")
    assert [s.model_name for s in steps] == ["a", "b", "c", "d"]
    assert composing_models(ensemble(DIAMOND)) == [("d", -1), ("b", -1), ("a", -1), ("c", -1)]


@pytest.mark.parametrize("cfg, message", [
    (ensemble(step("a", {"X": "IN"}, {"Z": "OUT"}), extra='instance_group { count: 1 }'),
     "instance group should not be specified"),
    (config('name: "e" platform: "ensemble" input [ ' + io("IN") + ' ] output [ ' + io("OUT") + ' ]'),
     "at least one step"),
    (ensemble(step("a", {"X": "IN"}, {})), "step 0 (model 'a') must map at least one output"),
    (ensemble(step("a", {"X": "IN"}, {"Z": "IN", "W": "OUT"})), "ensemble tensor 'IN' is an input of the ensemble"),
    (ensemble(step("a", {"X": "IN", "Y": "UNUSED_TOO"}, {"Z": "OUT"}), inputs=io("IN") + "," + io("SPARE")),
     "ensemble tensor 'UNUSED_TOO' (input 'Y' of step 0 (model 'a')) is neither"),
    (ensemble(step("a", {"X": "IN"}, {"Z": "OUT"}), inputs=io("IN") + "," + io("SPARE")),
     "ensemble input 'SPARE' is not used by any step"),
    (ensemble(step("a", {"X": "IN"}, {"Z": "OUT", "W": "OUT"})),
     "multiple outputs in step 0 (model 'a') are mapped to the same ensemble tensor 'OUT'"),
])
def test_graph_errors(cfg: mc.ModelConfig, message: str) -> None:
    with pytest.raises(ModelConfigError) as e:
        ensemble_steps(cfg, "e")
    assert message in str(e.value)
    assert str(e.value).startswith("in ensemble 'e', ")


def composing(mbs: int = 4, x: str = io("X"), z: str = io("Z"), extra: str = "") -> mc.ModelConfig:
    return config(f'max_batch_size: {mbs} input [ {x} ] output [ {z} ] {extra}')


def test_batching_and_non_batching_models_may_share_a_tensor() -> None:
    cfg = ensemble(step("a", {"X": "IN"}, {"Z": "OUT"}))
    # The non-batching model spells the batch dimension itself: [-1, 2] equals the ensemble's [-1] + [2].
    check_composing_models(cfg, "e", ensemble_steps(cfg, "e"),
                           lambda n, v: composing(0, io("X", dims="-1, 2"), io("Z", dims="-1, 2")))


@pytest.mark.parametrize("model, message", [
    (composing(2), "the ensemble allows maximum batch size 4, but step 0 (model 'a') only allows maximum batch size 2"),
    (composing(extra="model_transaction_policy { decoupled: true }"),
     "decoupled composing models are not supported in ensembles yet"),
    (composing(x=io("X", dims="3")), "ensemble tensor 'IN': inconsistent shape: [-1,2] is inferred from ensemble 'e' "
                                     "input while [-1,3] is inferred from input 'X' of step 0 (model 'a')"),
    (composing(z=io("Z", "TYPE_INT64")), "ensemble tensor 'OUT': inconsistent data type: TYPE_FP32"),
])
def test_composing_model_errors(model: mc.ModelConfig, message: str) -> None:
    cfg = ensemble(step("a", {"X": "IN"}, {"Z": "OUT"}))
    with pytest.raises(ModelConfigError) as e:
        check_composing_models(cfg, "e", ensemble_steps(cfg, "e"), lambda n, v: model)
    assert message in str(e.value)


def test_a_missing_composing_model_is_named() -> None:
    cfg = ensemble(step("a", {"X": "IN"}, {"Z": "OUT"}, version=3))

    def lookup(name: str, version: int) -> mc.ModelConfig:
        raise NotFoundError(f"Request for unknown model: '{name}' version {version} is not found")

    with pytest.raises(ModelConfigError, match="step 0 \\(model 'a'\\): composing model is not available: .*version 3"):
        check_composing_models(cfg, "e", ensemble_steps(cfg, "e"), lookup)


class Adder(Scheduler):
    """A composing model's scheduler: adds ``amount`` after ``delay`` seconds; records overlap."""

    def __init__(self, amount: float, delay: float, log: list[str], fail: bool = False) -> None:
        self.amount, self.delay, self.log, self.fail = amount, delay, log, fail

    async def infer(self, request: InferenceRequest) -> InferenceResponse:
        self.log.append(f"start {request.model_name}")
        await asyncio.sleep(self.delay)
        self.log.append(f"end {request.model_name}")
        if self.fail:
            raise InvalidArgumentError("bad value")
        data = request.inputs[0].data + self.amount
        if len(request.inputs) > 1:
            data = data + request.inputs[1].data
        return InferenceResponse(request.model_name, 1, outputs=[Tensor("Z", DataType.FP32, data)])

    async def drain(self) -> None:
        pass

    def close(self) -> None:
        pass


def run_diamond(fail: str = "") -> tuple[list[str], object]:
    log: list[str] = []
    models = {}
    for name, amount in (("a", 1.0), ("b", 10.0), ("c", 100.0), ("d", 0.0)):
        two = name == "d"
        cfg = composing(x=io("X") + ("," + io("Y") if two else ""))
        models[name] = Model(name, 1, cfg, Adder(amount, 0.05, log, fail=name == fail))
    cfg = ensemble(DIAMOND)

    def lookup(name: str, version: int) -> Model:
        if name not in models:
            raise NotFoundError(f"Request for unknown model: '{name}' is not found")
        return models[name]

    scheduler = EnsembleScheduler("e", ensemble_steps(cfg, "e"), ["OUT"], lookup)
    model = Model("e", 1, cfg, scheduler)
    request = InferenceRequest("e", inputs=[Tensor("IN", DataType.FP32, np.zeros((1, 2), np.float32))])

    async def go() -> object:
        try:
            return await model.infer(request)
        except TritiumError as e:
            return e

    return log, (asyncio.run(go()), scheduler.stats)


def test_diamond_runs_independent_steps_together_and_joins_results() -> None:
    log, (response, stats) = run_diamond()
    assert isinstance(response, InferenceResponse)
    # a → b and c at once → d: ((0+1)+10) + ((0+1)+100)
    np.testing.assert_array_equal(response.outputs[0].data, np.full((1, 2), 112, np.float32))
    assert response.model_name == "e" and response.outputs[0].name == "OUT"
    assert log[:4] == ["start a", "end a", "start b", "start c"]
    assert stats.success.count == 1 and stats.inference_count == 1


def test_a_failing_step_fails_the_request_with_its_status_and_name() -> None:
    log, (error, stats) = run_diamond(fail="c")
    assert isinstance(error, InvalidArgumentError)
    assert str(error) == "in ensemble 'e', step 3 (model 'c') failed: bad value"
    assert "start d" not in log
    assert stats.fail.count == 1 and stats.failures == {"OTHER": 1}
