"""The registry behind model-defined metrics: sharing, holders, histogram buckets, Triton's errors."""

from __future__ import annotations

import pytest

from tritium.core.custom_metrics import CustomMetrics, label_key
from tritium.core.errors import InvalidArgumentError


def families(metrics: CustomMetrics) -> dict[str, list]:
    return {f.name: f.samples for f in metrics.snapshot()}


def test_a_family_lives_while_any_holder_has_it() -> None:
    metrics = CustomMetrics()
    metrics.create_family("stub-a", "requests", "Requests", "counter")
    metrics.create_family("stub-b", "requests", "Requests", "counter")  # a second instance joins it
    metrics.create_metric("requests", {"model": "m"})
    metrics.update("requests", label_key({"model": "m"}), "increment", 2)
    metrics.delete_family("stub-a", "requests")
    assert families(metrics) == {"requests": [({"model": "m"}, 2.0)]}
    metrics.release("stub-b")  # its process ended
    assert families(metrics) == {}
    metrics.update("requests", label_key({"model": "m"}), "increment", 1)  # late update of a gone family: ignored
    assert families(metrics) == {}


def test_same_labels_share_one_value_in_any_order() -> None:
    metrics = CustomMetrics()
    metrics.create_family(1, "g", "G", "gauge")
    metrics.create_metric("g", {"a": "1", "b": "2"})
    metrics.update("g", label_key({"b": "2", "a": "1"}), "set", 4)
    metrics.update("g", label_key({"a": "1", "b": "2"}), "increment", -1.5)
    assert metrics.value("g", label_key({"a": "1", "b": "2"})) == 2.5


def test_histogram_counts_per_bucket_with_prometheus_upper_bounds() -> None:
    metrics = CustomMetrics()
    metrics.create_family(1, "h", "H", "histogram")
    metrics.create_metric("h", {}, [10.0, 1.0, 5.0])
    for value in (0.5, 1.0, 3, 10, 11):
        metrics.update("h", (), "observe", value)
    [(_labels, (bounds, counts, total, count))] = families(metrics)["h"]
    assert bounds == (1.0, 5.0, 10.0)
    assert counts == [2, 1, 1, 1]  # le=1 holds 1.0 itself; +Inf holds 11
    assert (total, count) == (25.5, 5)


def test_tritons_errors() -> None:
    metrics = CustomMetrics()
    metrics.create_family(1, "x", "X", "counter")
    with pytest.raises(InvalidArgumentError, match="Family name already exists with different type"):
        metrics.create_family(1, "x", "X", "gauge")
    with pytest.raises(InvalidArgumentError, match="Invalid metric name"):
        metrics.create_family(1, "9x", "X", "gauge")
    with pytest.raises(InvalidArgumentError, match="invalid label name 'bad-label'"):
        metrics.create_metric("x", {"bad-label": "v"})
    with pytest.raises(InvalidArgumentError, match="metric family 'nope' does not exist"):
        metrics.value("nope", ())
