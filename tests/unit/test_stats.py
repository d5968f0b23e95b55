"""Per-model statistics: what each kind of outcome counts."""

from __future__ import annotations

from tritium.core.inference import InferenceRequest
from tritium.core.stats import ExecutionTiming, ModelStats


def test_a_failed_execution_counts_as_an_execution_and_its_requests_only_as_failures():
    """As Triton 2.51 counts them (test_against_real_triton's failure_accounting): execution and batch
    statistics count every execution; a failed request adds only to ``fail`` (no queue, no inference)."""
    stats = ModelStats()
    requests = [InferenceRequest("m", 1), InferenceRequest("m", 1)]
    for r in requests:
        r.queued_ns = 1_000
    stats.record_execution(requests, ExecutionTiming(5_000, 6_000, 8_000, 9_000), ok=False)
    stats.record_execution(requests[:1], ExecutionTiming(10_000, 11_000, 12_000, 13_000), ok=True)
    assert (stats.execution_count, stats.inference_count) == (2, 1)
    assert (stats.fail.count, stats.fail.ns) == (2, 2 * 8_000)
    assert (stats.queue.count, stats.success.count, stats.compute_infer.count) == (1, 1, 1)
    assert stats.failures["BACKEND"] == 2
    assert sorted(stats.batches) == [1, 2]
