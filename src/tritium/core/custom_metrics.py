"""Metrics that model code defines (the Python backend's ``pb_utils.MetricFamily``), shown on ``/metrics``.

Backends write here; the metrics frontend reads :meth:`CustomMetrics.snapshot` at scrape time.  Neither
knows the other: this module holds plain numbers, no exposition format.

A family is shared by name (every instance of a model creating ``my_counter`` gets the same one), as in
Triton; it lives while some *holder* (one stub process, say) still has it, so one instance deleting its
``MetricFamily`` object does not take the series from the others, and a model unloading (its holders
released) takes its families with it.  A metric is one label set of a family; asking for the same labels
again gives the same value, and it lives as long as its family (Triton keeps a series when the Python
``Metric`` object is deleted).
"""

from __future__ import annotations

import bisect
import re
import threading
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field

from .errors import InvalidArgumentError

COUNTER, GAUGE, HISTOGRAM = "counter", "gauge", "histogram"
KINDS = (COUNTER, GAUGE, HISTOGRAM)
_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")
_LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")

LabelKey = tuple[tuple[str, str], ...]


@dataclass(slots=True)
class Series:
    """One label set: a value (counter, gauge) or bucket counts, sum and count (histogram)."""

    value: float = 0.0
    buckets: tuple[float, ...] = ()
    counts: list[int] = field(default_factory=list)  # per bucket, not cumulative; the last is +Inf
    count: int = 0


@dataclass(slots=True)
class Family:
    name: str
    description: str
    kind: str
    series: dict[LabelKey, Series] = field(default_factory=dict)
    holders: dict[Hashable, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class FamilySnapshot:
    """A family as the frontend renders it: ``(labels, value)`` or ``(labels, (buckets, counts, sum, count))``."""

    name: str
    description: str
    kind: str
    samples: list[tuple[dict[str, str], object]]


def label_key(labels: Mapping[str, str] | None) -> LabelKey:
    return tuple(sorted((str(k), str(v)) for k, v in (labels or {}).items()))


class CustomMetrics:
    """The server's registry of model-defined metric families; thread-safe (backends write from their threads)."""

    def __init__(self) -> None:
        self._families: dict[str, Family] = {}
        self._lock = threading.Lock()

    def create_family(self, holder: Hashable, name: str, description: str, kind: str) -> None:
        """Create ``name`` or join it (same kind); raises InvalidArgumentError with Triton's wording."""
        if kind not in KINDS:
            raise InvalidArgumentError(f"unknown metric kind '{kind}'")
        if not _NAME.match(name):
            raise InvalidArgumentError("Invalid metric name")
        with self._lock:
            family = self._families.get(name)
            if family is None:
                family = self._families[name] = Family(name, description, kind)
            elif family.kind != kind:
                raise InvalidArgumentError("Family name already exists with different type")
            family.holders[holder] = family.holders.get(holder, 0) + 1

    def delete_family(self, holder: Hashable, name: str) -> None:
        """``holder`` lets go of ``name``; the family goes when nobody holds it."""
        with self._lock:
            family = self._families.get(name)
            if family is None or holder not in family.holders:
                return
            family.holders[holder] -= 1
            if family.holders[holder] <= 0:
                del family.holders[holder]
            if not family.holders:
                del self._families[name]

    def release(self, holder: Hashable) -> None:
        """Everything ``holder`` had (its process ended, its model unloaded)."""
        with self._lock:
            for name in [n for n, f in self._families.items() if holder in f.holders]:
                family = self._families[name]
                del family.holders[holder]
                if not family.holders:
                    del self._families[name]

    def create_metric(
        self, name: str, labels: Mapping[str, str] | None, buckets: Sequence[float] | None = None
    ) -> None:
        """Make sure the series ``labels`` of ``name`` exists (shown as 0 until updated)."""
        key = label_key(labels)
        for label, _ in key:
            if not _LABEL.match(label) or label.startswith("__"):
                raise InvalidArgumentError(f"invalid label name '{label}'")
        with self._lock:
            family = self._family(name)
            if key not in family.series:
                bounds = tuple(sorted(float(b) for b in buckets)) if family.kind == HISTOGRAM and buckets else ()
                counts = [0] * (len(bounds) + 1) if family.kind == HISTOGRAM else []
                family.series[key] = Series(buckets=bounds, counts=counts)

    def update(self, name: str, labels: LabelKey, op: str, value: float) -> None:
        """``op`` is ``increment``, ``set`` or ``observe``; the caller has checked it fits the kind."""
        with self._lock:
            family = self._families.get(name)
            if family is None:
                return  # deleted meanwhile: Triton ignores updates of a deleted family too
            series = family.series.get(labels)
            if series is None:
                series = family.series[labels] = Series(counts=[0] if family.kind == HISTOGRAM else [])
            if op == "increment":
                series.value += value
            elif op == "set":
                series.value = value
            elif op == "observe":
                series.counts[bisect.bisect_left(series.buckets, value)] += 1
                series.value += value
                series.count += 1

    def value(self, name: str, labels: LabelKey) -> float:
        with self._lock:
            family = self._family(name)
            series = family.series.get(labels)
            return series.value if series is not None else 0.0

    def _family(self, name: str) -> Family:
        family = self._families.get(name)
        if family is None:
            raise InvalidArgumentError(f"metric family '{name}' does not exist")
        return family

    def snapshot(self) -> list[FamilySnapshot]:
        with self._lock:
            out = []
            for family in self._families.values():
                samples: list[tuple[dict[str, str], object]] = []
                for key, s in family.series.items():
                    data: object = (
                        (s.buckets, list(s.counts), s.value, s.count) if family.kind == HISTOGRAM else s.value
                    )
                    samples.append((dict(key), data))
                out.append(FamilySnapshot(family.name, family.description, family.kind, samples))
            return out


__all__ = ["COUNTER", "GAUGE", "HISTOGRAM", "CustomMetrics", "FamilySnapshot", "label_key"]
