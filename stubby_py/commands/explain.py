"""`stubby-py explain NAME [TYPE]`: the report on one question, as a terminal reads it.

The daemon traces the question through its query path (daemon/explain.py) and sends the trace as
a dict over the control socket; `format_table` renders that dict. No clock and no I/O here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from dns.edns import EDECode


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
    if source == "synthesized-dns64":
        return "synthesized (dns64): AAAA made from the name's A records and the NAT64 prefix"
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
