"""The DoH over HTTP/3 listener (issue #17) with real clients: dnspython's DoH over HTTP/3 and
aioquic's H3 client driven by hand (status codes, headers, padding, unfinished requests).

One daemon per module: a plain listener, `https://127.0.0.1:P/dns-query` (TCP) and
`h3://127.0.0.1:P/dns-query` (UDP) on one port number, `allow` 127.0.0.1 only (so a client bound
to 127.0.0.2 is outside it), a certificate issued by the test CA (trustme).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import socket
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dns.asyncquery
import dns.exception
import dns.message
import dns.query
import dns.rcode
import pytest
import trustme
from aioquic.asyncio.client import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.h3.connection import ErrorCode, H3Connection
from aioquic.h3.events import DataReceived, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnectionAdapter
from aioquic.quic.events import ConnectionTerminated, QuicEvent, StreamReset
from aioquic.tls import SessionTicket

from stubby_py.commands import stats as stats_table
from stubby_py.core.config import EncryptedListen
from stubby_py.daemon import metrics
from stubby_py.listeners import doh3, tls_files
from tests import test_listeners_encrypted as encrypted
from tests.daemon_thread import DaemonThread, make_config, running_daemon
from tests.servers import LocalUpstream, local_upstream
from tests.test_listeners_encrypted import NAME, query, write_pair

DNS_MESSAGE = "application/dns-message"


@dataclass
class Served:
    daemon: DaemonThread
    upstream: LocalUpstream
    ca_file: str
    plain: int
    #: the https:// (TCP) and h3:// (UDP) listeners' port
    port: int

    def doh3_stats(self) -> dict[str, int]:
        figures: dict[str, int] = self.daemon.daemon.collect_stats()["doh3"]
        return figures


def free_tcp_and_udp_port() -> int:
    """A port number free for TCP and for UDP on 127.0.0.1 (the two listeners share it)."""
    for _ in range(20):
        with socket.socket() as tcp, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            tcp.bind(("127.0.0.1", 0))
            port: int = tcp.getsockname()[1]
            try:
                udp.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise AssertionError("no port free for both TCP and UDP")


@contextlib.contextmanager
def doh3_setup(
    directory: Path, ca: trustme.CA | None = None, *, with_h2: bool = False, **changes: Any
) -> Iterator[tuple[DaemonThread, LocalUpstream, str]]:
    """A running daemon with an h3:// listener (and an https:// one on the same port number)
    on a certificate made here, forwarding to a local upstream."""
    ca = ca or trustme.CA()
    ca_file = str(directory / "ca.pem")
    ca.cert_pem.write_to_path(ca_file)
    cert, key = write_pair(ca, directory)
    port = free_tcp_and_udp_port() if with_h2 else 0
    listeners = [EncryptedListen("h3", "127.0.0.1", port, "/dns-query")]
    if with_h2:
        listeners.insert(0, EncryptedListen("https", "127.0.0.1", port, "/dns-query"))
    with local_upstream(None) as upstream:
        config = make_config(
            [f"udp://127.0.0.1:{upstream.port}"],
            encrypted_listen=tuple(listeners),
            tls_cert=cert,
            tls_key=key,
            **changes,
        )
        with running_daemon(config) as daemon:
            yield daemon, upstream, ca_file


def served_by(daemon: DaemonThread, upstream: LocalUpstream, ca_file: str) -> Served:
    (port,) = {b.port for b in daemon.daemon.encrypted_bound if b.scheme == "h3"}
    return Served(daemon, upstream, ca_file, daemon.port, port)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    directory = tmp_path_factory.mktemp("doh3")
    with doh3_setup(directory, with_h2=True, allow=("127.0.0.1/32",)) as setup:
        yield served_by(*setup)


# -- aioquic's HTTP/3 client, by hand -------------------------------------------------------------
@dataclass
class Response:
    status: int = 0
    headers: dict[bytes, bytes] = field(default_factory=dict)
    body: bytearray = field(default_factory=bytearray)
    #: the server reset the stream with this code
    reset: int | None = None


class H3Client(QuicConnectionProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # the client's own aioquic log apart from the daemon's ("quic"): see test_nothing_logged
        self._quic._logger = QuicConnectionAdapter(
            logging.getLogger("tests.h3client"), self._quic._logger.extra
        )
        self.h3 = H3Connection(self._quic)
        self.responses: dict[int, Response] = {}
        self.ended: dict[int, asyncio.Event] = {}
        self.terminated = asyncio.Event()
        self.close_event: ConnectionTerminated | None = None

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, ConnectionTerminated):
            self.close_event = event
            self.terminated.set()
        elif isinstance(event, StreamReset):
            self.responses.setdefault(event.stream_id, Response()).reset = event.error_code
            self._ended(event.stream_id)
        for http in self.h3.handle_event(event):
            if isinstance(http, HeadersReceived):
                response = self.responses.setdefault(http.stream_id, Response())
                response.headers = dict(http.headers)
                response.status = int(response.headers[b":status"])
            elif isinstance(http, DataReceived):
                self.responses.setdefault(http.stream_id, Response()).body += http.data
            if http.stream_ended:  # type: ignore[attr-defined]
                self._ended(http.stream_id)  # type: ignore[attr-defined]

    def _ended(self, stream_id: int) -> None:
        self.ended.setdefault(stream_id, asyncio.Event()).set()

    def send(
        self,
        method: str = "POST",
        path: str = "/dns-query",
        body: bytes = b"",
        headers: tuple[tuple[str, str], ...] = (("content-type", DNS_MESSAGE),),
        end: bool = True,
    ) -> int:
        stream_id = self._quic.get_next_available_stream_id()
        request = [
            (b":method", method.encode()),
            (b":scheme", b"https"),
            (b":authority", NAME.encode()),
            (b":path", path.encode()),
            *((k.encode(), v.encode()) for k, v in headers),
        ]
        self.h3.send_headers(stream_id, request, end_stream=end and not body)
        if body:
            self.h3.send_data(stream_id, body, end_stream=end)
        self.transmit()
        return stream_id

    async def response(self, stream_id: int, timeout: float = 5.0) -> Response:
        await asyncio.wait_for(self.ended.setdefault(stream_id, asyncio.Event()).wait(), timeout)
        return self.responses[stream_id]

    async def closed_with(self, timeout: float = 5.0) -> int:
        await asyncio.wait_for(self.terminated.wait(), timeout)
        assert self.close_event is not None
        return self.close_event.error_code


@contextlib.asynccontextmanager
async def h3_client(
    served: Served, alpn: str = "h3", tickets: list[SessionTicket] | None = None, **kwargs: Any
) -> AsyncIterator[H3Client]:
    configuration = QuicConfiguration(alpn_protocols=[alpn], is_client=True, server_name=NAME)
    configuration.load_verify_locations(served.ca_file)
    async with connect(
        "127.0.0.1",
        served.port,
        configuration=configuration,
        create_protocol=H3Client,
        session_ticket_handler=(tickets.append if tickets is not None else None),
        wait_connected=True,
        **kwargs,
    ) as protocol:
        assert isinstance(protocol, H3Client)
        yield protocol


def run(coroutine: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coroutine, 30))


async def one_request(served: Served, **request: Any) -> Response:
    async with h3_client(served) as client:
        return await client.response(client.send(**request))


def dnspython_h3(
    served: Served, post: bool = True, timeout: float = 5.0, **kwargs: Any
) -> dns.message.Message:
    """dnspython's DoH over HTTP/3 client (its own, on aioquic: no httpx needed)."""
    reply: dns.message.Message = asyncio.run(
        dns.asyncquery.https(
            query(), "127.0.0.1", port=served.port, timeout=timeout, verify=served.ca_file,
            post=post, http_version=dns.asyncquery.HTTPVersion.H3, **kwargs,
        )
    )  # fmt: skip
    return reply


# -- answers ------------------------------------------------------------------------------------
@pytest.mark.parametrize("post", [True, False], ids=["POST", "GET"])
def test_dnspython_doh3_gets_answer(served: Served, post: bool) -> None:
    before = served.doh3_stats()["queries"]
    reply = dnspython_h3(served, post=post)
    assert reply.rcode() == dns.rcode.NOERROR
    assert "192.0.2.1" in reply.to_text()
    assert served.doh3_stats()["queries"] == before + 1


def test_post_answer_has_cache_control_from_ttl_and_id_echoed(served: Served) -> None:
    response = run(one_request(served, body=query(msg_id=0x4242).to_wire()))
    assert response.status == 200
    assert response.headers[b"content-type"] == DNS_MESSAGE.encode()
    assert response.headers[b"cache-control"] == b"max-age=300"  # the upstream's TTL
    assert int(response.headers[b"content-length"]) == len(response.body)
    assert dns.message.from_wire(bytes(response.body)).id == 0x4242


def test_get_with_base64url_and_no_padding(served: Served) -> None:
    encoded = base64.urlsafe_b64encode(query().to_wire()).rstrip(b"=").decode()
    response = run(one_request(served, method="GET", path=f"/dns-query?dns={encoded}",
                               headers=()))  # fmt: skip
    assert response.status == 200
    assert dns.message.from_wire(bytes(response.body)).rcode() == dns.rcode.NOERROR


def test_padded_query_gets_padded_reply_and_plain_one_does_not(served: Served) -> None:
    async def go() -> tuple[bytes, bytes]:
        async with h3_client(served) as client:
            padded = await client.response(client.send(body=query(pad=True).to_wire()))
            plain = await client.response(client.send(body=query().to_wire()))
            return bytes(padded.body), bytes(plain.body)

    padded, plain = run(go())
    assert len(padded) % 468 == 0  # RFC 8467: padded to the 468-octet block
    assert len(plain) % 468 != 0


def test_requests_on_one_connection_at_once(served: Served) -> None:
    names = [f"host{i}.example.com" for i in range(8)]

    async def go() -> list[dns.message.Message]:
        async with h3_client(served) as client:
            streams = [client.send(body=query(name).to_wire()) for name in names]
            return [dns.message.from_wire(bytes((await client.response(s)).body))
                    for s in streams]  # fmt: skip

    replies = run(go())
    assert [r.question[0].name.to_text() for r in replies] == [n + "." for n in names]


# -- status codes -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("request_args", "status"),
    [
        ({"path": "/other"}, 404),
        ({"method": "PUT"}, 405),
        ({"headers": (("content-type", "text/plain"),)}, 415),
        ({"body": b"\0" * 70_000}, 413),
        ({"method": "GET", "headers": ()}, 400),
        ({"method": "GET", "path": "/dns-query?dns=***", "headers": ()}, 400),
        ({"body": b"\x12"}, 400),  # shorter than a DNS header
    ],
    ids=["path", "method", "content-type", "too-big", "no-dns", "bad-base64", "not-dns"],
)
def test_bad_requests_get_their_status(
    served: Served, request_args: dict[str, Any], status: int
) -> None:
    request_args.setdefault("body", query().to_wire())
    if request_args.get("method") == "GET":
        request_args["body"] = b""
    errors_before = served.doh3_stats()["http_errors"]

    async def go() -> tuple[Response, Response]:
        async with h3_client(served) as client:
            bad = await client.response(client.send(**request_args))
            # the connection is still good for a proper request
            good = await client.response(client.send(body=query().to_wire()))
            return bad, good

    bad, good = run(go())
    assert bad.status == status
    assert good.status == 200
    if status == 405:
        assert bad.headers[b"allow"] == b"GET, POST"
    assert served.doh3_stats()["http_errors"] == errors_before + 1


# -- the HTTP/2 listener beside it: Alt-Svc, DDR ---------------------------------------------------
def test_h2_responses_announce_the_h3_listener(served: Served) -> None:
    beside = encrypted.Served(
        served.daemon, served.upstream, served.ca_file, "", "", served.plain, 0, served.port
    )
    response = encrypted.h2_request(beside, body=query().to_wire())
    assert response.status == 200
    assert response.headers[b"alt-svc"] == b'h3=":%d"' % served.port
    assert encrypted.h2_request(beside, path="/nowhere").headers[b"alt-svc"] == (
        b'h3=":%d"' % served.port
    )


def test_ddr_lists_h2_and_h3_in_one_record_when_they_share_the_port(served: Served) -> None:
    svcb = dns.message.make_query("_dns.resolver.arpa", "SVCB")
    reply = dns.query.udp(svcb, "127.0.0.1", port=served.plain, timeout=5)
    texts = [r.to_text() for r in reply.answer[0]]
    assert texts == [
        f'1 {NAME}. alpn="h2,h3" port="{served.port}" ipv4hint="127.0.0.1"'
        ' dohpath="/dns-query{?dns}"'
    ]


def test_ddr_lists_an_h3_listener_of_its_own(tmp_path: Path) -> None:
    with doh3_setup(tmp_path) as setup:
        served = served_by(*setup)
        svcb = dns.message.make_query("_dns.resolver.arpa", "SVCB")
        reply = dns.query.udp(svcb, "127.0.0.1", port=served.plain, timeout=5)
        texts = [r.to_text() for r in reply.answer[0]]
        assert texts == [
            f'1 {NAME}. alpn="h3" port="{served.port}" ipv4hint="127.0.0.1"'
            ' dohpath="/dns-query{?dns}"'
        ]


# -- no 0-RTT, wrong ALPN, access list, garbage ---------------------------------------------------
def test_no_session_tickets_so_no_0rtt(served: Served) -> None:
    tickets: list[SessionTicket] = []

    async def go() -> None:
        async with h3_client(served, tickets=tickets) as client:
            await client.response(client.send(body=query().to_wire()))

    run(go())
    assert tickets == []


def test_wrong_alpn_gets_no_connection(served: Served) -> None:
    async def go() -> None:
        with pytest.raises(ConnectionError):
            async with asyncio.timeout(5), h3_client(served, alpn="doq"):
                pass

    run(go())
    assert dnspython_h3(served).rcode() == dns.rcode.NOERROR


def test_denied_source_gets_nothing_back(served: Served) -> None:
    before = served.doh3_stats()["denied_datagrams"]
    with pytest.raises(dns.exception.Timeout):
        dnspython_h3(served, timeout=1.5, source="127.0.0.2")
    assert served.doh3_stats()["denied_datagrams"] > before
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.2", 0))
        sock.settimeout(1.0)
        # long header, unsupported version: an allowed source gets Version Negotiation
        packet = b"\xc0\x1a\x2a\x3a\x4a\x08" + b"D" * 8 + b"\x08" + b"S" * 8
        sock.sendto(packet + b"\0" * (1200 - len(packet)), ("127.0.0.1", served.port))
        with pytest.raises(TimeoutError):
            sock.recvfrom(2048)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:  # the control: 127.0.0.1
        sock.settimeout(5.0)
        sock.sendto(packet + b"\0" * (1200 - len(packet)), ("127.0.0.1", served.port))
        data, _ = sock.recvfrom(2048)
        assert data[1:5] == b"\0\0\0\0"  # Version Negotiation


def test_garbage_datagrams_do_not_stop_the_listener(served: Served) -> None:
    junk = [b"", b"\x00", b"\xff" * 5, b"\xc0" + b"\x00" * 1300, b"\x40" + b"\x17" * 60,
            bytes(range(256)) * 5, b"\xc3\x00\x00\x00\x01\x14" + b"\x00" * 1300]  # fmt: skip
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for datagram in junk * 20:
            sock.sendto(datagram, ("127.0.0.1", served.port))
    assert dnspython_h3(served).rcode() == dns.rcode.NOERROR


def test_nothing_logged_per_connection_or_bad_packet(
    served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    """aioquic logs each connection at INFO and a client's errors at WARNING: not the daemon's
    listeners (the log is the admin's, not a client's to fill)."""

    async def go() -> None:
        with pytest.raises(ConnectionError):
            async with asyncio.timeout(5), h3_client(served, alpn="doq"):
                pass
        async with h3_client(served) as client:
            assert (await client.response(client.send(body=query().to_wire()))).status == 200
            assert (await client.response(client.send(path="/x"))).status == 404
        async with h3_client(served) as client:
            stream_id = client._quic.get_next_available_stream_id()
            client._quic.send_stream_data(stream_id, b"\x00\x03abc", True)  # DATA before HEADERS
            client.transmit()
            await client.closed_with()

    with caplog.at_level(logging.INFO):
        run(go())
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.sendto(b"\xc0" + b"\x00" * 1300, ("127.0.0.1", served.port))
    logged = [(r.name, r.getMessage()) for r in caplog.records if r.levelno >= logging.INFO]
    assert [(name, text) for name, text in logged if not name.startswith("tests.")] == []


def test_http3_protocol_error_closes_only_that_connection(served: Served) -> None:
    """DATA before HEADERS on a request stream: H3_FRAME_UNEXPECTED, the listener goes on."""
    errors_before = served.doh3_stats()["protocol_errors"]

    async def go() -> int:
        async with h3_client(served) as client:
            stream_id = client._quic.get_next_available_stream_id()
            client._quic.send_stream_data(stream_id, b"\x00\x03abc", True)  # a DATA frame
            client.transmit()
            return await client.closed_with()

    assert run(go()) == ErrorCode.H3_FRAME_UNEXPECTED
    assert served.doh3_stats()["protocol_errors"] == errors_before + 1
    assert dnspython_h3(served).rcode() == dns.rcode.NOERROR


# -- unfinished requests ------------------------------------------------------------------------
def test_request_that_never_finishes_closes_the_connection(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(doh3, "REQUEST_TIMEOUT", 0.5)
    monkeypatch.setattr(doh3, "TICK", 0.2)
    with doh3_setup(tmp_path) as setup:
        served = served_by(*setup)

        async def go() -> int:
            async with h3_client(served) as client:
                client.send(body=query().to_wire()[:5], end=False)  # the rest never comes
                return await client.closed_with()

        assert run(go()) == ErrorCode.H3_REQUEST_INCOMPLETE
        assert served.doh3_stats()["request_timeouts"] == 1
        assert dnspython_h3(served).rcode() == dns.rcode.NOERROR


def test_unfinished_bodies_over_the_buffer_cap_close_with_excessive_load(served: Served) -> None:
    async def go() -> int:
        async with h3_client(served) as client:
            for _ in range(doh3.MAX_BUFFERED // 60_000 + 1):
                client.send(body=b"\0" * 60_000, end=False)
            return await client.closed_with()

    assert run(go()) == ErrorCode.H3_EXCESSIVE_LOAD


# -- certificate files, stats, shutdown -----------------------------------------------------------
def test_renewed_certificate_is_served_to_new_connections(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tls_files, "CHECK_INTERVAL", 0.0)
    ca = trustme.CA()
    with doh3_setup(tmp_path, ca) as setup:
        served = served_by(*setup)

        async def serial() -> int:
            async with h3_client(served) as client:
                assert (await client.response(client.send(body=query().to_wire()))).status == 200
                peer = client._quic.tls._peer_certificate
                assert peer is not None
                number: int = peer.serial_number
                return number

        first = run(serial())
        write_pair(ca, tmp_path)  # renewed: same paths, new files
        assert run(serial()) != first
        certificate = served.daemon.daemon.certificate
        assert certificate is not None and certificate.reloaded == 1


def test_stats_table_and_metrics_show_doh3(served: Served) -> None:
    dnspython_h3(served)
    figures = served.daemon.daemon.collect_stats()
    assert figures["doh3"]["queries"] >= 1
    assert "doh3           " in stats_table.format_table(figures)
    text = metrics.render(figures)
    assert "stubby_py_doh3_queries_total" in text
    assert 'stubby_py_doh3_rejected_total{cap="per_client"}' in text
    assert "stubby_py_doh3_http_errors_total" in text


def test_per_client_cap(tmp_path: Path) -> None:
    with doh3_setup(tmp_path, tcp_max_connections_per_client=1) as setup:
        served = served_by(*setup)

        async def go() -> None:
            async with h3_client(served) as one:
                assert (await one.response(one.send(body=query().to_wire()))).status == 200
                with pytest.raises((ConnectionError, TimeoutError)):
                    async with asyncio.timeout(2), h3_client(served):
                        pass

        run(go())
        assert served.doh3_stats()["rejected_per_client_cap"] >= 1


def test_shutdown_closes_connections_with_h3_no_error(tmp_path: Path) -> None:
    ca = trustme.CA()
    ca_file = str(tmp_path / "ca.pem")
    ca.cert_pem.write_to_path(ca_file)
    cert, key = write_pair(ca, tmp_path)
    with local_upstream(None) as upstream:
        config = make_config(
            [f"udp://127.0.0.1:{upstream.port}"],
            encrypted_listen=(EncryptedListen("h3", "127.0.0.1", 0, "/dns-query"),),
            tls_cert=cert,
            tls_key=key,
        )
        daemon = DaemonThread(config).start()
        stopped = False
        try:
            served = served_by(daemon, upstream, ca_file)

            async def go() -> int:
                nonlocal stopped
                async with h3_client(served) as client:
                    await client.response(client.send(body=query().to_wire()))
                    stopped = True
                    await asyncio.get_running_loop().run_in_executor(None, daemon.stop)
                    return await client.closed_with()

            assert run(go()) == ErrorCode.H3_NO_ERROR
        finally:
            if not stopped:
                daemon.stop()


# -- hostile frames -------------------------------------------------------------------------------
HOSTILE_REQUEST_STREAMS = [
    b"\x01\x05\xff\xff\xff\xff\xff",  # HEADERS whose QPACK block does not decode
    b"\x01\x02\x00\x00",  # HEADERS with an empty field section: no pseudo-headers
    b"\x04\x00",  # SETTINGS on a request stream
    b"\x07\x01\x00",  # GOAWAY on a request stream
    b"\x21\x03abc",  # a reserved frame type (0x1f * N + 0x21, RFC 9114 §7.2.8): ignored
    b"\x01\x50\x00",  # HEADERS announcing 80 octets, FIN after 1: truncated
    b"\xff\xff\xff\xff\xff\xff\xff\xff",  # frame type and length cut short
]


@pytest.mark.parametrize("payload", HOSTILE_REQUEST_STREAMS, ids=lambda p: p[:3].hex())
def test_hostile_request_streams_end_at_most_their_connection(
    served: Served, payload: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    async def go() -> None:
        async with h3_client(served) as client:
            stream_id = client._quic.get_next_available_stream_id()
            client._quic.send_stream_data(stream_id, payload, True)
            client.transmit()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(client.terminated.wait(), 1.0)

    with caplog.at_level(logging.INFO):
        run(go())
    # read before dnspython's own HTTP/3 client (aioquic's logger "quic", at INFO when an earlier
    # test left the root logger there) asks below
    logged = [(r.name, r.getMessage()) for r in caplog.records if r.levelno >= logging.INFO]
    assert [(name, text) for name, text in logged if not name.startswith("tests.")] == []
    assert dnspython_h3(served).rcode() == dns.rcode.NOERROR


def test_hostile_unidirectional_streams_end_at_most_their_connection(served: Served) -> None:
    async def go() -> None:
        async with h3_client(served) as client:
            quic = client._quic
            for payload in (b"\x00\x04\x00", b"\x00\x00", b"\x02\xff\xff", b"\x03\xff\xff"):
                stream_id = quic.get_next_available_stream_id(is_unidirectional=True)
                quic.send_stream_data(stream_id, payload, False)
            client.transmit()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(client.terminated.wait(), 1.0)

    run(go())
    assert dnspython_h3(served).rcode() == dns.rcode.NOERROR
