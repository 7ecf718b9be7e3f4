"""`stubby-py explain NAME [TYPE]`, the daemon's side: one question through the normal query
path, recorded as it goes (the cache, the rule, each upstream attempt, the validator).

`explain` builds a query as a client would send it and a `Trace`, and hands both to the query
path in one `QueryContext`; the query path, the upstream groups and the validation edge fill the
trace; the reply comes back through the context's observer. `Trace.to_dict()` goes over the
control socket; commands/explain.py renders it for a terminal.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import dns.edns
import dns.flags
import dns.message
import dns.name
import dns.rdatatype
from dns.edns import EDECode
from dns.rcode import Rcode

from stubby_py.core import local, wire
from stubby_py.core.config import DEFAULT_GROUP
from stubby_py.daemon.context import QueryContext
from stubby_py.dnssec.outcome import Security

if TYPE_CHECKING:
    from stubby_py.core.cache import Cache
    from stubby_py.daemon.query_path import Resolver

#: how the configuration names a transport → how people do
TRANSPORT_NAMES = {
    "tls": "DoT",
    "https": "DoH (HTTP/2)",
    "h3": "DoH (HTTP/3)",
    "quic": "DoQ",
    "udp": "plain UDP",
    "tcp": "plain TCP",
}


@dataclass(slots=True)
class CacheView:
    """The cache entry a client's question maps to, before it was answered."""

    #: fresh | stale (expired, within the serve-stale window) | expired | absent
    state: str = "absent"
    #: fresh: seconds left; stale/expired: seconds since expiry (negative)
    ttl_left: float | None = None
    #: the DNSSEC status stored with the answer (cache.ValidationStatus name, lower case)
    validation: str | None = None
    #: a prefetch would refresh it on a popular hit now (RFC 8767 §5)
    prefetch_due: bool = False
    #: a failure held for the question (RFC 9520): its reason and when the hold ends
    held_failure: str | None = None
    retry_in: float | None = None


@dataclass(slots=True)
class Attempt:
    """One upstream asked once."""

    group: str
    upstream: str
    transport: str
    #: answer | answered SERVFAIL/REFUSED/... | cancelled | an errors.py kind (timeout, ...)
    outcome: str
    ms: float
    detail: str = ""


@dataclass(frozen=True, slots=True)
class ChainLink:
    zone: str
    security: str
    detail: str


@dataclass(slots=True)
class ValidationView:
    security: str
    ede: int | None
    reason: str
    zone: str
    chain: list[ChainLink]
    ms: float
    #: DS/DNSKEY questions the validator asked upstream; 0: the key cache knew the whole chain
    questions: int


@dataclass(slots=True)
class Trace:
    """What the resolver records while it answers one explained question."""

    name: str
    qtype: str
    do: bool = False
    #: the forwarding rule (domain suffix) that matched, and the group it sends to
    rule: str | None = None
    group: str = "default"
    cache: CacheView = field(default_factory=CacheView)
    #: cache | joined (an identical question was in flight) | upstream | stale | held-failure |
    #: synthesized (proven from held NSEC/NSEC3 records, RFC 8198)
    source: str = ""
    attempts: list[Attempt] = field(default_factory=list)
    answered_by: str | None = None
    validation: ValidationView | None = None
    #: the key cache's view of the zones on the path (also when the answer came from the cache)
    key_chain: list[ChainLink] = field(default_factory=list)
    rcode: str = ""
    ad: bool = False
    ede: list[tuple[int, str]] = field(default_factory=list)
    #: why the query path ended in SERVFAIL when it did (every upstream failed, bogus, ...)
    failure: str | None = None
    upstream_ms: float | None = None
    total_ms: float = 0.0

    def attempt(self, attempt: Attempt) -> None:
        self.attempts.append(attempt)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def chain_link(zone: str, security: Security, detail: str) -> ChainLink:
    return ChainLink(zone, security.name.lower(), detail)


def describe_reply(trace: Trace, reply: bytes) -> None:
    """The answer's rcode, AD and Extended DNS Errors, as the client got them."""
    message = dns.message.from_wire(reply)
    trace.rcode = Rcode.to_text(message.rcode())
    trace.ad = bool(message.flags & dns.flags.AD)
    trace.ede = [
        (option.code, option.text or "")
        for option in message.options
        if isinstance(option, dns.edns.EDEOption)
    ]
    stale = {EDECode.STALE_ANSWER, EDECode.STALE_NXDOMAIN_ANSWER}
    if trace.source in ("upstream", "held-failure") and any(c in stale for c, _ in trace.ede):
        trace.source = "stale"


class _Captured:
    """The observer of an explained question: the reply, once answered."""

    def __init__(self, reply: asyncio.Future[bytes]) -> None:
        self.reply = reply

    def answered(self, context: QueryContext, reply: bytes) -> None:
        if not self.reply.done():
            self.reply.set_result(reply)


def _ignore(reply: bytes) -> None:
    pass


async def explain(resolver: Resolver, name: str, qtype: int, *, do: bool = False) -> Trace:
    """Ask the question as a client would (EDNS, DO as given, AD set, CD clear) through the
    normal path, recording what it looked at and asked on the way."""
    started = time.perf_counter()
    loop = asyncio.get_running_loop()
    qname = dns.name.from_text(name)
    rdtype = dns.rdatatype.RdataType.make(qtype)
    message = dns.message.make_query(qname, rdtype, use_edns=0, want_dnssec=do)
    message.flags |= dns.flags.AD  # RFC 6840 §5.7: AD back on a secure answer, same cache key
    query = wire.parse_query(message.to_wire())
    trace = Trace(qname.to_text(), dns.rdatatype.to_text(rdtype), do)
    rule = resolver.router.rule_for(query.key[:-5])
    trace.rule, trace.group = rule if rule is not None else (None, DEFAULT_GROUP)
    now = loop.time()
    trace.cache = cache_view(resolver.cache, query.key, now)
    captured = _Captured(loop.create_future())
    context = QueryContext(query, _ignore, "explain", None, now, captured, trace)
    if not (local.is_candidate(query) and resolver.answer_locally(context)):
        resolver.answer(context)
    reply = await asyncio.wait_for(captured.reply, resolver.config.forwarding.timeout + 2.0)
    trace.source = context.source  # where the answer came from, as the query path marked it
    describe_reply(trace, reply)
    if trace.group == DEFAULT_GROUP:
        trace.key_chain = key_chain(resolver, qname)
    trace.total_ms = (time.perf_counter() - started) * 1000
    return trace


def cache_view(cache: Cache, key: bytes, now: float) -> CacheView:
    view = CacheView()
    entry = cache.peek(key)
    if entry is not None:
        left = entry.expires - now
        if left > 0:
            view.state = "fresh"
        elif cache.stale(key, now) is not None:
            view.state = "stale"
        else:
            view.state = "expired"
        view.ttl_left = round(left, 1)
        view.validation = entry.status.name.lower()
        view.prefetch_due = left > 0 and entry.visited and now >= entry.prefetch_at
    held = cache.failure(key, now)
    if held is not None:
        view.held_failure = held.reason or "failure"
        view.retry_in = round(held.until - now, 1)
    return view


def key_chain(resolver: Resolver, qname: dns.name.Name) -> list[ChainLink]:
    """The deepest zone on qname's path the key cache holds, with its chain from the anchor."""
    validator = resolver.validator
    if validator is None:
        return []
    now = time.time()
    for depth in range(len(qname), 0, -1):
        entry = validator.chain.cached(qname.split(depth)[1], now)
        if entry is None:
            continue
        if entry.links:
            return [chain_link(link.zone, link.security, link.detail) for link in entry.links]
        return [chain_link(entry.zone.to_text(), entry.security, entry.reason)]
    return []
