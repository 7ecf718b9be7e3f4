"""`stubby-py monitor`, the pure part: daemon stats snapshots in, what to show out.

`build` takes the newest `stats` document (daemon/stats.py `collect`, as `stats --json` prints it)
and the ones before it (oldest first) and returns a `MonitorView`: per upstream its latency
percentiles, a trend for the sparkline, its share of its group's queries, hedges, failures, and at
most one `Recommendation`. commands/monitor.py only draws it.

Every figure beyond today's is optional. Latency comes from the first source that has samples:
the chosen rolling window (`upstreams[].windows["1h"]` …), the background probes
(`upstreams[].probe`), then the upstream's recent answers (`latency_ms`, or the raw
`latencies_ms`). Without windows, the trend is the latency EWMA of successive snapshots, and
"recent failures" are the failures counted over the snapshots of the last RECENT_SECONDS (when
the snapshots do not cover that long, every failure counted since the daemon started).

The recommendation rule (README, "Watching upstreams live"): within a group, an upstream is
recommended over the group's first (configured) upstream when, on one basis both have figures
on (the window, then the probes, then the recent answers),
- each has at least `min_samples` samples;
- its p90 is lower by at least `min_gain_ms` and by at least `min_gain_ratio` of the first's p90;
- it is up, and had no failure and no outage recently (the 5-minute window, or the failures
  counted over the last snapshots as above) and no outage in the chosen window.
Of several, the one that gains most is named.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

WINDOWS = ("5m", "1h", "24h")
DEFAULT_WINDOW = "1h"
#: a failure or outage within this many seconds rules an upstream out of being recommended
RECENT_SECONDS = 300.0
#: sparkline characters, lowest to highest; a gap (no sample) is a space
SPARK_BLOCKS = "▁▂▃▄▅▆▇█"
SPARK_WIDTH = 24

BASIS_TEXT = {
    "5m": "over the last 5 minutes",
    "1h": "over the last hour",
    "24h": "over the last day",
    "probe": "in background probes",
    "answers": "over its recent answers",
}


@dataclass(frozen=True, slots=True)
class Rule:
    """How much evidence a recommendation needs."""

    min_samples: int = 20
    min_gain_ms: float = 5.0
    min_gain_ratio: float = 0.10
    recent_seconds: float = RECENT_SECONDS


@dataclass(frozen=True, slots=True)
class Figures:
    """Latency percentiles from one source: a window, the probes, or the recent answers."""

    basis: str
    p50_ms: float | None
    p90_ms: float | None
    p99_ms: float | None
    samples: int


NO_FIGURES = Figures("none", None, None, None, 0)


@dataclass(frozen=True, slots=True)
class UpstreamLine:
    group: str
    name: str
    transport: str
    state: str
    #: the figures shown: the first source (in preference order) that has samples
    latency: Figures
    #: every source there is, in preference order (the recommendation picks a common one)
    sources: tuple[Figures, ...]
    queries: int
    failures: int
    failure_kinds: dict[str, int]
    share: float | None
    hedged: int | None
    hedge_wins: int | None
    #: failures within the recent span (see the module's note), and seconds of outage in it
    recent_failures: int
    recent_outage_s: float
    #: seconds of outage in the chosen window (None: the daemon does not count outages)
    outage_s: float | None
    #: latency over time, oldest first (None where nothing was measured)
    trend_ms: tuple[float | None, ...]
    probe_age_s: float | None = None
    #: the probes' last full and resumed handshakes (None: not measured)
    handshake_ms: float | None = None
    resumed_ms: float | None = None


@dataclass(frozen=True, slots=True)
class Recommendation:
    group: str
    upstream: str
    transport: str
    reference: str
    basis: str
    upstream_p90_ms: float
    reference_p90_ms: float
    faster_by_ms: float
    samples: int
    reference_samples: int
    text: str


@dataclass(frozen=True, slots=True)
class MonitorView:
    version: str
    uptime_seconds: float | None
    queries: int
    window: str
    upstreams: tuple[UpstreamLine, ...]
    recommendation: Recommendation | None
    #: the top of the sparklines' common scale
    trend_top_ms: float | None = None
    groups: tuple[str, ...] = field(default=())


# --- reading one upstream's entry -----------------------------------------------------------------


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _count(value: Any) -> int:
    number = _number(value)
    return max(0, int(number)) if number is not None else 0


def percentile(values: Sequence[float], pct: float) -> float | None:
    """Linear interpolation between ranks (as `stubby-py bench` and `stats` compute it)."""
    ordered = sorted(values)
    if not ordered:
        return None
    position = (len(ordered) - 1) * pct / 100.0
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _figures(basis: str, block: Any) -> Figures | None:
    if not isinstance(block, Mapping):
        return None
    samples = _count(block.get("samples"))
    p50, p90, p99 = (_number(block.get(k)) for k in ("p50_ms", "p90_ms", "p99_ms"))
    if samples == 0 or p90 is None:
        return None
    return Figures(basis, p50, p90, p99, samples)


def _answers(upstream: Mapping[str, Any]) -> Figures | None:
    raw = upstream.get("latencies_ms")
    if isinstance(raw, list) and raw:
        values = [v for v in (_number(x) for x in raw) if v is not None]
        if values:
            p50, p90, p99 = (percentile(values, p) for p in (50, 90, 99))
            return Figures("answers", p50, p90, p99, len(values))
    summary = upstream.get("latency_ms")
    if isinstance(summary, Mapping):
        samples = _count(summary.get("samples"))
        p50, p90, p99 = (_number(summary.get(k)) for k in ("p50", "p90", "p99"))
        if samples and p90 is not None:
            return Figures("answers", p50, p90, p99, samples)
    return None


def _window(upstream: Mapping[str, Any], name: str) -> Mapping[str, Any] | None:
    windows = upstream.get("windows")
    if not isinstance(windows, Mapping):
        return None
    block = windows.get(name)
    return block if isinstance(block, Mapping) else None


def sources(upstream: Mapping[str, Any], window: str = DEFAULT_WINDOW) -> tuple[Figures, ...]:
    """The latency figures the entry carries, in preference order: window, probes, answers."""
    found = (
        _figures(window, _window(upstream, window)),
        _figures("probe", upstream.get("probe")),
        _answers(upstream),
    )
    return tuple(f for f in found if f is not None)


def _key(upstream: Mapping[str, Any]) -> tuple[str, str]:
    return str(upstream.get("group", "default")), str(upstream.get("name", "?"))


def _upstreams(snapshot: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    entries = snapshot.get("upstreams")
    if not isinstance(entries, list):
        return []
    return [u for u in entries if isinstance(u, Mapping)]


# --- across snapshots -----------------------------------------------------------------------------


def _recent(
    upstream: Mapping[str, Any],
    earlier: Sequence[Mapping[str, Any]],
    now: float | None,
    rule: Rule,
) -> tuple[int, float]:
    """Failures and outage seconds within the recent span (see the module's note)."""
    five = _window(upstream, "5m")
    if five is not None:
        return _count(five.get("failures")), _number(five.get("outage_seconds")) or 0.0
    failures = _count(upstream.get("failures"))
    if now is not None:
        # the oldest earlier snapshot still inside the span, if the snapshots reach back that far
        covered = [
            s
            for s in earlier
            if (_number(s.get("uptime_seconds")) or 0.0) <= now - rule.recent_seconds
        ]
        if covered:
            then = covered[-1]
            before = next((u for u in _upstreams(then) if _key(u) == _key(upstream)), None)
            if before is not None:
                return max(0, failures - _count(before.get("failures"))), 0.0
    return failures, 0.0


def _trend(
    upstream: Mapping[str, Any], earlier: Sequence[Mapping[str, Any]], window: str
) -> tuple[float | None, ...]:
    block = _window(upstream, window)
    series = block.get("series_ms") if block is not None else None
    if isinstance(series, list) and series:
        return tuple(_number(v) for v in series)[-SPARK_WIDTH:]
    points: list[float | None] = []
    for snapshot in earlier:
        before = next((u for u in _upstreams(snapshot) if _key(u) == _key(upstream)), None)
        points.append(_number(before.get("latency_ewma_ms")) if before is not None else None)
    points.append(_number(upstream.get("latency_ewma_ms")))
    return tuple(points[-SPARK_WIDTH:])


def sparkline(values: Sequence[float | None], top: float | None) -> str:
    """One character per value on a common scale from 0 to `top`; a space where None."""
    if not top or top <= 0:
        return "".join(" " if v is None else SPARK_BLOCKS[0] for v in values)
    out = []
    for value in values:
        if value is None:
            out.append(" ")
            continue
        level = round(min(max(value, 0.0), top) / top * (len(SPARK_BLOCKS) - 1))
        out.append(SPARK_BLOCKS[level])
    return "".join(out)


def _shares(entries: Sequence[Mapping[str, Any]]) -> list[float | None]:
    totals: dict[str, int] = {}
    for u in entries:
        totals[_key(u)[0]] = totals.get(_key(u)[0], 0) + _count(u.get("queries"))
    shares: list[float | None] = []
    for u in entries:
        given = _number(u.get("share"))
        total = totals[_key(u)[0]]
        shares.append(
            given if given is not None else (_count(u.get("queries")) / total if total else None)
        )
    return shares


def _optional_count(value: Any) -> int | None:
    number = _number(value)
    return int(number) if number is not None else None


def _line(
    upstream: Mapping[str, Any],
    share: float | None,
    earlier: Sequence[Mapping[str, Any]],
    now: float | None,
    window: str,
    rule: Rule,
) -> UpstreamLine:
    found = sources(upstream, window)
    recent_failures, recent_outage = _recent(upstream, earlier, now, rule)
    chosen = _window(upstream, window)
    kinds = (chosen if chosen is not None else upstream).get("failure_kinds")
    probe = upstream.get("probe")
    group, name = _key(upstream)
    return UpstreamLine(
        group=group,
        name=name,
        transport=str(upstream.get("transport", "?")),
        state=str(upstream.get("state", "?")),
        latency=found[0] if found else NO_FIGURES,
        sources=found,
        queries=_count(upstream.get("queries")),
        failures=_count(chosen.get("failures"))
        if chosen is not None
        else _count(upstream.get("failures")),
        failure_kinds=(
            {str(k): _count(v) for k, v in kinds.items()} if isinstance(kinds, Mapping) else {}
        ),
        share=share,
        hedged=_optional_count(upstream.get("hedged")),
        hedge_wins=_optional_count(upstream.get("hedge_wins")),
        recent_failures=recent_failures,
        recent_outage_s=recent_outage,
        outage_s=_number(chosen.get("outage_seconds")) if chosen is not None else None,
        trend_ms=_trend(upstream, earlier, window),
        probe_age_s=_number(probe.get("last_probe_age_s")) if isinstance(probe, Mapping) else None,
        handshake_ms=_number(probe.get("handshake_ms")) if isinstance(probe, Mapping) else None,
        resumed_ms=_number(probe.get("resumed_ms")) if isinstance(probe, Mapping) else None,
    )


# --- the recommendation ---------------------------------------------------------------------------


def _eligible(line: UpstreamLine) -> bool:
    return (
        line.state == "up"
        and line.recent_failures == 0
        and line.recent_outage_s == 0
        and not line.outage_s
    )


def _common(a: UpstreamLine, b: UpstreamLine, rule: Rule) -> tuple[Figures, Figures] | None:
    """The first basis (in preference order) on which both have enough samples."""
    for mine in a.sources:
        theirs = next((f for f in b.sources if f.basis == mine.basis), None)
        if theirs is not None and min(mine.samples, theirs.samples) >= rule.min_samples:
            return mine, theirs
    return None


def _against(
    candidate: UpstreamLine, first: UpstreamLine, rule: Rule, groups: int
) -> Recommendation | None:
    pair = _common(candidate, first, rule)
    if pair is None or not _eligible(candidate):
        return None
    mine, theirs = pair
    assert mine.p90_ms is not None and theirs.p90_ms is not None  # _figures requires p90
    gain = theirs.p90_ms - mine.p90_ms
    if gain < rule.min_gain_ms or gain < rule.min_gain_ratio * theirs.p90_ms:
        return None
    where = f" in group {first.group}" if groups > 1 else ""
    text = (
        f"{candidate.name} answers {gain:.0f} ms faster at p90 than your first upstream"
        f"{where} ({first.name}) {BASIS_TEXT.get(mine.basis, mine.basis)}: "
        f"{mine.p90_ms:.1f} against {theirs.p90_ms:.1f} ms, "
        f"{mine.samples} and {theirs.samples} samples"
    )
    return Recommendation(
        group=candidate.group, upstream=candidate.name, transport=candidate.transport,
        reference=first.name, basis=mine.basis, upstream_p90_ms=mine.p90_ms,
        reference_p90_ms=theirs.p90_ms, faster_by_ms=round(gain, 3), samples=mine.samples,
        reference_samples=theirs.samples, text=text,
    )  # fmt: skip


def recommend(lines: Sequence[UpstreamLine], rule: Rule = Rule()) -> Recommendation | None:
    """The upstream that beats its group's first upstream by the most, under `rule`; or None."""
    groups: dict[str, list[UpstreamLine]] = {}
    for line in lines:
        groups.setdefault(line.group, []).append(line)
    found = [
        rec
        for members in groups.values()
        for candidate in members[1:]
        if (rec := _against(candidate, members[0], rule, len(groups))) is not None
    ]
    return max(found, key=lambda r: r.faster_by_ms, default=None)


# --- the whole view -------------------------------------------------------------------------------


def build(
    snapshot: Mapping[str, Any],
    earlier: Sequence[Mapping[str, Any]] = (),
    window: str = DEFAULT_WINDOW,
    rule: Rule = Rule(),
) -> MonitorView:
    """The view of `snapshot`, with `earlier` snapshots (oldest first) for trends and recency."""
    if window not in WINDOWS:
        raise ValueError(f"unknown window {window!r}; expected one of {', '.join(WINDOWS)}")
    entries = _upstreams(snapshot)
    now = _number(snapshot.get("uptime_seconds"))
    lines = tuple(
        _line(u, share, earlier, now, window, rule)
        for u, share in zip(entries, _shares(entries), strict=True)
    )
    tops = [v for line in lines for v in line.trend_ms if v is not None]
    return MonitorView(
        version=str(snapshot.get("version", "?")),
        uptime_seconds=now,
        queries=_count(snapshot.get("queries")),
        window=window,
        upstreams=lines,
        recommendation=recommend(lines, rule),
        trend_top_ms=max(tops) if tops else None,
        groups=tuple(dict.fromkeys(line.group for line in lines)),
    )


def as_json(view: MonitorView) -> dict[str, Any]:
    """The view as `monitor --once --format json` prints it."""
    upstreams = []
    for line in view.upstreams:
        entry = asdict(line)
        entry["latency"] = asdict(line.latency)
        entry["sources"] = [asdict(f) for f in line.sources]
        entry["trend_ms"] = list(line.trend_ms)
        entry["sparkline"] = sparkline(line.trend_ms, view.trend_top_ms)
        upstreams.append(entry)
    recommendation = asdict(view.recommendation) if view.recommendation is not None else None
    return {
        "version": view.version,
        "uptime_seconds": view.uptime_seconds,
        "queries": view.queries,
        "window": view.window,
        "trend_top_ms": view.trend_top_ms,
        "upstreams": upstreams,
        "recommendation": recommendation,
    }
