"""Response shaping: turn a reply body (no OPT) into the client's reply.

Echo the client's ID and exact question (RFC 1035 §4.1.1), restore RD/CD, AD only when asked
for (RFC 6840 §5.7), our OPT only when the client sent one (RFC 6891 §7), and over UDP cut a reply
larger than the client's buffer to header + question with TC set (RFC 1035 §4.2.1, RFC 7766 §5).
"""

from __future__ import annotations

from stubby_py.core import edns
from stubby_py.core.wire import (
    AD,
    CD,
    HEADER,
    HEADER_LEN,
    QR,
    RA,
    RCODE_MASK,
    RD,
    TC,
    U16,
    ClientQuery,
)

_KEPT_FLAGS = ~(RD | CD | AD) & 0xFFFF
#: an answer cut for UDP without EDNS must fit in 512 octets (RFC 1035 §4.2.1)
CLASSIC_UDP_LIMIT = 512
#: our OPT without options, by the client's DO bit: built once, not per cache hit
_PLAIN_OPT = (
    edns.opt_record(edns.OUR_UDP_PAYLOAD, 0, False, b""),
    edns.opt_record(edns.OUR_UDP_PAYLOAD, 0, True, b""),
)


def udp_limit(query: ClientQuery) -> int:
    """Largest reply we send over UDP: the client's buffer, at most what we advertise."""
    if not query.has_edns:
        return CLASSIC_UDP_LIMIT
    return min(query.udp_size, edns.OUR_UDP_PAYLOAD)


def client_reply(
    body: bytes,
    query: ClientQuery,
    *,
    limit: int | None,
    ede: tuple[int, str] | None = None,
    authentic: bool | None = None,
    with_question: bool = True,
) -> bytes:
    """The client's reply from a body whose question matches the client's (any case), or with
    `with_question` False from a body without its question (as the cache keeps it).

    limit: the UDP size limit, or None over TCP. authentic: force AD on/off (None: keep upstream's).
    """
    _id, flags, qdcount, ancount, nscount, arcount = HEADER.unpack_from(body)
    has_ad = bool(flags & AD) if authentic is None else authentic
    flags = (flags & _KEPT_FLAGS) | (query.flags & (RD | CD)) | QR
    wants_ad = query.do or query.flags & AD
    if has_ad and wants_ad:
        flags |= AD
    if not query.has_edns:
        opt = b""
    elif ede is None:
        opt = _PLAIN_OPT[query.do]
    else:
        opt = edns.client_opt(query, ede)
    qend = HEADER_LEN + len(query.question) if with_question else HEADER_LEN
    reply = (
        HEADER.pack(query.id, flags, qdcount, ancount, nscount, arcount + bool(opt))
        + query.question
        + body[qend:]
        + opt
    )
    if limit is not None and len(reply) > limit:
        reply = HEADER.pack(query.id, flags | TC, 1, 0, 0, bool(opt)) + query.question + opt
    return reply


def error_reply(query: ClientQuery, rcode: int, ede: tuple[int, str] | None = None) -> bytes:
    """A reply with no records: rcode (extended RCODEs through the OPT), question echoed."""
    flags = QR | RA | (query.flags & (RD | CD)) | (rcode & RCODE_MASK)
    opt = edns.client_opt(query, ede, rcode) if query.has_edns else b""
    return HEADER.pack(query.id, flags, 1, 0, 0, bool(opt)) + query.question + opt


def rcode_of(reply: bytes) -> int:
    flags: int = U16.unpack_from(reply, 2)[0]
    return flags & RCODE_MASK
