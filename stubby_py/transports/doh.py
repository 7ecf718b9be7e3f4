"""DNS over HTTPS (RFC 8484) over HTTP/2 (RFC 9113): many queries as streams of one TLS connection.

The DoH exchange itself is sans-IO and shared with HTTP/3 (doh3.py): `DoHRequests` builds a POST
of application/dns-message, or a GET with ?dns= base64url without padding (RFC 8484 §4.1), for a
query with message ID 0; `DoHResponse` checks what comes back as it arrives: status 200, the media
type, at most 65535 octets, then ID 0 and our question (RFC 8484 §4.2). Anything else is an
UpstreamProtocolError, never an answer.

The HTTP/2 side drives the sans-IO h2 state machine over one TLS connection (ALPN "h2", RFC 9113
§3.2) verified as DoT is (RFC 8310: certificate, name or IP address, SPKI pins checked before the
first request is written). Requests beyond the server's SETTINGS_MAX_CONCURRENT_STREAMS (one
until its SETTINGS arrive) wait for a free stream, and bodies for flow-control window (RFC 9113
§5.1.2, §6.5.2, §5.2). A query that times out or is abandoned resets its stream with CANCEL
(§8.7), so the server's stream slots never leak. GOAWAY (§6.8) ends the connection: h2 reads no
frame after it, so every query in flight is retried once on a new one (DNS queries are
idempotent); REFUSED_STREAM is retried likewise. Requests are batched into one TLS write per
event-loop turn, like DoT.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
from collections import deque
from collections.abc import Callable, Iterable
from typing import cast

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings

from stubby_py.core import wire
from stubby_py.core.config import Config, UpstreamSpec
from stubby_py.core.errors import (
    ALPNMismatchError,
    UpstreamClosedError,
    UpstreamError,
    UpstreamProtocolError,
)
from stubby_py.transports.base import Transport
from stubby_py.transports.failures import connect_error
from stubby_py.transports.multiplex import MultiplexedTransport, checked_reply
from stubby_py.transports.proxy import open_stream
from stubby_py.transports.tls import (
    ClientContexts,
    ResumingContext,
    check_session,
    server_hostname,
)
from stubby_py.transports.toolkit import ConnectionLinks, Exchanges, IdleTimer, Waiter

log = logging.getLogger(__name__)

#: RFC 8484 §6
CONTENT_TYPE = b"application/dns-message"
H2_ALPN = "h2"
#: never more streams than this on one connection, whatever the server allows
MAX_STREAMS = 100
#: connection-level receive window: room for many replies in flight at once
RECEIVE_WINDOW = 1 << 20
#: stop opening streams on a connection this close to the end of the stream-ID space
LAST_STREAM_ID = (1 << 31) - 1 - 2 * MAX_STREAMS
#: at shutdown, how long closing connections get to finish TLS close_notify before an abort
CLOSE_GRACE = 0.25

Headers = list[tuple[bytes, bytes]]


# --- the DoH exchange, sans I/O (shared with HTTP/3) -----------------------------------------


class DoHRequests:
    """Builds the HTTP request for a query: header list (pseudo-headers first) and body."""

    def __init__(self, spec: UpstreamSpec) -> None:
        self.method = spec.method
        self._path = spec.path.encode()
        host = spec.auth_name or (f"[{spec.address}]" if ":" in spec.address else spec.address)
        authority = host if spec.port == 443 else f"{host}:{spec.port}"
        self._authority = authority.encode()

    def build(self, query: bytes) -> tuple[Headers, bytes]:
        if self.method == "get":
            # RFC 8484 §4.1: base64url without padding; ID 0 keeps the URL cache-friendly
            encoded = base64.urlsafe_b64encode(query).rstrip(b"=")
            return self._start(b"GET", self._path + b"?dns=" + encoded), b""
        headers = self._start(b"POST", self._path)
        headers.append((b"content-type", CONTENT_TYPE))
        headers.append((b"content-length", str(len(query)).encode()))
        return headers, query

    def _start(self, method: bytes, path: bytes) -> Headers:
        return [
            (b":method", method),
            (b":scheme", b"https"),
            (b":authority", self._authority),
            (b":path", path),
            (b"accept", CONTENT_TYPE),
        ]


class DoHResponse:
    """One response, checked as it arrives; raises UpstreamProtocolError at the first fault."""

    __slots__ = ("_body", "_label", "status")

    def __init__(self, label: str) -> None:
        self._label = label
        #: the final status, once its headers are in (0 before)
        self.status = 0
        self._body = bytearray()

    def headers_received(self, headers: Iterable[tuple[bytes, bytes]]) -> None:
        if self.status:
            return  # trailers: nothing in them matters to us
        fields = dict(headers)
        status = self._status(fields.get(b":status", b""))
        if 100 <= status < 200:
            return  # an interim response; the final one follows
        if status != 200:
            raise UpstreamProtocolError(f"{self._label}: HTTP status {status}")
        media_type = fields.get(b"content-type", b"").partition(b";")[0].strip().lower()
        if media_type != CONTENT_TYPE:
            shown = media_type.decode("latin-1") or "none"
            raise UpstreamProtocolError(f"{self._label}: content type {shown!r}, not a DNS message")
        length = fields.get(b"content-length")
        if length is not None and not (length.isdigit() and int(length) <= wire.MAX_MESSAGE_LEN):
            raise UpstreamProtocolError(
                f"{self._label}: bad or oversized content-length {length!r}"
            )
        self.status = status

    def data_received(self, data: bytes) -> None:
        if not self.status:
            raise UpstreamProtocolError(f"{self._label}: body before the response headers")
        self._body += data
        if len(self._body) > wire.MAX_MESSAGE_LEN:
            raise UpstreamProtocolError(f"{self._label}: response body larger than a DNS message")

    def reply(self, question: bytes) -> bytes:
        """At the end of the stream: the DNS reply, checked against our question."""
        if not self.status:
            raise UpstreamProtocolError(f"{self._label}: stream ended without a response")
        return checked_reply(bytes(self._body), question, self._label)

    def _status(self, value: bytes) -> int:
        if len(value) != 3 or not value.isdigit():
            raise UpstreamProtocolError(f"{self._label}: bad HTTP status {value!r}")
        return int(value)


# --- HTTP/2 ---------------------------------------------------------------------------------


class _H2Connection(h2.connection.H2Connection):
    #: how many closed streams h2 remembers, so that a frame still in flight for a stream we
    #: reset is answered with RST_STREAM, not taken for a protocol error that ends the
    #: connection. h2's 65,536 cost about 5 MiB per long-lived connection (#21); this many
    #: cover far more than such a frame can lag (4,096 streams: 0.4 s at 10,000 q/s).
    MAX_CLOSED_STREAMS = 4096


def _h2_config() -> h2.config.H2Configuration:
    return h2.config.H2Configuration(client_side=True, header_encoding=None)


def _local_settings() -> h2.settings.Settings:
    codes = h2.settings.SettingCodes
    return h2.settings.Settings(
        client=True,
        initial_values={
            codes.ENABLE_PUSH: 0,
            codes.MAX_CONCURRENT_STREAMS: MAX_STREAMS,
            codes.MAX_HEADER_LIST_SIZE: 65536,
        },
    )


class _H2Waiter(Waiter):
    __slots__ = ("body", "body_sent", "headers", "response", "stream_id")

    def __init__(
        self,
        future: asyncio.Future[bytes],
        query: bytes,
        sent_at_bytes: int,
        request: tuple[Headers, bytes],
        label: str,
    ) -> None:
        super().__init__(future, query, sent_at_bytes)
        self.headers, self.body = request
        self.body_sent = 0
        self.response = DoHResponse(label)
        self.stream_id: int | None = None


class DoHConnection(asyncio.Protocol):
    """One HTTP/2 connection: requests in, a request → waiter map, streams mapped to requests."""

    def __init__(
        self,
        links: ConnectionLinks,
        build_request: Callable[[bytes], tuple[Headers, bytes]],
        on_lost: Callable[[DoHConnection], None],
    ) -> None:
        """build_request: the HTTP request for a query; on_lost: the transport (TCP and TLS)
        is gone, after the connection was closed for queries (links.on_closed)."""
        self._links = links
        self._label = links.label
        self._build_request = build_request
        self._on_lost = on_lost
        self._loop = asyncio.get_running_loop()
        self._h2 = _H2Connection(config=_h2_config())
        self._transport: asyncio.Transport | None = None
        self._exchanges: Exchanges[_H2Waiter] = Exchanges(links.label, self._expired)
        #: stream ID → request key, for the streams open now
        self._keys: dict[int, int] = {}
        #: request keys waiting for a stream (concurrency limit)
        self._pending: deque[int] = deque()
        #: open streams whose request body is not all out yet (flow control)
        self._unsent: set[int] = set()
        self._next_key = 0
        #: the server's SETTINGS are in (until then, one stream: RFC 9113 §6.5.2 leaves its
        #: limit unknown, and overshooting it gets streams refused)
        self._has_settings = False
        self._closed = False
        #: stream IDs (nearly) used up: no new requests here (RFC 9113 §5.1.1)
        self._retired = False
        self._flush_handle: asyncio.Handle | None = None
        self._idle = IdleTimer(self._loop, max(0.05, links.idle_timeout / 2), self._check_idle)
        self.received_bytes = 0
        #: when the last bytes came in
        self.last_received = self._loop.time()
        #: checks, while queries wait, that the connection has not gone silent (as in dot.py)
        self._silence_timer: asyncio.TimerHandle | None = None
        #: received_bytes when a PING went out to a silent connection (None: none out)
        self._ping_at_bytes: int | None = None
        #: done once the transport is gone (TLS shutdown finished or aborted)
        self.lost: asyncio.Future[None] = self._loop.create_future()

    @property
    def is_closed(self) -> bool:
        return self._closed or self._retired

    @property
    def answered(self) -> int:
        return self._exchanges.answered

    # -- asyncio.Protocol ----------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # the preface and our SETTINGS carry nothing of any query: they go out at once, before
        # the certificate checks, so that whatever the server sends first finds h2 ready
        self._transport = cast(asyncio.Transport, transport)
        self._h2.local_settings = _local_settings()
        self._h2.initiate_connection()
        self._h2.increment_flow_control_window(RECEIVE_WINDOW)
        self._flush()

    def data_received(self, data: bytes) -> None:
        self.received_bytes += len(data)
        self._idle.last_activity = self.last_received = self._loop.time()
        try:
            events = self._h2.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            self._abort(UpstreamProtocolError(f"{self._label}: HTTP/2 protocol error: {exc}"))
            return
        for event in events:
            self._handle_event(event)
        if not self._closed:
            self._open_streams()

    def connection_lost(self, exc: Exception | None) -> None:
        self._abort(UpstreamClosedError(f"{self._label}: connection closed"))
        if not self.lost.done():
            self.lost.set_result(None)
        self._on_lost(self)

    # -- life cycle ------------------------------------------------------------------------
    def start(self) -> None:
        """Open for queries (after the certificate checks)."""
        self._idle.start()

    def abort(self) -> None:
        """Drop the TCP connection now, even in the middle of a TLS shutdown."""
        if self._transport is not None and not self.lost.done():
            self._transport.abort()

    def close(self) -> None:
        """Say GOAWAY, close, and fail whatever is still in flight."""
        if not self._closed:
            with contextlib.suppress(h2.exceptions.ProtocolError):  # closed on the HTTP/2 level
                self._h2.close_connection()
            self._flush()
        self._abort(UpstreamClosedError(f"{self._label}: connection closed"))

    def _abort(self, error: UpstreamError) -> None:
        if not self._closed:
            self._closed = True
            self._idle.cancel()
            for handle in (self._flush_handle, self._silence_timer):
                if handle is not None:
                    handle.cancel()
            if self._transport is not None:
                self._transport.close()
        self._pending.clear()
        self._unsent.clear()
        self._keys.clear()
        self._exchanges.fail_all(error)
        self._links.on_closed(self)

    def retire(self) -> None:
        """After a network change (MultiplexedTransport.reset): as when stream IDs run out."""
        if not self.is_closed:
            self._retire()

    def _retire(self) -> None:
        """No new streams here (stream IDs used up): waiting requests go elsewhere at once,
        and the connection closes when its last stream ends.

        It is gone for its owner (connection_gone, from _abort) only then: until it is, the
        owner keeps it among its retiring connections and so closes it in aclose(). New
        queries never come here meanwhile: is_closed is already true."""
        self._retired = True
        waiting, self._pending = self._pending, deque()
        for key in waiting:
            self._exchanges.reject(key, UpstreamClosedError(f"{self._label}: connection retired"))
        self._close_if_drained()

    def _close_if_drained(self) -> None:
        if self._retired and not self._keys:
            self.close()

    # -- queries ---------------------------------------------------------------------------
    def send(self, query: bytes, deadline: float) -> tuple[int, asyncio.Future[bytes]]:
        if self.is_closed:
            raise UpstreamClosedError(f"{self._label}: connection closed")
        key = self._next_key
        self._next_key += 1
        future: asyncio.Future[bytes] = self._loop.create_future()
        request = self._build_request(query)
        waiter = _H2Waiter(future, query, self.received_bytes, request, self._label)
        self._exchanges.add(key, waiter, deadline)
        self._pending.append(key)
        self._idle.touch()
        self._open_streams()
        if self._silence_timer is None:
            limit = self._links.silence_limit()
            if limit is not None:
                self._silence_timer = self._loop.call_later(limit, self._check_silence)
        return key, future

    def _check_silence(self) -> None:
        """dot.py's rule, with an HTTP/2 PING (RFC 9113 §6.7) for the probe: a connection that
        has answered, silent for a few times its quick reply time while a query waits, is
        pinged; if nothing at all comes back in twice that time, it is dropped as dead and what
        it carried goes again on a fresh one."""
        self._silence_timer = None
        limit = self._links.silence_limit()
        oldest = self._exchanges.oldest()
        if self._closed or oldest is None or limit is None:
            return
        now = self._loop.time()
        quiet_since = max(oldest.sent_at, self.last_received)
        if now - quiet_since < limit or not self.answered:
            again = quiet_since + limit if self.answered else now + limit
            self._silence_timer = self._loop.call_at(again, self._check_silence)
            return
        if self._ping_at_bytes is not None:
            return  # a PING is out already: its own check decides
        self._ping_at_bytes = self.received_bytes
        with contextlib.suppress(h2.exceptions.ProtocolError):
            self._h2.ping(b"stubbypy")
        self._flush_soon()
        self._loop.call_later(2 * limit, self._check_ping)

    def _check_ping(self) -> None:
        at_bytes, self._ping_at_bytes = self._ping_at_bytes, None
        if self._closed or at_bytes is None:
            return
        if self.received_bytes == at_bytes:
            log.info("%s: no reply to a PING of a silent connection; reconnecting", self._label)
            self._abort(UpstreamClosedError(f"{self._label}: connection went silent"))
            self.abort()
        elif len(self._exchanges) and self._silence_timer is None:
            limit = self._links.silence_limit()
            if limit is not None:
                self._silence_timer = self._loop.call_later(limit, self._check_silence)

    def forget(self, key: int, future: asyncio.Future[bytes]) -> None:
        # stream IDs are never reused on a connection: the key alone names this query
        waiter = self._exchanges.discard(key)
        if waiter is not None:
            self._cancel_stream(waiter)

    def _open_streams(self) -> None:
        """Start waiting requests while the concurrency limit allows; send what bodies fit."""
        limit = min(MAX_STREAMS, self._h2.remote_settings.max_concurrent_streams)
        if not self._has_settings:
            limit = 1
        while self._pending and len(self._keys) < limit and not self._retired:
            key = self._pending.popleft()
            waiter = self._exchanges.get(key)
            if waiter is not None:  # else it expired or was forgotten while it waited
                self._start_stream(key, waiter)
        if self._unsent:
            self._send_bodies()
        self._flush_soon()

    def _start_stream(self, key: int, waiter: _H2Waiter) -> None:
        stream_id = self._h2.get_next_available_stream_id()
        self._h2.send_headers(stream_id, waiter.headers, end_stream=not waiter.body)
        waiter.stream_id = stream_id
        self._keys[stream_id] = key
        if waiter.body:
            self._unsent.add(stream_id)
        if stream_id >= LAST_STREAM_ID:
            self._retire()

    def _send_bodies(self) -> None:
        """Request bodies, as far as the flow-control windows allow (RFC 9113 §5.2)."""
        for stream_id in list(self._unsent):
            key = self._keys.get(stream_id)
            waiter = self._exchanges.get(key) if key is not None else None
            if waiter is None or self._send_body(stream_id, waiter):
                self._unsent.discard(stream_id)

    def _send_body(self, stream_id: int, waiter: _H2Waiter) -> bool:
        """Send more of a body; True once all of it is out."""
        body = waiter.body
        while waiter.body_sent < len(body):
            window = self._h2.local_flow_control_window(stream_id)
            room = min(window, self._h2.max_outbound_frame_size)
            if room <= 0:
                return False
            end = min(len(body), waiter.body_sent + room)
            self._h2.send_data(stream_id, body[waiter.body_sent : end], end_stream=end == len(body))
            waiter.body_sent = end
        return True

    def _cancel_stream(self, waiter: _H2Waiter) -> None:
        """RFC 9113 §8.7: tell the server we no longer want this response."""
        stream_id = waiter.stream_id
        if stream_id is None or self._keys.pop(stream_id, None) is None or self._closed:
            return
        try:
            self._h2.reset_stream(stream_id, h2.errors.ErrorCodes.CANCEL)
        except h2.exceptions.ProtocolError:
            return  # the stream closed meanwhile
        self._flush_soon()
        self._close_if_drained()

    def _expired(self, key: int, waiter: _H2Waiter) -> None:
        self._cancel_stream(waiter)
        if self.received_bytes == waiter.sent_at_bytes and not self._closed:
            # nothing at all came back since this query went out: the connection is stalled
            log.info("%s: nothing came back for a whole attempt; reconnecting", self._label)
            self.close()

    # -- HTTP/2 events ---------------------------------------------------------------------
    def _handle_event(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.DataReceived):
            self._h2.acknowledge_received_data(event.flow_controlled_length or 0, event.stream_id)
            self._feed(event.stream_id, None, event.data or b"")
        elif isinstance(event, h2.events.ResponseReceived):
            self._feed(event.stream_id, event.headers or [], b"")
        elif isinstance(event, h2.events.StreamEnded):
            self._handle_stream_ended(event.stream_id)
        elif isinstance(event, h2.events.StreamReset):
            self._handle_stream_reset(event)
        elif isinstance(event, h2.events.ConnectionTerminated):
            self._handle_goaway(event)
        elif isinstance(event, h2.events.RemoteSettingsChanged):
            self._has_settings = True

    def _feed(self, stream_id: int | None, headers: Headers | None, data: bytes) -> None:
        key = self._keys.get(stream_id or 0)
        waiter = self._exchanges.get(key) if key is not None else None
        if key is None or waiter is None:
            return
        try:
            if headers is not None:
                waiter.response.headers_received(headers)
            else:
                waiter.response.data_received(data)
        except UpstreamProtocolError as exc:
            self._exchanges.reject(key, exc)
            self._cancel_stream(waiter)

    def _handle_stream_ended(self, stream_id: int | None) -> None:
        key = self._keys.pop(stream_id or 0, None)
        waiter = self._exchanges.get(key) if key is not None else None
        if key is None or waiter is None:
            return
        try:
            reply = waiter.response.reply(waiter.question)
        except UpstreamProtocolError as exc:
            self._links.on_mismatched(1)
            self._exchanges.reject(key, exc)
        else:
            self._exchanges.resolve(key, reply)
        self._close_if_drained()

    def _handle_stream_reset(self, event: h2.events.StreamReset) -> None:
        key = self._keys.pop(event.stream_id or 0, None)
        if key is None:
            return
        code = event.error_code
        name = code.name if isinstance(code, h2.errors.ErrorCodes) else str(code)
        if code == h2.errors.ErrorCodes.REFUSED_STREAM:
            # RFC 9113 §8.7: not processed, safe to retry
            self._exchanges.reject(key, UpstreamClosedError(f"{self._label}: stream refused"))
        else:
            error = UpstreamProtocolError(f"{self._label}: stream reset by the server ({name})")
            self._exchanges.reject(key, error)
        self._close_if_drained()

    def _handle_goaway(self, event: h2.events.ConnectionTerminated) -> None:
        # h2 accepts no frame after GOAWAY, so even the streams the server will still answer
        # are lost: every query here is retried once on a new connection
        log.info("%s: GOAWAY (%s); reconnecting", self._label, event.error_code)
        self._abort(UpstreamClosedError(f"{self._label}: server sent GOAWAY"))

    # -- writing and idling ------------------------------------------------------------------
    def _flush_soon(self) -> None:
        if self._flush_handle is None and not self._closed:
            self._flush_handle = self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_handle = None
        data = self._h2.data_to_send()
        if data and self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)

    def _check_idle(self, now: float) -> bool:
        if self._closed:
            return False
        if not len(self._exchanges) and self._idle.idle_for(now) >= self._links.idle_timeout:
            log.debug("%s: closing idle connection", self._label)
            self.close()
            return False
        return True


class DoHTransport(MultiplexedTransport[DoHConnection]):
    """One DoH upstream over HTTP/2: one connection, many concurrent streams, reconnects."""

    def __init__(self, spec: UpstreamSpec, config: Config) -> None:
        super().__init__(spec, config)
        self.requests = DoHRequests(spec)
        self._contexts = ClientContexts(spec, config, alpn=[H2_ALPN])
        #: every connection whose transport is not gone yet, the current one and closing ones
        self._open_connections: set[DoHConnection] = set()

    def connection_lost(self, connection: DoHConnection) -> None:
        self._open_connections.discard(connection)

    async def aclose(self) -> None:
        """Close every connection and wait (bounded) until their transports are gone."""
        await super().aclose()
        connections = list(self._open_connections)
        for connection in connections:
            connection.close()
        if connections:
            await asyncio.wait([c.lost for c in connections], timeout=CLOSE_GRACE)
        for connection in connections:
            connection.abort()

    async def _open(self, address: str) -> DoHConnection:
        context = self._contexts.get()
        try:
            transport, connection = await open_stream(
                self.spec, self._config, address, self.spec.port,
                lambda: DoHConnection(self.links(), self.requests.build, self.connection_lost),
                ssl_context=context,
                server_hostname=server_hostname(self.spec),
                timeout=self.connect_timeout,
            )  # fmt: skip
        except OSError as exc:  # ssl.SSLError included
            raise connect_error(self.name, exc) from None
        self._open_connections.add(connection)
        try:
            self._check_session(transport, context)
        except UpstreamError:
            transport.close()
            raise
        connection.start()
        return connection

    def _check_session(self, transport: asyncio.BaseTransport, context: ResumingContext) -> None:
        ssl_object = transport.get_extra_info("ssl_object")
        alpn = ssl_object.selected_alpn_protocol() if ssl_object is not None else None
        if alpn != H2_ALPN:
            raise ALPNMismatchError(f"{self.name}: server does not speak HTTP/2 (ALPN {alpn!r})")
        self._session_details = check_session(self.spec, ssl_object, context)


_: type[Transport] = DoHTransport
