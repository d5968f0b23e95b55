"""Options and the in-process Server (Triton's ``tritonserver.Server``) over tritium's core."""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field, fields
from typing import Any

from tritium.core.custom_metrics import CustomMetrics, label_key
from tritium.core.errors import InternalError, InvalidArgumentError, UnavailableError, UnsupportedError
from tritium.core.response_cache import check_cache_config
from tritium.logsettings import LogManager, LogSettings
from tritium.options import ServerOptions

from ._enums import InstanceGroupKind, LogFormat, MetricFormat, MetricKind, ModelControlMode, RateLimitMode
from ._model import Model
from ._runtime import Handle, Runtime


@dataclass(slots=True)
class RateLimiterResource:
    """A resource count for the rate limiter (``device`` -1: the resource is shared by every device)."""

    name: str
    count: int
    device: int


@dataclass(slots=True)
class ModelLoadDeviceLimit:
    """A device memory limit for loading models (accepted and unused: tritium loads on the CPU)."""

    kind: InstanceGroupKind
    device: int
    fraction: float


_BOOL = (bool,)
_UINT = (int,)


@dataclass(slots=True)
class Options:
    """Server options, named and defaulted as Triton's in-process API names them.

    ``model_repository`` (one path or several) is required.  ``model_control_mode``: NONE and POLL load every
    model at start, EXPLICIT loads ``startup_models`` (``"*"``: all); in POLL mode ``poll_model_repository()``
    rescans.  Logging goes to ``log_file`` (stderr when None), by level switches (``log_verbose`` > 0 turns
    the others on).  Options about GPUs, pinned memory, caches and repository agents are accepted for
    compatibility and have no effect.  ``model_namespacing``, ``rate_limiter_mode``/``rate_limiter_resources``
    and ``cache_config`` (``{"local": {"size": ...}}`` or ``{"redis": {...}}``) work as the server's flags.
    """

    model_repository: str | list[str] = field(default_factory=list)
    server_id: str = "triton"
    model_control_mode: ModelControlMode = ModelControlMode.NONE
    startup_models: list[str] = field(default_factory=list)
    strict_model_config: bool = False

    rate_limiter_mode: RateLimitMode = RateLimitMode.OFF
    rate_limiter_resources: list[RateLimiterResource] = field(default_factory=list)

    pinned_memory_pool_size: int = 1 << 28
    cuda_memory_pool_sizes: dict[int, int] = field(default_factory=dict)

    cache_config: dict[str, dict[str, Any]] = field(default_factory=dict)
    cache_directory: str = "/opt/tritonserver/caches"

    min_supported_compute_capability: float = 6.0

    exit_on_error: bool = True
    strict_readiness: bool = True
    exit_timeout: int = 30
    buffer_manager_thread_count: int = 0
    model_load_thread_count: int = 4
    model_load_retry_count: int = 0
    model_namespacing: bool = False
    enable_peer_access: bool = True

    log_file: str | None = None
    log_info: bool = False
    log_warn: bool = False
    log_error: bool = False
    log_format: LogFormat = LogFormat.DEFAULT
    log_verbose: int = 0

    metrics: bool = True
    gpu_metrics: bool = True
    cpu_metrics: bool = True
    metrics_interval: int = 2000

    backend_directory: str = "/opt/tritonserver/backends"
    repo_agent_directory: str = "/opt/tritonserver/repoagents"
    model_load_device_limits: list[ModelLoadDeviceLimit] = field(default_factory=list)
    backend_configuration: dict[str, dict[str, str]] = field(default_factory=dict)
    host_policies: dict[str, dict[str, str]] = field(default_factory=dict)
    metrics_configuration: dict[str, dict[str, str]] = field(default_factory=dict)

    def _cascade_log_levels(self) -> None:
        if self.log_verbose > 0:
            self.log_info = True
        if self.log_info:
            self.log_warn = True
        if self.log_warn:
            self.log_error = True

    def _check_types(self) -> None:
        """TypeError naming the option whose value has the wrong type (as Triton's binding raises)."""
        expected: dict[str, tuple[type, ...]] = {
            "server_id": (str,), "cache_directory": (str,), "backend_directory": (str,),
            "repo_agent_directory": (str,), "log_file": (str, type(None)),
            "model_control_mode": (ModelControlMode,), "rate_limiter_mode": (RateLimitMode,),
            "log_format": (LogFormat,), "min_supported_compute_capability": (float, int),
            "startup_models": (list,), "rate_limiter_resources": (list,), "model_load_device_limits": (list,),
            "cuda_memory_pool_sizes": (dict,), "cache_config": (dict,), "backend_configuration": (dict,),
            "host_policies": (dict,), "metrics_configuration": (dict,),
        }
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "model_repository":
                paths = value if isinstance(value, list) else [value]
                if not all(isinstance(p, (str, os.PathLike)) for p in paths):
                    raise TypeError(f"Options.model_repository must be a path or a list of paths, got {value!r}")
                continue
            if f.type == "bool":
                kinds: tuple[type, ...] = _BOOL
            elif f.type == "int":
                kinds = _UINT
            else:
                kinds = expected.get(f.name, (object,))
            ok = isinstance(value, kinds) and not (kinds == _UINT and isinstance(value, bool) and
                                                    f.name != "log_verbose")
            if ok and kinds == _UINT and value < 0:
                raise TypeError(f"Options.{f.name} must be an unsigned integer, got {value!r}")
            if not ok:
                names = " or ".join(k.__name__ for k in kinds)
                raise TypeError(f"Options.{f.name} must be {names}, got {type(value).__name__} {value!r}")
        if not all(isinstance(m, str) for m in self.startup_models):
            raise TypeError("Options.startup_models must be a list of model names (str)")

    def _server_options(self) -> ServerOptions:
        """tritium's options for these; raises InvalidArgumentError, TypeError or UnsupportedError."""
        if self.model_repository is None:
            raise InvalidArgumentError("Model repository must be specified.")
        self._check_types()
        repositories = self.model_repository if isinstance(self.model_repository, list) else [self.model_repository]
        if not repositories:
            raise InvalidArgumentError("Model repository must be specified.")
        cache_config = {name: {key: str(value) for key, value in settings.items()}
                        for name, settings in self.cache_config.items()}
        check_cache_config(cache_config)  # Triton's refusals, in its words, before anything starts
        self._cascade_log_levels()
        counter_latencies, summary_latencies = True, False
        for settings in self.metrics_configuration.values():
            for key, value in settings.items():
                if key == "counter_latencies":
                    counter_latencies = str(value).lower() in ("true", "1")
                elif key == "summary_latencies":
                    summary_latencies = str(value).lower() in ("true", "1")
        backend_directory = self.backend_directory if os.path.isdir(self.backend_directory) else None
        return ServerOptions(
            model_repositories=[os.fspath(p) for p in repositories],
            model_control_mode=self.model_control_mode.name.lower(),
            repository_poll_secs=0,  # POLL: the program polls with poll_model_repository(), as in Triton
            load_models=list(self.startup_models),
            strict_model_config=self.strict_model_config,
            exit_on_error=self.exit_on_error,
            strict_readiness=self.strict_readiness,
            exit_timeout_secs=self.exit_timeout,
            model_load_thread_count=max(self.model_load_thread_count, 1),
            server_id=self.server_id,
            allow_http=False,
            allow_grpc=False,
            allow_metrics=False,
            allow_cpu_metrics=self.cpu_metrics,
            allow_gpu_metrics=self.gpu_metrics,
            metrics_interval_ms=self.metrics_interval,
            metrics_counter_latencies=counter_latencies,
            metrics_summary_latencies=summary_latencies,
            log_verbose=self.log_verbose,
            log_info=self.log_info,
            log_warning=self.log_warn,
            log_error=self.log_error,
            log_format="ISO8601" if self.log_format == LogFormat.ISO8601 else "default",
            log_file=self.log_file or "",
            backend_config={k: dict(v) for k, v in self.backend_configuration.items()},
            backend_directory=backend_directory,
            model_namespacing=self.model_namespacing,
            rate_limit="execution_count" if self.rate_limiter_mode == RateLimitMode.EXEC_COUNT else "off",
            rate_limit_resources=[(r.name, r.count, r.device) for r in self.rate_limiter_resources],
            cache_config=cache_config,
        )


class ModelDictionary(dict[tuple[str, int], Model]):
    """``Server.models()``: (name, version) -> Model; a name alone gives the model at version -1."""

    def __init__(self, server: Server, models: list[Model]) -> None:
        super().__init__()
        for model in models:
            self[(model.name, model.version)] = model
        self._server = server
        self._model_names = {name for name, _ in self.keys()}

    def __getitem__(self, key: Any) -> Model:
        if isinstance(key, tuple):
            try:
                return dict.__getitem__(self, key)
            except KeyError:
                raise KeyError(f"Unknown Model: {key}") from None
        if key in self._model_names:
            return Model(self._server, name=key, version=-1)
        raise KeyError(f"Unknown Model: {key}")


class _NotStarted:
    """Stands for the server before ``start()`` and after ``stop()``."""


class Server:
    """An in-process tritium server, with the API of Triton's ``tritonserver.Server``.

    It runs on a private event-loop thread (see ``docs/tritonserver_api.md``): every method is a plain call
    from any thread, ``Model.async_infer`` works from the caller's asyncio loop.  ``Server(options)`` or
    ``Server(**options)``; options are checked by :meth:`start`.
    """

    def __init__(self, options: Options | None = None, **kwargs: Any) -> None:
        if options is None:
            options = Options(**kwargs)
        self.options: Options = options
        self._server: Handle | _NotStarted = _NotStarted()

    def _handle(self) -> Handle | None:
        server = self._server
        return server if isinstance(server, Handle) else None

    def _started(self) -> Runtime:
        server = self._server
        if not isinstance(server, Handle):
            raise InvalidArgumentError("Server not started")
        return server.runtime

    # -- lifecycle -------------------------------------------------------------------------------------

    def start(self, wait_until_ready: bool = False, polling_interval: float = 0.1,
              timeout: float | None = None) -> Server:
        """Start the server and load models (as the control mode says); returns ``self``.

        Raises InvalidArgumentError (bad options, already started), TypeError (an option of the wrong type),
        InternalError (a repository that cannot be read, a model that failed with ``exit_on_error``),
        UnavailableError (not ready within ``timeout`` when waiting).
        """
        if isinstance(self._server, Handle):
            raise InvalidArgumentError("Server already started")
        server_options = self.options._server_options()
        for path in server_options.model_repositories:
            if not os.path.isdir(path):
                raise InternalError(f"failed to stat file {path}")
        _LOGGER.acquire()
        logs = LogManager(_log_settings(server_options), _LOGGER.logger)
        runtime = Runtime(server_options, logs, _LOGGER.release)
        runtime.core.custom_metrics = PROCESS_METRICS
        runtime.start()  # a failed start is stopped, which releases the logger
        self._server = Handle(runtime)
        start_time = time.monotonic()
        while wait_until_ready and not self.ready() and (timeout is None or time.monotonic() - start_time < timeout):
            time.sleep(polling_interval)
        if wait_until_ready and not self.ready():
            raise UnavailableError("Timeout before ready")
        return self

    def stop(self) -> None:
        """Unload every model (each drains its requests, up to ``exit_timeout``) and end the server."""
        runtime = self._started()
        self._server = _NotStarted()
        runtime.stop()

    # -- health and metadata ----------------------------------------------------------------------------

    def live(self) -> bool:
        return self._started().core.live()

    def ready(self) -> bool:
        return self._started().core.ready()

    def metadata(self) -> dict[str, Any]:
        """Server name (``server_id``), version and extensions."""
        return self._started().core.metadata()

    def metrics(self, metric_format: MetricFormat = MetricFormat.PROMETHEUS) -> str:
        """The Prometheus text the metrics endpoint would answer now (model and custom metrics)."""
        runtime = self._started()
        if metric_format != MetricFormat.PROMETHEUS:
            raise InvalidArgumentError(f"unsupported metric format {metric_format!r}")
        from tritium.frontends.metrics import render_metrics

        return runtime.run(render_metrics, runtime.core, runtime.options).decode()

    # -- models ---------------------------------------------------------------------------------------------

    def model(self, model_name: str, model_version: int = -1) -> Model:
        """A model object for ``model_name`` (not checked until used)."""
        self._started()
        return Model(self, model_name, model_version)

    def models(self, exclude_not_ready: bool = False) -> ModelDictionary:
        """Every model of the repositories: (name, version) -> Model with ``state`` and ``reason``."""
        runtime = self._started()
        rows = runtime.wait(runtime.core.repository_index(exclude_not_ready))
        models = []
        for row in rows:
            version = row.get("version", "")
            models.append(Model(self, row["name"], int(version) if version else -1, row.get("state") or None,
                                row.get("reason") or None))
        return ModelDictionary(self, models)

    def load(self, model_name: str, parameters: dict[str, str | int | bool | bytes] | None = None) -> Model:
        """Load (or reload) ``model_name`` and wait until it is ready (EXPLICIT mode).

        ``parameters``: ``"config"`` (the model configuration as JSON, replacing ``config.pbtxt``) and
        ``"file:<version>/<name>"`` (a file's content as bytes: the model is loaded from those files).
        """
        runtime = self._started()
        runtime.wait(runtime.core.load_model(model_name, dict(parameters) if parameters else None))
        return self.model(model_name)

    def unload(self, model: str | Model, unload_dependents: bool = False, wait_until_unloaded: bool = False,
               polling_interval: float = 0.1, timeout: float | None = None) -> None:
        """Unload a model (and, with ``unload_dependents``, the ensembles using it); by default returns once
        it takes no new requests, with ``wait_until_unloaded`` once every version is UNAVAILABLE."""
        runtime = self._started()
        name = model if isinstance(model, str) else model.name
        runtime.wait(runtime.core.unload_model(name, {"unload_dependents": unload_dependents}))
        if wait_until_unloaded:
            start = time.monotonic()
            while not self._unloaded(name) and (timeout is None or time.monotonic() - start < timeout):
                time.sleep(polling_interval)

    def _unloaded(self, name: str) -> bool:
        return all(m.state in (None, "UNAVAILABLE") for (n, _), m in self.models().items() if n == name)

    def poll_model_repository(self) -> None:
        """Rescan the repositories now: load new and changed models, unload removed ones (POLL mode)."""
        runtime = self._started()
        runtime.wait(runtime.core.poll_repository())

    def register_model_repository(self, repository_path: str, name_mapping: dict[str, str] | None = None) -> None:
        self._started()
        raise UnsupportedError("registering model repositories at run time is not supported by tritium")

    def unregister_model_repository(self, repository_path: str) -> None:
        self._started()
        raise UnsupportedError("unregistering model repositories at run time is not supported by tritium")


class _TritiumLogger:
    """While in-process servers run, the ``tritium`` logger writes only where their options say (Triton's
    logs do not go through the program's logging); the program's settings of it come back when the last stops."""

    def __init__(self) -> None:
        self.logger = logging.getLogger("tritium")
        self._users = 0
        self._lock = threading.Lock()
        self._saved: tuple[bool, list[logging.Handler], int] | None = None

    def acquire(self) -> None:
        with self._lock:
            if self._users == 0:
                self._saved = (self.logger.propagate, list(self.logger.handlers), self.logger.level)
            self._users += 1
            self.logger.propagate = False

    def release(self) -> None:
        with self._lock:
            self._users -= 1
            if self._users == 0 and self._saved is not None:
                self.logger.propagate, handlers, level = self._saved
                self.logger.handlers[:] = handlers
                self.logger.setLevel(level)
                self._saved = None


_LOGGER = _TritiumLogger()


def _log_settings(options: ServerOptions) -> LogSettings:
    return LogSettings(log_file=options.log_file, log_info=options.log_info, log_warning=options.log_warning,
                       log_error=options.log_error, log_verbose_level=options.log_verbose,
                       log_format=options.log_format)


#: Custom metric families of this process: Triton's are process-wide, so every in-process server shows them.
PROCESS_METRICS = CustomMetrics()

_KINDS = {MetricKind.COUNTER: "counter", MetricKind.GAUGE: "gauge", MetricKind.HISTOGRAM: "histogram"}


class MetricFamily:
    """A custom metric family (counter, gauge or histogram) shown by every in-process server's metrics."""

    def __init__(self, kind: MetricKind, name: str, description: str) -> None:
        if kind not in _KINDS:
            raise InvalidArgumentError(f"unknown metric kind {kind!r}")
        self.kind = MetricKind(kind)
        self.name = name
        self.description = description
        PROCESS_METRICS.create_family(self, name, description, _KINDS[self.kind])

    def __del__(self) -> None:
        registry = PROCESS_METRICS  # None once the interpreter is tearing modules down at exit
        if registry is not None and hasattr(self, "name"):
            registry.delete_family(self, self.name)


class Metric:
    """One labelled series of a :class:`MetricFamily`."""

    def __init__(self, family: MetricFamily, labels: dict[str, str] | None = None,
                 buckets: list[float] | None = None) -> None:
        self.family = family
        self._labels = label_key(labels)
        PROCESS_METRICS.create_metric(family.name, labels, buckets)

    @property
    def kind(self) -> MetricKind:
        return self.family.kind

    @property
    def value(self) -> float:
        if self.family.kind == MetricKind.HISTOGRAM:
            raise UnsupportedError("a histogram has no single value")
        return PROCESS_METRICS.value(self.family.name, self._labels)

    def increment(self, value: float) -> None:
        if self.family.kind == MetricKind.HISTOGRAM:
            raise UnsupportedError("increment is not supported for a histogram; use observe")
        if self.family.kind == MetricKind.COUNTER and value < 0:
            raise InvalidArgumentError("a counter cannot be decremented")
        PROCESS_METRICS.update(self.family.name, self._labels, "increment", float(value))

    def set_value(self, value: float) -> None:
        if self.family.kind != MetricKind.GAUGE:
            raise UnsupportedError("set_value is only supported for a gauge")
        PROCESS_METRICS.update(self.family.name, self._labels, "set", float(value))

    def observe(self, value: float) -> None:
        if self.family.kind != MetricKind.HISTOGRAM:
            raise UnsupportedError("observe is only supported for a histogram")
        PROCESS_METRICS.update(self.family.name, self._labels, "observe", float(value))
