"""DoT upstream faults: every client query gets the answer or SERVFAIL in time, never a lie."""

from __future__ import annotations

import threading
import time

import dns.edns
import dns.message
import dns.query
import dns.rcode
import pytest
import trustme

from stubby_py.transports.tls import spki_pin
from tests.clients import ask_many, rcodes
from tests.conftest import dot_uri, server_context
from tests.daemon_thread import make_config, running_daemon
from tests.servers import LocalUpstream, Misbehaviour, local_upstream

TIMEOUT = 1.5


def config_for(server: LocalUpstream, ca_file: str, **kw):  # type: ignore[no-untyped-def]
    return make_config([dot_uri(server)], ca_file, timeout=TIMEOUT, attempt_timeout=TIMEOUT, **kw)


def ede_codes(reply: dns.message.Message) -> list[int]:
    return [o.code for o in reply.options if isinstance(o, dns.edns.EDEOption)]


def test_thousand_queries_share_one_tls_connection(
    dot_upstream: LocalUpstream, ca_file: str
) -> None:
    with running_daemon(config_for(dot_upstream, ca_file)) as daemon:
        results = ask_many([f"q{i}.example." for i in range(1000)], daemon.port, concurrency=100)
    assert rcodes(results) == ["NOERROR"] * 1000
    assert dot_upstream.state.connections == 1
    assert len(dot_upstream.state.queries) == 1000


def test_replies_out_of_order_are_matched_by_id(dot_upstream: LocalUpstream, ca_file: str) -> None:
    dot_upstream.state.misbehaviour = Misbehaviour.REVERSE
    dot_upstream.state.records = {f"n{i}.example.": [("A", f"192.0.2.{i}")] for i in range(1, 21)}
    with running_daemon(config_for(dot_upstream, ca_file)) as daemon:
        results = ask_many([f"n{i}.example." for i in range(1, 21)], daemon.port, concurrency=20)
    for i, (reply, _) in enumerate(results, start=1):
        assert reply is not None
        assert reply.answer[0][0].address == f"192.0.2.{i}"


@pytest.mark.parametrize(
    "behaviour",
    [
        Misbehaviour.STALL,
        Misbehaviour.CLOSE,
        Misbehaviour.WRONG_ID,
        Misbehaviour.WRONG_QUESTION,
        Misbehaviour.GARBAGE,
    ],
)
def test_misbehaving_upstream_gives_servfail_in_time(
    dot_upstream: LocalUpstream, ca_file: str, behaviour: Misbehaviour
) -> None:
    dot_upstream.state.misbehaviour = behaviour
    with running_daemon(config_for(dot_upstream, ca_file)) as daemon:
        results = ask_many([f"f{i}.example." for i in range(10)], daemon.port, timeout=4)
        assert rcodes(results) == ["SERVFAIL"] * 10
        assert max(seconds for _, seconds in results) < TIMEOUT + 0.5
        query = dns.message.make_query("one.example.", "A", use_edns=0)
        reply = dns.query.udp(query, "127.0.0.1", port=daemon.port, timeout=4)
        assert reply.rcode() == dns.rcode.SERVFAIL
        assert ede_codes(reply), "SERVFAIL carries an Extended DNS Error"
        if behaviour in (Misbehaviour.WRONG_ID, Misbehaviour.WRONG_QUESTION):
            stats = daemon.resolver.transports[0].stats
            assert stats.mismatched > 0


def test_upstream_connection_killed_mid_run_loses_no_query(
    dot_upstream: LocalUpstream, ca_file: str
) -> None:
    dot_upstream.state.delay = 0.002
    with running_daemon(config_for(dot_upstream, ca_file)) as daemon:

        def kill_mid_run() -> None:
            # cut once queries are flowing on the connection, however slow the machine is
            deadline = time.monotonic() + 20
            while len(dot_upstream.state.queries) < 200 and time.monotonic() < deadline:
                time.sleep(0.01)
            dot_upstream.drop_connections()

        killer = threading.Thread(target=kill_mid_run)
        killer.start()
        results = ask_many([f"k{i}.example." for i in range(1500)], daemon.port, concurrency=100)
        killer.join()
    answers = rcodes(results)
    assert "TIMEOUT" not in answers
    assert set(answers) <= {"NOERROR", "SERVFAIL"}
    assert answers.count("NOERROR") >= 1400  # in-flight queries are retried on a new connection
    assert dot_upstream.state.connections >= 2


def test_reconnects_after_the_server_closes_an_idle_connection(
    dot_upstream: LocalUpstream, ca_file: str
) -> None:
    with running_daemon(config_for(dot_upstream, ca_file)) as daemon:
        assert rcodes(ask_many(["a.example."], daemon.port)) == ["NOERROR"]
        dot_upstream.drop_connections()
        time.sleep(0.1)
        assert rcodes(ask_many(["b.example."], daemon.port)) == ["NOERROR"]
    assert dot_upstream.state.connections == 2


def test_certificate_name_mismatch_is_refused(dot_upstream: LocalUpstream, ca_file: str) -> None:
    config = make_config([dot_uri(dot_upstream, "other.test")], ca_file, timeout=TIMEOUT)
    with running_daemon(config) as daemon:
        assert rcodes(ask_many(["a.example."], daemon.port)) == ["SERVFAIL"]
        kinds = daemon.resolver.pool.health[0].failure_kinds
    assert kinds == {"cert-name-mismatch": 1}
    assert dot_upstream.state.queries == []


def test_untrusted_certificate_is_refused(dot_upstream: LocalUpstream) -> None:
    with running_daemon(make_config([dot_uri(dot_upstream)], None, timeout=TIMEOUT)) as daemon:
        assert rcodes(ask_many(["a.example."], daemon.port)) == ["SERVFAIL"]
    assert dot_upstream.state.queries == []


def test_spki_pins_are_enforced(ca: trustme.CA, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from dataclasses import replace

    leaf = ca.issue_cert("dns.test", "127.0.0.1")
    good_pin = spki_pin(_der(leaf))
    ca_path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_path))
    context = server_context(ca)
    leaf.configure_cert(context)
    with local_upstream(context) as server:
        for pins, expected in (((good_pin,), "NOERROR"), (("A" * 43 + "=",), "SERVFAIL")):
            config = make_config([dot_uri(server)], str(ca_path), timeout=TIMEOUT)
            spec = replace(config.forwarding.upstreams[0], spki_pins=pins)
            config = config.with_options(upstreams=(spec,))
            with running_daemon(config) as daemon:
                assert rcodes(ask_many(["a.example."], daemon.port)) == [expected]
        assert len(server.state.queries) == 1


def _der(leaf: trustme.LeafCert) -> bytes:
    import ssl

    return ssl.PEM_cert_to_DER_cert(leaf.cert_chain_pems[0].bytes().decode())


def test_closed_port_gives_fast_servfail(ca_file: str) -> None:
    with local_upstream(None) as server:
        port = server.port
    config = make_config([f"tls://127.0.0.1:{port}#dns.test"], ca_file, timeout=TIMEOUT)
    with running_daemon(config) as daemon:
        results = ask_many(["a.example.", "b.example."], daemon.port)
    assert rcodes(results) == ["SERVFAIL", "SERVFAIL"]
    assert max(s for _, s in results) < 1.0
