"""TorchScript models served by a real tritium server, driven through tritonclient.http.

Each model is made here (traced or scripted) and saved as ``model.pt``; every answer is compared
with calling the same module directly.
"""

from __future__ import annotations

import concurrent.futures
import os
import re
import time
from typing import Dict, List  # noqa: UP035 - TorchScript reads these annotations

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from server import RunningServer

torch = pytest.importorskip("torch")


class TwoInputs(torch.nn.Module):
    """Bound by forward() argument names; answers a dict."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> Dict[str, torch.Tensor]:
        return {"sum": a + b, "prod": a * b}


class Upper(torch.nn.Module):
    """BYTES in and out: TorchScript's List[str]."""

    def forward(self, text: List[str]) -> List[str]:
        return [t.upper() + "!" for t in text]


class TwoOutputs(torch.nn.Module):
    """A tuple answer, bound by the <name>__<index> convention."""

    def forward(self, x: torch.Tensor):
        return x * 2, (x > 0).to(torch.int32)


class BatchProbe(torch.nn.Module):
    """Echoes its input and says how many rows the batch it ran in had."""

    def forward(self, x: torch.Tensor):
        return x, torch.full([x.size(0), 1], x.size(0), dtype=torch.int64)


class InferenceProbe(torch.nn.Module):
    """Says whether its results are inference tensors (INFERENCE_MODE) and whether autograd is on."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x * 2
        flags = torch.zeros(2, dtype=torch.bool)
        if y.is_inference():
            flags[0] = True
        if torch.is_grad_enabled():
            flags[1] = True
        return flags


def _mlp() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 8)).eval()


def _write(repo: str, name: str, module, config: str) -> None:
    os.makedirs(os.path.join(repo, name, "1"), exist_ok=True)
    if module is not None:
        torch.jit.save(module, os.path.join(repo, name, "1", "model.pt"))
    with open(os.path.join(repo, name, "config.pbtxt"), "w") as f:
        f.write(config)


def _probe_config(inference_mode: str) -> str:
    return f"""
        backend: "pytorch"
        input [ {{ name: "INPUT__0" data_type: TYPE_FP32 dims: [ 2 ] }} ]
        output [ {{ name: "OUTPUT__0" data_type: TYPE_BOOL dims: [ 2 ] }} ]
        parameters {{ key: "INFERENCE_MODE" value: {{ string_value: "{inference_mode}" }} }}
    """


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("torch_repo"))
    mlp = _mlp()
    traced = torch.jit.trace(mlp, torch.zeros(1, 16))
    _write(root, "mlp", traced, """
        platform: "pytorch_libtorch"
        max_batch_size: 8
        input [ { name: "INPUT__0" data_type: TYPE_FP32 dims: [ 16 ] } ]
        output [ { name: "OUTPUT__0" data_type: TYPE_FP32 dims: [ 8 ] } ]
        dynamic_batching { max_queue_delay_microseconds: 20000 }
        instance_group [ { kind: KIND_CPU count: 2 } ]
        parameters { key: "ENABLE_WEIGHT_SHARING" value: { string_value: "true" } }
    """)
    # Inputs listed in the reverse order of forward(a, b): bound by name, not position.
    _write(root, "two_inputs", torch.jit.script(TwoInputs()), """
        backend: "pytorch"
        max_batch_size: 4
        input [ { name: "b" data_type: TYPE_INT64 dims: [ 3 ] }, { name: "a" data_type: TYPE_INT64 dims: [ 3 ] } ]
        output [ { name: "prod" data_type: TYPE_INT64 dims: [ 3 ] }, { name: "sum" data_type: TYPE_INT64 dims: [ 3 ] } ]
    """)
    _write(root, "strings", torch.jit.script(Upper()), """
        backend: "pytorch"
        input [ { name: "INPUT__0" data_type: TYPE_STRING dims: [ -1 ] } ]
        output [ { name: "OUTPUT__0" data_type: TYPE_STRING dims: [ -1 ] } ]
    """)
    # Outputs listed out of order: OUTPUT__1 is the second element of the tuple whatever its place here.
    _write(root, "two_outputs", torch.jit.script(TwoOutputs()), """
        backend: "pytorch"
        max_batch_size: 4
        input [ { name: "INPUT__0" data_type: TYPE_FP32 dims: [ 5 ] } ]
        output [ { name: "OUTPUT__1" data_type: TYPE_INT32 dims: [ 5 ] },
                 { name: "OUTPUT__0" data_type: TYPE_FP32 dims: [ 5 ] } ]
    """)
    _write(root, "batch_probe", torch.jit.script(BatchProbe()), """
        backend: "pytorch"
        max_batch_size: 16
        input [ { name: "INPUT__0" data_type: TYPE_FP32 dims: [ 1 ] } ]
        output [ { name: "OUTPUT__0" data_type: TYPE_FP32 dims: [ 1 ] }, { name: "OUTPUT__1" data_type: TYPE_INT64 dims: [ 1 ] } ]
        dynamic_batching { max_queue_delay_microseconds: 50000 }
    """)
    _write(root, "probe_inference", torch.jit.script(InferenceProbe()), _probe_config("true"))
    _write(root, "probe_no_grad", torch.jit.script(InferenceProbe()), _probe_config("false"))
    _write(root, "tuned", traced, """
        backend: "pytorch"
        max_batch_size: 8
        input [ { name: "INPUT__0" data_type: TYPE_FP32 dims: [ 16 ] } ]
        output [ { name: "OUTPUT__0" data_type: TYPE_FP32 dims: [ 8 ] } ]
        parameters [
          { key: "INTRA_OP_THREAD_COUNT" value: { string_value: "1" } },
          { key: "INTER_OP_THREAD_COUNT" value: { string_value: "1" } },
          { key: "ENABLE_NVFUSER" value: { string_value: "true" } },
          { key: "DISABLE_OPTIMIZED_EXECUTION" value: { string_value: "true" } },
          { key: "ENABLE_JIT_EXECUTOR" value: { string_value: "false" } },
          { key: "ENABLE_JIT_PROFILING" value: { string_value: "false" } },
          { key: "ENABLE_TENSOR_FUSER" value: { string_value: "false" } },
          { key: "ENABLE_CACHE_CLEANING" value: { string_value: "true" } }
        ]
    """)
    # Broken ones: each must be UNAVAILABLE with its reason while the rest serve.
    _write(root, "corrupt", None, 'backend: "pytorch"\n'
           'input [ { name: "INPUT__0" data_type: TYPE_FP32 dims: [ 4 ] } ]\n'
           'output [ { name: "OUTPUT__0" data_type: TYPE_FP32 dims: [ 4 ] } ]\n')
    with open(os.path.join(root, "corrupt", "1", "model.pt"), "wb") as f:
        f.write(np.random.default_rng(0).bytes(1024))
    _write(root, "wrong_arity", torch.jit.script(TwoInputs()), """
        backend: "pytorch"
        input [ { name: "a" data_type: TYPE_INT64 dims: [ 3 ] } ]
        output [ { name: "sum" data_type: TYPE_INT64 dims: [ 3 ] } ]
    """)
    _write(root, "bad_parameter", traced, """
        backend: "pytorch"
        max_batch_size: 8
        input [ { name: "INPUT__0" data_type: TYPE_FP32 dims: [ 16 ] } ]
        output [ { name: "OUTPUT__0" data_type: TYPE_FP32 dims: [ 8 ] } ]
        parameters { key: "INFERENCE_MODE" value: { string_value: "maybe" } }
    """)
    _write(root, "gpu", traced, """
        backend: "pytorch"
        max_batch_size: 8
        input [ { name: "INPUT__0" data_type: TYPE_FP32 dims: [ 16 ] } ]
        output [ { name: "OUTPUT__0" data_type: TYPE_FP32 dims: [ 8 ] } ]
        instance_group [ { kind: KIND_GPU count: 1 } ]
    """)
    return root


@pytest.fixture(scope="module")
def server(repo):
    with RunningServer([repo], ["--exit-on-error=false"]) as s:
        deadline = time.monotonic() + 60
        client = httpclient.InferenceServerClient(s.url)
        while not client.is_model_ready("tuned") and time.monotonic() < deadline:
            time.sleep(0.1)
        yield s


@pytest.fixture
def client(server):
    c = httpclient.InferenceServerClient(server.url)
    yield c
    c.close()


def _infer(client, model: str, inputs: dict[str, np.ndarray], outputs: list[str] | None = None):
    tensors = []
    for name, array in inputs.items():
        datatype = "BYTES" if array.dtype == object else {
            np.float32: "FP32", np.int64: "INT64", np.int32: "INT32"}[array.dtype.type]
        t = httpclient.InferInput(name, list(array.shape), datatype)
        t.set_data_from_numpy(array)
        tensors.append(t)
    requested = [httpclient.InferRequestedOutput(n) for n in outputs] if outputs else None
    return client.infer(model, tensors, outputs=requested)


def test_traced_mlp_matches_module(client):
    x = np.random.default_rng(1).standard_normal((3, 16)).astype(np.float32)
    result = _infer(client, "mlp", {"INPUT__0": x}).as_numpy("OUTPUT__0")
    with torch.no_grad():
        expected = _mlp()(torch.from_numpy(x)).numpy()
    assert result.shape == (3, 8)
    np.testing.assert_allclose(result, expected, rtol=1e-5, atol=1e-6)


def test_concurrent_requests_are_batched_and_split_back(client, server):
    rng = np.random.default_rng(2)
    xs = [rng.standard_normal((1 + i % 2, 16)).astype(np.float32) for i in range(12)]
    module = _mlp()

    def one(x):
        c = httpclient.InferenceServerClient(server.url)
        try:
            return _infer(c, "mlp", {"INPUT__0": x}).as_numpy("OUTPUT__0")
        finally:
            c.close()

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        results = list(pool.map(one, xs))
    with torch.no_grad():
        for x, got in zip(xs, results):
            np.testing.assert_allclose(got, module(torch.from_numpy(x)).numpy(), rtol=1e-5, atol=1e-6)


def test_dynamic_batcher_joins_requests(server):
    """The model answers the batch size it ran with: concurrent single requests must have been joined."""
    def one(i):
        c = httpclient.InferenceServerClient(server.url)
        try:
            return _infer(c, "batch_probe", {"INPUT__0": np.full((1, 1), i, np.float32)})
        finally:
            c.close()

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(16)))
    for i, r in enumerate(results):
        assert r.as_numpy("OUTPUT__0")[0, 0] == i  # each request gets its own row back
    assert max(int(r.as_numpy("OUTPUT__1")[0, 0]) for r in results) > 1


def test_inputs_bound_by_forward_argument_names_and_dict_outputs(client):
    a = np.array([[1, 2, 3], [4, 5, 6]], dtype=np.int64)
    b = np.array([[10, 20, 30], [1, 1, 1]], dtype=np.int64)
    result = _infer(client, "two_inputs", {"a": a, "b": b})
    np.testing.assert_array_equal(result.as_numpy("sum"), a + b)
    np.testing.assert_array_equal(result.as_numpy("prod"), a * b)
    only = _infer(client, "two_inputs", {"a": a, "b": b}, outputs=["prod"])
    assert only.as_numpy("sum") is None
    np.testing.assert_array_equal(only.as_numpy("prod"), a * b)


def test_strings_in_and_out(client):
    text = np.array([b"hello", "gr\u00fc\u00dfe".encode(), b""], dtype=object)
    result = _infer(client, "strings", {"INPUT__0": text}).as_numpy("OUTPUT__0")
    expected = torch.jit.script(Upper())([t.decode() for t in text])
    assert [r.decode() for r in result] == expected
    assert expected[0] == "HELLO!" and expected[2] == "!"  # TorchScript's upper() leaves non-ASCII alone


def test_tuple_outputs_bound_by_index(client):
    x = np.array([[-1, 0, 1, 2, -3]], dtype=np.float32)
    result = _infer(client, "two_outputs", {"INPUT__0": x})
    np.testing.assert_array_equal(result.as_numpy("OUTPUT__0"), x * 2)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT__1"), (x > 0).astype(np.int32))


def test_inference_mode_parameter(client):
    """INFERENCE_MODE true: results are inference tensors; false: torch.no_grad only. Autograd is off both ways."""
    x = np.ones(2, dtype=np.float32)
    on = _infer(client, "probe_inference", {"INPUT__0": x}).as_numpy("OUTPUT__0")
    off = _infer(client, "probe_no_grad", {"INPUT__0": x}).as_numpy("OUTPUT__0")
    assert on.tolist() == [True, False]
    assert off.tolist() == [False, False]


def test_tuned_model_serves_and_logs_its_settings(client, server):
    x = np.random.default_rng(3).standard_normal((2, 16)).astype(np.float32)
    result = _infer(client, "tuned", {"INPUT__0": x}).as_numpy("OUTPUT__0")
    with torch.no_grad():
        np.testing.assert_allclose(result, _mlp()(torch.from_numpy(x)).numpy(), rtol=1e-5, atol=1e-6)
    log = server.output()
    # The counts are read back from torch after setting them.
    assert "Intra op thread count is set to 1 for model 'tuned'" in log
    assert "Inter op thread count is set to 1 for model 'tuned'" in log
    assert "optimized execution is disabled" in log
    assert re.search(r"ENABLE_NVFUSER has no effect: torch \S+ no longer has NVFuser", log)


def test_broken_models_unavailable_with_reasons(client, server):
    log = server.output()
    reasons = {
        "corrupt": ["failed to load model 'corrupt'", "model.pt", "TorchScript"],
        "wrong_arity": ["configuration expects 1 inputs, model provides 2"],
        "bad_parameter": ["INFERENCE_MODE", "maybe"],
        "gpu": ["KIND_GPU"],
    }
    for name, parts in reasons.items():
        lines = "\n".join(line for line in log.splitlines() if f"failed to load '{name}'" in line)
        for part in parts:
            assert part in lines, (name, part, lines or log)
        assert not client.is_model_ready(name)
    with pytest.raises(InferenceServerException, match="corrupt"):
        _infer(client, "corrupt", {"INPUT__0": np.zeros((4,), np.float32)})
    assert client.is_model_ready("mlp")
