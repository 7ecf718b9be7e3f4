"""Statistics: what `stubby-py stats` shows and the metrics endpoint exports, from one snapshot.

`collect` turns the runtime's snapshot (counters, cache, per-upstream figures) and the TCP
listener's counts into one JSON-ready mapping; commands/stats.py renders it for people.
Latency percentiles are over each upstream's recent answers (the pool's window, 64 answers).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from stubby_py import __version__
from stubby_py.core import benchstats

if TYPE_CHECKING:
    from stubby_py.daemon.runtime import Runtime
    from stubby_py.listeners.doq import DoQServer
    from stubby_py.listeners.plain import TCPConnections

PERCENTILES = (50, 90, 99)


def percentile(samples: Sequence[float], pct: float) -> float | None:
    """The same percentile `stubby-py bench` reports (None without samples)."""
    if not samples:
        return None
    return benchstats.percentile(sorted(samples), pct)


def hit_ratio(hits: int, misses: int) -> float | None:
    total = hits + misses
    return hits / total if total else None


def collect(runtime: Runtime, tcp: TCPConnections | None, started: float) -> dict[str, Any]:
    snapshot = runtime.snapshot()
    counters: dict[str, int] = dict(snapshot["counters"])
    hits, misses = counters.get("cache_hits", 0), counters.get("cache_misses", 0)
    return {
        "version": __version__,
        "uptime_seconds": round(time.time() - started, 3),
        "queries": counters.get("queries", 0),
        "refused": counters.get("refused", 0),
        "rate_limited": counters.get("rate_limited", 0),
        "servfail": counters.get("servfail", 0),
        "dropped": counters.get("dropped", 0),
        "cache": {
            **snapshot["cache"],
            "hits": hits,
            "misses": misses,
            "hit_ratio": hit_ratio(hits, misses),
        },
        "tcp": _tcp(tcp),
        "upstreams": [_upstream(u) for u in snapshot["upstreams"]],
        "counters": counters,
        #: the event loop's tasks (a soak watches it stay flat: bench/soak.py)
        "tasks": _task_count(),
    }


def _task_count() -> int | None:
    try:
        return len(asyncio.all_tasks())
    except RuntimeError:  # no running loop (a caller outside the daemon)
        return None


TCP_FIGURES = (
    "open", "rejected_total_cap", "rejected_per_client_cap", "denied", "closed_idle",
    "closed_unread", "unsent_bytes", "tls_handshake_failures",
)  # fmt: skip


def doq(servers: Sequence[DoQServer]) -> dict[str, int]:
    """The DoQ (or DoH over HTTP/3) listeners' counters, summed, and their connections open
    now."""
    figures = {"open": sum(len(server.open) for server in servers)}
    for server in servers:
        for name, value in vars(server.stats).items():
            figures[name] = figures.get(name, 0) + value
    return figures


def _tcp(tcp: TCPConnections | None) -> dict[str, int]:
    if tcp is None:
        return dict.fromkeys(TCP_FIGURES, 0)
    return {
        "open": len(tcp.open),
        "rejected_total_cap": tcp.rejected,
        "rejected_per_client_cap": tcp.rejected_per_client,
        "denied": tcp.denied,
        "closed_idle": tcp.closed_idle,
        "closed_unread": tcp.closed_unread,
        "unsent_bytes": tcp.unsent(),
        "tls_handshake_failures": tcp.tls_handshake_failures,
    }


def _upstream(upstream: Mapping[str, Any]) -> dict[str, Any]:
    latencies = list(upstream.get("latencies_ms") or ())
    summary = {k: v for k, v in upstream.items() if k != "latencies_ms"}
    summary["latency_ms"] = {f"p{p}": percentile(latencies, p) for p in PERCENTILES}
    summary["latency_ms"]["samples"] = len(latencies)
    return summary
