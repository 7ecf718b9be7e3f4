"""Upstream selection and health: decisions only, no I/O (the resolver does the awaiting).

Ordered failover: healthy upstreams in configured order, then those marked down, soonest-retry
first, so that a query is never refused while any upstream might answer. An upstream is marked
down after `FAILURES_TO_DOWN` consecutive failures and retried after an exponential backoff with
jitter.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

FAILURES_TO_DOWN = 3
FIRST_BACKOFF = 0.5
MAX_BACKOFF = 60.0
EWMA_WEIGHT = 0.2


@dataclass(slots=True)
class UpstreamHealth:
    consecutive_failures: int = 0
    down_until: float = 0.0
    latency_ewma: float | None = None

    def is_up(self, now: float) -> bool:
        return now >= self.down_until


class Pool:
    def __init__(self, size: int, rng: random.Random | None = None) -> None:
        self.health = [UpstreamHealth() for _ in range(size)]
        self._rng = rng or random.Random()

    def order(self, now: float) -> list[int]:
        up = [i for i, h in enumerate(self.health) if h.is_up(now)]
        down = sorted(
            (i for i, h in enumerate(self.health) if not h.is_up(now)),
            key=lambda i: self.health[i].down_until,
        )
        return up + down

    def record_success(self, index: int, latency: float) -> None:
        health = self.health[index]
        health.consecutive_failures = 0
        health.down_until = 0.0
        previous = health.latency_ewma
        health.latency_ewma = (
            latency if previous is None else previous + EWMA_WEIGHT * (latency - previous)
        )

    def record_failure(self, index: int, now: float) -> None:
        health = self.health[index]
        health.consecutive_failures += 1
        excess = health.consecutive_failures - FAILURES_TO_DOWN
        if excess >= 0:
            backoff = min(MAX_BACKOFF, FIRST_BACKOFF * 2**excess)
            health.down_until = now + backoff * self._rng.uniform(0.5, 1.0)
