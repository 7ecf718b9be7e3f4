"""`stubby-py bench`: statistics and plan (sans-IO), then real runs against loopback upstreams
with known injected delays: the ranking follows the delays, cached p50 sits just above the delay,
a stalling upstream's timeouts are counted, JSON/CSV parse back, the chart is a real PNG/SVG,
and Ctrl-C prints what was measured so far."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
import trustme

from stubby_py.commands import bench, cli
from stubby_py.core import benchstats, latency
from stubby_py.core.benchstats import Job, Tally, UpstreamResult
from stubby_py.core.errors import StubbyError
from tests.conftest import dot_uri, server_context
from tests.servers import (
    LocalUpstream,
    Misbehaviour,
    doq_server,
    h2_server,
    h3_server,
    local_upstream,
    write_cert_files,
)

pytestmark = pytest.mark.timeout(30)
Capture = pytest.CaptureFixture[str]

DELAYS = (0.005, 0.020, 0.040)
#: cached p50 must lie in [delay, delay + TOLERANCE] on loopback
TOLERANCE = 0.030


# --- sans-IO ----------------------------------------------------------------------------------


def test_percentile_interpolates_like_inclusive_quantiles() -> None:
    values = sorted([3.0, 1.0, 4.0, 1.5, 9.0, 2.6, 5.0, 3.5, 8.0, 7.0, 6.5])
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    for p in (1, 10, 50, 90, 99):
        assert latency.percentile(values, p) == pytest.approx(cuts[p - 1])
    assert latency.percentile([2.0], 99) == 2.0
    with pytest.raises(ValueError):
        latency.percentile([], 50)


def test_failures_are_counted_apart_from_latencies() -> None:
    tally = Tally()
    tally.add(0.010)
    tally.add(0.030)
    tally.fail("timeout")
    tally.fail("connect-failed")
    tally.fail("rcode-SERVFAIL")
    summary = benchstats.summarize(1, "u", "dot", "cached", tally)
    assert (summary.count, summary.errors, summary.timeouts) == (2, 2, 1)
    assert summary.p50_ms == 20.0
    assert summary.mean_ms == 20.0
    assert tally.failure_kinds == {"timeout": 1, "connect-failed": 1, "rcode-SERVFAIL": 1}
    empty = benchstats.summarize(2, "v", "doq", "cached", Tally())
    assert empty.count == 0 and empty.p50_ms is None and empty.stdev_ms is None


def test_ranking_by_cached_p50_and_silent_upstreams_last() -> None:
    def result(name: str, *cached: float) -> UpstreamResult:
        tally = Tally(latencies=list(cached))
        if not cached:
            tally.fail("timeout")
        return UpstreamResult(name, "dot", {"cached": tally, "uncached": Tally()})

    results = [result("slow", 0.05, 0.06), result("dead"), result("fast", 0.01, 0.02)]
    assert [r.upstream for r in benchstats.ranked(results)] == ["fast", "slow", "dead"]
    records = benchstats.summaries(results)
    assert [(r.rank, r.upstream, r.phase) for r in records] == [
        (1, "fast", "cached"),
        (1, "fast", "uncached"),
        (2, "slow", "cached"),
        (2, "slow", "uncached"),
        (3, "dead", "cached"),
        (3, "dead", "uncached"),
    ]


def test_plan_interleaves_upstreams_and_phases() -> None:
    # the second is udp://: no handshake, no resumed phase
    phases = [benchstats.PHASES, ("cached", "uncached", "dnssec")]
    jobs = benchstats.measure_plan(
        phases, ["a.example", "b.example"], 3, ["r0", "r1", "r2"], ["signed.example"]
    )
    assert jobs[:8] == [
        Job("cached", 0, "a.example"),
        Job("cached", 1, "a.example"),
        Job("uncached", 0, "r0"),
        Job("uncached", 1, "r0"),
        Job("handshake", 0, "a.example"),
        Job("resumed", 0, "a.example"),
        Job("dnssec", 0, "signed.example"),
        Job("dnssec", 1, "signed.example"),
    ]
    # the next round starts with the other upstream
    assert jobs[8:10] == [Job("cached", 1, "b.example"), Job("cached", 0, "b.example")]
    assert len(jobs) == 3 * 8
    assert sum(j.phase in ("handshake", "resumed") and j.upstream == 1 for j in jobs) == 0
    assert benchstats.warmup_plan(2, ["x"]) == [Job("warmup", 0, "x"), Job("warmup", 1, "x")]


def test_csv_and_json_round_trip() -> None:
    tally = Tally(latencies=[0.001, 0.002, 0.004])
    records = [
        benchstats.summarize(1, "tls://127.0.0.1:853#dns.test", "dot", "cached", tally),
        benchstats.summarize(1, "tls://127.0.0.1:853#dns.test", "dot", "handshake", Tally()),
    ]
    rows = list(csv.DictReader(io.StringIO(benchstats.format_csv(records))))
    assert rows[0]["upstream"] == "tls://127.0.0.1:853#dns.test"
    assert float(rows[0]["p50_ms"]) == 2.0
    assert rows[1]["p50_ms"] == "" and rows[1]["count"] == "0"
    document = json.loads(benchstats.format_json(records, {"zone": "example.com"}))
    assert document["zone"] == "example.com"
    assert document["records"][0]["p99_ms"] == records[0].p99_ms
    assert document["records"][1]["p50_ms"] is None


# --- real runs on loopback --------------------------------------------------------------------


@pytest.fixture
def three_dot(ca: trustme.CA) -> Iterator[list[LocalUpstream]]:
    with ExitStack() as stack:
        servers = [stack.enter_context(local_upstream(server_context(ca))) for _ in DELAYS]
        for server, delay in zip(servers, DELAYS, strict=True):
            server.state.delay = delay
        yield servers


@pytest.fixture
def names_file(tmp_path: Path) -> str:
    path = tmp_path / "names.txt"
    path.write_text("# popular names\nwww.example.\nexample.org\nexample.net  # comment\n")
    return str(path)


def _bench(capsys: Capture, *args: str) -> tuple[int, str, str]:
    code = cli.main(["bench", *args])
    out, err = capsys.readouterr()
    return code, out, err


def _upstream_args(*uris: str) -> list[str]:
    return [arg for uri in uris for arg in ("--upstream", uri)]


def test_ranking_follows_injected_delays(
    three_dot: list[LocalUpstream], ca_file: str, names_file: str, capsys: Capture
) -> None:
    uris = [dot_uri(s) for s in reversed(three_dot)]  # slowest first on the command line
    args = ["--ca-file", ca_file, "--names", names_file, "--queries", "12", "--format", "json"]
    code, out, err = _bench(capsys, *args, *_upstream_args(*uris))
    assert code == 0
    assert "bench: " in err  # the progress line
    document = json.loads(out)
    assert document["stopped_by"] is None
    records = document["records"]
    cached = [r for r in records if r["phase"] == "cached"]
    assert [r["upstream"] for r in cached] == [dot_uri(s) for s in three_dot]
    assert [r["rank"] for r in cached] == [1, 2, 3]
    for record, delay in zip(cached, DELAYS, strict=True):
        assert record["count"] == 12 and record["errors"] == 0 and record["timeouts"] == 0
        assert delay * 1000 <= record["p50_ms"] <= (delay + TOLERANCE) * 1000
    uncached = [r for r in records if r["phase"] == "uncached"]
    assert all(r["count"] == 12 for r in uncached)
    handshake = [r for r in records if r["phase"] == "handshake"]
    assert all(r["count"] == 12 and r["transport"] == "dot" for r in handshake)
    # the resumed phase: every sample resumed the session, as the server saw it too
    resumed = [r for r in records if r["phase"] == "resumed"]
    assert all(r["count"] == 12 and r["resumed"] == 12 for r in resumed)
    assert all(s.state.resumptions == 12 for s in three_dot)
    dnssec = [r for r in records if r["phase"] == "dnssec"]
    assert all(r["count"] == 12 and r["rrsig"] == 0 and r["ad"] == 0 for r in dnssec)
    # one connection per handshake sample, the long-lived one, and the resumer's 1 + 12
    assert all(s.state.connections == 12 + 1 + 1 + 12 for s in three_dot)
    # the uncached names were unique random labels under the zone
    asked = {q for q in three_dot[0].state.queries}
    assert len(asked) > 12


def test_doh_doh3_and_doq_upstreams_are_measured(
    ca: trustme.CA, ca_file: str, names_file: str, tmp_path: Path, capsys: Capture
) -> None:
    cert, key = write_cert_files(ca, str(tmp_path), "dns.test", "127.0.0.1")
    with (
        h2_server(server_context(ca)) as doh,
        doq_server(cert, key) as doq,
        h3_server(cert, key) as h3,
    ):
        doh.state.delay = 0.010
        h3.state.delay = 0.020
        doq.state.delay = 0.030
        uris = [f"quic://127.0.0.1:{doq.port}#dns.test", f"https://127.0.0.1:{doh.port}/dns-query"]
        uris.append(f"h3://127.0.0.1:{h3.port}/dns-query")
        args = ["--ca-file", ca_file, "--names", names_file, "--queries", "8", "--format", "csv"]
        code, out, _ = _bench(capsys, *args, *_upstream_args(*uris))
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    cached = [r for r in rows if r["phase"] == "cached"]
    assert [r["transport"] for r in cached] == ["doh", "doh3", "doq"]
    for row, delay in zip(cached, (0.010, 0.020, 0.030), strict=True):
        assert int(row["count"]) == 8
        assert delay * 1000 <= float(row["p50_ms"]) <= (delay + TOLERANCE) * 1000
    assert {r["phase"] for r in rows} == {"cached", "uncached", "handshake", "resumed", "dnssec"}
    assert all(int(r["count"]) == 8 for r in rows)
    assert all(r["resumed"] == "8" for r in rows if r["phase"] == "resumed")
    assert doh.state.resumptions == doq.state.resumptions == h3.state.resumptions == 8


def test_stalling_upstream_timeouts_are_counted(
    three_dot: list[LocalUpstream], ca_file: str, names_file: str, capsys: Capture
) -> None:
    stalling = three_dot[0]
    stalling.state.misbehaviour = Misbehaviour.STALL
    uris = [dot_uri(s) for s in three_dot[:2]]
    args = ["--ca-file", ca_file, "--names", names_file, "--queries", "4", "--timeout", "0.25"]
    code, out, _ = _bench(capsys, *args, "--format", "json", *_upstream_args(*uris))
    assert code == 0
    records = json.loads(out)["records"]
    stalled = [r for r in records if r["upstream"] == dot_uri(stalling)]
    assert [r["rank"] for r in stalled] == [2] * 5  # ranked after the one that answers
    for record in stalled:
        if record["phase"] == "handshake":  # the handshake works: it is the answers that stall
            assert record["count"] == 4
            continue
        assert record["count"] == 0 and record["p50_ms"] is None
        assert record["timeouts"] + record["errors"] == 4
    assert sum(r["timeouts"] for r in stalled) >= 1
    # (a connection closed for stalling may fail the query caught on it: an error, also counted)
    answering = [r for r in records if r["upstream"] == dot_uri(three_dot[1])]
    assert all(r["count"] == 4 and r["timeouts"] == 0 for r in answering)


def test_table_output_and_transport_filter(
    three_dot: list[LocalUpstream],
    plain_upstream: LocalUpstream,
    ca_file: str,
    names_file: str,
    capsys: Capture,
) -> None:
    udp = f"udp://127.0.0.1:{plain_upstream.port}"
    uris = _upstream_args(dot_uri(three_dot[0]), udp)
    base = ["--ca-file", ca_file, "--names", names_file, "--queries", "3"]
    code, out, _ = _bench(capsys, *base, "--transport", "udp", *uris)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["#", "upstream", "transport", "phase"]
    assert lines[1].split()[:4] == ["1", udp, "udp", "cached"]
    assert "tls://" not in out and "handshake" not in out  # filtered out; udp has no handshake
    assert lines[-1].startswith("latencies in ms")
    code, _, err = _bench(capsys, *base, "--transport", "dot,smtp", *uris)
    assert code == 2 and "unknown smtp" in err


@pytest.mark.parametrize(("suffix", "magic"), [(".png", b"\x89PNG\r\n\x1a\n"), (".svg", b"<svg")])
def test_chart_is_written(
    three_dot: list[LocalUpstream],
    ca_file: str,
    names_file: str,
    tmp_path: Path,
    suffix: str,
    magic: bytes,
    capsys: Capture,
) -> None:
    chart = tmp_path / f"chart{suffix}"
    uris = _upstream_args(*(dot_uri(s) for s in three_dot[:2]))
    args = ["--ca-file", ca_file, "--names", names_file, "--queries", "4", "--chart", str(chart)]
    code, _, err = _bench(capsys, *args, *uris)
    assert code == 0 and f"chart written to {chart}" in err
    data = chart.read_bytes()
    assert data.startswith(magic) if suffix == ".png" else magic in data[:1000]


def test_chart_without_matplotlib_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, capsys: Capture, tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(StubbyError, match="needs matplotlib"):
        bench.check_chart_available()
    chart = str(tmp_path / "c.png")
    code, out, err = _bench(capsys, "--upstream", "udp://127.0.0.1:9", "--chart", chart)
    assert code == 2 and "pip install 'stubby-py[chart]'" in err and out == ""
    assert not os.path.exists(chart)


def test_max_time_bounds_the_run(
    three_dot: list[LocalUpstream], ca_file: str, names_file: str, capsys: Capture
) -> None:
    args = ["--ca-file", ca_file, "--names", names_file, "--queries", "10000", "--max-time", "0.5"]
    started = time.monotonic()
    code, out, _ = _bench(capsys, *args, "--format", "json", "--upstream", dot_uri(three_dot[2]))
    assert time.monotonic() - started < 5
    assert code == 0
    document = json.loads(out)
    assert document["stopped_by"] == "max-time"
    cached = next(r for r in document["records"] if r["phase"] == "cached")
    assert 0 < cached["count"] < 10000


def test_ctrl_c_prints_what_was_measured(
    three_dot: list[LocalUpstream], ca_file: str, names_file: str
) -> None:
    uris = _upstream_args(*(dot_uri(s) for s in three_dot))
    command = [sys.executable, "-m", "stubby_py", "bench", "--ca-file", ca_file]
    command += ["--names", names_file, "--queries", "10000", *uris]
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as process:
        deadline = time.monotonic() + 15
        while sum(len(s.state.queries) for s in three_dot) < 40 and time.monotonic() < deadline:
            time.sleep(0.05)
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=15)
    assert process.returncode == bench.EXIT_INTERRUPTED, err
    assert "stopped early (interrupted): partial results" in out
    assert dot_uri(three_dot[0]) in out.splitlines()[1]  # ranked, the fastest first
    assert "Traceback" not in err
