"""The statistics extension: a model's counters in Triton's JSON shape.

The counters themselves live in :class:`tritium.core.stats.ModelStats`, one per
loaded model version (its scheduler records them); this module only renders
them, so the statistics API and the Prometheus metrics read the same numbers.
"""

from __future__ import annotations

from typing import Any

from tritium.core.model import Model
from tritium.core.stats import Duration, ModelStats


def _duration(d: Duration) -> dict[str, int]:
    return {"count": d.count, "ns": d.ns}


def model_stats_dict(model: Model) -> dict[str, Any]:
    """One entry of ``model_stats`` as Triton's ``/v2/models/{m}/stats`` returns it."""
    stats: ModelStats = model.scheduler.stats
    return {
        "name": model.name,
        "version": str(model.version),
        "last_inference": stats.last_inference_ms,
        "inference_count": stats.inference_count,
        "execution_count": stats.execution_count,
        "inference_stats": {
            "success": _duration(stats.success),
            "fail": _duration(stats.fail),
            "queue": _duration(stats.queue),
            "compute_input": _duration(stats.compute_input),
            "compute_infer": _duration(stats.compute_infer),
            "compute_output": _duration(stats.compute_output),
            "cache_hit": _duration(stats.cache_hit),
            "cache_miss": _duration(stats.cache_miss),
        },
        "response_stats": {},
        "batch_stats": [
            {
                "batch_size": size,
                "compute_input": _duration(b.compute_input),
                "compute_infer": _duration(b.compute_infer),
                "compute_output": _duration(b.compute_output),
            }
            for size, b in sorted(stats.batches.items())
        ],
        "memory_usage": [],
    }
