"""Normalising and checking a model config before a model is built from it.

:func:`normalize` fills the defaults Triton fills (name, version policy,
instance groups); :func:`validate` rejects what Triton rejects, with a message
that names the model and the offending field.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NoReturn

from tritium._proto import model_config_pb2 as mc
from tritium.core.errors import InvalidArgumentError, ModelConfigError

#: Raises the config error for a message (the callers' ``fail``).
Fail = Callable[[str], NoReturn]

KIND_AUTO = mc.ModelInstanceGroup.KIND_AUTO
KIND_GPU = mc.ModelInstanceGroup.KIND_GPU
KIND_CPU = mc.ModelInstanceGroup.KIND_CPU
KIND_MODEL = mc.ModelInstanceGroup.KIND_MODEL


def normalize(config: mc.ModelConfig, model_name: str, gpus: Sequence[int], default_cpu_count: int = 1) -> None:
    """Fill defaults in place: name, version policy, preferred batch size, instance groups (KIND_AUTO resolved)."""
    if not config.name:
        config.name = model_name
    if not config.HasField("version_policy"):
        config.version_policy.latest.num_versions = 1
    if config.platform == "ensemble":
        # Triton's config of an ensemble shows its transaction policy and no optimization block.
        config.model_transaction_policy.SetInParent()
        return
    if not config.HasField("optimization"):
        # Triton's defaults, so the config JSON reads as Triton's does.
        config.optimization.input_pinned_memory.enable = True
        config.optimization.output_pinned_memory.enable = True
    batching = config.dynamic_batching
    if config.HasField("dynamic_batching") and config.max_batch_size > 0 and not batching.preferred_batch_size:
        # Triton's too (with or without auto-complete); the batcher behaves the same either way.
        batching.preferred_batch_size.append(config.max_batch_size)
    if not config.instance_group:
        config.instance_group.add().name = model_name  # Triton: an implicit group is named after the model
    for index, group in enumerate(config.instance_group):
        if not group.name:
            group.name = f"{model_name}_{index}"
        if group.kind == KIND_AUTO:
            if gpus and all(g in gpus for g in group.gpus):
                group.kind = KIND_GPU
            else:
                group.kind = KIND_CPU
                del group.gpus[:]
        if group.kind == KIND_GPU and not group.gpus:
            group.gpus.extend(gpus)
        if group.count < 1:
            group.count = default_cpu_count if group.kind == KIND_CPU else 1


def validate(config: mc.ModelConfig, model_name: str) -> None:
    """Raise :class:`ModelConfigError` for a config Triton would refuse when it reads the repository
    (instance groups against this machine's GPUs: :func:`check_instance_groups`, when a version loads)."""

    def fail(message: str) -> NoReturn:
        raise ModelConfigError(f"model '{model_name}': {message}")

    if config.name != model_name:
        fail(f"config name '{config.name}' does not match the model directory name '{model_name}'")
    if config.max_batch_size < 0:
        fail(f"max_batch_size must be >= 0, got {config.max_batch_size}")
    _check_response_cache(config)
    if config.platform == "ensemble":
        return
    if not config.backend and not config.platform:
        if config.default_model_filename:
            fail(
                f"unable to determine the backend from default_model_filename '{config.default_model_filename}' "
                "(no such file in the version directory, or an unknown extension): set 'backend' or 'platform' "
                "in config.pbtxt"
            )
        fail("unable to determine the backend: set 'backend' or 'platform' in config.pbtxt "
             "or add a model file with a known name")
    _check_tensors("input", config.input, fail)
    _check_tensors("output", config.output, fail)
    if config.HasField("dynamic_batching"):
        _check_dynamic_batching(config, fail)
    _check_batch_io(config, fail)


def _check_response_cache(config: mc.ModelConfig) -> None:
    """Where Triton's response cache cannot apply it refuses the model, with or without ``--cache-config``."""
    if not config.response_cache.enable:
        return
    if config.model_transaction_policy.decoupled:
        raise ModelConfigError(f"Response Cache does not currently support model {config.name} with 'decoupled' "
                               "transaction policy. Please disable the response cache.")
    if config.HasField("sequence_batching"):
        raise ModelConfigError(f"Response Cache does not currently support model {config.name} with sequence "
                               "batching scheduler. Please disable the response cache.")


def check_instance_groups(config: mc.ModelConfig, model_name: str, gpus: Sequence[int]) -> None:
    """The instance groups against the GPUs of this machine, checked as Triton checks them: when a version
    loads, failing that load (an explicit KIND_GPU never falls back to CPU), the reason in Triton's words."""
    for group in config.instance_group:
        kind = mc.ModelInstanceGroup.Kind.Name(group.kind)
        where = f"instance group {group.name} of model {model_name}"
        if group.kind == KIND_GPU:
            if not gpus:
                raise InvalidArgumentError(f"{where} has kind KIND_GPU but no GPUs are available")
            for gpu in group.gpus:
                if gpu not in gpus:
                    raise InvalidArgumentError(f"{where} specifies invalid or unsupported gpu id {gpu}. "
                                               f"GPUs available are: {', '.join(map(str, gpus)) or 'none'}")
        elif group.gpus:
            raise InvalidArgumentError(f"{where} has kind {kind} but specifies one or more GPUs")
        if group.count < 1:
            raise InvalidArgumentError(f"{where} must have a count >= 1, got {group.count}")


def _check_dynamic_batching(config: mc.ModelConfig, fail: Fail) -> None:
    batching = config.dynamic_batching
    for size in batching.preferred_batch_size:
        if size < 1 or (config.max_batch_size > 0 and size > config.max_batch_size):
            fail(
                "dynamic batching preferred size must be positive and <= max batch size "
                f"{config.max_batch_size}, got {size}"
            )
    levels = batching.priority_levels
    if levels:
        if not 1 <= batching.default_priority_level <= levels:
            fail(f"default priority level must be in range [1, {levels}], got {batching.default_priority_level}")
    elif batching.default_priority_level:
        fail(f"default_priority_level {batching.default_priority_level} needs priority_levels to be set")
    for level in batching.priority_queue_policy:
        if not 1 <= level <= levels:
            fail(f"priority queue policy must have priority level in range [1, {levels}], got {level}")


_BATCH_INPUT_TYPES = (mc.TYPE_INT32, mc.TYPE_FP32)


def _check_batch_io(config: mc.ModelConfig, fail: Fail) -> None:
    """Ragged inputs, ``batch_input`` and ``batch_output`` as Triton defines them."""
    inputs = {i.name for i in config.input}
    outputs = {o.name for o in config.output}
    ragged = [i.name for i in config.input if i.allow_ragged_batch]
    if ragged and config.max_batch_size == 0:
        fail(f"input '{ragged[0]}' allows ragged batch but the model does not batch (max_batch_size is 0)")
    for batch_input in config.batch_input:
        kind = mc.BatchInput.Kind.Name(batch_input.kind)
        if config.max_batch_size == 0:
            fail(f"batch_input {kind} needs a batching model (max_batch_size > 0)")
        if len(batch_input.target_name) != 1:
            fail(f"batch_input {kind} must name exactly one target_name, got {list(batch_input.target_name)}")
        target = batch_input.target_name[0]
        if target in inputs:
            fail(f"batch_input target '{target}' must not also be a model input")
        if batch_input.data_type not in _BATCH_INPUT_TYPES:
            fail(f"batch_input '{target}' data_type must be TYPE_INT32 or TYPE_FP32, got "
                 f"{mc.DataType.Name(batch_input.data_type)}")
        if len(batch_input.source_input) != 1:
            fail(f"batch_input '{target}' must name exactly one source_input, got {list(batch_input.source_input)}")
        if batch_input.source_input[0] not in inputs:
            fail(f"batch_input '{target}' source_input '{batch_input.source_input[0]}' is not an input of the model")
    for batch_output in config.batch_output:
        if len(batch_output.source_input) != 1 or batch_output.source_input[0] not in inputs:
            fail(f"batch_output must name exactly one source_input that is an input of the model, got "
                 f"{list(batch_output.source_input)}")
        for target in batch_output.target_name:
            if target not in outputs:
                fail(f"batch_output target '{target}' is not an output of the model")


def _check_tensors(what: str, tensors: Sequence[mc.ModelInput] | Sequence[mc.ModelOutput], fail: Fail) -> None:
    seen: set[str] = set()
    for tensor in tensors:
        if not tensor.name:
            fail(f"model {what} must specify 'name'")
        if tensor.name in seen:
            fail(f"duplicate {what} name '{tensor.name}'")
        seen.add(tensor.name)
        if tensor.data_type == mc.TYPE_INVALID:
            fail(f"model {what} '{tensor.name}' must specify 'data_type'")
        if not tensor.dims and not tensor.HasField("reshape"):
            fail(f"model {what} '{tensor.name}' must specify 'dims'")
        for dim in tensor.dims:
            if dim < 1 and dim != -1:
                fail(f"model {what} '{tensor.name}' dimension must be integer >= 1, "
                     f"or -1 to indicate a variable-size dimension, got {dim}")
        if tensor.HasField("reshape"):
            _check_reshape(what, tensor, fail)


def _check_reshape(what: str, tensor: mc.ModelInput | mc.ModelOutput, fail: Fail) -> None:
    """Triton's rule: the same number of variable-size dims, and equal element counts between them.

    E.g. [2, 4, -1, 6] -> [8, -1, 1, 6] is valid (2 * 4 = 8, 6 = 1 * 6); requests then map the n-th
    variable dim of ``dims`` to the n-th of ``reshape``.
    """
    dims, shape = list(tensor.dims), list(tensor.reshape.shape)
    for d in shape:
        if d < 1 and d != -1:
            fail(f"model {what} '{tensor.name}' reshape dimensions must be integer >= 1, or -1 to indicate a "
                 f"variable-size dimension, got {d}")
    dim_chunks, shape_chunks = _chunks(dims), _chunks(shape)
    if len(dim_chunks) != len(shape_chunks):
        fail(f"model {what} '{tensor.name}' has different number of variable-size dimensions for dims {dims} "
             f"and reshape {shape}")
    if dim_chunks != shape_chunks:
        fail(f"model {what} '{tensor.name}' has different size for dims {dims} and reshape {shape}")


def _chunks(shape: Sequence[int]) -> list[int]:
    """Element counts of the runs of fixed dims separated by variable-size (-1) dims."""
    counts = [1]
    for d in shape:
        if d == -1:
            counts.append(1)
        else:
            counts[-1] *= d
    return counts
