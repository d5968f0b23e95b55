"""The inference request of the in-process API, and its translation into the core's request."""

from __future__ import annotations

import asyncio
import queue
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tritium.core.errors import InvalidArgumentError
from tritium.core.inference import InferenceRequest as CoreRequest
from tritium.core.model import Model as CoreModel
from tritium.core.types import Tensor as CoreTensor

from ._enums import MemoryType, RequestFlag
from ._tensor import DeviceOrMemoryType, Tensor, input_array, parse_device_or_memory_type

if TYPE_CHECKING:
    from ._model import Model

_PARAMETER_TYPES = (str, int, float, bool)


@dataclass
class InferenceRequest:
    """One request for a model: inputs (name -> Tensor, numpy array, list or DLPack producer), request
    ``parameters`` (str, int, float or bool values), sequence fields (``correlation_id``, ``flags``),
    ``priority``, ``timeout`` (microseconds), the memory outputs should be in, and an optional
    ``response_queue`` (``queue.SimpleQueue`` for ``infer``, ``asyncio.Queue`` for ``async_infer``) that gets
    every response as it arrives, besides the iterator."""

    model: Model
    request_id: str | None = None
    flags: int = 0
    correlation_id: int | str | None = None
    priority: int = 0
    timeout: int = 0
    inputs: dict[str, Tensor | Any] = field(default_factory=dict)
    parameters: dict[str, str | int | bool | float] = field(default_factory=dict)
    output_memory_type: DeviceOrMemoryType | None = None
    response_queue: queue.SimpleQueue[Any] | asyncio.Queue[Any] | None = None

    def _prepare(self) -> tuple[CoreModel, CoreRequest]:
        """The model that serves this request and the core's request, checked against the model's config;
        raises as Triton does when it receives the request."""
        if self.output_memory_type is not None:
            memory_type, _ = parse_device_or_memory_type(self.output_memory_type)
            if memory_type not in (MemoryType.CPU, MemoryType.CPU_PINNED):
                raise InvalidArgumentError(
                    f"Memory type {self.output_memory_type} not supported: tritium returns outputs in CPU memory")
        model = self.model
        core_model = model._runtime.core.model(model.name, model.version)
        parameters: dict[str, Any] = {}
        for key, setting in self.parameters.items():
            if type(setting) not in _PARAMETER_TYPES:
                raise InvalidArgumentError(
                    f"Unsupported Value. Can't convert request parameter '{key}' of type {type(setting).__name__} "
                    "to a Request Parameter: use str, int, float or bool")
            parameters[key] = setting
        if self.priority:
            parameters["priority"] = self.priority
        if self.timeout:
            parameters["timeout"] = self.timeout
        if self.correlation_id is not None:
            if isinstance(self.correlation_id, bool) or not isinstance(self.correlation_id, (int, str)):
                raise InvalidArgumentError("correlation_id must be an int or a str")
            parameters["sequence_id"] = self.correlation_id
        if self.flags:
            parameters["sequence_start"] = bool(self.flags & RequestFlag.SEQUENCE_START)
            parameters["sequence_end"] = bool(self.flags & RequestFlag.SEQUENCE_END)
        inputs = []
        for name, value in self.inputs.items():
            data_type, array = input_array(value, name)
            inputs.append(CoreTensor(name, data_type, array))
        request = CoreRequest(model.name, model.version, self.request_id or "", inputs, None, parameters)
        core_model.validate(request)
        return core_model, request
