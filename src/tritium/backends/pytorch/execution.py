"""Running a batch through a TorchScript module: inputs to torch tensors, ``forward()``, outputs to arrays."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import ml_dtypes
import numpy as np

from tritium._proto import model_config_pb2 as mc
from tritium.core.errors import InternalError, InvalidArgumentError, ModelConfigError, TritiumError
from tritium.core.inference import InferenceRequest, InferenceResponse
from tritium.core.types import DataType, Tensor

from ..base import InstanceSpec, ModelInstanceState
from ..batching import batch_inputs, requested_union, split_batch
from .binding import bind_inputs, bind_outputs, check_datatype, config_type_of

if TYPE_CHECKING:
    from .backend import PyTorchModelState

# Request bodies are read-only buffers handed to torch without a copy (as Triton hands its buffers).
warnings.filterwarnings("ignore", message="The given NumPy array is not writable")


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
            check_datatype(ctx, tensor, what, self.batching)
        if not config.input:
            raise ModelConfigError(f"model '{ctx.name}': model configuration must contain at least one input")
        if not config.output:
            raise ModelConfigError(f"model '{ctx.name}': model configuration must contain at least one output")
        self.string_inputs = {t.name for t in config.input if t.data_type == mc.TYPE_STRING}
        self.bf16_inputs = {t.name for t in config.input if t.data_type == mc.TYPE_BF16}
        self.output_names = [o.name for o in config.output]
        self.output_types = {o.name: DataType.from_config(mc.DataType.Name(o.data_type)) for o in config.output}
        self.dict_input, self.input_slots = bind_inputs(ctx, module)
        self.dict_output, self.output_slots = bind_outputs(ctx, module)

    def execute(self, requests: Sequence[InferenceRequest]) -> list[InferenceResponse | TritiumError]:
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
            for outputs, view in zip(per_request, views, strict=False):
                outputs.append(Tensor(name, datatype, view))
        return [
            InferenceResponse(self.model_name, self.version, request.id, outputs)
            for request, outputs in zip(requests, per_request, strict=False)
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
            provided = config_type_of(value.dtype)
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
                    f"configuration expects datatype {datatype.config_name} for output '{name}', model provides "
                    "List[str]"
                )
            array = np.empty(len(value), dtype=object)
            array[:] = [v.encode("utf-8") for v in value]
        else:
            raise InvalidArgumentError(
                f"output '{name}' must be of type Tensor or List[str], got {type(value).__name__}")
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


def _is_string_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _strings(array: np.ndarray, name: str) -> list[str]:
    """A BYTES input as TorchScript's ``List[str]`` (Triton passes one flat list per batch)."""
    try:
        return [item.decode("utf-8") if isinstance(item, bytes) else str(item) for item in array.reshape(-1)]
    except UnicodeDecodeError:
        raise InvalidArgumentError(
            f"input '{name}' holds bytes that are not UTF-8, which TorchScript strings require") from None
