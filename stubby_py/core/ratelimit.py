"""Per-client rate limiting: a token bucket per client, bounded in memory.

A client is an IPv4 address, or the IPv6 network of `ipv6_prefix` bits (a /64 by default) that
holds the address: one host commonly has a whole /64 to pick addresses from (`client_key`).

Each client may send `rate` queries per second on average, with bursts up to `burst`. The table
of buckets is bounded: when full, the least recently seen client is forgotten. A client that keeps
flooding is always among the most recently seen, so a flood of other addresses cannot empty its
bucket's record and let it through again (as clearing the whole table would).
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict

MAX_CLIENTS = 65536
#: IPv6 address → client_key, remembered (cleared when full: it is only a shortcut)
KEY_CACHE_LIMIT = 4096


def client_key(address: str, ipv6_prefix: int) -> str:
    """Whom a query or connection counts against: an IPv4 address, or the IPv6 network of
    `ipv6_prefix` bits that holds the address (a host commonly has a whole /64 to pick from)."""
    if ":" not in address:
        return address
    try:
        ip = ipaddress.IPv6Address(address.partition("%")[0])
    except ValueError:
        return address
    if ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    if ipv6_prefix >= 128:
        return str(ip)
    return str(ipaddress.IPv6Network((ip, ipv6_prefix), strict=False))


class RateLimiter:
    def __init__(
        self, rate: float, burst: float, max_clients: int = MAX_CLIENTS, ipv6_prefix: int = 64
    ) -> None:
        self.rate = rate
        self.burst = max(burst, 1.0)
        self.max_clients = max(max_clients, 1)
        self.ipv6_prefix = ipv6_prefix
        self._ipv6_keys: dict[str, str] = {}
        #: client_key → (tokens, time of last update), least recently seen first
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self.limited = 0

    def allows(self, address: str, now: float) -> bool:
        if ":" in address:
            address = self._ipv6_key(address)
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

    def _ipv6_key(self, address: str) -> str:
        key = self._ipv6_keys.get(address)
        if key is None:
            key = client_key(address, self.ipv6_prefix)
            if len(self._ipv6_keys) >= KEY_CACHE_LIMIT:
                self._ipv6_keys.clear()
            self._ipv6_keys[address] = key
        return key

    def __len__(self) -> int:
        return len(self._buckets)
