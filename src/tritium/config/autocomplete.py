"""Filling in what a config leaves out, as Triton does before a backend sees it.

Two layers: :func:`fill_backend_fields` picks ``backend``/``platform``/
``default_model_filename`` from the files of the model (Triton's
``AutoCompleteBackendFields``); framework backends then complete inputs,
outputs and batching from the model file themselves
(:meth:`tritium.backends.base.Backend.auto_complete_config`).
"""

from __future__ import annotations

import os

from tritium._proto import model_config_pb2 as mc

# backend name -> (platform, default model file), in the order Triton probes them.
_DEFAULT_FILES: tuple[tuple[str, str, str], ...] = (
    ("tensorflow", "tensorflow_savedmodel", "model.savedmodel"),
    ("tensorflow", "tensorflow_graphdef", "model.graphdef"),
    ("tensorrt", "tensorrt_plan", "model.plan"),
    ("onnxruntime", "onnxruntime_onnx", "model.onnx"),
    ("openvino", "", "model.xml"),
    ("pytorch", "pytorch_libtorch", "model.pt"),
    ("python", "", "model.py"),
)
_PLATFORM_TO_BACKEND = {
    "tensorflow_savedmodel": "tensorflow",
    "tensorflow_graphdef": "tensorflow",
    "tensorrt_plan": "tensorrt",
    "onnxruntime_onnx": "onnxruntime",
    "pytorch_libtorch": "pytorch",
    "libtorch": "pytorch",
    "torch_aoti": "pytorch",
}
_BACKEND_DEFAULTS = {backend: (platform, filename) for backend, platform, filename in _DEFAULT_FILES}
_BACKEND_DEFAULTS["tensorflow"] = ("tensorflow_savedmodel", "model.savedmodel")
# Platforms whose model file differs from their backend's default one.
_PLATFORM_FILES = {"tensorflow_graphdef": "model.graphdef", "torch_aoti": "model.pt2"}


def version_dirs(model_dir: str) -> list[int]:
    """Numeric version sub-directories, sorted; anything else is ignored as in Triton."""
    versions = []
    try:
        entries = os.listdir(model_dir)
    except OSError:
        return []
    for entry in entries:
        if entry.isdigit() and os.path.isdir(os.path.join(model_dir, entry)):
            versions.append(int(entry))
    return sorted(versions)


def fill_backend_fields(config: mc.ModelConfig, model_dir: str) -> None:
    """Set ``backend``, ``platform`` and ``default_model_filename`` where the config leaves them out."""
    if config.platform == "ensemble":
        return
    if not config.backend and config.platform in _PLATFORM_TO_BACKEND:
        config.backend = _PLATFORM_TO_BACKEND[config.platform]
    if not config.backend and not config.platform:
        found = _probe_files(config, model_dir)
        if found is None:
            # A directory named "<model>.<backend>" names a custom backend.
            base = os.path.basename(os.path.normpath(model_dir))
            if "." in base:
                config.backend = base.rsplit(".", 1)[1]
            return
        config.backend, config.platform = found[0], found[1]
    defaults = _BACKEND_DEFAULTS.get(config.backend)
    if defaults is None:
        return
    if not config.platform and defaults[0] and config.backend not in ("tensorflow",):
        config.platform = defaults[0]
    if not config.default_model_filename:
        config.default_model_filename = _PLATFORM_FILES.get(config.platform, defaults[1])


def _probe_files(config: mc.ModelConfig, model_dir: str) -> tuple[str, str] | None:
    versions = version_dirs(model_dir)
    if not versions:
        return None
    first = os.path.join(model_dir, str(versions[0]))
    for backend, platform, filename in _DEFAULT_FILES:
        name = config.default_model_filename or filename
        if name != filename and config.default_model_filename:
            # A custom file name tells nothing about the framework unless its suffix does.
            if not name.endswith(os.path.splitext(filename)[1]):
                continue
        if os.path.exists(os.path.join(first, name)):
            return backend, platform
    return None
