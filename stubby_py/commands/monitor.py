"""`stubby-py monitor`: the running daemon's upstreams, live in the terminal (or one snapshot).

Each second it asks the daemon for its stats (over the control socket, as `stubby-py stats`),
turns them and the snapshots before them into a view (core/monitor_view.py: percentiles, trend,
shares, the recommendation) and draws that with rich. `--once` prints one snapshot, as a table
or (`--format json`) as JSON with a `recommendation` object (null when there is none).

rich draws the live table: it redraws in place, follows the terminal's width, degrades to plain
text when the output is not a terminal, and restores the cursor on exit — work a hand-written
ANSI renderer would have to redo.
"""

from __future__ import annotations

import argparse
import collections
import io
import json
import shutil
import sys
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from stubby_py.core import monitor_view
from stubby_py.core.errors import StubbyError
from stubby_py.core.monitor_view import MonitorView, UpstreamLine

if TYPE_CHECKING:
    from rich.console import Console, RenderableType
    from rich.text import Text

Fetch = Callable[[], Mapping[str, Any]]
#: snapshots kept for trends and recency: a little over RECENT_SECONDS at one a second
HISTORY = 400
EXIT_INTERRUPTED = 130


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--once", action="store_true", help="print one snapshot and exit")
    parser.add_argument(
        "--format", choices=("table", "json"), default="table",
        help="with --once: a table (default) or JSON with a `recommendation` object",
    )  # fmt: skip
    parser.add_argument(
        "--window", choices=monitor_view.WINDOWS, default=monitor_view.DEFAULT_WINDOW,
        help="the daemon's rolling window to show and compare over (default: 1h; where the "
        "daemon has no windows, its recent answers are used)",
    )  # fmt: skip
    parser.add_argument(
        "--interval", type=_positive_float, default=1.0, metavar="S",
        help="seconds between refreshes (default: 1)",
    )  # fmt: skip
    parser.add_argument(
        "--frames", type=_positive_int, default=None, metavar="N",
        help="stop after N refreshes (default: run until Ctrl-C)",
    )  # fmt: skip


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected at least 1, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected more than 0, got {text}")
    return value


# --- drawing ------------------------------------------------------------------------------------


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _failures(line: UpstreamLine) -> Text:
    from rich.text import Text

    text = Text(str(line.failures), style="red" if line.recent_failures else "")
    if line.failure_kinds:
        kind, count = max(line.failure_kinds.items(), key=lambda item: item[1])
        text.append(f" {kind} x{count}", style="dim")
    if line.outage_s:
        text.append(f" outage {line.outage_s:.0f}s", style="red")
    return text


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m" if hours else f"{minutes}m {secs:02d}s"


def _hedges(line: UpstreamLine) -> str:
    if line.hedged is None:
        return "-"
    return f"{line.hedged}/{line.hedge_wins}" if line.hedge_wins is not None else str(line.hedged)


STATE_STYLE = {"up": "green", "down": "bold red"}


def render(view: MonitorView) -> RenderableType:
    """The table, and the recommendation line under it."""
    # rich is imported here, not at the top: the parser imports this module for every command
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    top = "-" if view.trend_top_ms is None else f"{view.trend_top_ms:.0f}"
    uptime = "" if view.uptime_seconds is None else f", up {_duration(view.uptime_seconds)}"
    table = Table(
        title=Text(f"stubby-py {view.version}{uptime}: {view.queries} queries"),
        caption=f"from: {view.window} = the daemon's {view.window} window, probe = its background "
        f"probes, answers = its last answers; trend: 0-{top} ms; hedges: hedged/won; "
        "Ctrl-C quits",
        expand=False,
    )  # fmt: skip
    for header, justify in (
        ("upstream", "left"), ("group", "left"), ("state", "left"), ("p50", "right"),
        ("p90", "right"), ("p99", "right"), ("n", "right"), ("from", "left"),
        ("trend", "left"), ("share", "right"), ("hedges", "right"), ("failures", "left"),
    ):  # fmt: skip
        table.add_column(header, justify=justify, no_wrap=header != "failures")  # type: ignore[arg-type]
    handshakes = any(line.handshake_ms is not None for line in view.upstreams)
    if handshakes:
        table.add_column("handshake/resumed", justify="right", no_wrap=True)
    for line in view.upstreams:
        latency = line.latency
        extra = [f"{_ms(line.handshake_ms)}/{_ms(line.resumed_ms)}"] if handshakes else []
        table.add_row(
            Text(line.name), Text(line.group),
            Text(line.state, style=STATE_STYLE.get(line.state, "yellow")),
            _ms(latency.p50_ms), _ms(latency.p90_ms), _ms(latency.p99_ms), str(latency.samples),
            latency.basis if latency.samples else "-",
            Text(monitor_view.sparkline(line.trend_ms, view.trend_top_ms), style="cyan"),
            "-" if line.share is None else f"{line.share:.0%}", _hedges(line), _failures(line),
            *extra,
        )  # fmt: skip
    if view.recommendation is not None:
        advice = Text("→ " + view.recommendation.text, style="bold green")
    else:
        advice = Text("no recommendation: not enough evidence that another upstream is faster")
    return Group(table, advice)


# --- running --------------------------------------------------------------------------------------


def snapshot_once(fetch: Fetch, window: str, output: str) -> str:
    view = monitor_view.build(fetch(), (), window)
    if output == "json":
        return json.dumps(monitor_view.as_json(view), indent=2) + "\n"
    from rich.console import Console

    width = shutil.get_terminal_size((160, 24)).columns if sys.stdout.isatty() else 160
    out = io.StringIO()
    Console(file=out, width=width, color_system=None).print(render(view))
    return out.getvalue()


def watch(
    fetch: Fetch,
    console: Console,
    *,
    window: str = monitor_view.DEFAULT_WINDOW,
    interval: float = 1.0,
    frames: int | None = None,
) -> int:
    """Redraw every `interval` seconds until Ctrl-C (exit 0) or `frames` refreshes; a daemon
    that stops answering ends it with a StubbyError that says so."""
    from rich.live import Live

    history: collections.deque[Mapping[str, Any]] = collections.deque(maxlen=HISTORY)
    drawn = 0
    try:
        with Live(console=console, auto_refresh=False, transient=False) as live:
            while frames is None or drawn < frames:
                started = time.monotonic()
                snapshot = _fetch_again(fetch, drawn)
                if history and _restarted(history[-1], snapshot):
                    history.clear()
                live.update(
                    render(monitor_view.build(snapshot, list(history), window)), refresh=True
                )
                history.append(snapshot)
                drawn += 1
                if frames is None or drawn < frames:
                    time.sleep(max(0.0, interval - (time.monotonic() - started)))
    except KeyboardInterrupt:
        pass
    return 0


def _fetch_again(fetch: Fetch, drawn: int) -> Mapping[str, Any]:
    try:
        return fetch()
    except StubbyError as exc:
        if drawn == 0:
            raise
        raise StubbyError(f"the daemon went away: {exc}") from None


def _restarted(before: Mapping[str, Any], now: Mapping[str, Any]) -> bool:
    then, current = before.get("uptime_seconds"), now.get("uptime_seconds")
    return isinstance(then, int | float) and isinstance(current, int | float) and current < then


def main(args: argparse.Namespace, fetch: Fetch) -> int:
    if args.format == "json" and not args.once:
        raise StubbyError("--format json prints one snapshot: add --once")
    if args.once:
        try:
            print(snapshot_once(fetch, args.window, args.format), end="")
        except KeyboardInterrupt:
            return EXIT_INTERRUPTED
        return 0
    from rich.console import Console

    return watch(fetch, Console(), window=args.window, interval=args.interval, frames=args.frames)
