"""Aggressive use of the validated cache (RFC 8198) against the private signed hierarchy.

The daemon asks the hierarchy's Unbound through a relaying proxy that counts what it forwards
(tests/servers/tamper_proxy.py, told to tamper with a name never asked), so "no upstream query" is
seen on the wire, not taken from the daemon's word.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Iterator
from pathlib import Path

import dns.dnssec
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest
from dns.rdtypes.ANY.NSEC3 import NSEC3

from stubby_py.daemon.explain import explain
from stubby_py.dnssec.aggressive import Held
from tests.daemon_thread import DaemonThread, make_config, running_daemon
from tests.dnssec_hierarchy import Hierarchy
from tests.peers import LOOPBACK
from tests.servers.tamper_proxy import TamperProxy, running_tamper_proxy
from tests.test_dnssec_e2e import ask, describe, has_ad

pytestmark = [pytest.mark.interop, pytest.mark.timeout(60)]

NOERROR, NXDOMAIN = dns.rcode.NOERROR, dns.rcode.NXDOMAIN
NSEC, NSEC3_TYPE, SOA = dns.rdatatype.NSEC, dns.rdatatype.NSEC3, dns.rdatatype.SOA


@pytest.fixture
def counted(
    dnssec_hierarchy: Hierarchy, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[tuple[DaemonThread, TamperProxy]]:
    aggressive = getattr(request, "param", True)
    with running_tamper_proxy(dnssec_hierarchy.resolver_port, "never.asked.invalid.") as proxy:
        config = make_config(
            [f"udp://{LOOPBACK}:{proxy.port}"],
            dnssec="validate",
            trust_anchors=str(dnssec_hierarchy.anchor_ds_file),
            aggressive_nsec=aggressive,
            query_log=str(tmp_path / "queries.log"),
        )
        with running_daemon(config) as daemon:
            yield daemon, proxy


def types_in(section: list[dns.rrset.RRset]) -> set[int]:
    return {r.rdtype for r in section}


def test_nxdomain_in_a_held_nsec_span_is_answered_without_asking(
    counted: tuple[DaemonThread, TamperProxy], tmp_path: Path
) -> None:
    daemon, proxy = counted
    first = ask(daemon.port, "nx.nsec.test.")
    assert first.rcode() == NXDOMAIN and has_ad(first), describe(first)
    before = proxy.forwarded
    # nx < ny < to-insecure: the same NSEC covers it, the same one the wildcard
    other = ask(daemon.port, "ny.nsec.test.")
    assert proxy.forwarded == before, "an upstream query was made"
    assert other.rcode() == NXDOMAIN and has_ad(other), describe(other)
    assert {NSEC, SOA} <= types_in(other.authority), describe(other)
    soa_minimum = 300
    assert all(0 < r.ttl <= soa_minimum for r in other.authority), describe(other)
    # a client without DO gets the SOA, no NSEC, AD when it asked with AD
    plain = ask(daemon.port, "nz.nsec.test.", do=False, ad=True)
    assert proxy.forwarded == before
    assert plain.rcode() == NXDOMAIN and has_ad(plain), describe(plain)
    assert types_in(plain.authority) == {SOA}, describe(plain)
    assert daemon.resolver.counters["dnssec_synthesized"] == 2
    # a flood of random names in the span: answered, none leaves the machine, none is cached
    cached = daemon.call(len, daemon.resolver.cache)
    for n in range(40):
        assert ask(daemon.port, f"o{n}.nsec.test.").rcode() == NXDOMAIN
    assert proxy.forwarded == before
    assert daemon.call(len, daemon.resolver.cache) == cached
    # a name outside the held spans goes upstream (www < zz: the last NSEC, not held)
    assert ask(daemon.port, "zz.nsec.test.").rcode() == NXDOMAIN
    assert proxy.forwarded > before
    trace = asyncio.run_coroutine_threadsafe(
        explain(daemon.resolver, "nw.nsec.test.", dns.rdatatype.A), daemon.loop
    ).result(10)
    assert trace.source == "synthesized" and trace.validation is not None, trace
    assert trace.validation.security == "secure" and trace.rcode == "NXDOMAIN", trace
    daemon.call(daemon.resolver.query_log.flush)
    lines = (tmp_path / "queries.log").read_text().splitlines()
    ny = [line for line in lines if "ny.nsec.test. A NXDOMAIN" in line]
    assert len(ny) == 1 and ny[0].endswith("synthesized"), lines


def test_nodata_from_a_held_nsec_is_answered_without_asking(
    counted: tuple[DaemonThread, TamperProxy],
) -> None:
    daemon, proxy = counted
    first = ask(daemon.port, "www.nsec.test.", "MX")
    assert first.rcode() == NOERROR and not first.answer and has_ad(first), describe(first)
    before = proxy.forwarded
    other = ask(daemon.port, "www.nsec.test.", "TXT")
    assert proxy.forwarded == before
    assert other.rcode() == NOERROR and not other.answer and has_ad(other), describe(other)
    assert NSEC in types_in(other.authority), describe(other)
    # the type the NSEC lists is never denied: asked upstream, answered
    answer = ask(daemon.port, "www.nsec.test.", "A")
    assert proxy.forwarded > before and answer.answer, describe(answer)


def _in_span(owner: dns.name.Name, rdata: NSEC3, zone: dns.name.Name) -> dns.name.Name:
    """A name in the zone whose NSEC3 hash falls strictly inside the span of this record."""
    start = owner.labels[0].decode().upper()
    end = base64.b32hexencode(rdata.next).decode()
    for n in range(20_000):
        candidate = dns.name.from_text(f"n{n}", zone)
        hashed = dns.dnssec.nsec3_hash(candidate, rdata.salt, rdata.iterations, 1)
        inside = start < hashed < end if start < end else (hashed > start or hashed < end)
        if inside:
            return candidate
    raise AssertionError("no name found in the span")


def test_nxdomain_in_a_held_nsec3_span_is_answered_without_asking(
    counted: tuple[DaemonThread, TamperProxy],
) -> None:
    daemon, proxy = counted
    zone = dns.name.from_text("nsec3.test.")
    first = ask(daemon.port, "nx.nsec3.test.")
    assert first.rcode() == NXDOMAIN and has_ad(first), describe(first)
    # the record covering the next closer name nx.nsec3.test. (not the apex's, not *'s)
    nx_hash = dns.dnssec.nsec3_hash(dns.name.from_text("nx.nsec3.test."), b"", 0, 1)
    spans = [r for r in first.authority if r.rdtype == NSEC3_TYPE]
    cover = next(
        r for r in spans
        if r.name.labels[0].decode().upper() != nx_hash and _covers(r, nx_hash)
    )  # fmt: skip
    other = _in_span(cover.name, cover[0], zone)
    before = proxy.forwarded
    reply = ask(daemon.port, other.to_text())
    assert proxy.forwarded == before, f"{other} was asked upstream"
    assert reply.rcode() == NXDOMAIN and has_ad(reply), describe(reply)
    assert NSEC3_TYPE in types_in(reply.authority), describe(reply)


def _covers(rrset: dns.rrset.RRset, hashed: str) -> bool:
    start = rrset.name.labels[0].decode().upper()
    end = base64.b32hexencode(rrset[0].next).decode()
    return start < hashed < end if start < end else (hashed > start or hashed < end)


@pytest.mark.parametrize("counted", [False], indirect=True)
def test_aggressive_nsec_false_asks_upstream(counted: tuple[DaemonThread, TamperProxy]) -> None:
    daemon, proxy = counted
    assert ask(daemon.port, "nx.nsec.test.").rcode() == NXDOMAIN
    before = proxy.forwarded
    reply = ask(daemon.port, "ny.nsec.test.")
    assert reply.rcode() == NXDOMAIN and has_ad(reply), describe(reply)
    assert proxy.forwarded == before + 1
    assert daemon.resolver.counters["dnssec_synthesized"] == 0


def test_an_opt_out_span_is_never_synthesized(counted: tuple[DaemonThread, TamperProxy]) -> None:
    """RFC 8198 §4.2 (RFC 5155 §6): an opt-out span may hide unsigned delegations."""
    daemon, proxy = counted
    first = ask(daemon.port, "nx.optout.test.")
    assert first.rcode() == NXDOMAIN and not has_ad(first), describe(first)
    before = proxy.forwarded
    again = ask(daemon.port, "nx.optout.test.", "TXT")
    assert proxy.forwarded == before + 1, "answered from an opt-out proof"
    assert not has_ad(again)


@pytest.mark.parametrize("zone", ["nsec.test.", "nsec3.test."])
def test_a_wildcard_answer_is_expanded_from_the_held_wildcard(
    counted: tuple[DaemonThread, TamperProxy], zone: str
) -> None:
    daemon, proxy = counted
    wild = dns.name.from_text(f"wild.{zone}")
    first = ask(daemon.port, f"x.wild.{zone}", "TXT")
    assert first.rcode() == NOERROR and has_ad(first), describe(first)
    if zone == "nsec.test.":  # one NSEC (*.wild -> www) covers every name below wild
        name = dns.name.from_text("y", wild)
    else:  # a name whose hash lies in the span that covered x.wild's
        x_hash = dns.dnssec.nsec3_hash(dns.name.from_text("x", wild), b"", 0, 1)
        cover = next(r for r in first.authority if r.rdtype == NSEC3_TYPE and _covers(r, x_hash))
        name = _in_span(cover.name, cover[0], wild)
    before = proxy.forwarded
    expanded = ask(daemon.port, name.to_text(), "TXT")
    assert proxy.forwarded == before, "asked upstream"
    assert expanded.rcode() == NOERROR and has_ad(expanded), describe(expanded)
    txt = next(r for r in expanded.answer if r.rdtype == dns.rdatatype.TXT)
    assert txt.name == name and [rd.to_text() for rd in txt] == ['"wild"'], describe(expanded)
    sigs = next(r for r in expanded.answer if r.rdtype == dns.rdatatype.RRSIG)
    assert {NSEC, NSEC3_TYPE} & types_in(expanded.authority), describe(expanded)
    # the expansion verifies with the zone's key, as any validator downstream will check
    keys = next(r for r in ask(daemon.port, zone, "DNSKEY").answer if r.rdtype == 48)
    dns.dnssec.validate(txt, sigs, {dns.name.from_text(zone): keys})
    # a client without DO: the data and AD, no DNSSEC records
    plain = ask(daemon.port, f"z{name}", "TXT", do=False, ad=True)
    assert plain.rcode() == NOERROR and plain.answer, describe(plain)
    # a name that exists is never answered from the wildcard
    www = ask(daemon.port, f"www.{zone}", "TXT")
    assert www.rcode() == NOERROR and not www.answer, describe(www)


def test_held_opt_out_records_never_prove_nxdomain(
    counted: tuple[DaemonThread, TamperProxy],
) -> None:
    """Even held (as if validated), the records of an opt-out span prove no NXDOMAIN: an
    unsigned delegation may lie there (RFC 8198 §4.2, RFC 5155 §6)."""
    daemon, proxy = counted
    first = ask(daemon.port, "nx.optout.test.")
    assert first.rcode() == NXDOMAIN and not has_ad(first), describe(first)

    def sigs(rrset: dns.rrset.RRset) -> dns.rrset.RRset:
        return next(
            r for r in first.authority
            if r.rdtype == dns.rdatatype.RRSIG and r.name == rrset.name and r.covers == rrset.rdtype
        )  # fmt: skip

    until = time.time() + 300
    nsec3s = [Held(r, sigs(r), until) for r in first.authority if r.rdtype == NSEC3_TYPE]
    soa = next(Held(r, sigs(r), until) for r in first.authority if r.rdtype == SOA)
    assert len(nsec3s) >= 2
    zone = dns.name.from_text("optout.test.")
    denials = daemon.resolver.validation.validator.chain.denials
    daemon.call(denials.learn, zone, nsec3s, time.time(), soa)
    found = daemon.call(denials.synthesize, dns.name.from_text("nx.optout.test."),
                        dns.rdatatype.TXT, time.time(), 150)  # fmt: skip
    assert found is None
    before = proxy.forwarded
    again = ask(daemon.port, "nx.optout.test.", "TXT")
    assert proxy.forwarded == before + 1 and not has_ad(again), describe(again)
