"""Triton's Python backend, server side: one stub process per model instance, tensors through shared memory.

The package's modules, in the order a model meets them: :mod:`.settings` (``--backend-config`` values),
:mod:`.launcher` (auto-complete in a throw-away stub; starting a stub and its sockets),
:mod:`.instance` (lifecycle, restart after a crash, the execute path), :mod:`.events` (what a stub sends
at any time: decoupled responses, calls, metrics, logs), :mod:`.bls`; :mod:`.messages` and
:mod:`.protocol` are what crosses between the processes, :mod:`.stub` and :mod:`.pb_utils` run in the
model's process.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

from tritium.config.parse import config_to_dict
from tritium.core.errors import ModelConfigError

from ..base import ALL_INSTANCE_KINDS, Backend, InstanceSpec, ModelContext, ModelInstanceState, ModelState
from . import launcher
from .environments import Environments
from .instance import PythonInstanceState
from .settings import DEFAULT_REPLY_SPIN_US, DEFAULT_STUB_SPIN_US, Settings


class PythonBackend(Backend):
    name = "python"
    #: Triton's Python backend takes every kind and leaves devices to the model code.
    instance_kinds = ALL_INSTANCE_KINDS
    decoupled = True

    def __init__(self) -> None:
        self.settings = Settings({})
        self.environments = Environments()

    def initialize(self, backend_config: Mapping[str, str]) -> None:
        self.settings = Settings(backend_config)

    def finalize(self) -> None:
        self.environments.close()

    def interpreter(self, ctx: ModelContext) -> str:
        """The Python that runs the model's processes: the server's own, or the one of ``EXECUTION_ENV_PATH``."""
        return self.environments.interpreter(ctx.name, ctx.model_dir, ctx.parameter("EXECUTION_ENV_PATH"),
                                             ctx.config_from_client)

    def auto_complete_config(self, ctx: ModelContext) -> None:
        """Run the model's static ``auto_complete_config`` in a throw-away stub, as Triton does."""
        launcher.run_auto_complete(self.interpreter(ctx), ctx)

    def model_initialize(self, ctx: ModelContext) -> ModelState:
        if not os.path.exists(ctx.model_path):
            raise ModelConfigError(f"Failed to preinitialize Python stub: Python model file not found in "
                                   f"'{os.path.relpath(ctx.model_path, ctx.model_dir)}'")
        return PythonModelState(ctx, self.settings, self.interpreter(ctx))


class PythonModelState(ModelState):
    def __init__(self, ctx: ModelContext, settings: Settings, python: str) -> None:
        super().__init__(ctx)
        self.settings = settings
        self.python = python
        self.config_json = json.dumps(config_to_dict(ctx.config))
        self.decoupled = ctx.config.model_transaction_policy.decoupled

    def instance_initialize(self, spec: InstanceSpec) -> ModelInstanceState:
        instance = PythonInstanceState(spec, self)
        instance.start()
        return instance


__all__ = ["PythonBackend", "PythonModelState", "PythonInstanceState", "Settings", "DEFAULT_STUB_SPIN_US",
           "DEFAULT_REPLY_SPIN_US"]
