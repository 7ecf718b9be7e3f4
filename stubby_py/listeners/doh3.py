"""DNS over HTTPS over HTTP/3 for clients (RFC 8484 on RFC 9114), on aioquic's H3Connection over
its QuicConnection (server side).

ALPN `h3`, UDP (it may share the https listener's port number: UDP beside TCP). What a request
means is doh_http.py, as for the HTTP/2 listener: one path, GET `?dns=` and POST, the same status
codes and Cache-Control; replies padded (RFC 8467) for padded queries only.

The UDP endpoint is DoQ's (doq.py): each datagram's source checked against the access list before
any QUIC processing (a denied client gets nothing, not even a Version Negotiation), the total and
per-client connection caps, the certificate files' current pair for new connections, no session
tickets (so no 0-RTT: 0-RTT requests can be replayed, RFC 9114 §10.9 and RFC 8470). Limits: at
most MAX_STREAMS requests open per connection (the stream credit) and MAX_PIPELINED of them at
the resolver; 3 unidirectional streams (the client's control and QPACK streams, RFC 9114 §6.2);
MAX_BUFFERED octets of unfinished request bodies per connection (over it: H3_EXCESSIVE_LOAD);
a request must have come whole within REQUEST_TIMEOUT of its first octet, or the connection is
closed with H3_REQUEST_INCOMPLETE (no slowloris); the idle timeout is the TCP one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.h3.connection import ErrorCode, H3Connection
from aioquic.h3.events import DataReceived, H3Event, HeadersReceived
from aioquic.h3.exceptions import H3Error
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import (
    ConnectionTerminated,
    HandshakeCompleted,
    QuicEvent,
    StopSendingReceived,
    StreamDataReceived,
    StreamReset,
)

from stubby_py.core import wire
from stubby_py.listeners.doh_http import (
    MAX_HEADER_LIST,
    SHUTTING_DOWN,
    DoHRequest,
    HttpError,
    answer_headers,
)
from stubby_py.listeners.doq import MAX_STREAMS, DoQServer, DoQStats
from stubby_py.listeners.padding import asks_padding, pad_reply
from stubby_py.listeners.plain import MAX_PIPELINED, TCPConnections
from stubby_py.listeners.tls_files import ServerCertificate

log = logging.getLogger(__name__)

ALPN = "h3"
#: flow-control credit per request stream: a header block and a 65535-octet body, framed
MAX_STREAM_DATA = MAX_HEADER_LIST + wire.MAX_MESSAGE_LEN + 64
#: octets of unfinished request bodies one connection may hold
MAX_BUFFERED = 4 * wire.MAX_MESSAGE_LEN
#: from a request stream's first octet to its last, seconds
REQUEST_TIMEOUT = 10.0
#: how often the server looks for requests that do not arrive whole, seconds
TICK = 1.0


class DoH3Stats(DoQStats):
    """Counters of one DoH-over-HTTP/3 listener (stats: the `doh3` section); protocol_errors
    counts connections closed for an HTTP/3 or QPACK error or too many unfinished octets."""

    def __init__(self) -> None:
        super().__init__()
        #: requests answered with an error status (4xx, 503)
        self.http_errors = 0
        #: connections closed for a request that did not come whole in time
        self.request_timeouts = 0


class DoH3Connection(QuicConnectionProtocol):
    def __init__(
        self, quic: QuicConnection, *, server: DoH3Server, client: str, **kwargs: Any
    ) -> None:
        super().__init__(quic, **kwargs)
        self._server = server
        self._client: str | None = client
        self._peer = ""
        self._h3 = H3Connection(quic)
        #: requests whose response has not gone yet
        self._requests: dict[int, DoHRequest] = {}
        #: request streams not yet whole → when their first octet came
        self._arriving: dict[int, float] = {}
        #: request streams answered (an error status) or refused before the client's side
        #: ended: what more comes on them is not a new request
        self._spent: set[int] = set()
        self._in_flight = 0
        self._finished = False

    # -- events ------------------------------------------------------------------------------------
    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, ConnectionTerminated):
            self._terminated()
            return
        if isinstance(event, HandshakeCompleted):
            self._server.stats.connections += 1
        if self._finished:
            return
        self._track_stream(event)
        for http_event in self._h3.handle_event(event):
            self._http_event(http_event)
        if isinstance(event, StreamDataReceived) and event.end_stream:
            self._spent.discard(event.stream_id)
        if self._h3._is_done and not self._finished:  # H3Connection closed it: a protocol error
            self._server.stats.protocol_errors += 1
            log.debug("DoH3 client %s: HTTP/3 protocol error", self._peer)
            self._drop_all()

    def _track_stream(self, event: QuicEvent) -> None:
        """When each request stream began (REQUEST_TIMEOUT), and cancelled ones."""
        if isinstance(event, StreamDataReceived):
            stream_id = event.stream_id
            new = stream_id not in self._requests and stream_id not in self._spent
            if new and stream_id % 4 == 0:
                self._arriving.setdefault(stream_id, self._loop.time())
        elif isinstance(event, StreamReset):
            self._forget(event.stream_id)
            self._spent.discard(event.stream_id)
        elif isinstance(event, StopSendingReceived) and self._forget(event.stream_id):
            # the client cancelled the request before its response: none will come
            with contextlib.suppress(ValueError, AssertionError):
                self._quic.reset_stream(event.stream_id, ErrorCode.H3_REQUEST_CANCELLED)

    def _http_event(self, event: H3Event) -> None:
        if not isinstance(event, (HeadersReceived, DataReceived)):
            return
        stream_id = event.stream_id
        if stream_id in self._spent:
            return  # the rest of a request answered already (an error status)
        if event.stream_ended:
            self._arriving.pop(stream_id, None)  # whole: no timeout, nothing more to stop
        request = self._requests.get(stream_id)
        if isinstance(event, HeadersReceived):
            if request is None:  # else trailers: nothing in them is needed
                self._headers(stream_id, event.headers)
        elif event.data and request is not None and not request.done:
            self._data(stream_id, request, event.data)
        if event.stream_ended:
            self._complete(stream_id)

    def _headers(self, stream_id: int, headers: list[tuple[bytes, bytes]]) -> None:
        server = self._server
        request = self._requests[stream_id] = DoHRequest(server.path, self._loop.time())
        if not server.shared.reading:
            self._error(stream_id, SHUTTING_DOWN)
            return
        error = request.headers(headers)
        if error is not None:
            self._error(stream_id, error)

    def _data(self, stream_id: int, request: DoHRequest, chunk: bytes) -> None:
        error = request.data(chunk)
        if error is not None:
            self._error(stream_id, error)
            return
        unfinished = sum(len(r.body) for r in self._requests.values() if not r.done)
        if unfinished > MAX_BUFFERED:
            self._server.stats.protocol_errors += 1
            self._close(ErrorCode.H3_EXCESSIVE_LOAD, "too many octets of unfinished requests")

    def _complete(self, stream_id: int) -> None:
        request = self._requests.get(stream_id)
        if request is None or request.done:
            return
        query = request.end()
        if isinstance(query, HttpError):
            self._error(stream_id, query)
            return
        server = self._server
        if self._in_flight >= MAX_PIPELINED:
            # streams reset by the client still have their queries in flight: a client that
            # opens and resets streams in a loop is held to the TCP pipelining cap
            self._refuse(stream_id)
            return
        server.stats.queries += 1
        block = server.padding_block()
        block = block if block and asks_padding(query) else 0
        self._in_flight += 1
        answered = False

        def respond(reply: bytes) -> None:
            nonlocal answered
            if answered:
                return
            answered = True
            self._in_flight -= 1
            if self._finished or self._requests.pop(stream_id, None) is None:
                return
            if block:
                reply = pad_reply(reply, block)
            self._send(stream_id, answer_headers(reply), reply)

        if not server.shared.resolver.handle(query, self._peer, respond, udp=False):
            self._in_flight -= 1
            server.stats.dropped_queries += 1
            self._refuse(stream_id)

    # -- answering ---------------------------------------------------------------------------------
    def _error(self, stream_id: int, error: HttpError) -> None:
        self._server.stats.http_errors += 1
        self._requests.pop(stream_id, None)
        headers, body = error.response()
        self._send(stream_id, headers, body)
        if self._arriving.pop(stream_id, None) is not None:
            # the response does not depend on the rest of the request (RFC 9114 §4.1.2)
            self._spent.add(stream_id)
            with contextlib.suppress(ValueError, AssertionError):
                self._quic.stop_stream(stream_id, ErrorCode.H3_NO_ERROR)
        self.transmit()

    def _send(self, stream_id: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        try:
            self._h3.send_headers(stream_id, headers)
            self._h3.send_data(stream_id, body, end_stream=True)
        except (H3Error, ValueError, AssertionError):
            return  # the stream is gone (reset by the client)
        self.transmit()

    def _refuse(self, stream_id: int) -> None:
        """Reset with H3_REQUEST_REJECTED: the request was not processed (RFC 9114 §4.1.1)."""
        self._requests.pop(stream_id, None)
        with contextlib.suppress(ValueError, AssertionError):
            self._quic.reset_stream(stream_id, ErrorCode.H3_REQUEST_REJECTED)
            self._quic.stop_stream(stream_id, ErrorCode.H3_REQUEST_REJECTED)
        self.transmit()

    # -- ending ------------------------------------------------------------------------------------
    def overdue(self, now: float) -> bool:
        """A request that has not come whole in REQUEST_TIMEOUT: the connection is closed."""
        if self._finished or not any(now - t > REQUEST_TIMEOUT for t in self._arriving.values()):
            return False
        self._server.stats.request_timeouts += 1
        self._close(ErrorCode.H3_REQUEST_INCOMPLETE, "a request did not arrive whole in time")
        return True

    def _close(self, error_code: int, why: str) -> None:
        log.debug("DoH3 client %s: %s", self._peer, why)
        self._drop_all()
        self._quic.close(error_code=error_code, reason_phrase=why)
        self.transmit()

    def _drop_all(self) -> None:
        self._finished = True
        self._requests.clear()
        self._arriving.clear()
        self._spent.clear()

    def _forget(self, stream_id: int) -> bool:
        """The stream is cancelled; whether its response had not gone yet."""
        self._arriving.pop(stream_id, None)
        return self._requests.pop(stream_id, None) is not None

    def _terminated(self) -> None:
        self._drop_all()
        if self._client is not None:
            self._server.release(self, self._client)
            self._client = None

    def datagram_received(self, data: bytes | str, addr: Any) -> None:
        self._peer = addr[0]
        super().datagram_received(data, addr)


class DoH3Server(DoQServer):
    """DoQ's UDP endpoint (access list, caps, certificate) with HTTP/3 connections."""

    alpn = ALPN
    max_stream_data = MAX_STREAM_DATA
    max_streams_uni = 3
    no_error = ErrorCode.H3_NO_ERROR

    def __init__(
        self,
        shared: TCPConnections,
        certificate: ServerCertificate,
        padding_block: Callable[[], int],
        path: str,
    ) -> None:
        super().__init__(shared, certificate, padding_block)
        self.path = path.encode()
        self.stats: DoH3Stats = DoH3Stats()
        self._ticking: asyncio.TimerHandle | None = None

    def _connection(
        self, quic: QuicConnection, client: str, **kwargs: Any
    ) -> QuicConnectionProtocol:
        if self._ticking is None:
            loop = asyncio.get_running_loop()
            self._ticking = loop.call_later(TICK, self._tick)
        return DoH3Connection(quic, server=self, client=client, **kwargs)

    def _tick(self) -> None:
        """Requests that do not come whole, on every connection; again while any is open."""
        self._ticking = None
        now = asyncio.get_running_loop().time()
        for connection in list(self.open):
            if isinstance(connection, DoH3Connection):
                connection.overdue(now)
        if self.open:
            self._ticking = asyncio.get_running_loop().call_later(TICK, self._tick)

    def close(self) -> None:
        if self._ticking is not None:
            self._ticking.cancel()
            self._ticking = None
        super().close()


__all__ = ["ALPN", "MAX_STREAMS", "DoH3Connection", "DoH3Server", "DoH3Stats"]
