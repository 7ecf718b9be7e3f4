"""Rolling latency figures per upstream: fixed-bucket histograms per time slice, pure.

No clock of its own: every call is handed `now` (the event loop's clock, seconds). One
`Histogram` is a count per latency bucket (the bounds are fixed, the same for every upstream, so
histograms add up and export as Prometheus buckets as they are); a `Rolling` window keeps one per
time slice in a ring (5 min in 10 s slices, 1 h in 1 min slices, 24 h in 15 min slices), so its
memory is bounded whatever the traffic, and a slice's figures go when the ring comes round.

Outages are counted apart: while the upstream is down or unreachable (`set_down`), its attempts
are failures (counted, by kind) and the time is outage time; none of it is a latency sample, so a
resolver that was away for ten minutes shows ten minutes of outage, not a slow p99.
Quantiles are read from the buckets: linear within the bucket the rank falls in (as Prometheus'
histogram_quantile does), so they are as fine as the buckets (about 25 % apart).
"""

from __future__ import annotations

import bisect
import math
from array import array
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

#: upper bounds of the latency buckets, milliseconds; one more bucket (+Inf) takes the rest
BOUNDS_MS: tuple[float, ...] = (
    1, 2, 3, 4, 5, 6, 8, 10, 12, 15, 20, 25, 30, 40, 50, 60, 80, 100, 120, 150, 200, 250,
    300, 400, 500, 600, 800, 1000, 1500, 2000, 3000, 5000, 10000,
)  # fmt: skip
BUCKETS = len(BOUNDS_MS) + 1
#: the windows `stats` shows: name → (slice width in seconds, slices)
WINDOWS: Mapping[str, tuple[float, int]] = {
    "5m": (10.0, 30),
    "1h": (60.0, 60),
    "24h": (900.0, 96),
}
QUANTILES = (50, 90, 99)


def percentile(ordered: Sequence[float], p: float) -> float:
    """The p-th percentile (0-100) of values sorted ascending, interpolated between ranks."""
    if not ordered:
        raise ValueError("no values")
    position = (len(ordered) - 1) * p / 100.0
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def bucket_of(ms: float) -> int:
    """The bucket a latency falls in: the first whose upper bound is at least it (`le`)."""
    return bisect.bisect_left(BOUNDS_MS, ms)


def _empty_counts() -> array[int]:
    return array("Q", bytes(8 * BUCKETS))


@dataclass(slots=True)
class Histogram:
    """Counts per bucket, their sum and number (Prometheus' histogram, in milliseconds)."""

    counts: array[int] = field(default_factory=_empty_counts)
    sum_ms: float = 0.0
    count: int = 0

    def add(self, seconds: float) -> None:
        ms = seconds * 1000.0
        self.counts[bucket_of(ms)] += 1
        self.sum_ms += ms
        self.count += 1

    def merge(self, other: Histogram) -> None:
        for index, value in enumerate(other.counts):
            if value:
                self.counts[index] += value
        self.sum_ms += other.sum_ms
        self.count += other.count

    def quantile(self, pct: float) -> float | None:
        """The pct-th percentile in ms, interpolated within its bucket (None when empty); a rank
        in the +Inf bucket reads as the last finite bound."""
        if not self.count:
            return None
        rank = self.count * pct / 100.0
        seen = 0
        for index, value in enumerate(self.counts):
            if not value:
                continue
            if seen + value >= rank:
                if index >= len(BOUNDS_MS):
                    return float(BOUNDS_MS[-1])
                low = BOUNDS_MS[index - 1] if index else 0.0
                high = BOUNDS_MS[index]
                return round(low + (high - low) * max(0.0, rank - seen) / value, 3)
            seen += value
        return float(BOUNDS_MS[-1])

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: the bounds, the count in each bucket (not cumulative; the last is +Inf)."""
        return {
            "bounds_ms": list(BOUNDS_MS),
            "counts": list(self.counts),
            "sum_ms": round(self.sum_ms, 3),
            "count": self.count,
        }


@dataclass(slots=True)
class Slice:
    """One time slice of a rolling window."""

    number: int
    latencies: Histogram = field(default_factory=Histogram)
    failures: int = 0
    failure_kinds: dict[str, int] = field(default_factory=dict)
    outage_s: float = 0.0


class Rolling:
    """The last `slices` slices of `width` seconds each (the newest one still filling)."""

    __slots__ = ("_ring", "slices", "width")

    def __init__(self, width: float, slices: int) -> None:
        self.width = width
        self.slices = slices
        self._ring: list[Slice | None] = [None] * slices

    def _slice(self, now: float) -> Slice:
        number = int(now // self.width)
        slot = number % self.slices
        current = self._ring[slot]
        if current is None or current.number != number:
            current = self._ring[slot] = Slice(number)
        return current

    def add(self, now: float, seconds: float) -> None:
        self._slice(now).latencies.add(seconds)

    def fail(self, now: float, kind: str) -> None:
        current = self._slice(now)
        current.failures += 1
        current.failure_kinds[kind] = current.failure_kinds.get(kind, 0) + 1

    def add_outage(self, start: float, end: float) -> None:
        """Count [start, end) as outage time in the slices it overlaps (those still kept)."""
        first = max(int(start // self.width), int(end // self.width) - self.slices + 1)
        for number in range(first, int(end // self.width) + 1):
            low = max(start, number * self.width)
            high = min(end, (number + 1) * self.width)
            if high > low:
                self._slice(low).outage_s += high - low

    def live(self, now: float) -> list[Slice | None]:
        """The window's slices, oldest first, None where nothing was recorded."""
        newest = int(now // self.width)
        out: list[Slice | None] = []
        for number in range(newest - self.slices + 1, newest + 1):
            kept = self._ring[number % self.slices]
            out.append(kept if kept is not None and kept.number == number else None)
        return out

    def summary(self, now: float, outage_now: float = 0.0) -> dict[str, Any]:
        """p50/p90/p99 (ms), samples, failures by kind, outage seconds and the p50 of each slice
        (oldest first, None where empty) over the window. outage_now: seconds of an outage still
        going on, not yet handed to add_outage."""
        total = Histogram()
        failures = 0
        kinds: dict[str, int] = {}
        outage = 0.0
        series: list[float | None] = []
        for part in self.live(now):
            if part is None:
                series.append(None)
                continue
            total.merge(part.latencies)
            failures += part.failures
            for kind, count in part.failure_kinds.items():
                kinds[kind] = kinds.get(kind, 0) + count
            outage += part.outage_s
            series.append(part.latencies.quantile(50))
        outage += min(outage_now, self.width * self.slices)
        return {
            **{f"p{q}_ms": total.quantile(q) for q in QUANTILES},
            "samples": total.count,
            "failures": failures,
            "failure_kinds": kinds,
            "outage_seconds": round(min(outage, self.width * self.slices), 3),
            "series_ms": series,
        }


class Figures:
    """One upstream's rolling windows and its all-time histogram, with its outages apart."""

    __slots__ = ("_down_since", "total", "windows")

    def __init__(self, windows: Mapping[str, tuple[float, int]] = WINDOWS) -> None:
        self.windows = {name: Rolling(width, count) for name, (width, count) in windows.items()}
        #: every latency since the start (Prometheus exports it)
        self.total = Histogram()
        self._down_since: float | None = None

    @property
    def is_down(self) -> bool:
        return self._down_since is not None

    def sample(self, now: float, seconds: float) -> None:
        self.total.add(seconds)
        for window in self.windows.values():
            window.add(now, seconds)

    def failure(self, now: float, kind: str) -> None:
        for window in self.windows.values():
            window.fail(now, kind)

    def set_down(self, now: float, down: bool) -> None:
        """The upstream is down or unreachable from `now` (down), or answering again."""
        if down and self._down_since is None:
            self._down_since = now
        elif not down and self._down_since is not None:
            start, self._down_since = self._down_since, None
            for window in self.windows.values():
                window.add_outage(start, now)

    def summaries(self, now: float) -> dict[str, dict[str, Any]]:
        ongoing = now - self._down_since if self._down_since is not None else 0.0
        return {name: w.summary(now, ongoing) for name, w in self.windows.items()}


def merged(histograms: Iterable[Histogram]) -> Histogram:
    total = Histogram()
    for histogram in histograms:
        total.merge(histogram)
    return total
