"""Triton's Python-based backends: ``<backend-directory>/<name>/model.py`` serves every model whose config
says ``backend: "<name>"``, through the Python backend's machinery (how Triton's vLLM backend ships).

As in Triton, the model's own folder stays its repository (``args['model_repository']``,
``args['model_version']``), the backend's folder is put on the model's ``sys.path`` and its ``model.py``
is imported as ``model``; ``--backend-config=python,...`` settings apply, and those of ``<name>`` over them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from .base import ALL_INSTANCE_KINDS, Backend, ModelContext, ModelState
from .python.backend import PythonBackend


class PythonBasedBackend(Backend):
    instance_kinds = ALL_INSTANCE_KINDS
    decoupled = True
    #: Read by the registry (not part of the public contract): such a model's config gets its runtime.
    python_based = True

    def __init__(self, folder: str) -> None:
        #: ``<backend-directory>/<name>``, holding the ``model.py`` every model of this backend runs.
        self.folder = folder
        self._python = PythonBackend()

    def initialize(self, backend_config: Mapping[str, str]) -> None:
        self._python.initialize(backend_config)

    def _context(self, ctx: ModelContext) -> ModelContext:
        return dataclasses.replace(ctx, runtime_dir=self.folder)

    def auto_complete_config(self, ctx: ModelContext) -> None:
        self._python.auto_complete_config(self._context(ctx))

    def model_initialize(self, ctx: ModelContext) -> ModelState:
        return self._python.model_initialize(self._context(ctx))

    def finalize(self) -> None:
        self._python.finalize()
