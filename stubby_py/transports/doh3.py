"""DNS over HTTPS (RFC 8484) over HTTP/3 (RFC 9114): a request stream per query on one QUIC link.

The DoH exchange of doh.py (`DoHRequests`, `DoHResponse`: POST or GET, ID 0, status, media type
and size checks) on aioquic's sans-IO H3Connection, over the QUIC plumbing of quic.py (ALPN "h3",
RFC 9114 §3.1; certificate, name and pins checked before the first request; tickets without
0-RTT). A query we give up on resets its request stream and stops its response with
H3_REQUEST_CANCELLED (RFC 9114 §4.1.1, §8.1); a stream the server resets fails only its query;
the connection closes with H3_NO_ERROR. H3Connection is driven directly, with no httpx layer in
between: the stream → waiter map is the whole client, as for DoQ.
"""

from __future__ import annotations

import asyncio
from typing import ClassVar

from aioquic.h3.connection import H3_ALPN, ErrorCode, H3Connection
from aioquic.h3.events import DataReceived, HeadersReceived
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import QuicEvent

from stubby_py.core.config import Config, UpstreamSpec
from stubby_py.core.errors import UpstreamProtocolError
from stubby_py.transports.base import Transport
from stubby_py.transports.doh import DoHRequests, DoHResponse, Headers
from stubby_py.transports.quic import QuicStreamConnection, QuicTransport
from stubby_py.transports.toolkit import ConnectionLinks, Waiter


class _H3Waiter(Waiter):
    __slots__ = ("response",)

    def __init__(
        self, future: asyncio.Future[bytes], query: bytes, sent_at_bytes: int, label: str
    ) -> None:
        super().__init__(future, query, sent_at_bytes)
        self.response = DoHResponse(label)


class DoH3Connection(QuicStreamConnection[_H3Waiter]):
    no_error_code = ErrorCode.H3_NO_ERROR
    cancel_code = ErrorCode.H3_REQUEST_CANCELLED

    def __init__(self, quic: QuicConnection, links: ConnectionLinks, requests: DoHRequests) -> None:
        super().__init__(quic, links)
        self._requests = requests
        self._h3 = H3Connection(quic)

    def error_name(self, code: int) -> str:
        try:
            return ErrorCode(code).name
        except ValueError:
            return f"error 0x{code:x}"

    def _new_waiter(self, future: asyncio.Future[bytes], query: bytes) -> _H3Waiter:
        return _H3Waiter(future, query, self.received_bytes, self._label)

    def _send_query(self, stream_id: int, query: bytes) -> None:
        headers, body = self._requests.build(query)
        self._h3.send_headers(stream_id, headers, end_stream=not body)
        if body:
            self._h3.send_data(stream_id, body, end_stream=True)

    def _handle_event(self, event: QuicEvent) -> None:
        for h3_event in self._h3.handle_event(event):
            if isinstance(h3_event, HeadersReceived):
                self._feed(h3_event.stream_id, h3_event.headers, b"", h3_event.stream_ended)
            elif isinstance(h3_event, DataReceived):
                self._feed(h3_event.stream_id, None, h3_event.data, h3_event.stream_ended)

    def _feed(self, stream_id: int, headers: Headers | None, data: bytes, ended: bool) -> None:
        waiter = self.exchanges.get(stream_id)
        if waiter is None:
            return
        response = waiter.response
        try:
            if headers is not None:
                response.headers_received(headers)
            else:
                response.data_received(data)
            reply = response.reply(waiter.question) if ended else None
        except UpstreamProtocolError as exc:
            self._links.on_mismatched(ended)
            self.exchanges.reject(stream_id, exc)
            self._cancel_stream(stream_id)
            return
        if reply is not None:
            self.exchanges.resolve(stream_id, reply)


class DoH3Transport(QuicTransport[DoH3Connection]):
    """One DoH upstream over HTTP/3: one QUIC connection, a request stream per query."""

    alpn: ClassVar[list[str]] = H3_ALPN

    def __init__(self, spec: UpstreamSpec, config: Config) -> None:
        super().__init__(spec, config)
        self.requests = DoHRequests(spec)

    def _new_connection(self, quic: QuicConnection) -> DoH3Connection:
        return DoH3Connection(quic, self.links(), self.requests)


_: type[Transport] = DoH3Transport
