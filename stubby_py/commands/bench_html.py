"""`stubby-py bench --html FILE`: the run as one self-contained HTML page.

`render` is pure (results, run figures, where it was measured → the page's text): inline CSS,
inline SVG charts, no script, no font, no image, no link to anything, so it opens offline in any
browser and can be mailed or attached to a bug report as it is. Per phase (whatever phases the
results carry), one chart: per upstream a row on a logarithmic millisecond scale with every
sample as a dot, the box from p25 to p75, the median, and p90 and p99 marks; then the table of
every record (`benchstats.summaries`) with its failures by kind; at the top, where and when it was
measured. `where_measured` gathers that (host name, time, version, the default route); `write`
puts it together.
"""

from __future__ import annotations

import datetime
import html
import math
import platform
import socket
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields

from stubby_py import __version__
from stubby_py.core import benchstats
from stubby_py.core.benchstats import Summary, UpstreamResult
from stubby_py.core.errors import StubbyError
from stubby_py.core.latency import percentile

PHASE_TEXT = {
    "cached": "popular names the upstream has cached, on one open connection: the latency you "
    "feel day to day",
    "uncached": "a new random name each time, which the upstream has to look up",
    "handshake": "setting up a new connection (TCP+TLS, or QUIC), the query's round trip taken out",
    "resumed": "setting up a new connection with a resumed session (TLS ticket, QUIC resumption)",
}
TRANSPORT_COLOUR = {
    "dot": "#3465a4",
    "doh": "#4e9a06",
    "doh3": "#06989a",
    "doq": "#75507b",
    "udp": "#888a85",
    "tcp": "#555753",
}
#: dots drawn per row at most (evenly spaced over the sorted samples beyond that)
MAX_DOTS = 400
ROW = 26
PLOT_WIDTH = 520
#: the log scale's floor: a handshake sample can be ~0 once the round trip is taken out
FLOOR_MS = 0.01

CSS = """
:root { color-scheme: light dark; --fg: #1b1b1b; --bg: #fdfdfc; --muted: #666; --line: #d6d6d0;
  --box: rgba(90, 90, 90, .18); }
@media (prefers-color-scheme: dark) {
  :root { --fg: #e6e6e3; --bg: #1d1f21; --muted: #a0a09a; --line: #44464a;
    --box: rgba(200, 200, 200, .18); } }
body { font: 15px/1.45 system-ui, sans-serif; color: var(--fg); background: var(--bg);
  margin: 2em auto; max-width: 70em; padding: 0 1em; }
h1 { font-size: 1.5em; margin-bottom: .2em; } h2 { font-size: 1.15em; margin-top: 2em; }
.muted, figcaption { color: var(--muted); }
dl.where { display: grid; grid-template-columns: max-content auto; gap: .15em 1.2em; }
dl.where dt { color: var(--muted); } dl.where dd { margin: 0; }
code, td, .mono { font-family: ui-monospace, monospace; font-size: .92em; }
table { border-collapse: collapse; margin-top: .6em; }
th, td { padding: .2em .6em; border-bottom: 1px solid var(--line); text-align: right;
  white-space: nowrap; }
th { font-weight: 600; } th.l, td.l { text-align: left; }
tr.first td { border-top: 2px solid var(--line); }
svg { max-width: 100%; height: auto; } svg text { fill: var(--fg); font-size: 12px; }
svg .axis { stroke: var(--line); } svg .tick text { fill: var(--muted); font-size: 11px; }
svg .box { fill: var(--box); } .scroll { overflow-x: auto; } .legend span { margin-right: 1.2em; }
.swatch { display: inline-block; width: .8em; height: .8em; border-radius: 50%;
  margin-right: .3em; vertical-align: -.05em; }
"""


@dataclass(frozen=True, slots=True)
class Where:
    """Where and when a run was measured."""

    host: str
    when: str
    version: str
    network: str | None = None
    system: str | None = None


# --- the chart ------------------------------------------------------------------------------------


def _nice_steps(low: float, high: float) -> list[float]:
    """1-2-5 steps from the largest one at or below `low` to the smallest at or above `high`."""
    steps = []
    for exponent in range(math.floor(math.log10(low)) - 1, math.ceil(math.log10(high)) + 2):
        steps += [m * 10.0**exponent for m in (1, 2, 5)]
    below = [s for s in steps if s <= low * 1.000001]
    above = [s for s in steps if s >= high / 1.000001]
    start, end = (below[-1] if below else steps[0]), (above[0] if above else steps[-1])
    return [s for s in steps if start <= s <= end]


class _Scale:
    """Milliseconds → x on a log scale over the plot area."""

    def __init__(self, values_ms: Sequence[float], left: float) -> None:
        low = max(min(values_ms, default=1.0), FLOOR_MS)
        high = max(max(values_ms, default=10.0), low * 2)
        self.ticks = _nice_steps(low, high)
        self.low, self.high = math.log10(self.ticks[0]), math.log10(self.ticks[-1])
        self.left = left

    def x(self, ms: float) -> float:
        position = (math.log10(max(ms, FLOOR_MS)) - self.low) / (self.high - self.low)
        return round(self.left + min(max(position, 0.0), 1.0) * PLOT_WIDTH, 1)


def _tick_label(ms: float) -> str:
    return f"{ms:g}" if ms >= 0.01 else f"{ms:.0e}"


def _samples_ms(result: UpstreamResult, phase: str) -> list[float]:
    tally = result.tallies.get(phase)
    return sorted(s * 1000.0 for s in tally.latencies) if tally is not None else []


def _thinned(values: Sequence[float]) -> list[float]:
    if len(values) <= MAX_DOTS:
        return list(values)
    step = (len(values) - 1) / (MAX_DOTS - 1)
    return [values[round(i * step)] for i in range(MAX_DOTS)]


def _row(result: UpstreamResult, phase: str, scale: _Scale, y: float, label_x: float) -> str:
    esc = html.escape
    colour = TRANSPORT_COLOUR.get(result.transport, "#c17d11")
    tally = result.tallies[phase]
    values = _samples_ms(result, phase)
    parts = [
        f'<g class="row" data-upstream="{esc(result.upstream)}" data-phase="{esc(phase)}">',
        f'<text x="{label_x}" y="{y + 4}" text-anchor="end">{esc(result.upstream)}'
        f" ({esc(result.transport)})</text>",
    ]
    failed = tally.errors + tally.timeouts
    if not values:
        parts.append(
            f'<text x="{scale.left + 4}" y="{y + 4}" class="muted">no answer '
            f"({tally.timeouts} timeouts, {tally.errors} errors)</text></g>"
        )
        return "".join(parts)
    p25, p50, p75, p90, p99 = (percentile(values, p) for p in (25, 50, 75, 90, 99))
    summary = (
        f"{result.upstream} {phase}: p50 {p50:.1f} ms, p90 {p90:.1f} ms, p99 {p99:.1f} ms, "
        f"{len(values)} answers, {failed} failed"
    )
    parts.append(f"<title>{esc(summary)}</title>")
    parts.append(
        f'<line x1="{scale.x(values[0])}" x2="{scale.x(values[-1])}" y1="{y}" y2="{y}" '
        f'stroke="{colour}" stroke-width="1"/>'
    )
    parts.append(
        f'<rect class="box" x="{scale.x(p25)}" y="{y - 8}" '
        f'width="{max(scale.x(p75) - scale.x(p25), 1.0):.1f}" height="16" rx="2"/>'
    )
    for i, value in enumerate(_thinned(values)):
        jitter = ((i * 7) % 11 - 5) * 1.2  # spread the dots vertically, the same every time
        parts.append(
            f'<circle cx="{scale.x(value)}" cy="{y + jitter:.1f}" r="2" fill="{colour}" '
            'fill-opacity="0.45"/>'
        )
    parts.append(
        f'<line x1="{scale.x(p50)}" x2="{scale.x(p50)}" y1="{y - 9}" y2="{y + 9}" '
        f'stroke="{colour}" stroke-width="3"/>'
    )
    for mark in (p90, p99):
        parts.append(
            f'<line x1="{scale.x(mark)}" x2="{scale.x(mark)}" y1="{y - 6}" y2="{y + 6}" '
            f'stroke="{colour}" stroke-width="1.5" stroke-dasharray="2 2"/>'
        )
    note = f"{p50:.1f} ms" + (f", {failed} failed" if failed else "")
    parts.append(f'<text x="{scale.left + PLOT_WIDTH + 8}" y="{y + 4}">{esc(note)}</text></g>')
    return "".join(parts)


def chart(results: Sequence[UpstreamResult], phase: str) -> str:
    """One phase's SVG: a row per upstream that has the phase, fastest (ranked) first."""
    rows = [r for r in results if phase in r.tallies]
    longest = max((len(r.upstream) + len(r.transport) + 3 for r in rows), default=10)
    label_x = min(12 + longest * 7, 420)
    left = label_x + 12
    scale = _Scale([v for r in rows for v in _samples_ms(r, phase)], left)
    top, width = 24, left + PLOT_WIDTH + 110
    height = top + ROW * len(rows) + 34
    title = f"{phase}: latency per upstream, ms (log scale)"
    parts = [
        f'<svg class="chart" data-phase="{html.escape(phase)}" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" role="img" aria-label="{html.escape(title)}">',
        f"<title>{html.escape(title)}</title>",
    ]
    bottom = top + ROW * len(rows)
    for tick in scale.ticks:
        x = scale.x(tick)
        parts.append(
            f'<g class="tick"><line class="axis" x1="{x}" x2="{x}" y1="{top - 8}" '
            f'y2="{bottom}"/><text x="{x}" y="{bottom + 16}" text-anchor="middle">'
            f"{_tick_label(tick)}</text></g>"
        )
    parts.append(
        f'<text x="{left + PLOT_WIDTH / 2}" y="{bottom + 30}" text-anchor="middle" '
        'class="muted">ms (log scale)</text>'
    )
    for i, result in enumerate(rows):
        parts.append(_row(result, phase, scale, top + ROW * i + ROW / 2, label_x))
    parts.append("</svg>")
    return "".join(parts)


# --- the table ------------------------------------------------------------------------------------

#: the table's columns for Summary's fields: (field, heading); fields not named here follow
COLUMNS = (
    ("rank", "#"), ("upstream", "upstream"), ("transport", "transport"), ("phase", "phase"),
    ("count", "ok"), ("errors", "err"), ("timeouts", "t/o"), ("p50_ms", "p50"),
    ("p90_ms", "p90"), ("p99_ms", "p99"), ("mean_ms", "mean"), ("stdev_ms", "jitter"),
    ("min_ms", "min"), ("max_ms", "max"),
)  # fmt: skip
LEFT = {"upstream", "transport", "phase"}


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.1f}"
    return html.escape(str(value))


def table(records: Sequence[Summary], results: Sequence[UpstreamResult]) -> str:
    named = [name for name, _ in COLUMNS]
    extra = [f.name for f in fields(Summary) if f.name not in named]
    headings = [*COLUMNS, *((name, name.replace("_", " ")) for name in extra)]
    kinds = {
        (r.upstream, phase): t.failure_kinds for r in results for phase, t in r.tallies.items()
    }
    head = "".join(
        f'<th class="{"l" if name in LEFT else ""}">{html.escape(text)}</th>'
        for name, text in headings
    )
    rows = []
    previous = None
    for record in records:
        values = asdict(record)
        first = record.upstream != previous
        previous = record.upstream
        cells = "".join(
            f'<td class="{"l" if name in LEFT else ""}">{_cell(values.get(name))}</td>'
            for name, _ in headings
        )
        failed = kinds.get((record.upstream, record.phase)) or {}
        failures = ", ".join(f"{html.escape(k)} {n}" for k, n in sorted(failed.items()))
        rows.append(
            f'<tr class="{"first" if first else ""}" data-upstream="{html.escape(record.upstream)}"'
            f' data-phase="{html.escape(record.phase)}">{cells}<td class="l">{failures}</td></tr>'
        )
    return (
        f'<table class="records"><thead><tr>{head}<th class="l">failures</th></tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


# --- the page -------------------------------------------------------------------------------------


def phases_present(results: Sequence[UpstreamResult]) -> list[str]:
    """The results' phases: benchstats.PHASES' order first, then any other by name."""
    present = {phase for r in results for phase in r.tallies}
    return [p for p in benchstats.PHASES if p in present] + sorted(present - set(benchstats.PHASES))


def _where(where: Where, meta: Mapping[str, object]) -> str:
    items = [
        ("host", where.host),
        ("measured", where.when),
        ("network", where.network or "unknown"),
        ("stubby-py", where.version),
    ]
    if where.system:
        items.append(("system", where.system))
    run = ", ".join(
        f"{key.removesuffix('_s').replace('_', ' ')} {value}{' s' if key.endswith('_s') else ''}"
        for key, value in meta.items()
        if key != "records" and value is not None
    )
    if run:
        items.append(("run", run))
    return '<dl class="where">' + "".join(
        f"<dt>{html.escape(k)}</dt><dd>{html.escape(str(v))}</dd>" for k, v in items
    ) + "</dl>"  # fmt: skip


def _legend(results: Sequence[UpstreamResult]) -> str:
    transports = dict.fromkeys(r.transport for r in results)
    return '<p class="legend">' + "".join(
        f'<span><i class="swatch" style="background:{TRANSPORT_COLOUR.get(t, "#c17d11")}"></i>'
        f"{html.escape(t)}</span>"
        for t in transports
    ) + "</p>"  # fmt: skip


def _headline(records: Sequence[Summary]) -> str:
    ranked = [r for r in records if r.phase == benchstats.RANK_PHASE and r.p50_ms is not None]
    if not ranked:
        return "<p>No upstream answered in the cached phase.</p>"
    best = ranked[0]
    return (
        f"<p>Fastest for cached names: <code>{html.escape(best.upstream)}</code> "
        f"({html.escape(best.transport)}), median {best.p50_ms:.1f} ms, "
        f"p90 {_cell(best.p90_ms)} ms over {best.count} answers.</p>"
    )


def render(results: Sequence[UpstreamResult], meta: Mapping[str, object], where: Where) -> str:
    """The whole page."""
    ordered = benchstats.ranked(results)
    records = benchstats.summaries(results)
    title = f"stubby-py bench, {where.host}, {where.when}"
    sections = []
    for phase in phases_present(ordered):
        text = PHASE_TEXT.get(phase, "")
        sections.append(
            f'<section class="phase" id="phase-{html.escape(phase)}"><h2>{html.escape(phase)}</h2>'
            f"<figure>{chart(ordered, phase)}<figcaption>{html.escape(text)}"
            "</figcaption></figure></section>"
        )
    stopped = meta.get("stopped_by")
    partial = (
        f'<p class="muted">Stopped early ({html.escape(str(stopped))}): partial results.</p>'
        if stopped
        else ""
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"/>'
        '<meta name="viewport" content="width=device-width, initial-scale=1"/>'
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>"
        f"<header><h1>stubby-py bench</h1>{_where(where, meta)}</header>"
        f"{_headline(records)}{partial}{_legend(ordered)}"
        '<p class="muted">Each dot is one answer; the shaded box spans p25 to p75, the thick '
        "mark is the median, the dashed marks p90 and p99. Failures (timeouts, errors) are "
        "counted in the table, never drawn as latencies.</p>"
        f"{''.join(sections)}"
        f'<section id="table"><h2>every figure</h2><div class="scroll">{table(records, ordered)}'
        "</div>"
        '<p class="muted">latencies in ms; jitter = standard deviation; ranked by cached p50'
        "</p></section>"
        f'<footer class="muted"><p>stubby-py {html.escape(where.version)}</p></footer>'
        "</body></html>\n"
    )


# --- the edge: where it was measured, and the file ------------------------------------------------


def default_route(route_table: str) -> str | None:
    """The IPv4 default route in /proc/net/route's text, as "via GATEWAY on DEVICE"."""
    for line in route_table.splitlines()[1:]:
        cells = line.split()
        if len(cells) < 3 or cells[1] != "00000000":
            continue
        gateway = socket.inet_ntoa(int(cells[2], 16).to_bytes(4, "little"))
        return f"default route via {gateway} on {cells[0]}"
    return None


def where_measured() -> Where:
    network = None
    try:
        with open("/proc/net/route", encoding="ascii") as handle:
            network = default_route(handle.read())
    except (OSError, ValueError):
        pass
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    system = f"{platform.system()} {platform.release()}, Python {sys.version.split()[0]}"
    return Where(socket.gethostname(), when, __version__, network, system)


def write(path: str, results: Sequence[UpstreamResult], meta: Mapping[str, object]) -> None:
    """Render the report to `path` and say so on stderr."""
    page = render(results, meta, where_measured())
    try:
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(page)
    except OSError as exc:
        raise StubbyError(f"--html {path}: {exc.strerror or exc}") from None
    print(f"report written to {path}", file=sys.stderr)
