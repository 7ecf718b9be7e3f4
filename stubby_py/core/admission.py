"""Request admission: what becomes of a client's message before anything answers it.

In this order: a message that is not even a header, or is a response, is dropped (never answer
a response: no loops). Then the source, before the message is read, so a denied or limited
client gets no FORMERR or NOTIMP either: the access list (REFUSED with EDE 18, or dropped, as
`deny_action` says; a refusal counts against the rate limit too), then the rate limit (dropped,
or REFUSED, as `rate_limit_action` says). Then the message: a standard query (else NOTIMP for
another opcode, FORMERR for what does not read as one), EDNS version 0 (else BADVERS,
RFC 6891 §6.1.3).
"""

from __future__ import annotations

from dataclasses import dataclass

from stubby_py.core import wire
from stubby_py.core.access import AccessList
from stubby_py.core.errors import (
    BadVersionError,
    ClientError,
    MalformedQueryError,
    NotImplementedOpcodeError,
    RefusedError,
)
from stubby_py.core.ratelimit import RateLimiter

#: the QR bit and the opcode in the header's third octet
_QR_OCTET = wire.QR >> 8
_OPCODE_OCTET = wire.OPCODE_MASK >> 8


@dataclass(frozen=True, slots=True)
class Rejection:
    """A request not admitted, and what becomes of it."""

    #: the reply's error (its rcode and EDE); None: dropped unanswered
    error: type[ClientError] | None
    #: for the query log: where the reply came from, or why the query was dropped ("" when
    #: the message is not a query to log)
    log_as: str
    #: the counters it goes to
    counters: tuple[str, ...]


NOT_A_QUERY = Rejection(None, "", ("dropped",))
DENIED_REFUSED = Rejection(RefusedError, "rejected", ("refused",))
DENIED_DROPPED = Rejection(None, "denied", ("dropped",))
#: denied, to be refused, but over the rate limit: dropped
DENIED_OVER_RATE = Rejection(None, "denied", ("rate_limited", "dropped"))
RATE_LIMITED_REFUSED = Rejection(RefusedError, "rate-limited", ("rate_limited", "refused"))
RATE_LIMITED_DROPPED = Rejection(None, "rate-limited", ("rate_limited",))
FORMERR = Rejection(MalformedQueryError, "", ("formerr",))
NOTIMP = Rejection(NotImplementedOpcodeError, "", ("notimp",))
BADVERS = Rejection(BadVersionError, "rejected", ("badvers",))


@dataclass(slots=True)
class Rules:
    """The configuration's admission rules."""

    acl: AccessList
    #: None: no rate limit
    limiter: RateLimiter | None
    #: sources the rate limit does not apply to
    exempt: AccessList
    #: deny_action: refuse (else drop)
    refuse_denied: bool
    #: rate_limit_action: refuse (else drop)
    refuse_limited: bool


def admit(data: bytes, client_ip: str, now: float, rules: Rules) -> wire.ClientQuery | Rejection:
    """The client's query, read, if it is to be answered through the query path; else what
    becomes of the message. The rate limiter spends a token only when its verdict is needed."""
    if len(data) < wire.HEADER_LEN or data[2] & _QR_OCTET:
        return NOT_A_QUERY
    limiter = rules.limiter
    if not rules.acl.allows(client_ip):
        return _denied(client_ip, now, rules)
    if limiter is not None and not _within_rate(client_ip, now, limiter, rules.exempt):
        return RATE_LIMITED_REFUSED if rules.refuse_limited else RATE_LIMITED_DROPPED
    if data[2] & _OPCODE_OCTET:
        return NOTIMP
    try:
        query = wire.parse_query(data)
    except wire.WireError:
        try:
            query = wire.parse_unusual_query(data)
        except wire.WireError:
            return FORMERR
    if query.edns_version > 0:
        return BADVERS
    return query


def deny(data: bytes, client_ip: str, now: float, rules: Rules) -> Rejection:
    """What becomes of a message from a client a listener's own `allow` leaves out: what
    `admit` makes of one from outside the global access list."""
    if len(data) < wire.HEADER_LEN or data[2] & _QR_OCTET:
        return NOT_A_QUERY
    return _denied(client_ip, now, rules)


def _denied(client_ip: str, now: float, rules: Rules) -> Rejection:
    if not rules.refuse_denied:
        return DENIED_DROPPED
    limiter = rules.limiter
    if limiter is not None and not _within_rate(client_ip, now, limiter, rules.exempt):
        return DENIED_OVER_RATE
    return DENIED_REFUSED


def parse(data: bytes) -> wire.ClientQuery | None:
    """`data` (at least a header, not a response) as a standard query, or None."""
    if data[2] & _OPCODE_OCTET:
        return None
    try:
        return wire.parse_query(data)
    except wire.WireError:
        pass
    try:
        return wire.parse_unusual_query(data)
    except wire.WireError:
        return None


def _within_rate(client_ip: str, now: float, limiter: RateLimiter, exempt: AccessList) -> bool:
    return exempt.allows(client_ip) or limiter.allows(client_ip, now)
