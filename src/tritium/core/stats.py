"""Per-model inference statistics, recorded cheaply on the hot path, read by statistics and metrics.

Triton's model statistics, in the same terms: per request a queue time and the
compute input / infer / output times of the execution it was part of; per
execution its batch size.  Times are ``time.monotonic_ns()`` stamps.

Everything here is updated on the event loop thread only (schedulers call
:meth:`ModelStats.record_execution` from their completion callback), so no lock
is taken.  Backends that can tell their phases apart fill an
:class:`ExecutionTiming`'s ``input_end_ns`` / ``infer_end_ns``; otherwise the
whole execution counts as compute infer.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .inference import InferenceRequest

now_ns = time.monotonic_ns


@dataclass(slots=True)
class ExecutionTiming:
    """Stamps of one execution: start → inputs joined → model ran → outputs split (end)."""

    start_ns: int = 0
    input_end_ns: int = 0
    infer_end_ns: int = 0
    end_ns: int = 0

    def phases(self) -> tuple[int, int, int]:
        """(compute input, compute infer, compute output) in ns; unknown phases count as infer."""
        start, end = self.start_ns, self.end_ns
        input_end = self.input_end_ns or start
        infer_end = self.infer_end_ns or end
        return input_end - start, infer_end - input_end, end - infer_end


@dataclass(slots=True)
class Duration:
    """A count and a total, as Triton's ``StatisticDuration``."""

    count: int = 0
    ns: int = 0

    def add(self, ns: int, count: int = 1) -> None:
        self.count += count
        self.ns += ns


@dataclass(slots=True)
class BatchStats:
    """Executions of one batch size (Triton's ``InferBatchStatistics``)."""

    batch_size: int
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)


class LatencyWindow:
    """One latency summary: all-time count and sum, and the observations of the last ``max_age_s`` seconds
    for quantiles (bounded, oldest dropped first), as Prometheus summaries with a max age report them."""

    __slots__ = ("count", "sum_us", "_items", "max_age_s")

    def __init__(self, max_age_s: float = 60.0, max_items: int = 50_000) -> None:
        self.count = 0
        self.sum_us = 0
        self.max_age_s = max_age_s
        self._items: deque[tuple[float, int]] = deque(maxlen=max_items)

    def observe(self, now_s: float, value_us: int) -> None:
        self.count += 1
        self.sum_us += value_us
        self._items.append((now_s, value_us))

    def quantiles(self, qs: Sequence[float], now_s: float) -> list[float]:
        items = self._items
        while items and items[0][0] < now_s - self.max_age_s:
            items.popleft()
        values = sorted(v for _, v in items)
        if not values:
            return [float("nan")] * len(qs)
        return [float(values[min(len(values) - 1, int(q * len(values)))]) for q in qs]


class LatencySummaries:
    """Per-request latency windows behind Triton's ``nv_inference_*_summary_us`` metrics."""

    __slots__ = ("request", "queue", "compute_input", "compute_infer", "compute_output", "cache_hit", "cache_miss")

    def __init__(self) -> None:
        self.request = LatencyWindow()
        self.queue = LatencyWindow()
        self.compute_input = LatencyWindow()
        self.compute_infer = LatencyWindow()
        self.compute_output = LatencyWindow()
        #: Response cache lookups that hit, and misses (lookup plus insertion), of models that enable it.
        self.cache_hit = LatencyWindow()
        self.cache_miss = LatencyWindow()


@dataclass(slots=True)
class ModelStats:
    """Counters of one model version (Triton's ``ModelStatistics``)."""

    #: Requests that got a response, and the time from arrival at the scheduler to completion.
    success: Duration = field(default_factory=Duration)
    #: Requests that failed after they were queued (execution errors, timeouts, full queue).
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)
    #: Response cache: hits (lookup time) and misses (lookup plus insertion time); models without a cache: 0.
    cache_hit: Duration = field(default_factory=Duration)
    cache_miss: Duration = field(default_factory=Duration)
    #: Items inferred (sum of batch sizes) and model executions.
    inference_count: int = 0
    execution_count: int = 0
    #: Wall-clock milliseconds since the epoch of the last completed inference (0 = never).
    last_inference_ms: int = 0
    batches: dict[int, BatchStats] = field(default_factory=dict)
    #: Failed requests by Triton's metric reason: REJECTED (queue full, timeout), CANCELED (the client went
    #: away while the request was queued), BACKEND (execution failed).
    failures: dict[str, int] = field(default_factory=dict)
    #: Per-request latency windows; only kept when ``--metrics-config summary_latencies=true`` asks for them.
    summaries: LatencySummaries | None = None

    def record_execution(self, requests: Sequence[InferenceRequest], timing: ExecutionTiming, ok: bool) -> None:
        """One execution of ``requests`` (one batch) finished; ``ok`` is False when it failed."""
        c_in, c_infer, c_out = timing.phases()
        end = timing.end_ns
        start = timing.start_ns
        n = len(requests)
        size = 0
        queue_ns = 0
        total_ns = 0
        for request in requests:
            size += request.batch_size
            queued = request.queued_ns or start
            queue_ns += start - queued
            total_ns += end - queued
        # The execution and its batch count either way; a failed request counts only its fail duration
        # (Triton 2.51 does the same: test_against_real_triton's failure_accounting).
        self.execution_count += 1
        self.last_inference_ms = time.time_ns() // 1_000_000
        batch = self.batches.get(size)
        if batch is None:
            batch = self.batches[size] = BatchStats(size)
        batch.compute_input.add(c_in)
        batch.compute_infer.add(c_infer)
        batch.compute_output.add(c_out)
        if not ok:
            self.fail.add(total_ns, n)
            self.failures["BACKEND"] = self.failures.get("BACKEND", 0) + n
            return
        self.queue.add(queue_ns, n)
        self.success.add(total_ns, n)
        self.compute_input.add(c_in * n, n)
        self.compute_infer.add(c_infer * n, n)
        self.compute_output.add(c_out * n, n)
        self.inference_count += size
        summaries = self.summaries
        if summaries is not None:
            now_s = time.monotonic()
            for request in requests:
                queued = request.queued_ns or start
                summaries.request.observe(now_s, (end - queued) // 1000)
                summaries.queue.observe(now_s, (start - queued) // 1000)
                summaries.compute_input.observe(now_s, c_in // 1000)
                summaries.compute_infer.observe(now_s, c_infer // 1000)
                summaries.compute_output.observe(now_s, c_out // 1000)

    def record_rejected(self, request: InferenceRequest, reason: str = "REJECTED") -> None:
        """A request that never ran: full queue or expired timeout (``REJECTED``), or its client went away
        while it waited (``CANCELED``)."""
        self.fail.add(now_ns() - (request.queued_ns or now_ns()))
        self.failures[reason] = self.failures.get(reason, 0) + 1

    def record_cache_hit(self, start_ns: int, looked_ns: int, end_ns: int) -> None:
        """A request answered from the response cache: as Triton, a success (and a queue entry) that is
        neither an inference nor an execution."""
        self.success.add(end_ns - start_ns)
        self.queue.add(0)
        self.cache_hit.add(looked_ns - start_ns)
        self.last_inference_ms = time.time_ns() // 1_000_000
        summaries = self.summaries
        if summaries is not None:
            now_s = time.monotonic()
            summaries.request.observe(now_s, (end_ns - start_ns) // 1000)
            summaries.queue.observe(now_s, 0)
            summaries.cache_hit.observe(now_s, (looked_ns - start_ns) // 1000)

    def record_cache_miss(self, ns: int) -> None:
        """A lookup that missed; ``ns``: its time and that of storing the response."""
        self.cache_miss.add(ns)
        if self.summaries is not None:
            self.summaries.cache_miss.observe(time.monotonic(), ns // 1000)
