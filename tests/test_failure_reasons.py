"""When attempts fail differently, the client hears the most informative failure, first time and
from the held failure (RFC 9520): a DNSSEC verdict outranks an upstream that could not be reached,
a reachable upstream's broken answer outranks one that refused the connection.

A pool of [the signed hierarchy's Unbound, a port where nothing listens] is the everyday case of
the default pool on an IPv4-only network: one upstream answers, the other cannot be reached.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from dataclasses import replace

import dns.edns
import dns.message
import dns.query
import dns.rcode
import pytest

from stubby_py.core import errors
from stubby_py.daemon.explain import explain
from stubby_py.daemon.upstreams import _Race
from tests.daemon_thread import DaemonThread, make_config, running_daemon
from tests.dnssec_hierarchy import Hierarchy
from tests.peers import LOOPBACK, free_ports
from tests.servers import LocalUpstream, Misbehaviour

SERVFAIL = dns.rcode.SERVFAIL
SIGNATURE_EXPIRED, SIGNATURE_NOT_YET_VALID, RRSIGS_MISSING = 7, 8, 10
CACHED_ERROR, NO_REACHABLE_AUTHORITY = 13, 22


def ask(port: int, name: str, rdtype: str = "A") -> dns.message.Message:
    query = dns.message.make_query(name, rdtype, use_edns=0, want_dnssec=True)
    return dns.query.tcp(query, LOOPBACK, port=port, timeout=10)


def the_ede(reply: dns.message.Message) -> tuple[int, str]:
    (ede,) = [o for o in reply.options if isinstance(o, dns.edns.EDEOption)]
    return int(ede.code), ede.text or ""


@pytest.fixture
def dead_port() -> int:
    """A UDP and TCP port on loopback where nothing listens (connection refused)."""
    return free_ports(1)[0]


# --- a DNSSEC verdict is the reason ---------------------------------------------------------


@pytest.fixture(params=["failover", "default"])
def bogus_pool_daemon(
    request: pytest.FixtureRequest, dnssec_hierarchy: Hierarchy, dead_port: int
) -> Iterator[DaemonThread]:
    """The healthy upstream first; in turn, one after the other, or as the default pool works
    (the fastest first, hedged)."""
    pool = {"strategy": "failover", "hedge": False} if request.param == "failover" else {}
    config = make_config(
        [dnssec_hierarchy.resolver_upstream, f"udp://{LOOPBACK}:{dead_port}"],
        dnssec="validate",
        trust_anchors=str(dnssec_hierarchy.anchor_ds_file),
        **pool,
    )
    with running_daemon(config) as daemon:
        yield daemon


@pytest.mark.interop
@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("name", "code"),
    [("www.expired.test.", SIGNATURE_EXPIRED), ("www.nosig.test.", RRSIGS_MISSING)],
)
def test_bogus_answer_keeps_its_verdict_past_a_dead_upstream(
    bogus_pool_daemon: DaemonThread, dead_port: int, name: str, code: int
) -> None:
    daemon = bogus_pool_daemon
    first = ask(daemon.port, name)
    assert first.rcode() == SERVFAIL
    first_code, first_text = the_ede(first)
    assert first_code == code, first_text
    # the verdict's own words come first; the dead upstream may be named after them
    assert not first_text.startswith("all upstreams failed"), first_text
    assert str(dead_port) not in first_text.partition(";")[0], first_text

    # the failure is held (RFC 9520): the same verdict, with its text, and no upstream asked
    held = ask(daemon.port, name)
    assert held.rcode() == SERVFAIL
    assert the_ede(held) == (first_code, first_text)

    snapshot = daemon.call(daemon.runtime.snapshot)
    counters = snapshot["counters"]
    assert counters["dnssec_bogus"] == 1 and counters["cached_failures"] == 1, counters
    assert counters["dnssec_retries"] == 1, counters
    healthy, dead = snapshot["upstreams"]
    # the healthy upstream is not blamed for a zone that is really bogus; the dead one failed
    assert "dnssec-bogus" not in healthy["failure_kinds"], healthy
    assert dead["failures"] >= 1, dead


@pytest.mark.interop
@pytest.mark.timeout(60)
def test_explain_shows_the_verdict_and_every_attempt(
    bogus_pool_daemon: DaemonThread, dead_port: int
) -> None:
    daemon = bogus_pool_daemon
    trace = asyncio.run_coroutine_threadsafe(
        explain(daemon.resolver, "www.future.test.", 1), daemon.loop
    ).result(20)
    report = trace.to_dict()
    assert report["rcode"] == "SERVFAIL"
    assert [code for code, _ in report["ede"]] == [SIGNATURE_NOT_YET_VALID], report["ede"]
    assert report["failure"].startswith("dnssec-bogus: "), report["failure"]
    assert report["validation"]["security"] == "bogus"
    assert report["validation"]["ede"] == SIGNATURE_NOT_YET_VALID
    outcomes = [(a["upstream"], a["outcome"]) for a in report["attempts"]]
    assert (daemon.config.forwarding.upstreams[0].label, "answer") in outcomes, outcomes
    assert (f"udp://{LOOPBACK}:{dead_port}", "connect-failed") in outcomes, outcomes


# --- without DNSSEC: the failure that tells most is named first ---------------------------------


@pytest.mark.parametrize(
    ("behaviour", "kind"), [(Misbehaviour.GARBAGE, "bad-response"), (Misbehaviour.STALL, "timeout")]
)
def test_the_most_telling_failure_is_named_first(
    plain_upstream: LocalUpstream, dead_port: int, behaviour: Misbehaviour, kind: str
) -> None:
    """The dead upstream is asked first and fails first; the answer still names the upstream
    that was reached (and failed in a way that says something) before it."""
    plain_upstream.state.misbehaviour = behaviour
    # over TCP: garbage over UDP is dropped as a possible spoof, and so times out
    reached, dead = f"tcp://{LOOPBACK}:{plain_upstream.port}", f"tcp://{LOOPBACK}:{dead_port}"
    config = make_config(
        [dead, reached],
        strategy="failover", hedge=False, timeout=2.0, attempt_timeout=0.6,
    )  # fmt: skip
    with running_daemon(config) as daemon:
        first = ask(daemon.port, "broken.example.")
        assert first.rcode() == SERVFAIL
        code, text = the_ede(first)
        assert code == NO_REACHABLE_AUTHORITY, text
        assert text.startswith(f"all upstreams failed: {reached}: {kind}"), text
        assert f", {dead}: connection-refused" in text, text
        held = ask(daemon.port, "broken.example.")
        code, text = the_ede(held)
        assert code == CACHED_ERROR and text.startswith(f"cached failure ({kind})"), text
        counters = daemon.call(daemon.runtime.snapshot)["counters"]
        assert counters["servfail"] == 2 and counters["cached_failures"] == 1, counters


def test_a_long_failure_text_is_cut_to_the_clients_udp_size() -> None:
    """Every upstream named in the EDE text: with many upstreams (and long names) the reply is
    kept within the client's UDP size by cutting the text, not by losing the reply."""
    names = [f"upstream-with-a-long-descriptive-name-number-{i}" for i in range(8)]
    dead = free_ports(len(names))
    config = make_config([f"tcp://{LOOPBACK}:{port}" for port in dead], timeout=2.0)
    upstreams = config.forwarding.upstreams
    specs = tuple(replace(s, name=n) for s, n in zip(upstreams, names, strict=True))
    with running_daemon(config.with_options(upstreams=specs)) as daemon:
        query = dns.message.make_query("cut.example.", "A", use_edns=0, payload=512)
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with sock:
            sock.settimeout(5)
            sock.sendto(query.to_wire(), (LOOPBACK, daemon.port))
            data = sock.recv(65535)
    assert len(data) <= 512
    reply = dns.message.from_wire(data)
    code, text = the_ede(reply)
    assert code == NO_REACHABLE_AUTHORITY and text.startswith(f"all upstreams failed: {names[0]}")
    assert text.endswith("…"), text


def test_failures_are_ranked_most_telling_first() -> None:
    """errors.py's ranking: an answer that was wrong > TLS and certificates > timeouts > nothing
    to connect to; equals in the order they came; the first one's own words in brackets."""
    race = _Race([0, 1, 2, 3, 4])
    race.note_failure("a", errors.ConnectionRefusedUpstreamError("a: connection refused"))
    race.note_failure("b", errors.UpstreamTimeoutError("b: timed out"))
    race.note_failure("c", errors.CertExpiredError("c: certificate has expired"))
    race.note_failure("d", errors.NoRouteError("d: network unreachable"))
    race.note_failure("e", errors.UpstreamClosedError("e: connection closed"))
    error = race.all_failed()
    assert str(error) == (
        "all upstreams failed: c: cert-expired (certificate has expired), b: timeout,"
        " e: connection-closed, a: connection-refused, d: no-route"
    )
    assert error.reason == "cert-expired" and error.ede == NO_REACHABLE_AUTHORITY
    race.note_failure("f", errors.UpstreamProtocolError("f: HTTP status 500"))
    assert race.all_failed().summary.startswith("f: bad-response (HTTP status 500), c: ")
