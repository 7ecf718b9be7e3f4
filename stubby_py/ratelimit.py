"""Per-client rate limiting: a token bucket per client address, bounded in memory.

Each address may send `rate` queries per second on average, with bursts up to `burst`. The table
of buckets is bounded: when full, the least recently seen client is forgotten. A client that keeps
flooding is always among the most recently seen, so a flood of other addresses cannot empty its
bucket's record and let it through again (as clearing the whole table would).
"""

from __future__ import annotations

from collections import OrderedDict

MAX_CLIENTS = 65536


class RateLimiter:
    def __init__(self, rate: float, burst: float, max_clients: int = MAX_CLIENTS) -> None:
        self.rate = rate
        self.burst = max(burst, 1.0)
        self.max_clients = max(max_clients, 1)
        #: address → (tokens, time of last update), least recently seen first
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self.limited = 0

    def allows(self, address: str, now: float) -> bool:
        buckets = self._buckets
        bucket = buckets.get(address)
        if bucket is None:
            if len(buckets) >= self.max_clients:
                buckets.popitem(last=False)
            tokens = self.burst
        else:
            buckets.move_to_end(address)
            tokens, then = bucket
            tokens = min(self.burst, tokens + (now - then) * self.rate)
        if tokens < 1.0:
            buckets[address] = (tokens, now)
            self.limited += 1
            return False
        buckets[address] = (tokens - 1.0, now)
        return True

    def __len__(self) -> int:
        return len(self._buckets)
