"""QUIC client plumbing shared by DoQ (RFC 9250) and DoH over HTTP/3 (RFC 9114), on aioquic.

TLS 1.3 inside QUIC (RFC 9001) is verified as DoT is (RFC 8310): the certificate against the CA
file or the system store, for the authentication name or the IP address, then the SPKI pins, all
before the first query goes out. Session tickets are kept per upstream and each is used once
(RFC 8446 §C.4, RFC 9250 §5.5.3); early data (0-RTT) is never offered, so no query can be replayed
and none leaves before the server is authenticated (RFC 9250 §4.5). Address-validation tokens
(RFC 9000 §8.1.3, RFC 9250 §5.5.4) are kept the same way. Every query is a client-initiated
bidirectional stream; aioquic holds streams beyond the server's MAX_STREAMS credit until the
credit grows (RFC 9000 §4.6), so a burst waits instead of failing. An idle connection ends by
QUIC's idle timeout (RFC 9000 §10.1); the next query connects again, resuming the session.
A retired connection (after a network change) opens no new stream and closes with no error once
its streams are done: the next query connects again, resuming the session on the new path.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import ssl
from typing import Any, ClassVar, Generic, TypeVar, cast

from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import NetworkAddress, QuicConnection
from aioquic.quic.events import (
    ConnectionTerminated,
    HandshakeCompleted,
    QuicEvent,
    StreamReset,
)
from aioquic.tls import SessionTicket
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.serialization import Encoding

from stubby_py.core.config import Config, UpstreamSpec
from stubby_py.core.errors import (
    ALPNMismatchError,
    UpstreamClosedError,
    UpstreamConnectError,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamTimeoutError,
)
from stubby_py.transports.failures import socket_error, tls_alert_error
from stubby_py.transports.multiplex import MultiplexedTransport
from stubby_py.transports.proxy import open_datagram
from stubby_py.transports.tls import ClientContexts, check_pins, server_hostname
from stubby_py.transports.toolkit import ConnectionLinks, Exchanges, Waiter

log = logging.getLogger(__name__)

#: QUIC transport error codes 0x0100-0x01ff carry a TLS alert (RFC 9001 §4.8)
CRYPTO_ERROR_FIRST = 0x100
CRYPTO_ERROR_LAST = 0x1FF

W = TypeVar("W", bound=Waiter)


def quic_configuration(
    spec: UpstreamSpec, config: Config, alpn: list[str], ticket: SessionTicket | None, token: bytes
) -> QuicConfiguration:
    configuration = QuicConfiguration(
        alpn_protocols=alpn,
        is_client=True,
        idle_timeout=config.transport.idle_timeout,
        server_name=server_hostname(spec),
        session_ticket=ticket,
        token=token,
        verify_mode=ssl.CERT_REQUIRED,
    )
    ca_file = spec.ca_file or config.transport.ca_file
    if ca_file:
        configuration.load_verify_locations(cafile=ca_file)
    else:
        configuration.load_verify_locations(*_system_trust_store())
    return configuration


def _system_trust_store() -> tuple[str | None, str | None]:
    """The store DoT uses (OpenSSL's defaults); aioquic alone would fall back to certifi."""
    paths = ssl.get_default_verify_paths()
    cafile = paths.cafile if paths.cafile and os.path.isfile(paths.cafile) else None
    capath = paths.capath if paths.capath and os.path.isdir(paths.capath) else None
    return cafile, capath


def handshake_error(label: str, event: ConnectionTerminated) -> UpstreamError:
    """The error a connection closed before its handshake completed stands for."""
    code = event.error_code
    if CRYPTO_ERROR_FIRST <= code <= CRYPTO_ERROR_LAST:
        return tls_alert_error(label, code - CRYPTO_ERROR_FIRST, event.reason_phrase)
    if event.reason_phrase == "Idle timeout":
        return UpstreamTimeoutError(f"{label}: QUIC handshake timed out (no reply from the server)")
    return UpstreamConnectError(f"{label}: {describe_close(event)}")


def describe_close(event: ConnectionTerminated) -> str:
    code = event.error_code
    reason = f": {event.reason_phrase}" if event.reason_phrase else ""
    if CRYPTO_ERROR_FIRST <= code <= CRYPTO_ERROR_LAST:
        return f"TLS handshake failed (alert {code - CRYPTO_ERROR_FIRST}){reason}"
    return f"connection closed (error 0x{code:x}){reason}"


def _consume_outcome(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()


class QuicStreamConnection(QuicConnectionProtocol, Generic[W]):
    """One QUIC connection: a query per bidirectional stream, a stream → waiter map.

    Subclasses say how a query goes out on a stream (`_send_query`), build its waiter
    (`_new_waiter`) and read what comes back (`_handle_event`).
    """

    #: application error codes (RFC 9250 §4.3, RFC 9114 §8.1)
    no_error_code: ClassVar[int] = 0
    cancel_code: ClassVar[int] = 0

    def __init__(self, quic: QuicConnection, links: ConnectionLinks) -> None:
        super().__init__(quic)
        self._links = links
        self._label = links.label
        self._udp: asyncio.DatagramTransport | None = None
        self._is_closed = False
        self._retired = False
        self._flush_handle: asyncio.Handle | None = None
        self.exchanges: Exchanges[W] = Exchanges(links.label, self._expired)
        self.handshake: asyncio.Future[None] = self._loop.create_future()
        self.handshake.add_done_callback(_consume_outcome)
        self.received_bytes = 0

    @property
    def is_closed(self) -> bool:
        """No new query here: closed, or retired and closing once those in flight are done."""
        return self._is_closed or self._retired

    @property
    def answered(self) -> int:
        return self.exchanges.answered

    @property
    def is_resumed(self) -> bool:
        return bool(self._quic.tls.session_resumed)

    @property
    def alpn(self) -> str | None:
        return self._quic.tls.alpn_negotiated

    def peer_certificate(self) -> bytes | None:
        """The server's certificate (DER), None on a resumed session (aioquic keeps it private)."""
        certificate = getattr(self._quic.tls, "_peer_certificate", None)
        return None if certificate is None else certificate.public_bytes(Encoding.DER)

    def peer_chain(self) -> list[bytes]:
        """The leaf and the certificates the server sent that issued it, one after the other,
        leaf first (for a stamp's TBS hashes). A sent certificate off that path (any CA's
        certificate is public, and verification ignores extras) is left out."""
        current = getattr(self._quic.tls, "_peer_certificate", None)
        if current is None:
            return []
        chain = [current.public_bytes(Encoding.DER)]
        for issuer in getattr(self._quic.tls, "_peer_certificate_chain", None) or []:
            try:
                current.verify_directly_issued_by(issuer)
            except (ValueError, TypeError, InvalidSignature):
                break
            chain.append(issuer.public_bytes(Encoding.DER))
            current = issuer
        return chain

    # -- asyncio.DatagramProtocol -------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._udp = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes | str, addr: NetworkAddress) -> None:
        self.received_bytes += len(data)
        super().datagram_received(data, addr)

    def error_received(self, exc: Exception) -> None:
        # ICMP unreachable: the server is gone; fail now rather than at the deadline (a query in
        # flight is retried once, on a new connection that fails fast the same way)
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        if not self.handshake.done():
            error = (
                socket_error(self._label, exc)
                if isinstance(exc, OSError)
                else UpstreamConnectError(f"{self._label}: {reason}")
            )
            self.handshake.set_exception(error)
        elif not self._is_closed:
            log.info("%s: %s; closing the connection", self._label, reason)
            self.close()

    def transmit(self) -> None:
        if self._udp is not None and not self._udp.is_closing():
            super().transmit()
        else:
            self._stop_quic_timer()

    def _stop_quic_timer(self) -> None:
        """Once the socket is closed nothing is sent or received any more, but aioquic's timer
        (loss detection, idle timeout: up to upstream_idle_timeout away) would keep the whole
        connection alive until it fired (#21)."""
        timer = getattr(self, "_timer", None)
        if timer is not None:
            timer.cancel()
            self._timer = None

    # -- QUIC events ----------------------------------------------------------------------------
    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, HandshakeCompleted):
            if not self.handshake.done():
                self.handshake.set_result(None)
        elif isinstance(event, ConnectionTerminated):
            self._handle_terminated(event)
            return
        self._handle_event(event)
        if isinstance(event, StreamReset):
            self._handle_stream_reset(event)
        self._close_if_drained()

    def _handle_terminated(self, event: ConnectionTerminated) -> None:
        reason = describe_close(event)
        if not self.handshake.done():
            self.handshake.set_exception(handshake_error(self._label, event))
        self._is_closed = True
        if self._udp is not None:
            self._udp.close()
            self._stop_quic_timer()
        self._fail_all(UpstreamClosedError(f"{self._label}: {reason}"))

    def _handle_stream_reset(self, event: StreamReset) -> None:
        error = UpstreamProtocolError(
            f"{self._label}: the server reset the stream ({self.error_name(event.error_code)})"
        )
        self.exchanges.reject(event.stream_id, error)

    def error_name(self, code: int) -> str:
        return f"error 0x{code:x}"

    # -- queries ----------------------------------------------------------------------------------
    def send(self, query: bytes, deadline: float) -> tuple[int, asyncio.Future[bytes]]:
        if self.is_closed:
            raise UpstreamClosedError(f"{self._label}: connection closed")
        stream_id = self._quic.get_next_available_stream_id()
        future: asyncio.Future[bytes] = self._loop.create_future()
        waiter = self._new_waiter(future, query)
        self.exchanges.add(stream_id, waiter, deadline)
        self._send_query(stream_id, query)
        self._flush_soon()
        return stream_id, future

    def forget(self, key: int, future: asyncio.Future[bytes]) -> None:
        # stream IDs are never reused on a connection: the key alone names this query
        if self.exchanges.discard(key) is not None:
            self._cancel_stream(key)
        self._close_if_drained()

    def retire(self) -> None:
        """Open no new stream; close once the queries in flight are answered or time out."""
        self._retired = True
        self._close_if_drained()

    def _close_if_drained(self) -> None:
        if self._retired and not len(self.exchanges) and not self._is_closed:
            self.close()

    def close(self, error_code: int | None = None, reason: str = "") -> None:
        """CONNECTION_CLOSE now (no closing period: nothing here awaits it), fail what is left."""
        if not self._is_closed:
            self._is_closed = True
            code = self.no_error_code if error_code is None else error_code
            self._quic.close(error_code=code, reason_phrase=reason)
            self.transmit()
            if self._udp is not None:
                self._udp.close()
            self._stop_quic_timer()
        self._fail_all(UpstreamClosedError(f"{self._label}: connection closed"))

    def _fail_all(self, error: UpstreamError) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        self.exchanges.fail_all(error)
        self._links.on_closed(self)

    def _cancel_stream(self, stream_id: int) -> None:
        """RFC 9250 §4.3.1 / RFC 9114 §4.1.1: reset our side and ask the server to stop."""
        if self._is_closed or self._is_blocked(stream_id):
            return
        self._quic.reset_stream(stream_id, self.cancel_code)
        with contextlib.suppress(ValueError):  # the receiving side is already gone
            self._quic.stop_stream(stream_id, self.cancel_code)
        self._flush_soon()

    def _is_blocked(self, stream_id: int) -> bool:
        """Still waiting for stream credit, so unknown to the server.

        aioquic would write RESET_STREAM and STOP_SENDING for such a stream at once, opening it
        beyond the server's limit (a STREAM_LIMIT_ERROR, RFC 9000 §4.6) and losing the
        connection; such a stream is left alone: its query goes out when credit comes, and the
        reply is dropped. aioquic exposes no public view of this, hence the private lookup.
        """
        stream = getattr(self._quic, "_streams", {}).get(stream_id)
        return bool(getattr(stream, "is_blocked", False))

    def _expired(self, stream_id: int, waiter: W) -> None:
        self._cancel_stream(stream_id)
        if self.received_bytes == waiter.sent_at_bytes and not self._is_closed:
            # nothing at all came back since this query went out: the path or the server is gone
            log.info("%s: nothing came back for a whole attempt; reconnecting", self._label)
            self.close()
        self._close_if_drained()

    def _flush_soon(self) -> None:
        """One transmit per event-loop turn, however many queries were written in it."""
        if self._flush_handle is None and not self._is_closed:
            self._flush_handle = self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_handle = None
        self.transmit()

    # -- for subclasses ---------------------------------------------------------------------------
    def _new_waiter(self, future: asyncio.Future[bytes], query: bytes) -> W:
        raise NotImplementedError

    def _send_query(self, stream_id: int, query: bytes) -> None:
        raise NotImplementedError

    def _handle_event(self, event: QuicEvent) -> None:
        raise NotImplementedError


P = TypeVar("P", bound=QuicStreamConnection[Any])


class QuicTransport(MultiplexedTransport[P]):
    """One upstream over QUIC: one connection, resumed from the last ticket when it is renewed."""

    alpn: ClassVar[list[str]] = []

    def __init__(self, spec: UpstreamSpec, config: Config) -> None:
        super().__init__(spec, config)
        self._ticket: SessionTicket | None = None
        self._token = b""
        self._contexts = ClientContexts(spec, config)

    @property
    def resumptions(self) -> int:
        """Handshakes that resumed a session from a ticket (a subset of stats.handshakes)."""
        return self.stats.resumptions

    def _new_connection(self, quic: QuicConnection) -> P:
        raise NotImplementedError

    async def _open(self, address: str) -> P:
        self._contexts.check_ca_file()
        configuration = quic_configuration(
            self.spec, self._config, self.alpn, self._take_ticket(), self._take_token()
        )
        # a ticket is kept only from a connection whose certificate and pins passed: aioquic
        # hands it over during the handshake, before _check_session has looked
        checked = False
        held: list[SessionTicket] = []

        def store_ticket(ticket: SessionTicket) -> None:
            if checked:
                self._ticket = ticket
            else:
                held[:] = [ticket]

        quic = QuicConnection(
            configuration=configuration,
            session_ticket_handler=store_ticket,
            token_handler=self._store_token,
        )
        try:
            transport, connection = await open_datagram(
                self.spec, self._config, address, self.spec.port,
                lambda: self._new_connection(quic), timeout=self.connect_timeout,
            )  # fmt: skip
        except OSError as exc:
            raise socket_error(self.name, exc) from None
        try:
            connection.connect(transport.get_extra_info("peername"))
            await connection.handshake
            self._check_session(connection)
        except BaseException:
            connection.close()
            raise
        checked = True
        if held:
            self._ticket = held[-1]
        return connection

    def _check_session(self, connection: P) -> None:
        if connection.alpn not in self.alpn:
            raise ALPNMismatchError(f"{self.name}: server chose ALPN {connection.alpn!r}")
        self._session_details = (connection.is_resumed, "QUIC", connection.alpn, None)
        if connection.is_resumed:
            # a ticket only ever comes from a session whose certificate and pins were checked
            return
        check_pins(self.spec, connection.peer_certificate(), connection.peer_chain())

    def _take_ticket(self) -> SessionTicket | None:
        ticket, self._ticket = self._ticket, None
        if ticket is None or not ticket.is_valid:
            return None
        # never offer early data (0-RTT): see the module docstring
        return dataclasses.replace(ticket, max_early_data_size=None)

    def _take_token(self) -> bytes:
        token, self._token = self._token, b""
        return token

    def _store_token(self, token: bytes) -> None:
        self._token = token
