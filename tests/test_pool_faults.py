"""The pool under fault injection: several real local upstreams, some broken, for each strategy.

Every client query is counted: each gets an answer or SERVFAIL within the deadline, and answers
come from healthy upstreams.
"""

from __future__ import annotations

import contextlib
import random
import socket
import threading
import time
from collections.abc import Iterator

import dns.message
import dns.query
import dns.rcode
import pytest
import trustme

from tests.clients import ask_many, rcodes
from tests.conftest import dot_uri, server_context
from tests.daemon_thread import make_config, running_daemon
from tests.servers import LocalUpstream, Misbehaviour, local_upstream

TIMEOUT = 2.0


@contextlib.contextmanager
def upstreams(ca: trustme.CA, count: int) -> Iterator[list[LocalUpstream]]:
    with contextlib.ExitStack() as stack:
        servers = [stack.enter_context(local_upstream(server_context(ca))) for _ in range(count)]
        for i, server in enumerate(servers, start=1):
            server.state.address = f"192.0.2.{i}"
        yield servers


def closed_port() -> int:
    with local_upstream(None) as server:
        return server.port


def addresses(results: list) -> list[str]:  # type: ignore[type-arg]
    return [r.answer[0][0].address if r is not None and r.answer else "-" for r, _ in results]


@pytest.mark.parametrize("strategy", ["failover", "round_robin", "fastest", "parallel"])
def test_no_query_lost_with_broken_upstreams(ca: trustme.CA, ca_file: str, strategy: str) -> None:
    with upstreams(ca, 3) as (stalling, garbage, healthy):
        stalling.state.misbehaviour = Misbehaviour.STALL
        garbage.state.misbehaviour = Misbehaviour.GARBAGE
        uris = [f"tls://127.0.0.1:{closed_port()}#dns.test"] + [
            dot_uri(s) for s in (stalling, garbage, healthy)
        ]
        config = make_config(uris, ca_file, strategy=strategy, timeout=TIMEOUT, attempt_timeout=0.5)
        with running_daemon(config) as daemon:
            results = ask_many(
                [f"{strategy}{i}.example." for i in range(200)],
                daemon.port,
                concurrency=50,
                timeout=5,
            )
    answers = rcodes(results)
    assert "TIMEOUT" not in answers
    assert max(seconds for _, seconds in results) < TIMEOUT + 0.5
    assert answers.count("NOERROR") >= 190, answers
    assert {a for a in addresses(results) if a != "-"} == {"192.0.2.3"}


def test_failover_is_quick_once_an_upstream_is_down(ca: trustme.CA, ca_file: str) -> None:
    with upstreams(ca, 2) as (first, second):
        first.state.misbehaviour = Misbehaviour.STALL
        config = make_config([dot_uri(first), dot_uri(second)], ca_file, timeout=TIMEOUT,
                             attempt_timeout=0.4, hedge=False, failures_to_down=2)  # fmt: skip
        with running_daemon(config) as daemon:
            warm = ask_many([f"w{i}.example." for i in range(4)], daemon.port, concurrency=1)
            assert addresses(warm) == ["192.0.2.2"] * 4
            after = ask_many([f"a{i}.example." for i in range(20)], daemon.port, concurrency=5)
    assert addresses(after) == ["192.0.2.2"] * 20
    assert max(seconds for _, seconds in after) < 0.3  # not waiting 0.4 s on the stalled one


def test_recovered_upstream_takes_traffic_again(ca: trustme.CA, ca_file: str) -> None:
    with upstreams(ca, 2) as (first, second):
        first.state.misbehaviour = Misbehaviour.CLOSE
        quick_recovery = {"failures_to_down": 1, "backoff_min": 0.2, "backoff_max": 0.4}
        config = make_config([dot_uri(first), dot_uri(second)], ca_file, timeout=TIMEOUT,
                             hedge=False, **quick_recovery)  # fmt: skip
        with running_daemon(config) as daemon:
            assert addresses(ask_many(["x1.example."], daemon.port)) == ["192.0.2.2"]
            first.state.misbehaviour = Misbehaviour.NONE
            deadline = time.monotonic() + 5
            seen = []
            while time.monotonic() < deadline and seen[-3:] != ["192.0.2.1"] * 3:
                seen += addresses(ask_many([f"r{len(seen)}.example."], daemon.port))
                time.sleep(0.05)
    assert seen[-3:] == ["192.0.2.1"] * 3, seen


def test_fastest_converges_on_the_fastest(ca: trustme.CA, ca_file: str) -> None:
    with upstreams(ca, 3) as servers:
        for server, delay in zip(servers, (0.040, 0.005, 0.020), strict=True):
            server.state.delay = delay
        config = make_config([dot_uri(s) for s in servers], ca_file, strategy="fastest",
                             fastest_explore=0.05, hedge=False)  # fmt: skip
        with running_daemon(config) as daemon:
            ask_many([f"warm{i}.example." for i in range(30)], daemon.port, concurrency=1)
            results = ask_many([f"f{i}.example." for i in range(200)], daemon.port, concurrency=4)
    chosen = addresses(results)
    assert chosen.count("192.0.2.2") > 150, {a: chosen.count(a) for a in set(chosen)}


def test_parallel_asks_two_and_takes_the_first(ca: trustme.CA, ca_file: str) -> None:
    with upstreams(ca, 2) as (slow, quick):
        slow.state.delay = 0.3
        config = make_config([dot_uri(slow), dot_uri(quick)], ca_file, strategy="parallel")
        with running_daemon(config) as daemon:
            results = ask_many([f"p{i}.example." for i in range(10)], daemon.port)
    assert addresses(results) == ["192.0.2.2"] * 10
    assert len(slow.state.queries) == 10 and len(quick.state.queries) == 10


def test_hedging_rescues_queries_stuck_on_a_stalling_upstream(ca: trustme.CA, ca_file: str) -> None:
    rng = random.Random(3)
    with upstreams(ca, 2) as (flaky, backup):
        flaky.state.chooser = lambda _q: (
            Misbehaviour.STALL if rng.random() < 0.1 else Misbehaviour.NONE
        )
        hedging = {"hedge": True, "hedge_max": 0.2, "failures_to_down": 100}
        config = make_config([dot_uri(flaky), dot_uri(backup)], ca_file, timeout=TIMEOUT,
                             attempt_timeout=1.5, **hedging)  # fmt: skip
        with running_daemon(config) as daemon:
            results = ask_many([f"h{i}.example." for i in range(150)], daemon.port, concurrency=10)
    assert rcodes(results) == ["NOERROR"] * 150
    # what the flaky upstream sat on was answered by the backup, long before the attempt timeout
    assert max(seconds for _, seconds in results) < 1.0
    assert len(backup.state.queries) >= 5


def test_servfail_is_retried_on_another_upstream(ca: trustme.CA, ca_file: str) -> None:
    with upstreams(ca, 2) as (failing, good):
        failing.state.misbehaviour = Misbehaviour.SERVFAIL
        config = make_config([dot_uri(failing), dot_uri(good)], ca_file, hedge=False)
        with running_daemon(config) as daemon:
            assert addresses(ask_many(["s.example."], daemon.port)) == ["192.0.2.2"]
        config = make_config(
            [dot_uri(failing), dot_uri(good)], ca_file, hedge=False, retry_servfail=False
        )
        with running_daemon(config) as daemon:
            assert rcodes(ask_many(["t.example."], daemon.port)) == ["SERVFAIL"]


def test_all_upstreams_failed_gives_servfail_with_extended_error(
    ca: trustme.CA, ca_file: str
) -> None:
    with upstreams(ca, 2) as servers:
        for server in servers:
            server.state.misbehaviour = Misbehaviour.CLOSE
        config = make_config([dot_uri(s) for s in servers], ca_file, timeout=TIMEOUT)
        with running_daemon(config) as daemon:
            query = dns.message.make_query("dead.example.", "A", use_edns=0)
            reply = dns.query.udp(query, "127.0.0.1", port=daemon.port, timeout=5)
    assert reply.rcode() == dns.rcode.SERVFAIL
    (ede,) = [o for o in reply.options if o.otype == 15]
    assert ede.code == 22 and "all upstreams failed" in (ede.text or "")



class Door:
    """A port that accepts every connection and closes it at once: each TLS handshake fails."""

    def __init__(self, listener: socket.socket) -> None:
        self.port: int = listener.getsockname()[1]
        self.accepted = 0


@contextlib.contextmanager
def slamming_door() -> Iterator[Door]:
    stop = threading.Event()
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(256)
        listener.settimeout(0.05)
        door = Door(listener)

        def serve() -> None:
            while not stop.is_set():
                try:
                    connection, _ = listener.accept()
                except TimeoutError:
                    continue
                door.accepted += 1
                connection.close()

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        try:
            yield door
        finally:
            stop.set()
            thread.join()


def test_an_upstream_that_cannot_be_connected_to_is_not_stormed(ca_file: str) -> None:
    """The transports keep no connect backoff: the pool holds connects off after one fails, so
    a busy client's queries fail at once meanwhile instead of each opening a connection."""
    with slamming_door() as door:
        config = make_config([f"tls://127.0.0.1:{door.port}#dot.test"], ca_file, timeout=TIMEOUT)
        with running_daemon(config) as daemon:
            started = time.monotonic()
            results = ask_many([f"s{i}.example." for i in range(300)], daemon.port, concurrency=20)
            elapsed = time.monotonic() - started
    assert rcodes(results) == ["SERVFAIL"] * 300
    # holds of 0.05-0.1 s, doubling up to 10 s: a handful of connects, not one per query
    assert door.accepted <= 4 + 2 * elapsed, (door.accepted, elapsed)
