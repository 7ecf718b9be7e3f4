"""The one answer source of every test server: what it saw, and what it answers to a query.

`ServerState` is what a test configures (records, NXDOMAIN names, delays, the misbehaviour or a
per-query chooser) and reads back (raw queries, connections, handshakes, HTTP methods, client
resets); `outcome` turns one query's bytes into the reply bytes (dnspython) and the delay.
"""

from __future__ import annotations

import base64
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.rrset

from tests.servers.misbehaviour import SILENT, Misbehaviour

CONTENT_TYPE = b"application/dns-message"


@dataclass
class ServerState:
    misbehaviour: Misbehaviour = Misbehaviour.NONE
    delay: float = 0.0
    #: name (lower-case, absolute) → list of (rdtype, rdata text); others get an A `address`
    records: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    nxdomain: set[str] = field(default_factory=set)
    #: the A record given for names not in `records` (tells upstreams apart in tests)
    address: str = "192.0.2.1"
    queries: list[bytes] = field(default_factory=list)
    connections: int = 0
    #: each connection's peer address (a proxy's outgoing address tells it apart)
    peers: list[str] = field(default_factory=list)
    #: decides the misbehaviour per query (overrides `misbehaviour` when set)
    chooser: Callable[[dns.message.Message], Misbehaviour] | None = None
    #: name (lower-case, absolute) → seconds its answer is held back (others: `delay`)
    delays: dict[str, float] = field(default_factory=dict)
    #: the TTL of the records in answers
    ttl: int = 300
    #: TLS handshakes completed (HTTP/2: every connection; QUIC: HandshakeCompleted)
    handshakes: int = 0
    #: handshakes that resumed a session (QUIC from a ticket; TLS over TCP: DoT and DoH over
    #: HTTP/2, from a session ticket)
    resumptions: int = 0
    #: HTTP methods of the requests, in order, and their paths (paths: HTTP/2 only)
    methods: list[str] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    #: streams the client reset (RST_STREAM / RESET_STREAM / STOP_SENDING), by error code
    client_resets: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class Outcome:
    """What to do with one query: the misbehaviour, the reply (None: send none), its delay."""

    misbehaviour: Misbehaviour
    reply: bytes | None = None
    delay: float = 0.0


def build_answer(query: dns.message.Message, state: ServerState) -> dns.message.Message:
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


def outcome(state: ServerState, data: bytes, *, udp: bool = False) -> Outcome:
    """Record a query and decide its reply; `udp` truncates (TC) past the client's size."""
    state.queries.append(data)
    try:
        query = dns.message.from_wire(data)
    except Exception:
        return Outcome(Misbehaviour.STALL)
    # by name too: Misbehaviour("stall") is STALL, and a misspelt name fails loudly here
    misbehaviour = Misbehaviour(state.chooser(query) if state.chooser else state.misbehaviour)
    delay = state.delays.get(query.question[0].name.to_text().lower(), state.delay)
    if misbehaviour in SILENT:
        return Outcome(misbehaviour, None, delay)
    return Outcome(misbehaviour, _reply(query, data, state, misbehaviour, udp), delay)


def _reply(
    query: dns.message.Message,
    data: bytes,
    state: ServerState,
    misbehaviour: Misbehaviour,
    udp: bool,
) -> bytes:
    if misbehaviour is Misbehaviour.GARBAGE:
        # the query's ID first, so a client that matches replies by ID takes it for the reply
        return data[:2] + bytes(random.getrandbits(8) for _ in range(40))
    if misbehaviour is Misbehaviour.OVERSIZED:
        return bytes(70000)
    if misbehaviour is Misbehaviour.WRONG_QUESTION:
        other = dns.message.make_query("wrong.example.", query.question[0].rdtype)
        other.id = query.id
        return dns.message.make_response(other).to_wire()
    reply = build_answer(query, state)
    if misbehaviour is Misbehaviour.SERVFAIL:
        reply.answer = []
        reply.set_rcode(dns.rcode.SERVFAIL)
    if misbehaviour is Misbehaviour.WRONG_ID:
        reply.id = (query.id + 1) % 65536
    wire = reply.to_wire(max_size=65535)
    if udp and len(wire) > max(512, query.payload if query.edns >= 0 else 512):
        reply.answer = []
        reply.flags |= dns.flags.TC
        wire = reply.to_wire()
    if misbehaviour is Misbehaviour.SHORT_DNS:
        wire = wire[: len(wire) // 2]
    return wire


def http_response(
    misbehaviour: Misbehaviour, body: bytes
) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """Status line and headers, and the body to send, for an answer-like misbehaviour."""
    status = b"500" if misbehaviour is Misbehaviour.HTTP500 else b"200"
    content_type = b"text/plain" if misbehaviour is Misbehaviour.CONTENT_TYPE else CONTENT_TYPE
    length = len(body)
    if misbehaviour is Misbehaviour.TRUNCATED:
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
