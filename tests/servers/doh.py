"""DNS over HTTPS on HTTP/2 (h2 directly): `H2DoHServer`, RFC 8484 POST and GET.

It answers through `answers.outcome`, records the HTTP methods and paths, counts connections
(each one a TLS handshake) and the streams the client reset, and can announce a stream limit
and a flow-control window.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Iterator
from typing import Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings

from tests.servers.answers import http_response, outcome, query_from_request
from tests.servers.misbehaviour import Misbehaviour
from tests.servers.thread import ServerThread


class _H2ServerConnection(asyncio.Protocol):
    def __init__(self, server: H2DoHServer) -> None:
        self._server = server
        self._state = server.state
        config = h2.config.H2Configuration(client_side=False, header_encoding=None)
        self._h2 = h2.connection.H2Connection(config=config)
        self._transport: asyncio.Transport | None = None
        self._requests: dict[int, tuple[dict[bytes, bytes], bytearray]] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        self._server.connections.add(transport)  # type: ignore[arg-type]
        self._state.connections += 1
        self._state.peers.append(transport.get_extra_info("peername")[0])
        self._state.handshakes += 1
        ssl_object = transport.get_extra_info("ssl_object")
        self._state.resumptions += bool(ssl_object is not None and ssl_object.session_reused)
        codes = h2.settings.SettingCodes
        settings: dict[h2.settings.SettingCodes, int] = {}
        if self._server.max_streams is not None:
            settings[codes.MAX_CONCURRENT_STREAMS] = self._server.max_streams
        self._h2.local_settings = h2.settings.Settings(client=False, initial_values=settings)
        self._h2.initiate_connection()
        if self._server.window is not None:
            # a change in a second SETTINGS frame applies once acknowledged (RFC 9113 §6.9.2);
            # as an initial value h2 would enforce it before the client has even seen it
            self._h2.update_settings({codes.INITIAL_WINDOW_SIZE: self._server.window})
        self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self._server.connections.discard(self._transport)  # type: ignore[arg-type]

    def data_received(self, data: bytes) -> None:
        try:
            events = self._h2.receive_data(data)
        except h2.exceptions.ProtocolError:
            self._flush()
            self._abort()
            return
        for event in events:
            self._handle(event)
        self._flush()

    def _handle(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.RequestReceived):
            self._requests[event.stream_id] = (dict(event.headers), bytearray())
        elif isinstance(event, h2.events.DataReceived):
            self._h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            if event.stream_id in self._requests:
                self._requests[event.stream_id][1].extend(event.data)
        elif isinstance(event, h2.events.StreamEnded):
            headers, body = self._requests.pop(event.stream_id)
            self._request(event.stream_id, headers, bytes(body))
        elif isinstance(event, h2.events.StreamReset):
            self._requests.pop(event.stream_id, None)
            self._state.client_resets.append(int(event.error_code))

    def _request(self, stream_id: int, headers: dict[bytes, bytes], body: bytes) -> None:
        self._state.methods.append(headers.get(b":method", b"").decode())
        self._state.paths.append(headers.get(b":path", b"").decode())
        result = outcome(self._state, query_from_request(headers, body))
        misbehaviour = result.misbehaviour
        if misbehaviour is Misbehaviour.STALL:
            return
        if misbehaviour is Misbehaviour.CLOSE:
            self._abort()
        elif misbehaviour is Misbehaviour.RESET:
            self._h2.reset_stream(stream_id, h2.errors.ErrorCodes.INTERNAL_ERROR)
        elif misbehaviour is Misbehaviour.GOAWAY:
            self._h2.close_connection(last_stream_id=stream_id - 2)
            self._flush()
            self._loop().call_later(0.05, self._abort)
        elif result.delay:
            self._loop().call_later(
                result.delay, self._respond, stream_id, misbehaviour, result.reply or b""
            )
        else:
            self._respond(stream_id, misbehaviour, result.reply or b"")

    def _respond(self, stream_id: int, misbehaviour: Misbehaviour, body: bytes) -> None:
        headers, body = http_response(misbehaviour, body)
        try:
            self._h2.send_headers(stream_id, headers)
            for start in range(0, len(body), 16384):
                self._h2.send_data(stream_id, body[start : start + 16384])
            self._h2.end_stream(stream_id)
        except (h2.exceptions.ProtocolError, h2.exceptions.FlowControlError):
            pass  # the client gave up on the stream (or the window is full: good enough here)
        self._flush()

    def _loop(self) -> asyncio.AbstractEventLoop:
        return asyncio.get_running_loop()

    def _flush(self) -> None:
        data = self._h2.data_to_send()
        if data and self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)

    def _abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()


class H2DoHServer(ServerThread):
    """DoH over HTTP/2 on 127.0.0.1, TLS from `context` (its ALPN is set to h2 here)."""

    def __init__(
        self, context: ssl.SSLContext, max_streams: int | None = None, window: int | None = None
    ) -> None:
        super().__init__()
        context.set_alpn_protocols(["h2"])
        self._context = context
        #: SETTINGS_MAX_CONCURRENT_STREAMS and SETTINGS_INITIAL_WINDOW_SIZE to announce
        self.max_streams = max_streams
        self.window = window
        self.connections: set[asyncio.Transport] = set()
        #: where to listen (a test may set another address, or a fixed port, before start)
        self.host = "127.0.0.1"

    async def _start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _H2ServerConnection(self), self.host, self.port, ssl=self._context
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def _stop(self) -> None:
        self._server.close()
        for transport in list(self.connections):
            transport.abort()
        await asyncio.sleep(0.05)

    def drop_connections(self) -> None:
        self.call(lambda: [t.abort() for t in list(self.connections)])


@contextlib.contextmanager
def h2_server(context: ssl.SSLContext, **kwargs: Any) -> Iterator[H2DoHServer]:
    server = H2DoHServer(context, **kwargs)
    server.start()
    try:
        yield server
    finally:
        server.stop()
