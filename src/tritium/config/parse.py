"""Reading ``config.pbtxt`` and writing the config back out as Triton's JSON.

The config is a real ``inference.ModelConfig`` protobuf message, parsed with
protobuf's text format, so field names, numbers and enums are Triton's.
"""

from __future__ import annotations

import os
from typing import Any

from google.protobuf import json_format, text_format

from tritium._proto import model_config_pb2 as mc
from tritium.core.errors import ModelConfigError

from .paths import is_inside

ModelConfig = mc.ModelConfig

CONFIG_FILENAME = "config.pbtxt"


def config_path(model_dir: str, config_name: str | None = None) -> str:
    """Path of the config file: ``configs/<name>.pbtxt`` when it exists, else ``config.pbtxt``."""
    if config_name:
        custom = os.path.join(model_dir, "configs", config_name + ".pbtxt")
        if os.path.isfile(custom):
            return custom
    return os.path.join(model_dir, CONFIG_FILENAME)


def load_config_file(path: str, model_name: str, shown: str | None = None) -> ModelConfig | None:
    """Parse one ``config.pbtxt``; ``None`` when the file does not exist.

    Raises :class:`ModelConfigError` naming the model, the file (as ``shown``, by default ``path``) and the line.
    """
    shown = path if shown is None else shown
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) else str(e)  # an OSError's text has the full path
        raise ModelConfigError(
            f"failed to read model configuration {shown} for model '{model_name}': {reason}"
        ) from None
    return parse_config_text(text, model_name, shown)


def read_model_config(model_dir: str, config_name: str | None, model_name: str) -> ModelConfig | None:
    """The config file of the model in ``model_dir`` (``None`` when there is none), named in errors relative
    to the model folder; a config file that resolves outside the folder (a symlink) is refused."""
    path = config_path(model_dir, config_name)
    shown = os.path.relpath(path, model_dir)
    if os.path.lexists(path) and not is_inside(model_dir, path):
        raise ModelConfigError(f"model '{model_name}': the model configuration {shown} leaves the model directory; "
                               "every file of a model must stay inside the model's folder")
    return load_config_file(path, model_name, shown)


def parse_config_text(text: str, model_name: str, source: str = CONFIG_FILENAME) -> ModelConfig:
    config = ModelConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as e:
        raise ModelConfigError(
            f"failed to parse model configuration {source} for model '{model_name}': line {e}"
        ) from None
    except ValueError as e:  # protobuf's text parser lets some through, e.g. an enum number beyond 32 bits
        raise ModelConfigError(f"failed to parse model configuration {source} for model '{model_name}': {e}") from None
    check_config_values(config, model_name)
    return config


def config_from_json(text: str | bytes, model_name: str) -> ModelConfig:
    """A config given as JSON (e.g. the ``config`` parameter of a repository load)."""
    config = ModelConfig()
    try:
        json_format.Parse(text, config)
    except (json_format.ParseError, ValueError) as e:  # ValueError: bytes that are not UTF-8
        raise ModelConfigError(f"failed to parse JSON model configuration for model '{model_name}': {e}") from None
    check_config_values(config, model_name)
    return config


def check_config_values(config: ModelConfig, model_name: str) -> None:
    """Refuse enum fields holding a number their enum does not name, and text holding a NUL character.

    The config's enums are open (proto3): both text and JSON parsers accept any number (``data_type: 77``,
    ``"kind": 2147483647``), which later code could not name or map to a type.  A NUL can be no part of a
    file name (``label_filename``, ``input_data_file``...) nor of any name Triton compares.
    """
    where = _bad_value(config, "")
    if where is not None:
        field, value = where
        if isinstance(value, str):
            raise ModelConfigError(f"model '{model_name}': '{field}' holds a NUL character")
        raise ModelConfigError(f"model '{model_name}': '{field}' has the value {value}, which its enum does not name")


def _bad_scalar(fd: Any, values: Any) -> int | str | None:
    """The first of ``values`` (of field ``fd``) that is an unnamed enum number or a string with a NUL."""
    if fd.type == fd.TYPE_ENUM:
        known = fd.enum_type.values_by_number
        return next((v for v in values if v not in known), None)
    if fd.type == fd.TYPE_STRING:
        return next((v for v in values if "\0" in v), None)
    return None


def _bad_value(message: Any, path: str) -> tuple[str, int | str] | None:
    """The first enum number without a name or string with a NUL in ``message``: (field path, value)."""
    for fd, value in message.ListFields():
        name = f"{path}.{fd.name}" if path else fd.name
        if fd.message_type is None:
            bad = _bad_scalar(fd, value if _is_repeated(fd) else (value,))
            if bad is not None:
                return name, bad
            continue
        if fd.message_type.GetOptions().map_entry:
            if any(isinstance(k, str) and "\0" in k for k in value):
                return f"{name} (a key)", "\0"
            value_fd = fd.message_type.fields_by_name["value"]
            if value_fd.message_type is None:
                for k, v in value.items():
                    if _bad_scalar(value_fd, (v,)) is not None:
                        return f"{name}[{k!r}]", v
                continue
            items = [(f"{name}[{k!r}]", v) for k, v in value.items()]
        elif _is_repeated(fd):
            items = [(f"{name}[{i}]", v) for i, v in enumerate(value)]
        else:
            items = [(name, value)]
        for sub_path, sub in items:
            found = _bad_value(sub, sub_path)
            if found is not None:
                return found
    return None


def config_to_dict(config: ModelConfig) -> dict[str, Any]:
    """The config as Triton's JSON: proto field names, every field present, 64-bit ints as numbers."""
    result = json_format.MessageToDict(
        config,
        preserving_proto_field_name=True,
        always_print_fields_with_no_presence=True,
    )
    _ints_as_numbers(config, result)
    return result


def _ints_as_numbers(message: Any, out: dict[str, Any]) -> None:
    """Turn protobuf-JSON's string-encoded 64-bit integers back into numbers, recursively."""
    for fd in message.DESCRIPTOR.fields:
        name = fd.name
        if name not in out:
            continue
        value = out[name]
        if fd.message_type is not None:
            if fd.message_type.GetOptions().map_entry:
                value_fd = fd.message_type.fields_by_name["value"]
                key_fd = fd.message_type.fields_by_name["key"]
                src = getattr(message, name)
                if value_fd.message_type is not None:
                    for key, sub in src.items():
                        json_key = str(key).lower() if key_fd.type == key_fd.TYPE_BOOL else str(key)
                        if json_key in value:
                            _ints_as_numbers(sub, value[json_key])
                elif value_fd.type in _WIDE_INT_TYPES:
                    out[name] = {k: int(v) for k, v in value.items()}
            elif _is_repeated(fd):
                for sub, sub_out in zip(getattr(message, name), value, strict=True):  # value is this message's JSON
                    _ints_as_numbers(sub, sub_out)
            else:
                _ints_as_numbers(getattr(message, name), value)
        elif fd.type in _WIDE_INT_TYPES:
            out[name] = [int(v) for v in value] if _is_repeated(fd) else int(value)


def _is_repeated(fd: Any) -> bool:
    # ``label`` is deprecated in newer protobuf releases, which offer ``is_repeated`` instead.
    is_repeated = getattr(fd, "is_repeated", None)
    return bool(is_repeated) if is_repeated is not None else fd.label == fd.LABEL_REPEATED


_FD = mc.ModelConfig.DESCRIPTOR.fields_by_name["max_batch_size"]
_WIDE_INT_TYPES = frozenset({_FD.TYPE_INT64, _FD.TYPE_UINT64, _FD.TYPE_SINT64, _FD.TYPE_FIXED64, _FD.TYPE_SFIXED64})
