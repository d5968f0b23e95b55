"""Prometheus metrics on ``--metrics-port`` (``GET /metrics``), with Triton's names, types and labels.

Per-model figures are read at scrape time from the same
:class:`~tritium.core.stats.ModelStats` the statistics extension renders, so
the two always agree and the request path pays nothing for metrics.
``prometheus_client`` writes the exposition format; metric families are built
with Triton's exact names (no ``_total`` suffix on counters, as Triton).
CPU utilization and memory are sampled from ``/proc`` every
``--metrics-interval-ms``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator, Sequence
from typing import cast

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.metrics_core import Metric

from tritium.api import InferenceAPI
from tritium.core.custom_metrics import CustomMetrics
from tritium.core.response_cache import ResponseCache
from tritium.core.stats import LatencySummaries, ModelStats
from tritium.options import ServerOptions

from .http.listener import HttpListener, metrics_limits
from .http.routes import HttpRequest, HttpResponse, error_response

log = logging.getLogger(__name__)

#: A custom histogram sample: bucket bounds, counts per bucket, sum, count.
_Histogram = tuple[Sequence[float], Sequence[int], float, int]

#: name -> (type, help), as Triton documents them.
_MODEL_METRICS: dict[str, tuple[str, str]] = {
    "nv_inference_request_success": ("counter", "Number of successful inference requests, all batch sizes"),
    "nv_inference_request_failure": ("counter", "Number of failed inference requests, all batch sizes"),
    "nv_inference_count": ("counter", "Number of inferences performed (does not include cached requests)"),
    "nv_inference_exec_count": ("counter", "Number of model executions performed (does not include cached requests)"),
    "nv_inference_pending_request_count": (
        "gauge",
        "Instantaneous number of pending requests awaiting execution "
        "per-model.",
    ),
}
_LATENCY_METRICS: dict[str, tuple[str, str]] = {
    "nv_inference_request_duration_us": (
        "success",
        "Cumulative inference request duration in microseconds "
        "(includes cached requests)",
    ),
    "nv_inference_queue_duration_us": (
        "queue",
        "Cumulative inference queuing duration in microseconds "
        "(includes cached requests)",
    ),
    "nv_inference_compute_input_duration_us": (
        "compute_input",
        "Cumulative compute input duration in microseconds (does not "
        "include cached requests)",
    ),
    "nv_inference_compute_infer_duration_us": (
        "compute_infer",
        "Cumulative compute inference duration in microseconds (does "
        "not include cached requests)",
    ),
    "nv_inference_compute_output_duration_us": (
        "compute_output",
        "Cumulative inference compute output duration in "
        "microseconds (does not include cached requests)",
    ),
}
#: name -> (LatencySummaries field, help), for ``--metrics-config summary_latencies=true``.
_SUMMARY_METRICS: dict[str, tuple[str, str]] = {
    "nv_inference_request_summary_us": (
        "request",
        "Summary of inference request duration in microseconds "
        "(includes cached requests)",
    ),
    "nv_inference_queue_summary_us": (
        "queue",
        "Summary of inference queuing duration in microseconds "
        "(includes cached requests)",
    ),
    "nv_inference_compute_input_summary_us": (
        "compute_input",
        "Summary of compute input duration in microseconds (does not "
        "include cached requests)",
    ),
    "nv_inference_compute_infer_summary_us": (
        "compute_infer",
        "Summary of compute inference duration in microseconds (does "
        "not include cached requests)",
    ),
    "nv_inference_compute_output_summary_us": (
        "compute_output",
        "Summary of compute output duration in microseconds (does "
        "not include cached requests)",
    ),
}
#: Per-model response cache counters (models whose config enables the cache): name -> (ModelStats field, which
#: figure, help), as Triton 2.51 writes them.
_CACHE_MODEL_METRICS: dict[str, tuple[str, str, str]] = {
    "nv_cache_num_hits_per_model": ("cache_hit", "count", "Number of cache hits per model"),
    "nv_cache_hit_duration_per_model": ("cache_hit", "us", "Total cache hit duration per model, in microseconds"),
    "nv_cache_num_misses_per_model": ("cache_miss", "count", "Number of cache misses per model"),
    "nv_cache_miss_duration_per_model": (
        "cache_miss", "us", "Total cache miss (insert+lookup) duration per model, in microseconds"),
}
#: Their summaries (``--metrics-config summary_latencies=true``): name -> (LatencySummaries field, help).
_CACHE_SUMMARY_METRICS: dict[str, tuple[str, str]] = {
    "nv_cache_hit_summary_per_model": ("cache_hit", "Summary of cache hit counts/durations per model, in "
                                                    "microseconds."),
    "nv_cache_miss_summary_per_model": ("cache_miss", "Summary of cache miss counts/durations per model, in "
                                                      "microseconds."),
}
#: The server's cache as a whole (gauges, as Triton's): name -> help.
_CACHE_METRICS: dict[str, str] = {
    "nv_cache_util": "Cache utilization [0.0 - 1.0]",
    "nv_cache_num_entries": "Number of responses stored in response cache",
    "nv_cache_num_hits": "Number of cache hits in response cache",
    "nv_cache_num_misses": "Number of cache misses in response cache",
    "nv_cache_num_lookups": "Number of cache lookups in response cache",
    "nv_cache_num_evictions": "Number of cache evictions in response cache",
    "nv_cache_lookup_duration": "Total cache lookup duration (hit and miss), in microseconds",
    "nv_cache_insertion_duration": "Total cache insertion duration, in microseconds",
}
#: Triton's failure reasons, always exported (zero when none happened).
FAILURE_REASONS = ("REJECTED", "CANCELED", "BACKEND", "OTHER")


class CpuSampler:
    """CPU utilization (0..1 over the last interval) and memory, read from ``/proc``."""

    def __init__(self) -> None:
        self.utilization = 0.0
        self.memory_total = 0
        self.memory_used = 0
        self._last: tuple[int, int] | None = None

    def sample(self) -> None:
        try:
            with open("/proc/stat") as f:
                fields = [int(x) for x in f.readline().split()[1:]]
            idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
            total = sum(fields[:8])
            if self._last is not None and total > self._last[1]:
                self.utilization = 1.0 - (idle - self._last[0]) / (total - self._last[1])
            self._last = (idle, total)
            meminfo = {}
            with open("/proc/meminfo") as f:
                for line in f:
                    key, _, rest = line.partition(":")
                    meminfo[key] = int(rest.split()[0]) * 1024
            self.memory_total = meminfo.get("MemTotal", 0)
            self.memory_used = self.memory_total - meminfo.get("MemAvailable", 0)
        except (OSError, ValueError, IndexError):  # not Linux: leave the last values
            pass


class GpuSampler:
    """Per-GPU utilization, memory, power and energy through NVML (``nvidia-ml-py``), sampled every interval.

    Without NVML (no NVIDIA driver) there is nothing to report and no GPU metric is exported, as with
    Triton on a machine without GPUs.
    """

    def __init__(self) -> None:
        self.rows: list[dict[str, float | str]] = []
        self._nvml = None
        try:
            import pynvml

            pynvml.nvmlInit()
            self._handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
            self._nvml = pynvml
        except Exception as e:  # library missing, driver missing, no device
            log.debug("no GPU metrics: %s", e)
            self._handles = []

    @property
    def available(self) -> bool:
        return bool(self._handles)

    def sample(self) -> None:
        nvml = self._nvml
        if nvml is None:
            return
        rows = []
        for handle in self._handles:
            try:
                uuid = nvml.nvmlDeviceGetUUID(handle)
                memory = nvml.nvmlDeviceGetMemoryInfo(handle)
                rows.append({
                    "gpu_uuid": uuid.decode() if isinstance(uuid, bytes) else uuid,
                    "nv_gpu_utilization": nvml.nvmlDeviceGetUtilizationRates(handle).gpu / 100.0,
                    "nv_gpu_memory_total_bytes": float(memory.total),
                    "nv_gpu_memory_used_bytes": float(memory.used),
                    "nv_gpu_power_usage": nvml.nvmlDeviceGetPowerUsage(handle) / 1000.0,
                    "nv_gpu_power_limit": nvml.nvmlDeviceGetEnforcedPowerLimit(handle) / 1000.0,
                    "nv_energy_consumption": nvml.nvmlDeviceGetTotalEnergyConsumption(handle) / 1000.0,
                })
            except Exception as e:  # one device failing must not stop the rest
                log.debug("GPU metrics sample failed: %s", e)
        self.rows = rows


#: GPU metric name -> (type, help), as Triton documents them.
_GPU_METRICS: dict[str, tuple[str, str]] = {
    "nv_gpu_utilization": ("gauge", "GPU utilization rate [0.0 - 1.0)"),
    "nv_gpu_memory_total_bytes": ("gauge", "GPU total memory, in bytes"),
    "nv_gpu_memory_used_bytes": ("gauge", "GPU used memory, in bytes"),
    "nv_gpu_power_usage": ("gauge", "GPU power usage in watts"),
    "nv_gpu_power_limit": ("gauge", "GPU power management limit in watts"),
    "nv_energy_consumption": ("counter", "GPU energy consumption in joules since the Triton Server started"),
}


class TritonCollector:
    """A prometheus_client collector reading the server's model statistics at scrape time."""

    def __init__(self, api: InferenceAPI, options: ServerOptions, cpu: CpuSampler | None,
                 gpu: GpuSampler | None = None) -> None:
        self.api = api
        self.gpu = gpu
        self.counter_latencies = options.metrics_counter_latencies
        self.summary_latencies = options.metrics_summary_latencies
        self.quantiles = options.metrics_summary_quantiles
        self.cpu = cpu

    def collect(self) -> Iterator[Metric]:
        models = self.api.loaded_models()
        families = {name: Metric(name, help_, kind) for name, (kind, help_) in _MODEL_METRICS.items()}
        latencies = {name: Metric(name, help_, "counter") for name, (_, help_) in _LATENCY_METRICS.items()}
        summaries = {name: Metric(name, help_, "summary") for name, (_, help_) in _SUMMARY_METRICS.items()}
        cached = {name: Metric(name, help_, "counter") for name, (_, _, help_) in _CACHE_MODEL_METRICS.items()}
        cached.update({name: Metric(name, help_, "summary") for name, (_, help_) in _CACHE_SUMMARY_METRICS.items()})
        now_s = time.monotonic()
        for model in models:
            stats = model.scheduler.stats
            labels = {"model": model.name, "version": str(model.version)}
            labels.update({f"_{k}": v for k, v in model.config.metric_tags.items()})
            families["nv_inference_request_success"].add_sample(
                "nv_inference_request_success", labels, stats.success.count)
            failures = stats.failures
            for reason in FAILURE_REASONS:
                families["nv_inference_request_failure"].add_sample(
                    "nv_inference_request_failure", {**labels, "reason": reason}, failures.get(reason, 0)
                )
            families["nv_inference_count"].add_sample("nv_inference_count", labels, stats.inference_count)
            families["nv_inference_exec_count"].add_sample("nv_inference_exec_count", labels, stats.execution_count)
            families["nv_inference_pending_request_count"].add_sample(
                "nv_inference_pending_request_count", labels, model.scheduler.pending_count()
            )
            if model.cache is not None:
                _cache_samples(cached, stats, labels)
                if self.summary_latencies and stats.summaries is not None:
                    self._summaries(cached, _CACHE_SUMMARY_METRICS, stats.summaries, labels, now_s)
            if self.counter_latencies:
                for name, (field, _) in _LATENCY_METRICS.items():
                    latencies[name].add_sample(name, labels, getattr(stats, field).ns // 1000)
            windows = stats.summaries
            if self.summary_latencies and windows is not None:
                self._summaries(summaries, _SUMMARY_METRICS, windows, labels, now_s)
        yield from families.values()
        cache = self.api.response_cache
        if cache is not None:
            yield from (family for family in cached.values() if family.samples)
            yield from _cache_gauges(cache)
        if self.summary_latencies:
            yield from summaries.values()
        if self.counter_latencies:
            yield from latencies.values()
        yield from self._machine()

    def _summaries(self, families: dict[str, Metric], which: dict[str, tuple[str, str]], windows: LatencySummaries,
                   labels: dict[str, str], now_s: float) -> None:
        """One model's samples of the summaries ``which`` names (count, sum, quantiles)."""
        for name, (field, _) in which.items():
            window = getattr(windows, field)
            families[name].add_sample(name + "_count", labels, window.count)
            families[name].add_sample(name + "_sum", labels, window.sum_us)
            for q, value in zip(self.quantiles, window.quantiles(self.quantiles, now_s), strict=False):
                families[name].add_sample(name, {**labels, "quantile": f"{q:g}"}, value)

    def _machine(self) -> Iterator[Metric]:
        """GPU and CPU figures of the last sample."""
        if self.gpu is not None and self.gpu.rows:
            for name, (kind, help_) in _GPU_METRICS.items():
                metric = Metric(name, help_, kind)
                for row in self.gpu.rows:
                    metric.add_sample(name, {"gpu_uuid": str(row["gpu_uuid"])}, float(row[name]))
                yield metric
        if self.cpu is not None:
            for name, help_, value in (
                ("nv_cpu_utilization", "CPU utilization rate [0.0 - 1.0]", self.cpu.utilization),
                ("nv_cpu_memory_total_bytes", "CPU total memory (RAM), in bytes", self.cpu.memory_total),
                ("nv_cpu_memory_used_bytes", "CPU used memory (RAM), in bytes", self.cpu.memory_used),
            ):
                metric = Metric(name, help_, "gauge")
                metric.add_sample(name, {}, value)
                yield metric


def _cache_samples(families: dict[str, Metric], stats: ModelStats, labels: dict[str, str]) -> None:
    """One model's response cache counters (models whose config enables the cache)."""
    for name, (field, figure, _) in _CACHE_MODEL_METRICS.items():
        duration = getattr(stats, field)
        families[name].add_sample(name, labels, duration.count if figure == "count" else duration.ns // 1000)


def _cache_gauges(cache: ResponseCache) -> Iterator[Metric]:
    """The cache-wide gauges, read now (Triton refreshes them each metrics interval)."""
    c = cache.counters
    usage = cache.usage()
    values: dict[str, float] = {
        "nv_cache_num_hits": c.hits, "nv_cache_num_misses": c.misses, "nv_cache_num_lookups": c.lookups,
        "nv_cache_num_evictions": c.evictions, "nv_cache_lookup_duration": c.lookup_ns // 1000,
        "nv_cache_insertion_duration": c.insertion_ns // 1000,
    }
    if usage is not None:  # a Redis cache cannot tell what it holds
        values["nv_cache_num_entries"], values["nv_cache_util"] = usage
    for name, help_ in _CACHE_METRICS.items():
        if name in values:
            metric = Metric(name, help_, "gauge")
            metric.add_sample(name, {}, values[name])
            yield metric


class CustomCollector:
    """Families that model code defined (``pb_utils.MetricFamily``), from the server's
    :class:`~tritium.core.custom_metrics.CustomMetrics`, read at scrape time."""

    def __init__(self, metrics: CustomMetrics) -> None:
        self.metrics = metrics
        #: Counter names of the last scrape, whose HELP/TYPE lines lose prometheus_client's ``_total``.
        self.counter_names: list[str] = []

    def collect(self) -> Iterator[Metric]:
        counters = []
        for family in self.metrics.snapshot():
            metric = Metric(family.name, family.description, family.kind)
            name = family.name
            if family.kind == "histogram":
                for labels, data in family.samples:
                    bounds, counts, total, count = cast(_Histogram, data)
                    metric.add_sample(name + "_count", labels, count)
                    metric.add_sample(name + "_sum", labels, total)
                    cumulative = 0
                    for bound, n in zip([*bounds, float("inf")], counts, strict=False):
                        cumulative += n
                        metric.add_sample(name + "_bucket", {**labels, "le": _le(bound)}, cumulative)
            else:
                if family.kind == "counter":
                    counters.append(name)
                for labels, value in family.samples:
                    metric.add_sample(name, labels, value)  # type: ignore[arg-type]
            yield metric
        self.counter_names = counters


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else f"{bound:g}"


class MetricsApi:
    """``GET /metrics`` and nothing else."""

    def __init__(self, registry: CollectorRegistry, custom: CustomCollector | None = None) -> None:
        self.registry = registry
        self.custom = custom

    async def handle(self, request: HttpRequest) -> HttpResponse:
        if request.path != "/metrics":
            return error_response("Not Found", 404)
        if request.method != "GET":
            return error_response("Method Not Allowed", 405)
        text = generate_latest(self.registry)
        extra = self.custom.counter_names if self.custom is not None else ()
        return HttpResponse(200, [_triton_names(text, extra)], CONTENT_TYPE_LATEST.encode())


_COUNTER_NAMES = [n for n, (kind, _) in _MODEL_METRICS.items() if kind == "counter"] + list(_LATENCY_METRICS) + [
    "nv_energy_consumption", *_CACHE_MODEL_METRICS]


def _triton_names(text: bytes, extra: Sequence[str] = ()) -> bytes:
    """prometheus_client names a counter ``<name>_total`` in its HELP and TYPE lines (OpenMetrics style);
    Triton's counters have no suffix, and dashboards and alert rules use Triton's names."""
    for name in (*_COUNTER_NAMES, *extra):
        text = text.replace(b"# HELP %s_total " % name.encode(), b"# HELP %s " % name.encode())
        text = text.replace(b"# TYPE %s_total " % name.encode(), b"# TYPE %s " % name.encode())
    return text


def render_metrics(api: InferenceAPI, options: ServerOptions, cpu: CpuSampler | None = None) -> bytes:
    """The text ``/metrics`` answers, made now, for a caller without the endpoint (the in-process API's
    ``Server.metrics()``); call it on the server's event loop, where the statistics are written."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(TritonCollector(api, options, cpu))
    custom = CustomCollector(api.custom_metrics)
    registry.register(custom)
    return _triton_names(generate_latest(registry), custom.counter_names)


class MetricsFrontend(HttpListener):
    """The metrics endpoint and the periodic CPU sampling behind it."""

    def __init__(self, api: InferenceAPI, options: ServerOptions) -> None:
        self.cpu = CpuSampler() if options.allow_cpu_metrics else None
        gpu = GpuSampler() if options.allow_gpu_metrics else None
        self.gpu = gpu if gpu is not None and gpu.available else None
        registry = CollectorRegistry(auto_describe=False)
        registry.register(TritonCollector(api, options, self.cpu, self.gpu))
        custom = CustomCollector(api.custom_metrics)
        registry.register(custom)
        super().__init__(
            MetricsApi(registry, custom),  # type: ignore[arg-type]
            options.metrics_address,
            options.metrics_port,
            64 * 1024,
            "Metrics Service",
            limits=metrics_limits(options),
        )
        self.interval_s = max(options.metrics_interval_ms, 1) / 1000
        self._sampler: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await super().start()
        samplers = [s for s in (self.cpu, self.gpu) if s is not None]
        if samplers:
            for sampler in samplers:
                sampler.sample()
            self._sampler = asyncio.get_running_loop().create_task(self._sample_forever(samplers))

    async def _sample_forever(self, samplers: list[CpuSampler | GpuSampler]) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            for sampler in samplers:
                sampler.sample()

    async def stop(self) -> None:
        if self._sampler is not None:
            self._sampler.cancel()
            self._sampler = None
        await super().stop()
