"""Measured upstream figures (issue #18): transports' connect(), session resumption, and the
rolling figures, probes and hedging accounts the daemon keeps from them.

Every upstream is a local server from tests.servers (DoT, DoH over HTTP/2 and HTTP/3, DoQ)."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import logging
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import dns.message
import dns.rcode
import pytest
import trustme
from prometheus_client.parser import text_string_to_metric_families

from stubby_py.core import edns, latency, wire
from stubby_py.core.config import Config, parse_upstream_uri
from stubby_py.core.errors import UpstreamTimeoutError
from stubby_py.core.latency import Figures, Histogram
from stubby_py.core.pool import Pool, PoolSettings
from stubby_py.core.probing import PROBE_NAMES
from stubby_py.transports import make_transport
from tests.conftest import server_context
from tests.daemon_thread import make_config, running_daemon
from tests.peers import free_port
from tests.servers import (
    ServerThread,
    doq_server,
    h2_server,
    h3_server,
    local_upstream,
    write_cert_files,
)
from tests.service import ask, wait_for

SCHEMES = ("tls", "https", "h3", "quic")


@dataclass
class Upstream:
    scheme: str
    server: ServerThread

    @property
    def uri(self) -> str:
        if self.scheme in ("https", "h3"):
            return f"{self.scheme}://dns.test:{self.server.port}/dns-query#127.0.0.1"
        return f"{self.scheme}://127.0.0.1:{self.server.port}#dns.test"


@pytest.fixture(scope="module")
def cert_files(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    return write_cert_files(ca, str(tmp_path_factory.mktemp("fig")), "dns.test", "127.0.0.1")


@contextlib.contextmanager
def serving(scheme: str, ca: trustme.CA, cert_files: tuple[str, str]) -> Iterator[Upstream]:
    if scheme == "tls":
        opened = local_upstream(server_context(ca))
    elif scheme == "https":
        opened = h2_server(server_context(ca))
    elif scheme == "h3":
        opened = h3_server(*cert_files)
    else:
        opened = doq_server(*cert_files)
    with opened as server:
        yield Upstream(scheme, server)


@pytest.fixture(params=SCHEMES)
def upstream(
    request: pytest.FixtureRequest, ca: trustme.CA, cert_files: tuple[str, str]
) -> Iterator[Upstream]:
    with serving(request.param, ca, cert_files) as served:
        yield served


def padded_query(name: str) -> bytes:
    client = wire.parse_query(dns.message.make_query(name, "A").to_wire())
    return edns.upstream_query(client, pad_block=128, do=False, keepalive=True)


def test_connect_measures_the_full_and_the_resumed_handshake(
    upstream: Upstream, ca_file: str
) -> None:
    """connect() opens the connection and says what it took; connect(fresh=True) opens a new
    one that resumes the session (the server side counts it as resumed)."""
    # on: this Python may leak each TLS session read (tls.SESSION_READ_LEAKS), "auto" is off there
    config = Config.from_options(
        upstreams=(parse_upstream_uri(upstream.uri),), ca_file=ca_file, tls_resumption="on"
    )

    async def run() -> list[object]:
        transport = make_transport(config.forwarding.upstreams[0], config)
        loop = asyncio.get_running_loop()
        try:
            first = await transport.connect(loop.time() + 5)
            again = await transport.connect(loop.time() + 5)
            # the reply brings the session ticket in (TLS 1.3 sends it after the handshake)
            await transport.exchange(padded_query("www.example."), loop.time() + 5)
            resumed = await transport.connect(loop.time() + 5, fresh=True)
            await transport.exchange(padded_query("www.example."), loop.time() + 5)
            return [first, again, resumed, transport.stats]
        finally:
            await transport.aclose()
            await asyncio.sleep(0.05)

    first, again, resumed, stats = asyncio.run(run())
    assert not first.resumed and not first.reused and first.handshake_s > 0  # type: ignore[attr-defined]
    assert again.reused  # type: ignore[attr-defined]
    assert resumed.resumed and not resumed.reused  # type: ignore[attr-defined]
    assert resumed.protocol in ("TLSv1.3", "TLSv1.2", "QUIC")  # type: ignore[attr-defined]
    assert stats.handshakes == 2 and stats.resumptions == 1  # type: ignore[attr-defined]
    assert stats.last_full_s is not None and stats.last_resumed_s is not None  # type: ignore[attr-defined]
    assert upstream.server.state.handshakes == 2
    assert upstream.server.state.resumptions == 1


# --- rolling figures (core/latency.py), pure -----------------------------------------------


def test_bucket_quantiles_follow_the_samples() -> None:
    figures = Figures()
    for i in range(100):
        figures.sample(1000.0 + i * 0.1, 0.005 if i < 50 else 0.040)  # 5 ms, then 40 ms
    window = figures.summaries(1010.0)["5m"]
    assert window["samples"] == 100 and window["failures"] == 0
    assert 4.0 <= window["p50_ms"] <= 5.0  # within the bucket 5 ms falls in
    assert 30.0 <= window["p90_ms"] <= 40.0
    assert len(window["series_ms"]) == 30 and window["series_ms"][-2] is not None  # 1000-1010 s
    assert window["series_ms"][0] is None


def test_outages_are_counted_apart_from_latencies() -> None:
    figures = Figures()
    figures.sample(100.0, 0.010)
    figures.set_down(101.0, True)
    for t in range(102, 130):  # attempts while it is down: failures, no latencies
        figures.failure(float(t), "connect")
    figures.set_down(131.0, False)
    figures.sample(132.0, 0.010)
    window = figures.summaries(140.0)["5m"]
    assert window["samples"] == 2 and window["p99_ms"] is not None and window["p99_ms"] <= 10
    assert window["failures"] == 28 and window["failure_kinds"] == {"connect": 28}
    assert window["outage_seconds"] == pytest.approx(30.0)
    # an outage still going on counts up to now
    figures.set_down(150.0, True)
    assert figures.summaries(160.0)["5m"]["outage_seconds"] == pytest.approx(40.0)


def test_windows_forget_old_slices_and_stay_bounded() -> None:
    figures = Figures()
    for t in range(0, 3 * 24 * 3600, 7):  # three days of one sample every 7 s
        figures.sample(float(t), 0.020)
    now = float(3 * 24 * 3600)
    windows = figures.summaries(now)
    assert windows["5m"]["samples"] <= 300 // 7 + 2
    assert windows["1h"]["samples"] <= 3600 // 7 + 2
    assert windows["24h"]["samples"] <= 24 * 3600 // 7 + 2
    assert len(windows["24h"]["series_ms"]) == 96
    assert figures.total.count == len(range(0, 3 * 24 * 3600, 7))
    assert all(len(w._ring) == w.slices for w in figures.windows.values())


def test_histogram_buckets_are_prometheus_buckets() -> None:
    histogram = Histogram()
    for ms in (0.5, 1.0, 1.01, 7.0, 20000.0):
        histogram.add(ms / 1000)
    counts = histogram.as_dict()["counts"]
    assert counts[latency.bucket_of(1.0)] == 2  # le="0.001" takes 0.5 and 1.0
    assert counts[-1] == 1 and sum(counts) == histogram.count == 5


# --- the daemon: stats JSON and Prometheus histograms --------------------------------------


def scrape(port: int) -> str:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("GET", "/metrics")
        response = connection.getresponse()
        assert response.status == 200
        return response.read().decode()
    finally:
        connection.close()


def check_histograms(text: str, name: str) -> int:
    """Every series of histogram `name` parses, its buckets rise with le and end in +Inf equal
    to its _count; returns how many series there are."""
    families = {f.name: f for f in text_string_to_metric_families(text)}
    family = families[name]
    assert family.type == "histogram"
    series: dict[tuple[tuple[str, str], ...], dict[str, Any]] = {}
    for s in family.samples:
        key = tuple(sorted((k, v) for k, v in s.labels.items() if k != "le"))
        entry = series.setdefault(key, {"buckets": []})
        if s.name.endswith("_bucket"):
            entry["buckets"].append((float(s.labels["le"]), s.value))
        else:
            entry[s.name.rsplit("_", 1)[1]] = s.value
    for entry in series.values():
        buckets = entry["buckets"]
        assert [le for le, _ in buckets] == sorted(le for le, _ in buckets)
        assert buckets[-1][0] == math.inf
        counts = [count for _, count in buckets]
        assert counts == sorted(counts)  # cumulative: never falls
        assert counts[-1] == entry["count"]
        assert entry["sum"] >= 0
    return len(series)


def test_stats_and_metrics_carry_the_rolling_figures(
    upstream: Upstream, ca_file: str
) -> None:
    upstream.server.state.delay = 0.005
    config = make_config(
        [upstream.uri], ca_file, metrics_listen=("127.0.0.1", 0), probe_interval=0
    )
    with running_daemon(config) as daemon:
        for i in range(12):
            assert ask(daemon.port, f"n{i}.example.").rcode() == dns.rcode.NOERROR
        figures = daemon.call(daemon.daemon.collect_stats)
        text = scrape(daemon.daemon.metrics.port)
    (entry,) = figures["upstreams"]
    five = entry["windows"]["5m"]
    assert five["samples"] == 12 and five["failures"] == 0 and five["outage_seconds"] == 0
    assert 4.0 <= five["p50_ms"] <= five["p90_ms"] <= five["p99_ms"] < 2000
    assert set(entry["windows"]) == {"5m", "1h", "24h"}
    assert entry["share"] == 1.0 and entry["answers"] == 12
    assert entry["hedged"] == entry["hedge_wins"] == 0
    probe = entry["probe"]
    assert probe["samples"] == 0 and probe["p50_ms"] is None  # probing is off
    assert probe["handshake_ms"] is not None and probe["handshake_ms"] > 0
    assert check_histograms(text, "stubby_py_upstream_query_duration_seconds") == 1
    assert check_histograms(text, "stubby_py_upstream_handshake_duration_seconds") == 2
    assert 'stubby_py_upstream_query_duration_seconds_count{group="default"' in text
    assert re.search(r'_query_duration_seconds_count\{[^}]*transport="[a-z0-9]+"\} 12\n', text)


# --- background probing -----------------------------------------------------------------------

DELAYS = (0.005, 0.020, 0.040)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_probes_rank_upstreams_with_no_client_traffic(
    scheme: str, ca: trustme.CA, cert_files: tuple[str, str], ca_file: str
) -> None:
    """Three upstreams 5, 20 and 40 ms away, listed slowest first, `failover`: no client query
    is made, yet the probes' p50 ranks them right. The probes asked only built-in popular names,
    padded as client queries are."""
    with contextlib.ExitStack() as stack:
        served = [stack.enter_context(serving(scheme, ca, cert_files)) for _ in DELAYS]
        for upstream, delay in zip(served, DELAYS, strict=True):
            upstream.server.state.delay = delay
        uris = [u.uri for u in reversed(served)]
        config = make_config(uris, ca_file, probe_interval=0.1, strategy="failover")
        with running_daemon(config) as daemon:

            def probed() -> list[dict[str, Any]]:
                entries: list[dict[str, Any]] = daemon.call(daemon.daemon.collect_stats)[
                    "upstreams"
                ]
                return entries

            assert wait_for(lambda: all(e["probe"]["samples"] >= 8 for e in probed()), 20)
            entries = probed()
        for upstream in served:
            queries = [dns.message.from_wire(q) for q in upstream.server.state.queries]
            assert {q.question[0].name.to_text() for q in queries} <= set(PROBE_NAMES)
            assert all(len(q) % 128 == 0 for q in upstream.server.state.queries)  # padded
    assert all(e["queries"] == 0 for e in entries)  # no client query
    p50 = [e["probe"]["p50_ms"] for e in reversed(entries)]  # fastest first, as served
    assert p50 == sorted(p50), p50
    for entry, delay in zip(reversed(entries), DELAYS, strict=True):
        probe = entry["probe"]
        assert probe["p50_ms"] >= delay * 1000 * 0.8  # bucket resolution
        assert probe["failures"] == 0 and probe["last_ms"] is not None
        assert probe["last_probe_age_s"] is not None and probe["last_probe_age_s"] < 10
        assert probe["handshake_ms"] is not None
        assert entry["windows"]["5m"]["samples"] >= probe["samples"]  # probes are in the windows


def test_probe_health_policy() -> None:
    """A probe's answer does not bring back an upstream that is down; its failures mark an idle
    upstream down (failures_to_down), and do not lengthen the backoff of one that is down."""
    pool = Pool(2, PoolSettings(failures_to_down=3))
    error = UpstreamTimeoutError("no answer")
    for _ in range(2):
        pool.record_probe_failure(0, error, 10.0)
    assert pool.health[0].state(10.0) == "up"
    pool.record_probe_success(0, 0.010)  # an answer: the failures in a row start again
    for _ in range(2):
        pool.record_probe_failure(0, error, 10.0)
    assert pool.health[0].state(10.0) == "up"
    pool.record_probe_failure(0, error, 10.0)
    assert pool.health[0].state(10.0) == "down"
    until = pool.health[0].down_until
    pool.record_probe_failure(0, error, 10.1)
    assert pool.health[0].down_until == until
    pool.record_probe_success(0, 0.010)
    assert pool.health[0].is_down  # only the pool's own probe query brings it back
    assert pool.health[0].attempts == pool.health[0].failures == 0  # probes are no queries
    assert pool.health[1].state(10.0) == "up"


# --- hedging, accounted -----------------------------------------------------------------------


def test_a_stalling_upstream_loses_its_place_after_hedges(ca: trustme.CA, ca_file: str) -> None:
    """`fastest`, two DoT upstreams: A answers in ~1 ms, B in 30 ms, so A is asked first. Then
    A slows to 1 s: each query waits the hedge delay, B is asked too and wins, A's attempt is
    cancelled. That overtaken attempt counts against A (at least the time it ran), so A soon
    loses first place and is no longer asked at all; before, its latency estimate never saw the
    stall and every query kept going to A first and waiting for the hedge."""
    with local_upstream(server_context(ca)) as fast, local_upstream(server_context(ca)) as slow:
        fast.state.delay, slow.state.delay = 0.001, 0.030
        config = make_config(
            [f"tls://127.0.0.1:{s.port}#dns.test" for s in (fast, slow)], ca_file,
            strategy="fastest", fastest_explore=0.0, hedge_min=0.05, hedge_max=0.2,
        )  # fmt: skip
        with running_daemon(config) as daemon:
            for i in range(10):
                assert ask(daemon.port, f"warm{i}.example.").rcode() == dns.rcode.NOERROR
            fast.state.delay = 1.0  # A stalls
            asked_before = len(fast.state.queries)
            for i in range(20):
                assert ask(daemon.port, f"stall{i}.example.").rcode() == dns.rcode.NOERROR
            asked_stalled = len(fast.state.queries) - asked_before
            entries = daemon.call(daemon.daemon.collect_stats)["upstreams"]
    # A was hedged against a few times, then B took over: A is not asked 20 times
    assert 1 <= asked_stalled <= 10, asked_stalled
    a, b = entries
    assert b["hedged"] >= 1 and b["hedge_wins"] >= 1
    assert a["latency_ewma_ms"] > b["latency_ewma_ms"]
    assert a["windows"]["5m"]["p99_ms"] >= 40  # the overtaken attempts show in A's figures
    assert b["share"] > 0.5 and abs(a["share"] + b["share"] - 1.0) < 0.01


def test_an_unreachable_upstream_shows_outage_not_latency(ca: trustme.CA, ca_file: str) -> None:
    """Probes of an upstream nobody listens on: failures by kind and outage seconds, no latency
    sample; the one that answers is not affected."""
    with local_upstream(server_context(ca)) as alive:
        dead_port = free_port()
        uris = [f"tls://127.0.0.1:{alive.port}#dns.test", f"tls://127.0.0.1:{dead_port}#dns.test"]
        config = make_config(uris, ca_file, probe_interval=0.1, failures_to_down=2)
        with running_daemon(config) as daemon:

            def dead() -> dict[str, Any]:
                entry: dict[str, Any] = daemon.call(daemon.daemon.collect_stats)["upstreams"][1]
                return entry

            assert wait_for(lambda: dead()["windows"]["5m"]["outage_seconds"] >= 0.5, 20)
            entries = daemon.call(daemon.daemon.collect_stats)["upstreams"]
    good, bad = entries
    window = bad["windows"]["5m"]
    assert window["samples"] == 0 and window["p50_ms"] is None
    assert window["failures"] >= 2 and "connection-refused" in window["failure_kinds"]
    assert bad["probe"]["failures"] >= 2 and bad["probe"]["p50_ms"] is None
    assert bad["queries"] == 0  # probes are not counted as the client's queries
    assert good["windows"]["5m"]["outage_seconds"] == 0 and good["probe"]["samples"] >= 1


def test_a_dead_upstream_probed_again_and_again_is_logged_once(
    ca: trustme.CA, ca_file: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The default pool always has a dead member somewhere (IPv6 entries on an IPv4-only
    network): background probes try it every minute, and the journal must not get a warning
    each time — one per kind of failure and CONNECT_LOG_INTERVAL."""
    with local_upstream(server_context(ca)) as alive:
        dead_port = free_port()
        uris = [f"tls://127.0.0.1:{alive.port}#dns.test", f"tls://127.0.0.1:{dead_port}#dns.test"]
        config = make_config(uris, ca_file, probe_interval=0.1)
        with caplog.at_level(logging.WARNING), running_daemon(config) as daemon:

            def connects_failed() -> int:
                upstreams = daemon.call(daemon.daemon.collect_stats)["upstreams"]
                kinds = upstreams[1]["windows"]["5m"]["failure_kinds"]
                return int(kinds.get("connection-refused", 0))

            assert wait_for(lambda: connects_failed() >= 4, 20)
    refused = [
        r for r in caplog.records
        if r.name == "stubby_py.transports.multiplex" and str(dead_port) in r.getMessage()
    ]  # fmt: skip
    assert len(refused) == 1, [r.getMessage() for r in refused]
