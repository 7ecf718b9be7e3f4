"""DoH upstreams (RFC 8484) over HTTP/2 and HTTP/3, end to end through the real daemon.

Local servers (tests/servers/doh.py: h2; tests/servers/quic.py: aioquic) answer or misbehave on
demand; dnspython clients ask the daemon. Every misbehaviour must end in SERVFAIL within the
deadline, never in a wrong answer, and the daemon must answer again once the server behaves.
The sans-IO pieces (request building, response checks) are tested on their own first.
"""

from __future__ import annotations

import asyncio
import base64
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace

import dns.message
import dns.rcode
import pytest
import trustme

from stubby_py.core.config import parse_upstream_uri
from stubby_py.core.errors import UpstreamClosedError, UpstreamProtocolError
from stubby_py.transports import doh as doh_module
from stubby_py.transports.doh import DoHRequests, DoHResponse
from tests.conftest import server_context
from tests.daemon_thread import running_daemon
from tests.servers import (
    H2DoHServer,
    Misbehaviour,
    ServerThread,
    h2_server,
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

H2_CANCEL = 0x8
H3_REQUEST_CANCELLED = 0x10C
OTHER_PIN = base64.b64encode(bytes(32)).decode()


# --- sans-IO: requests and responses ----------------------------------------------------------


def _query(name: str = "www.example.") -> bytes:
    query = dns.message.make_query(name, "A")
    query.id = 0
    return query.to_wire()


def _reply(query: bytes, msg_id: int = 0) -> bytes:
    reply = dns.message.make_response(dns.message.from_wire(query))
    reply.id = msg_id
    return reply.to_wire()


def _ok_headers(length: int) -> list[tuple[bytes, bytes]]:
    return [
        (b":status", b"200"),
        (b"content-type", b"application/dns-message"),
        (b"content-length", str(length).encode()),
    ]


def test_post_request_carries_the_query() -> None:
    spec = parse_upstream_uri("https://dns.test:8443/q#192.0.2.1")
    headers, body = DoHRequests(spec).build(_query())
    fields = dict(headers)
    assert [name for name, _ in headers[:4]] == [b":method", b":scheme", b":authority", b":path"]
    assert fields[b":method"] == b"POST"
    assert fields[b":authority"] == b"dns.test:8443"
    assert fields[b":path"] == b"/q"
    assert fields[b"content-type"] == fields[b"accept"] == b"application/dns-message"
    assert body == _query()


def test_get_request_is_base64url_without_padding() -> None:
    spec = replace(parse_upstream_uri("https://192.0.2.1/dns-query"), method="get")
    query = _query("a.example.")
    headers, body = DoHRequests(spec).build(query)
    fields = dict(headers)
    path = fields[b":path"].decode()
    encoded = path.removeprefix("/dns-query?dns=")
    assert "=" not in encoded and "+" not in encoded and "/" not in encoded
    assert base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)) == query
    assert fields[b":authority"] == b"192.0.2.1"
    assert fields[b":method"] == b"GET" and body == b""


def test_response_passes_a_good_reply_in_pieces() -> None:
    query = _query()
    reply = _reply(query)
    response = DoHResponse("t")
    response.headers_received([(b":status", b"103")])  # interim: ignored
    response.headers_received(_ok_headers(len(reply)))
    for i in range(len(reply)):
        response.data_received(reply[i : i + 1])
    assert response.reply(query[12:]) == reply


@pytest.mark.parametrize(
    ("headers", "fault"),
    [
        ([(b":status", b"500"), (b"content-type", b"application/dns-message")], "HTTP status"),
        ([(b":status", b"200"), (b"content-type", b"text/html")], "content type"),
        ([(b":status", b"200")], "content type"),
        ([(b":status", b"2x0"), (b"content-type", b"application/dns-message")], "status"),
        (_ok_headers(70000), "content-length"),
    ],
)
def test_response_refuses_bad_headers(headers: list[tuple[bytes, bytes]], fault: str) -> None:
    with pytest.raises(UpstreamProtocolError, match=fault):
        DoHResponse("t").headers_received(headers)


def test_response_refuses_bad_bodies() -> None:
    query = _query()
    oversized = DoHResponse("t")
    oversized.headers_received(
        [(b":status", b"200"), (b"content-type", b"application/dns-message")]
    )
    with pytest.raises(UpstreamProtocolError, match="larger"):
        oversized.data_received(bytes(70000))
    for body, fault in [
        (_reply(query, msg_id=7), "message ID 7"),
        (_reply(_query("other.example.")), "does not match"),
        (query, "does not match"),  # a query, not a response
        (b"\x00\x00\x81", "shorter"),
    ]:
        response = DoHResponse("t")
        response.headers_received(_ok_headers(len(body)))
        response.data_received(body)
        with pytest.raises(UpstreamProtocolError, match=fault):
            response.reply(query[12:])
    with pytest.raises(UpstreamProtocolError, match="without a response"):
        DoHResponse("t").reply(query[12:])


# --- servers ---------------------------------------------------------------------------------


@dataclass
class DoHUpstream:
    scheme: str  # "https" (HTTP/2) or "h3"
    server: ServerThread

    @property
    def uri(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.server.port}/dns-query"

    def named_uri(self, name: str) -> str:
        return f"{self.scheme}://{name}:{self.server.port}/dns-query#127.0.0.1"


@pytest.fixture(scope="module")
def cert_files(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    return write_cert_files(ca, str(tmp_path_factory.mktemp("doh")), "dns.test", "127.0.0.1")


@pytest.fixture(params=["https", "h3"])
def doh(
    request: pytest.FixtureRequest, ca: trustme.CA, cert_files: tuple[str, str]
) -> Iterator[DoHUpstream]:
    if request.param == "https":
        with h2_server(server_context(ca)) as server:
            yield DoHUpstream("https", server)
    else:
        with h3_server(*cert_files) as server:
            yield DoHUpstream("h3", server)


@pytest.mark.parametrize("method", ["post", "get"])
def test_answer_arrives(doh: DoHUpstream, ca_file: str, method: str) -> None:
    with running_daemon(daemon_config(doh.uri, ca_file, method=method)) as daemon:
        reply = ask(daemon.port)
        assert reply.rcode() == dns.rcode.NOERROR
        assert reply.answer[0].to_text() == "www.example. 300 IN A 192.0.2.1"
        assert daemon.resolver.transports[0].stats.handshakes == 1
    state = doh.server.state
    assert state.methods == [method.upper()]
    assert wire_queries_ok(state)  # ID 0, padded to 128 octets


def test_name_form_with_address_fragment(doh: DoHUpstream, ca_file: str) -> None:
    with running_daemon(daemon_config(doh.named_uri("dns.test"), ca_file)) as daemon:
        assert answer_address(ask(daemon.port)) == "192.0.2.1"


def test_concurrent_queries_share_one_connection(doh: DoHUpstream, ca_file: str) -> None:
    names = [f"q{i}.example." for i in range(50)]
    with running_daemon(daemon_config(doh.uri, ca_file)) as daemon:
        replies = ask_many(daemon.port, names)
    assert [r.question[0].name.to_text() for r in replies] == names
    assert all(answer_address(r) == "192.0.2.1" for r in replies)
    assert doh.server.state.handshakes == 1
    assert len(doh.server.state.queries) == 50


def test_connection_is_reused_across_queries(doh: DoHUpstream, ca_file: str) -> None:
    with running_daemon(daemon_config(doh.uri, ca_file)) as daemon:
        for i in range(5):
            assert answer_address(ask(daemon.port, f"s{i}.example.")) == "192.0.2.1"
    assert doh.server.state.handshakes == 1


def _assert_refused(uri: str, ca_file: str, server: ServerThread, **changes: object) -> None:
    with running_daemon(daemon_config(uri, ca_file, **changes)) as daemon:
        reply = ask(daemon.port)
    assert reply.rcode() == dns.rcode.SERVFAIL
    assert not reply.answer
    assert server.state.queries == []  # nothing was sent to an unauthenticated server


def test_certificate_name_mismatch_is_refused(doh: DoHUpstream, ca_file: str) -> None:
    _assert_refused(doh.named_uri("wrong.test"), ca_file, doh.server)


def test_ip_literal_needs_an_ip_san(ca: trustme.CA, ca_file: str, tmp_path: object) -> None:
    with h2_server(server_context(ca, "dns.test")) as server:
        _assert_refused(f"https://127.0.0.1:{server.port}/dns-query", ca_file, server)
    cert, key = write_cert_files(ca, str(tmp_path), "dns.test")
    with h3_server(cert, key) as server:
        _assert_refused(f"h3://127.0.0.1:{server.port}/dns-query", ca_file, server)


def test_pin_mismatch_is_refused(doh: DoHUpstream, ca_file: str) -> None:
    _assert_refused(doh.uri, ca_file, doh.server, spki_pins=(OTHER_PIN,))


def test_matching_pin_is_accepted(
    ca: trustme.CA, ca_file: str, cert_files: tuple[str, str], tmp_path: object
) -> None:
    with h3_server(*cert_files) as server:
        config = daemon_config(
            f"h3://127.0.0.1:{server.port}/dns-query",
            ca_file,
            spki_pins=(server_pin(cert_files[0]),),
        )
        with running_daemon(config) as daemon:
            assert answer_address(ask(daemon.port)) == "192.0.2.1"
    cert = ca.issue_cert("dns.test", "127.0.0.1")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)
    pem_path = f"{tmp_path}/leaf.pem"
    cert.cert_chain_pems[0].write_to_path(pem_path)
    with h2_server(context) as server:
        config = daemon_config(
            f"https://127.0.0.1:{server.port}/dns-query", ca_file, spki_pins=(server_pin(pem_path),)
        )
        with running_daemon(config) as daemon:
            assert answer_address(ask(daemon.port)) == "192.0.2.1"


FAULTS = [
    Misbehaviour.STALL,
    Misbehaviour.CLOSE,
    Misbehaviour.RESET,
    Misbehaviour.HTTP500,
    Misbehaviour.CONTENT_TYPE,
    Misbehaviour.TRUNCATED,
    Misbehaviour.SHORT_DNS,
    Misbehaviour.OVERSIZED,
    Misbehaviour.WRONG_ID,
    Misbehaviour.WRONG_QUESTION,
    Misbehaviour.GARBAGE,
]


@pytest.mark.parametrize("behaviour", FAULTS)
def test_misbehaviour_is_servfail_in_time(
    doh: DoHUpstream, ca_file: str, behaviour: Misbehaviour
) -> None:
    state = doh.server.state
    state.misbehaviour = behaviour
    with running_daemon(daemon_config(doh.uri, ca_file)) as daemon:
        start = time.monotonic()
        reply = ask(daemon.port)
        elapsed = time.monotonic() - start
        assert reply.rcode() == dns.rcode.SERVFAIL
        assert not reply.answer
        assert elapsed < TIMEOUT + 0.5
        state.misbehaviour = Misbehaviour.NONE
        assert answer_address(ask(daemon.port, "after.example.")) == "192.0.2.1"
    assert state.queries


def test_abandoned_streams_are_cancelled(doh: DoHUpstream, ca_file: str) -> None:
    """A query that times out resets its stream, so the server's stream slots never leak."""
    doh.server.state.misbehaviour = Misbehaviour.STALL
    with running_daemon(daemon_config(doh.uri, ca_file)) as daemon:
        assert ask(daemon.port).rcode() == dns.rcode.SERVFAIL
        expected = H2_CANCEL if doh.scheme == "https" else H3_REQUEST_CANCELLED
        assert wait_for(lambda: expected in doh.server.state.client_resets)


def test_goaway_reconnects(ca: trustme.CA, ca_file: str) -> None:
    with h2_server(server_context(ca)) as server:
        seen: list[str] = []

        def goaway_once(query: dns.message.Message) -> Misbehaviour:
            seen.append(query.question[0].name.to_text())
            return Misbehaviour.GOAWAY if len(seen) == 1 else Misbehaviour.NONE

        server.state.chooser = goaway_once
        with running_daemon(
            daemon_config(f"https://127.0.0.1:{server.port}/dns-query", ca_file)
        ) as d:
            assert answer_address(ask(d.port)) == "192.0.2.1"
            assert server.state.connections == 2
            assert answer_address(ask(d.port, "again.example.")) == "192.0.2.1"
        assert server.state.connections == 2


def test_server_stream_limit_is_respected(ca: trustme.CA, ca_file: str) -> None:
    """SETTINGS_MAX_CONCURRENT_STREAMS 4: the other queries wait for a free stream."""
    with h2_server(server_context(ca), max_streams=4) as server:
        assert isinstance(server, H2DoHServer)
        names = [f"c{i}.example." for i in range(50)]
        with running_daemon(
            daemon_config(f"https://127.0.0.1:{server.port}/dns-query", ca_file)
        ) as d:
            replies = ask_many(d.port, names)
        assert all(answer_address(r) == "192.0.2.1" for r in replies)
        assert server.state.connections == 1
        assert server.state.client_resets == []


def test_h3_stream_credit_is_waited_for(ca_file: str, cert_files: tuple[str, str]) -> None:
    """QUIC MAX_STREAMS 4 on an HTTP/3 connection: a burst of 50 waits for credit."""
    with h3_server(*cert_files, max_streams=4) as server:
        uri = f"h3://127.0.0.1:{server.port}/dns-query"
        with running_daemon(daemon_config(uri, ca_file)) as d:
            replies = ask_many(d.port, [f"h{i}.example." for i in range(50)])
        assert all(answer_address(r) == "192.0.2.1" for r in replies)
        assert server.state.handshakes == 1


def test_small_flow_control_window(ca: trustme.CA, ca_file: str) -> None:
    """SETTINGS_INITIAL_WINDOW_SIZE 40: each 128-octet body goes out in window-sized pieces."""
    with h2_server(server_context(ca), window=40) as server:
        uri = f"https://127.0.0.1:{server.port}/dns-query"
        with running_daemon(daemon_config(uri, ca_file)) as d:
            replies = ask_many(d.port, [f"w{i}.example." for i in range(10)])
        assert all(answer_address(r) == "192.0.2.1" for r in replies)
        assert wire_queries_ok(server.state)


def test_connection_retires_before_stream_ids_run_out(
    ca: trustme.CA, ca_file: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """RFC 9113 §5.1.1: stream IDs cannot be reused; a new connection takes over in time."""
    monkeypatch.setattr(doh_module, "LAST_STREAM_ID", 5)
    with h2_server(server_context(ca)) as server:
        uri = f"https://127.0.0.1:{server.port}/dns-query"
        with running_daemon(daemon_config(uri, ca_file)) as d:
            for i in range(5):
                assert answer_address(ask(d.port, f"r{i}.example.")) == "192.0.2.1"
            # streams 1, 3, 5 on the first connection, 1, 3 on the second
            assert server.state.connections == 2
            assert d.resolver.pool.health[0].failures == 0


def test_dropped_connection_is_replaced(doh: DoHUpstream, ca_file: str) -> None:
    with running_daemon(daemon_config(doh.uri, ca_file)) as daemon:
        assert answer_address(ask(daemon.port)) == "192.0.2.1"
        doh.server.drop_connections()  # type: ignore[attr-defined]
        time.sleep(0.1)
        assert answer_address(ask(daemon.port, "next.example.")) == "192.0.2.1"
    assert doh.server.state.handshakes == 2


def test_a_connection_retired_while_busy_is_closed_by_aclose(ca: trustme.CA, ca_file: str) -> None:
    """reset() (a network change) retires a busy connection: it stays the transport's to close
    until its last stream ends, so shutting down meanwhile still closes it."""
    with h2_server(server_context(ca)) as server:
        config = daemon_config(f"https://127.0.0.1:{server.port}/dns-query", ca_file)

        async def run() -> None:
            loop = asyncio.get_running_loop()
            transport = doh_module.DoHTransport(config.forwarding.upstreams[0], config)
            await transport.exchange(_query("first.example."), loop.time() + 5)
            old = transport._connection
            assert old is not None
            server.state.misbehaviour = Misbehaviour.STALL  # the next query is never answered
            # on the connection itself: exchange() would retry it on a new one after aclose()
            _, slow = old.send(_query("slow.example."), loop.time() + 10)
            for _ in range(200):
                if len(server.state.queries) == 2:
                    break
                await asyncio.sleep(0.01)
            assert len(server.state.queries) == 2
            transport.reset()
            assert not old._closed and old in transport._retiring  # busy: kept, and tracked
            await transport.aclose()
            assert old._closed and old.lost.done()
            assert not transport._retiring and not transport._open_connections
            with pytest.raises(UpstreamClosedError):
                await slow

        asyncio.run(run())
        assert wait_for(lambda: not server.connections, 3.0)  # the server saw it closed


def test_a_retired_connection_is_closed_when_its_last_stream_ends(
    ca: trustme.CA, ca_file: str
) -> None:
    with h2_server(server_context(ca)) as server:
        config = daemon_config(f"https://127.0.0.1:{server.port}/dns-query", ca_file)

        async def run() -> None:
            loop = asyncio.get_running_loop()
            transport = doh_module.DoHTransport(config.forwarding.upstreams[0], config)
            try:
                await transport.exchange(_query("first.example."), loop.time() + 5)
                old = transport._connection
                assert old is not None
                server.state.delay = 0.5
                slow = loop.create_task(
                    transport.exchange(_query("slow.example."), loop.time() + 5)
                )
                for _ in range(200):
                    if len(server.state.queries) == 2:
                        break
                    await asyncio.sleep(0.01)
                transport.reset()
                assert old in transport._retiring and not old._closed
                assert await slow  # answered on the retired connection
                assert old._closed and old not in transport._retiring
            finally:
                await transport.aclose()

        asyncio.run(run())
