"""The per-client token bucket, with an injected clock."""

from __future__ import annotations

from stubby_py.core.ratelimit import RateLimiter


def test_burst_then_rate() -> None:
    limiter = RateLimiter(rate=10, burst=5)
    assert [limiter.allows("a", 0.0) for _ in range(7)] == [True] * 5 + [False] * 2
    assert limiter.limited == 2
    assert limiter.allows("a", 0.1)  # one token back after 1/rate seconds
    assert not limiter.allows("a", 0.1)
    assert all(limiter.allows("a", 10.0 + i / 10) for i in range(20))  # at the rate: never limited


def test_clients_are_limited_separately() -> None:
    limiter = RateLimiter(rate=1, burst=1)
    assert limiter.allows("a", 0.0) and not limiter.allows("a", 0.0)
    assert limiter.allows("b", 0.0)


def test_memory_is_bounded_under_a_flood_of_addresses() -> None:
    limiter = RateLimiter(rate=100, burst=10, max_clients=1000)
    for i in range(100_000):
        assert limiter.allows(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", i / 1e6)
    assert len(limiter) <= 1000


def test_a_flood_of_other_addresses_does_not_reset_a_limited_client() -> None:
    limiter = RateLimiter(rate=1, burst=5, max_clients=100)
    assert [limiter.allows("flooder", 0.0) for _ in range(6)] == [True] * 5 + [False]
    for i in range(1000):  # the table fills up ten times over while the flooder keeps sending
        now = i / 1000
        assert limiter.allows(f"10.0.{i >> 8}.{i & 255}", now)
        assert not limiter.allows("flooder", now)
    assert len(limiter) <= 100
    # the oldest entries went: the first of the others starts again with a full bucket
    assert limiter.allows("10.0.0.0", 1.0)
