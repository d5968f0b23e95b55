"""ONNX Runtime backend (``backend: "onnxruntime"``, ``platform: "onnxruntime_onnx"``).

Honours the options Triton's onnxruntime backend reads from the config:
``parameters`` ``intra_op_thread_count``, ``inter_op_thread_count``,
``execution_mode``, ``enable_mem_arena``, ``enable_mem_pattern``, and
``optimization { graph { level } }``; GPU instances use the CUDA execution
provider and fail to load when it is missing.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from tritium._proto import model_config_pb2 as mc
from tritium.config.paths import is_inside, without_absolute_paths
from tritium.core.errors import InternalError, InvalidArgumentError, ModelConfigError, TritiumError, UnavailableError
from tritium.core.inference import InferenceRequest, InferenceResponse
from tritium.core.types import DataType, Tensor

from . import parameters
from .base import ALL_INSTANCE_KINDS, Backend, InstanceSpec, ModelContext, ModelInstanceState, ModelState
from .batching import batch_input_tensor, batch_inputs, requested_union, scatter_with_input_shape, split_batch

log = logging.getLogger(__name__)

# ONNX Runtime's type strings -> config data types.
_ORT_TYPES = {
    "tensor(bool)": mc.TYPE_BOOL,
    "tensor(uint8)": mc.TYPE_UINT8,
    "tensor(uint16)": mc.TYPE_UINT16,
    "tensor(uint32)": mc.TYPE_UINT32,
    "tensor(uint64)": mc.TYPE_UINT64,
    "tensor(int8)": mc.TYPE_INT8,
    "tensor(int16)": mc.TYPE_INT16,
    "tensor(int32)": mc.TYPE_INT32,
    "tensor(int64)": mc.TYPE_INT64,
    "tensor(float16)": mc.TYPE_FP16,
    "tensor(float)": mc.TYPE_FP32,
    "tensor(double)": mc.TYPE_FP64,
    "tensor(string)": mc.TYPE_STRING,
    "tensor(bfloat16)": mc.TYPE_BF16,
}
_GRAPH_LEVELS = {-1: "ORT_ENABLE_BASIC", 1: "ORT_ENABLE_EXTENDED", 2: "ORT_DISABLE_ALL"}


def _ort() -> Any:
    try:
        import onnxruntime
    except ImportError as e:  # pragma: no cover - onnxruntime is a core dependency
        raise UnavailableError(f"the onnxruntime backend needs the 'onnxruntime' package: {e}") from None
    return onnxruntime


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"
    #: KIND_GPU with onnxruntime-gpu installed; KIND_MODEL runs on the CPU provider, as before.
    instance_kinds = ALL_INSTANCE_KINDS

    def __init__(self) -> None:
        self._backend_config: Mapping[str, str] = {}

    def initialize(self, backend_config: Mapping[str, str]) -> None:
        self._backend_config = backend_config
        ort = _ort()
        ort.set_default_logger_severity(3)

    def default_instance_count(self, kind: str) -> int:
        return 2 if kind == "KIND_CPU" else 1

    def auto_complete_config(self, ctx: ModelContext) -> None:
        """Triton's rules: fill I/O from the graph; batching when every first dimension is dynamic."""
        config = ctx.config
        session = _open_session(ctx, _session_options(ctx), ["CPUExecutionProvider"])
        inputs, outputs = session.get_inputs(), session.get_outputs()
        can_batch = all(_is_dynamic(a.shape[0]) if a.shape else False for a in (*inputs, *outputs))
        if config.max_batch_size == 0 and can_batch and not config.input and not config.output:
            default = ctx.backend_config.get("default-max-batch-size", "4")
            config.max_batch_size = int(default)
        skip = 1 if config.max_batch_size > 0 else 0
        if not config.input:
            for arg in inputs:
                _add_tensor(config.input.add(), arg, skip, ctx.name)
        if not config.output:
            for arg in outputs:
                _add_tensor(config.output.add(), arg, skip, ctx.name)
        if config.max_batch_size > 1 and not _has_scheduler(config):
            config.dynamic_batching.SetInParent()

    def model_initialize(self, ctx: ModelContext) -> ModelState:
        path = ctx.model_path
        if not os.path.exists(path):
            raise ModelConfigError(f"unable to find '{ctx.shown(path)}' for model '{ctx.name}'")
        return OnnxModelState(ctx)


class OnnxModelState(ModelState):
    def __init__(self, ctx: ModelContext) -> None:
        super().__init__(ctx)
        self.options = _session_options(ctx)

    def instance_initialize(self, spec: InstanceSpec) -> ModelInstanceState:
        ort = _ort()
        if spec.kind == "KIND_GPU":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise UnavailableError(
                    f"instance {spec.name} of model {self.ctx.name} has kind KIND_GPU but the installed "
                    "onnxruntime has no CUDA execution provider (install onnxruntime-gpu)"
                )
            providers: list[Any] = [("CUDAExecutionProvider", {"device_id": spec.device_id})]
        else:
            providers = ["CPUExecutionProvider"]
        session = _open_session(self.ctx, self.options, providers)
        instance = OnnxInstanceState(spec, self.ctx, session)
        return instance


class OnnxInstanceState(ModelInstanceState):
    def __init__(self, spec: InstanceSpec, ctx: ModelContext, session: Any) -> None:
        super().__init__(spec)
        self.ctx = ctx
        self.session = session
        config = ctx.config
        self.model_name = ctx.name
        self.version = ctx.version
        # Implicit sequence state outputs are run like outputs; the sequence batcher keeps them between requests.
        states = config.sequence_batching.state
        self.output_names = [o.name for o in config.output] + [s.output_name for s in states]
        self.output_types = {o.name: DataType.from_config(mc.DataType.Name(o.data_type)) for o in config.output}
        self.output_types.update({s.output_name: DataType.from_config(mc.DataType.Name(s.data_type)) for s in states})
        self.string_inputs = {i.name for i in config.input if i.data_type == mc.TYPE_STRING}
        self.ragged_inputs = frozenset(i.name for i in config.input if i.allow_ragged_batch)
        self.batch_input_specs = [
            (b, DataType.from_config(mc.DataType.Name(b.data_type)).numpy_dtype) for b in config.batch_input
        ]
        #: batch_output target -> (source input, config dims)
        self.scatter_outputs = {
            target: (b.source_input[0], tuple(next(o.dims for o in config.output if o.name == target)))
            for b in config.batch_output for target in b.target_name
        }
        #: Phase stamps of the last execute (monotonic ns), read by the instance worker for statistics.
        self.input_end_ns = 0
        self.infer_end_ns = 0
        for t in (*config.input, *config.output):
            if t.data_type == mc.TYPE_BF16:
                # onnxruntime's Python API has no numpy type for bfloat16 and cannot hand such outputs back.
                raise ModelConfigError(
                    f"unable to load model '{ctx.name}': tensor '{t.name}' is TYPE_BF16, which onnxruntime's "
                    "Python API cannot exchange; cast to FP32 or FP16 in the model"
                )
        graph_inputs = {a.name: a for a in session.get_inputs()}
        graph_outputs = {a.name: a for a in session.get_outputs()}
        for i in config.input:
            if i.name not in graph_inputs:
                raise ModelConfigError(
                    f"unable to load model '{ctx.name}', configuration expects input '{i.name}' but the model only has "
                    f"inputs {sorted(graph_inputs)}"
                )
            if i.allow_ragged_batch:
                if len(graph_inputs[i.name].shape or [1]) != 1:
                    raise ModelConfigError(
                        f"unable to load model '{ctx.name}', ragged input '{i.name}' must be 1-dimensional in the "
                        f"model (the batch is joined into one flat tensor), the model expects "
                        f"{graph_inputs[i.name].shape}"
                    )
                continue
            _check_against_graph(ctx.name, config, "input", i, graph_inputs[i.name])
        for b in config.batch_input:
            if b.target_name[0] not in graph_inputs:
                raise ModelConfigError(
                    f"unable to load model '{ctx.name}', batch input '{b.target_name[0]}' is not an input of the model "
                    f"(inputs {sorted(graph_inputs)})"
                )
        for state in states:
            if state.input_name not in graph_inputs or state.output_name not in graph_outputs:
                raise ModelConfigError(
                    f"unable to load model '{ctx.name}', sequence state '{state.input_name}' -> '{state.output_name}' "
                    f"must be an input and an output of the model (inputs {sorted(graph_inputs)}, outputs "
                    f"{sorted(graph_outputs)})"
                )
        for o in config.output:
            if o.name not in graph_outputs:
                raise ModelConfigError(
                    f"unable to load model '{ctx.name}', configuration expects output '{o.name}' but the model "
                    f"only has outputs {sorted(graph_outputs)}"
                )
            if o.name not in self.scatter_outputs:
                _check_against_graph(ctx.name, config, "output", o, graph_outputs[o.name])

    def execute(self, requests: Sequence[InferenceRequest]) -> list[InferenceResponse | TritiumError]:
        feeds = batch_inputs(requests, self.ragged_inputs)
        for name in self.string_inputs:
            feeds[name] = _bytes_to_str(feeds[name], name)
        for spec, dtype in self.batch_input_specs:
            feeds[spec.target_name[0]] = batch_input_tensor(spec, requests, dtype)
        names = requested_union(requests, self.output_names)
        self.input_end_ns = time.monotonic_ns()
        try:
            results = self.session.run(names, feeds)
        except Exception as e:  # onnxruntime raises its own exception types
            raise InternalError(f"onnxruntime failed to run model '{self.model_name}': {e}") from None
        self.infer_end_ns = time.monotonic_ns()
        per_request: list[list[Tensor]] = [[] for _ in requests]
        for name, array in zip(names, results, strict=False):
            datatype = self.output_types[name]
            if datatype is DataType.BYTES:
                array = _str_to_bytes(array)
            elif array.dtype != datatype.numpy_dtype:
                raise InternalError(
                    f"model '{self.model_name}' output '{name}' is {array.dtype} but the configuration says "
                    f"{datatype.config_name}"
                )
            scatter = self.scatter_outputs.get(name)
            if scatter is not None:
                views = scatter_with_input_shape(array, requests, scatter[0], scatter[1])
            else:
                views = split_batch(array, requests)
            for outputs, view in zip(per_request, views, strict=False):
                outputs.append(Tensor(name, datatype, view))
        return [
            InferenceResponse(self.model_name, self.version, request.id, outputs)
            for request, outputs in zip(requests, per_request, strict=False)
        ]

    def finalize(self) -> None:
        self.session = None


def _check_against_graph(model_name: str, config: mc.ModelConfig, what: str, tensor: Any, arg: Any) -> None:
    """Refuse at load time a config whose data type or shape the graph cannot take (as Triton's backend does),
    rather than failing every request later."""
    graph_type = _ORT_TYPES.get(arg.type)
    if graph_type is not None and graph_type != tensor.data_type:
        raise ModelConfigError(
            f"unable to load model '{model_name}', configuration expects datatype "
            f"{mc.DataType.Name(tensor.data_type)} for {what} '{tensor.name}', "
            f"model provides {mc.DataType.Name(graph_type)}"
        )
    graph_shape = [d if isinstance(d, int) and d >= 0 else -1 for d in (arg.shape or [])]
    if not graph_shape:  # a scalar, or a tensor of unknown rank: onnxruntime does not tell them apart
        return
    dims = list(tensor.reshape.shape) if tensor.HasField("reshape") else list(tensor.dims)
    full = ([-1] if config.max_batch_size > 0 else []) + dims
    clash = any(g >= 0 and c >= 0 and g != c for g, c in zip(graph_shape, full, strict=False))
    if len(full) != len(graph_shape) or clash:
        raise ModelConfigError(
            f"unable to load model '{model_name}', {what} '{tensor.name}': the model expects shape {graph_shape} but "
            f"the configuration specifies {full} (max_batch_size {config.max_batch_size}, "
            f"{'reshape' if tensor.HasField('reshape') else 'dims'} {dims})"
        )


def _open_session(ctx: ModelContext, options: Any, providers: list[Any]) -> Any:
    ort = _ort()
    path = ctx.model_path
    if os.path.isdir(path):
        path = os.path.join(path, "model.onnx")
        if not is_inside(ctx.model_dir, path):  # the folder was checked; a file in it may still lead elsewhere
            raise ModelConfigError(f"model '{ctx.name}': model file '{ctx.shown(path)}' leaves the model directory")
    if not os.path.exists(path):
        raise ModelConfigError(f"unable to find '{ctx.shown(ctx.model_path)}' for model '{ctx.name}'")
    try:
        return ort.InferenceSession(path, sess_options=options, providers=providers)
    except Exception as e:  # onnxruntime's text names files by full paths (external data too): not for clients
        raise InvalidArgumentError(f"unable to load model '{ctx.name}' from {ctx.shown(path)}: "
                                   f"{without_absolute_paths(str(e), ctx.model_dir)}") from None


def _session_options(ctx: ModelContext) -> Any:
    ort = _ort()
    options = ort.SessionOptions()
    options.log_severity_level = 3

    def int_param(key: str) -> int | None:
        return parameters.integer(ctx, key, ctx.backend_config)

    if (n := int_param("intra_op_thread_count")) is not None and n > 0:
        options.intra_op_num_threads = n
    if (n := int_param("inter_op_thread_count")) is not None and n > 0:
        options.inter_op_num_threads = n
    if (n := int_param("execution_mode")) is not None:
        options.execution_mode = ort.ExecutionMode.ORT_PARALLEL if n == 1 else ort.ExecutionMode.ORT_SEQUENTIAL
    for key, attr in (("enable_mem_arena", "enable_cpu_mem_arena"), ("enable_mem_pattern", "enable_mem_pattern")):
        enabled = parameters.flag(ctx, key, strict=False)
        if enabled is not None:
            setattr(options, attr, enabled)
    level = ctx.config.optimization.graph.level if ctx.config.HasField("optimization") else 0
    options.graph_optimization_level = getattr(
        ort.GraphOptimizationLevel, _GRAPH_LEVELS.get(level, "ORT_ENABLE_ALL")
    )
    return options


def _is_dynamic(dim: Any) -> bool:
    return not isinstance(dim, int) or dim < 0


def _add_tensor(tensor: Any, arg: Any, skip: int, model_name: str) -> None:
    if arg.type not in _ORT_TYPES:
        raise ModelConfigError(f"model '{model_name}': tensor '{arg.name}' has unsupported type {arg.type}")
    tensor.name = arg.name
    tensor.data_type = _ORT_TYPES[arg.type]
    dims = [d if isinstance(d, int) and d >= 0 else -1 for d in arg.shape[skip:]]
    tensor.dims.extend(dims)
    if not dims:
        tensor.reshape.SetInParent()  # a scalar per batch item
        tensor.dims.append(1)


def _has_scheduler(config: mc.ModelConfig) -> bool:
    return config.WhichOneof("scheduling_choice") is not None


def _bytes_to_str(array: np.ndarray, name: str) -> np.ndarray:
    """ONNX Runtime wants Python ``str`` elements for string tensors."""
    out = np.empty(array.shape, dtype=object)
    flat_in, flat_out = array.reshape(-1), out.reshape(-1)
    try:
        for i, item in enumerate(flat_in):
            flat_out[i] = item.decode("utf-8") if isinstance(item, bytes) else str(item)
    except UnicodeDecodeError:
        raise InvalidArgumentError(f"input '{name}' holds bytes that are not UTF-8, which ONNX Runtime string "
                                   "tensors require") from None
    return out


def _str_to_bytes(array: np.ndarray) -> np.ndarray:
    out = np.empty(array.shape, dtype=object)
    flat_in, flat_out = array.reshape(-1), out.reshape(-1)
    for i, item in enumerate(flat_in):
        flat_out[i] = item.encode("utf-8") if isinstance(item, str) else bytes(item)
    return out
