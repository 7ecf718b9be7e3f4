"""DNS over HTTPS for clients, HTTP/2 only (RFC 8484), on the h2 library (sans-IO).

What a request means (path, GET and POST, status codes, Cache-Control) is doh_http.py, shared
with the HTTP/3 listener (doh3.py); this module is the HTTP/2 side. An HTTP/3 listener on this
address and path is announced in each response's `Alt-Svc`.

Limits: at most MAX_STREAMS requests at once per connection and MAX_HEADER_LIST octets of headers
(announced in SETTINGS, h2 enforces them); a request must have arrived whole within
REQUEST_TIMEOUT of its headers, or the connection is closed (no slowloris); a connection with
no request open is closed after the TCP idle timeout, and one whose replies are not read for as
long is cut. Connections count against the TCP caps (listener.py), checked with the access list
before the TLS handshake (server.py). HTTP/1 on this port gets `505 HTTP Version Not Supported`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import cast

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings

from stubby_py.listeners.doh_http import (
    MAX_HEADER_LIST,
    SHUTTING_DOWN,
    DoHRequest,
    HttpError,
    answer_headers,
)
from stubby_py.listeners.handler import Respond
from stubby_py.listeners.padding import asks_padding, pad_reply
from stubby_py.listeners.plain import MAX_PIPELINED, TCPConnections
from stubby_py.transports.toolkit import IdleTimer

log = logging.getLogger(__name__)

ALPN = "h2"
MAX_STREAMS = 100
#: from a request's headers to its last octet, seconds
REQUEST_TIMEOUT = 10.0
#: how often a connection looks at its timeouts, seconds
TICK = 1.0
_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_HTTP1_REFUSAL = (
    b"HTTP/1.1 505 HTTP Version Not Supported\r\nContent-Type: text/plain\r\n"
    b"Content-Length: 29\r\nConnection: close\r\n\r\nDNS over HTTPS needs HTTP/2.\n"
)


def _h2_config() -> h2.config.H2Configuration:
    # the headers sent are this module's own, lower-case and valid: checking and normalising
    # them again on every response is a good part of h2's cost per request; what clients send
    # is still checked
    return h2.config.H2Configuration(
        client_side=False,
        header_encoding=None,
        validate_outbound_headers=False,
        normalize_outbound_headers=False,
    )


class DoHListener(asyncio.Protocol):
    def __init__(
        self,
        shared: TCPConnections,
        path: str,
        padding_block: int,
        alt_svc: Callable[[], bytes | None] = lambda: None,
    ) -> None:
        self._shared = shared
        self._path = path.encode()
        self._padding_block = padding_block
        #: the `Alt-Svc` value for responses (an HTTP/3 listener), looked up per response
        self._alt_svc = alt_svc
        self._h2 = h2.connection.H2Connection(config=_h2_config())
        self._transport: asyncio.Transport | None = None
        self._peer = ""
        self._client: str | None = None
        self._closed = False
        self._stopping = False
        self._preface_seen = bytearray()
        #: inside data_received: what h2 has to send goes out once, at its end
        self._receiving = False
        self._requests: dict[int, DoHRequest] = {}
        #: response octets waiting for HTTP/2 flow control, per stream
        self._pending: dict[int, bytes] = {}
        self._in_flight = 0
        self._loop = asyncio.get_running_loop()
        #: also checks requests that do not arrive whole and replies that are not read
        self._idle = IdleTimer(self._loop, TICK, self._tick)
        self._write_progress = self._idle.last_activity
        self._unsent_seen = 0

    # -- connection --------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        self._peer, self._client = self._shared.accept(self, self._transport)
        if self._client is None:
            self._closed = True
            return
        codes = h2.settings.SettingCodes
        self._h2.local_settings = h2.settings.Settings(
            client=False,
            initial_values={
                codes.MAX_CONCURRENT_STREAMS: MAX_STREAMS,
                codes.MAX_HEADER_LIST_SIZE: MAX_HEADER_LIST,
            },
        )
        # h2 gives its HPACK decoder a new limit only on an ACK that changes the setting, and
        # initial values are no change: set it here (a bigger header list is a protocol error)
        self._h2.decoder.max_header_list_size = MAX_HEADER_LIST
        self._idle.start()

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._requests.clear()
        self._pending.clear()
        self._shared.open.discard(self)
        if self._client is not None:
            self._shared.release(self._client)
            self._client = None
        self._idle.cancel()

    def unsent(self) -> int:
        if self._transport is None or self._closed:
            return 0
        return self._transport.get_write_buffer_size()

    def pause_writing(self) -> None:
        # the client is not reading its replies: stop reading its requests meanwhile
        if self._transport is not None and not self._closed:
            self._transport.pause_reading()

    def resume_writing(self) -> None:
        if self._transport is not None and not self._closed:
            self._transport.resume_reading()

    def stop_reading(self) -> None:
        """Shutdown: GOAWAY, answer the requests taken, then close."""
        self._stopping = True
        if self._closed:
            return
        with contextlib.suppress(h2.exceptions.ProtocolError):
            self._h2.close_connection()
        self._flush()
        self._close_if_done()

    def close(self) -> None:
        if self._transport is not None and not self._closed:
            self._closed = True
            self._transport.close()

    def _close_if_done(self) -> None:
        if self._stopping and not self._in_flight and not self._pending:
            self._flush()  # answers held for the end of data_received go out first
            self.close()

    def _flush(self) -> None:
        data = self._h2.data_to_send()
        if data and self._transport is not None and not self._closed:
            self._transport.write(data)

    def _fail(self, why: str) -> None:
        """A protocol error: GOAWAY (h2 has queued it) and close."""
        log.debug("DoH client %s: %s", self._peer, why)
        self._flush()
        self.close()

    # -- receiving ---------------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        if self._closed:
            return
        if len(self._preface_seen) < len(_PREFACE):
            self._preface_seen += data[: len(_PREFACE) - len(self._preface_seen)]
            if not _PREFACE.startswith(self._preface_seen):
                assert self._transport is not None
                if self._preface_seen[:1].isalpha():  # an HTTP/1 request line
                    self._transport.write(_HTTP1_REFUSAL)
                self._fail("not HTTP/2")
                return
            if len(self._preface_seen) == len(_PREFACE):
                # our SETTINGS once the client has shown it speaks HTTP/2
                self._h2.initiate_connection()
        try:
            events = self._h2.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            self._fail(f"HTTP/2 protocol error: {exc}")
            return
        # answers given meanwhile (cache hits) are written together: one TLS record for many
        self._receiving = True
        try:
            for event in events:
                self._event(event)
        finally:
            self._receiving = False
        self._flush()

    def _event(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.RequestReceived):
            self._request(event.stream_id, event.headers or [])
        elif isinstance(event, h2.events.DataReceived):
            self._h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            self._body(event.stream_id, event.data or b"")
        elif isinstance(event, h2.events.StreamEnded):
            self._complete(event.stream_id)
        elif isinstance(event, h2.events.StreamReset):
            self._forget(event.stream_id)
        elif isinstance(event, (h2.events.WindowUpdated, h2.events.RemoteSettingsChanged)):
            self._send_pending()
        elif isinstance(event, h2.events.ConnectionTerminated):
            self._stopping = True
            self._close_if_done()

    def _request(self, stream_id: int, headers: list[tuple[bytes, bytes]]) -> None:
        request = self._requests[stream_id] = DoHRequest(self._path, self._loop.time())
        if self._stopping:
            self._error(stream_id, SHUTTING_DOWN)
            return
        error = request.headers(headers)
        if error is not None:
            self._error(stream_id, error)

    def _body(self, stream_id: int, data: bytes) -> None:
        request = self._requests.get(stream_id)
        if request is None or request.done:
            # answered already (an error status): the rest of the body is not wanted
            with contextlib.suppress(h2.exceptions.ProtocolError):
                self._h2.reset_stream(stream_id, h2.errors.ErrorCodes.NO_ERROR)
            return
        error = request.data(data)
        if error is not None:
            self._error(stream_id, error)

    def _complete(self, stream_id: int) -> None:
        request = self._requests.get(stream_id)
        if request is None or request.done:
            return
        query = request.end()
        if isinstance(query, HttpError):
            self._error(stream_id, query)
            return
        self._idle.touch()
        respond = self._responder(stream_id)
        if self._padding_block and asks_padding(query):
            block, plain = self._padding_block, respond

            def respond(reply: bytes) -> None:
                plain(pad_reply(reply, block))

        if self._in_flight >= MAX_PIPELINED:
            # streams reset by the client still have their queries in flight: a client that
            # opens and resets streams in a loop is held to the TCP pipelining cap too
            self._requests.pop(stream_id, None)
            with contextlib.suppress(h2.exceptions.ProtocolError):
                self._h2.reset_stream(stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)
            self._flush()
            return
        self._in_flight += 1
        if not self._shared.resolver.handle(query, self._peer, respond, udp=False):
            self._in_flight -= 1  # dropped (rate limit, say): refuse the stream
            self._requests.pop(stream_id, None)
            with contextlib.suppress(h2.exceptions.ProtocolError):
                self._h2.reset_stream(stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)
            self._flush()

    def _forget(self, stream_id: int) -> None:
        self._requests.pop(stream_id, None)
        self._pending.pop(stream_id, None)

    # -- answering ---------------------------------------------------------------------------
    def _responder(self, stream_id: int) -> Respond:
        answered = False

        def respond(reply: bytes) -> None:
            nonlocal answered
            if answered:
                return
            answered = True
            self._in_flight -= 1
            self._idle.touch()
            if self._closed or self._requests.pop(stream_id, None) is None:
                self._close_if_done()
                return
            self._send(stream_id, answer_headers(reply, self._extra_headers()), reply)
            self._close_if_done()

        return respond

    def _extra_headers(self) -> tuple[tuple[bytes, bytes], ...]:
        alt_svc = self._alt_svc()
        return ((b"alt-svc", alt_svc),) if alt_svc else ()

    def _error(self, stream_id: int, error: HttpError) -> None:
        request = self._requests.pop(stream_id, None)
        if request is not None:
            request.done = True
        headers, body = error.response()
        self._send(stream_id, headers + list(self._extra_headers()), body)

    def _send(self, stream_id: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        try:
            self._h2.send_headers(stream_id, headers)
        except h2.exceptions.ProtocolError:
            return  # the stream is gone (reset by the client)
        self._send_body(stream_id, body)
        if not self._receiving:
            self._flush()

    def _send_pending(self) -> None:
        """Response bodies held back by HTTP/2 flow control, as far as it lets them go now."""
        for stream_id, body in list(self._pending.items()):
            self._send_body(stream_id, body)
        if not self._receiving:
            self._flush()

    def _send_body(self, stream_id: int, body: bytes) -> None:
        """As much of a response body as flow control lets go; the rest waits in _pending."""
        try:
            window = self._h2.local_flow_control_window(stream_id)
            room = min(window, self._h2.max_outbound_frame_size, len(body))
            while room > 0 or not body:
                chunk, body = body[:room], body[room:]
                self._h2.send_data(stream_id, chunk, end_stream=not body)
                if not body:
                    break
                window = self._h2.local_flow_control_window(stream_id)
                room = min(window, self._h2.max_outbound_frame_size, len(body))
        except (h2.exceptions.ProtocolError, KeyError):
            body = b""
        if body:
            self._pending[stream_id] = body
        else:
            self._pending.pop(stream_id, None)

    # -- timeouts ----------------------------------------------------------------------------
    def _tick(self, now: float) -> bool:
        transport = self._transport
        if self._closed or transport is None:
            return False
        if any(r.overdue(now, REQUEST_TIMEOUT) for r in self._requests.values()):
            self._fail("a request did not arrive whole in time")
            return False
        unsent = transport.get_write_buffer_size()
        if unsent == 0 or unsent < self._unsent_seen:
            self._write_progress = now
        self._unsent_seen = unsent
        idle_timeout = self._shared.idle_timeout
        if unsent and now - self._write_progress >= idle_timeout:
            self._shared.closed_unread += 1
            self._closed = True
            transport.abort()
            return False
        quiet = not self._requests and not self._in_flight and not self._pending
        if quiet and self._idle.idle_for(now) >= idle_timeout:
            self._shared.closed_idle += 1
            with contextlib.suppress(h2.exceptions.ProtocolError):
                self._h2.close_connection()
            self._flush()
            self.close()
            return False
        return True
