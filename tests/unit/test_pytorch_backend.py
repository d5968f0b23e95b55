"""The pytorch backend in-process: parameters whose effect is torch state, weight sharing, binding rules, errors."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import ml_dtypes
import numpy as np
import pytest
from google.protobuf import text_format

from tritium._proto import model_config_pb2 as mc
from tritium.backends import pytorch as ptb
from tritium.backends.base import InstanceSpec, ModelContext
from tritium.backends.registry import BackendRegistry
from tritium.core.errors import InvalidArgumentError, ModelConfigError, UnavailableError
from tritium.core.inference import InferenceRequest
from tritium.core.types import DataType, Tensor

torch = pytest.importorskip("torch")


class Scale(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 3


class Pair(torch.nn.Module):
    def forward(self, first: torch.Tensor, second: torch.Tensor):
        return first - second, first.to(torch.float64)


IO = """
    input [ { name: "INPUT__0" data_type: TYPE_FP32 dims: [ 4 ] } ]
    output [ { name: "OUTPUT__0" data_type: TYPE_FP32 dims: [ 4 ] } ]
"""


def _context(tmp_path, module, config: str, name: str = "m") -> ModelContext:
    os.makedirs(tmp_path / name / "1", exist_ok=True)
    torch.jit.save(torch.jit.script(module), str(tmp_path / name / "1" / "model.pt"))
    cfg = text_format.Parse(config, mc.ModelConfig())
    cfg.name, cfg.backend, cfg.default_model_filename = name, "pytorch", "model.pt"
    return ModelContext(name, 1, str(tmp_path / name), cfg)


def _params(**values: str) -> str:
    return "".join(f'parameters {{ key: "{k}" value: {{ string_value: "{v}" }} }}\n' for k, v in values.items())


def _spec(i: int = 0, kind: str = "KIND_CPU") -> InstanceSpec:
    return InstanceSpec(f"m_{i}", kind, 0, mc.ModelInstanceGroup())


def _instance(ctx: ModelContext, i: int = 0):
    model = ptb.PyTorchBackend().model_initialize(ctx)
    return model, model.instance_initialize(_spec(i))


def _request(x: np.ndarray, name: str = "INPUT__0", datatype: DataType = DataType.FP32, batch: int = 1) -> InferenceRequest:
    return InferenceRequest("m", inputs=[Tensor(name, datatype, x)], batch_size=batch)


@pytest.fixture
def restore_jit_state():
    """Execution flags are process (or thread) state in torch: put back what the test changed."""
    optimize = torch._C._get_graph_executor_optimize()
    executor = torch._C._jit_set_profiling_executor(True)
    profiling = torch._C._jit_set_profiling_mode(True)
    fuser = torch._C._jit_texpr_fuser_enabled()
    torch._C._jit_set_profiling_executor(executor)
    torch._C._jit_set_profiling_mode(profiling)
    yield
    torch._C._set_graph_executor_optimize(optimize)
    torch._C._jit_set_profiling_executor(executor)
    torch._C._jit_set_profiling_mode(profiling)
    torch._C._jit_set_texpr_fuser_enabled(fuser)


def _jit_state() -> dict[str, bool]:
    executor = torch._C._jit_set_profiling_executor(True)
    torch._C._jit_set_profiling_executor(executor)
    profiling = torch._C._jit_set_profiling_mode(True)
    torch._C._jit_set_profiling_mode(profiling)
    return {"optimize": torch._C._get_graph_executor_optimize(), "executor": executor, "profiling": profiling,
            "fuser": torch._C._jit_texpr_fuser_enabled()}


def test_missing_torch_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # what `import torch` sees when it is not installed
    with pytest.raises(UnavailableError, match=r"pip install 'tritium\[pytorch\]'"):
        ptb.PyTorchBackend().initialize({})
    with pytest.raises(UnavailableError, match=r"pip install 'tritium\[pytorch\]'"):
        BackendRegistry().get("pytorch")


def test_jit_parameters_set_torch_state_for_the_run(tmp_path, restore_jit_state):
    x = np.arange(4, dtype=np.float32)
    ctx = _context(tmp_path, Scale(), IO + _params(
        DISABLE_OPTIMIZED_EXECUTION="true", ENABLE_JIT_EXECUTOR="false", ENABLE_JIT_PROFILING="false",
        ENABLE_TENSOR_FUSER="false"))
    _, instance = _instance(ctx)
    torch._C._set_graph_executor_optimize(True)
    torch._C._jit_set_texpr_fuser_enabled(True)
    out = instance.execute([_request(x)])[0].outputs[0].data
    np.testing.assert_array_equal(out, x * 3)
    assert _jit_state() == {"optimize": False, "executor": False, "profiling": False, "fuser": False}

    ctx = _context(tmp_path, Scale(), IO + _params(
        DISABLE_OPTIMIZED_EXECUTION="false", ENABLE_JIT_EXECUTOR="true", ENABLE_JIT_PROFILING="true",
        ENABLE_TENSOR_FUSER="true"), name="m2")
    _, instance = _instance(ctx)
    instance.execute([_request(x)])
    assert _jit_state() == {"optimize": True, "executor": True, "profiling": True, "fuser": True}


def test_unset_jit_parameters_leave_torch_alone(tmp_path, restore_jit_state):
    _, instance = _instance(_context(tmp_path, Scale(), IO))
    torch._C._jit_set_texpr_fuser_enabled(False)
    torch._C._jit_set_profiling_mode(False)
    instance.execute([_request(np.zeros(4, np.float32))])
    state = _jit_state()
    assert state["fuser"] is False and state["profiling"] is False
    assert state["optimize"] is True  # optimized execution is on unless disabled, as in Triton


@pytest.mark.parametrize("sharing", ["true", "false"])
def test_weight_sharing_gives_instances_one_module(tmp_path, sharing):
    ctx = _context(tmp_path, Scale(), IO + _params(ENABLE_WEIGHT_SHARING=sharing))
    model = ptb.PyTorchBackend().model_initialize(ctx)
    a, b = model.instance_initialize(_spec(0)), model.instance_initialize(_spec(1))
    assert (a.module is b.module) is (sharing == "true")
    x = np.ones(4, np.float32)
    for instance in (a, b):
        np.testing.assert_array_equal(instance.execute([_request(x)])[0].outputs[0].data, x * 3)


def test_positional_names_bind_in_config_order(tmp_path):
    config = """
        max_batch_size: 4
        input [ { name: "x" data_type: TYPE_FP32 dims: [ 2 ] }, { name: "y" data_type: TYPE_FP32 dims: [ 2 ] } ]
        output [ { name: "diff" data_type: TYPE_FP32 dims: [ 2 ] }, { name: "wide" data_type: TYPE_FP64 dims: [ 2 ] } ]
    """
    _, instance = _instance(_context(tmp_path, Pair(), config))
    x, y = np.array([[5, 6]], np.float32), np.array([[1, 2]], np.float32)
    request = InferenceRequest("m", inputs=[Tensor("x", DataType.FP32, x), Tensor("y", DataType.FP32, y)])
    outputs = {t.name: t.data for t in instance.execute([request])[0].outputs}
    np.testing.assert_array_equal(outputs["diff"], x - y)
    assert outputs["wide"].dtype == np.float64


def test_named_index_out_of_range_refused(tmp_path):
    config = """
        input [ { name: "A__0" data_type: TYPE_FP32 dims: [ 2 ] }, { name: "B__5" data_type: TYPE_FP32 dims: [ 2 ] } ]
        output [ { name: "OUTPUT__0" data_type: TYPE_FP32 dims: [ 2 ] } ]
    """
    with pytest.raises(ModelConfigError, match="B__5"):
        _instance(_context(tmp_path, Pair(), config))


def test_unsupported_datatype_refused(tmp_path):
    config = IO.replace("TYPE_FP32 dims: [ 4 ] } ]\n    output", "TYPE_UINT32 dims: [ 4 ] } ]\n    output")
    with pytest.raises(ModelConfigError, match="unsupported datatype TYPE_UINT32 for input 'INPUT__0'"):
        _instance(_context(tmp_path, Scale(), config))


def test_output_datatype_mismatch_is_a_clear_error(tmp_path):
    _, instance = _instance(_context(tmp_path, Scale(), IO.replace("OUTPUT__0\" data_type: TYPE_FP32",
                                                                  "OUTPUT__0\" data_type: TYPE_INT32")))
    with pytest.raises(InvalidArgumentError, match="expects datatype TYPE_INT32 for output 'OUTPUT__0', model provides TYPE_FP32"):
        instance.execute([_request(np.zeros(4, np.float32))])


def test_batched_requests_split_back_and_bf16(tmp_path):
    config = """
        max_batch_size: 8
        input [ { name: "INPUT__0" data_type: TYPE_BF16 dims: [ 3 ] } ]
        output [ { name: "OUTPUT__0" data_type: TYPE_BF16 dims: [ 3 ] } ]
    """
    _, instance = _instance(_context(tmp_path, Scale(), config))
    a = np.array([[1, 2, 3]], dtype=ml_dtypes.bfloat16)
    b = np.array([[4, 5, 6], [0.5, -1, 2]], dtype=ml_dtypes.bfloat16)
    ra, rb = instance.execute([_request(a, datatype=DataType.BF16), _request(b, datatype=DataType.BF16, batch=2)])
    np.testing.assert_array_equal(ra.outputs[0].data.astype(np.float32), a.astype(np.float32) * 3)
    np.testing.assert_array_equal(rb.outputs[0].data.astype(np.float32), b.astype(np.float32) * 3)
    assert rb.outputs[0].data.dtype == ml_dtypes.bfloat16


def test_thread_counts_process_wide_first_model_wins(tmp_path):
    """INTRA/INTER_OP_THREAD_COUNT change torch's pools; inter-op can be set once per process, so run apart."""
    _context(tmp_path, Scale(), IO, name="a")
    code = textwrap.dedent(f"""
        import sys
        import torch
        from google.protobuf import text_format
        from tritium._proto import model_config_pb2 as mc
        from tritium.backends.base import ModelContext
        from tritium.backends.pytorch import PyTorchBackend
        def ctx(intra, inter):
            cfg = text_format.Parse(sys.argv[1], mc.ModelConfig())
            cfg.default_model_filename = "model.pt"
            for k, v in (("INTRA_OP_THREAD_COUNT", intra), ("INTER_OP_THREAD_COUNT", inter)):
                cfg.parameters[k].string_value = v
            return ModelContext("a", 1, {str(tmp_path / "a")!r}, cfg)
        backend = PyTorchBackend()
        before = (torch.get_num_threads(), torch.get_num_interop_threads())
        backend.model_initialize(ctx("1", "1"))
        first = (torch.get_num_threads(), torch.get_num_interop_threads())
        backend.model_initialize(ctx("3", "3"))
        print(before, first, (torch.get_num_threads(), torch.get_num_interop_threads()))
    """)
    out = subprocess.run([sys.executable, "-c", code, IO], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    before, first, second = out.stdout.strip().rsplit("\n", 1)[-1].split(") (")
    assert first.strip("()") == "1, 1" and second.strip("()") == "1, 1"
    assert "already set it to 1" in out.stderr


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA build of torch and a GPU")
def test_gpu_instance_and_cache_cleaning(tmp_path):
    ctx = _context(tmp_path, Scale(), IO + _params(ENABLE_CACHE_CLEANING="true"))
    model = ptb.PyTorchBackend().model_initialize(ctx)
    instance = model.instance_initialize(_spec(0, "KIND_GPU"))
    assert next(instance.module.parameters(), torch.zeros(1, device="cuda:0")).device.type == "cuda"
    out = instance.execute([_request(np.ones(4, np.float32))])[0].outputs[0].data
    np.testing.assert_array_equal(out, np.full(4, 3, np.float32))
    torch.cuda.synchronize()
    assert torch.cuda.memory_reserved(0) == 0  # emptied after the run


def test_gpu_instance_refused_without_cuda_torch(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this torch can use CUDA")
    model = ptb.PyTorchBackend().model_initialize(_context(tmp_path, Scale(), IO))
    with pytest.raises(UnavailableError, match="KIND_GPU but the installed torch .* cannot use CUDA"):
        model.instance_initialize(_spec(0, "KIND_GPU"))
