"""DNS over Dedicated QUIC Connections (RFC 9250): one query per stream of one QUIC connection.

ALPN "doq" (§4.1), UDP port 853 by default (§4.1.1). Each query goes out on a new client-initiated
bidirectional stream, 2-octet length first, message ID 0, and the STREAM FIN right after it
(§4.2, §4.2.1); the reply comes back the same way on the same stream, so a stream → waiter map
routes replies and none waits on another. A query we give up on is cancelled with RESET_STREAM
and STOP_SENDING carrying DOQ_REQUEST_CANCELLED (§4.3.1); a stream the server resets
(DOQ_INTERNAL_ERROR, DOQ_EXCESSIVE_LOAD: §4.3.2) fails only its query; a malformed reply (FIN
before the whole message, a second message, a non-zero ID) is a protocol error that closes the
connection with DOQ_PROTOCOL_ERROR (§4.3.3). The connection is reused, resumed from session
tickets without 0-RTT, and idles out as quic.py describes (§4.5, §5.5).
"""

from __future__ import annotations

import asyncio
from typing import ClassVar

from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import QuicEvent, StreamDataReceived

from stubby_py.core import wire
from stubby_py.core.errors import UpstreamProtocolError
from stubby_py.transports.base import Transport
from stubby_py.transports.multiplex import checked_reply
from stubby_py.transports.quic import QuicStreamConnection, QuicTransport
from stubby_py.transports.toolkit import Waiter

DOQ_ALPN = "doq"
#: RFC 9250 §4.3
DOQ_NO_ERROR = 0x0
DOQ_INTERNAL_ERROR = 0x1
DOQ_PROTOCOL_ERROR = 0x2
DOQ_REQUEST_CANCELLED = 0x3
DOQ_EXCESSIVE_LOAD = 0x4
DOQ_UNSPECIFIED_ERROR = 0x5
DOQ_ERROR_NAMES = {
    DOQ_NO_ERROR: "DOQ_NO_ERROR",
    DOQ_INTERNAL_ERROR: "DOQ_INTERNAL_ERROR",
    DOQ_PROTOCOL_ERROR: "DOQ_PROTOCOL_ERROR",
    DOQ_REQUEST_CANCELLED: "DOQ_REQUEST_CANCELLED",
    DOQ_EXCESSIVE_LOAD: "DOQ_EXCESSIVE_LOAD",
    DOQ_UNSPECIFIED_ERROR: "DOQ_UNSPECIFIED_ERROR",
}


class DoQProtocolError(ValueError):
    """The server broke RFC 9250 §4.2 on a stream (§4.3.3: fatal for the connection)."""


def stream_reply(buffer: bytes | bytearray, ended: bool) -> bytes | None:
    """The reply once a stream holds all of it, None while more is to come.

    RFC 9250 §4.2: one message per stream, 2-octet length first; §4.2.1: message ID 0.
    """
    if len(buffer) >= 2:
        end = 2 + ((buffer[0] << 8) | buffer[1])
        if len(buffer) > end:
            raise DoQProtocolError("more than one message on a stream")
        if len(buffer) == end:
            reply = bytes(buffer[2:end])
            if len(reply) >= 2 and reply[:2] != b"\x00\x00":
                raise DoQProtocolError(f"reply has message ID {wire.header_id(reply)}, not 0")
            return reply
    if ended:
        raise DoQProtocolError("stream ended before the whole reply")
    return None


class _DoQWaiter(Waiter):
    __slots__ = ("buffer",)

    def __init__(self, future: asyncio.Future[bytes], query: bytes, sent_at_bytes: int) -> None:
        super().__init__(future, query, sent_at_bytes)
        self.buffer = bytearray()


class DoQConnection(QuicStreamConnection[_DoQWaiter]):
    no_error_code = DOQ_NO_ERROR
    cancel_code = DOQ_REQUEST_CANCELLED

    def error_name(self, code: int) -> str:
        return DOQ_ERROR_NAMES.get(code, f"error 0x{code:x}")

    def _new_waiter(self, future: asyncio.Future[bytes], query: bytes) -> _DoQWaiter:
        return _DoQWaiter(future, query, self.received_bytes)

    def _send_query(self, stream_id: int, query: bytes) -> None:
        # RFC 9250 §4.2: the length-prefixed query, then FIN: one query per stream
        self._quic.send_stream_data(stream_id, wire.frame(query), end_stream=True)

    def _handle_event(self, event: QuicEvent) -> None:
        if isinstance(event, StreamDataReceived):
            self._handle_stream_data(event)

    def _handle_stream_data(self, event: StreamDataReceived) -> None:
        stream_id = event.stream_id
        waiter = self.exchanges.get(stream_id)
        if waiter is None:
            return  # a query we gave up on, or a stream we never opened
        waiter.buffer += event.data
        try:
            reply = stream_reply(waiter.buffer, event.end_stream)
        except DoQProtocolError as exc:
            self.exchanges.reject(stream_id, UpstreamProtocolError(f"{self._label}: {exc}"))
            self.close(DOQ_PROTOCOL_ERROR, str(exc))
            return
        if reply is None:
            return
        try:
            checked_reply(reply, waiter.question, self._label)
        except UpstreamProtocolError as exc:
            self._links.on_mismatched(1)
            self.exchanges.reject(stream_id, exc)
            return
        self.exchanges.resolve(stream_id, reply)


class DoQTransport(QuicTransport[DoQConnection]):
    """One DoQ upstream: one QUIC connection, a stream per query, resumed from tickets."""

    alpn: ClassVar[list[str]] = [DOQ_ALPN]

    def _new_connection(self, quic: QuicConnection) -> DoQConnection:
        return DoQConnection(quic, self.links())


_: type[Transport] = DoQTransport
