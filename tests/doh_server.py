"""Local DoH upstreams for tests: DNS over HTTPS on HTTP/2 (h2 directly) in a thread of its own.

Shared with quic_servers.py: `DoHState` (what the server saw and how it should misbehave),
`outcome` (the DNS side of one query, via dnspython) and `ServerThread` (an asyncio loop in a
background thread). The HTTP/2 server answers RFC 8484 POST and GET requests and can misbehave
on demand; see BEHAVIOURS. It records every query's raw bytes, the HTTP methods, and counts
connections (each one a TLS handshake) and the streams the client reset.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import random
import ssl
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import parse_qs, urlsplit

import dns.asyncquery
import dns.message
import dns.name
import dns.query
import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import trustme

from stubby_py.core.config import Config
from stubby_py.transports.tls import spki_pin
from tests.daemon_thread import make_config
from tests.upstream_server import UpstreamState, build_answer

CONTENT_TYPE = b"application/dns-message"

#: what a server can be told to do with a query (DoHState.behaviour or .chooser)
BEHAVIOURS = (
    "answer",  # a correct answer
    "stall",  # never answer
    "close",  # drop the whole connection
    "reset",  # reset the query's stream
    "http500",  # HTTP status 500 (HTTP only)
    "content_type",  # text/plain instead of application/dns-message (HTTP only)
    "truncated",  # body shorter than its content-length (HTTP only)
    "short_dns",  # a DNS message cut in half, honestly framed
    "oversized",  # a body larger than any DNS message
    "wrong_id",  # message ID 1 instead of 0
    "wrong_question",  # the answer to another question
    "garbage",  # random bytes
    "goaway",  # GOAWAY before this stream, then close (HTTP/2 only)
)


@dataclass
class DoHState(UpstreamState):
    #: TLS handshakes completed (HTTP/2: every connection; QUIC: HandshakeCompleted)
    handshakes: int = 0
    #: QUIC handshakes that resumed a session from a ticket
    resumptions: int = 0
    #: HTTP methods of the requests, in order, and their paths (HTTP/2 only)
    methods: list[str] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    #: streams the client reset (RST_STREAM / RESET_STREAM), by error code
    client_resets: list[int] = field(default_factory=list)


def outcome(state: DoHState, data: bytes) -> tuple[str, bytes | None]:
    """Record a query and decide what to do with it: (behaviour, reply body or None)."""
    state.queries.append(data)
    try:
        query = dns.message.from_wire(data)
    except Exception:
        return "stall", None
    behaviour = state.chooser(query) if state.chooser else state.behaviour
    if behaviour in ("stall", "close", "reset", "goaway"):
        return behaviour, None
    if behaviour == "garbage":
        return behaviour, bytes(random.getrandbits(8) for _ in range(40))
    if behaviour == "oversized":
        return behaviour, bytes(70000)
    if behaviour == "wrong_question":
        other = dns.message.make_query("wrong.example.", query.question[0].rdtype)
        other.id = query.id
        return behaviour, dns.message.make_response(other).to_wire()
    reply = build_answer(query, state)
    if behaviour == "wrong_id":
        reply.id = (query.id + 1) % 65536
    wire = reply.to_wire()
    if behaviour == "short_dns":
        wire = wire[: len(wire) // 2]
    return behaviour, wire


def http_response(behaviour: str, body: bytes) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """Status line and headers, and the body to send, for an answer-like behaviour."""
    status = b"500" if behaviour == "http500" else b"200"
    content_type = b"text/plain" if behaviour == "content_type" else CONTENT_TYPE
    length = len(body)
    if behaviour == "truncated":
        body = body[: len(body) // 2]
    headers = [
        (b":status", status),
        (b"content-type", content_type),
        (b"content-length", str(length).encode()),
    ]
    return headers, body


def query_from_request(headers: dict[bytes, bytes], body: bytes) -> bytes:
    """The DNS query of an RFC 8484 request: the POST body, or ?dns= of a GET."""
    if headers.get(b":method") == b"GET":
        params = parse_qs(urlsplit(headers.get(b":path", b"").decode()).query)
        encoded = params["dns"][0]
        return base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
    return body


def write_cert_files(ca: trustme.CA, directory: str, *names: str) -> tuple[str, str]:
    """(certificate chain file, key file) for a server certificate naming `names`."""
    cert = ca.issue_cert(*names)
    cert_path = f"{directory}/cert-{'-'.join(names)}.pem"
    key_path = f"{directory}/key-{'-'.join(names)}.pem"
    with open(cert_path, "wb") as handle:
        handle.write(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    cert.private_key_pem.write_to_path(key_path)
    return cert_path, key_path


class ServerThread:
    """An asyncio loop in a daemon thread; subclasses start their servers in `_start`."""

    def __init__(self) -> None:
        self.state = DoHState()
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def run(self, coroutine: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(5)

    def call(self, func: Callable[[], Any]) -> Any:
        async def _call() -> Any:
            return func()

        return self.run(_call())

    def start(self) -> ServerThread:
        self._thread.start()
        self.run(self._start())
        return self

    def stop(self) -> None:
        self.run(self._stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    async def _start(self) -> None:
        raise NotImplementedError

    async def _stop(self) -> None:
        raise NotImplementedError


# --- HTTP/2 ---------------------------------------------------------------------------------


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
        behaviour, reply = outcome(self._state, query_from_request(headers, body))
        if behaviour == "stall":
            return
        if behaviour == "close":
            self._abort()
        elif behaviour == "reset":
            self._h2.reset_stream(stream_id, h2.errors.ErrorCodes.INTERNAL_ERROR)
        elif behaviour == "goaway":
            self._h2.close_connection(last_stream_id=stream_id - 2)
            self._flush()
            self._loop().call_later(0.05, self._abort)
        elif self._state.delay:
            self._loop().call_later(self._state.delay, self._respond, stream_id, behaviour, reply)
        else:
            self._respond(stream_id, behaviour, reply or b"")

    def _respond(self, stream_id: int, behaviour: str, body: bytes) -> None:
        headers, body = http_response(behaviour, body)
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

    async def _start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _H2ServerConnection(self), "127.0.0.1", 0, ssl=self._context
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


# --- the client side, shared by test_doh.py and test_doq.py -----------------------------------

#: the daemon's whole deadline for a query in these tests (the issue asks for about 1.5 s)
TIMEOUT = 1.5


def daemon_config(uri: str, ca_file: str, **spec_changes: Any) -> Config:
    """A daemon config forwarding to one upstream, deadline TIMEOUT, spec fields replaced."""
    config = make_config([uri], ca_file, timeout=TIMEOUT, attempt_timeout=TIMEOUT)
    spec = replace(config.forwarding.upstreams[0], **spec_changes)
    return config.with_options(upstreams=(spec,))


def ask(port: int, name: str = "www.example.", rdtype: str = "A") -> dns.message.Message:
    query = dns.message.make_query(name, rdtype)
    reply = dns.query.udp(query, "127.0.0.1", port=port, timeout=5)
    assert reply.id == query.id
    return reply


def ask_many(port: int, names: list[str]) -> list[dns.message.Message]:
    """All the queries at once, from one client loop."""

    async def run() -> list[dns.message.Message]:
        queries = [dns.message.make_query(name, "A") for name in names]
        return list(
            await asyncio.gather(
                *(dns.asyncquery.udp(q, "127.0.0.1", port=port, timeout=5) for q in queries)
            )
        )

    return asyncio.run(run())


def answer_address(reply: dns.message.Message) -> str | None:
    return reply.answer[0][0].address if reply.answer else None  # type: ignore[no-any-return]


def wire_queries_ok(state: DoHState) -> bool:
    """Every query the server saw: message ID 0, padded to a multiple of 128 octets."""
    return bool(state.queries) and all(
        q[:2] == b"\x00\x00" and len(q) % 128 == 0 for q in state.queries
    )


def server_pin(cert_file: str) -> str:
    """The SPKI pin of the first certificate in a PEM file."""
    with open(cert_file, encoding="ascii") as handle:
        pem = handle.read()
    end = pem.index("-----END CERTIFICATE-----") + len("-----END CERTIFICATE-----")
    return spki_pin(ssl.PEM_cert_to_DER_cert(pem[:end]))


def wait_for(predicate: Callable[[], bool], timeout: float = 2.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()
