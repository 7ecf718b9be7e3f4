"""`stubby-py explain NAME [TYPE]`: what happened to one question, as data and as a table.

Pure: the resolver fills a `Trace` as the question goes through the normal query path (the
cache, the rule, each upstream attempt, the validator) and sends `Trace.to_dict()` over the
control socket; `format_table` renders that dict for a terminal. No clock and no I/O here: the
resolver measures and passes milliseconds in.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import dns.edns
import dns.flags
import dns.message
from dns.edns import EDECode
from dns.rcode import Rcode

from stubby_py.dnssec.outcome import Security

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


def ede_name(code: int) -> str:
    try:
        return EDECode(code).name.replace("_", " ").title()
    except ValueError:
        return f"EDE {code}"


def _seconds(value: float) -> str:
    return f"{value:.0f} s"


def cache_phrase(view: Mapping[str, Any]) -> str:
    """E.g. "fresh, 245 s left", "stale, expired 3 s ago", "absent"."""
    state = str(view.get("state", "absent"))
    ttl = view.get("ttl_left")
    parts = [state]
    if state == "fresh" and ttl is not None:
        parts.append(f"{_seconds(ttl)} left")
    elif state in ("stale", "expired") and ttl is not None:
        parts.append(f"expired {_seconds(-ttl)} ago")
    if view.get("validation") and state != "absent":
        parts.append(f"dnssec {view['validation']}")
    if view.get("prefetch_due"):
        parts.append("prefetch due")
    if view.get("held_failure"):
        retry = view.get("retry_in")
        when = f", retry in {_seconds(retry)}" if retry is not None else ""
        parts.append(f"failure held ({view['held_failure']}{when})")
    return ", ".join(parts)


def _answered(report: Mapping[str, Any]) -> str:
    source = report.get("source", "")
    cache = cache_phrase(report.get("cache", {}))
    if source == "cache":
        return f"cache ({cache}): no upstream asked"
    if source == "held-failure":
        return f"held failure ({cache}): no upstream asked"
    if source == "joined":
        return "an identical question already in flight (joined it)"
    if source == "synthesized":
        return "synthesized from validated NSEC/NSEC3 records held (RFC 8198): no upstream asked"
    if source == "stale":
        return "stale cache entry (RFC 8767): every upstream failed"
    by = report.get("answered_by")
    if by:
        return f"upstream {by}"
    return "nobody: " + (report.get("failure") or "no upstream answered")


def _result(report: Mapping[str, Any]) -> str:
    parts = [str(report.get("rcode", ""))]
    if report.get("ad"):
        parts.append("AD")
    for code, text in report.get("ede", []):
        parts.append(f"EDE {code} ({ede_name(code)})" + (f": {text}" if text else ""))
    return ", ".join(p for p in parts if p)


def _links(links: Sequence[Mapping[str, Any]], indent: str) -> list[str]:
    width = max((len(link["zone"]) for link in links), default=0)
    return [
        f"{indent}{link['zone']:<{width}}  {link['security']:<13} {link['detail']}".rstrip()
        for link in links
    ]


def _dnssec_lines(report: Mapping[str, Any]) -> list[str]:
    lines: list[str] = []
    pad = " " * 15
    validation = report.get("validation")
    if validation:
        head = validation["security"]
        if validation.get("ede") is not None:
            head += f", EDE {validation['ede']} ({ede_name(validation['ede'])})"
        if validation.get("reason"):
            head += f": {validation['reason']}"
        if validation.get("zone") and validation["security"] not in ("secure",):
            head += f" (in zone {validation['zone']})"
        lines.append(f"  dnssec       {head}")
        asked = validation.get("questions", 0)
        source = f"{asked} DS/DNSKEY questions asked" if asked else "chain from the key cache"
        lines.append(f"{pad}{source}, {validation['ms']:.1f} ms")
        lines += _links(validation.get("chain", []), pad)
    elif report.get("key_chain"):
        lines.append("  key cache    the chain as the validator holds it now")
        lines += _links(report["key_chain"], pad)
    return lines


def format_table(report: Mapping[str, Any]) -> str:
    """The report as a terminal reads it (what `stubby-py explain` prints without --json)."""
    do = " (DO)" if report.get("do") else ""
    rule = report.get("rule")
    group = report.get("group", "default")
    routed = f"{rule} → group {group}" if rule else f"none → group {group}"
    lines = [
        f"  question     {report['name']} {report['qtype']}{do}",
        f"  rule         {routed}",
        f"  cache        {cache_phrase(report.get('cache', {}))}",
        f"  answered by  {_answered(report)}",
    ]
    attempts = report.get("attempts", [])
    if attempts:
        lines.append("  attempts")
        for i, a in enumerate(attempts, 1):
            how = f"{a['upstream']} ({a['transport']})"
            detail = f"  {a['detail']}" if a.get("detail") else ""
            lines.append(f"    {i}. {how:<44} {a['outcome']:<20} {a['ms']:8.1f} ms{detail}")
    lines += _dnssec_lines(report)
    if report.get("failure") and report.get("source") != "cache":
        lines.append(f"  failure      {report['failure']}")
    lines.append(f"  result       {_result(report)}")
    timing = f"total {report.get('total_ms', 0.0):.1f} ms"
    if report.get("upstream_ms") is not None:
        timing += f", upstream {report['upstream_ms']:.1f} ms"
    if report.get("validation"):
        timing += f", validation {report['validation']['ms']:.1f} ms"
    lines.append(f"  timings      {timing}")
    return "\n".join(lines) + "\n"


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
