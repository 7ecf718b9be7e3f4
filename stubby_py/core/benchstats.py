"""`stubby-py bench`, the sans-IO part: the query plan, latency tallies, summaries, ranking, output.

No asyncio here: bench.py runs the plan and feeds each outcome to a `Tally`; everything printed is
computed from those tallies by the pure functions below, so a partial run (Ctrl-C, time limit)
reports exactly what was measured. Percentiles interpolate linearly between the nearest ranks
(NumPy's default, "type 7"); jitter is the sample standard deviation.
"""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields

from stubby_py.core.latency import percentile

#: phases in report order; `handshake` and `resumed` are skipped for udp:// (no connection)
PHASES = ("cached", "uncached", "handshake", "resumed", "dnssec")
#: the phases that open connections rather than ask
CONNECTION_PHASES = ("handshake", "resumed")
#: URI scheme → the transport name used by --transport and in the output
TRANSPORT_OF_SCHEME = {
    "tls": "dot",
    "https": "doh",
    "h3": "doh3",
    "quic": "doq",
    "udp": "udp",
    "tcp": "tcp",
}
#: --transport udp selects both cleartext schemes
FILTER_OF_SCHEME = {**TRANSPORT_OF_SCHEME, "tcp": "udp"}
TRANSPORT_CHOICES = ("dot", "doh", "doh3", "doq", "udp")
#: the phase the ranking sorts by (then by errors and timeouts)
RANK_PHASE = "cached"


@dataclass(slots=True)
class Tally:
    """What one upstream x phase has measured so far: latencies in seconds, failures counted."""

    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    timeouts: int = 0
    #: failures by kind (errors.UpstreamError.kind, or "rcode-SERVFAIL" …)
    failure_kinds: dict[str, int] = field(default_factory=dict)
    #: resumed phase: handshakes that did resume the session (the others count as failures of
    #: kind "not-resumed", and are not among the latencies)
    resumed: int = 0
    #: dnssec phase: answers that carried RRSIGs, and answers with AD set (the upstream
    #: validated them)
    rrsig: int = 0
    ad: int = 0

    def add(self, seconds: float) -> None:
        self.latencies.append(seconds)

    def fail(self, kind: str) -> None:
        if kind == "timeout":
            self.timeouts += 1
        else:
            self.errors += 1
        self.failure_kinds[kind] = self.failure_kinds.get(kind, 0) + 1

    @property
    def attempts(self) -> int:
        return len(self.latencies) + self.errors + self.timeouts


@dataclass(frozen=True, slots=True)
class Summary:
    """One output record: upstream x transport x phase. Milliseconds; None without samples.

    `count` is the successful samples, `errors` and `timeouts` the failed ones (never folded into
    the latencies); `rank` is the upstream's place in the ranking, 1 = fastest.
    """

    rank: int
    upstream: str
    transport: str
    phase: str
    count: int
    errors: int
    timeouts: int
    p50_ms: float | None
    p90_ms: float | None
    p99_ms: float | None
    mean_ms: float | None
    stdev_ms: float | None
    min_ms: float | None
    max_ms: float | None
    #: resumed phase: samples that resumed the session (None in other phases)
    resumed: int | None = None
    #: dnssec phase: answers with RRSIGs and with AD, of `count` (None in other phases)
    rrsig: int | None = None
    ad: int | None = None


FIELDS = tuple(f.name for f in fields(Summary))


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 3)


def summarize(rank: int, upstream: str, transport: str, phase: str, tally: Tally) -> Summary:
    ordered = sorted(tally.latencies)
    values: dict[str, float | None] = dict.fromkeys(
        ("p50_ms", "p90_ms", "p99_ms", "mean_ms", "stdev_ms", "min_ms", "max_ms")
    )
    if ordered:
        values = {
            "p50_ms": _ms(percentile(ordered, 50)),
            "p90_ms": _ms(percentile(ordered, 90)),
            "p99_ms": _ms(percentile(ordered, 99)),
            "mean_ms": _ms(statistics.fmean(ordered)),
            "stdev_ms": _ms(statistics.stdev(ordered)) if len(ordered) > 1 else 0.0,
            "min_ms": _ms(ordered[0]),
            "max_ms": _ms(ordered[-1]),
        }
    return Summary(
        rank, upstream, transport, phase, len(ordered), tally.errors, tally.timeouts, **values,
        resumed=tally.resumed if phase == "resumed" else None,
        rrsig=tally.rrsig if phase == "dnssec" else None,
        ad=tally.ad if phase == "dnssec" else None,
    )  # fmt: skip


@dataclass(slots=True)
class UpstreamResult:
    """The tallies of one upstream, by phase."""

    upstream: str
    transport: str
    tallies: dict[str, Tally]


def _rank_key(result: UpstreamResult) -> tuple[float, int, str]:
    tally = result.tallies.get(RANK_PHASE)
    ordered = sorted(tally.latencies) if tally is not None else []
    p50 = percentile(ordered, 50) if ordered else math.inf
    failures = tally.errors + tally.timeouts if tally is not None else 0
    return (p50, failures, result.upstream)


def ranked(results: Iterable[UpstreamResult]) -> list[UpstreamResult]:
    """Fastest first by cached p50; upstreams without a cached answer last."""
    return sorted(results, key=_rank_key)


def summaries(results: Iterable[UpstreamResult]) -> list[Summary]:
    """Every record, upstreams in rank order, phases in PHASES order."""
    records = []
    for rank, result in enumerate(ranked(results), start=1):
        for phase in PHASES:
            tally = result.tallies.get(phase)
            if tally is not None:
                records.append(summarize(rank, result.upstream, result.transport, phase, tally))
    return records


# --- the plan -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Job:
    """One measurement: ask upstream number `upstream` for `name` in `phase`."""

    phase: str
    upstream: int
    name: str


def warmup_plan(upstreams: int, names: Sequence[str]) -> list[Job]:
    """Each popular name once to each upstream (unmeasured), so the cached phase hits caches."""
    return [Job("warmup", u, name) for name in names for u in range(upstreams)]


def measure_plan(
    phases_of: Sequence[Sequence[str]],
    names: Sequence[str],
    queries: int,
    labels: Sequence[str],
    signed_names: Sequence[str] = (),
) -> list[Job]:
    """`queries` samples per upstream x phase, interleaved: round by round, each round every
    phase of every upstream once, the upstream order rotating so that none is always first.
    `phases_of[u]` lists upstream u's phases; `labels` are the uncached names for round i;
    `signed_names` those of the dnssec phase (default: `names`)."""
    signed = signed_names or names
    jobs = []
    count = len(phases_of)
    for round_number in range(queries):
        for phase in PHASES:
            for offset in range(count):
                u = (round_number + offset) % count
                if phase not in phases_of[u]:
                    continue
                if phase == "uncached":
                    name = labels[round_number]
                elif phase == "dnssec":
                    name = signed[round_number % len(signed)]
                else:
                    name = names[round_number % len(names)]
                jobs.append(Job(phase, u, name))
    return jobs


# --- output -------------------------------------------------------------------------------------


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def format_table(records: Sequence[Summary]) -> str:
    """Ranked, one block per upstream, one line per phase."""
    head: tuple[str, ...] = ("#", "upstream", "transport", "phase", "ok", "err", "t/o")
    head += ("p50", "p90", "p99", "mean", "jitter", "note")
    rows: list[tuple[str, ...]] = [head]
    previous = None
    for r in records:
        first = r.upstream != previous
        previous = r.upstream
        rows.append(
            (
                str(r.rank) if first else "",
                r.upstream if first else "",
                r.transport if first else "",
                r.phase,
                str(r.count),
                str(r.errors),
                str(r.timeouts),
                *(_cell(v) for v in (r.p50_ms, r.p90_ms, r.p99_ms, r.mean_ms, r.stdev_ms)),
                _note(r),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = []
    for row in rows:
        cells = [
            cell.ljust(width) if i in (1, 2, 3, len(head) - 1) else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    present = {r.phase for r in records}
    legend = [text for phase, text in PHASE_LEGEND.items() if phase in present]
    if legend:
        lines.append("; ".join(legend))
    lines.append("latencies in ms; jitter = standard deviation; ranked by cached p50")
    return "\n".join(lines) + "\n"


PHASE_LEGEND = {
    "handshake": "handshake: a new connection, full handshake",
    "resumed": "resumed: a new connection resuming the previous session",
    "dnssec": "dnssec: asked with DO (RRSIG: signatures came back, AD: the upstream validated)",
}


def _note(r: Summary) -> str:
    attempts = r.count + r.errors + r.timeouts
    if r.phase == "resumed" and r.resumed is not None:
        return f"resumed {r.resumed}/{attempts}"
    if r.phase == "dnssec" and r.rrsig is not None and r.count:
        return f"RRSIG {r.rrsig}/{r.count}, AD {r.ad}/{r.count}"
    return ""


def format_json(records: Sequence[Summary], meta: dict[str, object]) -> str:
    document = {**meta, "records": [asdict(r) for r in records]}
    return json.dumps(document, indent=2) + "\n"


def format_csv(records: Sequence[Summary]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(FIELDS)
    for r in records:
        writer.writerow(["" if v is None else v for v in asdict(r).values()])
    return out.getvalue()


def progress_text(done: int, total: int, failed: int, timeouts: int, elapsed: float) -> str:
    share = 100.0 * done / total if total else 100.0
    return (
        f"bench: {done}/{total} queries ({share:.0f}%), {failed} errors, "
        f"{timeouts} timeouts, {elapsed:.1f} s"
    )
