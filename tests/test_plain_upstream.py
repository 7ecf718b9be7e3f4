"""Plain udp:// and tcp:// upstreams (LAN resolvers): answers, TC fallback, never padded."""

from __future__ import annotations

import socket
import time

import dns.message
import dns.query
import dns.rcode

from tests.daemon_thread import make_config, running_daemon
from tests.servers import LocalUpstream, Misbehaviour
from tests.service import wait_for


def test_udp_upstream_answers_unpadded_and_falls_back_to_tcp(plain_upstream: LocalUpstream) -> None:
    big = [("TXT", '"' + "y" * 200 + f'{i:03d}"') for i in range(10)]
    plain_upstream.state.records = {"big.lan.": big}
    config = make_config([f"udp://127.0.0.1:{plain_upstream.port}"])
    with running_daemon(config) as daemon:
        reply = dns.query.udp(
            dns.message.make_query("host.lan.", "A"), "127.0.0.1", port=daemon.port, timeout=3
        )
        assert reply.answer[0][0].address == "192.0.2.1"
        whole = dns.query.tcp(
            dns.message.make_query("big.lan.", "TXT"), "127.0.0.1", port=daemon.port, timeout=3
        )
        assert len(whole.answer[0]) == 10
    first = dns.message.from_wire(plain_upstream.state.queries[0])
    assert not first.options  # no padding, no keepalive in cleartext
    # the big answer came back truncated over UDP, then whole over TCP
    assert plain_upstream.state.connections == 1


def test_tcp_upstream(plain_upstream: LocalUpstream) -> None:
    config = make_config([f"tcp://127.0.0.1:{plain_upstream.port}"])
    with running_daemon(config) as daemon:
        for name in ("a.lan.", "b.lan."):
            reply = dns.query.udp(
                dns.message.make_query(name, "A"), "127.0.0.1", port=daemon.port, timeout=3
            )
            assert reply.rcode() == dns.rcode.NOERROR
    assert plain_upstream.state.connections == 1


def test_a_stalled_udp_upstream_holds_at_most_max_udp_sockets(
    plain_upstream: LocalUpstream,
) -> None:
    """Each UDP query has a socket of its own: before, 100 queries to a silent LAN resolver held
    100 descriptors (any number, with more queries), which the fd budget cannot allow."""
    from stubby_py.transports.plain import MAX_UDP_SOCKETS

    plain_upstream.state.misbehaviour = Misbehaviour.STALL
    config = make_config(
        [f"udp://127.0.0.1:{plain_upstream.port}"], timeout=5.0, attempt_timeout=5.0, hedge=False
    )
    with running_daemon(config) as daemon:
        names = [f"n{i}.lan." for i in range(MAX_UDP_SOCKETS + 36)]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            for name in names:
                sock.sendto(dns.message.make_query(name, "A").to_wire(), ("127.0.0.1", daemon.port))
            assert wait_for(lambda: len(plain_upstream.state.queries) >= MAX_UDP_SOCKETS)
            time.sleep(0.3)  # the others would be on their way by now
            assert len(plain_upstream.state.queries) == MAX_UDP_SOCKETS
