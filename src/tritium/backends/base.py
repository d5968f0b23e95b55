"""The backend API, shaped after Triton's ``TRITONBACKEND_*`` lifecycle.

    Backend.initialize()                      once per backend kind
      Backend.auto_complete_config(ctx)       fill inputs/outputs/batching from the model file
      Backend.model_initialize(ctx) -> ModelState          once per model version
        ModelState.instance_initialize(spec) -> ModelInstanceState   once per instance
          ModelInstanceState.execute(requests) -> responses  many times, on the instance's worker
        ModelInstanceState.finalize()
      ModelState.finalize()
    Backend.finalize()

A backend sees :class:`~tritium.core.inference.InferenceRequest` objects with
numpy tensors, never HTTP, gRPC or JSON.  ``execute`` runs on the instance's own
worker thread, so it may block (frameworks release the GIL while they compute).
"""

from __future__ import annotations

import asyncio
import os
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from tritium._proto import model_config_pb2 as mc
from tritium.config.paths import join, relative_to_model
from tritium.core.custom_metrics import CustomMetrics
from tritium.core.errors import TritiumError
from tritium.core.inference import InferenceRequest, InferenceResponse
from tritium.core.streaming import StreamItem


class InferenceHandle(Protocol):
    """Runs requests on the models of this server (the Python backend's BLS), without any wire format."""

    #: The loop the coroutines below must run on.
    loop: asyncio.AbstractEventLoop

    async def infer(self, request: InferenceRequest) -> InferenceResponse: ...

    def stream(self, request: InferenceRequest) -> AsyncIterator[StreamItem]: ...

    #: Metric families that model code defines (shown on the metrics endpoint).
    metrics: CustomMetrics

    async def load_model(self, name: str, parameters: dict[str, Any]) -> None:
        """Load or reload a model (Triton's load parameters: ``config``, ``file:<path>``); explicit mode only."""

    async def unload_model(self, name: str, unload_dependents: bool = False) -> None: ...

    def model_ready(self, name: str, version: int = -1) -> bool: ...


@dataclass(frozen=True, slots=True)
class ModelContext:
    """What a backend needs to know to load one version of one model."""

    name: str
    version: int
    model_dir: str
    config: mc.ModelConfig
    #: Backend settings from ``--backend-config <backend>,<key>=<value>``.
    backend_config: Mapping[str, str] = field(default_factory=dict)
    #: Calls into the server's models; ``None`` where the server offers none (e.g. in unit tests).
    inference: InferenceHandle | None = None
    #: The folder of a Python-based backend (``<backend-directory>/<name>``) whose ``model.py`` serves this
    #: model in place of a file of its own; ``None`` for every other model.
    runtime_dir: str | None = None
    #: The config is a client's repository-API override: paths it names may only lie in the model folder.
    config_from_client: bool = False

    @property
    def version_dir(self) -> str:
        return os.path.join(self.model_dir, str(self.version))

    @property
    def model_path(self) -> str:
        """The model file (or directory) of this version, per ``default_model_filename``, joined as Triton
        joins it (a leading ``/`` stays in the version folder; the server checked it stays in the model folder);
        for a Python-based backend, its ``model.py``."""
        if self.runtime_dir is not None:
            return os.path.join(self.runtime_dir, "model.py")
        return join(self.version_dir, self.config.default_model_filename)

    def model_file(self, name: str) -> str:
        """A file a config parameter names, joined to the model folder as Triton joins paths (a leading ``/``
        stays in the folder); the server checked it stays there for the parameters it knows (``FILE_PARAMETERS``)."""
        return join(self.model_dir, name)

    def shown(self, path: str) -> str:
        """``path`` as errors show it to clients: relative to the model folder, never the server's absolute path."""
        return relative_to_model(self.model_dir, path)

    @property
    def import_dir(self) -> str:
        """The folder a Python model's own modules are imported from (Triton: the version folder, or the
        Python-based backend's folder)."""
        return self.runtime_dir if self.runtime_dir is not None else self.version_dir

    def parameter(self, key: str, default: str | None = None) -> str | None:
        """A ``parameters { key: ... value: { string_value: ... } }`` entry of the config."""
        if key in self.config.parameters:
            return self.config.parameters[key].string_value
        return default


@dataclass(frozen=True, slots=True)
class InstanceSpec:
    """One instance of a model, as ``instance_group`` asks for it."""

    name: str
    kind: str  # "KIND_CPU", "KIND_GPU" or "KIND_MODEL"
    device_id: int
    group: mc.ModelInstanceGroup


#: What :meth:`ModelInstanceState.execute_async` calls, on the event loop, when a batch is done: one
#: response (or error) per request in order, or ``None`` and the error that failed the whole batch.
ExecuteDone = Callable[["list[InferenceResponse | TritiumError] | None", "TritiumError | None"], None]


class ModelInstanceState(ABC):
    """One executing copy of a model (Triton's model instance).

    What an instance declares is read once, when the scheduler builds the instance's worker, so a
    declaration costs nothing per request: set these as class attributes (or in ``__init__``), not later.
    """

    #: False when ``execute`` waits on something the event loop must serve (a BLS call back into the
    #: server): the worker then never runs it inline on the loop.  True lets the worker run a batch on
    #: the event loop itself while executions of this instance stay shorter than about 150 µs.
    may_run_inline: bool = True

    #: True when the instance implements :meth:`execute_async`: batches are then handed to it on the event
    #: loop, without a thread hop, and :meth:`execute` runs only when ``execute_async`` declines one.
    executes_async: ClassVar[bool] = False

    #: Execution timing stamps (``time.monotonic_ns()``) an instance may set during each ``execute``:
    #: when its inputs were ready (compute input end) and when inference ended (compute output start).
    #: Statistics and traces then split an execution into Triton's input / infer / output phases;
    #: left at 0 (or stale from an earlier execution), the whole execution counts as infer.
    input_end_ns: int = 0
    infer_end_ns: int = 0

    def __init__(self, spec: InstanceSpec) -> None:
        self.spec = spec

    @abstractmethod
    def execute(self, requests: Sequence[InferenceRequest]) -> list[InferenceResponse | TritiumError]:
        """Run a batch of requests; one response per request, in order.

        A :class:`~tritium.core.errors.TritiumError` in place of a response fails only that request.
        May raise a :class:`~tritium.core.errors.TritiumError`, which fails every
        request of the batch with that error.
        """

    def execute_async(self, requests: Sequence[InferenceRequest], loop: asyncio.AbstractEventLoop,
                      done: ExecuteDone) -> bool:
        """Start a batch without blocking, on the event loop ``loop``; only called when ``executes_async``.

        Call ``done(responses, error)`` on ``loop`` when the batch is done (possibly before returning).
        Return False, having done nothing, to have :meth:`execute` run this batch on the instance's
        thread instead (e.g. while a process the instance needs is being started).
        """
        return False

    def finalize(self) -> None:  # noqa: B027 (optional hook: doing nothing is the default)
        """Release what the instance holds."""


class ModelState(ABC):
    """State shared by the instances of one model version (config, shared weights)."""

    def __init__(self, ctx: ModelContext) -> None:
        self.ctx = ctx

    @abstractmethod
    def instance_initialize(self, spec: InstanceSpec) -> ModelInstanceState:
        """Create one instance; raise a TritiumError to fail the model's load."""

    def finalize(self) -> None:  # noqa: B027 (optional hook: doing nothing is the default)
        """Release what the model holds after all its instances are finalized."""


#: Every instance kind of ``instance_group`` (``KIND_AUTO`` is resolved to one of them before a load).
ALL_INSTANCE_KINDS: frozenset[str] = frozenset({"KIND_CPU", "KIND_GPU", "KIND_MODEL"})


class Backend(ABC):
    """A kind of backend (onnxruntime, pytorch, python, ...); one object per server.

    The registry makes it with no arguments, then calls :meth:`initialize` once with its
    ``--backend-config`` settings before the first model that names it loads.
    """

    #: The name configs use in ``backend: "..."`` (set by the registry to the name it was found under).
    name: str = ""

    #: The ``instance_group`` kinds this backend can place instances on; a model asking for another kind
    #: fails to load with a reason naming both, before ``model_initialize`` runs.  CPU only unless a
    #: backend says more: a backend that knows nothing of GPUs must not pretend to run on one.
    instance_kinds: frozenset[str] = frozenset({"KIND_CPU"})

    #: Whether models with ``model_transaction_policy { decoupled: true }`` may use this backend (their
    #: requests get any number of responses through ``request.response_stream``); others are refused.
    decoupled: bool = False

    def initialize(self, backend_config: Mapping[str, str]) -> None:  # noqa: B027 (optional hook: doing nothing is the default)
        """Called once before the first model of this backend loads."""

    def auto_complete_config(self, ctx: ModelContext) -> None:  # noqa: B027 (optional hook: doing nothing is the default)
        """Fill missing inputs, outputs, ``max_batch_size`` and batching from the model file.

        Only called when auto-complete is on; changes ``ctx.config`` in place.
        """

    def default_instance_count(self, kind: str) -> int:
        """Instances per group when ``count`` is not given (Triton: 2 for ONNX Runtime on CPU)."""
        return 1

    @abstractmethod
    def model_initialize(self, ctx: ModelContext) -> ModelState:
        """Load one version of a model; raise a TritiumError to fail the load with a reason."""

    def finalize(self) -> None:  # noqa: B027 (optional hook: doing nothing is the default)
        """Called once at server shutdown."""

