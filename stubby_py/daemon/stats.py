"""Statistics: what `stubby-py stats` shows and the metrics endpoint exports, from one snapshot.

`collect` turns the runtime's snapshot (counters, cache, per-upstream figures) and the TCP
listener's counts into one JSON-ready mapping; commands/stats.py renders it for people.
Latency percentiles are over each upstream's recent answers (the pool's window, 64 answers);
the rolling figures (`windows`, `probe`: core/latency.py) come from `upstream_figures`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from stubby_py import __version__
from stubby_py.core.latency import percentile as ranked_percentile
from stubby_py.core.pool import UpstreamHealth

if TYPE_CHECKING:
    from stubby_py.daemon.runtime import Runtime
    from stubby_py.listeners.doq import DoQServer
    from stubby_py.listeners.plain import TCPConnections
    from stubby_py.transports.base import TransportStats

PERCENTILES = (50, 90, 99)


def percentile(samples: Sequence[float], pct: float) -> float | None:
    """The same percentile `stubby-py bench` reports (None without samples)."""
    if not samples:
        return None
    return ranked_percentile(sorted(samples), pct)


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


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


def upstream_figures(
    health: UpstreamHealth, transport: TransportStats, now: float, answered_in_group: int
) -> dict[str, Any]:
    """One upstream's rolling figures, probes and hedging accounts (JSON-ready; `now` on the
    event loop's clock).

    windows: the last 5 min, 1 h and 24 h of client attempts and background probes together:
    quantiles over the answers, failures by kind and outage seconds apart (core/latency.py).
    probe: the background probes alone over the last hour, with the latest full and resumed
    handshake times. share: this upstream's part of the client queries its group answered."""
    probe = health.probe_figures.summaries(now)["1h"]
    last = health.last_probe_at
    return {
        "probe": {
            "p50_ms": probe["p50_ms"],
            "p90_ms": probe["p90_ms"],
            "p99_ms": probe["p99_ms"],
            "samples": probe["samples"],
            "failures": probe["failures"],
            "last_ms": _ms(health.last_probe_s),
            "handshake_ms": _ms(transport.last_full_s),
            "resumed_ms": _ms(transport.last_resumed_s),
            "last_probe_age_s": None if last is None else round(max(0.0, now - last), 3),
        },
        "windows": health.figures.summaries(now),
        "hedged": health.hedged,
        "hedge_wins": health.hedge_wins,
        "answers": health.answers,
        "share": round(health.answers / answered_in_group, 4) if answered_in_group else 0.0,
        "resumptions": transport.resumptions,
        "histograms": {
            "latency": health.figures.total.as_dict(),
            "handshake": transport.full_handshakes.as_dict(),
            "resumed_handshake": transport.resumed_handshakes.as_dict(),
        },
    }
