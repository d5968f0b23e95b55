"""The onnxruntime options Triton's onnxruntime backend reads from a config reach the session."""

from __future__ import annotations

import onnxruntime as ort
import pytest
from google.protobuf import text_format

from tritium._proto import model_config_pb2 as mc
from tritium.backends.base import ModelContext
from tritium.backends.onnxruntime import OnnxRuntimeBackend, _session_options
from tritium.core.errors import ModelConfigError

from models import identity_graph, write_model


def _ctx(text: str, backend_config: dict[str, str] | None = None, model_dir: str = "/nonexistent") -> ModelContext:
    config = text_format.Parse(text, mc.ModelConfig())
    return ModelContext("m", 1, model_dir, config, backend_config or {})


def test_thread_counts_and_execution_mode():
    options = _session_options(_ctx("""
        parameters { key: "intra_op_thread_count" value: { string_value: "3" } }
        parameters { key: "inter_op_thread_count" value: { string_value: "2" } }
        parameters { key: "execution_mode" value: { string_value: "1" } }
        parameters { key: "enable_mem_arena" value: { string_value: "false" } }
        parameters { key: "enable_mem_pattern" value: { string_value: "0" } }
    """))
    assert options.intra_op_num_threads == 3
    assert options.inter_op_num_threads == 2
    assert options.execution_mode == ort.ExecutionMode.ORT_PARALLEL
    assert options.enable_cpu_mem_arena is False
    assert options.enable_mem_pattern is False


def test_backend_config_supplies_thread_counts():
    options = _session_options(_ctx("", {"intra_op_thread_count": "1"}))
    assert options.intra_op_num_threads == 1


@pytest.mark.parametrize("level, expected", [
    (None, ort.GraphOptimizationLevel.ORT_ENABLE_ALL),
    (-1, ort.GraphOptimizationLevel.ORT_ENABLE_BASIC),
    (1, ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED),
    (2, ort.GraphOptimizationLevel.ORT_DISABLE_ALL),
])
def test_graph_optimization_level(level, expected):
    text = "" if level is None else f"optimization {{ graph {{ level: {level} }} }}"
    assert _session_options(_ctx(text)).graph_optimization_level == expected


def test_non_integer_parameter_names_itself():
    with pytest.raises(ModelConfigError, match="intra_op_thread_count"):
        _session_options(_ctx('parameters { key: "intra_op_thread_count" value: { string_value: "many" } }'))


def test_auto_complete_uses_default_max_batch_size_from_backend_config(tmp_path):
    model_dir = write_model(str(tmp_path), "m", identity_graph("FP32", ("batch", 3)))
    ctx = _ctx("", {"default-max-batch-size": "16"}, model_dir)
    ctx.config.default_model_filename = "model.onnx"
    OnnxRuntimeBackend().auto_complete_config(ctx)
    assert ctx.config.max_batch_size == 16
    assert [list(t.dims) for t in ctx.config.input] == [[3]]
    assert ctx.config.HasField("dynamic_batching")


def test_auto_complete_fixed_batch_dim_does_not_batch(tmp_path):
    model_dir = write_model(str(tmp_path), "m", identity_graph("FP32", (2, 3)))
    ctx = _ctx("", {}, model_dir)
    ctx.config.default_model_filename = "model.onnx"
    OnnxRuntimeBackend().auto_complete_config(ctx)
    assert ctx.config.max_batch_size == 0
    assert [list(t.dims) for t in ctx.config.input] == [[2, 3]]
    assert not ctx.config.HasField("dynamic_batching")
