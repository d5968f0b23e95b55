"""Model configuration: parsing, Triton's JSON form, version policy, auto-complete of backend fields,
normalisation and validation."""

from __future__ import annotations

import json

import pytest
from google.protobuf import text_format

from tritium._proto import model_config_pb2 as mc
from tritium.config.autocomplete import fill_backend_fields, version_dirs
from tritium.config.parse import config_from_json, config_path, config_to_dict, load_config_file, parse_config_text
from tritium.config.validate import check_instance_groups, normalize, validate
from tritium.core.errors import InvalidArgumentError, ModelConfigError
from tritium.repository.versions import select_versions


def cfg(text: str) -> mc.ModelConfig:
    return text_format.Parse(text, mc.ModelConfig())


# -- parsing ------------------------------------------------------------------------------------------


def test_parse_error_names_model_file_and_line(tmp_path):
    path = tmp_path / "config.pbtxt"
    path.write_text('name: "m"\nmax_batch_size: 4\ninput [ { name: "X" data_type: TYPE_FP32 dims: [ 1 ]\n')
    with pytest.raises(ModelConfigError) as info:
        load_config_file(str(path), "m")
    message = str(info.value)
    assert "'m'" in message
    assert str(path) in message
    assert "line 3" in message or "line 4" in message  # the unclosed list, found at the end of the file


@pytest.mark.parametrize("text, line, needle", [
    ('name: "m"\nno_such_field: 1\n', 2, "no_such_field"),
    ('max_batch_size: "four"\n', 1, "max_batch_size"),
    ('\n\ninput [ { name: "X" data_type: TYPE_NOPE } ]\n', 3, "TYPE_NOPE"),
    ('instance_group [ { kind: KIND_TPU } ]\n', 1, "KIND_TPU"),
    ('max_batch_size: 99999999999\n', 1, "max_batch_size"),
])
def test_parse_errors(text, line, needle):
    with pytest.raises(ModelConfigError) as info:
        parse_config_text(text, "mymodel", "/repo/mymodel/config.pbtxt")
    message = str(info.value)
    assert "'mymodel'" in message and "/repo/mymodel/config.pbtxt" in message
    assert f"line {line}" in message
    assert needle in message


def test_missing_config_file_is_none(tmp_path):
    assert load_config_file(str(tmp_path / "config.pbtxt"), "m") is None


def test_unreadable_config_names_the_file(tmp_path):
    path = tmp_path / "config.pbtxt"
    path.write_bytes(b'name: "\xff\xfe"\n')
    with pytest.raises(ModelConfigError) as info:
        load_config_file(str(path), "m")
    assert str(path) in str(info.value) and "'m'" in str(info.value)
    path.unlink()
    path.mkdir()
    with pytest.raises(ModelConfigError) as info:
        load_config_file(str(path), "m")
    assert str(path) in str(info.value)


def test_config_path_prefers_named_config(tmp_path):
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "small.pbtxt").write_text("")
    assert config_path(str(tmp_path), "small") == str(tmp_path / "configs" / "small.pbtxt")
    assert config_path(str(tmp_path), "missing") == str(tmp_path / "config.pbtxt")
    assert config_path(str(tmp_path), "") == str(tmp_path / "config.pbtxt")


def test_config_from_json_error_names_model():
    with pytest.raises(ModelConfigError, match="'m'"):
        config_from_json('{"max_batch_size": "x"}', "m")
    assert config_from_json('{"max_batch_size": 4, "input": [{"dims": ["2", 3]}]}', "m").input[0].dims == [2, 3]


# -- Triton's JSON form -------------------------------------------------------------------------------

FULL = """
name: "m"
platform: "onnxruntime_onnx"
max_batch_size: 8
version_policy: { specific: { versions: [ 1, 3 ] } }
input [ { name: "IN" data_type: TYPE_FP32 dims: [ -1, 16 ] reshape: { shape: [ 4, -1, 4 ] } } ]
output [ { name: "OUT" data_type: TYPE_STRING dims: [ 3 ] } ]
instance_group [ { kind: KIND_CPU count: 2 } ]
dynamic_batching {
  preferred_batch_size: [ 2, 4 ]
  max_queue_delay_microseconds: 100
  default_queue_policy { default_timeout_microseconds: 5000 max_queue_size: 3 }
  priority_levels: 2
  priority_queue_policy { key: 1 value: { default_timeout_microseconds: 7000 timeout_action: DELAY } }
}
optimization { cuda { graph_spec [ { batch_size: 2 input { key: "IN" value: { dim: [ 16, 3 ] } } } ] } }
model_warmup [ { name: "w" batch_size: 1
                 inputs { key: "IN" value: { data_type: TYPE_FP32 dims: [ 16 ] zero_data: true } } } ]
parameters { key: "intra_op_thread_count" value: { string_value: "2" } }
"""


def test_config_to_dict_gives_numbers_for_64_bit_ints():
    d = config_to_dict(cfg(FULL))
    json.dumps(d)  # plain JSON types only
    assert d["input"][0]["dims"] == [-1, 16]
    assert d["input"][0]["reshape"]["shape"] == [4, -1, 4]
    assert d["output"][0]["dims"] == [3]
    assert d["version_policy"] == {"specific": {"versions": [1, 3]}}
    batching = d["dynamic_batching"]
    assert batching["max_queue_delay_microseconds"] == 100
    assert batching["priority_levels"] == 2
    assert batching["default_queue_policy"]["default_timeout_microseconds"] == 5000
    assert batching["default_queue_policy"]["max_queue_size"] == 3
    # map<uint64, message>: JSON keys are strings, values inside are numbers
    assert batching["priority_queue_policy"]["1"]["default_timeout_microseconds"] == 7000
    # repeated message -> map<string, message> -> repeated int64
    assert d["optimization"]["cuda"]["graph_spec"][0]["input"]["IN"]["dim"] == [16, 3]
    assert d["model_warmup"][0]["inputs"]["IN"]["dims"] == [16]
    assert d["model_warmup"][0]["batch_size"] == 1


def test_config_to_dict_has_no_string_numbers_anywhere():
    def walk(value, path="$"):
        if isinstance(value, dict):
            for k, v in value.items():
                yield from walk(v, f"{path}.{k}")
        elif isinstance(value, list):
            for i, v in enumerate(value):
                yield from walk(v, f"{path}[{i}]")
        else:
            yield path, value

    for path, value in walk(config_to_dict(cfg(FULL))):
        if isinstance(value, str):
            assert not value.lstrip("-").isdigit() or path.endswith("string_value"), f"{path} = {value!r}"


def test_config_to_dict_enums_are_names_and_defaults_present():
    d = config_to_dict(cfg(FULL))
    assert d["input"][0]["data_type"] == "TYPE_FP32"
    assert d["output"][0]["data_type"] == "TYPE_STRING"
    assert d["input"][0]["format"] == "FORMAT_NONE"
    assert d["instance_group"][0]["kind"] == "KIND_CPU"
    assert d["dynamic_batching"]["priority_queue_policy"]["1"]["timeout_action"] == "DELAY"
    assert d["dynamic_batching"]["default_queue_policy"]["timeout_action"] == "REJECT"
    # every field is present, as Triton's JSON has them
    assert d["backend"] == "" and d["default_model_filename"] == ""
    assert d["input"][0]["optional"] is False
    assert d["parameters"]["intra_op_thread_count"] == {"string_value": "2"}


def test_config_to_dict_huge_uint64():
    d = config_to_dict(cfg("dynamic_batching { max_queue_delay_microseconds: 18446744073709551615 }"))
    assert d["dynamic_batching"]["max_queue_delay_microseconds"] == 2**64 - 1


# -- version policy -----------------------------------------------------------------------------------


@pytest.mark.parametrize("policy, available, expected", [
    ("", [1, 2, 3], [3]),
    ("latest: { num_versions: 1 }", [3, 1, 2], [3]),
    ("latest: { num_versions: 2 }", [1, 2, 3], [2, 3]),
    ("latest: { num_versions: 5 }", [1, 2, 3], [1, 2, 3]),
    ("all: {}", [3, 1, 2], [1, 2, 3]),
    ("specific: { versions: [ 1, 3 ] }", [1, 2, 3], [1, 3]),
    ("specific: { versions: [ 2, 7 ] }", [1, 2, 3], [2]),
    ("all: {}", [], []),
    ("", [], []),
    ("latest: { num_versions: 2 }", [10, 9, 100], [10, 100]),
])
def test_select_versions(policy, available, expected):
    assert select_versions(text_format.Parse(policy, mc.ModelVersionPolicy()), available) == expected


def test_version_dirs_only_numeric_directories(tmp_path):
    for entry in ("1", "3", "10", "2a", "configs", ".4"):
        (tmp_path / entry).mkdir()
    (tmp_path / "7").write_text("a file, not a version")
    assert version_dirs(str(tmp_path)) == [1, 3, 10]
    assert version_dirs(str(tmp_path / "missing")) == []


# -- backend fields -----------------------------------------------------------------------------------


def _model_dir(tmp_path, filename, is_dir=False):
    path = tmp_path / "m" / "1" / filename
    path.parent.mkdir(parents=True)
    if is_dir:
        path.mkdir()
    else:
        path.write_bytes(b"")
    return str(tmp_path / "m")


@pytest.mark.parametrize("filename, backend, platform", [
    ("model.onnx", "onnxruntime", "onnxruntime_onnx"),
    ("model.pt", "pytorch", "pytorch_libtorch"),
    ("model.py", "python", ""),
    ("model.plan", "tensorrt", "tensorrt_plan"),
    ("model.graphdef", "tensorflow", "tensorflow_graphdef"),
    ("model.xml", "openvino", ""),
])
def test_fill_backend_fields_from_model_file(tmp_path, filename, backend, platform):
    config = mc.ModelConfig()
    fill_backend_fields(config, _model_dir(tmp_path, filename))
    assert (config.backend, config.platform, config.default_model_filename) == (backend, platform, filename)


def test_fill_backend_fields_onnx_directory(tmp_path):
    config = mc.ModelConfig()
    fill_backend_fields(config, _model_dir(tmp_path, "model.onnx", is_dir=True))
    assert (config.backend, config.platform) == ("onnxruntime", "onnxruntime_onnx")


def test_fill_backend_fields_savedmodel_directory(tmp_path):
    config = mc.ModelConfig()
    fill_backend_fields(config, _model_dir(tmp_path, "model.savedmodel", is_dir=True))
    assert (config.backend, config.platform, config.default_model_filename) == (
        "tensorflow", "tensorflow_savedmodel", "model.savedmodel")


@pytest.mark.parametrize("text, backend, platform, filename", [
    ('platform: "onnxruntime_onnx"', "onnxruntime", "onnxruntime_onnx", "model.onnx"),
    ('platform: "pytorch_libtorch"', "pytorch", "pytorch_libtorch", "model.pt"),
    ('platform: "libtorch"', "pytorch", "libtorch", "model.pt"),
    ('platform: "torch_aoti"', "pytorch", "torch_aoti", "model.pt2"),
    ('platform: "tensorrt_plan"', "tensorrt", "tensorrt_plan", "model.plan"),
    ('platform: "tensorflow_savedmodel"', "tensorflow", "tensorflow_savedmodel", "model.savedmodel"),
    ('platform: "tensorflow_graphdef"', "tensorflow", "tensorflow_graphdef", "model.graphdef"),
    ('backend: "onnxruntime"', "onnxruntime", "onnxruntime_onnx", "model.onnx"),
    ('backend: "pytorch"', "pytorch", "pytorch_libtorch", "model.pt"),
    ('backend: "python"', "python", "", "model.py"),
    ('backend: "onnxruntime" default_model_filename: "net.onnx"', "onnxruntime", "onnxruntime_onnx", "net.onnx"),
    ('backend: "mybackend"', "mybackend", "", ""),
    ('platform: "ensemble"', "", "ensemble", ""),
])
def test_fill_backend_fields_from_config(tmp_path, text, backend, platform, filename):
    config = cfg(text)
    fill_backend_fields(config, str(tmp_path))  # an empty model dir: only the config speaks
    assert (config.backend, config.platform, config.default_model_filename) == (backend, platform, filename)


def test_fill_backend_fields_custom_filename_with_known_extension(tmp_path):
    config = cfg('default_model_filename: "net.onnx"')
    fill_backend_fields(config, _model_dir(tmp_path, "net.onnx"))
    assert (config.backend, config.platform, config.default_model_filename) == (
        "onnxruntime", "onnxruntime_onnx", "net.onnx")


def test_fill_backend_fields_custom_filename_missing(tmp_path):
    config = cfg('name: "m" default_model_filename: "missing.onnx"')
    fill_backend_fields(config, _model_dir(tmp_path, "model.onnx"))
    assert config.backend == "" and config.platform == ""
    with pytest.raises(ModelConfigError, match="missing.onnx"):
        validate(config, "m")


def test_fill_backend_fields_backend_from_directory_suffix(tmp_path):
    model_dir = tmp_path / "m.custom"
    (model_dir / "1").mkdir(parents=True)
    config = mc.ModelConfig()
    fill_backend_fields(config, str(model_dir))
    assert config.backend == "custom"


def test_fill_backend_fields_keeps_explicit_values(tmp_path):
    config = cfg('backend: "onnxruntime" platform: "onnxruntime_onnx" default_model_filename: "x.onnx"')
    fill_backend_fields(config, _model_dir(tmp_path, "model.pt"))
    assert (config.backend, config.platform, config.default_model_filename) == (
        "onnxruntime", "onnxruntime_onnx", "x.onnx")


def test_fill_backend_fields_nothing_found(tmp_path):
    config = cfg('name: "m"')
    fill_backend_fields(config, _model_dir(tmp_path, "weights.bin"))
    assert config.backend == "" and config.platform == ""
    with pytest.raises(ModelConfigError, match="backend"):
        validate(config, "m")


# -- normalize ----------------------------------------------------------------------------------------


def test_normalize_defaults():
    config = cfg('backend: "onnxruntime"')
    normalize(config, "m", gpus=(), default_cpu_count=2)
    assert config.name == "m"
    assert config.version_policy.WhichOneof("policy_choice") == "latest"
    assert config.version_policy.latest.num_versions == 1
    assert len(config.instance_group) == 1
    group = config.instance_group[0]
    assert (group.name, group.kind, group.count, list(group.gpus)) == ("m", mc.ModelInstanceGroup.KIND_CPU, 2, [])


def test_normalize_fills_preferred_batch_size_as_triton():
    """Real Triton 2.51 shows ``preferred_batch_size: [max_batch_size]`` for ``dynamic_batching`` without
    preferred sizes (auto-complete on or off); explicit sizes stay, and max_batch_size 0 gets none."""
    filled = cfg('max_batch_size: 4 dynamic_batching { max_queue_delay_microseconds: 100 }')
    normalize(filled, "m", gpus=())
    assert list(filled.dynamic_batching.preferred_batch_size) == [4]
    kept = cfg('max_batch_size: 8 dynamic_batching { preferred_batch_size: [ 2 ] }')
    normalize(kept, "m", gpus=())
    assert list(kept.dynamic_batching.preferred_batch_size) == [2]
    unbatched = cfg('max_batch_size: 0 dynamic_batching { }')
    normalize(unbatched, "m", gpus=())
    assert list(unbatched.dynamic_batching.preferred_batch_size) == []
    none = cfg('max_batch_size: 4')
    normalize(none, "m", gpus=())
    assert not none.HasField("dynamic_batching")


def test_normalize_keeps_explicit_policy_and_name():
    config = cfg('name: "m" version_policy: { all: {} }')
    normalize(config, "m", gpus=())
    assert config.version_policy.WhichOneof("policy_choice") == "all"


def test_normalize_names_groups_like_triton():
    """An implicit group is named after the model; unnamed explicit groups are ``<model>_<index>``."""
    config = cfg('instance_group [ { count: 1 }, { name: "mine" }, { kind: KIND_CPU } ]')
    normalize(config, "m", gpus=())
    assert [g.name for g in config.instance_group] == ["m_0", "mine", "m_2"]
    single = cfg('instance_group [ { count: 3 } ]')
    normalize(single, "m", gpus=())
    assert [g.name for g in single.instance_group] == ["m_0"]


def test_normalize_kind_auto_without_gpus_is_cpu():
    config = cfg('backend: "onnxruntime" instance_group [ { kind: KIND_AUTO count: 2 } ]')
    normalize(config, "m", gpus=())
    assert config.instance_group[0].kind == mc.ModelInstanceGroup.KIND_CPU
    assert config.instance_group[0].count == 2
    validate(config, "m")


def test_normalize_kind_auto_with_gpus_is_gpu_on_all():
    config = cfg('backend: "onnxruntime" instance_group [ { kind: KIND_AUTO } ]')
    normalize(config, "m", gpus=(0, 1))
    group = config.instance_group[0]
    assert group.kind == mc.ModelInstanceGroup.KIND_GPU
    assert list(group.gpus) == [0, 1]
    assert group.count == 1
    validate(config, "m")


def test_normalize_kind_auto_with_missing_gpu_is_cpu():
    config = cfg('instance_group [ { kind: KIND_AUTO gpus: [ 3 ] } ]')
    normalize(config, "m", gpus=(0,))
    assert config.instance_group[0].kind == mc.ModelInstanceGroup.KIND_CPU


def test_normalize_kind_gpu_gets_every_gpu():
    config = cfg('instance_group [ { kind: KIND_GPU count: 2 } ]')
    normalize(config, "m", gpus=(0, 1, 2))
    assert list(config.instance_group[0].gpus) == [0, 1, 2]
    assert config.instance_group[0].count == 2


def test_normalize_default_count_per_kind():
    config = cfg('instance_group [ { kind: KIND_CPU }, { kind: KIND_GPU } ]')
    normalize(config, "m", gpus=(0,), default_cpu_count=2)
    assert [g.count for g in config.instance_group] == [2, 1]


def test_normalize_leaves_ensembles_without_instances():
    config = cfg('platform: "ensemble"')
    normalize(config, "m", gpus=())
    assert len(config.instance_group) == 0


# -- validate -----------------------------------------------------------------------------------------

BASE = 'name: "m" backend: "onnxruntime" max_batch_size: 8 '


def _normalized(text: str, gpus=()) -> mc.ModelConfig:
    config = cfg(text)
    normalize(config, "m", gpus=gpus)
    return config


def _invalid(text: str, *needles: str, gpus=()) -> str:
    with pytest.raises(ModelConfigError) as info:
        validate(_normalized(text, gpus), "m")
    message = str(info.value)
    assert "'m'" in message
    for needle in needles:
        assert needle in message, f"{needle!r} not in {message!r}"
    return message


def test_valid_config_passes():
    validate(_normalized(BASE + """
        input [ { name: "A" data_type: TYPE_FP32 dims: [ -1, 4 ] } ]
        output [ { name: "B" data_type: TYPE_FP32 dims: [ 2, 2 ] reshape: { shape: [ 4 ] } } ]
        dynamic_batching { preferred_batch_size: [ 4, 8 ] }
    """), "m")


def test_preferred_batch_size_over_max_rejected():
    _invalid(BASE + "dynamic_batching { preferred_batch_size: [ 4, 16 ] }", "16", "8")


def test_preferred_batch_size_zero_rejected():
    _invalid(BASE + "dynamic_batching { preferred_batch_size: [ 0 ] }", "preferred")


def test_reshape_size_mismatch_rejected():
    _invalid(BASE + 'input [ { name: "A" data_type: TYPE_FP32 dims: [ 4 ] reshape: { shape: [ 3 ] } } ]',
             "A", "reshape")


def test_reshape_variable_dims_mismatch_rejected():
    _invalid(BASE + 'input [ { name: "A" data_type: TYPE_FP32 dims: [ -1 ] reshape: { shape: [ 4 ] } } ]', "A")


def test_reshape_with_variable_dims_between_equal_chunks_allowed():
    """Triton's example: [2, 4, -1, 6] -> [8, -1, 1, 6] (2 * 4 = 8 and 6 = 1 * 6)."""
    validate(_normalized(BASE + 'input [ { name: "A" data_type: TYPE_FP32 dims: [ 2, 4, -1, 6 ] '
                                'reshape: { shape: [ 8, -1, 1, 6 ] } } ]'), "m")


@pytest.mark.parametrize("dims, shape, needle", [
    ("[ -1, -1 ]", "[ -1 ]", "number of variable-size"),
    ("[ 2, -1 ]", "[ -1, 3 ]", "different size"),
    ("[ 2, -1, 3 ]", "[ 3, -1, 2 ]", "different size"),
    ("[ 4 ]", "[ 0 ]", "reshape dimensions"),
    ("[ 4 ]", "[ -2, -2 ]", "reshape dimensions"),
])
def test_reshape_variable_dims_rules(dims, shape, needle):
    _invalid(BASE + f'input [ {{ name: "A" data_type: TYPE_FP32 dims: {dims} reshape: {{ shape: {shape} }} }} ]',
             "A", needle)


def test_zero_dim_rejected():
    _invalid(BASE + 'input [ { name: "A" data_type: TYPE_FP32 dims: [ 0 ] } ]', "A", "dimension")


def test_reshape_to_scalar_allowed():
    validate(_normalized(BASE + 'input [ { name: "A" data_type: TYPE_FP32 dims: [ 1 ] reshape: { shape: [ ] } } ]'),
             "m")


def _bad_groups(text: str, gpus=()) -> str:
    """Instance groups are checked when a version loads (as Triton does), in Triton's words."""
    config = _normalized(text, gpus)
    validate(config, "m")  # nothing else wrong
    with pytest.raises(InvalidArgumentError) as info:
        check_instance_groups(config, "m", gpus)
    return str(info.value)


def test_kind_cpu_with_gpus_rejected():
    assert _bad_groups(BASE + "instance_group [ { kind: KIND_CPU gpus: [ 0 ] } ]", gpus=(0,)) == \
        "instance group m_0 of model m has kind KIND_CPU but specifies one or more GPUs"


def test_kind_gpu_without_gpus_rejected():
    # Triton 2.51, word for word: "instance group gpu_0 of model gpu has kind KIND_GPU but no GPUs are available"
    assert _bad_groups(BASE + "instance_group [ { kind: KIND_GPU } ]") == \
        "instance group m_0 of model m has kind KIND_GPU but no GPUs are available"


def test_kind_gpu_with_unknown_gpu_rejected():
    assert _bad_groups(BASE + "instance_group [ { kind: KIND_GPU gpus: [ 5 ] } ]", gpus=(0, 1)) == \
        "instance group m_0 of model m specifies invalid or unsupported gpu id 5. GPUs available are: 0, 1"


def test_name_mismatch_rejected():
    with pytest.raises(ModelConfigError, match="other"):
        validate(_normalized('name: "other" backend: "onnxruntime"'), "m")


@pytest.mark.parametrize("tensor, needle", [
    ('{ data_type: TYPE_FP32 dims: [ 1 ] }', "name"),
    ('{ name: "A" dims: [ 1 ] }', "data_type"),
    ('{ name: "A" data_type: TYPE_FP32 }', "dims"),
    ('{ name: "A" data_type: TYPE_FP32 dims: [ -2 ] }', "-2"),
    ('{ name: "A" data_type: TYPE_FP32 dims: [ 1 ] }, { name: "A" data_type: TYPE_FP32 dims: [ 1 ] }', "duplicate"),
])
@pytest.mark.parametrize("kind", ["input", "output"])
def test_tensor_errors(tensor, needle, kind):
    _invalid(BASE + f"{kind} [ {tensor} ]", needle, kind)


def test_negative_max_batch_size_rejected():
    _invalid('name: "m" backend: "onnxruntime" max_batch_size: -1', "max_batch_size")


def test_no_backend_rejected():
    _invalid('name: "m"', "backend")
