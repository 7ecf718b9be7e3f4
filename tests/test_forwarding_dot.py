"""End to end through the real listener to a local DoT upstream, with dnspython as the client."""

from __future__ import annotations

import dns.message
import dns.query
import dns.rcode

from tests.conftest import dot_uri
from tests.daemon_thread import make_config, running_daemon
from tests.servers import LocalUpstream


def ask(port: int, name: str = "www.example.", rdtype: str = "A", tcp: bool = False, **kw):  # type: ignore[no-untyped-def]
    query = dns.message.make_query(name, rdtype, **kw)
    send = dns.query.tcp if tcp else dns.query.udp
    return query, send(query, "127.0.0.1", port=port, timeout=5)


def test_answer_travels_over_dot(dot_upstream: LocalUpstream, ca_file: str) -> None:
    with running_daemon(make_config([dot_uri(dot_upstream)], ca_file)) as daemon:
        query, reply = ask(daemon.port)
        assert reply.id == query.id
        assert reply.rcode() == dns.rcode.NOERROR
        assert reply.answer[0].to_text() == "www.example. 300 IN A 192.0.2.1"
        _, reply = ask(daemon.port, tcp=True)
        assert reply.answer[0][0].address == "192.0.2.1"
    assert dot_upstream.state.connections == 1
