"""The server core: repository, backends, tracer and shared memory wired from :class:`ServerOptions`,
and the one implementation of :class:`tritium.api.InferenceAPI` that every frontend uses.

Which frontends listen, and the process around them, is :mod:`tritium.app`'s business.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable
from typing import Any, cast

from tritium import __version__
from tritium.backends.registry import BackendRegistry
from tritium.core.custom_metrics import CustomMetrics
from tritium.core.errors import (
    STATUS_TEXT,
    InternalError,
    InvalidArgumentError,
    TritiumError,
    UnavailableError,
    UnsupportedError,
)
from tritium.core.inference import InferenceRequest, InferenceResponse
from tritium.core.model import Model
from tritium.core.names import check_model_name
from tritium.core.response_cache import ResponseCache, open_cache
from tritium.core.shm_regions import Region, SystemSharedMemory, cuda_register, cuda_status
from tritium.core.streaming import StreamItem
from tritium.logsettings import LogManager, configure_logging
from tritium.options import ServerOptions
from tritium.repository.manager import ModelRepositoryManager
from tritium.repository.poller import RepositoryPoller
from tritium.statistics import model_stats_dict
from tritium.trace import Trace, TraceConfig, TraceManager

log = logging.getLogger(__name__)

_Items = AsyncGenerator[StreamItem, None]

#: Triton version reported in server metadata; clients gate features on it.
TRITON_VERSION = "2.64.0"

#: Extensions that work in this build, in Triton's order.
EXTENSIONS = [
    "classification",
    "sequence",
    "model_repository",
    "model_repository(unload_dependents)",
    "schedule_policy",
    "model_configuration",
    "system_shared_memory",
    "binary_tensor_data",
    "parameters",
    "statistics",
    "trace",
    "logging",
]


class Server:
    """One tritium server: the core every frontend reaches through :class:`~tritium.api.InferenceAPI`."""

    def __init__(self, options: ServerOptions, logs: LogManager | None = None) -> None:
        self.options = options
        #: Log settings of the logging extension; made on first use when the caller did not set them up.
        self._logs = logs
        #: The trace extension.
        self.tracer = TraceManager(TraceConfig.parse(options.trace_config))
        self.backends = BackendRegistry(options.backend_config, options.backend_directory)
        self.custom_metrics = CustomMetrics()
        self.system_shm = SystemSharedMemory(options.allow_client_shm)
        self.repository: ModelRepositoryManager | None = None
        #: The response cache of ``--cache-config`` (made by :meth:`start`; ``None`` without one).
        self.response_cache: ResponseCache | None = None
        self._live = False
        self._started = False
        self._poller: RepositoryPoller | None = None

    # -- lifecycle ----------------------------------------------------------------------------------

    async def start(self) -> None:
        """Load the startup models (the server is live from here, ready once :meth:`open` is called).

        Raises :class:`StartupError` when a model fails and ``--exit-on-error`` is on.
        """
        self.tracer.open()
        try:
            self.response_cache = await open_cache(self.options.cache_config)
        except TritiumError as e:  # Triton's words: "Failed to initialize LocalCache: ...", an unreachable Redis
            raise StartupError(f"creating server: {STATUS_TEXT[e.status]} - {e.message}") from None
        self.repository = ModelRepositoryManager(self.options, self.backends)
        self.repository.inference = LocalInference(self, asyncio.get_running_loop())
        self.repository.response_cache = self.response_cache
        self._live = True
        if self.options.model_control_mode == "poll":
            self._poller = RepositoryPoller(self.repository, self.options.repository_poll_secs)
            await self._poller.prime()
        failed = await self.repository.load_startup_models()
        if failed and self.options.exit_on_error:
            raise StartupError(f"failed to load all models: {', '.join(failed)}")

    def open(self) -> None:
        """The endpoints are listening: report ready and start polling the repositories (poll mode)."""
        self._started = True
        if self._poller is not None and self.options.repository_poll_secs > 0:
            self._poller.start()

    async def poll_repository(self) -> None:
        """One rescan of the repositories, now (poll mode; Triton's ``TRITONSERVER_ServerPollModelRepository``):
        with ``repository_poll_secs`` 0 an embedding program polls only when it calls this."""
        if self._poller is None:
            raise UnavailableError("polling the model repository is only allowed in POLL mode")
        await self._poller.poll()

    async def quiesce(self) -> None:
        """Stop reporting ready and stop polling, before the endpoints close."""
        self._started = False
        if self._poller is not None:
            await self._poller.stop()

    async def stop(self) -> None:
        """Unload every model (each drains its in-flight requests, up to --exit-timeout-secs)."""
        await self.quiesce()
        if self.repository is not None:
            await self.repository.unload_all()
        if self.response_cache is not None:
            await self.response_cache.close()
        self.backends.finalize()
        self.tracer.close()
        self._live = False

    # -- the API frontends call -----------------------------------------------------------------

    def live(self) -> bool:
        return self._live

    def ready(self) -> bool:
        if not (self._live and self._started and self.repository is not None):
            return False
        return not self.options.strict_readiness or self.repository.all_ready()

    def metadata(self) -> dict[str, Any]:
        return {"name": self.options.server_id, "version": TRITON_VERSION, "extensions": list(EXTENSIONS)}

    def log_settings(self, changes: dict[str, Any] | None = None) -> dict[str, Any]:
        """The logging extension: current settings, after applying ``changes`` when given."""
        if self._logs is None:
            self._logs = configure_logging(self.options)
        return self._logs.update(changes or {})

    def trace_settings(self, model: str = "", changes: dict[str, Any] | None = None) -> dict[str, Any]:
        """The trace extension: global (or ``model``'s) settings, after applying ``changes`` when given."""
        if model and not (self.repository is not None and self.repository.ready_models(model)):
            check_model_name(model)
            raise InvalidArgumentError(f"Request for unknown model : {model}")
        return self.tracer.settings(model, changes)

    def model(self, name: str, version: int = -1) -> Model:
        if not name:
            raise InvalidArgumentError("model name must not be empty")
        assert self.repository is not None
        return self.repository.get(name, version)

    def loaded_models(self) -> list[Model]:
        return self.repository.ready_models() if self.repository is not None else []

    def model_ready(self, name: str, version: int = -1) -> bool:
        return self.repository is not None and self.repository.is_ready(name, version)

    def model_metadata(self, name: str, version: int = -1) -> dict[str, Any]:
        model = self.model(name, version)
        assert self.repository is not None
        versions = [str(version)] if version >= 0 else self.repository.ready_versions(name)
        mbs = model.max_batch_size
        return {
            "name": model.name,
            "versions": versions,
            "platform": model.platform,
            "inputs": [
                {"name": s.name, "datatype": s.datatype.wire_name, "shape": s.metadata_shape(mbs)}
                for s in model.inputs.values()
            ],
            "outputs": [
                {"name": s.name, "datatype": s.datatype.wire_name, "shape": s.metadata_shape(mbs)}
                for s in model.outputs.values()
            ],
        }

    def model_statistics(self, name: str = "", version: int = -1) -> dict[str, Any]:
        """The statistics extension: every loaded version (of ``name``, or of every model)."""
        assert self.repository is not None
        if name:
            if version >= 0:
                try:
                    models = [self.repository.get(name, version)]
                except TritiumError:
                    models = []
            else:
                models = self.repository.ready_models(name)
            if not models:
                check_model_name(name)
                raise InvalidArgumentError(f"requested model '{name}' is not available")
        else:
            models = self.repository.ready_models()
        return {"model_stats": [model_stats_dict(m) for m in models]}

    # -- the model repository extension ----------------------------------------------------------

    async def repository_index(self, ready_only: bool = False, repository: str = "") -> list[dict[str, str]]:
        """Every model of the repositories with its versions, states and reasons (Triton's index)."""
        _no_repository_name(repository)
        assert self.repository is not None
        return await self.repository.index(ready_only)

    async def load_model(self, name: str, parameters: dict[str, Any] | None = None, repository: str = "") -> None:
        """Load or reload ``name`` (explicit mode only).

        ``parameters``: ``config`` (a JSON model config replacing the file) and ``file:<version>/<name>``
        (file content as bytes; frontends decode their wire form) — Triton's load parameters.
        """
        _no_repository_name(repository)
        self._explicit_only()
        check_model_name(name)  # before its parameters are even read (the repository checks again)
        assert self.repository is not None
        config = None
        files: dict[str, bytes] = {}
        for key, value in (parameters or {}).items():
            if key == "config":
                if not isinstance(value, str):
                    raise InvalidArgumentError(
                        "the 'config' parameter must be a string holding the model config as JSON")
                config = value
            elif key.startswith("file:"):
                if not isinstance(value, (bytes, bytearray, memoryview)):
                    raise InvalidArgumentError(f"the '{key}' parameter must hold the file's content as bytes")
                files[key[len("file:"):]] = bytes(value)
        await self.repository.load(name, config=config, files=files or None)

    async def unload_model(self, name: str, parameters: dict[str, Any] | None = None, repository: str = "") -> None:
        """Unload ``name`` (explicit mode only); returns once it takes no new requests, as Triton does."""
        _no_repository_name(repository)
        self._explicit_only()
        check_model_name(name)  # a client's name is never a namespaced key of the repository
        assert self.repository is not None
        dependents = (parameters or {}).get("unload_dependents", False)
        if not isinstance(dependents, bool):
            raise InvalidArgumentError("the 'unload_dependents' parameter must be a boolean")
        await self.repository.unload(name, dependents)

    def _explicit_only(self) -> None:
        if self.options.model_control_mode != "explicit":
            raise UnavailableError("explicit model load / unload is not allowed if polling is enabled")

    def model_config(self, name: str, version: int = -1) -> dict[str, Any]:
        return self.model(name, version).config_dict()

    # -- inference --------------------------------------------------------------------------------

    @staticmethod
    def require_unary(model: Model, endpoint: str) -> None:
        if model.decoupled:
            raise UnsupportedError(f"{endpoint} doesn't support models with decoupled transaction policy")

    def start_trace(self, model: Model, request_id: str = "") -> Trace | None:
        tracer = self.tracer
        return tracer.start(model.name, model.version, request_id) if tracer.active else None

    @staticmethod
    def validate(request: InferenceRequest, model: Model) -> None:
        model.validate(request)

    def infer(self, request: InferenceRequest, model: Model | None = None, trace: Trace | None = None,
              validated: bool = False) -> Awaitable[InferenceResponse]:
        # not a coroutine itself: the untraced path awaits the model's coroutine with no frame in between
        if model is None:
            model = self.model(request.model_name, request.model_version)
        if trace is None:
            return model.infer(request, validated)
        request.trace = trace
        return _traced(model.infer(request, validated), trace)

    @staticmethod
    def stream(request: InferenceRequest, model: Model, validated: bool = False) -> AsyncGenerator[StreamItem, None]:
        return cast(_Items, model.stream(request, validated))  # an async generator, declared as an iterator

    # -- the shared-memory extensions -------------------------------------------------------------

    def system_shm_status(self, name: str = "") -> list[Region]:
        return self.system_shm.status(name)

    def system_shm_register(self, name: str, key: str, offset: int, byte_size: int) -> None:
        self.system_shm.register(name, key, offset, byte_size)

    def system_shm_unregister(self, name: str = "") -> None:
        self.system_shm.unregister(name)

    @staticmethod
    def cuda_shm_status(name: str = "") -> list[Region]:
        return cuda_status(name)

    def cuda_shm_register(self, name: str) -> None:
        cuda_register(self.system_shm, name)


async def _traced(running: Awaitable[InferenceResponse], trace: Trace) -> InferenceResponse:
    try:
        return await running
    except TritiumError:
        trace.finish()  # a failed request's trace is written too, with the stages it reached
        raise


class LocalInference:
    """Requests from backends to this server's models (Python-backend BLS), as frontends make them."""

    def __init__(self, server: Server, loop: asyncio.AbstractEventLoop) -> None:
        self._server = server
        self.loop = loop
        self.metrics = server.custom_metrics

    async def infer(self, request: InferenceRequest) -> InferenceResponse:
        return await self._accept(request, False).infer(request, validated=True)

    def stream(self, request: InferenceRequest) -> AsyncIterator[StreamItem]:
        return self._accept(request, True).stream(request, validated=True)

    def _accept(self, request: InferenceRequest, decoupled: bool) -> Model:
        """The model that takes ``request``, or why not, in the words (and the INTERNAL code) Triton's
        Python backend gives a BLS call; errors of the execution itself reach the caller unchanged."""
        name = request.model_name
        head = f"Model {name} - Error when running inference: "
        try:
            model = self._server.model(name, request.model_version)
        except TritiumError:
            raise InternalError(
                f"{head}Failed for execute the inference request. Model '{name}' is not ready.") from None
        if model.decoupled and not decoupled:
            raise InternalError(
                f"{head}Model {name} is using the decoupled. The current BLS request call doesn't support models "
                "using the decoupled transaction policy. Please use 'decoupled=True' argument to the 'exec' or "
                "'async_exec' calls for decoupled models.'")
        try:
            model.validate(request)
        except TritiumError as e:
            raise InternalError(head + e.message) from None
        return model

    async def load_model(self, name: str, parameters: dict[str, Any]) -> None:
        await self._server.load_model(name, parameters)

    async def unload_model(self, name: str, unload_dependents: bool = False) -> None:
        await self._server.unload_model(name, {"unload_dependents": unload_dependents})

    def model_ready(self, name: str, version: int = -1) -> bool:
        return self._server.model_ready(name, version)


def _no_repository_name(repository: str) -> None:
    if repository:
        raise UnsupportedError("'repository_name' specification is not supported")


class StartupError(Exception):
    """The server could not start as asked (e.g. a model failed with ``--exit-on-error``)."""


__all__ = ["EXTENSIONS", "TRITON_VERSION", "LocalInference", "Server", "StartupError", "__version__"]
