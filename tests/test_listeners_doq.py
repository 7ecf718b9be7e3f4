"""The DoQ listener (RFC 9250, issue #17) with real clients: dnspython's DoQ
and aioquic's client driven by hand (non-zero IDs, pipelining, session tickets).

One daemon per module: a plain listener and `quic://127.0.0.1:0`, `allow` 127.0.0.1 only (so a
client bound to 127.0.0.2 is outside it), a certificate issued by the test CA (trustme).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dns.asyncquery
import dns.edns
import dns.exception
import dns.message
import dns.query
import dns.rcode
import pytest
import trustme
from aioquic.asyncio.client import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import ConnectionTerminated, QuicEvent, StreamDataReceived
from aioquic.tls import SessionTicket

from stubby_py.commands import stats as stats_table
from stubby_py.core.config import Config, EncryptedListen
from stubby_py.daemon import metrics
from stubby_py.listeners import doq, tls_files
from tests.daemon_thread import DaemonThread, make_config, running_daemon
from tests.servers import LocalUpstream, local_upstream
from tests.test_listeners_encrypted import NAME, query, write_pair


@dataclass
class Served:
    daemon: DaemonThread
    upstream: LocalUpstream
    ca_file: str
    plain: int
    doq: int

    def doq_stats(self) -> dict[str, int]:
        figures: dict[str, int] = self.daemon.daemon.collect_stats()["doq"]
        return figures


@contextlib.contextmanager
def doq_setup(
    directory: Path, ca: trustme.CA | None = None, **changes: Any
) -> Iterator[tuple[Config, LocalUpstream, str]]:
    """A daemon configuration with one DoQ listener on a certificate made here, forwarding to a
    local upstream: (config, upstream, CA file)."""
    ca = ca or trustme.CA()
    ca_file = str(directory / "ca.pem")
    ca.cert_pem.write_to_path(ca_file)
    cert, key = write_pair(ca, directory)
    with local_upstream(None) as upstream:
        config = make_config(
            [f"udp://127.0.0.1:{upstream.port}"],
            encrypted_listen=(EncryptedListen("quic", "127.0.0.1", 0),),
            tls_cert=cert,
            tls_key=key,
            **changes,
        )
        yield config, upstream, ca_file


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    directory = tmp_path_factory.mktemp("doq")
    with (
        doq_setup(directory, allow=("127.0.0.1/32",)) as (config, upstream, ca_file),
        running_daemon(config) as daemon,
    ):
        (bound,) = daemon.daemon.encrypted_bound
        yield Served(daemon, upstream, ca_file, daemon.port, bound.port)


# -- aioquic's client, by hand -------------------------------------------------------------------
@dataclass
class Client:
    protocol: _Recorder
    tickets: list[SessionTicket]

    def send(self, message: bytes, *, framed: bytes | None = None) -> int:
        """A stream with `message` after its length (or `framed`, as it is), then FIN."""
        quic = self.protocol._quic
        stream_id = quic.get_next_available_stream_id()
        data = struct.pack("!H", len(message)) + message if framed is None else framed
        quic.send_stream_data(stream_id, data, True)
        self.protocol.transmit()
        return stream_id

    async def reply(self, stream_id: int, timeout: float = 5.0) -> bytes:
        return await asyncio.wait_for(self.protocol.replies(stream_id), timeout)

    async def closed_with(self, timeout: float = 5.0) -> int:
        await asyncio.wait_for(self.protocol.terminated.wait(), timeout)
        assert self.protocol.close_event is not None
        return self.protocol.close_event.error_code


class _Recorder(QuicConnectionProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.streams: dict[int, bytearray] = {}
        self.ended: dict[int, asyncio.Event] = {}
        self.terminated = asyncio.Event()
        self.close_event: ConnectionTerminated | None = None

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, StreamDataReceived):
            self.streams.setdefault(event.stream_id, bytearray()).extend(event.data)
            if event.end_stream:
                self.ended.setdefault(event.stream_id, asyncio.Event()).set()
        elif isinstance(event, ConnectionTerminated):
            self.close_event = event
            self.terminated.set()

    async def replies(self, stream_id: int) -> bytes:
        await self.ended.setdefault(stream_id, asyncio.Event()).wait()
        data = bytes(self.streams[stream_id])
        (length,) = struct.unpack_from("!H", data)
        assert len(data) == 2 + length, "one message per stream, length as announced"
        return data[2:]


@contextlib.asynccontextmanager
async def doq_client(served: Served, **kwargs: Any) -> AsyncIterator[Client]:
    tickets: list[SessionTicket] = []
    configuration = QuicConfiguration(alpn_protocols=["doq"], is_client=True, server_name=NAME)
    configuration.load_verify_locations(served.ca_file)
    async with connect(
        "127.0.0.1",
        served.doq,
        configuration=configuration,
        create_protocol=_Recorder,
        session_ticket_handler=tickets.append,
        wait_connected=True,
        **kwargs,
    ) as protocol:
        assert isinstance(protocol, _Recorder)
        yield Client(protocol, tickets)


def run(coroutine: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coroutine, 20))


def dnspython_doq(served: Served, timeout: float = 5.0, **kwargs: Any) -> dns.message.Message:
    """dnspython's DoQ client (the asyncio one: the sync one leaves a socketpair open)."""
    reply: dns.message.Message = asyncio.run(
        dns.asyncquery.quic(query(), "127.0.0.1", port=served.doq, timeout=timeout,
                            verify=served.ca_file, server_hostname=NAME, **kwargs)
    )  # fmt: skip
    return reply


# -- answers ------------------------------------------------------------------------------------
def test_dnspython_doq_gets_answer_with_id_0(served: Served) -> None:
    reply = dnspython_doq(served)
    assert reply.rcode() == dns.rcode.NOERROR
    assert reply.id == 0
    assert "192.0.2.1" in reply.to_text()
    assert served.doq_stats()["queries"] >= 1


def test_padded_query_gets_padded_reply(served: Served) -> None:
    async def go() -> tuple[bytes, bytes]:
        async with doq_client(served) as client:
            padded = await client.reply(client.send(query(pad=True).to_wire()))
            plain = await client.reply(client.send(query().to_wire()))
            return padded, plain

    padded, plain = run(go())
    assert len(padded) % 468 == 0  # RFC 8467: padded to the 468-octet block
    assert len(plain) % 468 != 0  # never for a query without padding
    assert dns.message.from_wire(padded).id == 0


def test_pipelined_streams_on_one_connection(served: Served) -> None:
    names = [f"host{i}.example.com" for i in range(8)]

    async def go() -> list[dns.message.Message]:
        async with doq_client(served) as client:
            streams = [client.send(query(name).to_wire()) for name in names]
            return [dns.message.from_wire(await client.reply(s)) for s in streams]

    replies = run(go())
    assert [r.question[0].name.to_text() for r in replies] == [n + "." for n in names]
    assert all(r.id == 0 and r.rcode() == dns.rcode.NOERROR for r in replies)


def test_no_session_tickets_so_no_0rtt(served: Served) -> None:
    async def go() -> list[SessionTicket]:
        async with doq_client(served) as client:
            await client.reply(client.send(query().to_wire()))
            return client.tickets

    assert run(go()) == []


# -- protocol errors ------------------------------------------------------------------------------
def test_non_zero_id_is_a_protocol_error(served: Served) -> None:
    async def go() -> int:
        async with doq_client(served) as client:
            client.send(query(msg_id=0x1234).to_wire())
            return await client.closed_with()

    assert run(go()) == doq.DOQ_PROTOCOL_ERROR


def test_fin_before_the_whole_message_is_a_protocol_error(served: Served) -> None:
    async def go() -> int:
        async with doq_client(served) as client:
            client.send(b"", framed=b"\x00\x40" + query().to_wire()[:10])
            return await client.closed_with()

    assert run(go()) == doq.DOQ_PROTOCOL_ERROR


def test_two_messages_on_a_stream_is_a_protocol_error(served: Served) -> None:
    async def go() -> int:
        async with doq_client(served) as client:
            wire = query().to_wire()
            one = struct.pack("!H", len(wire)) + wire
            client.send(b"", framed=one + one)
            return await client.closed_with()

    assert run(go()) == doq.DOQ_PROTOCOL_ERROR


# -- access list, garbage -------------------------------------------------------------------------
def test_denied_source_gets_nothing(served: Served) -> None:
    before = served.doq_stats()["denied_datagrams"]
    with pytest.raises(dns.exception.Timeout):
        dnspython_doq(served, timeout=1.5, source="127.0.0.2")
    assert served.doq_stats()["denied_datagrams"] > before


def test_denied_source_initial_gets_no_datagram_back(served: Served) -> None:
    """A raw Initial-looking datagram from outside `allow`: not even a Version Negotiation."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.2", 0))
        sock.settimeout(1.0)
        # long header, version 0x1a2a3a4a (unsupported: an allowed source gets Version Negotiation)
        packet = b"\xc0\x1a\x2a\x3a\x4a\x08" + b"D" * 8 + b"\x08" + b"S" * 8
        sock.sendto(packet + b"\0" * (1200 - len(packet)), ("127.0.0.1", served.doq))
        with pytest.raises(TimeoutError):
            sock.recvfrom(2048)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:  # the control: 127.0.0.1
        sock.settimeout(5.0)
        sock.sendto(packet + b"\0" * (1200 - len(packet)), ("127.0.0.1", served.doq))
        data, _ = sock.recvfrom(2048)
        assert data[1:5] == b"\0\0\0\0"  # Version Negotiation


def test_garbage_datagrams_do_not_stop_the_listeners(served: Served) -> None:
    junk = [b"", b"\x00", b"\xff" * 5, b"\xc0" + b"\x00" * 1300, b"\x40" + b"\x17" * 60,
            bytes(range(256)) * 5, b"\xc3\x00\x00\x00\x01\x14" + b"\x00" * 1300]  # fmt: skip
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for datagram in junk * 20:
            sock.sendto(datagram, ("127.0.0.1", served.doq))
    reply = dns.query.udp(query(), "127.0.0.1", port=served.plain, timeout=5)
    assert reply.rcode() == dns.rcode.NOERROR
    reply = dnspython_doq(served)
    assert reply.rcode() == dns.rcode.NOERROR


# -- caps -----------------------------------------------------------------------------------------
def test_per_client_cap(tmp_path: Path) -> None:
    capped = doq_setup(tmp_path, tcp_max_connections_per_client=2)
    with capped as (config, upstream, ca_file), running_daemon(config) as daemon:
        (bound,) = daemon.daemon.encrypted_bound
        served = Served(daemon, upstream, ca_file, daemon.port, bound.port)

        async def go() -> None:
            async with doq_client(served) as one, doq_client(served) as two:
                for client in (one, two):
                    await client.reply(client.send(query().to_wire()))
                with pytest.raises((ConnectionError, TimeoutError)):
                    async with asyncio.timeout(2):
                        async with doq_client(served):
                            pass
            # the two closed (once drained, RFC 9000 §10.2): room again
            for _ in range(10):
                with contextlib.suppress(ConnectionError, TimeoutError):
                    async with asyncio.timeout(2), doq_client(served) as three:
                        await three.reply(three.send(query().to_wire()))
                        return
            raise AssertionError("no connection after the others closed")

        run(go())
        figures = served.doq_stats()
        assert figures["rejected_per_client_cap"] >= 1


# -- DDR, certificate files ------------------------------------------------------------------------
def test_ddr_lists_the_doq_listener(served: Served) -> None:
    svcb = dns.message.make_query("_dns.resolver.arpa", "SVCB")
    reply = dns.query.udp(svcb, "127.0.0.1", port=served.plain, timeout=5)
    texts = [r.to_text() for r in reply.answer[0]]
    assert texts == [f'1 {NAME}. alpn="doq" port="{served.doq}" ipv4hint="127.0.0.1"']


def test_renewed_certificate_is_served_to_new_connections(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tls_files, "CHECK_INTERVAL", 0.0)
    ca = trustme.CA()
    with (
        doq_setup(tmp_path, ca) as (config, upstream, ca_file),
        running_daemon(config) as daemon,
    ):
        (bound,) = daemon.daemon.encrypted_bound
        served = Served(daemon, upstream, ca_file, daemon.port, bound.port)

        async def serial() -> int:
            async with doq_client(served) as client:
                await client.reply(client.send(query().to_wire()))
                peer = client.protocol._quic.tls._peer_certificate
                assert peer is not None
                number: int = peer.serial_number
                return number

        first = run(serial())
        write_pair(ca, tmp_path)  # renewed: same paths, new files
        assert run(serial()) != first
        assert daemon.daemon.certificate is not None
        assert daemon.daemon.certificate.reloaded == 1


def test_cancelled_stream_leaves_the_connection_usable(served: Served) -> None:
    errors_before = served.doq_stats()["protocol_errors"]

    async def go() -> dns.message.Message:
        async with doq_client(served) as client:
            cancelled = client.send(query("cancelled.example.com").to_wire())
            client.protocol._quic.reset_stream(cancelled, doq.DOQ_REQUEST_CANCELLED)
            client.protocol.transmit()
            return dns.message.from_wire(await client.reply(client.send(query().to_wire())))

    assert run(go()).rcode() == dns.rcode.NOERROR
    assert served.doq_stats()["protocol_errors"] == errors_before


def test_stats_table_and_metrics_show_doq(served: Served) -> None:
    dnspython_doq(served)
    figures = served.daemon.daemon.collect_stats()
    assert figures["doq"]["queries"] >= 1
    assert "doq            " in stats_table.format_table(figures)
    text = metrics.render(figures)
    assert "stubby_py_doq_queries_total" in text
    assert 'stubby_py_doq_rejected_total{cap="per_client"}' in text


def test_shutdown_closes_doq_connections_with_no_error(tmp_path: Path) -> None:
    with doq_setup(tmp_path) as (config, upstream, ca_file):
        daemon = DaemonThread(config).start()
        stopped = False
        try:
            (bound,) = daemon.daemon.encrypted_bound
            served = Served(daemon, upstream, ca_file, daemon.port, bound.port)

            async def go() -> int:
                nonlocal stopped
                async with doq_client(served) as client:
                    await client.reply(client.send(query().to_wire()))
                    stopped = True
                    await asyncio.get_running_loop().run_in_executor(None, daemon.stop)
                    return await client.closed_with()

            assert run(go()) == doq.DOQ_NO_ERROR
        finally:
            if not stopped:
                daemon.stop()


def test_unfinished_queries_over_the_buffer_cap_close_with_excessive_load(served: Served) -> None:
    async def go() -> int:
        async with doq_client(served) as client:
            quic = client.protocol._quic
            for _ in range(doq.MAX_BUFFERED // 60_000 + 1):  # each announces 65535, sends less
                stream_id = quic.get_next_available_stream_id()
                quic.send_stream_data(stream_id, b"\xff\xff" + b"\0" * 60_000, False)
            client.protocol.transmit()
            return await client.closed_with()

    assert run(go()) == doq.DOQ_EXCESSIVE_LOAD


def test_keepalive_option_is_a_protocol_error(served: Served) -> None:
    """RFC 9250 §5.5.2: edns-tcp-keepalive has no meaning on DoQ."""
    option = dns.edns.GenericOption(dns.edns.OptionType.KEEPALIVE, b"")
    keepalive = dns.message.make_query("example.com", "A", use_edns=0, options=[option])
    keepalive.id = 0

    async def go() -> int:
        async with doq_client(served) as client:
            client.send(keepalive.to_wire())
            return await client.closed_with()

    assert run(go()) == doq.DOQ_PROTOCOL_ERROR
