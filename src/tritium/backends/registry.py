"""Finding the backend a model names: built-ins, installed packages, and Triton's backend directory.

A name resolves, in this order, as Triton resolves a backend library and then a Python-based backend:

1. ``runtime: "model.py"`` in the config: the Python-based backend ``<backend-directory>/<name>/model.py``
   (Triton reads that runtime as "Python-based backend", whatever the name);
2. an entry point of the group ``tritium.backends`` (name = the config's ``backend``, value =
   ``module:Class``); tritium registers its own backends the same way, and :data:`BUILTIN` keeps them
   found where tritium's package metadata is not installed (a source checkout on ``PYTHONPATH``);
3. ``<backend-directory>/<name>/model.py``: a Python-based backend;
4. otherwise the model fails to load, with a reason that says where tritium looked.

Backends are imported lazily, so heavy frameworks load only when a model uses them.
"""

from __future__ import annotations

import importlib
import logging
import os
import threading
from collections.abc import Mapping
from importlib import metadata
from typing import Any

from tritium._proto import model_config_pb2 as mc
from tritium.core.errors import InvalidArgumentError, TritiumError, UnavailableError

from .base import Backend

log = logging.getLogger(__name__)

#: The entry-point group installed packages register backends under.
ENTRY_POINT_GROUP = "tritium.backends"
#: The distribution whose entry points are the built-in backends (they win a clash of names).
_OWN_DISTRIBUTION = "tritium"
#: Triton's runtime value that selects a Python-based backend.
PYTHON_RUNTIME = "model.py"

#: tritium's own backends, as pyproject.toml registers them: backend name -> "module:Class".
BUILTIN: dict[str, str] = {
    "onnxruntime": "tritium.backends.onnxruntime:OnnxRuntimeBackend",
    "pytorch": "tritium.backends.pytorch:PyTorchBackend",
    "python": "tritium.backends.python.backend:PythonBackend",
    "fil": "tritium.backends.fil:FilBackend",
    "openvino": "tritium.backends.openvino:OpenVinoBackend",
    "tensorflow": "tritium.backends.tensorflow:TensorFlowBackend",
}
#: backends Triton has that tritium does not serve, with the reason given to users.
_NOT_AVAILABLE: dict[str, str] = {
    "tensorrt": "tritium has no tensorrt backend (TensorRT plans need NVIDIA's runtime)",
}


def discover() -> dict[str, str]:
    """Backend name -> ``module:Class`` of every backend this installation can load (not imported yet).

    Raises :class:`UnavailableError` for a name that two installed packages other than tritium register
    with different targets: which one a config means cannot be told.
    """
    found: dict[str, str] = dict(BUILTIN)
    owners: dict[str, str] = {name: _OWN_DISTRIBUTION for name in BUILTIN}
    clashes: dict[str, set[str]] = {}
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = getattr(ep.dist, "name", None) or "?"  # EntryPoint.dist is None for some finders
        if dist == _OWN_DISTRIBUTION:
            found[ep.name] = ep.value
            continue
        if ep.name in BUILTIN or owners.get(ep.name) == _OWN_DISTRIBUTION:
            log.warning("package '%s' registers backend '%s', which is tritium's own: ignored", dist, ep.name)
            continue
        previous = found.get(ep.name)
        if previous is not None and previous != ep.value:
            clashes.setdefault(ep.name, {f"{owners[ep.name]} ({previous})"}).add(f"{dist} ({ep.value})")
            continue
        found[ep.name] = ep.value
        owners[ep.name] = dist
    for name, who in clashes.items():
        found[name] = "!" + f"backend '{name}' is registered by several packages: {', '.join(sorted(who))}"
    return found


def _python_based_dir(directory: str | None, name: str) -> str | None:
    """``<directory>/<name>`` when it holds a ``model.py``; the name must be one plain folder name."""
    if not directory or not name or name in (".", "..") or "/" in name or os.sep in name or "\0" in name:
        return None
    folder = os.path.join(directory, name)
    return folder if os.path.isfile(os.path.join(folder, PYTHON_RUNTIME)) else None


class BackendRegistry:
    """Creates and initializes each backend once, on first use; finalizes them at shutdown."""

    def __init__(self, backend_config: Mapping[str, Mapping[str, str]] | None = None,
                 backend_directory: str | None = None) -> None:
        self._config = backend_config or {}
        self._directory = os.path.abspath(backend_directory) if backend_directory else None
        self._loaded: dict[str, Backend] = {}
        self._lock = threading.Lock()

    def settings(self, name: str, *more: str) -> dict[str, str]:
        """``--backend-config`` settings for backend ``name``: the global ones (no backend named), then
        those of each of ``more``, then ``name``'s own, each overriding the ones before."""
        settings = dict(self._config.get("*", {}))
        for key in (*more, name):
            settings.update(self._config.get(key, {}))
        return settings

    def get(self, name: str, runtime: str = "") -> Backend:
        """The initialized backend a config's ``backend`` and ``runtime`` name; raises a TritiumError with
        the reason (which fails only the model being loaded)."""
        python_based = runtime == PYTHON_RUNTIME
        key = f"{name}\0{PYTHON_RUNTIME}" if python_based else name
        with self._lock:
            backend = self._loaded.get(key)
            if backend is not None:
                return backend
            if python_based:
                backend = self._python_based(name, required=True)
            else:
                target = discover().get(name)
                if target is not None:
                    backend = self._entry_point(name, target)
                else:
                    backend = self._python_based(name, required=False)
            self._loaded[key] = backend
            return backend

    def _entry_point(self, name: str, target: str) -> Backend:
        if target.startswith("!"):
            raise UnavailableError(target[1:])
        module_name, _, attribute = target.partition(":")
        try:
            obj: Any = importlib.import_module(module_name)
            for part in attribute.split(".") if attribute else ():
                obj = getattr(obj, part)
        except ImportError as e:
            raise UnavailableError(f"backend '{name}' cannot be imported: {e}") from None
        except AttributeError as e:
            raise UnavailableError(f"backend '{name}' ({target}) cannot be found: {e}") from None
        try:
            backend = obj()
        except Exception as e:
            raise UnavailableError(f"backend '{name}' ({target}) failed to start: {type(e).__name__}: {e}") from None
        if not isinstance(backend, Backend):
            raise UnavailableError(f"backend '{name}' ({target}) is not a tritium.backends.Backend")
        return self._initialize(name, backend, self.settings(name))

    def _python_based(self, name: str, required: bool) -> Backend:
        folder = _python_based_dir(self._directory, name)
        if folder is None:
            if required:
                where = (f"'{os.path.join(self._directory, name)}'" if self._directory
                         else "a backend directory (none is set: --backend-directory)")
                raise InvalidArgumentError(f"unable to find Python-based backend runtime '{PYTHON_RUNTIME}' for "
                                           f"backend '{name}' in {where}")
            reason = _NOT_AVAILABLE.get(name)
            if reason is not None:
                raise UnavailableError(reason)
            looked = (f", and there is no {os.path.join(self._directory, name, PYTHON_RUNTIME)}" if self._directory
                      else " (no --backend-directory for Python-based backends)")
            # Triton: INVALID_ARG "unable to find backend library for backend '<name>'"
            raise InvalidArgumentError(f"unable to find backend '{name}': it is not built in, no installed package "
                                       f"registers it (entry point group '{ENTRY_POINT_GROUP}'){looked}")
        from .python_based import PythonBasedBackend

        return self._initialize(name, PythonBasedBackend(folder), self.settings(name, "python"))

    @staticmethod
    def _initialize(name: str, backend: Backend, settings: dict[str, str]) -> Backend:
        backend.name = name
        try:
            backend.initialize(settings)
        except TritiumError:
            raise
        except Exception as e:
            raise UnavailableError(f"backend '{name}' failed to initialize: {type(e).__name__}: {e}") from None
        return backend

    def finalize(self) -> None:
        with self._lock:
            for name, backend in self._loaded.items():
                try:
                    backend.finalize()
                except Exception:
                    log.exception("backend %s failed to finalize", name.replace("\0", " "))
            self._loaded.clear()


def check_model(backend: Backend, config: mc.ModelConfig, name: str) -> None:
    """Refuse, before the backend sees it, a model that asks for what its backend does not declare; a
    model of a Python-based backend gets ``runtime: "model.py"`` in its config, as Triton fills it in."""
    if getattr(backend, "python_based", False) and not config.runtime:
        config.runtime = PYTHON_RUNTIME
    if config.model_transaction_policy.decoupled and not backend.decoupled:
        raise UnavailableError(f"model '{name}': backend '{backend.name}' does not serve decoupled models")
    for group in config.instance_group:
        kind = mc.ModelInstanceGroup.Kind.Name(group.kind)
        if kind not in backend.instance_kinds:
            kinds = ", ".join(sorted(backend.instance_kinds)) or "none"
            raise InvalidArgumentError(f"model '{name}': instance group '{group.name}' has kind {kind}, which "
                                       f"backend '{backend.name}' does not support (it supports {kinds})")
