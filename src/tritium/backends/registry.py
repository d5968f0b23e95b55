"""Finding the backend a model names, imported lazily so heavy frameworks load only when used."""

from __future__ import annotations

import importlib
import logging
import threading
from collections.abc import Mapping

from tritium.core.errors import TritiumError, UnavailableError

from .base import Backend

log = logging.getLogger(__name__)

#: backend name -> "module:Class"
_BACKENDS: dict[str, str] = {
    "onnxruntime": "tritium.backends.onnxruntime:OnnxRuntimeBackend",
    "pytorch": "tritium.backends.pytorch:PyTorchBackend",
    "python": "tritium.backends.python.backend:PythonBackend",
}
#: backends Triton has that tritium does not serve (yet), with the reason given to users.
_NOT_AVAILABLE: dict[str, str] = {
    "tensorflow": "tritium has no tensorflow backend",
    "tensorrt": "tritium has no tensorrt backend (TensorRT plans need NVIDIA's runtime)",
    "openvino": "tritium has no openvino backend yet",
    "fil": "tritium has no fil backend yet",
}


class BackendRegistry:
    """Creates and initializes each backend once, on first use; finalizes them at shutdown."""

    def __init__(self, backend_config: Mapping[str, Mapping[str, str]] | None = None) -> None:
        self._config = backend_config or {}
        self._loaded: dict[str, Backend] = {}
        self._lock = threading.Lock()

    def get(self, name: str) -> Backend:
        with self._lock:
            backend = self._loaded.get(name)
            if backend is not None:
                return backend
            target = _BACKENDS.get(name)
            if target is None:
                reason = _NOT_AVAILABLE.get(name, f"unable to find backend '{name}'")
                raise UnavailableError(reason)
            module_name, class_name = target.split(":")
            try:
                cls = getattr(importlib.import_module(module_name), class_name)
            except ImportError as e:
                raise UnavailableError(f"backend '{name}' cannot be imported: {e}") from None
            backend = cls()
            settings = dict(self._config.get("*", {}))
            settings.update(self._config.get(name, {}))
            try:
                backend.initialize(settings)
            except TritiumError:
                raise
            except Exception as e:
                raise UnavailableError(f"backend '{name}' failed to initialize: {e}") from None
            self._loaded[name] = backend
            return backend

    def finalize(self) -> None:
        with self._lock:
            for name, backend in self._loaded.items():
                try:
                    backend.finalize()
                except Exception:
                    log.exception("backend %s failed to finalize", name)
            self._loaded.clear()
