"""Per-client rate limiting: a token bucket per client address, bounded in memory.

Each address may send `rate` queries per second on average, with bursts up to `burst`. The table
of buckets is bounded: when full, buckets that have refilled completely (idle clients) are dropped,
and if that frees nothing the table is cleared, which can only let clients through, never block.
"""

from __future__ import annotations

MAX_CLIENTS = 65536


class RateLimiter:
    def __init__(self, rate: float, burst: float, max_clients: int = MAX_CLIENTS) -> None:
        self.rate = rate
        self.burst = max(burst, 1.0)
        self.max_clients = max_clients
        #: address → (tokens, time of last update)
        self._buckets: dict[str, tuple[float, float]] = {}
        self.limited = 0

    def allows(self, address: str, now: float) -> bool:
        bucket = self._buckets.get(address)
        if bucket is None:
            if len(self._buckets) >= self.max_clients:
                self._make_room(now)
            tokens = self.burst
        else:
            tokens, then = bucket
            tokens = min(self.burst, tokens + (now - then) * self.rate)
        if tokens < 1.0:
            self._buckets[address] = (tokens, now)
            self.limited += 1
            return False
        self._buckets[address] = (tokens - 1.0, now)
        return True

    def _make_room(self, now: float) -> None:
        full_after = self.burst / self.rate if self.rate > 0 else float("inf")
        idle = [a for a, (_, then) in self._buckets.items() if now - then >= full_after]
        for address in idle:
            del self._buckets[address]
        if len(self._buckets) >= self.max_clients:
            self._buckets.clear()

    def __len__(self) -> int:
        return len(self._buckets)
