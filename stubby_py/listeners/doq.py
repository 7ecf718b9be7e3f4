"""DNS over QUIC for clients (RFC 9250), on aioquic's QuicConnection (server side).

ALPN `doq`, UDP. One client-initiated bidirectional stream per query: a 2-octet length, the
query (message ID 0), FIN; the reply goes back on the same stream the same way, ID 0. Connection
errors (CONNECTION_CLOSE with a DoQ code): DOQ_PROTOCOL_ERROR for a non-zero message ID, a
message that is not a query, a FIN before the whole message, more than one message on a stream,
a unidirectional stream, an edns-tcp-keepalive option (RFC 9250 §5.5.2). A stream the client
stops (STOP_SENDING) is reset with DOQ_REQUEST_CANCELLED; a query the resolver drops (rate
limit) gets its stream reset with DOQ_EXCESSIVE_LOAD.

Before any QUIC processing, each datagram's source is checked against the access list, and
against the listener's own `allow` if it has one: a denied client's packets are dropped, no
Initial is answered. A new connection counts against a total and a per-client cap (the numbers
of the TCP caps, counted apart); over them its Initial is dropped. At most MAX_STREAMS queries
at once per connection (the stream credit; unidirectional credit 0) and MAX_BUFFERED octets of
unfinished ones (over it: DOQ_EXCESSIVE_LOAD); the idle timeout is the TCP one.

0-RTT is refused: aioquic's server takes 0-RTT data from any client that resumes a session, and
0-RTT queries can be replayed (RFC 9250 §4.5), so no session tickets are issued on DoQ (no
resumption, so no 0-RTT). The certificate is the one of tls_files.py: new connections get the
files' current pair.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.asyncio.server import QuicServer
from aioquic.buffer import Buffer  # type: ignore[attr-defined]
from aioquic.quic.configuration import SMALLEST_MAX_DATAGRAM_SIZE, QuicConfiguration
from aioquic.quic.connection import NetworkAddress, QuicConnection, QuicConnectionAdapter
from aioquic.quic.events import (
    ConnectionTerminated,
    HandshakeCompleted,
    QuicEvent,
    StopSendingReceived,
    StreamDataReceived,
    StreamReset,
)
from aioquic.quic.packet import QuicPacketType, pull_quic_header

from stubby_py.core import wire
from stubby_py.core.edns import OPTION_KEEPALIVE, OPTION_PADDING
from stubby_py.core.ratelimit import client_key
from stubby_py.listeners.padding import option_codes, pad_reply
from stubby_py.listeners.plain import OwnAllow, TCPConnections
from stubby_py.listeners.tls_files import ServerCertificate

log = logging.getLogger(__name__)

ALPN = "doq"
DOQ_NO_ERROR = 0x0
DOQ_INTERNAL_ERROR = 0x1
DOQ_PROTOCOL_ERROR = 0x2
DOQ_REQUEST_CANCELLED = 0x3
DOQ_EXCESSIVE_LOAD = 0x4
#: queries open at once on one connection (bidirectional stream credit)
MAX_STREAMS = 100
#: flow-control credit per stream: one query and its length prefix
MAX_STREAM_DATA = 2 + wire.MAX_MESSAGE_LEN
#: octets of unfinished queries one connection may hold (a query is at most 65537 with its
#: length, but real ones are a few hundred); over this, DOQ_EXCESSIVE_LOAD
MAX_BUFFERED = 4 * MAX_STREAM_DATA


class _DebugOnly(QuicConnectionAdapter):
    """aioquic's connection log, at DEBUG: it logs each connection's version, ALPN and close at
    INFO and a client's TLS or frame error at WARNING, a line per client packet on a listener."""

    def log(self, level: int, msg: Any, *args: Any, **kwargs: Any) -> None:
        super().log(logging.DEBUG, msg, *args, **kwargs)


_QUIC_LOG = logging.getLogger(f"{__name__}.aioquic")


class DoQStats:
    """Counters of one DoQ listener (stats: the `doq` section)."""

    def __init__(self) -> None:
        self.connections = 0
        self.queries = 0
        self.denied_datagrams = 0
        self.rejected_total_cap = 0
        self.rejected_per_client_cap = 0
        self.protocol_errors = 0
        self.dropped_queries = 0


class DoQConnection(QuicConnectionProtocol):
    def __init__(
        self, quic: QuicConnection, *, server: DoQServer, client: str, **kwargs: Any
    ) -> None:
        super().__init__(quic, **kwargs)
        self._server = server
        self._client: str | None = client
        self._peer = ""
        #: stream → octets received so far (until the message is whole)
        self._buffers: dict[int, bytearray] = {}
        #: streams whose query went to the resolver and whose reply has not gone yet
        self._waiting: set[int] = set()
        #: streams whose whole query came: anything more on them is a protocol error
        self._complete: set[int] = set()
        #: octets in _buffers
        self._buffered = 0
        self._finished = False

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, StreamDataReceived):
            self._data(event.stream_id, event.data, event.end_stream)
        elif isinstance(event, StreamReset):
            self._buffered -= len(self._buffers.pop(event.stream_id, b""))
            self._waiting.discard(event.stream_id)
            self._complete.discard(event.stream_id)
        elif isinstance(event, StopSendingReceived):
            if event.stream_id in self._waiting or event.stream_id in self._buffers:
                self._waiting.discard(event.stream_id)
                self._buffered -= len(self._buffers.pop(event.stream_id, b""))
                self._quic.reset_stream(event.stream_id, DOQ_REQUEST_CANCELLED)
        elif isinstance(event, HandshakeCompleted):
            self._server.stats.connections += 1
        elif isinstance(event, ConnectionTerminated):
            self._terminated()

    def _terminated(self) -> None:
        self._finished = True
        self._buffers.clear()
        self._waiting.clear()
        self._complete.clear()
        if self._client is not None:
            self._server.release(self, self._client)
            self._client = None

    def _protocol_error(self, why: str) -> None:
        self._server.stats.protocol_errors += 1
        self._close(DOQ_PROTOCOL_ERROR, why)

    def _close(self, error_code: int, why: str) -> None:
        log.debug("DoQ client %s: %s", self._peer, why)
        self._buffers.clear()
        self._buffered = 0
        self._waiting.clear()
        self._quic.close(error_code=error_code, reason_phrase=why)
        self._finished = True

    def _data(self, stream_id: int, data: bytes, end_stream: bool) -> None:
        if self._finished:
            return
        if stream_id % 4 != 0:  # not client-initiated bidirectional
            self._protocol_error("not a client bidirectional stream")
            return
        if stream_id in self._complete:
            self._after_query(stream_id, data, end_stream)
            return
        buffer = self._buffers.setdefault(stream_id, bytearray())
        buffer += data
        self._buffered += len(data)
        if self._buffered > MAX_BUFFERED:
            self._close(DOQ_EXCESSIVE_LOAD, "too many octets of unfinished queries")
            return
        need = 2 + wire.U16.unpack_from(buffer)[0] if len(buffer) >= 2 else None
        if need is not None and len(buffer) > need:
            self._protocol_error("more than one message on a stream")
        elif need is not None and len(buffer) == need:
            del self._buffers[stream_id]
            self._buffered -= len(buffer)
            if not end_stream:
                self._complete.add(stream_id)
            self._query(stream_id, bytes(buffer[2:]))
        elif end_stream:
            self._protocol_error("FIN before the whole message")

    def _after_query(self, stream_id: int, data: bytes, end_stream: bool) -> None:
        """The client's side of a stream whose query came whole: only its FIN may follow."""
        if data:
            self._protocol_error("more than one message on a stream")
        elif end_stream:
            self._complete.discard(stream_id)

    def _query(self, stream_id: int, query: bytes) -> None:
        if len(query) < wire.HEADER_LEN or query[2] & 0x80:
            self._protocol_error("not a DNS query")
            return
        if query[:2] != b"\0\0":
            self._protocol_error("message ID not 0 (RFC 9250 §4.2.1)")
            return
        codes = option_codes(query) if query[10:12] != b"\0\0" else set()
        if OPTION_KEEPALIVE in codes:
            self._protocol_error("edns-tcp-keepalive on DoQ (RFC 9250 §5.5.2)")
            return
        server = self._server
        server.stats.queries += 1
        block = server.padding_block() if OPTION_PADDING in codes else 0
        self._waiting.add(stream_id)

        def respond(reply: bytes) -> None:
            if stream_id not in self._waiting or self._finished:
                return
            self._waiting.discard(stream_id)
            if block:
                reply = pad_reply(reply, block)
            self._quic.send_stream_data(stream_id, wire.U16.pack(len(reply)) + reply, True)
            self.transmit()

        if not server.shared.resolver.handle(query, self._peer, respond, udp=False):
            server.stats.dropped_queries += 1
            self._waiting.discard(stream_id)
            self._quic.reset_stream(stream_id, DOQ_EXCESSIVE_LOAD)
            self.transmit()

    def datagram_received(self, data: bytes | str, addr: NetworkAddress) -> None:
        self._peer = addr[0]
        super().datagram_received(data, addr)


class DoQServer(QuicServer):
    """The UDP endpoint: the access list and the caps, then aioquic's QuicServer. DoH over
    HTTP/3 (doh3.py) is this endpoint with another ALPN, credits and connection protocol."""

    alpn = ALPN
    max_stream_data = MAX_STREAM_DATA
    #: unidirectional streams a client may open (HTTP/3 needs 3: control and QPACK)
    max_streams_uni = 0
    #: the CONNECTION_CLOSE code at shutdown
    no_error = DOQ_NO_ERROR

    def __init__(
        self,
        shared: TCPConnections,
        certificate: ServerCertificate,
        padding_block: Callable[[], int],
        own_allow: OwnAllow | None = None,
    ) -> None:
        self.shared = shared
        #: the listener's own `allow` (the daemon changes it on reload)
        self.own_allow = own_allow or OwnAllow()
        self._certificate = certificate
        #: a callable: the current padding block (it may change on reload)
        self.padding_block = padding_block
        self._generation: tuple[str, str, int] | None = None
        configuration = self._current_configuration()
        assert configuration is not None
        super().__init__(configuration=configuration, create_protocol=self._new_connection)
        self.stats = DoQStats()
        self.open: set[QuicConnectionProtocol] = set()
        #: client (client_key) → its connections
        self.per_client: dict[str, int] = {}
        self._admitting: str | None = None

    @property
    def port(self) -> int:
        assert self._transport is not None
        port: int = self._transport.get_extra_info("sockname")[1]
        return port

    def _current_configuration(self) -> QuicConfiguration | None:
        """A configuration with the certificate files' current pair (None: unchanged)."""
        certificate = self._certificate
        certificate.refresh()
        generation = (certificate.cert, certificate.key, certificate.reloaded)
        if generation == self._generation:
            return None
        configuration = QuicConfiguration(
            alpn_protocols=[self.alpn],
            is_client=False,
            idle_timeout=self.shared.idle_timeout,
            max_stream_data=self.max_stream_data,
            max_data=MAX_STREAMS * self.max_stream_data,
        )
        try:
            configuration.load_cert_chain(certificate.cert, certificate.key)
        except (OSError, ValueError, TypeError) as exc:
            log.warning("%s: certificate %s not loaded: %s", self.alpn, certificate.cert, exc)
            return None
        self._generation = generation
        return configuration

    def datagram_received(self, data: bytes | str, addr: NetworkAddress) -> None:
        assert isinstance(data, bytes)
        shared = self.shared
        own = self.own_allow.acl
        peer = addr[0]
        if not shared.resolver.acl.allows(peer) or (own is not None and not own.allows(peer)):
            self.stats.denied_datagrams += 1
            return
        try:
            header = pull_quic_header(
                Buffer(data=data), host_cid_length=self._configuration.connection_id_length
            )
        except ValueError:
            return
        if header.destination_cid not in self._protocols:
            if (
                header.packet_type != QuicPacketType.INITIAL
                or len(data) < SMALLEST_MAX_DATAGRAM_SIZE
                or header.version not in self._configuration.supported_versions
            ):
                super().datagram_received(data, addr)  # version negotiation, or ignored
                return
            if not shared.reading:
                return
            if len(self.open) >= shared.max_connections:
                self.stats.rejected_total_cap += 1
                return
            client = client_key(addr[0], shared.ipv6_prefix)
            if self.per_client.get(client, 0) >= shared.max_per_client:
                self.stats.rejected_per_client_cap += 1
                return
            configuration = self._current_configuration()
            if configuration is not None:
                self._configuration = configuration
            self._configuration.idle_timeout = shared.idle_timeout
            self._admitting = client
            try:
                super().datagram_received(data, addr)
            finally:
                self._admitting = None
            return
        super().datagram_received(data, addr)

    def _new_connection(self, quic: QuicConnection, **kwargs: Any) -> QuicConnectionProtocol:
        assert self._admitting is not None
        client = self._admitting
        # aioquic has no setting for these: the initial credits are transport parameters,
        # sent with the first flight (below the defaults of 128)
        quic._local_max_streams_bidi.value = quic._local_max_streams_bidi.sent = MAX_STREAMS
        uni = self.max_streams_uni
        quic._local_max_streams_uni.value = quic._local_max_streams_uni.sent = uni
        quic._logger = _DebugOnly(_QUIC_LOG, quic._logger.extra)
        connection = self._connection(quic, client, **kwargs)
        self.open.add(connection)
        self.per_client[client] = self.per_client.get(client, 0) + 1
        return connection

    def _connection(
        self, quic: QuicConnection, client: str, **kwargs: Any
    ) -> QuicConnectionProtocol:
        return DoQConnection(quic, server=self, client=client, **kwargs)

    def release(self, connection: QuicConnectionProtocol, client: str) -> None:
        self.open.discard(connection)
        held = self.per_client.get(client, 0) - 1
        if held > 0:
            self.per_client[client] = held
        else:
            self.per_client.pop(client, None)

    def close(self) -> None:
        """CONNECTION_CLOSE (DOQ_NO_ERROR) on every connection, then the socket."""
        for connection in list(self.open):
            connection.close(error_code=self.no_error)
        self.open.clear()
        self.per_client.clear()
        super().close()
