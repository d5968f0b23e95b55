"""Ensembles end to end: Python pre-processing → ONNX model → Python post-processing, through tritonclient.

One server in explicit mode loads only the ensemble: its composing models come with it.  Broken ensembles
are loaded with a config override into an empty folder, each giving its own message.
"""

from __future__ import annotations

import json
import os
import textwrap
import time

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from models import add_sub_graph, write_model
from server import RunningServer

PRE = '''
import numpy as np
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.Tensor(
                    "SCALED", pb_utils.get_input_tensor_by_name(r, "RAW").as_numpy() * 2)])
                for r in requests]
'''

POST = '''
import numpy as np
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for r in requests:
            total = pb_utils.get_input_tensor_by_name(r, "SUM").as_numpy()
            diff = pb_utils.get_input_tensor_by_name(r, "DIFF").as_numpy()
            if (total > 1000).any():
                responses.append(pb_utils.InferenceResponse(
                    error=pb_utils.TritonError("sum over 1000 is out of range")))
                continue
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("PRODUCT", total * diff)]))
        return responses
'''

SLEEPER = '''
import time
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def execute(self, requests):
        time.sleep(0.5)  # once per execution: concurrent requests that were batched share it
        return [pb_utils.InferenceResponse([pb_utils.Tensor(
                    "OUT", pb_utils.get_input_tensor_by_name(r, "IN").as_numpy() + 1)]) for r in requests]
'''


def io(name: str, dtype: str = "TYPE_FP32", dims: str = "4") -> str:
    return f'{{ name: "{name}", data_type: {dtype}, dims: [ {dims} ] }}'


def python_model(repo: str, name: str, source: str, inputs: list[str], outputs: list[str], extra: str = "") -> None:
    config = (f'backend: "python"\nmax_batch_size: 8\ninput [ {", ".join(inputs)} ]\n'
              f'output [ {", ".join(outputs)} ]\n{extra}')
    model_dir = write_model(repo, name, config=config)
    with open(os.path.join(model_dir, "1", "model.py"), "w") as f:
        f.write(textwrap.dedent(source))


PIPELINE = f'''
platform: "ensemble"
max_batch_size: 8
input [ {io("RAW")}, {io("OFFSET")} ]
output [ {io("RESULT")}, {io("TOTAL")} ]
ensemble_scheduling {{
  step [
    {{ model_name: "pre" model_version: -1 input_map {{ key: "RAW" value: "RAW" }}
      output_map {{ key: "SCALED" value: "scaled" }} }},
    {{ model_name: "add_sub" model_version: -1
      input_map {{ key: "INPUT0" value: "scaled" }} input_map {{ key: "INPUT1" value: "OFFSET" }}
      output_map {{ key: "OUTPUT0" value: "TOTAL" }} output_map {{ key: "OUTPUT1" value: "difference" }} }},
    {{ model_name: "post" input_map {{ key: "SUM" value: "TOTAL" }} input_map {{ key: "DIFF" value: "difference" }}
      output_map {{ key: "PRODUCT" value: "RESULT" }} }}
  ]
}}
'''

PARALLEL = f'''
platform: "ensemble"
max_batch_size: 8
input [ {io("X")} ]
output [ {io("A")}, {io("B")} ]
ensemble_scheduling {{
  step [
    {{ model_name: "sleeper" input_map {{ key: "IN" value: "X" }} output_map {{ key: "OUT" value: "A" }} }},
    {{ model_name: "sleeper" input_map {{ key: "IN" value: "X" }} output_map {{ key: "OUT" value: "B" }} }}
  ]
}}
'''

BATCHER = "dynamic_batching { max_queue_delay_microseconds: 20000 }"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    repo = str(tmp_path_factory.mktemp("ensembles"))
    python_model(repo, "pre", PRE, [io("RAW")], [io("SCALED")], BATCHER)
    python_model(repo, "post", POST, [io("SUM"), io("DIFF")], [io("PRODUCT")], BATCHER)
    python_model(repo, "sleeper", SLEEPER, [io("IN")], [io("OUT")], BATCHER)
    write_model(repo, "add_sub", add_sub_graph(shape=("batch", 4)),
                config=f'platform: "onnxruntime_onnx"\nmax_batch_size: 8\n{BATCHER}\n'
                       f'input [ {io("INPUT0")}, {io("INPUT1")} ]\noutput [ {io("OUTPUT0")}, {io("OUTPUT1")} ]')
    write_model(repo, "pipeline", config=PIPELINE)
    write_model(repo, "parallel", config=PARALLEL)
    os.makedirs(os.path.join(repo, "broken", "1"))
    with RunningServer([repo], ["--model-control-mode=explicit", "--load-model=pipeline",
                                "--load-model=parallel"]) as s:
        yield s


def client(server: RunningServer) -> httpclient.InferenceServerClient:
    return httpclient.InferenceServerClient(server.url, concurrency=16)


def pipeline_inputs(raw: np.ndarray, offset: np.ndarray) -> list[httpclient.InferInput]:
    inputs = [httpclient.InferInput("RAW", list(raw.shape), "FP32"), httpclient.InferInput("OFFSET", list(offset.shape), "FP32")]
    inputs[0].set_data_from_numpy(raw)
    inputs[1].set_data_from_numpy(offset)
    return inputs


def expected(raw: np.ndarray, offset: np.ndarray) -> np.ndarray:
    return (raw * 2 + offset) * (raw * 2 - offset)


def stats(c: httpclient.InferenceServerClient, name: str) -> dict:  # type: ignore[type-arg]
    return c.get_inference_statistics(name)["model_stats"][0]


def test_loading_the_ensemble_loaded_its_composing_models(server: RunningServer) -> None:
    c = client(server)
    for name in ("pipeline", "pre", "add_sub", "post", "parallel", "sleeper"):
        assert c.is_model_ready(name), name
    metadata = c.get_model_metadata("pipeline")
    assert metadata["platform"] == "ensemble"
    assert [t["name"] for t in metadata["inputs"]] == ["RAW", "OFFSET"]
    assert metadata["outputs"][0] == {"name": "RESULT", "datatype": "FP32", "shape": [-1, 4]}
    config = c.get_model_config("pipeline")
    assert [s["model_name"] for s in config["ensemble_scheduling"]["step"]] == ["pre", "add_sub", "post"]


def test_three_steps_give_the_composed_result(server: RunningServer) -> None:
    c = client(server)
    raw = np.arange(8, dtype=np.float32).reshape(2, 4)
    offset = np.full((2, 4), 3, dtype=np.float32)
    result = c.infer("pipeline", pipeline_inputs(raw, offset))
    np.testing.assert_allclose(result.as_numpy("RESULT"), expected(raw, offset))
    np.testing.assert_allclose(result.as_numpy("TOTAL"), raw * 2 + offset)
    only = c.infer("pipeline", pipeline_inputs(raw, offset), outputs=[httpclient.InferRequestedOutput("TOTAL")])
    assert only.as_numpy("RESULT") is None
    assert only.get_response()["model_name"] == "pipeline"


def test_grpc_reaches_the_ensemble_too(server: RunningServer) -> None:
    c = grpcclient.InferenceServerClient(server.grpc_url)
    raw = np.ones((1, 4), dtype=np.float32)
    offset = np.full((1, 4), 0.5, dtype=np.float32)
    inputs = [grpcclient.InferInput("RAW", [1, 4], "FP32"), grpcclient.InferInput("OFFSET", [1, 4], "FP32")]
    inputs[0].set_data_from_numpy(raw)
    inputs[1].set_data_from_numpy(offset)
    np.testing.assert_allclose(c.infer("pipeline", inputs).as_numpy("RESULT"), expected(raw, offset))


def test_concurrent_requests_are_batched_by_the_composing_models(server: RunningServer) -> None:
    c = client(server)
    before = {name: stats(c, name) for name in ("pipeline", "pre", "add_sub", "post")}
    rng = np.random.default_rng(0)
    samples = [(rng.standard_normal((1, 4)).astype(np.float32), rng.standard_normal((1, 4)).astype(np.float32))
               for _ in range(64)]
    pending = [c.async_infer("pipeline", pipeline_inputs(*s)) for s in samples]
    results = [p.get_result().as_numpy("RESULT") for p in pending]
    for (raw, offset), result in zip(samples, results):
        np.testing.assert_allclose(result, expected(raw, offset), rtol=1e-5)
    after = {name: stats(c, name) for name in before}
    for name in before:
        done = after[name]["inference_stats"]["success"]["count"] - before[name]["inference_stats"]["success"]["count"]
        assert done == 64, (name, done)  # the ensemble's requests, and each composing model's step requests
    assert after["pipeline"]["inference_count"] - before["pipeline"]["inference_count"] == 64
    sizes = {b["batch_size"] for b in after["add_sub"]["batch_stats"]}
    assert max(sizes) > 1, sizes
    assert after["add_sub"]["execution_count"] - before["add_sub"]["execution_count"] < 64


def test_independent_steps_run_at_the_same_time(server: RunningServer) -> None:
    c = client(server)
    x = np.zeros((1, 4), dtype=np.float32)
    inputs = [httpclient.InferInput("X", [1, 4], "FP32")]
    inputs[0].set_data_from_numpy(x)
    c.infer("parallel", inputs)  # warm
    start = time.monotonic()
    result = c.infer("parallel", inputs)
    elapsed = time.monotonic() - start
    np.testing.assert_array_equal(result.as_numpy("A"), x + 1)
    np.testing.assert_array_equal(result.as_numpy("B"), x + 1)
    # Each step sleeps 0.5 s; one after the other would take at least 1 s.
    assert elapsed < 0.98, elapsed


def test_a_failing_step_fails_the_request_naming_the_step(server: RunningServer) -> None:
    c = client(server)
    before = stats(c, "pipeline")["inference_stats"]["fail"]["count"]
    raw = np.full((1, 4), 600, dtype=np.float32)
    with pytest.raises(InferenceServerException) as e:
        c.infer("pipeline", pipeline_inputs(raw, np.zeros((1, 4), dtype=np.float32)))
    assert "in ensemble 'pipeline', step 2 (model 'post') failed" in e.value.message()
    assert "sum over 1000 is out of range" in e.value.message()
    assert stats(c, "pipeline")["inference_stats"]["fail"]["count"] == before + 1
    raw = np.ones((1, 4), dtype=np.float32)
    assert c.infer("pipeline", pipeline_inputs(raw, raw)).as_numpy("RESULT") is not None  # still serving


def test_ensemble_inputs_are_validated_like_any_model(server: RunningServer) -> None:
    c = client(server)
    inputs = [httpclient.InferInput("RAW", [1, 4], "FP32")]
    inputs[0].set_data_from_numpy(np.ones((1, 4), dtype=np.float32))
    with pytest.raises(InferenceServerException, match="missing required input"):
        c.infer("pipeline", inputs)


def broken(steps: str, inputs: str = io("RAW"), outputs: str = io("OUT")) -> str:
    return json.dumps({
        "platform": "ensemble", "max_batch_size": 8,
        "input": json.loads(f"[{inputs}]"), "output": json.loads(f"[{outputs}]"),
        "ensemble_scheduling": {"step": json.loads(f"[{steps}]")},
    })


def j(name: str, dtype: str = "TYPE_FP32", dims: str = "4") -> str:
    return json.dumps({"name": name, "data_type": dtype, "dims": [int(d) for d in dims.split(",")]})


def step(model: str, inputs: dict[str, str], outputs: dict[str, str]) -> str:
    return json.dumps({"model_name": model, "input_map": inputs, "output_map": outputs})


PRE_STEP = step("pre", {"RAW": "RAW"}, {"SCALED": "OUT"})


@pytest.mark.parametrize("config, message", [
    (broken(step("nope", {"X": "RAW"}, {"Y": "OUT"}), j("RAW"), j("OUT")),
     "in ensemble 'broken', composing model 'nope' failed to load"),
    (broken(step("add_sub", {"INPUT0": "RAW"}, {"OUTPUT0": "OUT"}), j("RAW"), j("OUT")),
     "input 'INPUT1' of step 0 (model 'add_sub') is not mapped to any ensemble tensor"),
    (broken(PRE_STEP + "," + step("pre", {"RAW": "RAW"}, {"SCALED": "OUT"}), j("RAW"), j("OUT")),
     "ensemble tensor 'OUT' is produced twice: by step 0 (model 'pre') and by step 1 (model 'pre')"),
    (broken(step("pre", {"RAW": "t2"}, {"SCALED": "t1"}) + "," + step("pre", {"RAW": "t1"}, {"SCALED": "t2"}) + ","
            + PRE_STEP, j("RAW"), j("OUT")),
     "the steps form a cycle: step 0 (model 'pre') needs 't2', step 1 (model 'pre') needs 't1'"),
    (broken(PRE_STEP, j("RAW", "TYPE_INT32"), j("OUT")),
     "ensemble tensor 'RAW': inconsistent data type: TYPE_INT32 is inferred from ensemble 'broken' input while "
     "TYPE_FP32 is inferred from input 'RAW' of step 0 (model 'pre')"),
    (broken(PRE_STEP, j("RAW", dims="5"), j("OUT")),
     "ensemble tensor 'RAW': inconsistent shape: [-1,5] is inferred from ensemble 'broken' input while [-1,4] is "
     "inferred from input 'RAW' of step 0 (model 'pre')"),
    (broken(PRE_STEP, j("RAW"), j("OUT") + "," + j("EXTRA")), "ensemble output 'EXTRA' is not written by any step"),
    (broken(step("pre", {"RAW": "MISSING"}, {"SCALED": "OUT"}), j("RAW"), j("OUT")),
     "ensemble tensor 'MISSING' (input 'RAW' of step 0 (model 'pre')) is neither an input of the ensemble nor an "
     "output of any step"),
    (broken(step("pre", {"RAW": "RAW"}, {"NOPE": "OUT"}), j("RAW"), j("OUT")),
     "ensemble tensor 'OUT' is mapped from non-existing output 'NOPE' of step 0 (model 'pre')"),
    (broken(step("parallel", {"X": "RAW"}, {"A": "OUT"}) + "," + step("broken", {"RAW": "RAW"}, {"OUT": "O2"}),
            j("RAW"), j("OUT")),
     "composing model 'broken' leads back to ensemble 'broken'"),
], ids=["unknown-model", "unmapped-input", "produced-twice", "cycle", "dtype", "shape", "unwritten-output",
        "unproduced-tensor", "unknown-output", "contains-itself"])
def test_config_errors_name_the_step_and_tensor(server: RunningServer, config: str, message: str) -> None:
    c = client(server)
    with pytest.raises(InferenceServerException) as e:
        c.load_model("broken", config=config)
    assert message in e.value.message()
    assert not c.is_model_ready("broken")
    rows = {r["name"]: r for r in c.get_model_repository_index()}
    assert message in rows["broken"].get("reason", "")
    assert c.is_model_ready("pipeline")


def test_unloading_a_composing_model_takes_the_ensemble_down_and_reloading_brings_it_back(server: RunningServer) -> None:
    c = client(server)
    c.unload_model("add_sub")
    assert not c.is_model_ready("pipeline")
    rows = {r["name"]: r for r in c.get_model_repository_index()}
    assert rows["pipeline"]["state"] in ("UNLOADING", "UNAVAILABLE")
    with pytest.raises(InferenceServerException, match="'pipeline'"):
        c.infer("pipeline", pipeline_inputs(np.ones((1, 4), np.float32), np.ones((1, 4), np.float32)))
    assert c.is_model_ready("pre") and c.is_model_ready("post")
    c.load_model("pipeline")  # loads add_sub again
    assert c.is_model_ready("add_sub") and c.is_model_ready("pipeline")
    raw = np.ones((1, 4), dtype=np.float32)
    np.testing.assert_allclose(c.infer("pipeline", pipeline_inputs(raw, raw)).as_numpy("RESULT"), expected(raw, raw))


def test_unload_dependents_unloads_the_composing_models_no_other_ensemble_uses(server: RunningServer) -> None:
    c = client(server)
    c.unload_model("parallel", unload_dependents=True)
    deadline = time.monotonic() + 10
    while c.is_model_ready("sleeper") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not c.is_model_ready("parallel") and not c.is_model_ready("sleeper")
    assert c.is_model_ready("pipeline")
