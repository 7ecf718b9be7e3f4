"""Pool decisions with no network: strategies, health and backoff, probes, hedge timing."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from stubby_py.core.errors import UpstreamClosedError, UpstreamConnectError, UpstreamTimeoutError
from stubby_py.core.pool import Pool, PoolSettings


def pool(strategy: str = "failover", size: int = 3, **kw: object) -> Pool:
    return Pool(size, PoolSettings(strategy=strategy, **kw), rng=random.Random(7))  # type: ignore[arg-type]


def test_failover_prefers_the_first_healthy_upstream() -> None:
    p = pool()
    assert p.order(0.0) == [0, 1, 2]
    for _ in range(3):
        p.record_failure(0, 0.0)
    assert p.order(0.1) == [1, 2, 0]


def test_round_robin_rotates_over_healthy_upstreams() -> None:
    p = pool("round_robin")
    firsts = [p.order(0.0)[0] for _ in range(6)]
    assert firsts == [0, 1, 2, 0, 1, 2]


def test_fastest_converges_but_keeps_exploring() -> None:
    p = pool("fastest", explore=0.1)
    for index, latency in ((0, 0.040), (1, 0.005), (2, 0.020)):
        for _ in range(5):
            p.record_success(index, latency)
    firsts = Counter(p.order(0.0)[0] for _ in range(1000))
    assert firsts.most_common(1)[0][0] == 1
    assert 850 < firsts[1] < 980
    assert firsts[0] > 0 and firsts[2] > 0


def test_unmeasured_upstreams_are_tried_first_by_fastest() -> None:
    p = pool("fastest", explore=0.0)
    p.record_success(0, 0.010)
    assert p.order(0.0)[0] in (1, 2)


def test_parallel_fans_out() -> None:
    assert pool("parallel", fanout=2).fanout == 2
    assert pool("failover").fanout == 1


def test_down_after_consecutive_failures_with_exponential_backoff() -> None:
    p = pool(failures_to_down=2, backoff_min=1.0, backoff_max=8.0)
    p.record_failure(0, 0.0)
    assert p.health[0].state(0.0) == "up"
    p.record_failure(0, 0.0)
    first = p.health[0].down_until
    assert 0.5 <= first <= 1.0 and p.health[0].state(0.2) == "down"
    # the backoff ends: exactly one probe is allowed
    assert p.order(first)[:3] == [1, 2, 0]
    p.attempt_started(0, first)
    assert p.health[0].state(first) == "probing"
    p.record_failure(0, first)  # the probe failed: down again, twice as long
    assert 1.0 <= p.health[0].down_until - first <= 2.0
    now = p.health[0].down_until
    p.attempt_started(0, now)
    p.record_success(0, 0.01)
    assert p.health[0].state(now) == "up" and p.order(now)[0] == 0


def test_backoff_is_capped() -> None:
    p = pool(failures_to_down=1, backoff_min=1.0, backoff_max=4.0)
    now = 0.0
    for _ in range(10):
        p.attempt_started(0, now)
        p.record_failure(0, now)
        assert p.health[0].down_until - now <= 4.0
        now = p.health[0].down_until


def test_reset_forgets_backoff() -> None:
    p = pool(failures_to_down=1)
    p.record_failure(0, 0.0)
    p.reset()
    assert p.order(0.0) == [0, 1, 2]


@pytest.mark.parametrize(("latency", "expected"), [(0.001, 0.05), (0.2, 0.2), (5.0, 1.0)])
def test_hedge_delay_is_a_bounded_percentile(latency: float, expected: float) -> None:
    p = pool(hedge_min=0.05, hedge_max=1.0)
    assert p.hedge_delay(0) == 1.0  # too few samples: wait the longest
    for _ in range(20):
        p.record_success(0, latency)
    assert p.hedge_delay(0) == pytest.approx(expected)


def test_hedge_uses_the_percentile_of_recent_latencies() -> None:
    p = pool(hedge_percentile=90.0)
    for i in range(100):
        p.record_success(0, 0.010 if i % 10 else 0.300)
    delay = p.hedge_delay(0)
    assert delay is not None and 0.010 <= delay <= 0.300
    assert pool(hedge=False).hedge_delay(0) is None


# --- the one record of failures, and the connect hold -----------------------------------------


def test_every_failed_attempt_is_counted_once_by_kind() -> None:
    p = pool(size=1)
    p.attempt_started(0, now=0.0)
    p.record_error(0, UpstreamTimeoutError("up: timed out"), now=0.0)
    cut = UpstreamClosedError("up: connection closed")
    cut.after_answers = True
    p.attempt_started(0, now=0.0)
    p.record_error(0, cut, now=0.0)
    p.count_failure(0, "dnssec-bogus")
    health = p.health[0]
    assert health.attempts == 2 and health.failures == 3
    assert health.failure_kinds == {"timeout": 1, "connection-closed": 1, "dnssec-bogus": 1}
    assert health.consecutive_failures == 1  # the cut connection is no step towards down


def test_a_failed_connect_holds_further_connects_off() -> None:
    p = pool(size=1)
    refused = UpstreamConnectError("up: refused")
    refused.no_connection = True
    for _ in range(5):  # the queries that waited on the same connect: one hold
        p.record_error(0, refused, now=0.0)
    assert p.health[0].connect_failures == 1
    held = p.held_failure(0, now=0.01)
    assert isinstance(held, UpstreamConnectError) and str(held) == "up: refused (backing off)"
    assert not held.no_connection  # a held failure does not lengthen the hold
    assert p.held_failure(0, now=0.1) is None  # 0.05-0.1 s
    p.record_error(0, refused, now=0.1)
    assert p.health[0].connect_failures == 2 and p.held_failure(0, now=0.14) is not None
    assert p.held_failure(0, now=0.3) is None  # 0.1-0.2 s
    p.record_error(0, refused, now=0.3)
    p.reset()
    assert p.held_failure(0, now=0.31) is None
    p.record_error(0, refused, now=1.0)
    p.record_success(0, 0.01)
    assert p.held_failure(0, now=1.01) is None and p.health[0].connect_failures == 0


def test_the_connect_hold_grows_to_ten_seconds() -> None:
    p = pool(size=1)
    refused = UpstreamConnectError("up: refused")
    refused.no_connection = True
    now = 0.0
    for _ in range(12):
        p.record_error(0, refused, now)
        now = p.health[0].connect_held_until
    p.record_error(0, refused, now)
    assert 5.0 <= p.health[0].connect_held_until - now <= 10.0
