"""DoQ upstreams (RFC 9250), end to end through the real daemon to a local aioquic server.

The server (tests/servers/quic.py) answers or misbehaves on demand, keeps session tickets and
can cap the client's stream credit. Checked: answers, ID 0 and padding on the wire, one
connection for a burst and for a sequence, stream credit waited for, resumption after the server
drops the connection or the connection idles out, authentication failures refused, and every
misbehaviour a SERVFAIL within the deadline. The stream framing (sans-IO) is tested on its own.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator

import dns.message
import dns.rcode
import pytest
import trustme

from stubby_py.transports.doq import DOQ_REQUEST_CANCELLED, DoQProtocolError, stream_reply
from tests.daemon_thread import running_daemon
from tests.servers import (
    DoQServer,
    Misbehaviour,
    doq_server,
    h3_server,
    server_pin,
    write_cert_files,
)
from tests.servers.client_side import (
    TIMEOUT,
    answer_address,
    ask,
    ask_many,
    daemon_config,
    wait_for,
    wire_queries_ok,
)

pytestmark = pytest.mark.timeout(30)

OTHER_PIN = base64.b64encode(bytes(32)).decode()


# --- sans-IO: the stream framing ------------------------------------------------------------------


def _reply(msg_id: int = 0) -> bytes:
    query = dns.message.make_query("www.example.", "A")
    reply = dns.message.make_response(query)
    reply.id = msg_id
    return reply.to_wire()


def test_stream_reply_waits_for_the_whole_message() -> None:
    reply = _reply()
    framed = len(reply).to_bytes(2, "big") + reply
    for cut in range(len(framed)):
        assert stream_reply(framed[:cut], ended=False) is None
    assert stream_reply(framed, ended=False) == reply
    assert stream_reply(framed, ended=True) == reply


@pytest.mark.parametrize(
    ("data", "fault"),
    [
        (b"\x00\x40" + _reply(), "ended before"),  # FIN before the whole message
        (b"\x00", "ended before"),
        (b"", "ended before"),
        (len(_reply()).to_bytes(2, "big") + _reply() + b"\x00", "more than one"),
        (len(_reply(9)).to_bytes(2, "big") + _reply(9), "message ID 9"),
    ],
)
def test_stream_reply_protocol_errors(data: bytes, fault: str) -> None:
    with pytest.raises(DoQProtocolError, match=fault):
        stream_reply(data, ended=True)


# --- end to end ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cert_files(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    return write_cert_files(ca, str(tmp_path_factory.mktemp("doq")), "dns.test", "127.0.0.1")


@pytest.fixture
def doq(cert_files: tuple[str, str]) -> Iterator[DoQServer]:
    with doq_server(*cert_files) as server:
        yield server


def uri(server: DoQServer, name: str = "dns.test") -> str:
    return f"quic://127.0.0.1:{server.port}#{name}"


def test_answer_arrives(doq: DoQServer, ca_file: str) -> None:
    with running_daemon(daemon_config(uri(doq), ca_file)) as daemon:
        reply = ask(daemon.port)
        assert reply.rcode() == dns.rcode.NOERROR
        assert reply.answer[0].to_text() == "www.example. 300 IN A 192.0.2.1"
        assert answer_address(ask(daemon.port, "www.example.", "AAAA")) is None
    assert wire_queries_ok(doq.state)  # ID 0, padded to 128 octets
    assert doq.state.handshakes == 1


def test_ip_address_authentication(doq: DoQServer, ca_file: str) -> None:
    """No #NAME: the certificate must carry the IP address."""
    config = daemon_config(f"quic://127.0.0.1:{doq.port}", ca_file)
    with running_daemon(config) as daemon:
        assert answer_address(ask(daemon.port)) == "192.0.2.1"


def test_concurrent_queries_share_one_connection(doq: DoQServer, ca_file: str) -> None:
    names = [f"q{i}.example." for i in range(50)]
    with running_daemon(daemon_config(uri(doq), ca_file)) as daemon:
        replies = ask_many(daemon.port, names)
    assert [r.question[0].name.to_text() for r in replies] == names
    assert all(answer_address(r) == "192.0.2.1" for r in replies)
    assert doq.state.handshakes == 1
    assert len(doq.state.queries) == 50


def test_connection_is_reused_across_queries(doq: DoQServer, ca_file: str) -> None:
    with running_daemon(daemon_config(uri(doq), ca_file)) as daemon:
        for i in range(5):
            assert answer_address(ask(daemon.port, f"s{i}.example.")) == "192.0.2.1"
    assert doq.state.handshakes == 1


def test_stream_credit_is_waited_for(cert_files: tuple[str, str], ca_file: str) -> None:
    """The server grants 4 streams at a time: a burst of 50 waits for credit, none fails."""
    with doq_server(*cert_files, max_streams=4) as server:
        names = [f"c{i}.example." for i in range(50)]
        with running_daemon(daemon_config(uri(server), ca_file)) as daemon:
            replies = ask_many(daemon.port, names)
        assert all(answer_address(r) == "192.0.2.1" for r in replies)
        assert server.state.handshakes == 1


def test_session_resumes_after_the_server_drops_the_connection(
    doq: DoQServer, ca_file: str, cert_files: tuple[str, str]
) -> None:
    pin = server_pin(cert_files[0])
    with running_daemon(daemon_config(uri(doq), ca_file, spki_pins=(pin,))) as daemon:
        assert answer_address(ask(daemon.port)) == "192.0.2.1"
        doq.drop_connections()
        time.sleep(0.1)
        assert answer_address(ask(daemon.port, "again.example.")) == "192.0.2.1"
        transport = daemon.resolver.transports[0]
        assert transport.stats.handshakes == 2
        assert transport.resumptions == 1
    assert doq.state.handshakes == 2
    assert doq.state.resumptions == 1


def test_idle_connection_closes_and_resumes(doq: DoQServer, ca_file: str) -> None:
    config = daemon_config(uri(doq), ca_file)
    config = config.with_options(upstream_idle_timeout=0.3)
    with running_daemon(config) as daemon:
        assert answer_address(ask(daemon.port)) == "192.0.2.1"
        assert wait_for(lambda: daemon.resolver.transports[0]._connection is None, 3.0)
        assert answer_address(ask(daemon.port, "later.example.")) == "192.0.2.1"
    assert doq.state.handshakes == 2
    assert doq.state.resumptions == 1


def _assert_refused(server: DoQServer, uri_text: str, ca_file: str, **changes: object) -> None:
    with running_daemon(daemon_config(uri_text, ca_file, **changes)) as daemon:
        reply = ask(daemon.port)
    assert reply.rcode() == dns.rcode.SERVFAIL
    assert not reply.answer
    assert server.state.queries == []


def test_certificate_name_mismatch_is_refused(doq: DoQServer, ca_file: str) -> None:
    _assert_refused(doq, uri(doq, "wrong.test"), ca_file)


def test_pin_mismatch_is_refused(doq: DoQServer, ca_file: str) -> None:
    _assert_refused(doq, uri(doq), ca_file, spki_pins=(OTHER_PIN,))


def test_pin_mismatch_leaves_no_ticket_to_resume_with(doq: DoQServer, ca_file: str) -> None:
    """aioquic hands the session ticket over during the handshake, before the pins are checked:
    a connection refused for its pin must not leave a ticket that the next connection resumes
    with (a resumed session skips the certificate, so the pin would never be checked again)."""
    config = daemon_config(uri(doq), ca_file, spki_pins=(OTHER_PIN,))
    with running_daemon(config.with_options(backoff_min=0.05, backoff_max=0.1)) as daemon:
        for name in ("first.example.", "second.example.", "third.example."):
            reply = ask(daemon.port, name)
            assert reply.rcode() == dns.rcode.SERVFAIL and not reply.answer, name
            time.sleep(0.2)
        transport = daemon.resolver.transports[0]
        assert transport.resumptions == 0
        assert transport._ticket is None
    assert doq.state.queries == []
    assert doq.state.resumptions == 0


def test_wrong_alpn_is_refused(ca_file: str, cert_files: tuple[str, str]) -> None:
    """An HTTP/3 server is not a DoQ server: the handshake fails on ALPN."""
    with (
        h3_server(*cert_files) as server,
        running_daemon(
            daemon_config(f"quic://127.0.0.1:{server.port}#dns.test", ca_file)
        ) as daemon,
    ):
        assert ask(daemon.port).rcode() == dns.rcode.SERVFAIL
        assert server.state.queries == []


FAULTS = [
    Misbehaviour.STALL,
    Misbehaviour.CLOSE,
    Misbehaviour.RESET,
    Misbehaviour.EXCESSIVE_LOAD,
    Misbehaviour.SHORT_FRAME,
    Misbehaviour.TWO_MESSAGES,
    Misbehaviour.SHORT_DNS,
    Misbehaviour.OVERSIZED,
    Misbehaviour.WRONG_ID,
    Misbehaviour.WRONG_QUESTION,
    Misbehaviour.GARBAGE,
]


@pytest.mark.parametrize("behaviour", FAULTS)
def test_misbehaviour_is_servfail_in_time(
    doq: DoQServer, ca_file: str, behaviour: Misbehaviour
) -> None:
    doq.state.misbehaviour = behaviour
    with running_daemon(daemon_config(uri(doq), ca_file)) as daemon:
        start = time.monotonic()
        reply = ask(daemon.port)
        elapsed = time.monotonic() - start
        assert reply.rcode() == dns.rcode.SERVFAIL
        assert not reply.answer
        assert elapsed < TIMEOUT + 0.5
        doq.state.misbehaviour = Misbehaviour.NONE
        assert answer_address(ask(daemon.port, "after.example.")) == "192.0.2.1"


def test_vanished_server_fails_fast(cert_files: tuple[str, str], ca_file: str) -> None:
    """The server's port closes (ICMP unreachable): SERVFAIL at once, not at the deadline."""
    server = DoQServer(*cert_files)
    server.start()
    running = True
    try:
        with running_daemon(daemon_config(uri(server), ca_file)) as daemon:
            assert answer_address(ask(daemon.port)) == "192.0.2.1"
            server.stop()
            running = False
            start = time.monotonic()
            assert ask(daemon.port, "gone.example.").rcode() == dns.rcode.SERVFAIL
            assert time.monotonic() - start < TIMEOUT / 2
    finally:
        if running:
            server.stop()


def test_abandoned_query_is_cancelled(doq: DoQServer, ca_file: str) -> None:
    """RFC 9250 §4.3.1: a query we give up on is cancelled with DOQ_REQUEST_CANCELLED."""
    doq.state.misbehaviour = Misbehaviour.STALL
    with running_daemon(daemon_config(uri(doq), ca_file)) as daemon:
        assert ask(daemon.port).rcode() == dns.rcode.SERVFAIL
        assert wait_for(lambda: DOQ_REQUEST_CANCELLED in doq.state.client_resets)
