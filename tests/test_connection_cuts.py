"""Connections cut under their queries are not failures of the upstream (issue #14 item 8).

A middlebox that kills long-lived TLS connections after some traffic (tests/servers/tamper_proxy.py,
ResettingProxy: a TCP RST to both sides after so many TLS records from the server) used to turn
most queries at any concurrency into SERVFAIL: each query went once more on a fresh connection,
which was cut too, and the failures marked the one upstream down. Now what a dead connection
carried goes again on a fresh one as long as the dead ones had answered, and the pool does not
count such cuts against the upstream.
"""

from __future__ import annotations

import collections
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
import trustme

from stubby_py.core.pool import Pool, PoolSettings
from stubby_py.transports.multiplex import MAX_RESENDS, may_resend
from tests.clients import ask_many, rcodes
from tests.conftest import AUTH_NAME, dot_uri, server_context
from tests.daemon_thread import DaemonThread, make_config, running_daemon
from tests.servers import Misbehaviour, h2_server, local_upstream
from tests.servers.tamper_proxy import ResettingProxy, running_resetting_proxy

#: TLS records the server may send on one connection before the proxy cuts it (about 25 replies
#: with TLS 1.3: the encrypted handshake and the session tickets count too)
CUT_AFTER = 30
QUERIES = 600
CONCURRENCY = 100


def upstream_stats(daemon: DaemonThread) -> list[dict[str, Any]]:
    return list(daemon.call(daemon.daemon.collect_stats)["upstreams"])


def assert_all_answered(results: list[tuple[Any, float]], proxy: ResettingProxy) -> None:
    counts = collections.Counter(rcodes(results))
    assert counts["TIMEOUT"] == 0, counts  # none lost
    assert counts["NOERROR"] >= 0.95 * len(results), counts
    assert proxy.cuts >= 5, "the proxy did not cut: the test tests nothing"


@pytest.fixture
def dot_behind_proxy(ca: trustme.CA) -> Iterator[tuple[str, ResettingProxy]]:
    with (
        local_upstream(server_context(ca)) as upstream,
        running_resetting_proxy(upstream.port, CUT_AFTER) as proxy,
    ):
        yield f"tls://127.0.0.1:{proxy.port}#{AUTH_NAME}", proxy


def test_dot_connections_cut_every_few_dozen_queries_lose_nothing(
    dot_behind_proxy: tuple[str, ResettingProxy], ca_file: str
) -> None:
    uri, proxy = dot_behind_proxy
    with running_daemon(make_config([uri], ca_file, cache_size=0)) as daemon:
        names = [f"c{i}.example." for i in range(QUERIES)]
        results = ask_many(names, daemon.port, concurrency=CONCURRENCY, timeout=5)
        (stats,) = upstream_stats(daemon)
    assert_all_answered(results, proxy)
    assert stats["state"] == "up"  # cuts after answers never marked it down
    assert stats["resent"] > 0


def test_doh_connections_cut_every_few_dozen_queries_lose_nothing(
    ca: trustme.CA, ca_file: str
) -> None:
    with (
        h2_server(server_context(ca)) as server,
        running_resetting_proxy(server.port, CUT_AFTER) as proxy,
    ):
        uri = f"https://{AUTH_NAME}:{proxy.port}/dns-query#127.0.0.1"
        with running_daemon(make_config([uri], ca_file, cache_size=0)) as daemon:
            names = [f"h{i}.example." for i in range(QUERIES)]
            results = ask_many(names, daemon.port, concurrency=CONCURRENCY, timeout=5)
            (stats,) = upstream_stats(daemon)
    assert_all_answered(results, proxy)
    assert stats["state"] == "up"


def test_cuts_beside_an_upstream_with_a_broken_ca_file(
    dot_behind_proxy: tuple[str, ResettingProxy], ca_file: str, tmp_file: Any
) -> None:
    """Both at once: the first upstream cannot build its TLS settings, the second's connections
    are cut every few dozen queries. Every query is still answered."""
    uri, proxy = dot_behind_proxy
    garbage = tmp_file("garbage.pem", "not a certificate\n")
    config = make_config([uri, uri], ca_file, cache_size=0)
    broken = replace(config.forwarding.upstreams[0], ca_file=garbage, name="broken")
    cut = config.forwarding.upstreams[0]
    config = config.with_options(upstreams=(broken, cut))
    with running_daemon(config) as daemon:
        names = [f"m{i}.example." for i in range(QUERIES)]
        results = ask_many(names, daemon.port, concurrency=CONCURRENCY, timeout=5)
        stats = {u["name"]: u for u in upstream_stats(daemon)}
    assert_all_answered(results, proxy)
    assert set(stats[broken.label]["failure_kinds"]) == {"tls-config"}
    assert stats[cut.label]["state"] == "up"


def test_silently_dropped_dot_connections_are_noticed_and_left(
    ca: trustme.CA, ca_file: str
) -> None:
    """A NAT that forgets the flow sends no RST: the connection just goes silent. A probe
    notices it long before the queries' deadlines, and they go again on a fresh connection."""
    with (
        local_upstream(server_context(ca)) as upstream,
        running_resetting_proxy(upstream.port, CUT_AFTER, silent=True) as proxy,
    ):
        uri = f"tls://127.0.0.1:{proxy.port}#{AUTH_NAME}"
        with running_daemon(make_config([uri], ca_file, cache_size=0)) as daemon:
            names = [f"s{i}.example." for i in range(300)]
            results = ask_many(names, daemon.port, concurrency=10, timeout=5)
            (stats,) = upstream_stats(daemon)
    assert_all_answered(results, proxy)
    assert stats["state"] == "up"
    assert max(seconds for _, seconds in results) < 1.5  # within one attempt: resent early


def test_silently_dropped_doh_connections_are_noticed_and_left(
    ca: trustme.CA, ca_file: str
) -> None:
    """The same over DoH/HTTP2, where the probe is an HTTP/2 PING."""
    with (
        h2_server(server_context(ca)) as server,
        running_resetting_proxy(server.port, CUT_AFTER, silent=True) as proxy,
    ):
        uri = f"https://{AUTH_NAME}:{proxy.port}/dns-query#127.0.0.1"
        with running_daemon(make_config([uri], ca_file, cache_size=0)) as daemon:
            names = [f"p{i}.example." for i in range(300)]
            results = ask_many(names, daemon.port, concurrency=10, timeout=5)
            (stats,) = upstream_stats(daemon)
    assert_all_answered(results, proxy)
    assert stats["state"] == "up"
    assert max(seconds for _, seconds in results) < 1.5


def test_a_slow_answer_on_a_live_connection_is_not_taken_for_silence(
    dot_upstream: Any, ca_file: str
) -> None:
    """The probe of a quiet connection is answered at once, so a slow answer is waited for on
    the same connection, not resent on a new one."""
    dot_upstream.state.delays = {"slow.example.": 0.8}
    config = make_config([dot_uri(dot_upstream)], ca_file, cache_size=0, attempt_timeout=2.0)
    with running_daemon(config) as daemon:
        assert (
            rcodes(ask_many([f"w{i}.example." for i in range(20)], daemon.port)) == ["NOERROR"] * 20
        )  # the usual reply time is learnt
        ((reply, seconds),) = ask_many(["slow.example."], daemon.port, timeout=5)
        (stats,) = upstream_stats(daemon)
    assert reply is not None and rcodes([(reply, seconds)]) == ["NOERROR"]
    assert dot_upstream.state.connections == 1 and stats["resent"] == 0
    probes = [q for q in dot_upstream.state.queries if b"\x00\x00\x02\x00\x01" in q[12:17]]
    assert probes  # the silence was noticed, and asked about


def test_a_connection_that_never_answers_is_still_a_failure(
    dot_upstream: Any, ca_file: str
) -> None:
    """The other side of the rule: a server that drops every connection at its first query
    gets two tries per query (not a resend loop) and is marked down."""
    dot_upstream.state.misbehaviour = Misbehaviour.CLOSE
    config = make_config([dot_uri(dot_upstream)], ca_file, cache_size=0, timeout=1.5)
    with running_daemon(config) as daemon:
        results = ask_many([f"n{i}.example." for i in range(6)], daemon.port, concurrency=1)
        (stats,) = upstream_stats(daemon)
    assert rcodes(results) == ["SERVFAIL"] * 6
    assert stats["state"] != "up"
    # each query that reached the upstream went on at most two connections
    assert dot_upstream.state.connections <= 2 * len(results)


# --- the rules, without sockets ---------------------------------------------------------------


def test_resend_rule() -> None:
    assert may_resend(1, after_answers=False)  # a stale cached connection: once
    assert not may_resend(2, after_answers=False)  # a fresh one that answered nothing: a failure
    assert may_resend(2, after_answers=True)
    assert may_resend(MAX_RESENDS, after_answers=True)
    assert not may_resend(MAX_RESENDS + 1, after_answers=True)  # a query that kills connections


def test_interrupted_attempt_neither_marks_down_nor_blocks_the_next_probe() -> None:
    pool = Pool(1, PoolSettings(failures_to_down=1, backoff_min=1.0, backoff_max=1.0))
    pool.record_failure(0, now=0.0)
    assert pool.health[0].is_down
    pool.attempt_started(0, now=5.0)  # the backoff is over: this attempt is the probe
    assert pool.health[0].probing
    pool.record_interrupted(0)
    health = pool.health[0]
    assert health.downs == 1 and not health.probing  # no longer, no shorter
    assert pool.take_probes(now=5.0) == [0]
    for _ in range(5):
        pool.record_interrupted(0)
    assert pool.health[0].consecutive_failures == 1
