"""Ensemble configs: the step graph, and the load-time checks Triton makes on it.

An ensemble (``platform: "ensemble"``) names tensors of its own; each step maps
a composing model's inputs from those tensors (``input_map``: model input ->
ensemble tensor) and its outputs to them (``output_map``: model output ->
ensemble tensor).  Checks come in two layers: :func:`ensemble_steps` checks the
graph alone (before composing models are loaded, so a cycle never loads
anything), :func:`check_composing_models` checks each step against its
composing model's config (names, data types, shapes, batch sizes).  Every
message names the ensemble, the step and the tensor.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NoReturn

from tritium._proto import model_config_pb2 as mc
from tritium.core.errors import ModelConfigError

#: Raises the config error for a message (the callers' ``fail``).
Fail = Callable[[str], NoReturn]

ENSEMBLE_PLATFORM = "ensemble"


@dataclass(frozen=True, slots=True)
class EnsembleStep:
    """One step: which model runs, and how its tensors map to the ensemble's."""

    index: int
    model_name: str
    #: -1 = the latest ready version.
    model_version: int
    #: (composing model input, ensemble tensor), sorted by input name.
    inputs: tuple[tuple[str, str], ...]
    #: (composing model output, ensemble tensor), sorted by output name.
    outputs: tuple[tuple[str, str], ...]

    @property
    def label(self) -> str:
        """How messages name the step: Triton's configs have no step names, so index and model."""
        return f"step {self.index} (model '{self.model_name}')"


def is_ensemble(config: mc.ModelConfig) -> bool:
    return config.platform == ENSEMBLE_PLATFORM


def ensemble_steps(config: mc.ModelConfig, name: str) -> list[EnsembleStep]:
    """The steps of ``config`` in an order where each runs after the steps it needs (a topological order).

    Raises :class:`ModelConfigError` for a graph Triton would refuse: no steps, instance groups, tensors
    produced twice, inputs nobody produces, outputs nobody writes, cycles.
    """

    def fail(message: str) -> NoReturn:
        raise ModelConfigError(f"in ensemble '{name}', {message}")

    if not config.HasField("ensemble_scheduling") or not config.ensemble_scheduling.step:
        fail("'ensemble_scheduling' must have at least one step")
    if config.instance_group:
        fail("instance group should not be specified for an ensemble")
    if not config.input:
        fail("the ensemble must declare its inputs")
    if not config.output:
        fail("the ensemble must declare its outputs")
    steps = _read_steps(config, fail)
    ensemble_inputs = {t.name for t in config.input}
    producer = _producers(steps, ensemble_inputs, fail)
    for step in steps:
        for model_input, tensor in step.inputs:
            if tensor not in ensemble_inputs and tensor not in producer:
                fail(f"ensemble tensor '{tensor}' (input '{model_input}' of {step.label}) is neither an input of "
                     "the ensemble nor an output of any step")
    for output in config.output:
        if output.name not in producer:
            fail(f"ensemble output '{output.name}' is not written by any step")
    ordered = _topological(steps, producer, fail)
    consumed = {tensor for step in steps for _, tensor in step.inputs}
    for tensor in sorted(ensemble_inputs - consumed):
        fail(f"ensemble input '{tensor}' is not used by any step")
    return ordered


def _read_steps(config: mc.ModelConfig, fail: Fail) -> list[EnsembleStep]:
    steps = []
    for index, step in enumerate(config.ensemble_scheduling.step):
        if not step.model_name:
            fail(f"step {index} must specify 'model_name'")
        if step.model_namespace:
            fail(f"step {index} (model '{step.model_name}') uses 'model_namespace', which tritium does not support")
        if not step.output_map:
            fail(f"step {index} (model '{step.model_name}') must map at least one output ('output_map')")
        steps.append(EnsembleStep(
            index, step.model_name, step.model_version if step.model_version > 0 else -1,
            tuple(sorted(step.input_map.items())), tuple(sorted(step.output_map.items())),
        ))
    return steps


def _producers(steps: list[EnsembleStep], ensemble_inputs: set[str], fail: Fail) -> dict[str, EnsembleStep]:
    """Ensemble tensor -> the step that writes it; each tensor is produced once (an ensemble input: never)."""
    producer: dict[str, EnsembleStep] = {}
    for step in steps:
        seen: set[str] = set()
        for output, tensor in step.outputs:
            if tensor in seen:
                fail(f"multiple outputs in {step.label} are mapped to the same ensemble tensor '{tensor}'")
            seen.add(tensor)
            if tensor in ensemble_inputs:
                fail(f"ensemble tensor '{tensor}' is an input of the ensemble and also output '{output}' of "
                     f"{step.label}; a tensor may only be produced once")
            other = producer.get(tensor)
            if other is not None:
                fail(f"ensemble tensor '{tensor}' is produced twice: by {other.label} and by {step.label}")
            producer[tensor] = step
    return producer


def _topological(steps: list[EnsembleStep], producer: dict[str, EnsembleStep], fail: Fail) -> list[EnsembleStep]:
    needs = {s.index: {producer[t].index for _, t in s.inputs if t in producer} for s in steps}
    ordered: list[EnsembleStep] = []
    done: set[int] = set()
    remaining = list(steps)
    while remaining:
        ready = [s for s in remaining if needs[s.index] <= done]
        if not ready:
            fail("the steps form a cycle: " + ", ".join(
                f"{s.label} needs " + ", ".join(f"'{t}'" for _, t in s.inputs if t in producer
                                                 and producer[t].index not in done)
                for s in remaining))
        ordered += ready
        done.update(s.index for s in ready)
        remaining = [s for s in remaining if s.index not in done]
    return ordered


def composing_models(config: mc.ModelConfig) -> list[tuple[str, int]]:
    """(name, version) of every model the ensemble's steps call, each once, in step order."""
    found: dict[tuple[str, int], None] = {}
    for step in config.ensemble_scheduling.step:
        found[(step.model_name, step.model_version if step.model_version > 0 else -1)] = None
    return list(found)


def check_composing_models(config: mc.ModelConfig, name: str, steps: Sequence[EnsembleStep],
                           model_config: Callable[[str, int], mc.ModelConfig]) -> None:
    """Check every step against its composing model's (completed) config.

    ``model_config(name, version)`` returns a loaded composing model's config or raises with the reason.
    Tensors are compared as Triton does: equal data types, and shapes equal where both are fixed, either
    without or with the batch dimension (so batching and non-batching models can share a tensor).
    """

    def fail(message: str) -> NoReturn:
        raise ModelConfigError(f"in ensemble '{name}', {message}")

    mbs = config.max_batch_size
    #: ensemble tensor -> (data type, dims, full dims, who said so)
    known: dict[str, tuple[int, tuple[int, ...], tuple[int, ...], str]] = {}

    def meet(tensor: str, data_type: int, dims: Sequence[int], batching: bool, origin: str) -> None:
        full = ((-1,) if batching else ()) + tuple(dims)
        seen = known.get(tensor)
        if seen is None:
            known[tensor] = (data_type, tuple(dims), full, origin)
            return
        if seen[0] != data_type:
            fail(f"ensemble tensor '{tensor}': inconsistent data type: {mc.DataType.Name(seen[0])} is inferred "
                 f"from {seen[3]} while {mc.DataType.Name(data_type)} is inferred from {origin}")
        if not _dims_agree(seen[1], dims) and not _dims_agree(seen[2], full):
            fail(f"ensemble tensor '{tensor}': inconsistent shape: {_shape(seen[2])} is inferred from {seen[3]} "
                 f"while {_shape(full)} is inferred from {origin}")

    for tensor in config.input:
        meet(tensor.name, tensor.data_type, _external_dims(tensor), mbs > 0, f"ensemble '{name}' input")
    for tensor in config.output:
        meet(tensor.name, tensor.data_type, _external_dims(tensor), mbs > 0, f"ensemble '{name}' output")
    for step in steps:
        try:
            composing = model_config(step.model_name, step.model_version)
        except Exception as e:
            fail(f"{step.label}: composing model is not available: {e}")
        if composing.model_transaction_policy.decoupled:
            fail(f"{step.label}: decoupled composing models are not supported in ensembles yet")
        if composing.max_batch_size != 0 and composing.max_batch_size < mbs:
            fail(f"the ensemble allows maximum batch size {mbs}, but {step.label} only allows maximum batch size "
                 f"{composing.max_batch_size}")
        _check_step_tensors(step, composing, meet, fail)


def _check_step_tensors(step: EnsembleStep, composing: mc.ModelConfig,
                        meet: Callable[[str, int, Sequence[int], bool, str], None], fail: Fail) -> None:
    """A step's input and output maps against its composing model's tensors; ``meet`` records each one."""
    batching = composing.max_batch_size > 0
    inputs = {t.name: t for t in composing.input}
    outputs = {t.name: t for t in composing.output}
    mapped = {model_input for model_input, _ in step.inputs}
    for model_input, tensor in step.inputs:
        spec = inputs.get(model_input)
        if spec is None:
            fail(f"ensemble tensor '{tensor}' is mapping to non-existing input '{model_input}' of {step.label}")
        meet(tensor, spec.data_type, spec.dims, batching, f"input '{model_input}' of {step.label}")
    for spec in composing.input:
        if spec.name not in mapped and not spec.optional:
            fail(f"input '{spec.name}' of {step.label} is not mapped to any ensemble tensor")
    for model_output, tensor in step.outputs:
        out_spec = outputs.get(model_output)
        if out_spec is None:
            fail(f"ensemble tensor '{tensor}' is mapped from non-existing output '{model_output}' of "
                 f"{step.label}")
        meet(tensor, out_spec.data_type, out_spec.dims, batching, f"output '{model_output}' of {step.label}")


def _external_dims(tensor: mc.ModelInput | mc.ModelOutput) -> tuple[int, ...]:
    """The shape the ensemble's tensor has between steps: ``reshape`` when given (as Triton compares)."""
    return tuple(tensor.reshape.shape) if tensor.HasField("reshape") else tuple(tensor.dims)


def _dims_agree(a: Sequence[int], b: Sequence[int]) -> bool:
    return len(a) == len(b) and all(x == y or x == -1 or y == -1 for x, y in zip(a, b, strict=True))


def _shape(dims: Sequence[int]) -> str:
    return "[" + ",".join(str(d) for d in dims) + "]"
