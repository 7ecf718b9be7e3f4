"""Plain udp:// and tcp:// upstreams (LAN resolvers): answers, TC fallback, never padded."""

from __future__ import annotations

import dns.message
import dns.query
import dns.rcode

from tests.daemon_thread import make_config, running_daemon
from tests.upstream_server import LocalUpstream


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
