"""PyTorch backend for TorchScript models (``backend: "pytorch"``, ``platform: "pytorch_libtorch"``, ``model.pt``).

Follows Triton's pytorch backend (``libtorch``):

* the module is loaded with ``torch.jit.load`` onto the instance's device
  (``cpu``, ``cuda:<id>`` for KIND_GPU, the devices baked into the file for KIND_MODEL);
* inputs bind to ``forward()`` by argument name, else by the ``<name>__<index>``
  convention, else in config order; a ``forward`` taking one ``Dict[str, Tensor]``
  gets every input under its config name; ``TYPE_STRING`` inputs arrive as ``List[str]``;
* ``forward`` may return a tensor, a ``List[str]``, a tuple/list of those (outputs bound
  by ``<name>__<index>`` or config order) or a ``Dict[str, Tensor]`` (bound by name,
  something Triton's backend refuses);
* the model ``parameters`` Triton reads: ``INFERENCE_MODE``, ``DISABLE_OPTIMIZED_EXECUTION``,
  ``DISABLE_CUDNN``, ``ENABLE_CACHE_CLEANING``, ``ENABLE_WEIGHT_SHARING``, ``ENABLE_JIT_EXECUTOR``,
  ``ENABLE_JIT_PROFILING``, ``ENABLE_TENSOR_FUSER``, ``ENABLE_NVFUSER`` (older torch only),
  ``INTRA_OP_THREAD_COUNT`` and ``INTER_OP_THREAD_COUNT`` (process-wide: the first model wins).

torch is an optional dependency (``pip install 'tritium[pytorch]'``), imported only when a
pytorch model loads.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import ml_dtypes
import numpy as np

from tritium._proto import model_config_pb2 as mc
from tritium.core.errors import InternalError, InvalidArgumentError, ModelConfigError, UnavailableError
from tritium.core.inference import InferenceRequest, InferenceResponse
from tritium.core.types import DataType, Tensor

from .base import ALL_INSTANCE_KINDS, Backend, InstanceSpec, ModelContext, ModelInstanceState, ModelState
from .batching import batch_inputs, requested_union, split_batch

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'tritium[pytorch]'"

#: config data types torch can exchange (Triton's ModelConfigDataTypeToTorchType); STRING is List[str].
_TORCH_TYPES = {
    mc.TYPE_BOOL: "bool",
    mc.TYPE_UINT8: "uint8",
    mc.TYPE_INT8: "int8",
    mc.TYPE_INT16: "int16",
    mc.TYPE_INT32: "int32",
    mc.TYPE_INT64: "int64",
    mc.TYPE_FP16: "float16",
    mc.TYPE_FP32: "float32",
    mc.TYPE_FP64: "float64",
    mc.TYPE_BF16: "bfloat16",
}
_NAMED_INDEX = re.compile(r"^.*?__(\d+)$")
_TRUE = ("true", "1", "on", "yes")
_FALSE = ("false", "0", "off", "no")

# Request bodies are read-only buffers handed to torch without a copy (as Triton hands its buffers).
warnings.filterwarnings("ignore", message="The given NumPy array is not writable")

_threads_lock = threading.Lock()
_intra_op_threads: tuple[str, int] | None = None  # (model that set it, count)
_inter_op_threads: tuple[str, int] | None = None


def _torch() -> Any:
    try:
        import torch
    except ImportError as e:
        raise UnavailableError(
            f"the pytorch backend needs PyTorch, which is not installed ({e}); install it with {INSTALL_HINT}"
        ) from None
    return torch


@dataclass(frozen=True, slots=True)
class Settings:
    """The pytorch backend's model ``parameters``; ``None`` leaves torch's own setting alone."""

    inference_mode: bool = True
    optimized_execution: bool = True
    cudnn: bool = True
    cache_cleaning: bool = False
    weight_sharing: bool = False
    jit_executor: bool | None = None
    jit_profiling: bool | None = None
    tensor_fuser: bool | None = None
    nvfuser: bool | None = None
    intra_op_threads: int | None = None
    inter_op_threads: int | None = None

    @classmethod
    def from_context(cls, ctx: ModelContext) -> Settings:
        def flag(key: str) -> bool | None:
            value = ctx.parameter(key)
            if value is None:
                return None
            text = value.strip().lower()
            if text in _TRUE:
                return True
            if text in _FALSE:
                return False
            raise ModelConfigError(f"model '{ctx.name}': parameter '{key}' must be 'true' or 'false', got '{value}'")

        def count(key: str) -> int | None:
            value = ctx.parameter(key)
            if value is None:
                return None
            try:
                n = int(value)
            except ValueError:
                raise ModelConfigError(f"model '{ctx.name}': parameter '{key}' must be an integer, got '{value}'") from None
            return n if n > 0 else None

        def default(value: bool | None, fallback: bool) -> bool:
            return fallback if value is None else value

        disable_optimized = flag("DISABLE_OPTIMIZED_EXECUTION")
        disable_cudnn = flag("DISABLE_CUDNN")
        return cls(
            inference_mode=default(flag("INFERENCE_MODE"), True),
            optimized_execution=not default(disable_optimized, False),
            cudnn=not default(disable_cudnn, False),
            cache_cleaning=default(flag("ENABLE_CACHE_CLEANING"), False),
            weight_sharing=default(flag("ENABLE_WEIGHT_SHARING"), False),
            jit_executor=flag("ENABLE_JIT_EXECUTOR"),
            jit_profiling=flag("ENABLE_JIT_PROFILING"),
            tensor_fuser=flag("ENABLE_TENSOR_FUSER"),
            nvfuser=flag("ENABLE_NVFUSER"),
            intra_op_threads=count("INTRA_OP_THREAD_COUNT"),
            inter_op_threads=count("INTER_OP_THREAD_COUNT"),
        )


class PyTorchBackend(Backend):
    name = "pytorch"
    instance_kinds = ALL_INSTANCE_KINDS

    def initialize(self, backend_config: Any) -> None:
        _torch()

    def auto_complete_config(self, ctx: ModelContext) -> None:
        # TorchScript files carry no tensor names or shapes: Triton skips auto-complete for this backend too.
        if not ctx.config.input or not ctx.config.output:
            log.warning("skipping model configuration auto-complete for '%s': not supported for pytorch backend", ctx.name)

    def model_initialize(self, ctx: ModelContext) -> ModelState:
        if ctx.config.platform == "torch_aoti":
            raise ModelConfigError(
                f"unable to load model '{ctx.name}': platform 'torch_aoti' (AOTInductor model.pt2) is not supported; "
                "tritium's pytorch backend serves TorchScript files (platform 'pytorch_libtorch')"
            )
        path = ctx.model_path
        if not os.path.isfile(path):
            raise UnavailableError(f"unable to find '{ctx.shown(path)}' for model '{ctx.name}'")
        return PyTorchModelState(ctx, Settings.from_context(ctx))


class PyTorchModelState(ModelState):
    """Settings, process-wide thread counts, and the modules shared across instances (ENABLE_WEIGHT_SHARING)."""

    def __init__(self, ctx: ModelContext, settings: Settings) -> None:
        super().__init__(ctx)
        self.settings = settings
        self.torch = _torch()
        self._shared: dict[tuple[str, int | None], Any] = {}
        self._lock = threading.Lock()
        self._apply_thread_counts()
        if settings.nvfuser is not None:
            self._apply_nvfuser(settings.nvfuser)
        if ctx.config.parameters:  # as Triton, say what the parameters changed
            log.info("Inference Mode is %s, optimized execution is %s, cache cleaning is %s, weight sharing is %s "
                     "for model '%s'", _onoff(settings.inference_mode), _onoff(settings.optimized_execution),
                     _onoff(settings.cache_cleaning), _onoff(settings.weight_sharing), ctx.name)

    def _apply_thread_counts(self) -> None:
        """torch's thread pools are per process: as in Triton, the first model that sets a count wins."""
        global _intra_op_threads, _inter_op_threads
        torch, name, s = self.torch, self.ctx.name, self.settings
        with _threads_lock:
            if s.intra_op_threads is not None:
                if _intra_op_threads is None:
                    torch.set_num_threads(s.intra_op_threads)
                    _intra_op_threads = (name, s.intra_op_threads)
                elif _intra_op_threads[1] != s.intra_op_threads:
                    log.warning("model '%s' asks for INTRA_OP_THREAD_COUNT %d but model '%s' already set it to %d for "
                                "this process; keeping %d", name, s.intra_op_threads, *_intra_op_threads,
                                _intra_op_threads[1])
                log.info("Intra op thread count is set to %d for model '%s'", torch.get_num_threads(), name)
            if s.inter_op_threads is not None:
                if _inter_op_threads is None:
                    try:
                        torch.set_num_interop_threads(s.inter_op_threads)
                        _inter_op_threads = (name, s.inter_op_threads)
                    except RuntimeError as e:  # torch allows it once, before any inter-op work started
                        log.warning("model '%s': INTER_OP_THREAD_COUNT %d cannot be applied: %s", name,
                                    s.inter_op_threads, e)
                elif _inter_op_threads[1] != s.inter_op_threads:
                    log.warning("model '%s' asks for INTER_OP_THREAD_COUNT %d but model '%s' already set it to %d for "
                                "this process; keeping %d", name, s.inter_op_threads, *_inter_op_threads,
                                _inter_op_threads[1])
                log.info("Inter op thread count is set to %d for model '%s'", torch.get_num_interop_threads(), name)

    def _apply_nvfuser(self, enable: bool) -> None:
        torch = self.torch
        if _torch_version(torch) >= (2, 2):  # NVFuser left TorchScript in 2.2; what remains is a warning no-op
            log.warning("model '%s': parameter ENABLE_NVFUSER has no effect: torch %s no longer has NVFuser for "
                        "TorchScript (use ENABLE_TENSOR_FUSER)", self.ctx.name, torch.__version__)
            return
        torch._C._jit_set_nvfuser_enabled(enable)
        log.info("NvFuser is %s for model '%s'", _onoff(enable), self.ctx.name)

    def load_module(self, device: Any) -> Any:
        """``torch.jit.load`` onto ``device``; with weight sharing, once per device for all instances."""
        key = (device.type, device.index) if device is not None else ("model", None)
        if self.settings.weight_sharing:
            with self._lock:
                module = self._shared.get(key)
                if module is None:
                    module = self._shared[key] = self._load(device)
                else:
                    log.info("Reusing TorchScript model for model '%s' on %s", self.ctx.name, device or "its devices")
                return module
        return self._load(device)

    def _load(self, device: Any) -> Any:
        torch, path = self.torch, self.ctx.model_path
        try:
            with torch.inference_mode(self.settings.inference_mode):
                module = torch.jit.load(path, map_location=device)
        except Exception as e:  # torch raises RuntimeError, ValueError, ... for files it cannot read
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            shown = self.ctx.shown(path)  # never the server's absolute path
            raise InternalError(
                f"failed to load model '{self.ctx.name}': {shown} is not a TorchScript file torch.jit.load can read "
                f"({reason.replace(path, shown)})"
            ) from None
        module.eval()
        return module

    def instance_initialize(self, spec: InstanceSpec) -> ModelInstanceState:
        torch = self.torch
        device: Any
        if spec.kind == "KIND_GPU":
            if not torch.cuda.is_available():
                raise UnavailableError(
                    f"instance {spec.name} of model {self.ctx.name} has kind KIND_GPU but the installed torch "
                    f"{torch.__version__} cannot use CUDA (install a CUDA build of torch)"
                )
            if spec.device_id >= torch.cuda.device_count():
                raise UnavailableError(
                    f"instance {spec.name} of model {self.ctx.name} asks for GPU {spec.device_id} but torch sees "
                    f"{torch.cuda.device_count()} GPU(s)"
                )
            device = torch.device("cuda", spec.device_id)
        elif spec.kind == "KIND_MODEL":
            device = None  # keep the devices saved in the file
        else:
            device = torch.device("cpu")
        module = self.load_module(device)
        return PyTorchInstanceState(spec, self, module, device)

    def finalize(self) -> None:
        self._shared.clear()


class PyTorchInstanceState(ModelInstanceState):
    def __init__(self, spec: InstanceSpec, model: PyTorchModelState, module: Any, device: Any) -> None:
        super().__init__(spec)
        ctx = model.ctx
        self.torch = model.torch
        self.settings = model.settings
        self.model_name = ctx.name
        self.version = ctx.version
        self.module = module
        self.device = device
        self.on_cuda = (device is not None and device.type == "cuda") or (
            device is None and self.torch.cuda.is_available()
        )
        self.batching = ctx.config.max_batch_size > 0
        self._forward = module.forward
        config = ctx.config
        for tensor, what in [(t, "input") for t in config.input] + [(t, "output") for t in config.output]:
            _check_datatype(ctx, tensor, what, self.batching)
        if not config.input:
            raise ModelConfigError(f"model '{ctx.name}': model configuration must contain at least one input")
        if not config.output:
            raise ModelConfigError(f"model '{ctx.name}': model configuration must contain at least one output")
        self.string_inputs = {t.name for t in config.input if t.data_type == mc.TYPE_STRING}
        self.bf16_inputs = {t.name for t in config.input if t.data_type == mc.TYPE_BF16}
        self.output_names = [o.name for o in config.output]
        self.output_types = {o.name: DataType.from_config(mc.DataType.Name(o.data_type)) for o in config.output}
        self.dict_input, self.input_slots = _bind_inputs(ctx, module)
        self.dict_output, self.output_slots = _bind_outputs(ctx, module)

    def execute(self, requests: Sequence[InferenceRequest]) -> list[InferenceResponse]:
        torch, s = self.torch, self.settings
        feeds = batch_inputs(requests)
        total = sum(r.batch_size for r in requests) if self.batching else 0
        names = requested_union(requests, self.output_names)
        try:
            torch._C._set_graph_executor_optimize(s.optimized_execution)  # thread-local in torch
            if s.jit_profiling is not None:
                torch._C._jit_set_profiling_mode(s.jit_profiling)
            if s.jit_executor is not None:
                torch._C._jit_set_profiling_executor(s.jit_executor)
            if s.tensor_fuser is not None:
                torch._C._jit_set_texpr_fuser_enabled(s.tensor_fuser)
            if self.on_cuda:
                torch.backends.cudnn.enabled = s.cudnn
            with torch.inference_mode(s.inference_mode), torch.no_grad():
                args = self._arguments(feeds)
                try:
                    result = self._forward(args) if self.dict_input else self._forward(*args)
                except Exception as e:  # torch.jit.Error and friends
                    raise InternalError(f"PyTorch execute failure: {str(e).strip()}") from None
                arrays = {name: self._output(result, name, total) for name in names}
        finally:
            if s.cache_cleaning and self.on_cuda:
                torch.cuda.empty_cache()
        per_request: list[list[Tensor]] = [[] for _ in requests]
        for name, array in arrays.items():
            datatype = self.output_types[name]
            views = split_batch(array, requests) if self.batching else [array]
            for outputs, view in zip(per_request, views):
                outputs.append(Tensor(name, datatype, view))
        return [
            InferenceResponse(self.model_name, self.version, request.id, outputs)
            for request, outputs in zip(requests, per_request)
        ]

    def _arguments(self, feeds: dict[str, np.ndarray]) -> Any:
        torch = self.torch
        values: dict[str, Any] = {}
        for name, array in feeds.items():
            if name in self.string_inputs:
                values[name] = _strings(array, name)
                continue
            if name in self.bf16_inputs:
                tensor = torch.from_numpy(array.view(np.int16)).view(torch.bfloat16)
            else:
                tensor = torch.from_numpy(array)
            if self.device is not None and self.device.type != "cpu":
                tensor = tensor.to(self.device)
            values[name] = tensor
        if self.dict_input:
            return values
        args: list[Any] = [None] * len(self.input_slots)
        for name, slot in self.input_slots.items():
            args[slot] = values[name]
        return args

    def _output(self, result: Any, name: str, total: int) -> np.ndarray:
        torch = self.torch
        slot = self.output_slots[name]
        if self.dict_output:
            if not isinstance(result, dict) or name not in result:
                keys = sorted(result) if isinstance(result, dict) else type(result).__name__
                raise InvalidArgumentError(f"model '{self.model_name}' returned no output '{name}' (returned {keys})")
            value = result[name]
        elif isinstance(result, (tuple, list)) and not _is_string_list(result):
            if slot >= len(result):
                raise InvalidArgumentError(
                    f"The output {name} in the model configuration refers to an output index which doesn't exist. "
                    f"This model has {len(result)} outputs"
                )
            value = result[slot]
        elif slot == 0:
            value = result
        else:
            raise InvalidArgumentError(
                f"The output {name} in the model configuration refers to an output index which doesn't exist. "
                "This model has 1 outputs"
            )
        datatype = self.output_types[name]
        if isinstance(value, torch.Tensor):
            if value.dim() == 0:
                raise InvalidArgumentError(f"output '{name}' is a scalar which is not supported.")
            provided = _config_type_of(value.dtype)
            if provided != datatype.config_name:
                raise InvalidArgumentError(
                    f"configuration expects datatype {datatype.config_name} for output '{name}', "
                    f"model provides {provided}"
                )
            value = value.detach()
            if value.device.type != "cpu":
                value = value.cpu()
            if value.dtype == torch.bfloat16:
                array = value.contiguous().view(torch.int16).numpy().view(ml_dtypes.bfloat16)
            else:
                array = value.numpy()
        elif _is_string_list(value):
            if datatype is not DataType.BYTES:
                raise InvalidArgumentError(
                    f"configuration expects datatype {datatype.config_name} for output '{name}', model provides List[str]"
                )
            array = np.empty(len(value), dtype=object)
            array[:] = [v.encode("utf-8") for v in value]
        else:
            raise InvalidArgumentError(f"output '{name}' must be of type Tensor or List[str], got {type(value).__name__}")
        if self.batching and (array.ndim == 0 or array.shape[0] != total):
            raise InvalidArgumentError(
                f"model '{self.model_name}' output '{name}' has shape {list(array.shape)}: its first dimension must be "
                f"the batch size {total}"
            )
        return array

    def finalize(self) -> None:
        self.module = None
        self._forward = None
        if self.on_cuda:
            self.torch.cuda.empty_cache()


def _torch_version(torch: Any) -> tuple[int, int]:
    match = re.match(r"(\d+)\.(\d+)", torch.__version__)
    return (int(match.group(1)), int(match.group(2))) if match else (0, 0)


def _onoff(value: bool) -> str:
    return "enabled" if value else "disabled"


def _is_string_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _config_type_of(dtype: Any) -> str:
    name = str(dtype).removeprefix("torch.")
    for config_type, torch_name in _TORCH_TYPES.items():
        if torch_name == name:
            return mc.DataType.Name(config_type)
    return f"torch.{name}"


def _strings(array: np.ndarray, name: str) -> list[str]:
    """A BYTES input as TorchScript's ``List[str]`` (Triton passes one flat list per batch)."""
    try:
        return [item.decode("utf-8") if isinstance(item, bytes) else str(item) for item in array.reshape(-1)]
    except UnicodeDecodeError:
        raise InvalidArgumentError(f"input '{name}' holds bytes that are not UTF-8, which TorchScript strings require") from None


def _check_datatype(ctx: ModelContext, tensor: Any, what: str, batching: bool) -> None:
    if tensor.data_type == mc.TYPE_STRING:
        dims = list(tensor.reshape.shape) if tensor.HasField("reshape") else list(tensor.dims)
        if len(dims) + (1 if batching else 0) > 1:
            raise ModelConfigError(
                f"unable to load model '{ctx.name}': only 1-dimensional List of String is supported for {what} "
                f"'{tensor.name}'"
            )
    elif tensor.data_type not in _TORCH_TYPES:
        raise ModelConfigError(
            f"unable to load model '{ctx.name}': unsupported datatype {mc.DataType.Name(tensor.data_type)} for "
            f"{what} '{tensor.name}'"
        )


def _named_index(name: str) -> int | None:
    match = _NAMED_INDEX.match(name)
    return int(match.group(1)) if match else None


def _bind_inputs(ctx: ModelContext, module: Any) -> tuple[bool, dict[str, int]]:
    """(forward takes one Dict[str, Tensor], input name -> forward position) as Triton's ValidateInputs."""
    try:
        arguments = list(module.forward.schema.arguments)
    except (AttributeError, RuntimeError) as e:
        raise ModelConfigError(f"unable to load model '{ctx.name}': the TorchScript module has no forward(): {e}") from None
    if arguments and arguments[0].type.kind() == "ClassType":
        arguments = arguments[1:]
    names = [i.name for i in ctx.config.input]
    if len(arguments) == 1 and arguments[0].type.kind() == "DictType":
        return True, {name: i for i, name in enumerate(names)}
    for arg in arguments:
        if arg.type.kind() not in ("TensorType", "ListType"):
            raise ModelConfigError(
                f"unable to load model '{ctx.name}': forward() argument '{arg.name}' has type {arg.type}; only a "
                "single input of type Dict(str, Tensor) or input(s) of type Tensor or List[str] are supported"
            )
    if len(arguments) != len(names):
        raise ModelConfigError(
            f"unable to load model '{ctx.name}', configuration expects {len(names)} inputs, model provides "
            f"{len(arguments)} (forward({', '.join(a.name for a in arguments)}))"
        )
    arg_names = [a.name for a in arguments]
    if all(name in arg_names for name in names):
        return False, {name: arg_names.index(name) for name in names}
    indexes = [_named_index(name) for name in names]
    if all(i is not None for i in indexes):
        slots = dict(zip(names, indexes))
        for name, slot in slots.items():
            if slot >= len(arguments) or list(slots.values()).count(slot) > 1:
                raise ModelConfigError(
                    f"unable to load model '{ctx.name}': input '{name}' names position {slot} of forward("
                    f"{', '.join(arg_names)}), which is out of range or taken twice"
                )
        return False, slots  # type: ignore[return-value]
    log.warning("input names of model '%s' are neither arguments of forward(%s) nor follow the <name>__<index> "
                "naming convention; binding them in configuration order", ctx.name, ", ".join(arg_names))
    return False, {name: i for i, name in enumerate(names)}


def _bind_outputs(ctx: ModelContext, module: Any) -> tuple[bool, dict[str, int]]:
    """(forward returns a Dict, output name -> position in the returned tuple)."""
    names = [o.name for o in ctx.config.output]
    returns = list(module.forward.schema.returns)
    if len(returns) == 1 and returns[0].type.kind() == "DictType":
        return True, {name: -1 for name in names}
    indexes = [_named_index(name) for name in names]
    if all(i is not None for i in indexes):
        return False, dict(zip(names, indexes))  # type: ignore[arg-type]
    if len(names) > 1:
        log.warning("output names of model '%s' do not follow the <name>__<index> naming convention; binding them in "
                    "configuration order", ctx.name)
    return False, {name: i for i, name in enumerate(names)}
