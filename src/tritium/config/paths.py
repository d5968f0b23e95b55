"""Every file or folder a model configuration names stays inside that model's folder.

A config names files in several places (``label_filename`` of outputs, ``default_model_filename`` and
``cc_model_filenames`` for the model file, warmup ``input_data_file``, sequence ``initial_state``
``data_file``, the Python backend's ``EXECUTION_ENV_PATH``), and the model file and version folders are
files the server opens too.  Whether the config comes from ``config.pbtxt`` or from a client's ``config``
override, each such path goes through :func:`inside_model_dir`: joined as Triton joins paths (a leading
``/`` is read relative to the folder, as ``JoinPath`` does), symlinks followed (``os.path.realpath``), and
refused unless it lands in the model folder (its real path, so a model folder that is itself a symlink
is fine).  A refused path fails the load naming the field; the message never shows a resolved path.

``EXECUTION_ENV_PATH`` is the one path Triton lets a config name outside the model folder: an operator's
``config.pbtxt`` may name an absolute path (a shared environment); ``$$TRITON_MODEL_DIRECTORY/...`` must
stay inside.  A client's config override may name only ``$$TRITON_MODEL_DIRECTORY/...`` inside the folder.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Sequence

from tritium._proto import model_config_pb2 as mc
from tritium.core.errors import ModelConfigError

#: Triton's folders, inside the model folder, of warmup data and sequence initial states.
WARMUP_DIR = "warmup"
INITIAL_STATE_DIR = "initial_state"
#: What ``EXECUTION_ENV_PATH`` may start with to name a path in the model folder.
MODEL_DIRECTORY = "$$TRITON_MODEL_DIRECTORY"
EXECUTION_ENV_PATH = "EXECUTION_ENV_PATH"
#: Backend parameters that name a file (OpenVINO's library of custom kernels): held inside the model folder like
#: every other path; backends read them through ``ModelContext.model_file``, joined the same way.
FILE_PARAMETERS = ("CPU_EXTENSION_PATH",)


def join(base: str, *parts: str) -> str:
    """``base`` and ``parts`` joined as Triton's ``JoinPath``: an absolute part is appended, not a new root."""
    path = base
    for part in parts:
        part = part.lstrip("/")
        if part:
            path = os.path.join(path, part)
    return path


def is_inside(model_dir: str, path: str) -> bool:
    """Whether ``path`` (symlinks followed) is ``model_dir`` or lies under it (symlinks followed too)."""
    root = os.path.realpath(model_dir)
    target = os.path.realpath(path)
    return target == root or target.startswith(root.rstrip(os.sep) + os.sep)


def inside_model_dir(model_dir: str, value: str, field: str, model: str, base: str = "") -> str:
    """The path ``value`` names under ``model_dir``/``base``; :class:`ModelConfigError` naming ``field``
    when it resolves outside ``model_dir``.

    The path returned is the joined one (not the resolved one), so the model sees the paths it expects.
    """
    path = join(model_dir, base, value)
    if not is_inside(model_dir, path):
        where = f"'{value}'" if value else "(empty)"
        raise ModelConfigError(f"model '{model}': {field} {where} leaves the model directory; every path a "
                               "model configuration names must stay inside the model's folder")
    return path


def relative_to_model(model_dir: str, path: str) -> str:
    """``path`` as error messages show it: relative to the model folder (never an absolute server path)."""
    if not model_dir:
        return os.path.basename(path)
    try:
        rel = os.path.relpath(path, model_dir)
    except ValueError:
        return os.path.basename(path)
    return os.path.basename(path) if rel.startswith("..") else rel


def relative_text(text: str, model_dir: str) -> str:
    """``text`` with paths in ``model_dir`` made relative to it: a failure's reason reaches clients, which
    must not read absolute paths of the server (the log keeps the folder)."""
    if not model_dir:
        return text
    for folder in {os.path.realpath(model_dir), os.path.abspath(model_dir)}:
        text = text.replace(folder.rstrip(os.sep) + os.sep, "")
    return text


_ABSOLUTE = re.compile(r"(?<![\w.])/[^\s\"',;:)\]]+")


def without_absolute_paths(text: str, model_dir: str) -> str:
    """``text`` (a library's error, e.g. onnxruntime's) with every absolute path shown relative to the model
    folder when inside it, else by its last component: such texts reach clients."""
    text = relative_text(text, model_dir)
    return _ABSOLUTE.sub(lambda m: relative_to_model(model_dir, m.group(0)), text)


def check_config_paths(config: mc.ModelConfig, model_dir: str, versions: Sequence[int], model: str,
                       from_client: bool) -> None:
    """Refuse a config that names a path outside ``model_dir`` (see the module's docstring), before
    anything of the model is read or run.  ``from_client``: the config is a repository-API override."""
    for path, field, base in _named_paths(config, versions):
        inside_model_dir(model_dir, path, field, model, base=base)
    if EXECUTION_ENV_PATH in config.parameters:
        execution_env_path(model_dir, config.parameters[EXECUTION_ENV_PATH].string_value, model, from_client)


def _named_paths(config: mc.ModelConfig, versions: Sequence[int]) -> Iterator[tuple[str, str, str]]:
    """Each path the config names, as (path, the field that names it, the folder it is relative to)."""
    for version in versions:
        # the version folder, and the model file in it (a symlink to elsewhere is refused like a config path)
        yield str(version), f"version folder {version}", ""
        if config.default_model_filename:
            yield config.default_model_filename, "default_model_filename", str(version)
        for key, filename in config.cc_model_filenames.items():
            yield filename, f"cc_model_filenames['{key}']", str(version)
    for output in config.output:
        if output.label_filename:
            yield output.label_filename, f"label_filename of output '{output.name}'", ""
    for sample in config.model_warmup:
        for name, spec in sample.inputs.items():
            if spec.WhichOneof("input_data_type") == "input_data_file":
                yield (spec.input_data_file, f"input_data_file of warmup sample '{sample.name}' input '{name}'",
                       WARMUP_DIR)
    for state in config.sequence_batching.state:
        for initial in state.initial_state:
            if initial.WhichOneof("state_data") == "data_file":
                yield initial.data_file, f"initial_state data_file of state '{state.input_name}'", INITIAL_STATE_DIR
    for key in FILE_PARAMETERS:
        if key in config.parameters and config.parameters[key].string_value.strip():
            yield config.parameters[key].string_value.strip(), f"parameter {key}", ""


def execution_env_path(model_dir: str, value: str, model: str, from_client: bool) -> str:
    """The environment ``EXECUTION_ENV_PATH`` names ('' for none), by the rules of the module's docstring."""
    if not value:
        return ""
    if value.startswith(MODEL_DIRECTORY):
        return inside_model_dir(model_dir, value[len(MODEL_DIRECTORY):], f"parameter {EXECUTION_ENV_PATH}", model)
    if from_client:
        raise ModelConfigError(
            f"model '{model}': parameter {EXECUTION_ENV_PATH} '{value}' of a config override must name a path "
            f"inside the model folder as '{MODEL_DIRECTORY}/...'")
    return value.replace(MODEL_DIRECTORY, model_dir)
