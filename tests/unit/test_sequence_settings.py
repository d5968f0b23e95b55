"""Checking and defaulting ``sequence_batching`` at load, as Triton does."""

from __future__ import annotations

import os

import numpy as np
import pytest
from google.protobuf import text_format

from tritium._proto import model_config_pb2 as mc
from tritium.config.sequence import sequence_settings
from tritium.core.errors import ModelConfigError
from tritium.core.types import DataType

C = mc.ModelSequenceBatching.Control


def config(text: str, max_batch_size: int = 4) -> mc.ModelConfig:
    cfg = mc.ModelConfig(name="m", max_batch_size=max_batch_size)
    text_format.Parse(text, cfg.sequence_batching)
    return cfg


def test_defaults_direct_one_slot_per_batch_row_and_one_second_idle():
    cfg = config("")
    settings = sequence_settings(cfg, "/nowhere")
    assert not settings.oldest and settings.slots_per_instance == 4 and settings.idle_ns == 1_000_000_000
    assert cfg.sequence_batching.HasField("direct") and cfg.sequence_batching.max_sequence_idle_microseconds == 1000000
    assert sequence_settings(config("", max_batch_size=0), "/nowhere").slots_per_instance == 1


def test_oldest_candidates_preferred_sizes_and_delay():
    settings = sequence_settings(config("oldest { max_candidate_sequences: 6 preferred_batch_size: [2, 4] "
                                        "max_queue_delay_microseconds: 500 }"), "/nowhere")
    assert settings.oldest and settings.slots_per_instance == 6
    assert settings.preferred == {2, 4} and settings.delay_ns == 500_000
    assert sequence_settings(config("oldest { }"), "/nowhere").slots_per_instance == 4
    with pytest.raises(ModelConfigError, match="preferred_batch_size 8"):
        sequence_settings(config("oldest { preferred_batch_size: [8] }"), "/nowhere")


def test_controls_with_their_types_and_values():
    settings = sequence_settings(config("""
        control_input [
          { name: "S" control [ { kind: CONTROL_SEQUENCE_START fp32_false_true: [ 0, 1 ] } ] },
          { name: "R" control [ { kind: CONTROL_SEQUENCE_READY bool_false_true: [ false, true ] } ] },
          { name: "E" control [ { kind: CONTROL_SEQUENCE_END int32_false_true: [ 5, 9 ] } ] },
          { name: "C" control [ { kind: CONTROL_SEQUENCE_CORRID data_type: TYPE_STRING } ] } ]"""), "/nowhere")
    assert settings.controls[C.CONTROL_SEQUENCE_START].datatype is DataType.FP32
    assert settings.controls[C.CONTROL_SEQUENCE_READY].datatype is DataType.BOOL
    end = settings.controls[C.CONTROL_SEQUENCE_END]
    assert (end.datatype, end.false, end.true) == (DataType.INT32, 5, 9)
    assert settings.corrid == ("C", DataType.BYTES)
    assert settings.injected_inputs == {"S", "R", "E", "C"}


@pytest.mark.parametrize("text, needle", [
    ('control_input [ { name: "S" control [ { kind: CONTROL_SEQUENCE_START int32_false_true: [ 1 ] } ] } ]',
     "int32_false_true"),
    ('control_input [ { name: "S" control [ { kind: CONTROL_SEQUENCE_START } ] } ]', "exactly one of"),
    ('control_input [ { name: "S" control [ { kind: CONTROL_SEQUENCE_START int32_false_true: [ 0, 1 ] '
     'fp32_false_true: [ 0, 1 ] } ] } ]', "exactly one of"),
    ('control_input [ { name: "A" control [ { kind: CONTROL_SEQUENCE_START int32_false_true: [ 0, 1 ] } ] }, '
     '{ name: "B" control [ { kind: CONTROL_SEQUENCE_START int32_false_true: [ 0, 1 ] } ] } ]',
     "more than one CONTROL_SEQUENCE_START"),
    ('control_input [ { name: "C" control [ { kind: CONTROL_SEQUENCE_CORRID data_type: TYPE_FP32 } ] } ]',
     "got TYPE_FP32"),
    ('control_input [ { name: "S" control [ ] } ]', "exactly one 'control'"),
    ('state [ { input_name: "I" data_type: TYPE_FP32 dims: [ 1 ] } ]', "input_name and output_name"),
    ('state [ { input_name: "I" output_name: "O" data_type: TYPE_FP32 } ]', "needs dims"),
    ('state [ { input_name: "I" output_name: "O" data_type: TYPE_FP32 dims: [ 2 ] '
     'initial_state [ { data_type: TYPE_INT32 dims: [ 2 ] zero_data: true } ] } ]', "differs"),
    ('state [ { input_name: "I" output_name: "O" data_type: TYPE_FP32 dims: [ 2 ] '
     'initial_state [ { data_type: TYPE_FP32 dims: [ 3 ] zero_data: true } ] } ]', "do not fit"),
    ('state [ { input_name: "I" output_name: "O" data_type: TYPE_FP32 dims: [ 2 ] '
     'initial_state [ { data_type: TYPE_FP32 dims: [ 2 ] data_file: "missing.bin" } ] } ]', "missing.bin"),
])
def test_bad_configs_name_what_is_wrong(text, needle):
    with pytest.raises(ModelConfigError, match=needle):
        sequence_settings(config(text), "/nowhere")


def test_initial_state_zero_and_from_file(tmp_path):
    os.makedirs(tmp_path / "initial_state")
    np.arange(6, dtype=np.float32).tofile(tmp_path / "initial_state" / "init.bin")
    settings = sequence_settings(config("""
        state [ { input_name: "A" output_name: "A_OUT" data_type: TYPE_FP32 dims: [ -1, 3 ]
                  initial_state [ { data_type: TYPE_FP32 dims: [ 2, 3 ] data_file: "init.bin" } ] },
                { input_name: "B" output_name: "B_OUT" data_type: TYPE_INT64 dims: [ 4 ]
                  initial_state [ { data_type: TYPE_INT64 dims: [ 4 ] zero_data: true } ] } ]"""), str(tmp_path))
    a, b = settings.states
    np.testing.assert_array_equal(a.initial, np.arange(6, dtype=np.float32).reshape(2, 3))
    assert b.initial.dtype == np.int64 and b.initial.shape == (4,) and not b.initial.any()
    with pytest.raises(ModelConfigError, match="holds 6 elements"):
        sequence_settings(config("""
            state [ { input_name: "A" output_name: "A_OUT" data_type: TYPE_FP32 dims: [ 4 ]
                      initial_state [ { data_type: TYPE_FP32 dims: [ 4 ] data_file: "init.bin" } ] } ]"""),
                          str(tmp_path))


def test_iterative_sequence_is_accepted():
    assert sequence_settings(config("iterative_sequence: true"), "/nowhere").iterative
    assert not sequence_settings(config(""), "/nowhere").iterative
