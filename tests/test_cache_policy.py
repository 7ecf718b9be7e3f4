"""How the eviction policy was chosen: LRU, CLOCK, SIEVE and S3-FIFO on synthetic DNS traces.

Run the full comparison (about a minute) with ``python -m tests.test_cache_policy``; it prints the
hit ratio of each policy on each trace and the cost of each policy's bookkeeping per request.
Traces are Zipf popularity (what resolver query logs show, exponent 0.8-1.0) over a large name
space, alone and mixed with a random-name flood (water torture: every name new, never asked again)
or with periodic scans. The pytest part re-runs a small trace to keep the conclusion honest.
"""

from __future__ import annotations

import itertools
import random
import sys
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator

import dns.message
import dns.rrset

from stubby_py.core import wire
from stubby_py.core.cache import Cache, CacheLimits

# --------------------------------------------------------------------------- the candidates


class LRU:
    name = "LRU"

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.d: OrderedDict[object, bool] = OrderedDict()

    def request(self, key: object) -> bool:
        d = self.d
        if key in d:
            d.move_to_end(key)
            return True
        d[key] = True
        if len(d) > self.capacity:
            d.popitem(last=False)
        return False


class Clock:
    """FIFO with reinsertion (second chance): hit sets a bit; eviction moves bitted entries back."""

    name = "CLOCK"

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.d: OrderedDict[object, list[bool]] = OrderedDict()

    def request(self, key: object) -> bool:
        d = self.d
        slot = d.get(key)
        if slot is not None:
            slot[0] = True
            return True
        while len(d) >= self.capacity:
            old, bit = d.popitem(last=False)
            if bit[0]:
                bit[0] = False
                d[old] = bit
        d[key] = [False]
        return False


class _Node:
    __slots__ = ("key", "visited")

    def __init__(self, key: object) -> None:
        self.key = key
        self.visited = False


class Sieve:
    """SIEVE (Zhang et al., NSDI 2024): FIFO order, a hand that skips visited entries in place."""

    name = "SIEVE"

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.d: dict[object, _Node] = {}
        self.slots: list[_Node | None] = []
        self.hand = 0
        self.holes = 0

    def request(self, key: object) -> bool:
        node = self.d.get(key)
        if node is not None:
            node.visited = True
            return True
        if len(self.d) >= self.capacity:
            self._evict()
        node = _Node(key)
        self.d[key] = node
        self.slots.append(node)
        return False

    def _evict(self) -> None:
        slots = self.slots
        i = self.hand
        while True:
            if i >= len(slots):
                i = 0
            node = slots[i]
            if node is None:
                i += 1
            elif node.visited:
                node.visited = False
                i += 1
            else:
                break
        slots[i] = None
        del self.d[node.key]
        self.hand = i + 1
        self.holes += 1
        if self.holes * 2 > len(slots):
            before = sum(1 for s in slots[: self.hand] if s is not None)
            self.slots = [s for s in slots if s is not None]
            self.hand = before
            self.holes = 0


class _S3Node:
    __slots__ = ("freq", "key")

    def __init__(self, key: object) -> None:
        self.key = key
        self.freq = 0


class S3FIFO:
    """S3-FIFO (Yang et al., SOSP 2023): small FIFO (10%), main FIFO, ghost of recent evictions."""

    name = "S3-FIFO"

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.small_cap = max(1, capacity // 10)
        self.d: dict[object, _S3Node] = {}
        self.small: deque[_S3Node] = deque()
        self.main: deque[_S3Node] = deque()
        self.ghost: OrderedDict[object, None] = OrderedDict()

    def request(self, key: object) -> bool:
        node = self.d.get(key)
        if node is not None:
            if node.freq < 3:
                node.freq += 1
            return True
        while len(self.d) >= self.capacity:
            self._evict()
        node = _S3Node(key)
        self.d[key] = node
        if key in self.ghost:
            del self.ghost[key]
            self.main.append(node)
        else:
            self.small.append(node)
        return False

    def _evict(self) -> None:
        if len(self.small) >= self.small_cap:
            node = self.small.popleft()
            if node.freq > 1:
                node.freq = 0
                self.main.append(node)
                return
            del self.d[node.key]
            self.ghost[node.key] = None
            if len(self.ghost) > self.capacity - self.small_cap:
                self.ghost.popitem(last=False)
            return
        while True:
            node = self.main.popleft()
            if node.freq:
                node.freq -= 1
                self.main.append(node)
            else:
                del self.d[node.key]
                return


class CacheUnderTest:
    """The real core.cache.Cache, fed one small answer per miss (its bookkeeping included)."""

    name = "cache.py"

    def __init__(self, capacity: int) -> None:
        self.cache = Cache(CacheLimits(max_entries=capacity, max_bytes=1 << 40, prefetch=False))
        self.now = 1000.0
        query = dns.message.make_query("www.example.", "A")
        reply = dns.message.make_response(query)
        reply.answer.append(dns.rrset.from_text("www.example.", 300, "IN", "A", "192.0.2.1"))
        self.body = reply.to_wire()
        self.offsets = wire.scan_reply(self.body).ttl_offsets

    def request(self, key: object) -> bool:
        assert isinstance(key, int)
        wire_key = key.to_bytes(8, "big") + b"\x00\x01\x00\x01\x00"
        if self.cache.fresh(wire_key, self.now) is not None:
            return True
        self.cache.store_body(wire_key, self.body, self.offsets, 300, self.now)
        return False


POLICIES: tuple[Callable[[int], object], ...] = (LRU, Clock, Sieve, S3FIFO)

# --------------------------------------------------------------------------- the traces


def zipf_trace(rng: random.Random, names: int, alpha: float, length: int) -> list[int]:
    weights = list(itertools.accumulate(1.0 / (rank**alpha) for rank in range(1, names + 1)))
    return rng.choices(range(names), cum_weights=weights, k=length)


def with_flood(rng: random.Random, trace: list[int], share: float) -> list[int]:
    """Replace `share` of the requests by names never seen before or after (random subdomains)."""
    fresh = itertools.count(10**12)
    return [next(fresh) if rng.random() < share else key for key in trace]


def with_scans(trace: list[int], every: int, scan: int) -> list[int]:
    """Every `every` requests, a burst of `scan` one-off names (a crawler, a mail server's RBLs)."""
    fresh = itertools.count(10**13)
    out: list[int] = []
    for index, key in enumerate(trace):
        if index and index % every == 0:
            out.extend(itertools.islice(fresh, scan))
        out.append(key)
    return out


def traces(scale: int, seed: int = 5) -> Iterator[tuple[str, list[int]]]:
    rng = random.Random(seed)
    names = 10 * scale
    length = 50 * scale
    base = zipf_trace(rng, names, 0.9, length)
    yield "zipf 0.9", base
    yield "zipf 0.7", zipf_trace(rng, names, 0.7, length)
    yield "zipf 1.1", zipf_trace(rng, names, 1.1, length)
    yield "zipf 0.9 + 50% flood", with_flood(rng, base, 0.5)
    yield "zipf 0.9 + 90% flood", with_flood(rng, base, 0.9)
    yield "zipf 0.9 + scans", with_scans(base, 5 * scale, 2 * scale)


def hit_ratio(policy: Callable[[int], object], capacity: int, trace: Iterable[int]) -> float:
    cache = policy(capacity)
    request = cache.request  # type: ignore[attr-defined]
    hits = sum(1 for key in trace if request(key))
    return hits / len(trace)  # type: ignore[arg-type]


def cost_ns(policy: Callable[[int], object], capacity: int, trace: list[int]) -> float:
    cache = policy(capacity)
    request = cache.request  # type: ignore[attr-defined]
    start = time.perf_counter()
    for key in trace:
        request(key)
    return (time.perf_counter() - start) / len(trace) * 1e9


def main(scale: int = 10_000) -> None:
    capacities = (scale // 10, scale)  # 1% and 10% of the name space
    print(f"names {10 * scale:,}, requests per trace {50 * scale:,} (before any flood)")
    for capacity in capacities:
        print(f"\ncapacity {capacity:,}: hit ratio")
        print(f"{'trace':24}" + "".join(f"{p.__name__:>9}" for p in POLICIES))
        for label, trace in traces(scale):
            row = "".join(f"{hit_ratio(p, capacity, trace):9.4f}" for p in POLICIES)
            print(f"{label:24}{row}")
    print("\nbookkeeping cost, ns per request (zipf 0.9 + 50% flood, capacity 10%)")
    trace = dict(traces(scale))["zipf 0.9 + 50% flood"]
    for policy in (*POLICIES, CacheUnderTest):
        print(f"{policy.__name__:10}{cost_ns(policy, scale, trace):8.0f}")


# --------------------------------------------------------------------------- the guard


def test_chosen_policy_resists_a_flood_better_than_lru() -> None:
    """SIEVE (what cache.py implements) keeps popular names through a random-name flood."""
    scale = 2_000
    found = dict(traces(scale, seed=11))
    for label in ("zipf 0.9", "zipf 0.9 + 50% flood", "zipf 0.9 + scans"):
        trace = found[label]
        lru = hit_ratio(LRU, scale, trace)
        sieve = hit_ratio(Sieve, scale, trace)
        real = hit_ratio(CacheUnderTest, scale, trace)
        assert sieve >= lru, label
        assert real == sieve, (label, real, sieve)  # cache.py is SIEVE, decision for decision


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 10_000)
