"""`stubby-py stats`: the daemon's figures (daemon/stats.py `collect`) as a table for people."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    if days:
        return f"{days}d {hours}h {minutes:02d}m"
    if hours:
        return f"{hours}h {minutes:02d}m"
    return f"{minutes}m {secs:02d}s"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def format_table(stats: Mapping[str, Any]) -> str:
    cache = stats["cache"]
    tcp = stats["tcp"]
    counters = stats["counters"]
    lines = [
        f"stubby-py {stats['version']}, up {_duration(stats['uptime_seconds'])}",
        "",
        f"queries        {stats['queries']}",
        f"  from cache   {cache['hits']}   (hit ratio {_percent(cache['hit_ratio'])}; "
        f"{cache['misses']} misses, {counters.get('joined', 0)} joined in flight)",
        f"  local        {counters.get('local', 0)}   (localhost, private reverse zones)",
        f"  stale        {counters.get('stale', 0)}   (every upstream failed, RFC 8767)",
        f"  SERVFAIL     {stats['servfail']}",
        f"  refused      {stats['refused']}",
        f"  rate-limited {stats['rate_limited']}",
        f"  dropped      {stats['dropped']}",
        f"cache          {cache['entries']} answers, {cache['bytes'] / 2**20:.1f} MiB, "
        f"{cache['evictions']} evicted",
        f"tcp            {tcp['open']} open; closed at once: {tcp['rejected_total_cap']} over "
        f"the total cap, {tcp['rejected_per_client_cap']} over the per-client cap, "
        f"{tcp['denied']} denied; closed later: {tcp['closed_idle']} idle, "
        f"{tcp['closed_unread']} not reading their replies",
    ]
    doq = stats.get("doq")
    if doq is not None:
        lines.append(
            f"doq            {doq['open']} open, {doq['queries']} queries; "
            f"{doq['protocol_errors']} protocol errors, "
            f"{doq['rejected_total_cap'] + doq['rejected_per_client_cap']} over a cap, "
            f"{doq['denied_datagrams']} datagrams denied"
        )
    doh3 = stats.get("doh3")
    if doh3 is not None:
        lines.append(
            f"doh3           {doh3['open']} open, {doh3['queries']} queries; "
            f"{doh3['http_errors']} HTTP errors, {doh3['protocol_errors']} protocol errors, "
            f"{doh3['rejected_total_cap'] + doh3['rejected_per_client_cap']} over a cap, "
            f"{doh3['denied_datagrams']} datagrams denied"
        )
    lines.append("")
    lines += _upstream_rows(stats["upstreams"])
    lines += _fallback_rows(stats["upstreams"])
    return "\n".join(lines) + "\n"


def _fallback_rows(upstreams: Sequence[Mapping[str, Any]]) -> list[str]:
    """Upstreams whose fallback answered: where they are now (config `fallback`)."""
    rows = []
    for u in upstreams:
        fallback = u.get("fallback")
        if not fallback or not (fallback["answers"] or fallback["active"]):
            continue
        now = f"on its fallback {fallback['active']}" if fallback["active"] else "on its primary"
        rows.append(f"{u['name']}: {now}; {fallback['answers']} answers through a fallback")
    return ["", *rows] if rows else []


def _upstream_rows(upstreams: Sequence[Mapping[str, Any]]) -> list[str]:
    header = ("upstream", "group", "state", "queries", "failures", "p50 ms", "p90 ms", "p99 ms")
    rows = [header]
    for u in upstreams:
        latency = u["latency_ms"]
        rows.append(
            (
                str(u["name"]), str(u.get("group", "default")), str(u.get("state", "?")),
                str(u["queries"]), str(u["failures"]),
                _ms(latency["p50"]), _ms(latency["p90"]), _ms(latency["p99"]),
            )
        )  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    out = []
    for row in rows:
        cells = [
            cell.ljust(widths[i]) if i < 3 else cell.rjust(widths[i]) for i, cell in enumerate(row)
        ]
        out.append("  ".join(cells).rstrip())
    return out
