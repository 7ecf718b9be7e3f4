"""`stubby-py monitor`: the view model on stats documents of both shapes (today's, and one with
the rolling windows, probes and hedge counts), the recommendation rule's edges, then a real daemon
over DoT, DoH and DoQ upstreams with injected delays (60, 30, 5 ms): `monitor --once --format
json` names the fastest, and the live view (in a pseudo-terminal) draws every upstream, stops on
Ctrl-C and says so when the daemon goes away."""

from __future__ import annotations

import fcntl
import io
import json
import os
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Iterator, Mapping
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
import trustme
from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console

from stubby_py.commands import cli, monitor
from stubby_py.core import monitor_view
from stubby_py.core.errors import StubbyError
from stubby_py.core.monitor_view import Rule
from tests.conftest import dot_uri, server_context
from tests.daemon_thread import DaemonThread, make_config, running_daemon
from tests.servers import doq_server, h2_server, local_upstream, write_cert_files
from tests.service import ask, wait_for

pytestmark = pytest.mark.timeout(60)
Capture = pytest.CaptureFixture[str]


# --- stats documents ------------------------------------------------------------------------------


def today(name: str, p90: float | None, samples: int, **extra: Any) -> dict[str, Any]:
    """An upstreams[] entry as `stats --json` has it today."""
    latency = {"p50": None if p90 is None else p90 * 0.7, "p90": p90, "p99": None, "samples": 0}
    if p90 is not None:
        latency.update(p99=p90 * 1.4, samples=samples)
    entry: dict[str, Any] = {
        "group": "default", "name": name, "transport": name.split(":")[0], "queries": samples,
        "failures": 0, "failure_kinds": {}, "handshakes": 1, "state": "up",
        "latency_ewma_ms": p90, "latency_ms": latency,
    }  # fmt: skip
    entry.update(extra)
    return entry


def window(p90: float, samples: int, **extra: Any) -> dict[str, Any]:
    block: dict[str, Any] = {
        "p50_ms": p90 * 0.7, "p90_ms": p90, "p99_ms": p90 * 1.5, "samples": samples,
        "failures": 0, "failure_kinds": {}, "outage_seconds": 0.0,
        "series_ms": [p90 * 0.7, None, p90 * 0.6],
    }  # fmt: skip
    block.update(extra)
    return block


def future(name: str, p90: float, samples: int, **extra: Any) -> dict[str, Any]:
    """An entry with the coming fields: probe, windows, hedges and share."""
    entry = today(name, None, 0)
    entry.update(
        probe={
            "p50_ms": p90 * 0.7, "p90_ms": p90, "p99_ms": p90 * 1.2, "samples": samples,
            "failures": 0, "last_ms": p90 * 0.7, "handshake_ms": 3 * p90, "resumed_ms": 2 * p90,
            "last_probe_age_s": 4.0,
        },
        windows={
            "5m": window(p90, samples // 4), "1h": window(p90, samples),
            "24h": window(p90, samples),
        },
        hedged=3, hedge_wins=1, share=0.25,
    )  # fmt: skip
    entry.update(extra)
    return entry


def document(*upstreams: Mapping[str, Any], uptime: float = 100.0) -> dict[str, Any]:
    return {
        "version": "0.1.0",
        "uptime_seconds": uptime,
        "queries": 500,
        "upstreams": list(upstreams),
    }


FIRST, FAST, MIDDLE = (
    "tls://192.0.2.1:853#a.test",
    "quic://192.0.2.2:853#b.test",
    "https://c.test/q",
)


# --- the view model -------------------------------------------------------------------------------


def test_today_shape_recommends_the_fastest_with_enough_evidence() -> None:
    view = monitor_view.build(
        document(today(FIRST, 40.0, 30), today(MIDDLE, 20.0, 30), today(FAST, 6.0, 30))
    )
    rec = view.recommendation
    assert rec is not None and rec.upstream == FAST and rec.reference == FIRST
    assert rec.basis == "answers" and rec.faster_by_ms == 34.0
    assert f"{FAST} answers 34 ms faster at p90 than your first upstream ({FIRST})" in rec.text
    assert [line.share for line in view.upstreams] == pytest.approx([1 / 3] * 3)
    assert [line.latency.samples for line in view.upstreams] == [30, 30, 30]
    assert all(line.hedged is None for line in view.upstreams)
    document_json = monitor_view.as_json(view)
    assert json.loads(json.dumps(document_json))["recommendation"]["upstream"] == FAST


def test_raw_latencies_are_read_too() -> None:
    raw = {"group": "default", "name": FAST, "latencies_ms": [float(v) for v in range(1, 41)]}
    (line,) = monitor_view.build(document(raw)).upstreams
    assert line.latency.samples == 40 and line.latency.p50_ms == pytest.approx(20.5)


@pytest.mark.parametrize(
    ("candidate", "why"),
    [
        (today(FAST, 6.0, 19), "too few samples"),
        (today(FAST, 36.0, 30), "4 ms is under the minimum gain"),
        (today(FAST, 6.0, 30, state="down"), "down"),
        (today(FAST, 6.0, 30, failures=1), "a failure, and no window to tell when"),
    ],
)
def test_no_recommendation_without_enough_evidence(candidate: dict[str, Any], why: str) -> None:
    view = monitor_view.build(document(today(FIRST, 40.0, 30), candidate))
    assert view.recommendation is None, why


def test_the_gain_must_also_be_a_share_of_the_first() -> None:
    slow = document(today(FIRST, 120.0, 30), today(FAST, 113.0, 30))  # 7 ms, but under 10 %
    assert monitor_view.build(slow).recommendation is None
    assert monitor_view.build(slow, rule=Rule(min_gain_ratio=0.05)).recommendation is not None


def test_old_failures_count_only_once_the_snapshots_reach_back_far_enough() -> None:
    now = document(today(FIRST, 40.0, 30), today(FAST, 6.0, 30, failures=2), uptime=1000.0)
    old = document(today(FIRST, 40.0, 30), today(FAST, 6.0, 30, failures=2), uptime=600.0)
    recent = document(today(FIRST, 40.0, 30), today(FAST, 6.0, 30, failures=2), uptime=650.0)
    assert monitor_view.build(now, [old]).recommendation is not None  # none in the last 300 s
    assert monitor_view.build(now, [old, recent]).recommendation is not None
    fresh = document(today(FIRST, 40.0, 30), today(FAST, 6.0, 30, failures=1), uptime=600.0)
    assert monitor_view.build(now, [fresh]).recommendation is None  # one more since 600 s
    # snapshots that do not reach 300 s back: every failure counts
    assert monitor_view.build(now, [document(uptime=900.0)]).recommendation is None


def test_coming_fields_are_used_when_present() -> None:
    view = monitor_view.build(
        document(future(FIRST, 40.0, 400), future(MIDDLE, 30.0, 400), future(FAST, 31.0, 400))
    )
    rec = view.recommendation
    assert rec is not None and rec.upstream == MIDDLE and rec.basis == "1h"
    assert "answers 10 ms faster at p90 than your first upstream" in rec.text
    assert rec.text.split(": ")[0].endswith("over the last hour")
    line = view.upstreams[0]
    assert (line.share, line.hedged, line.hedge_wins, line.probe_age_s) == (0.25, 3, 1, 4.0)
    assert line.trend_ms == (28.0, None, 24.0)
    assert (line.handshake_ms, line.resumed_ms) == (120.0, 80.0)
    drawn = io.StringIO()
    Console(file=drawn, width=240).print(monitor.render(view))
    assert "handshake/resumed" in drawn.getvalue() and "120.0/80.0" in drawn.getvalue()
    spark = monitor_view.sparkline(line.trend_ms, view.trend_top_ms)
    assert len(spark) == 3 and spark[1] == " " and spark[0] in monitor_view.SPARK_BLOCKS
    assert [f.basis for f in line.sources] == ["1h", "probe"]
    assert (
        monitor_view.build(document(future(FIRST, 40.0, 400)), window="5m")
        .upstreams[0]
        .latency.samples
        == 100
    )


@pytest.mark.parametrize(
    "trouble",
    [
        {"5m": window(30.0, 100, failures=1)},
        {"5m": window(30.0, 100, outage_seconds=12.0)},
        {"1h": window(30.0, 400, outage_seconds=40.0)},
    ],
)
def test_recent_failures_or_outages_rule_an_upstream_out(trouble: dict[str, Any]) -> None:
    candidate = future(FAST, 30.0, 400)
    candidate["windows"] = {**candidate["windows"], **trouble}
    assert monitor_view.build(document(future(FIRST, 40.0, 400), candidate)).recommendation is None


def test_a_short_window_falls_back_to_the_probes_and_never_mixes_bases() -> None:
    first, fast = future(FIRST, 40.0, 400), future(FAST, 20.0, 400)
    fast["windows"]["1h"] = window(20.0, 5)  # too few in the window: the probes decide
    rec = monitor_view.build(document(first, fast)).recommendation
    assert rec is not None and rec.basis == "probe" and "in background probes" in rec.text
    # the first upstream known only from its answers, the other only from probes: no common basis
    only_probe = future(FAST, 5.0, 400)
    del only_probe["windows"]
    assert monitor_view.build(document(today(FIRST, 40.0, 64), only_probe)).recommendation is None


def test_groups_are_compared_within_themselves() -> None:
    other = [
        today("tls://192.0.2.9:853#x.test", 80.0, 30, group="corp"),
        today(FIRST, 9.0, 30, group="corp"),
    ]
    view = monitor_view.build(document(today(FAST, 50.0, 30), today(MIDDLE, 45.0, 30), *other))
    rec = view.recommendation
    assert rec is not None and rec.group == "corp" and rec.upstream == FIRST
    assert "than your first upstream in group corp" in rec.text


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4)
    ),
    max_leaves=12,
)
KEYS = st.sampled_from(
    ["group", "name", "transport", "queries", "failures", "failure_kinds", "state", "share",
     "latency_ewma_ms", "latency_ms", "latencies_ms", "probe", "windows", "hedged", "hedge_wins"]
)  # fmt: skip
ENTRIES = st.dictionaries(KEYS, JSON_VALUES, max_size=8) | st.builds(
    future, st.sampled_from([FIRST, FAST]), st.floats(0.0, 1e4), st.integers(0, 10**6)
)


@settings(max_examples=200, deadline=None)
@given(
    entries=st.lists(ENTRIES, max_size=4),
    earlier=st.lists(
        st.dictionaries(st.sampled_from(["uptime_seconds", "upstreams"]), JSON_VALUES), max_size=3
    ),
    uptime=JSON_VALUES,
)
def test_any_document_shape_gives_a_view(
    entries: list[dict[str, Any]], earlier: list[dict[str, Any]], uptime: Any
) -> None:
    """A daemon older or newer than this command, or one with odd figures, never crashes it."""
    snapshot = {"version": "x", "uptime_seconds": uptime, "upstreams": entries}
    view = monitor_view.build(snapshot, earlier)
    json.dumps(monitor_view.as_json(view), allow_nan=False)
    monitor.render(view)
    assert len(view.upstreams) == len(entries)


def test_sparkline_scale() -> None:
    assert monitor_view.sparkline([0.0, 5.0, 10.0, None], 10.0) == "▁▅█ "
    assert monitor_view.sparkline([None, 3.0], None) == " ▁"


def test_render_and_watch_draw_every_upstream_and_the_trend() -> None:
    snapshots = [
        document(today(FIRST, 40.0 + i, 30), today(FAST, 6.0, 30), uptime=100.0 + i)
        for i in range(4)
    ]
    fed = iter(snapshots)
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=220)
    assert monitor.watch(lambda: next(fed), console, interval=0.01, frames=4) == 0
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out.getvalue())
    assert FIRST in text and FAST in text
    assert f"→ {FAST} answers" in text
    # names are shown as they are, never read as rich markup
    odd = "tls://[bold]x[/italic]:853#a.test"
    markup = io.StringIO()
    Console(file=markup, width=220).print(
        monitor.render(monitor_view.build(document(today(odd, 9.0, 3))))
    )
    assert odd in markup.getvalue()
    last = monitor_view.build(snapshots[-1], snapshots[:-1])
    assert len(last.upstreams[0].trend_ms) == 4  # one point per snapshot, the EWMA's
    assert monitor_view.sparkline(last.upstreams[0].trend_ms, last.trend_top_ms) in text


def test_a_daemon_that_goes_away_mid_watch_is_a_clear_error() -> None:
    calls = iter([document(today(FIRST, 40.0, 30))])

    def fetch() -> Mapping[str, Any]:
        try:
            return next(calls)
        except StopIteration:
            raise StubbyError("no daemon answers on /x") from None

    console = Console(file=io.StringIO(), force_terminal=True)
    with pytest.raises(StubbyError, match="the daemon went away: no daemon answers"):
        monitor.watch(fetch, console, interval=0.01, frames=5)


# --- a real daemon ------------------------------------------------------------------------------

#: wide apart, so that a loaded machine does not reorder them at p90
DELAYS = {"dot": 0.060, "doh": 0.030, "doq": 0.005}


class Setup:
    def __init__(self, daemon: DaemonThread, socket_path: str, uris: dict[str, str]) -> None:
        self.daemon, self.socket, self.uris = daemon, socket_path, uris


@pytest.fixture(scope="module")
def watched(
    ca: trustme.CA, ca_file: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Setup]:
    """DoT (60 ms), DoH (30 ms), DoQ (5 ms), the slowest first; round_robin, so client traffic
    reaches each; 90 client queries for distinct names (no cache hits)."""
    directory = tmp_path_factory.mktemp("monitor")
    cert, key = write_cert_files(ca, str(directory), "dns.test", "127.0.0.1")
    with ExitStack() as stack:
        dot = stack.enter_context(local_upstream(server_context(ca)))
        doh = stack.enter_context(h2_server(server_context(ca)))
        doq = stack.enter_context(doq_server(cert, key))
        for server, kind in ((dot, "dot"), (doh, "doh"), (doq, "doq")):
            server.state.delay = DELAYS[kind]
        uris = {
            "dot": dot_uri(dot),
            "doh": f"https://127.0.0.1:{doh.port}/dns-query",
            "doq": f"quic://127.0.0.1:{doq.port}#dns.test",
        }
        socket_path = str(directory / "control.sock")
        config = make_config(
            list(uris.values()), ca_file, strategy="round_robin", hedge=False,
            control_socket=socket_path,
        )  # fmt: skip
        daemon = stack.enter_context(running_daemon(config))
        # the names the daemon gives them (a DoH upstream's name leaves out the path)
        transports = daemon.resolver.groups["default"].transports
        uris = {kind: transports[i].name for i, kind in enumerate(uris)}
        for i in range(90):
            assert ask(daemon.port, f"n{i}.monitor.test").answer
        yield Setup(daemon, socket_path, uris)


def test_once_json_names_the_fastest(watched: Setup, capsys: Capture) -> None:
    code = cli.main(["monitor", "--once", "--format", "json", "--socket", watched.socket])
    out, err = capsys.readouterr()
    assert code == 0, err
    snapshot = json.loads(out)
    names = [u["name"] for u in snapshot["upstreams"]]
    assert names == list(watched.uris.values())
    assert all(
        u["latency"]["samples"] >= 20 and u["latency"]["basis"] for u in snapshot["upstreams"]
    )
    rec = snapshot["recommendation"]
    assert rec["upstream"] == watched.uris["doq"] and rec["reference"] == watched.uris["dot"]
    assert rec["faster_by_ms"] >= (DELAYS["dot"] - DELAYS["doq"]) * 1000 * 0.5
    code = cli.main(["monitor", "--once", "--socket", watched.socket])
    table = capsys.readouterr().out
    assert code == 0 and all(uri in table for uri in watched.uris.values())
    assert f"→ {watched.uris['doq']} answers" in table


def test_no_daemon_is_a_clear_error(tmp_path: Path, capsys: Capture) -> None:
    code = cli.main(["monitor", "--once", "--socket", str(tmp_path / "none.sock")])
    assert code == 2 and "no daemon answers on" in capsys.readouterr().err


class Terminal:
    """`stubby-py monitor ...` in a pseudo-terminal 220 columns wide; what it draws, collected."""

    def __init__(self, *args: str) -> None:
        self.master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 60, 220, 0, 0))
        env = {**os.environ, "COLUMNS": "220", "LINES": "60", "TERM": "xterm-256color"}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "stubby_py", "monitor", *args],
            stdin=slave, stdout=slave, stderr=slave, env=env, close_fds=True,
        )  # fmt: skip
        os.close(slave)
        self.data = b""

    def read_until(self, done: Any, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while not done(self.text()) and (left := deadline - time.monotonic()) > 0:
            ready, _, _ = select.select([self.master], [], [], min(left, 0.2))
            if ready:
                try:
                    chunk = os.read(self.master, 65536)
                except OSError:  # EIO: the other side is closed
                    break
                if not chunk:
                    break
                self.data += chunk
        return self.text()

    def text(self) -> str:
        return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", self.data.decode("utf-8", "replace"))

    def finish(self, timeout: float = 15.0) -> int:
        self.read_until(lambda _: self.process.poll() is not None, timeout)
        code = self.process.wait(timeout)
        self.read_until(lambda _: False, timeout)  # the rest, up to EIO: no writer is left
        os.close(self.master)
        return code


def test_live_view_draws_every_upstream(watched: Setup) -> None:
    terminal = Terminal("--socket", watched.socket, "--frames", "3", "--interval", "0.3")
    code = terminal.finish()
    text = terminal.text()
    assert code == 0, text
    for uri in watched.uris.values():
        assert uri in text
    assert "trend" in text and f"→ {watched.uris['doq']} answers" in text
    assert "Traceback" not in text


def test_ctrl_c_quits_cleanly(watched: Setup) -> None:
    terminal = Terminal("--socket", watched.socket)
    assert watched.uris["doq"] in terminal.read_until(lambda t: watched.uris["doq"] in t, 15)
    terminal.process.send_signal(signal.SIGINT)
    code = terminal.finish()
    assert code == 0 and "Traceback" not in terminal.text()


def test_daemon_going_away_ends_the_view_with_a_message(
    ca: trustme.CA, ca_file: str, tmp_path: Path
) -> None:
    socket_path = str(tmp_path / "control.sock")
    with local_upstream(server_context(ca)) as server:
        config = make_config([dot_uri(server)], ca_file, control_socket=socket_path)
        daemon = DaemonThread(config).start()
        terminal = Terminal("--socket", socket_path, "--interval", "0.2")
        try:
            assert "upstream" in terminal.read_until(lambda t: dot_uri(server) in t, 15)
        finally:
            daemon.stop()
        assert wait_for(lambda: terminal.process.poll() is not None, 15)
        code = terminal.finish()
    text = terminal.text()
    assert code == 2, text
    assert "stubby-py: the daemon went away: no daemon answers on" in text
    assert "Traceback" not in text
