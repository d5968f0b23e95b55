"""Binding a TorchScript module's ``forward()`` to the model configuration's inputs and outputs, as Triton's
``ValidateInputs`` / ``ValidateOutputs``: by argument name, else ``<name>__<index>``, else config order."""

from __future__ import annotations

import logging
import re
from typing import Any

from tritium._proto import model_config_pb2 as mc
from tritium.core.errors import ModelConfigError

from ..base import ModelContext

log = logging.getLogger("tritium.backends.pytorch")

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


def config_type_of(dtype: Any) -> str:
    name = str(dtype).removeprefix("torch.")
    for config_type, torch_name in _TORCH_TYPES.items():
        if torch_name == name:
            return mc.DataType.Name(config_type)
    return f"torch.{name}"


def check_datatype(ctx: ModelContext, tensor: Any, what: str, batching: bool) -> None:
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


def bind_inputs(ctx: ModelContext, module: Any) -> tuple[bool, dict[str, int]]:
    """(forward takes one Dict[str, Tensor], input name -> forward position) as Triton's ValidateInputs."""
    try:
        arguments = list(module.forward.schema.arguments)
    except (AttributeError, RuntimeError) as e:
        raise ModelConfigError(f"unable to load model '{ctx.name}': the TorchScript module has no forward(): "
                               f"{e}") from None
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
        slots = dict(zip(names, indexes, strict=False))
        for name, slot in slots.items():
            if slot >= len(arguments) or list(slots.values()).count(slot) > 1:
                raise ModelConfigError(
                    f"unable to load model '{ctx.name}': input '{name}' names position {slot} of forward("
                    f"{', '.join(arg_names)}), which is out of range or taken twice"
                )
        return False, slots
    log.warning("input names of model '%s' are neither arguments of forward(%s) nor follow the <name>__<index> "
                "naming convention; binding them in configuration order", ctx.name, ", ".join(arg_names))
    return False, {name: i for i, name in enumerate(names)}


def bind_outputs(ctx: ModelContext, module: Any) -> tuple[bool, dict[str, int]]:
    """(forward returns a Dict, output name -> position in the returned tuple)."""
    names = [o.name for o in ctx.config.output]
    returns = list(module.forward.schema.returns)
    if len(returns) == 1 and returns[0].type.kind() == "DictType":
        return True, {name: -1 for name in names}
    indexes = [_named_index(name) for name in names]
    if all(i is not None for i in indexes):
        return False, dict(zip(names, indexes, strict=False))
    if len(names) > 1:
        log.warning("output names of model '%s' do not follow the <name>__<index> naming convention; binding them in "
                    "configuration order", ctx.name)
    return False, {name: i for i, name in enumerate(names)}
