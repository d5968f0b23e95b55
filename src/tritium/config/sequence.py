"""Triton's ``sequence_batching`` settings, checked, with Triton's defaults, and the initial states read.

What the sequence batcher (:mod:`tritium.scheduler.sequence`) needs to run, decided once at load time: the
strategy and its slots, the control inputs with their false/true values, the correlation-id input and the
implicit states with their initial values (zeros or a ``data_file`` under ``initial_state/``, which must stay
inside the model folder).  A bad field fails the load with a :class:`ModelConfigError` naming it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tritium._proto import model_config_pb2 as mc
from tritium.core.errors import ModelConfigError
from tritium.core.types import DataType

from .paths import INITIAL_STATE_DIR, inside_model_dir

DEFAULT_IDLE_US = 1_000_000
Control = mc.ModelSequenceBatching.Control
_CORRID_TYPES = {mc.TYPE_UINT64, mc.TYPE_INT64, mc.TYPE_UINT32, mc.TYPE_INT32, mc.TYPE_STRING}


@dataclass(frozen=True)
class BoolControl:
    """A START / END / READY control input: its name, data type and (false, true) values."""

    name: str
    datatype: DataType
    false: Any
    true: Any


@dataclass(frozen=True)
class StateSpec:
    input_name: str
    output_name: str
    datatype: DataType
    #: Per-sequence initial value (without the batch dimension).
    initial: np.ndarray


@dataclass
class SequenceSettings:
    """``sequence_batching`` checked and with Triton's defaults applied."""

    oldest: bool
    idle_ns: int
    slots_per_instance: int
    delay_ns: int
    min_slot_utilization: float
    preferred: frozenset[int]
    controls: dict[int, BoolControl] = field(default_factory=dict)  # by Control.Kind
    corrid: tuple[str, DataType] | None = None
    states: list[StateSpec] = field(default_factory=list)
    #: ``iterative_sequence``: a request without a sequence id starts a sequence of its own, which the model
    #: may run again and again (rescheduling) until it answers; its answer ends that sequence.
    iterative: bool = False

    @property
    def injected_inputs(self) -> set[str]:
        names = {c.name for c in self.controls.values()} | {s.input_name for s in self.states}
        if self.corrid:
            names.add(self.corrid[0])
        return names


def normalize_sequence_batching(config: mc.ModelConfig) -> None:
    """Triton's defaults, so the config the server reports shows them: ``direct``, 1 s idle."""
    seq = config.sequence_batching
    if seq.WhichOneof("strategy_choice") is None:
        seq.direct.SetInParent()
    if seq.max_sequence_idle_microseconds == 0:
        seq.max_sequence_idle_microseconds = DEFAULT_IDLE_US
    if seq.HasField("oldest") and seq.oldest.max_candidate_sequences <= 0:
        seq.oldest.max_candidate_sequences = max(1, config.max_batch_size)


def sequence_settings(config: mc.ModelConfig, model_dir: str) -> SequenceSettings:
    """Check ``sequence_batching`` (raising :class:`ModelConfigError` naming the field) and precompute it."""
    normalize_sequence_batching(config)
    name = config.name
    seq = config.sequence_batching
    settings = _strategy(config)
    # Like Triton, a control input may also be listed in 'input' (clients must then send it; the batcher's
    # value replaces theirs); usually it is not, and requests leave it out.
    seen: set[str] = set()
    for control_input in seq.control_input:
        _add_control(settings, name, control_input, seen)
    for state in seq.state:
        settings.states.append(_state_spec(name, state, model_dir, seen))
    if config.model_transaction_policy.decoupled and settings.states:
        raise ModelConfigError(f"model '{name}': implicit sequence state is not supported for decoupled models")
    return settings


def _strategy(config: mc.ModelConfig) -> SequenceSettings:
    """The settings of the strategy (``direct`` or ``oldest``), without controls and states yet."""
    name = config.name
    seq = config.sequence_batching
    mbs = config.max_batch_size
    oldest = seq.HasField("oldest")
    if oldest:
        slots = seq.oldest.max_candidate_sequences if seq.oldest.max_candidate_sequences > 0 else max(1, mbs)
        delay_us = seq.oldest.max_queue_delay_microseconds
        preferred = frozenset(seq.oldest.preferred_batch_size)
        for size in preferred:
            if size < 1 or size > max(1, mbs):
                raise ModelConfigError(
                    f"model '{name}': sequence_batching.oldest.preferred_batch_size {size} must be between 1 and "
                    f"max_batch_size {mbs}"
                )
        utilization = 0.0
    else:
        slots = max(1, mbs)
        delay_us = seq.direct.max_queue_delay_microseconds
        preferred = frozenset()
        utilization = seq.direct.minimum_slot_utilization
    return SequenceSettings(
        oldest=oldest,
        idle_ns=(seq.max_sequence_idle_microseconds or DEFAULT_IDLE_US) * 1000,
        slots_per_instance=slots,
        delay_ns=delay_us * 1000,
        min_slot_utilization=utilization,
        preferred=preferred,
        iterative=seq.iterative_sequence,
    )


def _add_control(settings: SequenceSettings, name: str, control_input: mc.ModelSequenceBatching.ControlInput,
                 seen: set[str]) -> None:
    """Check one ``control_input`` and record it: the CORRID input, or a START / END / READY flag."""
    where = f"model '{name}': sequence_batching control_input '{control_input.name}'"
    if not control_input.name:
        raise ModelConfigError(f"model '{name}': sequence_batching control_input must have a name")
    if control_input.name in seen:
        raise ModelConfigError(f"{where} is given more than once")
    seen.add(control_input.name)
    if len(control_input.control) != 1:
        raise ModelConfigError(f"{where} must have exactly one 'control'")
    control = control_input.control[0]
    kind_name = Control.Kind.Name(control.kind)
    if control.kind == Control.CONTROL_SEQUENCE_CORRID:
        if settings.corrid is not None:
            raise ModelConfigError(f"model '{name}': sequence_batching has more than one {kind_name} control")
        if control.data_type not in _CORRID_TYPES:
            raise ModelConfigError(
                f"{where}: {kind_name} needs data_type TYPE_UINT64, TYPE_INT64, TYPE_UINT32, TYPE_INT32 or "
                f"TYPE_STRING, got {mc.DataType.Name(control.data_type)}"
            )
        settings.corrid = (control_input.name, DataType.from_config(mc.DataType.Name(control.data_type)))
        return
    if control.kind in settings.controls:
        raise ModelConfigError(f"model '{name}': sequence_batching has more than one {kind_name} control")
    given = [(field_name, values) for field_name, values, in (
        ("int32_false_true", control.int32_false_true),
        ("fp32_false_true", control.fp32_false_true),
        ("bool_false_true", control.bool_false_true),
    ) if len(values)]
    if len(given) != 1 or len(given[0][1]) != 2:
        raise ModelConfigError(
            f"{where}: {kind_name} needs exactly one of int32_false_true, fp32_false_true, bool_false_true "
            "with two values (false, true)"
        )
    field_name, values = given[0]
    settings.controls[control.kind] = BoolControl(control_input.name, _FLAG_TYPES[field_name], values[0], values[1])


_FLAG_TYPES = {"int32_false_true": DataType.INT32, "fp32_false_true": DataType.FP32, "bool_false_true": DataType.BOOL}


def _state_spec(name: str, state: mc.ModelSequenceBatching.State, model_dir: str, taken: set[str]) -> StateSpec:
    """Check one implicit ``state`` and make its initial value (zeros, or read from its ``data_file``)."""
    where = f"model '{name}': sequence_batching state '{state.input_name}'"
    if not state.input_name or not state.output_name:
        raise ModelConfigError(f"model '{name}': sequence_batching state needs input_name and output_name")
    if state.input_name in taken:
        raise ModelConfigError(f"{where}: input_name is already a control input of the model")
    if state.data_type in (mc.TYPE_INVALID, mc.TYPE_STRING):
        raise ModelConfigError(f"{where} needs a data_type other than {mc.DataType.Name(state.data_type)}")
    datatype = DataType.from_config(mc.DataType.Name(state.data_type))
    if not state.dims:
        raise ModelConfigError(f"{where} needs dims")
    if len(state.initial_state) > 1:
        raise ModelConfigError(f"{where} may have at most one initial_state")
    if not state.initial_state:
        # Triton leaves the start state to the model (START tells it); zeros, variable dims as 1.
        return StateSpec(state.input_name, state.output_name, datatype,
                         np.zeros([d if d > 0 else 1 for d in state.dims], datatype.numpy_dtype))
    initial = state.initial_state[0]
    if initial.data_type != state.data_type:
        raise ModelConfigError(
            f"{where}: initial_state data_type {mc.DataType.Name(initial.data_type)} differs from the state's "
            f"{mc.DataType.Name(state.data_type)}"
        )
    dims = list(initial.dims)
    if any(d < 0 for d in dims) or len(dims) != len(state.dims) or any(
            s >= 0 and s != d for s, d in zip(state.dims, dims, strict=True)):
        raise ModelConfigError(f"{where}: initial_state dims {dims} do not fit the state's dims {list(state.dims)}")
    choice = initial.WhichOneof("state_data")
    if choice == "data_file":
        data = _read_initial_state(name, state, model_dir, datatype, dims, where)
        return StateSpec(state.input_name, state.output_name, datatype, data)
    if choice != "zero_data":
        raise ModelConfigError(f"{where}: initial_state needs zero_data or data_file")
    return StateSpec(state.input_name, state.output_name, datatype, np.zeros(dims, datatype.numpy_dtype))


def _read_initial_state(name: str, state: mc.ModelSequenceBatching.State, model_dir: str, datatype: DataType,
                        dims: list[int], where: str) -> np.ndarray:
    """The raw values of ``initial_state/<data_file>`` (inside the model folder), shaped ``dims``."""
    data_file = state.initial_state[0].data_file
    path = inside_model_dir(model_dir, data_file, f"initial_state data_file of state '{state.input_name}'", name,
                            base=INITIAL_STATE_DIR)
    shown = f"{INITIAL_STATE_DIR}/{data_file.lstrip('/')}"  # never the server's absolute path
    try:
        raw = np.fromfile(path, dtype=datatype.numpy_dtype)
    except OSError as e:
        raise ModelConfigError(f"{where}: cannot read initial_state data_file '{shown}': {e.strerror}") from None
    if raw.size != int(np.prod(dims)):
        raise ModelConfigError(
            f"{where}: initial_state data_file '{shown}' holds {raw.size} elements, dims {dims} need "
            f"{int(np.prod(dims))}"
        )
    return raw.reshape(dims)
