"""What validation says, and what it asks the resolver for."""

from __future__ import annotations

import enum
from collections.abc import Generator
from dataclasses import dataclass
from typing import TypeVar

import dns.message
import dns.name
import dns.rrset

T = TypeVar("T")


class Security(enum.IntEnum):
    """RFC 4033 §5 / RFC 4035 §4.3 states, strongest first: an answer is as strong as its
    weakest link, `max()` of its links."""

    SECURE = 1
    INSECURE = 2
    #: the chain could not be built: a DS or DNSKEY could not be fetched
    INDETERMINATE = 3
    BOGUS = 4


#: a question the validator needs answered: (owner, type)
Question = tuple[dns.name.Name, int]
#: the upstream's replies to those questions, None where asking failed
Answers = dict[Question, dns.message.Message | None]
#: a validation step: yields the questions it needs (to be asked in parallel), is sent the
#: answers, and returns its result. The resolver drives it; nothing here does I/O.
Step = Generator[list[Question], Answers, T]


@dataclass(frozen=True, slots=True)
class Link:
    """One zone of a chain of trust, for `explain` and logs."""

    zone: str
    security: Security
    #: e.g. "DS alg 13 digest 2 → DNSKEY tag 2371", "no DS: insecure delegation"
    detail: str


@dataclass(frozen=True, slots=True)
class Verdict:
    security: Security
    #: Extended DNS Error for BOGUS / INDETERMINATE (RFC 8914)
    ede: int | None = None
    reason: str = ""
    #: the zone the verdict was decided in (bogus: where it failed)
    zone: str = ""
    #: the longest the answer may be cached: signature expiry, RRSIG original TTLs (RFC 4035 §5.3.3)
    ttl_cap: int | None = None
    chain: tuple[Link, ...] = ()
    #: the (answer, authority) records the verdict covers, RRSIGs included; None: the reply was
    #: not examined (an rcode or a type that is not validated) and goes on as it is
    kept: tuple[tuple[dns.rrset.RRset, ...], tuple[dns.rrset.RRset, ...]] | None = None
