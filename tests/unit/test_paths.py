"""The one check of config-named paths (config/paths.py), of model names (core/names.py) and of file-override
names (repository/overrides.py)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from google.protobuf import text_format

from tritium._proto import model_config_pb2 as mc
from tritium.config.paths import check_config_paths, execution_env_path, inside_model_dir, join
from tritium.core.errors import InvalidArgumentError, ModelConfigError
from tritium.core.names import MAX_NAME_BYTES, check_model_name, name_problem
from tritium.repository.overrides import OverrideDir, check_override_name, remove_all


@pytest.fixture(scope="module", autouse=True)
def _no_override_folders_left() -> Iterator[None]:
    """The override folders these tests make go with the module."""
    yield
    remove_all()


@pytest.fixture
def model_dir(tmp_path):
    """repo/m with a version folder, a label file, and a secret outside the repository."""
    (tmp_path / "secret.txt").write_text("SECRET\n")
    model = tmp_path / "repo" / "m"
    (model / "1").mkdir(parents=True)
    (model / "1" / "model.py").write_text("")
    (model / "labels.txt").write_text("a\nb\n")
    return model


def test_join_reads_a_leading_slash_relative_as_triton_does():
    assert join("/r/m", "/etc/passwd") == "/r/m/etc/passwd"
    assert join("/r/m", "warmup", "x.bin") == "/r/m/warmup/x.bin"
    assert join("/r/m", "", "1") == "/r/m/1"


def test_inside_accepts_paths_in_the_folder(model_dir):
    assert inside_model_dir(str(model_dir), "labels.txt", "label_filename", "m") == str(model_dir / "labels.txt")
    assert inside_model_dir(str(model_dir), "model.py", "default_model_filename", "m", base="1").endswith("1/model.py")
    # a leading slash stays inside (Triton's JoinPath); a '..' that comes back in is fine too
    assert inside_model_dir(str(model_dir), "/labels.txt", "label_filename", "m") == str(model_dir / "labels.txt")
    inside_model_dir(str(model_dir), "1/../labels.txt", "label_filename", "m")


@pytest.mark.parametrize("value", ["../../secret.txt", "../m2/x", "1/../../../secret.txt", ".."])
def test_inside_refuses_dotdot_escapes_naming_the_field(model_dir, value):
    with pytest.raises(ModelConfigError, match=r"label_filename of output 'P'.*leaves the model directory") as e:
        inside_model_dir(str(model_dir), value, "label_filename of output 'P'", "m")
    assert str(model_dir.parent.parent) not in str(e.value)  # no absolute server path in the message


def test_inside_follows_symlinks(model_dir, tmp_path):
    os.symlink(tmp_path / "secret.txt", model_dir / "link.txt")
    os.symlink(tmp_path, model_dir / "2")
    os.symlink(model_dir / "labels.txt", model_dir / "ok_link.txt")  # a symlink that stays inside is fine
    with pytest.raises(ModelConfigError, match="'link.txt' leaves"):
        inside_model_dir(str(model_dir), "link.txt", "label_filename", "m")
    with pytest.raises(ModelConfigError, match="version folder 2"):
        inside_model_dir(str(model_dir), "2", "version folder 2", "m")
    inside_model_dir(str(model_dir), "ok_link.txt", "label_filename", "m")


def test_a_model_folder_that_is_itself_a_symlink_is_fine(model_dir, tmp_path):
    os.symlink(model_dir, tmp_path / "alias")
    assert inside_model_dir(str(tmp_path / "alias"), "labels.txt", "label_filename", "m")


def _config(text: str) -> mc.ModelConfig:
    return text_format.Parse(text, mc.ModelConfig())


@pytest.mark.parametrize("text, field", [
    ('output [ { name: "P" label_filename: "../../secret.txt" } ]', "label_filename of output 'P'"),
    ('default_model_filename: "../../../secret.txt"', "default_model_filename"),
    ('cc_model_filenames { key: "8.0" value: "../../x" }', "cc_model_filenames['8.0']"),
    ('model_warmup [ { name: "w" inputs { key: "I" value: { data_type: TYPE_FP32 dims: [ 1 ] '
     'input_data_file: "../../../secret.txt" } } } ]', "input_data_file of warmup sample 'w' input 'I'"),
    ('sequence_batching { state [ { input_name: "S" output_name: "S_OUT" data_type: TYPE_FP32 dims: [ 1 ] '
     'initial_state [ { data_type: TYPE_FP32 dims: [ 1 ] data_file: "../../../secret.txt" } ] } ] }',
     "initial_state data_file of state 'S'"),
    ('parameters { key: "EXECUTION_ENV_PATH" value: { string_value: "$$TRITON_MODEL_DIRECTORY/../../env" } }',
     "parameter EXECUTION_ENV_PATH"),
])
def test_every_path_field_of_a_config_is_checked(model_dir, text, field):
    for from_client in (False, True):
        with pytest.raises(ModelConfigError, match=field.replace("[", r"\[").replace("]", r"\]")):
            check_config_paths(_config(text), str(model_dir), [1], "m", from_client)


def test_a_version_folder_or_model_file_that_leads_outside_is_refused(model_dir, tmp_path):
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "model.py").write_text("")
    os.symlink(tmp_path / "elsewhere", model_dir / "2")
    with pytest.raises(ModelConfigError, match="version folder 2"):
        check_config_paths(_config('default_model_filename: "model.py"'), str(model_dir), [2], "m", False)
    os.remove(model_dir / "1" / "model.py")
    os.symlink(tmp_path / "elsewhere" / "model.py", model_dir / "1" / "model.py")
    with pytest.raises(ModelConfigError, match="default_model_filename 'model.py' leaves"):
        check_config_paths(_config('default_model_filename: "model.py"'), str(model_dir), [1], "m", False)


def test_config_paths_inside_pass(model_dir):
    check_config_paths(_config('default_model_filename: "model.py" output [ { name: "P" label_filename: "labels.txt" } ]'
                               ' parameters { key: "EXECUTION_ENV_PATH" value: { string_value: '
                               '"$$TRITON_MODEL_DIRECTORY/env.tar.gz" } }'), str(model_dir), [1], "m", True)


def test_execution_env_path_absolute_only_from_the_operator(model_dir):
    assert execution_env_path(str(model_dir), "/opt/envs/py.tar.gz", "m", from_client=False) == "/opt/envs/py.tar.gz"
    for value in ("/opt/envs/py.tar.gz", "relative/env", "/x/$$TRITON_MODEL_DIRECTORY"):
        with pytest.raises(ModelConfigError, match="of a config override must name a path inside the model folder"):
            execution_env_path(str(model_dir), value, "m", from_client=True)
    inside = execution_env_path(str(model_dir), "$$TRITON_MODEL_DIRECTORY/env.tar.gz", "m", from_client=True)
    assert inside == str(model_dir / "env.tar.gz")
    assert execution_env_path(str(model_dir), "", "m", from_client=True) == ""


@pytest.mark.parametrize("name, needle", [
    ("", "must not be empty"),
    ("a/b", "path separator"),
    ("a\\b", "path separator"),
    ("../x", "must not start with '.'"),
    ("..", "must not start with '.'"),
    (".hidden", "must not start with '.'"),
    ("a\0b", "NUL"),
    ("a\nb", "control characters"),
    ("x" * (MAX_NAME_BYTES + 1), f"longer than {MAX_NAME_BYTES} bytes"),
    ("é" * 128, f"longer than {MAX_NAME_BYTES} bytes"),  # 256 bytes of UTF-8
] + [(f"a{c}b", f"must not contain '{c}'") for c in ";|&$`<>()[]{}\"'*?~#!"])
def test_model_names_refused(name, needle):
    assert needle in (name_problem(name) or "")
    with pytest.raises(InvalidArgumentError, match="invalid model name"):
        check_model_name(name)


@pytest.mark.parametrize("name", ["add_sub", "a.b", "a..b", "a b", "model-1", "x" * MAX_NAME_BYTES, "模型", "a%2Fb"])
def test_model_names_accepted(name):
    check_model_name(name)


def test_refused_names_are_shown_escaped_and_cut():
    with pytest.raises(InvalidArgumentError) as e:
        check_model_name("a\0b" + "x" * 300)
    assert "\0" not in str(e.value) and "\\x00" in str(e.value) and len(str(e.value)) < 200


@pytest.mark.parametrize("relative", ["1/model.py", "/1/model.py", "//1//model.py", "1/./model.py", "1/../2/m"])
def test_override_names_inside(relative):
    check_override_name(relative, "m")
    folder = OverrideDir.create("m", {relative: b"x"})
    try:
        written = [os.path.join(d, f) for d, _, files in os.walk(folder.path) for f in files]
        assert len(written) == 1 and os.path.commonpath([folder.path, written[0]]) == folder.path
    finally:
        folder.remove()


@pytest.mark.parametrize("relative", ["", "/", ".", "..", "../x", "1/../../x", "/../x", "a\0b"])
def test_override_names_that_escape_are_refused_before_anything_is_written(relative):
    with pytest.raises(InvalidArgumentError, match="must name a file inside the model folder"):
        check_override_name(relative, "m")
    with pytest.raises(InvalidArgumentError, match="must name a file inside the model folder"):
        OverrideDir.create("m", {relative: b"x"})


def test_override_folders_are_not_named_by_the_client():
    folder = OverrideDir.create("../../evil", {"1/model.py": b""})
    try:
        assert "evil" not in folder.path and os.path.basename(os.path.dirname(folder.path)).startswith(
            f"tritium-overrides-{os.getpid()}-")
    finally:
        folder.remove()


def test_fingerprints_never_read_through_links_out_of_the_folder_nor_block(model_dir):
    """A version folder linked to '/', a label file linked to /dev/zero and a FIFO: the fingerprint (taken
    before the load checks anything) neither walks the machine nor blocks."""
    import threading

    from tritium.repository.fingerprint import model_fingerprint, version_fingerprint

    os.symlink("/", model_dir / "2")
    os.symlink("/", model_dir / "warmup")
    os.symlink("/dev/zero", model_dir / "zero.txt")
    os.mkfifo(model_dir / "fifo")
    prints: list[str] = []
    worker = threading.Thread(target=lambda: prints.extend(
        [model_fingerprint(str(model_dir)), version_fingerprint(str(model_dir), 2), version_fingerprint(str(model_dir), 1)]),
        daemon=True)
    worker.start()
    worker.join(30)
    assert not worker.is_alive() and len(prints) == 3 and all(prints)
    os.remove(model_dir / "2")
    os.symlink("/etc", model_dir / "2")
    assert version_fingerprint(str(model_dir), 2) != prints[1]  # a changed link target is still seen


def test_override_folders_of_servers_that_are_gone_are_removed(tmp_path, monkeypatch):
    import subprocess
    import sys

    import tritium.repository.overrides as overrides

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True).stdout.strip()
    monkeypatch.setattr(overrides.tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(overrides, "_root", None)
    (tmp_path / f"tritium-overrides-{gone}-abc" / "model-x").mkdir(parents=True)
    (tmp_path / f"tritium-overrides-{os.getpid()}-live").mkdir()  # a live process keeps its folder
    folder = OverrideDir.create("m", {"1/model.py": b""})
    assert not (tmp_path / f"tritium-overrides-{gone}-abc").exists()
    assert (tmp_path / f"tritium-overrides-{os.getpid()}-live").exists()
    assert os.path.dirname(folder.path).startswith(str(tmp_path))
    overrides.remove_all()
    assert not os.path.exists(folder.path)
