"""Forwarding to a real Unbound over DoT (RFC 7858): answers, echo, truncation, pipelining, auth.

stubby-py runs as a subprocess on loopback, forwarding to a local Unbound that serves only static
test data on DoT with a trustme certificate for ``dns.test``. Clients are dnspython messages on
raw UDP and TCP sockets, so IDs and question octets can be checked exactly.
"""

from __future__ import annotations

import asyncio
import signal
import struct
from collections.abc import Iterator
from pathlib import Path

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest

from tests.peers import (
    Daemon,
    TLSFiles,
    Unbound,
    forward_args,
    forwarder,
    free_port,
    large_txt_strings,
    tcp_exchange,
    tcp_pipeline,
    udp_exchange,
    write_tls_files,
)

pytestmark = [pytest.mark.interop, pytest.mark.timeout(30)]

AUTH_NAME = "dns.test"
BIG_NAME = "big.test."
TRANSPORTS = ("udp", "tcp")
TC_BIT = 0x0200

RRView = set[tuple[str, int, int, str]]


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TLSFiles:
    return write_tls_files(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def unbound(tmp_path_factory: pytest.TempPathFactory, tls_files: TLSFiles) -> Iterator[Unbound]:
    with Unbound(
        tls_files, directory=tmp_path_factory.mktemp("unbound"), large_txt_name=BIG_NAME
    ) as server:
        yield server


@pytest.fixture(scope="module")
def daemon(
    tmp_path_factory: pytest.TempPathFactory, unbound: Unbound, tls_files: TLSFiles
) -> Iterator[Daemon]:
    directory = tmp_path_factory.mktemp("daemon")
    with forwarder(unbound, AUTH_NAME, tls_files.ca_pem, directory=directory) as running:
        yield running


def exchange(transport: str, wire: bytes, port: int, timeout: float = 5.0) -> bytes:
    if transport == "udp":
        return udp_exchange(wire, port, timeout=timeout)
    return tcp_exchange(wire, port, timeout=timeout)


def ask(
    daemon: Daemon, transport: str, query: dns.message.Message
) -> tuple[bytes, dns.message.Message]:
    wire = query.to_wire()
    try:
        reply_wire = exchange(transport, wire, daemon.port)
    except (OSError, EOFError) as exc:
        status = daemon.process.poll() if daemon.process else None
        pytest.fail(
            f"{transport} query {query.question[0]} to the daemon: {exc!r} "
            f"(daemon exit status {status}); stderr:\n{daemon.stderr_text()}"
        )
    reply = dns.message.from_wire(reply_wire)
    assert reply.id == query.id, "reply ID is not the client's"
    assert reply.flags & dns.flags.QR
    return reply_wire, reply


def view(section: list[dns.rrset.RRset]) -> RRView:
    """Records without TTLs, owner names lower-cased: what must match between two answers."""
    return {
        (rrset.name.to_text().lower(), rrset.rdclass, rrset.rdtype, rdata.to_text())
        for rrset in section
        for rdata in rrset
    }


def question_octets(wire: bytes) -> bytes:
    """The question section of a one-question message (its name is never compressed)."""
    message = dns.message.from_wire(wire)
    qname_wire = message.question[0].name.to_wire()
    assert qname_wire is not None
    return wire[12 : 12 + len(qname_wire) + 4]


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize(
    ("qname", "rdtype", "expected"),
    [
        ("www.test.", "A", "192.0.2.1"),
        ("www.test.", "AAAA", "2001:db8::1"),
        ("www.test.", "TXT", '"hello from unbound"'),
        ("dns.test.", "A", "127.0.0.1"),
    ],
)
def test_answer_equals_unbound_data(
    daemon: Daemon, unbound: Unbound, transport: str, qname: str, rdtype: str, expected: str
) -> None:
    reference = unbound.query(qname, rdtype)
    query = dns.message.make_query(qname, rdtype)
    _, reply = ask(daemon, transport, query)

    assert reply.rcode() == dns.rcode.NOERROR, daemon.stderr_text()
    assert view(reply.answer) == view(reference.answer)
    assert view(reply.answer) == {(qname, 1, dns.rdatatype.from_text(rdtype), expected)}
    assert all(0 < rrset.ttl <= 300 for rrset in reply.answer)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_nxdomain_passed_through_with_soa(daemon: Daemon, unbound: Unbound, transport: str) -> None:
    qname = f"absent-{transport}.test."
    reference = unbound.query(qname, "A")
    assert reference.rcode() == dns.rcode.NXDOMAIN

    _, reply = ask(daemon, transport, dns.message.make_query(qname, "A"))

    assert reply.rcode() == dns.rcode.NXDOMAIN, daemon.stderr_text()
    assert reply.answer == []
    assert view(reply.authority) == view(reference.authority)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_id_and_question_echoed_exactly(daemon: Daemon, transport: str) -> None:
    # The first spelling fills any cache; the others must still get their own octets back.
    spellings = ["www.test.", "WwW.Test.", "WWW.TEST.", "wWw.tEsT.", "www.test."]
    for qid, qname in zip([0, 0xFFFF, 0x1234, 0x8001, 0x00FF], spellings, strict=True):
        query = dns.message.make_query(qname, "A")
        query.id = qid
        wire = query.to_wire()
        reply_wire, reply = ask(daemon, transport, query)

        assert reply_wire[:2] == wire[:2]
        assert struct.unpack("!H", reply_wire[4:6]) == (1,), "QDCOUNT must be 1"
        assert question_octets(reply_wire) == question_octets(wire), (
            f"question not echoed octet for octet: asked {qname}, got {reply.question[0].name}"
        )
        assert reply.rcode() == dns.rcode.NOERROR
        assert view(reply.answer) == {("www.test.", 1, dns.rdatatype.A, "192.0.2.1")}


def test_large_answer_without_edns_truncated_over_udp_complete_over_tcp(
    daemon: Daemon, unbound: Unbound
) -> None:
    reference = unbound.query(BIG_NAME, "TXT")
    assert len(reference.to_wire()) > 512
    query = dns.message.make_query(BIG_NAME, "TXT", use_edns=False)
    wire = query.to_wire()

    udp_reply = udp_exchange(wire, daemon.port, timeout=5.0)
    assert len(udp_reply) <= 512, f"{len(udp_reply)}-octet UDP reply to a client without EDNS"
    assert udp_reply[:2] == wire[:2]
    (flags,) = struct.unpack("!H", udp_reply[2:4])
    assert flags & TC_BIT, "reply over 512 octets must come back with TC set"
    assert question_octets(udp_reply) == question_octets(wire)

    tcp_reply_wire = tcp_exchange(wire, daemon.port, timeout=5.0)
    tcp_reply = dns.message.from_wire(tcp_reply_wire)
    assert len(tcp_reply_wire) > 512
    assert not tcp_reply.flags & dns.flags.TC
    assert tcp_reply.rcode() == dns.rcode.NOERROR
    assert view(tcp_reply.answer) == view(reference.answer)
    assert {rd for (_, _, _, rd) in view(tcp_reply.answer)} == {
        f'"{s}"' for s in large_txt_strings()
    }


def test_large_answer_fits_edns_client_over_udp(daemon: Daemon, unbound: Unbound) -> None:
    reference = unbound.query(BIG_NAME, "TXT")
    query = dns.message.make_query(BIG_NAME, "TXT", use_edns=0, payload=1232)
    reply_wire = udp_exchange(query.to_wire(), daemon.port, timeout=5.0)
    reply = dns.message.from_wire(reply_wire)

    assert 512 < len(reply_wire) <= 1232
    assert not reply.flags & dns.flags.TC
    assert view(reply.answer) == view(reference.answer)


def pipelined_round(port: int, tag: str, connections: int, per_connection: int) -> list[str]:
    """One round of pipelined TCP queries; returns the names that were never answered."""
    # Distinct names: every query is a cache miss forwarded over DoT. IDs repeat across
    # connections, as independent clients' IDs do.
    batches = [
        {qid: f"{tag}c{conn}-{qid}.bulk.test." for qid in range(1, per_connection + 1)}
        for conn in range(connections)
    ]

    def wires(batch: dict[int, str]) -> list[bytes]:
        out = []
        for qid, qname in batch.items():
            query = dns.message.make_query(qname, "A")
            query.id = qid
            out.append(query.to_wire())
        return out

    async def run_all() -> list[list[bytes]]:
        # written 10 at a time, so new queries meet replies to earlier ones on the daemon
        jobs = [tcp_pipeline(port, wires(batch), timeout=4.0, chunk=10) for batch in batches]
        return await asyncio.gather(*jobs)

    missing: list[str] = []
    for batch, replies in zip(batches, asyncio.run(run_all()), strict=True):
        seen: set[int] = set()
        for reply_wire in replies:
            reply = dns.message.from_wire(reply_wire)
            assert reply.id in batch and reply.id not in seen, f"unexpected ID {reply.id}"
            seen.add(reply.id)
            qname = batch[reply.id]
            assert reply.question[0].name.to_text() == qname
            assert reply.rcode() == dns.rcode.NOERROR
            assert view(reply.answer) == {(qname, 1, dns.rdatatype.A, "192.0.2.99")}
        missing += [batch[qid] for qid in sorted(set(batch) - seen)]
    return missing


def test_thousand_queries_pipelined_over_tcp_all_answered(daemon: Daemon) -> None:
    # 10 connections x 100 queries, five rounds: a reply lost to a rare race (e.g. an upstream
    # message ID reused while its previous owner is still being cleaned up) shows in most runs.
    connections, per_connection = 10, 100
    for round_number in range(5):
        missing = pipelined_round(daemon.port, f"r{round_number}", connections, per_connection)
        assert not missing, (
            f"round {round_number}: {len(missing)} of {connections * per_connection} pipelined "
            f"queries got no reply at all (neither answer nor SERVFAIL within 4 s): "
            f"{missing[:10]}\n{daemon.stderr_text()}"
        )


@pytest.mark.parametrize("fault", ["wrong-auth-name", "untrusted-ca"])
def test_unverifiable_upstream_gives_servfail_never_an_answer(
    tmp_path: Path, unbound: Unbound, tls_files: TLSFiles, fault: str
) -> None:
    if fault == "wrong-auth-name":
        auth_name, ca_file = "wrong.example", tls_files.ca_pem
    else:
        auth_name, ca_file = AUTH_NAME, write_tls_files(tmp_path / "other", prefix="other-").ca_pem
    port = free_port()
    args = forward_args(port, unbound.dot_upstream, auth_name, ca_file)
    with Daemon(args, port=port, directory=tmp_path) as bad:
        for attempt in range(3):
            for transport in TRANSPORTS:
                query = dns.message.make_query(f"n{attempt}-{transport}.bulk.test.", "A")
                _, reply = ask(bad, transport, query)
                assert reply.rcode() == dns.rcode.SERVFAIL, (
                    f"attempt {attempt} over {transport}: {dns.rcode.to_text(reply.rcode())}\n"
                    f"{bad.stderr_text()}"
                )
                assert reply.answer == []


def test_sigterm_stops_daemon_promptly(
    tmp_path: Path, unbound: Unbound, tls_files: TLSFiles
) -> None:
    port = free_port()
    args = forward_args(port, unbound.dot_upstream, AUTH_NAME, tls_files.ca_pem)
    with Daemon(args, port=port, directory=tmp_path, stop_timeout=5.0) as running:
        _, reply = ask(running, "udp", dns.message.make_query("www.test.", "A"))
        assert reply.rcode() == dns.rcode.NOERROR
        status = running.stop()
    assert not running.killed, f"needed SIGKILL after SIGTERM:\n{running.stderr_text()}"
    assert status in (0, -signal.SIGTERM), f"exit status {status}:\n{running.stderr_text()}"
