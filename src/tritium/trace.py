"""The trace extension: which requests are traced, their stage timestamps, and where they go.

Triton's model: one *setting* (level, rate, count, log frequency, file, mode) globally, and a
setting per model for the models that override some keys.  Each setting samples one request in
``trace_rate`` and stops after ``trace_count`` traces (``-1``: never).  A traced request carries a
:class:`Trace` on ``InferenceRequest.trace``; frontends, :class:`tritium.core.model.Model` and the
scheduler stamp it only when it is there, so an untraced request pays one ``is None`` test per stage.

Mode ``triton`` writes Triton's trace file: a JSON array with, per trace, one
``{"id", "model_name", "model_version", "request_id"}`` object and one ``{"id", "timestamps":
[{"name", "ns"}]}`` object per stamp (``ns`` from the monotonic clock, as Triton's steady clock).
With ``log_frequency`` N > 0, every N traces go to ``<trace_file>.<index>``; what remains at
shutdown (all of it with ``log_frequency`` 0) goes to ``<trace_file>``.
Mode ``opentelemetry`` exports each trace as spans through ``opentelemetry-sdk`` (extra
``tritium[trace]``) to an OTLP/HTTP collector.

Everything here runs on the event loop thread; no locks.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from tritium.core.errors import InvalidArgumentError, UnsupportedError

log = logging.getLogger(__name__)

now_ns = time.monotonic_ns

LEVELS = ("OFF", "TIMESTAMPS", "TENSORS")
MODES = ("triton", "opentelemetry")
#: The settings keys of the extension, in Triton's order.
KEYS = ("trace_level", "trace_rate", "trace_count", "log_frequency", "trace_file", "trace_mode")
#: ``--trace-config`` keys without a mode, and those of each mode.
GLOBAL_CONFIG = {"level": "trace_level", "rate": "trace_rate", "count": "trace_count", "mode": "trace_mode"}
TRITON_CONFIG = {"file": "trace_file", "log-frequency": "log_frequency"}
OTEL_CONFIG = ("url", "resource", "bsp_max_queue_size", "bsp_schedule_delay", "bsp_max_export_batch_size")
DEFAULT_OTEL_URL = "http://localhost:4318/v1/traces"


def defaults() -> dict[str, Any]:
    """tritonserver's defaults: tracing off, one in 1000 sampled, no limit."""
    return {"trace_level": ["OFF"], "trace_rate": 1000, "trace_count": -1, "log_frequency": 0,
            "trace_file": "", "trace_mode": "triton"}


# -- parsing ------------------------------------------------------------------------------------


def _levels(values: Iterable[str]) -> list[str]:
    levels = []
    for value in values:
        level = value.upper()
        if level not in LEVELS:
            raise InvalidArgumentError(f"invalid value for trace level option: {value.lower()}")
        if level not in levels:
            levels.append(level)
    if "OFF" in levels and len(levels) > 1:
        raise InvalidArgumentError("Expect only one trace level 'OFF' is specified")
    return levels or ["OFF"]


def _int(key: str, text: Any, minimum: int) -> int:
    if not isinstance(text, str):
        raise InvalidArgumentError(f"'{key}' must be given as a string, got {text!r}")
    try:
        value = int(text)
    except ValueError:
        raise InvalidArgumentError(f"Unable to parse '{key}', got: {text}") from None
    if value < minimum:
        raise InvalidArgumentError(f"Unable to parse '{key}'. Expecting value >= {minimum}, got:{value}")
    if key == "trace_rate" and value == 0:
        raise InvalidArgumentError("Attempting to set invalid trace setting :sample rate must be non-zero")
    return value


def parse_value(key: str, value: Any) -> Any:
    """One setting as the extension sends it (strings; the level a list of strings) → its value."""
    if key == "trace_level":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise InvalidArgumentError(f"'trace_level' must be a list of strings, got {value!r}")
        return _levels(value)
    if key == "trace_rate":
        return _int(key, value, 0)
    if key == "trace_count":
        return _int(key, value, -1)
    if key == "log_frequency":
        return _int(key, value, 0)
    if key == "trace_mode":
        if value not in MODES:
            raise InvalidArgumentError(f"invalid value for trace mode option: {value}. Available options are "
                                       '"triton" and "opentelemetry"')
        return value
    return value


@dataclass
class TraceConfig:
    """What ``--trace-config`` (and the deprecated ``--trace-*`` flags) set at startup."""

    settings: dict[str, Any] = field(default_factory=defaults)
    #: ``opentelemetry,<key>=<value>`` settings; ``resource`` collects ``key=value`` pairs.
    otel: dict[str, Any] = field(default_factory=lambda: {"url": DEFAULT_OTEL_URL, "resource": {}})

    @classmethod
    def parse(cls, items: Sequence[str]) -> TraceConfig:
        """``[mode,]setting=value`` items, in order; raises :class:`InvalidArgumentError` naming the bad one."""
        config = cls()
        levels: list[str] = []
        for item in items:
            head, _, rest = item.partition(",")
            mode = ""
            if rest and "=" not in head:
                mode, item = head, rest
                if mode not in MODES:
                    raise InvalidArgumentError(f"invalid value for trace mode option: {mode}. Available options are "
                                               '"triton" and "opentelemetry"')
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise InvalidArgumentError(f"--trace-config expects [<mode>,]<setting>=<value>, got '{item}'")
            if mode == "opentelemetry":
                if key not in OTEL_CONFIG:
                    raise InvalidArgumentError(
                        f"unknown opentelemetry trace setting '{key}' (known: {', '.join(OTEL_CONFIG)})"
                    )
                if key == "resource":
                    attr_key, sep, attr = value.partition("=")
                    if not sep or not attr_key:
                        raise InvalidArgumentError(f"opentelemetry,resource expects <key>=<value>, got '{value}'")
                    config.otel["resource"][attr_key] = attr
                elif key == "url":
                    config.otel["url"] = value
                else:
                    config.otel[key] = _int(key, value, 0)
                continue
            table = TRITON_CONFIG if mode == "triton" else GLOBAL_CONFIG
            name = table.get(key) or (TRITON_CONFIG.get(key) if not mode else None)
            if name is None:
                known = ", ".join(table) if mode else ", ".join([*GLOBAL_CONFIG, *TRITON_CONFIG])
                raise InvalidArgumentError(f"unknown trace setting '{key}' in --trace-config '{item}' (known: {known})")
            if name == "trace_level":
                levels.append(value)
                config.settings["trace_level"] = _levels(levels)
            elif name == "trace_file":
                config.settings["trace_file"] = value
            else:
                config.settings[name] = parse_value(name, value)
        return config


# -- one trace ------------------------------------------------------------------------------------


class Trace:
    """The stamps of one traced request; finished once its response is sent."""

    __slots__ = ("id", "model_name", "model_version", "request_id", "stamps", "tensors", "timestamps", "_policy")

    def __init__(self, trace_id: int, model_name: str, model_version: int, request_id: str, policy: _Policy) -> None:
        self.id = trace_id
        self.model_name = model_name
        self.model_version = model_version
        self.request_id = request_id
        self.stamps: list[tuple[str, int]] = []
        #: With level TENSORS: (activity, name, datatype, array) of the inputs and outputs.
        self.tensors: list[tuple[str, str, str, np.ndarray]] | None = [] if "TENSORS" in policy.level else None
        #: Level TIMESTAMPS: the model entry and the stamps are written (with TENSORS alone, only tensors).
        self.timestamps = "TIMESTAMPS" in policy.level
        self._policy = policy

    def stamp(self, name: str, ns: int = 0) -> None:
        self.stamps.append((name, ns or now_ns()))

    def execution(self, queued_ns: int, start_ns: int, input_end_ns: int, infer_end_ns: int, end_ns: int) -> None:
        """The scheduler's stamps of the execution this request was part of (``ExecutionTiming``)."""
        stamps = self.stamps
        stamps.append(("QUEUE_START", queued_ns or start_ns))
        stamps.append(("COMPUTE_START", start_ns))
        stamps.append(("COMPUTE_INPUT_END", input_end_ns or start_ns))
        stamps.append(("COMPUTE_OUTPUT_START", infer_end_ns or end_ns))
        stamps.append(("COMPUTE_END", end_ns))
        stamps.append(("INFER_RESPONSE_COMPLETE", end_ns))
        stamps.append(("REQUEST_END", now_ns()))

    def add_tensors(self, activity: str, tensors: Iterable[Any]) -> None:
        if self.tensors is not None:
            for t in tensors:
                self.tensors.append((activity, t.name, t.datatype.wire_name, t.data))

    def finish(self) -> None:
        self._policy.manager._finished(self, self._policy)

    def entries(self) -> list[dict[str, Any]]:
        """Triton's trace file objects for this trace."""
        out: list[dict[str, Any]] = []
        if self.timestamps:
            head: dict[str, Any] = {"id": self.id, "model_name": self.model_name, "model_version": self.model_version}
            if self.request_id:
                head["request_id"] = self.request_id
            out.append(head)
            out.extend({"id": self.id, "timestamps": [{"name": n, "ns": t}]}
                       for n, t in sorted(self.stamps, key=lambda s: s[1]))
        for activity, name, dtype, data in self.tensors or ():
            shape = ",".join(str(d) for d in data.shape)
            out.append({"id": self.id, "activity": activity, "tensor": {
                "name": name, "data": _tensor_text(data), "shape": shape, "dtype": dtype}})
        return out


def _write_file(path: str, data: bytes) -> None:
    try:
        with open(path, "wb") as f:
            f.write(data)
    except OSError as e:
        log.error("failed to write trace file %s: %s", path, e)


def _tensor_text(data: np.ndarray) -> str:
    """Values comma-separated as Triton's C++ stream prints them (floats in ``%g``: ``0``, ``1.5``, ``1e+06``)."""
    flat = data.reshape(-1)
    if flat.dtype == np.object_:
        return ",".join(v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in flat)
    if flat.dtype.kind == "f" or flat.dtype.kind == "V":  # V: bfloat16 stored as ml_dtypes
        return ",".join(f"{v:g}" for v in flat.astype(np.float64).tolist())
    return ",".join(str(int(v)) for v in flat.tolist())


# -- settings -------------------------------------------------------------------------------------


class _Policy:
    """One resolved setting with its sampling counter and remaining count (Triton's TraceSetting)."""

    __slots__ = ("manager", "values", "level", "rate", "_seen")

    def __init__(self, manager: TraceManager, values: dict[str, Any]) -> None:
        self.manager = manager
        self.values = values
        self.level = tuple(values["trace_level"])
        self.rate = values["trace_rate"]
        self._seen = 0

    @property
    def on(self) -> bool:
        return self.level != ("OFF",) and self.values["trace_count"] != 0

    def sample(self) -> bool:
        if not self.on:
            return False
        self._seen += 1
        if self._seen % self.rate:
            return False
        if self.values["trace_count"] > 0:
            self.values["trace_count"] -= 1
        return True


class TraceFile:
    """Triton's trace file: every ``log_frequency`` traces to ``<path>.<index>``, the rest to ``<path>`` at close."""

    def __init__(self, path: str) -> None:
        self.path = path
        with open(path, "w"):  # created (empty) at once, as Triton does; fails early on a bad path
            pass
        self._buffer: list[dict[str, Any]] = []
        self._traces = 0
        self._index = 0
        self._writer: ThreadPoolExecutor | None = None

    def add(self, entries: list[dict[str, Any]], log_frequency: int) -> None:
        self._buffer.extend(entries)
        self._traces += 1
        if log_frequency and self._traces >= log_frequency:
            self._write(f"{self.path}.{self._index}")
            self._index += 1

    def _write(self, path: str) -> None:
        """Serialize here (fast, keeps order), write on a thread so the event loop never waits on the disk."""
        data = orjson.dumps(self._buffer)
        self._buffer = []
        self._traces = 0
        if self._writer is None:
            self._writer = ThreadPoolExecutor(1, thread_name_prefix="trace-file")
        self._writer.submit(_write_file, path, data)

    def close(self) -> None:
        if self._traces:
            self._write(self.path)
        if self._writer is not None:
            self._writer.shutdown(wait=True)
            self._writer = None


class TraceManager:
    """Global and per-model trace settings, sampling, and the sinks traces go to."""

    def __init__(self, config: TraceConfig) -> None:
        self.config = config
        self._startup = dict(config.settings)
        self._global_values = dict(config.settings)
        self._overrides: dict[str, dict[str, Any]] = {}
        self._files: dict[str, TraceFile] = {}
        self._otel: Any = None
        self._next_id = 1
        self._check(self._global_values)
        self._global = _Policy(self, self._global_values)
        self._models: dict[str, _Policy] = {}
        #: True when any setting traces at all; frontends test it before asking :meth:`start`.
        self.active = False
        self._refresh()

    # -- the extension's API --------------------------------------------------------------------

    def settings(self, model: str = "", changes: dict[str, Any] | None = None) -> dict[str, Any]:
        """Current settings (of ``model``, or global), after applying ``changes``; values as strings.

        A ``None`` value clears a model's setting back to the global one (globally: to the startup value).
        """
        if changes:
            self._update(model, changes)
        policy = self._models.get(model, self._global) if model else self._global
        return _wire(policy.values)

    def _update(self, model: str, changes: dict[str, Any]) -> None:
        current = (self._models[model].values if model in self._models else self._global_values) if model \
            else self._global_values
        parsed: dict[str, Any] = {}
        cleared: list[str] = []
        for key, value in changes.items():
            if key not in KEYS:
                continue  # as Triton: unknown keys are ignored
            if key == "trace_file":
                if value is not None and value != current["trace_file"]:
                    raise UnsupportedError("trace file location can not be updated through network protocol")
                continue
            if key == "trace_mode":
                if value is not None and value != current["trace_mode"]:
                    raise UnsupportedError("trace mode can not be updated through network protocol")
                continue
            if value is None:
                cleared.append(key)
            else:
                parsed[key] = parse_value(key, value)
        if model:
            overrides = dict(self._overrides.get(model, {}))  # a copy: refused settings change nothing
            for key in cleared:
                overrides.pop(key, None)
            overrides.update(parsed)
            merged = {**self._global_values, **overrides}
            self._check(merged)
            if overrides:
                self._overrides[model] = overrides
                self._models[model] = _Policy(self, merged)
            else:
                self._overrides.pop(model, None)
                self._models.pop(model, None)
        else:
            values = dict(self._global_values)
            for key in cleared:
                values[key] = self._startup[key]
            values.update(parsed)
            self._check(values)
            self._global_values.clear()
            self._global_values.update(values)
            self._global = _Policy(self, self._global_values)
            for name, overrides in self._overrides.items():
                self._models[name] = _Policy(self, {**self._global_values, **overrides})
        self._refresh()

    def _check(self, values: dict[str, Any]) -> None:
        if values["trace_level"] != ["OFF"] and values["trace_mode"] == "triton" and not values["trace_file"]:
            raise InvalidArgumentError(
                "tracing in mode 'triton' needs a trace file; start the server with --trace-config triton,file=<path>"
            )

    def _refresh(self) -> None:
        self.active = self._global.on or any(p.on for p in self._models.values())

    # -- tracing requests -----------------------------------------------------------------------

    def start(self, model_name: str, model_version: int, request_id: str) -> Trace | None:
        """A new trace when this request is sampled, else ``None``."""
        policy = self._models.get(model_name, self._global)
        if not policy.sample():
            if not policy.on:
                self._refresh()
            return None
        trace = Trace(self._next_id, model_name, model_version, request_id, policy)
        self._next_id += 1
        return trace

    def _finished(self, trace: Trace, policy: _Policy) -> None:
        values = policy.values
        if values["trace_mode"] == "opentelemetry":
            self._export(trace)
            return
        path = values["trace_file"]
        sink = self._files.get(path)
        if sink is None:
            sink = self._files[path] = TraceFile(path)
        sink.add(trace.entries(), values["log_frequency"])

    def open(self) -> None:
        """Create the trace file / exporter now, so a bad path or a missing package fails at startup."""
        values = self._global_values
        if values["trace_mode"] == "opentelemetry":
            self._otel_tracer()
        elif values["trace_file"] and values["trace_file"] not in self._files:
            self._files[values["trace_file"]] = TraceFile(values["trace_file"])

    def close(self) -> None:
        """Write what is buffered (Triton's shutdown write) and flush the exporter."""
        for sink in self._files.values():
            sink.close()
        if self._otel is not None:
            self._otel[1].shutdown()

    # -- OpenTelemetry --------------------------------------------------------------------------

    def _otel_tracer(self) -> Any:
        if self._otel is None:
            try:
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
                from opentelemetry.sdk.resources import Resource
                from opentelemetry.sdk.trace import TracerProvider
                from opentelemetry.sdk.trace.export import BatchSpanProcessor
            except ImportError as e:
                raise UnsupportedError(
                    "trace mode 'opentelemetry' needs opentelemetry-sdk and opentelemetry-exporter-otlp-proto-http: "
                    f"pip install 'tritium[trace]' ({e})"
                ) from None
            otel = self.config.otel
            resource = Resource.create({"service.name": "triton-inference-server", **otel["resource"]})
            provider = TracerProvider(resource=resource)
            batch: dict[str, Any] = {}  # BatchSpanProcessor's keyword arguments
            if "bsp_max_queue_size" in otel:
                batch["max_queue_size"] = otel["bsp_max_queue_size"]
            if "bsp_schedule_delay" in otel:
                batch["schedule_delay_millis"] = otel["bsp_schedule_delay"]
            if "bsp_max_export_batch_size" in otel:
                batch["max_export_batch_size"] = otel["bsp_max_export_batch_size"]
            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=otel["url"]), **batch))
            self._otel = (provider.get_tracer("tritium"), provider, time.time_ns() - now_ns())
        return self._otel[0]

    def _export(self, trace: Trace) -> None:
        """One ``InferRequest`` span (events: every stamp) with a ``compute`` child span, as Triton exports."""
        from opentelemetry import trace as otel_trace

        tracer = self._otel_tracer()
        offset = self._otel[2]
        stamps = sorted(trace.stamps, key=lambda s: s[1])
        if not stamps:
            return
        attributes = {"triton.model_name": trace.model_name, "triton.model_version": trace.model_version,
                      "triton.trace_id": trace.id}
        if trace.request_id:
            attributes["triton.request_id"] = trace.request_id
        root = tracer.start_span("InferRequest", start_time=stamps[0][1] + offset, attributes=attributes)
        for name, ns in stamps:
            root.add_event(name, timestamp=ns + offset)
        compute = dict(stamps)
        if "COMPUTE_START" in compute:
            context = otel_trace.set_span_in_context(root)
            child = tracer.start_span("compute", context=context, start_time=compute["COMPUTE_START"] + offset)
            for name in ("COMPUTE_START", "COMPUTE_INPUT_END", "COMPUTE_OUTPUT_START", "COMPUTE_END"):
                if name in compute:
                    child.add_event(name, timestamp=compute[name] + offset)
            child.end(end_time=compute.get("COMPUTE_END", stamps[-1][1]) + offset)
        root.end(end_time=stamps[-1][1] + offset)


def _wire(values: dict[str, Any]) -> dict[str, Any]:
    """Settings as the extension shows them: strings, the level a list."""
    return {
        "trace_level": list(values["trace_level"]),
        "trace_rate": str(values["trace_rate"]),
        "trace_count": str(values["trace_count"]),
        "log_frequency": str(values["log_frequency"]),
        "trace_file": values["trace_file"],
        "trace_mode": values["trace_mode"],
    }
