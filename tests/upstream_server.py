"""A local upstream for tests: DNS over TLS, TCP and UDP on loopback, in a thread of its own.

It answers with dnspython (an A record for any name unless `records` says otherwise) and can
misbehave on demand: stall, close mid-stream, answer out of order, with a wrong ID or question,
with garbage, or slowly. It records every query's raw bytes and counts connections (handshakes).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import ssl
import struct
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import dns.message
import dns.rcode
import dns.rrset

Behaviour = (
    str  # "answer" | "stall" | "close" | "wrong_id" | "wrong_question" | "garbage" | "reverse"
)


@dataclass
class UpstreamState:
    behaviour: Behaviour = "answer"
    delay: float = 0.0
    #: name (lower-case, absolute) → list of (rdtype, rdata text); others get an A 192.0.2.1
    records: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    nxdomain: set[str] = field(default_factory=set)
    #: the A record given for names not in `records` (tells upstreams apart in tests)
    address: str = "192.0.2.1"
    queries: list[bytes] = field(default_factory=list)
    connections: int = 0
    #: each stream connection's peer address (a proxy's outgoing address tells it apart)
    peers: list[str] = field(default_factory=list)
    #: decides the behaviour per query (overrides `behaviour` when set)
    chooser: Callable[[dns.message.Message], Behaviour] | None = None
    #: name (lower-case, absolute) → seconds its answer is held back (others: `delay`)
    delays: dict[str, float] = field(default_factory=dict)
    #: the TTL of the records in answers
    ttl: int = 300


def build_answer(query: dns.message.Message, state: UpstreamState) -> dns.message.Message:
    # like a real resolver (RFC 8467 §4.1): pad the reply to 468 octets when the query was padded
    reply = dns.message.make_response(query, pad=468)
    reply.flags |= dns.flags.RA
    name = query.question[0].name
    key = name.to_text().lower()
    if key in state.nxdomain:
        reply.set_rcode(dns.rcode.NXDOMAIN)
        return reply
    rdtype = query.question[0].rdtype
    for type_text, rdata in state.records.get(key, [("A", state.address)]):
        if dns.rdatatype.from_text(type_text) == rdtype:
            reply.answer.append(dns.rrset.from_text(name, state.ttl, "IN", type_text, rdata))
    return reply


class LocalUpstream:
    """Serve until stopped. `tls_context` None: plain TCP (and UDP) only."""

    def __init__(self, tls_context: ssl.SSLContext | None) -> None:
        self.state = UpstreamState()
        self._tls = tls_context
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._writers: set[asyncio.StreamWriter] = set()
        self.port = 0
        self.udp_port = 0

    def start(self) -> LocalUpstream:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(5)
        return self

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._serve_stream, "127.0.0.1", 0, ssl=self._tls)
        self.port = self._server.sockets[0].getsockname()[1]
        if self._tls is None:
            self._udp, _ = await self._loop.create_datagram_endpoint(
                lambda: _UDPServer(self), local_addr=("127.0.0.1", self.port)
            )
            self.udp_port = self.port

    def stop(self) -> None:
        async def _stop() -> None:
            self._server.close()
            for writer in list(self._writers):
                writer.close()
            if self._tls is None:
                self._udp.close()
            await asyncio.sleep(0.05)

        asyncio.run_coroutine_threadsafe(_stop(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    def drop_connections(self) -> None:
        """Close every open connection now (as a server restart would)."""

        def _drop() -> None:
            for writer in list(self._writers):
                writer.transport.abort()

        self._loop.call_soon_threadsafe(_drop)

    def respond(self, data: bytes, udp: bool = False) -> tuple[bytes | None, Behaviour, float]:
        """The reply bytes for a query (or None to stay silent), plus behaviour and delay."""
        self.state.queries.append(data)
        try:
            query = dns.message.from_wire(data)
        except Exception:
            return None, "stall", 0.0
        chooser = self.state.chooser
        behaviour = chooser(query) if chooser else self.state.behaviour
        if behaviour in ("stall", "close"):
            return None, behaviour, self.state.delay
        if behaviour == "garbage":
            return data[:2] + bytes(random.getrandbits(8) for _ in range(40)), behaviour, 0.0
        reply = build_answer(query, self.state)
        if behaviour == "servfail":
            reply.answer = []
            reply.set_rcode(dns.rcode.SERVFAIL)
        if behaviour == "wrong_id":
            reply.id = (query.id + 1) % 65536
        if behaviour == "wrong_question":
            reply.question[0].name = dns.name.from_text("wrong.example.")
            reply.answer = []
        wire = reply.to_wire(max_size=65535)
        if udp and len(wire) > max(512, query.payload if query.edns >= 0 else 512):
            reply.answer = []
            reply.flags |= dns.flags.TC
            wire = reply.to_wire()
        if behaviour == "wrong_question":
            wire = _rewrite_question(query, wire)
        delay = self.state.delays.get(query.question[0].name.to_text().lower(), self.state.delay)
        return wire, behaviour, delay

    async def _serve_stream(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.state.connections += 1
        self.state.peers.append(writer.get_extra_info("peername")[0])
        self._writers.add(writer)
        held: list[bytes] = []
        try:
            while True:
                header = await reader.readexactly(2)
                data = await reader.readexactly(struct.unpack("!H", header)[0])
                reply, behaviour, delay = self.respond(data)
                if behaviour == "close":
                    writer.transport.abort()
                    return
                if reply is None:
                    continue
                if behaviour == "reverse":
                    held.append(reply)
                    if len(held) >= 2:
                        for item in reversed(held):
                            writer.write(struct.pack("!H", len(item)) + item)
                        held.clear()
                    continue
                if delay:
                    asyncio.get_running_loop().call_later(delay, _write_framed, writer, reply)
                else:
                    _write_framed(writer, reply)
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            pass
        finally:
            self._writers.discard(writer)
            with contextlib.suppress(Exception):
                writer.close()


def _write_framed(writer: asyncio.StreamWriter, reply: bytes) -> None:
    if not writer.is_closing():
        writer.write(struct.pack("!H", len(reply)) + reply)


def _rewrite_question(query: dns.message.Message, wire: bytes) -> bytes:
    other = dns.message.make_query("wrong.example.", query.question[0].rdtype)
    other.id = query.id
    reply = dns.message.make_response(other)
    return reply.to_wire()


class _UDPServer(asyncio.DatagramProtocol):
    def __init__(self, owner: LocalUpstream) -> None:
        self._owner = owner

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        reply, _behaviour, delay = self._owner.respond(data, udp=True)
        if reply is None:
            return
        send = self._transport.sendto  # type: ignore[attr-defined]
        if delay:
            asyncio.get_running_loop().call_later(delay, send, reply, addr)
        else:
            send(reply, addr)


@contextlib.contextmanager
def local_upstream(tls_context: ssl.SSLContext | None) -> Iterator[LocalUpstream]:
    server = LocalUpstream(tls_context).start()
    try:
        yield server
    finally:
        server.stop()
