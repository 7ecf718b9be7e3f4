"""Forwarding to a real Unbound over DNS over HTTPS (RFC 8484 on HTTP/2, Unbound's nghttp2 server).

Unbound runs on loopback from local data only (tests/peers.py: no recursion, no internet) with a
trustme certificate for ``dns.test`` on its https-port and ``http-endpoint: /dns-query``; the
daemon runs in-process and forwards to it with POST and with GET. Answers must match what Unbound
itself says over plain TCP. Without Unbound the tests skip, or fail when CI=true.
"""

from __future__ import annotations

from collections.abc import Iterator

import dns.message
import dns.rcode
import pytest

from tests.daemon_thread import running_daemon
from tests.peers import TLSFiles, Unbound, write_tls_files
from tests.servers.client_side import ask, ask_many, daemon_config

pytestmark = [pytest.mark.interop, pytest.mark.timeout(30)]

AUTH_NAME = "dns.test"


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TLSFiles:
    return write_tls_files(tmp_path_factory.mktemp("tls"), (AUTH_NAME, "127.0.0.1"))


@pytest.fixture(scope="module")
def unbound(tmp_path_factory: pytest.TempPathFactory, tls_files: TLSFiles) -> Iterator[Unbound]:
    with Unbound(tls_files, directory=tmp_path_factory.mktemp("unbound"), doh=True) as server:
        yield server


def doh_uri(unbound: Unbound, name: str = AUTH_NAME) -> str:
    return f"https://{name}:{unbound.doh_port}/dns-query#127.0.0.1"


def _records(reply: dns.message.Message) -> set[str]:
    return {rrset.to_text() for rrset in reply.answer}


@pytest.mark.parametrize("method", ["post", "get"])
def test_answers_match_unbound(unbound: Unbound, tls_files: TLSFiles, method: str) -> None:
    config = daemon_config(doh_uri(unbound), str(tls_files.ca_pem), method=method)
    with running_daemon(config) as daemon:
        for name, rdtype in [("www.test.", "A"), ("www.test.", "AAAA"), ("www.test.", "TXT")]:
            reply = ask(daemon.port, name, rdtype)
            reference = unbound.query(name, rdtype)
            assert reply.rcode() == dns.rcode.NOERROR
            assert _records(reply) == _records(reference) != set()
        missing = ask(daemon.port, "nope.test.", "A")
        assert missing.rcode() == dns.rcode.NXDOMAIN
        transport = daemon.resolver.transports[0]
        assert transport.stats.handshakes == 1
        assert daemon.resolver.pool.health[0].failures == 0


def test_concurrent_queries_over_one_connection(unbound: Unbound, tls_files: TLSFiles) -> None:
    names = [f"n{i}.bulk.test." for i in range(50)]
    with running_daemon(daemon_config(doh_uri(unbound), str(tls_files.ca_pem))) as daemon:
        replies = ask_many(daemon.port, names)
        assert all(r.answer and r.answer[0][0].address == "192.0.2.99" for r in replies)
        assert [r.question[0].name.to_text() for r in replies] == names
        assert daemon.resolver.transports[0].stats.handshakes == 1


def test_wrong_authentication_name_is_refused(unbound: Unbound, tls_files: TLSFiles) -> None:
    config = daemon_config(doh_uri(unbound, "wrong.test"), str(tls_files.ca_pem))
    with running_daemon(config) as daemon:
        reply = ask(daemon.port, "www.test.", "A")
    assert reply.rcode() == dns.rcode.SERVFAIL
    assert not reply.answer
