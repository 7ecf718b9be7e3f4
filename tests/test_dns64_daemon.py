"""DNS64 end to end on loopback: a local upstream with A records and no AAAA, the daemon with
`dns64` set or discovered (RFC 7050) through a local stand-in for the network's resolver."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from ipaddress import IPv6Address, IPv6Network
from pathlib import Path

import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest

from stubby_py.commands import explain as explain_command
from stubby_py.core import ra_options
from stubby_py.core.ra_options import RouterOption
from stubby_py.daemon import control, netwatch
from stubby_py.daemon.explain import explain
from stubby_py.daemon.metrics import render
from tests.daemon_thread import make_config, running_daemon
from tests.servers import LocalUpstream, Misbehaviour
from tests.servers.stream import local_upstream
from tests.service import wait_for

pytestmark = pytest.mark.timeout(60)

RECORDS = {
    "v4only.example.": [("A", "93.184.216.34")],
    "dual.example.": [("A", "93.184.216.35"), ("AAAA", "2001:db8::35")],
    "loopback.example.": [("A", "127.0.0.7")],
}


@pytest.fixture
def network_resolver() -> Iterator[LocalUpstream]:
    """The network's own resolver (plain DNS), which knows the NAT64 prefix."""
    with local_upstream(None) as server:
        server.state.records = {"ipv4only.arpa.": [("AAAA", "64:ff9b::c000:aa")]}
        yield server


def aaaa(port: int, name: str) -> dns.message.Message:
    query = dns.message.make_query(name, "AAAA")
    query.flags |= dns.flags.AD  # asks for AD: a synthesized answer must still not carry it
    return dns.query.udp(query, "127.0.0.1", port=port, timeout=5)


def addresses(reply: dns.message.Message) -> list[str]:
    return [r.to_text() for s in reply.answer if s.rdtype == dns.rdatatype.AAAA for r in s]


def test_configured_prefix_synthesizes_passes_real_aaaa_and_excludes_loopback(
    plain_upstream: LocalUpstream, tmp_path: Path
) -> None:
    plain_upstream.state.records = dict(RECORDS)
    sock = str(tmp_path / "control.sock")
    config = make_config(
        [f"udp://127.0.0.1:{plain_upstream.port}"], dns64="64:ff9b::/96",
        network_resolver="off", captive_portal="off", control_socket=sock,
        query_log=str(tmp_path / "queries.log"),
    )  # fmt: skip
    with running_daemon(config) as daemon:
        reply = aaaa(daemon.port, "v4only.example.")
        assert reply.rcode() == dns.rcode.NOERROR
        assert addresses(reply) == ["64:ff9b::5db8:d822"]
        assert not reply.flags & dns.flags.AD
        assert reply.answer[0].ttl <= 300
        # again, from the cached NODATA and A: the same synthesized answer
        assert addresses(aaaa(daemon.port, "V4ONLY.example.")) == ["64:ff9b::5db8:d822"]
        assert addresses(aaaa(daemon.port, "dual.example.")) == ["2001:db8::35"]
        loop = aaaa(daemon.port, "loopback.example.")
        assert loop.rcode() == dns.rcode.NOERROR and loop.answer == []
        # a client that checks for itself (CD) gets the NODATA as it came
        cd = dns.message.make_query("v4only.example.", "AAAA")
        cd.flags |= dns.flags.CD
        assert dns.query.udp(cd, "127.0.0.1", port=daemon.port, timeout=5).answer == []
        stats = control.request(sock, "stats")
        assert stats["counters"]["dns64_synthesized"] == 2
        assert stats["portal"]["dns64_prefix"] == "64:ff9b::/96"
        trace = asyncio.run_coroutine_threadsafe(
            explain(daemon.resolver, "v4only.example.", dns.rdatatype.AAAA), daemon.loop
        ).result(10)
        assert trace.source == "synthesized-dns64" and not trace.ad, trace
        assert "synthesized (dns64)" in explain_command._answered({"source": trace.source})
        metrics = daemon.call(lambda: render(daemon.daemon.collect_stats()))
        assert 'stubby_py_dns64_prefix_info{prefix="64:ff9b::/96",source="configured"} 1' in metrics
        assert "stubby_py_dns64_synthesized_total 3" in metrics
        assert daemon.resolver.query_log is not None
        daemon.call(daemon.resolver.query_log.flush)
    lines = (tmp_path / "queries.log").read_text().splitlines()
    v4only = [line for line in lines if "v4only.example. aaaa noerror" in line.lower()]
    # the two synthesized, and the CD one as it came
    assert [line.rsplit(" ", 1)[1] for line in v4only] == [
        "synthesized-dns64", "synthesized-dns64", "upstream",
    ], lines  # fmt: skip


def test_off_passes_nodata(plain_upstream: LocalUpstream) -> None:
    plain_upstream.state.records = dict(RECORDS)
    config = make_config([f"udp://127.0.0.1:{plain_upstream.port}"], dns64="off")
    with running_daemon(config) as daemon:
        assert aaaa(daemon.port, "v4only.example.").answer == []


def test_auto_discovers_the_prefix_through_the_network_resolver_and_again_on_a_change(
    plain_upstream: LocalUpstream, network_resolver: LocalUpstream, tmp_path: Path
) -> None:
    plain_upstream.state.records = dict(RECORDS)
    # the upstream knows nothing of this network's NAT64: only the network resolver is asked
    plain_upstream.state.nxdomain = {"ipv4only.arpa."}
    sock = str(tmp_path / "control.sock")
    config = make_config(
        [f"udp://127.0.0.1:{plain_upstream.port}"], dns64="auto", captive_portal="off",
        network_resolver=f"udp://127.0.0.1:{network_resolver.port}", control_socket=sock,
    )  # fmt: skip
    with running_daemon(config) as daemon:

        def prefix() -> str | None:
            return control.request(sock, "portal").get("dns64_prefix")

        assert wait_for(lambda: prefix() == "64:ff9b::/96", timeout=10)
        assert addresses(aaaa(daemon.port, "v4only.example.")) == ["64:ff9b::5db8:d822"]
        # another network, another NAT64 prefix (a network-specific one, RFC 6052)
        network_resolver.state.records = {"ipv4only.arpa.": [("AAAA", "2001:db8:64::c000:ab")]}
        control.request(sock, "network-changed")
        assert wait_for(lambda: prefix() == "2001:db8:64::/96", timeout=15)
        assert addresses(aaaa(daemon.port, "v4only.example.")) == ["2001:db8:64::5db8:d822"]
        # a network without NAT64: DNS64 goes off
        network_resolver.state.records = {"ipv4only.arpa.": [("A", "192.0.0.170")]}
        control.request(sock, "network-changed")
        assert wait_for(lambda: prefix() is None, timeout=15)
        assert aaaa(daemon.port, "v4only.example.").answer == []
    assert not any(b"ipv4only" in q for q in plain_upstream.state.queries)


def test_exclusions_and_a_failure(plain_upstream: LocalUpstream) -> None:
    """RFC 6147 §5.1.4: IPv4-mapped AAAA records count as none, and so do the configured IPv6
    ranges; configured IPv4 ranges are not mapped. §5.1.6: when the A question fails, the
    client hears SERVFAIL, not a NODATA it would cache."""
    plain_upstream.state.records = {
        "mapped.example.": [("A", "93.184.216.36"), ("AAAA", "::ffff:93.184.216.36")],
        "doc.example.": [("A", "93.184.216.37"), ("AAAA", "2001:db8::37")],
        "lan.example.": [("A", "10.1.2.3")],
        "afails.example.": [],
    }

    def chooser(query: dns.message.Message) -> Misbehaviour:
        name = query.question[0].name.to_text().lower()
        if name == "afails.example." and query.question[0].rdtype == dns.rdatatype.A:
            return Misbehaviour.SERVFAIL
        return Misbehaviour.NONE

    plain_upstream.state.chooser = chooser
    config = make_config(
        [f"udp://127.0.0.1:{plain_upstream.port}"], dns64="2001:db8:64::/96",
        dns64_exclude=["2001:db8::/48", "10.0.0.0/8"], network_resolver="off",
        captive_portal="off",
    )  # fmt: skip
    with running_daemon(config) as daemon:
        assert addresses(aaaa(daemon.port, "mapped.example.")) == ["2001:db8:64::5db8:d824"]
        assert addresses(aaaa(daemon.port, "doc.example.")) == ["2001:db8:64::5db8:d825"]
        lan = aaaa(daemon.port, "lan.example.")
        assert lan.rcode() == dns.rcode.NOERROR and lan.answer == []
        failed = aaaa(daemon.port, "afails.example.")
        assert failed.rcode() == dns.rcode.SERVFAIL


def test_a_router_advertisements_prefix_wins_until_withdrawn(
    plain_upstream: LocalUpstream, network_resolver: LocalUpstream, tmp_path: Path
) -> None:
    """RFC 8781 §5.1: the RA's PREF64 is preferred over RFC 7050's; withdrawn (lifetime 0), RFC
    7050 is asked again. The options go in as netwatch.py hands them over (the netns test,
    test_dns64_netns.py, sends real advertisements)."""
    plain_upstream.state.records = dict(RECORDS)
    sock = str(tmp_path / "control.sock")
    config = make_config(
        [f"udp://127.0.0.1:{plain_upstream.port}"], dns64="auto", captive_portal="off",
        network_resolver=f"udp://127.0.0.1:{network_resolver.port}", control_socket=sock,
    )  # fmt: skip
    nsp = IPv6Network("2001:db8:64::/96")
    router = IPv6Address("fe80::1")

    def advertise(lifetime: int) -> None:
        option = RouterOption(1, ra_options.pref64_option(nsp, lifetime), router)
        daemon.call(lambda: netwatch.router_option(daemon.runtime, option))

    def state() -> tuple[str | None, str | None]:
        status = control.request(sock, "portal")
        return status.get("dns64_prefix"), status.get("dns64_source")

    with running_daemon(config) as daemon:
        assert wait_for(lambda: state() == ("64:ff9b::/96", "rfc7050"), timeout=10)
        advertise(1800)
        assert state() == ("2001:db8:64::/96", "ra-pref64")
        assert addresses(aaaa(daemon.port, "v4only.example.")) == ["2001:db8:64::5db8:d822"]
        network_resolver.state.queries.clear()
        control.request(sock, "network-changed")  # the RA's prefix stays: RFC 7050 not asked
        time.sleep(1.5)
        assert state() == ("2001:db8:64::/96", "ra-pref64")
        assert not network_resolver.state.queries
        advertise(0)  # withdrawn
        assert wait_for(lambda: state() == ("64:ff9b::/96", "rfc7050"), timeout=10)
        assert addresses(aaaa(daemon.port, "v4only.example.")) == ["64:ff9b::5db8:d822"]
