"""`stubby-py stats` (table and JSON), `flush` and the Prometheus endpoint report exactly the
queries a test made; the query log writes one line per answered query, only when asked to."""

from __future__ import annotations

import http.client
import json
import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dns.message
import dns.rcode
import pytest

from stubby_py.commands import cli
from stubby_py.core.wire import parse_query
from stubby_py.daemon import metrics, stats
from stubby_py.daemon.querylog import QueryLog
from tests.conftest import dot_uri
from tests.daemon_thread import DaemonThread, make_config, running_daemon
from tests.servers import LocalUpstream
from tests.service import ask, udp_burst


@pytest.fixture
def daemon(dot_upstream: LocalUpstream, ca_file: str, tmp_path: Path) -> Iterator[DaemonThread]:
    config = make_config(
        [dot_uri(dot_upstream)], ca_file, allow=("127.0.0.1/32",),
        control_socket=str(tmp_path / "run" / "control.sock"), metrics_listen=("127.0.0.1", 0),
        query_log=str(tmp_path / "queries.log"),
    )  # fmt: skip
    with running_daemon(config) as running:
        yield running


def stats_json(socket_path: str, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    assert cli.main(["stats", "--json", "--socket", socket_path]) == 0
    result: dict[str, Any] = json.loads(capsys.readouterr().out)
    return result


def make_traffic(port: int) -> None:
    """3 names asked twice (3 misses, 3 hits) and one client refused: 7 queries."""
    for _ in range(2):
        for name in ("a.example.", "b.example.", "c.example."):
            assert ask(port, name).rcode() == dns.rcode.NOERROR
    assert udp_burst(port, ["refused.example."], "127.0.0.2", wait=3) == 1


def test_stats_match_the_queries_made(
    daemon: DaemonThread, dot_upstream: LocalUpstream, capsys: pytest.CaptureFixture[str]
) -> None:
    socket_path = daemon.daemon.control.path
    before = stats_json(socket_path, capsys)
    make_traffic(daemon.port)
    after = stats_json(socket_path, capsys)
    assert after["queries"] - before["queries"] == 7
    assert after["cache"]["hits"] - before["cache"]["hits"] == 3
    assert after["cache"]["misses"] - before["cache"]["misses"] == 3
    assert after["refused"] - before["refused"] == 1
    assert after["rate_limited"] == 0
    [upstream] = after["upstreams"]
    assert upstream["queries"] - before["upstreams"][0]["queries"] == 3
    assert upstream["failures"] == 0 and upstream["state"] == "up"
    latency = upstream["latency_ms"]
    assert latency["samples"] == len(dot_upstream.state.queries)
    # (loopback answers can measure 0: uvloop's clock counts whole milliseconds)
    assert 0 <= latency["p50"] <= latency["p90"] <= latency["p99"] < 1000

    assert cli.main(["stats", "--socket", socket_path]) == 0
    table = capsys.readouterr().out
    assert re.search(rf"^queries +{after['queries'] + 0}$", table, re.MULTILINE)
    assert re.search(r"^  refused +1$", table, re.MULTILINE)
    assert re.search(rf"^  from cache +{after['cache']['hits']} ", table, re.MULTILINE)
    row = next(line for line in table.splitlines() if line.startswith(upstream["name"]))
    assert row.split()[1:5] == ["default", "up", str(upstream["queries"]), "0"]


def test_flush_one_name_then_everything(
    daemon: DaemonThread, dot_upstream: LocalUpstream, capsys: pytest.CaptureFixture[str]
) -> None:
    socket_path = daemon.daemon.control.path
    make_traffic(daemon.port)
    asked = len(dot_upstream.state.queries)
    assert cli.main(["flush", "--socket", socket_path, "a.example"]) == 0
    assert capsys.readouterr().out == "1 answers dropped\n"
    ask(daemon.port, "a.example.")
    ask(daemon.port, "b.example.")
    assert len(dot_upstream.state.queries) == asked + 1  # a asked again, b still cached
    assert cli.main(["flush", "--socket", socket_path]) == 0
    assert capsys.readouterr().out == "3 answers dropped\n"
    assert cli.main(["flush", "--socket", socket_path, "not a..name"]) == 2
    assert "not a domain name" in capsys.readouterr().err


def test_control_errors_say_what_to_do(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["stats", "--socket", str(tmp_path / "none.sock")]) == 2
    assert "no daemon answers on" in capsys.readouterr().err
    off = tmp_path / "off.yaml"
    off.write_text("control_socket: false\n")
    assert cli.main(["reload", "-c", str(off)]) == 2
    assert "control_socket is off" in capsys.readouterr().err


def scrape(port: int, path: str = "/metrics", method: str = "GET") -> tuple[int, str, str]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request(method, path)
        response = connection.getresponse()
        return response.status, response.getheader("Content-Type") or "", response.read().decode()
    finally:
        connection.close()


def sample(text: str, name: str, **labels: str) -> float:
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = rf"^{name}{{{wanted}}} (\S+)$" if labels else rf"^{name} (\S+)$"
    found = re.search(pattern, text, re.MULTILINE)
    assert found, f"{name}{labels} not in\n{text}"
    return float(found.group(1))


def test_prometheus_endpoint_has_the_same_figures(
    daemon: DaemonThread, dot_upstream: LocalUpstream
) -> None:
    port = daemon.daemon.metrics.port
    make_traffic(daemon.port)
    status, content_type, text = scrape(port)
    figures = daemon.call(daemon.daemon.collect_stats)
    assert status == 200 and content_type.startswith("text/plain; version=0.0.4")
    assert sample(text, "stubby_py_queries_total") == figures["queries"] >= 7
    assert sample(text, "stubby_py_cache_hits_total") == figures["cache"]["hits"] == 3
    assert sample(text, "stubby_py_refused_total") == 1
    assert sample(text, "stubby_py_cache_entries") == figures["cache"]["entries"]
    name = figures["upstreams"][0]["name"]
    labels = {"group": "default", "upstream": name}
    assert sample(text, "stubby_py_upstream_queries_total", **labels) == 3
    assert sample(text, "stubby_py_upstream_up", **labels) == 1
    p50 = sample(text, "stubby_py_upstream_latency_seconds", **labels, quantile="0.5")
    assert p50 == pytest.approx(figures["upstreams"][0]["latency_ms"]["p50"] / 1000)
    for line in text.splitlines():  # the exposition format, line by line
        assert re.fullmatch(r"# (HELP|TYPE) stubby_py_\w+ .+|stubby_py_\w+(\{.*\})? \S+", line)
    assert scrape(port, "/nothing")[0] == 404
    assert scrape(port, method="POST")[0] == 405


def test_metrics_render_escapes_label_values() -> None:
    figures: dict[str, Any] = {
        "uptime_seconds": 1.5, "counters": {"queries": 1},
        "cache": {"entries": 0, "bytes": 0, "evictions": 0, "hit_ratio": None},
        "tcp": dict.fromkeys(stats.TCP_FIGURES, 0),
        "upstreams": [{"name": 'odd "name"\\\n', "queries": 1, "failures": 0,
                       "latency_ms": {"p50": None, "samples": 0}}],
    }  # fmt: skip
    text = metrics.render(figures)
    assert 'upstream="odd \\"name\\"\\\\\\n"' in text
    assert "\nstubby_py_cache_hit_ratio " not in text  # no figure yet: no sample


def test_percentiles() -> None:
    assert stats.percentile([], 50) is None
    samples = [float(x) for x in range(1, 101)]
    # interpolated between ranks, exactly as `stubby-py bench` computes them
    assert [stats.percentile(samples, p) for p in (50, 90, 99)] == [
        50.5,
        90.1,
        pytest.approx(99.01),
    ]
    assert stats.percentile([7.0], 99) == 7.0


def test_query_log_records_answered_queries(daemon: DaemonThread, tmp_path: Path) -> None:
    make_traffic(daemon.port)
    daemon.call(daemon.daemon.query_log.flush)
    path = tmp_path / "queries.log"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    lines = path.read_text().splitlines()
    names = [f"{n}.example." for n in "abc"] * 2
    sources = ["upstream"] * 3 + ["cache"] * 3  # asked twice: the second time from the cache
    assert [line.split()[1:6] for line in lines[:6]] == [
        ["127.0.0.1", name, "A", "NOERROR", source]
        for name, source in zip(names, sources, strict=True)
    ]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", lines[0].split()[0])
    # the client outside the allow list: refused by the request checks, and logged so
    assert [line.split()[1:6] for line in lines[6:]] == [
        ["127.0.0.2", "refused.example.", "A", "REFUSED", "rejected"]
    ]


def test_query_log_batches_escapes_and_reopens(tmp_path: Path) -> None:
    path = tmp_path / "q.log"
    log = QueryLog(str(path))
    query = parse_query(dns.message.make_query("we\\032ird\\010name.example.", "AAAA").to_wire())
    log.record("192.0.2.7", query, 3, "upstream:one")
    assert path.read_text() == ""  # buffered: written in batches
    log.flush()
    assert path.read_text().split()[1:] == [
        "192.0.2.7", "we\\032ird\\010name.example.", "AAAA", "NXDOMAIN", "upstream:one",
    ]  # fmt: skip
    path.rename(tmp_path / "q.log.1")  # logrotate
    log.reopen()
    log.record("192.0.2.8", query, 0, "cache")
    log.close()
    assert path.read_text().split()[1] == "192.0.2.8"
    assert log.written == 2 and log.dropped == 0


def test_no_query_log_by_default(dot_upstream: LocalUpstream, ca_file: str) -> None:
    with running_daemon(make_config([dot_uri(dot_upstream)], ca_file)) as daemon:
        assert daemon.daemon.query_log is None and daemon.resolver.query_log is None


def test_query_log_says_where_answers_came_from_and_what_was_dropped(
    dot_upstream: LocalUpstream, ca_file: str, tmp_path: Path
) -> None:
    path = tmp_path / "queries.log"
    config = make_config(
        [dot_uri(dot_upstream)], ca_file, query_log=str(path), rate_limit=1.0,
        rate_limit_burst=3, rate_limit_exempt=(), rate_limit_action="drop",
    )  # fmt: skip
    with running_daemon(config) as daemon:
        assert ask(daemon.port, "localhost.", "A").rcode() == dns.rcode.NOERROR
        assert ask(daemon.port, "x.example.").rcode() == dns.rcode.NOERROR
        assert ask(daemon.port, "x.example.").rcode() == dns.rcode.NOERROR
        over = [f"over{i}.example." for i in range(10)]  # a flood: one line for it, not ten
        assert udp_burst(daemon.port, over, "127.0.0.1", wait=0.5) == 0
        daemon.call(daemon.daemon.query_log.flush)
    lines = [line.split()[2:6] for line in path.read_text().splitlines()]
    assert lines == [
        ["localhost.", "A", "NOERROR", "local"],
        ["x.example.", "A", "NOERROR", "upstream"],
        ["x.example.", "A", "NOERROR", "cache"],
        ["over0.example.", "A", "-", "dropped:rate-limited"],
    ]
