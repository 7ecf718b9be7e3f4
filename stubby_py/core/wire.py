"""The raw-wire fast path: read a client query, scan a reply, patch IDs, TTLs and flags.

A full dnspython parse and render costs several times the per-query budget in DESIGN.md, so the
common shapes (one question, at most an OPT record in a query; any reply) are handled here on the
bytes; anything unusual goes through dnspython (see `parse_unusual_query`).
RFC 1035 §4.1 (message format), RFC 6891 §6.1 (OPT record), RFC 7766 §8 (2-octet framing).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import dns.exception
import dns.message
import dns.rdataclass
import dns.rdatatype

HEADER = struct.Struct("!HHHHHH")
RR_FIXED = struct.Struct("!HHIH")  # type, class, ttl, rdlength
OPT_FIXED = struct.Struct("!HHBBHH")  # type=41, payload size, ext-rcode, version, flags, rdlength
U16 = struct.Struct("!H")
U32 = struct.Struct("!I")

HEADER_LEN = 12
QR = 0x8000
OPCODE_MASK = 0x7800
AA = 0x0400
TC = 0x0200
RD = 0x0100
RA = 0x0080
AD = 0x0020
CD = 0x0010
RCODE_MASK = 0x000F
EDNS_DO = 0x8000
TYPE_OPT = 41
TYPE_SOA = 6
MAX_NAME_LEN = 255
MAX_MESSAGE_LEN = 65535


class WireError(ValueError):
    """The bytes are not a DNS message of the shape they claim."""


@dataclass(slots=True)
class ClientQuery:
    """What the query path needs from a client's query, read off its wire form."""

    id: int
    flags: int
    #: the question exactly as the client sent it: name, type, class
    question: bytes
    qtype: int
    qclass: int
    #: cache and coalescing key: lower-cased question plus the DO and CD bits
    key: bytes
    has_edns: bool
    #: the client's UDP payload size (512 without EDNS, never less than 512)
    udp_size: int
    do: bool
    edns_version: int

    @property
    def cd(self) -> bool:
        return bool(self.flags & CD)

    @property
    def qname_wire(self) -> bytes:
        return self.question[:-4]


@dataclass(slots=True)
class ReplyLayout:
    """Where things are in a reply: found by walking its records once."""

    rcode: int
    question_end: int
    #: offsets of the 32-bit TTL fields of every record but OPT
    ttl_offsets: list[int]
    #: smallest TTL of those records (None when there are none)
    min_ttl: int | None
    #: (start, end) of the OPT record, if any
    opt_span: tuple[int, int] | None
    #: TTL and MINIMUM of an SOA in the authority section (negative caching, RFC 2308 §5)
    soa_ttl: int | None
    soa_minimum: int | None
    answer_count: int


def header_id(data: bytes) -> int:
    msg_id: int = U16.unpack_from(data, 0)[0]
    return msg_id


def with_id(data: bytes, msg_id: int) -> bytes:
    return U16.pack(msg_id) + data[2:]


def frame(data: bytes) -> bytes:
    """RFC 7766 §8: a 2-octet length before every message on a stream."""
    return U16.pack(len(data)) + data


def _name_end(data: bytes, pos: int) -> int:
    """End of an uncompressed name starting at pos (as in a question)."""
    start = pos
    limit = len(data)
    while True:
        if pos >= limit:
            raise WireError("name runs past the end")
        length = data[pos]
        if length == 0:
            pos += 1
            if pos - start > MAX_NAME_LEN:
                raise WireError("name longer than 255 octets")
            return pos
        if length > 63:
            raise WireError("compressed or extended label in a question")
        pos += length + 1


def _skip_name(data: bytes, pos: int) -> int:
    """End of a possibly compressed name (a pointer ends it)."""
    limit = len(data)
    while True:
        if pos >= limit:
            raise WireError("name runs past the end")
        length = data[pos]
        if length == 0:
            return pos + 1
        if length >= 0xC0:
            if pos + 2 > limit:
                raise WireError("pointer runs past the end")
            return pos + 2
        if length > 63:
            raise WireError("unknown label type")
        pos += length + 1


def _check_options(data: bytes, pos: int, end: int) -> None:
    while pos < end:
        if pos + 4 > end:
            raise WireError("truncated EDNS option")
        pos += 4 + U16.unpack_from(data, pos + 2)[0]
    if pos != end:
        raise WireError("EDNS option runs past the OPT record")


def parse_query(data: bytes) -> ClientQuery:
    """Read a client query of the common shape: one question and at most an OPT record.

    Raises WireError for anything else; the caller then tries `parse_unusual_query`.
    """
    if len(data) < HEADER_LEN:
        raise WireError("shorter than a header")
    msg_id, flags, qdcount, ancount, nscount, arcount = HEADER.unpack_from(data)
    if qdcount != 1 or ancount or nscount or arcount > 1:
        raise WireError("not a single-question query")
    qname_end = _name_end(data, HEADER_LEN)
    question_end = qname_end + 4
    if question_end > len(data):
        raise WireError("question runs past the end")
    qtype, qclass = struct.unpack_from("!HH", data, qname_end)
    question = data[HEADER_LEN:question_end]
    has_edns = False
    udp_size = 512
    do = False
    version = 0
    if arcount:
        if data[question_end : question_end + 1] != b"\x00" or len(data) < question_end + 11:
            raise WireError("additional record is not an OPT")
        rtype, payload, _ext, version, eflags, rdlen = OPT_FIXED.unpack_from(data, question_end + 1)
        opt_end = question_end + 11 + rdlen
        if rtype != TYPE_OPT or opt_end != len(data):
            raise WireError("additional record is not a well-formed OPT")
        _check_options(data, question_end + 11, opt_end)
        has_edns = True
        udp_size = max(512, payload)
        do = bool(eflags & EDNS_DO)
    elif question_end != len(data):
        raise WireError("trailing bytes after the question")
    key = (
        data[HEADER_LEN:qname_end].lower()
        + data[qname_end:question_end]
        + bytes(((do << 1) | bool(flags & CD),))
    )
    return ClientQuery(msg_id, flags, question, qtype, qclass, key, has_edns, udp_size, do, version)


def chain_query(qname_wire: bytes, qtype: int) -> ClientQuery:
    """The validator's own question (a DS or DNSKEY), shaped as a client query with DO and CD."""
    question = qname_wire + struct.pack("!HH", qtype, 1)
    key = qname_wire.lower() + question[-4:] + b"\x03"
    return ClientQuery(0, RD | CD, question, qtype, 1, key, True, 1232, True, 0)


def with_flag(body: bytes, flag: int, on: bool) -> bytes:
    """The message with one header flag (AD, say) set or cleared."""
    flags = U16.unpack_from(body, 2)[0]
    wanted = flags | flag if on else flags & ~flag
    return body if wanted == flags else body[:2] + U16.pack(wanted) + body[4:]


def parse_unusual_query(data: bytes) -> ClientQuery:
    """Slow path: let dnspython judge a query the fast path refused, then re-read its essentials.

    Raises WireError when it is not a well-formed single-question query (FORMERR).
    """
    try:
        msg = dns.message.from_wire(data, ignore_trailing=False)
    except (dns.exception.DNSException, ValueError, IndexError, struct.error) as exc:
        raise WireError(f"unparsable query: {type(exc).__name__}") from exc
    if len(msg.question) != 1:
        raise WireError("a query must have exactly one question")
    rrset = msg.question[0]
    clean = dns.message.make_query(rrset.name, rrset.rdtype, rrset.rdclass)
    clean.id = msg.id
    clean.flags = msg.flags
    if msg.edns >= 0:
        clean.use_edns(0, msg.ednsflags, max(512, msg.payload))
    try:
        query = parse_query(clean.to_wire())
    except dns.exception.DNSException as exc:
        raise WireError(str(exc)) from exc
    query.edns_version = max(msg.edns, 0)
    return query


def skip_name(data: bytes, pos: int) -> int:
    """End of a possibly compressed name at pos (a pointer ends it), for other modules."""
    return _skip_name(data, pos)


def question_end(data: bytes) -> int:
    return _name_end(data, HEADER_LEN) + 4


def scan_reply(data: bytes) -> ReplyLayout:
    """Walk every record of a reply once; WireError if it is not well formed."""
    if len(data) < HEADER_LEN:
        raise WireError("shorter than a header")
    _id, flags, qdcount, ancount, nscount, arcount = HEADER.unpack_from(data)
    pos = HEADER_LEN
    try:
        for _ in range(qdcount):
            pos = _skip_name(data, pos) + 4
        qend = pos
        ttl_offsets: list[int] = []
        min_ttl: int | None = None
        opt_span: tuple[int, int] | None = None
        soa_ttl = soa_min = None
        authority_end = ancount + nscount
        for index in range(ancount + nscount + arcount):
            start = pos
            pos = _skip_name(data, pos)
            rtype, _rclass, ttl, rdlen = RR_FIXED.unpack_from(data, pos)
            rdata = pos + 10
            pos = rdata + rdlen
            if rtype == TYPE_OPT:
                if index < authority_end or opt_span is not None:
                    raise WireError("misplaced or repeated OPT record")
                opt_span = (start, pos)
                continue
            ttl_offsets.append(rdata - 6)
            if min_ttl is None or ttl < min_ttl:
                min_ttl = ttl
            if rtype == TYPE_SOA and ancount <= index < authority_end:
                soa_ttl = ttl
                # MINIMUM is the last 32 bits of the SOA rdata
                soa_min = U32.unpack_from(data, pos - 4)[0]
    except (IndexError, struct.error) as exc:
        raise WireError("record runs past the end") from exc
    if pos != len(data):
        raise WireError("reply longer or shorter than its records")
    return ReplyLayout(
        flags & RCODE_MASK, qend, ttl_offsets, min_ttl, opt_span, soa_ttl, soa_min, ancount
    )


def is_plain_answer(data: bytes, qtype: int) -> bool:
    """A reply (OPT removed) that holds nothing but the answer to its own question: answer
    records of type `qtype` owned by the question name itself (a pointer to it, or it spelled
    out), none at all with NXDOMAIN, at most an SOA in the authority section, no additional
    records. The validator's short path for unsigned zones takes only these."""
    _id, flags, qdcount, ancount, nscount, arcount = HEADER.unpack_from(data)
    if qdcount != 1 or arcount or (ancount and flags & RCODE_MASK):
        return False
    qname_end = _skip_name(data, HEADER_LEN)
    qname = data[HEADER_LEN:qname_end].lower()
    pos = qname_end + 4
    for index in range(ancount + nscount):
        owner_end = _skip_name(data, pos)
        rtype = U16.unpack_from(data, owner_end)[0]
        if index < ancount:
            owner = data[pos:owner_end]
            if rtype != qtype or (owner != b"\xc0\x0c" and owner.lower() != qname):
                return False
        elif rtype != TYPE_SOA:
            return False
        pos = owner_end + 10 + U16.unpack_from(data, owner_end + 8)[0]
    return True


def opt_rcode_high(data: bytes, opt_span: tuple[int, int]) -> int:
    """The upper 8 bits of an extended RCODE, from the OPT record's TTL field."""
    return data[opt_span[0] + 5]


def opt_options(data: bytes, opt_span: tuple[int, int]) -> list[tuple[int, bytes]]:
    start, end = opt_span
    pos = start + 11
    options = []
    while pos + 4 <= end:
        code, length = struct.unpack_from("!HH", data, pos)
        options.append((code, data[pos + 4 : pos + 4 + length]))
        pos += 4 + length
    return options


def without_opt(data: bytes, layout: ReplyLayout) -> tuple[bytes, list[int]]:
    """The reply with its OPT record removed, and its TTL offsets adjusted to match."""
    if layout.opt_span is None:
        return data, layout.ttl_offsets
    start, end = layout.opt_span
    removed = end - start
    arcount = U16.unpack_from(data, 10)[0] - 1
    body = data[:10] + U16.pack(arcount) + data[12:start] + data[end:]
    offsets = [off if off < start else off - removed for off in layout.ttl_offsets]
    return body, offsets


def question_matches(reply: bytes, query_question: bytes) -> bool:
    """RFC 5452 §9.1: the reply answers our question (the name compared case-insensitively)."""
    if len(reply) < HEADER_LEN or U16.unpack_from(reply, 4)[0] != 1:
        return False
    got = reply[HEADER_LEN : HEADER_LEN + len(query_question)]
    if got == query_question:
        return True
    return got[:-4].lower() == query_question[:-4].lower() and got[-4:] == query_question[-4:]


def is_response_to_query(reply: bytes) -> bool:
    """QR set and opcode QUERY."""
    flags = U16.unpack_from(reply, 2)[0]
    return bool(flags & QR) and not flags & OPCODE_MASK


def patch_ttls(body: bytes, ttl_offsets: list[int], elapsed: int) -> bytes:
    """Lower every TTL by `elapsed` seconds (not below zero)."""
    if not elapsed or not ttl_offsets:
        return body
    buf = bytearray(body)
    for off in ttl_offsets:
        ttl = U32.unpack_from(buf, off)[0]
        U32.pack_into(buf, off, ttl - elapsed if ttl > elapsed else 0)
    return bytes(buf)


def cap_ttls(body: bytes, ttl_offsets: list[int], ceiling: int) -> bytes:
    """Lower any TTL above `ceiling` to it."""
    buf = bytearray(body)
    for off in ttl_offsets:
        if U32.unpack_from(buf, off)[0] > ceiling:
            U32.pack_into(buf, off, ceiling)
    return bytes(buf)


def header_only_reply(query: ClientQuery | None, msg_id: int, flags: int, rcode: int) -> bytes:
    """A reply with no records: the question echoed when known; rcode's low 4 bits only."""
    reply_flags = QR | (flags & (OPCODE_MASK | RD | CD)) | (rcode & RCODE_MASK)
    if query is not None and not flags & OPCODE_MASK:
        reply_flags |= RA
        return HEADER.pack(msg_id, reply_flags, 1, 0, 0, 0) + query.question
    return HEADER.pack(msg_id, reply_flags, 0, 0, 0, 0)


def rdtype_text(qtype: int) -> str:
    return dns.rdatatype.to_text(qtype)  # type: ignore[arg-type]


def rdclass_text(qclass: int) -> str:
    return dns.rdataclass.to_text(qclass)  # type: ignore[arg-type]
