"""QUIC test servers on aioquic: DoH over HTTP/3 (`H3DoHServer`) and DoQ (`DoQServer`, RFC 9250).

Both answer through `answers.outcome` and misbehave on demand (the DoQ-only misbehaviours are
SHORT_FRAME, TWO_MESSAGES and EXCESSIVE_LOAD). They keep session tickets so clients can resume,
count handshakes and resumptions, record raw queries and the streams the client reset, and can
cap the client's stream credit (`max_streams`) or drop every connection with CONNECTION_CLOSE
(`drop_connections`, as a restart would).
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import Iterator
from typing import Any, ClassVar

from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.asyncio.server import QuicServer, serve
from aioquic.h3.connection import H3_ALPN, ErrorCode, H3Connection
from aioquic.h3.events import DataReceived, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import (
    HandshakeCompleted,
    ProtocolNegotiated,
    QuicEvent,
    StopSendingReceived,
    StreamDataReceived,
    StreamReset,
)
from aioquic.tls import SessionTicket

from tests.servers.answers import ServerState, http_response, outcome, query_from_request
from tests.servers.misbehaviour import Misbehaviour
from tests.servers.thread import ServerThread

DOQ_INTERNAL_ERROR = 0x1
DOQ_EXCESSIVE_LOAD = 0x4


class _TicketStore:
    def __init__(self) -> None:
        self.tickets: dict[bytes, SessionTicket] = {}

    def add(self, ticket: SessionTicket) -> None:
        self.tickets[ticket.ticket] = ticket

    def pop(self, label: bytes) -> SessionTicket | None:
        return self.tickets.pop(label, None)


class _ServerConnection(QuicConnectionProtocol):
    """Counts handshakes and client resets; subclasses handle the application protocol."""

    def __init__(self, quic: QuicConnection, server: QuicServerThread, **kwargs: Any) -> None:
        super().__init__(quic, **kwargs)
        self.server = server
        self.state: ServerState = server.state
        if server.max_streams is not None:
            # aioquic has no setting for this: the initial credit is its transport parameter
            quic._local_max_streams_bidi.value = server.max_streams
            quic._local_max_streams_bidi.sent = server.max_streams
        server.protocols.add(self)

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, HandshakeCompleted):
            self.state.handshakes += 1
            self.state.connections += 1
            self.state.peers.append(self._quic._network_paths[0].addr[0])
            self.state.resumptions += event.session_resumed
        elif isinstance(event, (StreamReset, StopSendingReceived)):
            self.state.client_resets.append(event.error_code)
        self.handle(event)

    def handle(self, event: QuicEvent) -> None:
        raise NotImplementedError

    def later(self, delay: float, callback: Any, *args: Any) -> None:
        def run() -> None:
            callback(*args)
            self.transmit()

        self._loop.call_later(delay, run)


class _DoQServerConnection(_ServerConnection):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._buffers: dict[int, bytearray] = {}

    def handle(self, event: QuicEvent) -> None:
        if not isinstance(event, StreamDataReceived):
            return
        buffer = self._buffers.setdefault(event.stream_id, bytearray())
        buffer += event.data
        if event.end_stream:
            del self._buffers[event.stream_id]
            self._query(event.stream_id, bytes(buffer[2:]))

    def _query(self, stream_id: int, data: bytes) -> None:
        result = outcome(self.state, data)
        misbehaviour = result.misbehaviour
        if misbehaviour is Misbehaviour.STALL:
            return
        if misbehaviour is Misbehaviour.CLOSE:
            self.close(error_code=DOQ_INTERNAL_ERROR, reason_phrase="told to close")
        elif misbehaviour in (Misbehaviour.RESET, Misbehaviour.EXCESSIVE_LOAD):
            excessive = misbehaviour is Misbehaviour.EXCESSIVE_LOAD
            code = DOQ_EXCESSIVE_LOAD if excessive else DOQ_INTERNAL_ERROR
            self._quic.reset_stream(stream_id, code)
            self.transmit()
        elif result.delay:
            self.later(result.delay, self._respond, stream_id, misbehaviour, result.reply or b"")
        else:
            self._respond(stream_id, misbehaviour, result.reply or b"")

    def _respond(self, stream_id: int, misbehaviour: Misbehaviour, reply: bytes) -> None:
        framed = struct.pack("!H", len(reply)) + reply
        if misbehaviour is Misbehaviour.SHORT_FRAME:
            framed = struct.pack("!H", len(reply) + 10) + reply
        elif misbehaviour is Misbehaviour.TWO_MESSAGES:
            framed += framed
        elif misbehaviour is Misbehaviour.OVERSIZED:
            framed = b"\xff\xff" + reply
        self._quic.send_stream_data(stream_id, framed, end_stream=True)
        self.transmit()


class _H3ServerConnection(_ServerConnection):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._h3: H3Connection | None = None
        self._requests: dict[int, tuple[dict[bytes, bytes], bytearray]] = {}

    def handle(self, event: QuicEvent) -> None:
        if isinstance(event, ProtocolNegotiated) and event.alpn_protocol in H3_ALPN:
            self._h3 = H3Connection(self._quic)
        if self._h3 is None:
            return
        for h3_event in self._h3.handle_event(event):
            if isinstance(h3_event, HeadersReceived):
                self._requests[h3_event.stream_id] = (dict(h3_event.headers), bytearray())
            elif isinstance(h3_event, DataReceived) and h3_event.stream_id in self._requests:
                self._requests[h3_event.stream_id][1].extend(h3_event.data)
            ended = isinstance(h3_event, (HeadersReceived, DataReceived)) and h3_event.stream_ended
            if ended and h3_event.stream_id in self._requests:  # type: ignore[union-attr]
                headers, body = self._requests.pop(h3_event.stream_id)  # type: ignore[union-attr]
                self._request(h3_event.stream_id, headers, bytes(body))  # type: ignore[union-attr]

    def _request(self, stream_id: int, headers: dict[bytes, bytes], body: bytes) -> None:
        self.state.methods.append(headers.get(b":method", b"").decode())
        result = outcome(self.state, query_from_request(headers, body))
        misbehaviour = result.misbehaviour
        if misbehaviour is Misbehaviour.STALL:
            return
        if misbehaviour in (Misbehaviour.CLOSE, Misbehaviour.GOAWAY):
            self.close(error_code=ErrorCode.H3_INTERNAL_ERROR, reason_phrase="told to close")
        elif misbehaviour is Misbehaviour.RESET:
            self._quic.reset_stream(stream_id, ErrorCode.H3_INTERNAL_ERROR)
            self.transmit()
        elif result.delay:
            self.later(result.delay, self._respond, stream_id, misbehaviour, result.reply or b"")
        else:
            self._respond(stream_id, misbehaviour, result.reply or b"")

    def _respond(self, stream_id: int, misbehaviour: Misbehaviour, body: bytes) -> None:
        assert self._h3 is not None
        headers, body = http_response(misbehaviour, body)
        self._h3.send_headers(stream_id, headers)
        self._h3.send_data(stream_id, body, end_stream=True)
        self.transmit()


class QuicServerThread(ServerThread):
    """A QUIC server on 127.0.0.1 (UDP port 0) with the given ALPN and connection class."""

    connection_class: type[_ServerConnection]
    alpn: ClassVar[list[str]]

    def __init__(self, cert_file: str, key_file: str, max_streams: int | None = None) -> None:
        super().__init__()
        self.max_streams = max_streams
        self.protocols: set[_ServerConnection] = set()
        self._tickets = _TicketStore()
        self._configuration = QuicConfiguration(alpn_protocols=self.alpn, is_client=False)
        self._configuration.load_cert_chain(cert_file, key_file)

    async def _start(self) -> None:
        self._server: QuicServer = await serve(
            "127.0.0.1",
            0,
            configuration=self._configuration,
            create_protocol=lambda *a, **kw: self.connection_class(*a, server=self, **kw),
            session_ticket_fetcher=self._tickets.pop,
            session_ticket_handler=self._tickets.add,
        )
        self.port = self._server._transport.get_extra_info("sockname")[1]  # type: ignore[union-attr]

    async def _stop(self) -> None:
        for protocol in list(self.protocols):
            protocol.close()
        self._server.close()
        await asyncio.sleep(0.05)  # let the transport's connection_lost close the socket

    def drop_connections(self) -> None:
        """CONNECTION_CLOSE on every connection (a restart that says goodbye)."""

        def drop() -> None:
            for protocol in list(self.protocols):
                protocol.close()
            self.protocols.clear()

        self.call(drop)


class DoQServer(QuicServerThread):
    connection_class = _DoQServerConnection
    alpn: ClassVar[list[str]] = ["doq"]


class H3DoHServer(QuicServerThread):
    connection_class = _H3ServerConnection
    alpn: ClassVar[list[str]] = H3_ALPN


@contextlib.contextmanager
def doq_server(cert_file: str, key_file: str, **kwargs: Any) -> Iterator[DoQServer]:
    server = DoQServer(cert_file, key_file, **kwargs)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def h3_server(cert_file: str, key_file: str, **kwargs: Any) -> Iterator[H3DoHServer]:
    server = H3DoHServer(cert_file, key_file, **kwargs)
    server.start()
    try:
        yield server
    finally:
        server.stop()
