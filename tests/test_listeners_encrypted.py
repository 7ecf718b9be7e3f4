"""DoT and DoH listeners (issue #17) with real clients: kdig, dig, curl, dnspython, our h2 code.

One daemon per module: a plain listener, `tls://127.0.0.1:0` and `https://127.0.0.1:0/dns-query`,
a certificate issued by the test CA (trustme) for dns.home.test and 127.0.0.1.
"""

from __future__ import annotations

import base64
import contextlib
import socket
import ssl
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import h2.config
import h2.connection
import h2.events
import pytest
import trustme

from stubby_py.core.config import EncryptedListen
from tests.daemon_thread import DaemonThread, make_config, running_daemon
from tests.peers import require_tool
from tests.servers import LocalUpstream, Misbehaviour, local_upstream
from tests.service import wait_for

NAME = "dns.home.test"


@dataclass
class Served:
    daemon: DaemonThread
    upstream: LocalUpstream
    ca_file: str
    cert_file: str
    key_file: str
    plain: int
    dot: int
    doh: int


def write_pair(ca: trustme.CA, directory: Path, *names: str) -> tuple[str, str]:
    issued = ca.issue_cert(*(names or (NAME, "127.0.0.1")))
    cert, key = directory / "cert.pem", directory / "key.pem"
    issued.cert_chain_pems[0].write_to_path(str(cert))
    for extra in issued.cert_chain_pems[1:]:
        extra.write_to_path(str(cert), append=True)
    issued.private_key_pem.write_to_path(str(key))
    return str(cert), str(key)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    ca = trustme.CA()
    directory = tmp_path_factory.mktemp("listeners")
    ca_file = str(directory / "ca.pem")
    ca.cert_pem.write_to_path(ca_file)
    cert, key = write_pair(ca, directory)
    with local_upstream(None) as upstream:
        upstream.state.records["curl.home.test."] = [("A", "127.0.0.1")]
        config = make_config(
            [f"udp://127.0.0.1:{upstream.port}"],
            encrypted_listen=(
                EncryptedListen("tls", "127.0.0.1", 0),
                EncryptedListen("https", "127.0.0.1", 0, "/dns-query"),
            ),
            tls_cert=cert,
            tls_key=key,
        )
        with running_daemon(config) as daemon:
            dot, doh = (bound.port for bound in daemon.daemon.encrypted_bound)
            yield Served(daemon, upstream, ca_file, cert, key, daemon.port, dot, doh)


def client_context(served: Served, *alpn: str) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=served.ca_file)
    context.set_alpn_protocols(list(alpn))
    return context


@contextlib.contextmanager
def tls_connection(served: Served, port: int, *alpn: str) -> Iterator[ssl.SSLSocket]:
    context = client_context(served, *alpn)
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname=NAME) as tls,
    ):
        yield tls


# -- our own small HTTP/2 client: full control over what is sent ----------------------------------
@dataclass
class Response:
    status: int
    headers: dict[bytes, bytes]
    body: bytes


def h2_request(
    served: Served,
    method: str = "POST",
    path: str = "/dns-query",
    body: bytes = b"",
    headers: tuple[tuple[str, str], ...] = (("content-type", "application/dns-message"),),
) -> Response:
    with tls_connection(served, served.doh, "h2") as tls:
        assert tls.selected_alpn_protocol() == "h2"
        conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding=None)
        )
        conn.initiate_connection()
        request_headers = [
            (b":method", method.encode()),
            (b":scheme", b"https"),
            (b":authority", NAME.encode()),
            (b":path", path.encode()),
            *((k.encode(), v.encode()) for k, v in headers),
        ]
        declared = any(k == "content-length" for k, _ in headers)
        conn.send_headers(1, request_headers, end_stream=not body and not declared)
        if body:
            conn.send_data(1, body, end_stream=True)
        tls.sendall(conn.data_to_send())
        status, got, data = 0, {}, bytearray()
        for _ in range(100):  # bounded: a few frames come back
            chunk = tls.recv(65536)
            assert chunk, "connection closed before the response ended"
            for event in conn.receive_data(chunk):
                if isinstance(event, h2.events.ResponseReceived):
                    got = {bytes(k): bytes(v) for k, v in event.headers or []}
                    status = int(got[b":status"])
                elif isinstance(event, h2.events.DataReceived):
                    data += event.data or b""
                    conn.acknowledge_received_data(event.flow_controlled_length, 1)
                elif isinstance(event, h2.events.StreamEnded):
                    return Response(status, got, bytes(data))
            tls.sendall(conn.data_to_send())
        raise AssertionError("no response")


def query(name: str = "example.com", msg_id: int = 0, pad: bool = False) -> dns.message.Message:
    message = dns.message.make_query(name, "A", use_edns=0, pad=468 if pad else 0)
    message.id = msg_id
    return message


# -- DoT -------------------------------------------------------------------------------------------
def test_kdig_over_tls_gets_answer_and_padding(served: Served) -> None:
    kdig = require_tool("kdig")
    result = subprocess.run(
        [kdig, "@127.0.0.1", "-p", str(served.dot), "+tls", f"+tls-ca={served.ca_file}",
         f"+tls-hostname={NAME}", "+padding", "example.com", "A"],
        capture_output=True, text=True, timeout=20,
    )  # fmt: skip
    assert "status: NOERROR" in result.stdout, result.stdout + result.stderr
    assert "192.0.2.1" in result.stdout
    assert "Received 468 B" in result.stdout  # RFC 8467: padded to the 468-octet block


def test_dig_over_tls_with_keepalive(served: Served) -> None:
    dig = require_tool("dig")
    result = subprocess.run(
        [dig, "@127.0.0.1", "-p", str(served.dot), "+tls", f"+tls-ca={served.ca_file}",
         f"+tls-hostname={NAME}", "+keepalive", "example.com", "A"],
        capture_output=True, text=True, timeout=20,
    )  # fmt: skip
    assert "status: NOERROR" in result.stdout, result.stdout + result.stderr
    assert "192.0.2.1" in result.stdout
    idle = served.daemon.config.listeners.tcp_idle_timeout
    assert f"TCP KEEPALIVE: {idle:.1f} secs" in result.stdout  # RFC 7828, only when asked
    plain = subprocess.run(
        [dig, "@127.0.0.1", "-p", str(served.dot), "+tls", f"+tls-ca={served.ca_file}",
         f"+tls-hostname={NAME}", "example.com", "A"],
        capture_output=True, text=True, timeout=20,
    )  # fmt: skip
    assert "status: NOERROR" in plain.stdout and "KEEPALIVE" not in plain.stdout


def test_dnspython_tls_pipelined_on_one_connection(served: Served) -> None:
    with tls_connection(served, served.dot, "dot") as tls:
        assert tls.selected_alpn_protocol() == "dot"
        assert tls.version() in ("TLSv1.2", "TLSv1.3")
        for msg_id in (1, 2, 3):
            reply = dns.query.tls(query(msg_id=msg_id), "127.0.0.1", sock=tls, timeout=5)
            assert reply.id == msg_id and reply.answer


def test_plain_listener_never_pads(served: Served) -> None:
    reply = dns.query.tcp(query(pad=True), "127.0.0.1", port=served.plain, timeout=5)
    assert len(reply.to_wire()) % 468 != 0
    padded = dns.query.tls(
        query(pad=True), "127.0.0.1", port=served.dot, timeout=5,
        ssl_context=client_context(served, "dot"), server_hostname=NAME,
    )  # fmt: skip
    assert len(padded.to_wire()) == 468
    unpadded = dns.query.tls(
        query(), "127.0.0.1", port=served.dot, timeout=5,
        ssl_context=client_context(served, "dot"), server_hostname=NAME,
    )  # fmt: skip
    assert len(unpadded.to_wire()) < 468  # no Padding option asked: none given


def test_garbage_instead_of_tls_is_closed_and_plain_still_answers(served: Served) -> None:
    servers = served.daemon.daemon._tls_servers
    failed_before = sum(s.failed_handshakes for s in servers)
    for port in (served.dot, served.doh):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            raw.sendall(b"\x00\x1d" + b"not a TLS client hello at all" * 20)
            received = b""
            with contextlib.suppress(ConnectionResetError):
                for _ in range(10):  # bounded: an alert at most, then the close
                    chunk = raw.recv(4096)
                    if not chunk:
                        break
                    received += chunk
            assert received[:1] in (b"", b"\x15")  # nothing, or a TLS alert record
    assert wait_for(lambda: sum(s.failed_handshakes for s in servers) == failed_before + 2)
    figures = served.daemon.call(served.daemon.daemon.collect_stats)
    assert figures["tcp"]["tls_handshake_failures"] >= 2
    reply = dns.query.udp(query(), "127.0.0.1", port=served.plain, timeout=5)
    assert reply.answer


# -- DoH -------------------------------------------------------------------------------------------
def test_doh_post_answers_with_id_echoed_and_cache_control(served: Served) -> None:
    response = h2_request(served, body=query(msg_id=0).to_wire())
    assert response.status == 200
    assert response.headers[b"content-type"] == b"application/dns-message"
    assert response.headers[b"cache-control"] == b"max-age=300"
    reply = dns.message.from_wire(response.body)
    assert reply.id == 0 and reply.answer[0][0].address == "192.0.2.1"
    odd = dns.message.from_wire(h2_request(served, body=query(msg_id=4711).to_wire()).body)
    assert odd.id == 4711


def test_doh_get_with_base64url(served: Served) -> None:
    encoded = base64.urlsafe_b64encode(query().to_wire()).rstrip(b"=").decode()
    response = h2_request(served, "GET", f"/dns-query?dns={encoded}", headers=())
    assert response.status == 200
    assert dns.message.from_wire(response.body).answer


@pytest.mark.parametrize(
    ("method", "path", "body", "headers", "status"),
    [
        ("POST", "/dns-query", b"x" * 20, (("content-type", "text/plain"),), 415),
        ("POST", "/other", b"", (), 404),
        ("PUT", "/dns-query", b"", (), 405),
        ("GET", "/dns-query", b"", (), 400),
        ("GET", "/dns-query?dns=%%%", b"", (), 400),
        ("POST", "/dns-query", b"\x00\x01", (("content-type", "application/dns-message"),), 400),
        # the body is not sent: the 413 must come from the declared length alone
        ("POST", "/dns-query", b"",
         (("content-type", "application/dns-message"), ("content-length", "70000")), 413),
    ],
    ids=["415-type", "404-path", "405-method", "400-no-dns", "400-bad-base64", "400-short", "413"],
)  # fmt: skip
def test_doh_bad_requests_get_their_status(
    served: Served,
    method: str,
    path: str,
    body: bytes,
    headers: tuple[tuple[str, str], ...],
    status: int,
) -> None:
    assert h2_request(served, method, path, body, headers).status == status
    assert dns.query.udp(query(), "127.0.0.1", port=served.plain, timeout=5).answer


def test_doh_pads_when_asked(served: Served) -> None:
    response = h2_request(served, body=query(pad=True).to_wire())
    assert len(response.body) == 468


def test_http1_on_the_doh_port_is_told_505(served: Served) -> None:
    with tls_connection(served, served.doh, "http/1.1") as tls:
        tls.sendall(b"GET /dns-query?dns=AAAA HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        for _ in range(10):
            chunk = tls.recv(4096)
            if not chunk:
                break
            data += chunk
    assert data.startswith(b"HTTP/1.1 505")


def test_kdig_and_dig_over_https(served: Served) -> None:
    kdig = require_tool("kdig")
    result = subprocess.run(
        [kdig, "@127.0.0.1", "-p", str(served.doh), "+https", f"+tls-ca={served.ca_file}",
         f"+tls-hostname={NAME}", "example.com", "A"],
        capture_output=True, text=True, timeout=20,
    )  # fmt: skip
    assert "status: NOERROR" in result.stdout, result.stdout + result.stderr
    dig = require_tool("dig")
    result = subprocess.run(
        [dig, "@127.0.0.1", "-p", str(served.doh), "+https", f"+tls-ca={served.ca_file}",
         f"+tls-hostname={NAME}", "example.com", "A"],
        capture_output=True, text=True, timeout=20,
    )  # fmt: skip
    assert "status: NOERROR" in result.stdout, result.stdout + result.stderr
    assert "192.0.2.1" in result.stdout


def test_curl_resolves_through_doh(served: Served) -> None:
    curl = require_tool("curl")
    # the name resolves (through our DoH) to 127.0.0.1; curl then connects to our plain port
    result = subprocess.run(
        [curl, "-sv", "--max-time", "5", "--cacert", served.ca_file,
         "--doh-url", f"https://{NAME}:{served.doh}/dns-query",
         "--resolve", f"{NAME}:{served.doh}:127.0.0.1",
         f"http://curl.home.test:{served.plain}/"],
        capture_output=True, text=True, timeout=20,
    )  # fmt: skip
    assert "Connected to curl.home.test (127.0.0.1)" in result.stderr, result.stderr


# -- DDR (RFC 9462) --------------------------------------------------------------------------------
def test_ddr_lists_the_encrypted_listeners_and_is_never_forwarded(served: Served) -> None:
    asked_before = len(served.upstream.state.queries)
    svcb = dns.message.make_query("_dns.resolver.arpa", "SVCB")
    reply = dns.query.udp(svcb, "127.0.0.1", port=served.plain, timeout=5)
    records = sorted(reply.answer[0], key=lambda r: r.priority)
    texts = [r.to_text() for r in records]
    assert texts == [
        f'1 {NAME}. alpn="dot" port="{served.dot}" ipv4hint="127.0.0.1"',
        f'2 {NAME}. alpn="h2" port="{served.doh}" ipv4hint="127.0.0.1"'
        ' dohpath="/dns-query{?dns}"',
    ]
    over_dot = dns.query.tls(
        svcb, "127.0.0.1", port=served.dot, timeout=5,
        ssl_context=client_context(served, "dot"), server_hostname=NAME,
    )  # fmt: skip
    assert over_dot.answer == reply.answer
    nodata = dns.query.udp(dns.message.make_query("resolver.arpa", "A"), "127.0.0.1",
                           port=served.plain, timeout=5)  # fmt: skip
    assert nodata.rcode() == dns.rcode.NOERROR and not nodata.answer
    other = dns.query.udp(dns.message.make_query("x.resolver.arpa", "A"), "127.0.0.1",
                          port=served.plain, timeout=5)  # fmt: skip
    assert other.rcode() == dns.rcode.NXDOMAIN
    assert len(served.upstream.state.queries) == asked_before


def test_ddr_without_encrypted_listeners_is_nodata() -> None:
    with local_upstream(None) as upstream:
        config = make_config([f"udp://127.0.0.1:{upstream.port}"])
        with running_daemon(config) as daemon:
            svcb = dns.message.make_query("_dns.resolver.arpa", "SVCB")
            reply = dns.query.udp(svcb, "127.0.0.1", port=daemon.port, timeout=5)
            assert reply.rcode() == dns.rcode.NOERROR and not reply.answer
            assert reply.authority  # the SOA of a negative answer
            assert upstream.state.queries == []


def test_streams_reset_by_the_client_still_count_against_the_pipelining_cap(
    tmp_path: Path,
) -> None:
    """A client that sends a query on a stream and resets it at once, again and again (the
    'rapid reset' pattern), never has more than MAX_STREAMS streams open, but every query it sent
    is still in flight in the resolver: those count against the TCP pipelining cap too, so the
    connection hands on at most MAX_PIPELINED and refuses the rest."""
    from stubby_py.listeners.doh import DoHListener
    from stubby_py.listeners.plain import MAX_PIPELINED

    ca = trustme.CA()
    ca_file = str(tmp_path / "ca.pem")
    ca.cert_pem.write_to_path(ca_file)
    cert, key = write_pair(ca, tmp_path)
    with local_upstream(None) as upstream:
        upstream.state.misbehaviour = (
            Misbehaviour.STALL
        )  # every query stays in flight until its deadline
        config = make_config(
            [f"udp://127.0.0.1:{upstream.port}"],
            encrypted_listen=(EncryptedListen("https", "127.0.0.1", 0, "/dns-query"),),
            tls_cert=cert, tls_key=key, timeout=5.0, attempt_timeout=5.0,
        )  # fmt: skip
        with running_daemon(config) as daemon:
            port = daemon.daemon.encrypted_bound[0].port
            context = ssl.create_default_context(cafile=ca_file)
            context.set_alpn_protocols(["h2"])
            with (
                socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
                context.wrap_socket(raw, server_hostname=NAME) as tls,
            ):
                conn = h2.connection.H2Connection(
                    h2.config.H2Configuration(client_side=True, header_encoding=None)
                )
                conn.initiate_connection()
                for n in range(3 * MAX_PIPELINED):
                    stream = conn.get_next_available_stream_id()
                    body = query(f"q{n}.example").to_wire()
                    conn.send_headers(stream, [
                        (b":method", b"POST"), (b":scheme", b"https"),
                        (b":authority", NAME.encode()), (b":path", b"/dns-query"),
                        (b"content-type", b"application/dns-message"),
                    ])  # fmt: skip
                    conn.send_data(stream, body, end_stream=True)
                    conn.reset_stream(stream)
                    tls.sendall(conn.data_to_send())
                tcp = daemon.daemon.tcp
                assert tcp is not None
                connections = [c for c in tcp.open if isinstance(c, DoHListener)]
                assert wait_for(lambda: daemon.resolver.counters["queries"] >= MAX_PIPELINED)
                time_for_the_rest = wait_for(
                    lambda: daemon.resolver.counters["queries"] > MAX_PIPELINED, 1.0
                )
                assert not time_for_the_rest, daemon.resolver.counters["queries"]
                assert connections and all(c._in_flight <= MAX_PIPELINED for c in connections)


class CountingTransport:
    """A connection's own transport, counting the writes made through it."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.writes = 0

    def write(self, data: bytes) -> None:
        self.writes += 1
        self.real.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


def test_doh_answers_to_one_read_go_out_in_few_writes(served: Served) -> None:
    """Cached answers to the requests in one read are written together at its end (one TLS
    record for many responses), not one write per response; every request is answered."""
    from stubby_py.listeners.doh import DoHListener

    assert h2_request(served, body=query("curl.home.test").to_wire()).status == 200  # cached
    tcp = served.daemon.daemon.tcp
    before = served.daemon.call(lambda: set(tcp.open))
    with tls_connection(served, served.doh, "h2") as tls:
        conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding=None)
        )
        conn.initiate_connection()
        tls.sendall(conn.data_to_send())
        assert wait_for(lambda: served.daemon.call(lambda: len(set(tcp.open) - before)) == 1)

        def count_writes() -> CountingTransport:
            (connection,) = set(tcp.open) - before
            assert isinstance(connection, DoHListener)
            counting = connection._transport = CountingTransport(connection._transport)
            return counting

        counting = served.daemon.call(count_writes)
        sent = {}
        for n in range(50):
            stream = conn.get_next_available_stream_id()
            sent[stream] = n + 1
            conn.send_headers(stream, [
                (b":method", b"POST"), (b":scheme", b"https"), (b":authority", NAME.encode()),
                (b":path", b"/dns-query"), (b"content-type", b"application/dns-message"),
            ])  # fmt: skip
            conn.send_data(stream, query("curl.home.test", n + 1).to_wire(), end_stream=True)
        tls.sendall(conn.data_to_send())
        bodies: dict[int, bytes] = {}
        ended: set[int] = set()
        for _ in range(500):  # bounded: a few reads bring them all
            chunk = tls.recv(65536)
            assert chunk, "connection closed before every response ended"
            for event in conn.receive_data(chunk):
                if isinstance(event, h2.events.DataReceived):
                    bodies[event.stream_id] = bodies.get(event.stream_id, b"") + event.data
                    conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif isinstance(event, h2.events.StreamEnded):
                    ended.add(event.stream_id)
            tls.sendall(conn.data_to_send())
            if ended == set(sent):
                break
    assert {s: dns.message.from_wire(b).id for s, b in bodies.items()} == sent
    writes = served.daemon.call(lambda: counting.writes)
    assert writes <= 10, f"{writes} writes for {len(sent)} responses"
