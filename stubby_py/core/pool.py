"""Upstream selection, health and hedge timing: decisions only, no I/O (the resolver awaits).

Strategies (small objects, as dnscrypt-proxy's LBStrategy):
- failover: the first healthy upstream in configured order;
- round_robin: healthy upstreams in turn;
- fastest: lowest latency EWMA, with a small share of queries exploring the others;
- parallel: the `fanout` best (by latency) at once, the first valid answer wins.

Health: `failures_to_down` consecutive failures mark an upstream down for an exponential backoff
with jitter; when the backoff ends it gets a single probe query, and takes traffic again only
when that probe succeeds. Upstreams that are down come last in every order, so a query is never
refused while any upstream might answer.

Connecting: an upstream that could not be connected to (`record_unreachable`: refused, TLS
failed, no address) is not asked to connect again for a short backoff of its own (0.1 s doubling
up to 10 s, with jitter), whatever its health: meanwhile its attempts fail at once with the held
failure (`held_failure`), so the queries of a busy client do not each open a connection to an
upstream that is not there. The transports keep no backoff of their own.

Failures: every failed attempt is counted here, by kind (`UpstreamHealth.failure_kinds`): this
is the record the stats show.

Background probes (daemon/probing.py) inform health without hiding a failure: a probe's answer
is no way back for an upstream that is down (only the pool's own probe query brings it back, as
above), while for an upstream that is up it counts as an answer would (the failures in a row
start again, the latency estimate takes it in); a probe's failure counts towards marking an up
upstream down, as a query's would (so an idle upstream that stopped answering is known down
before a client waits on it), and changes nothing for one already down (its backoff is not made
longer). Probes are not counted among the attempts and failures (`stats`: client queries).

Hedging: if the upstream asked first has not answered within a percentile of its own recent
latencies (bounded below and above), the resolver asks the next one too.
"""

from __future__ import annotations

import enum
import random
from collections import deque
from dataclasses import dataclass, field
from typing import Protocol

from stubby_py.core.errors import UpstreamClosedError, UpstreamError
from stubby_py.core.latency import WINDOWS, Figures

EWMA_WEIGHT = 0.2
LATENCY_WINDOW = 64
#: latencies needed before a percentile means anything; until then the hedge waits `hedge_max`
MIN_SAMPLES = 8
#: the hold after connects that failed in a row: FIRST, doubling up to MAX (with jitter)
FIRST_CONNECT_BACKOFF = 0.1
MAX_CONNECT_BACKOFF = 10.0


class PoolStrategy(enum.StrEnum):
    """How the pool orders upstreams (the `strategy` option)."""

    FAILOVER = "failover"
    ROUND_ROBIN = "round_robin"
    FASTEST = "fastest"
    PARALLEL = "parallel"


@dataclass(frozen=True, slots=True)
class PoolSettings:
    """The pool's policy knobs, and the configuration's `pool` section."""

    strategy: PoolStrategy = PoolStrategy.FAILOVER
    #: parallel: how many upstreams to ask at once
    fanout: int = 2
    #: fastest: share of queries sent to a random healthy upstream to keep estimates fresh
    explore: float = 0.05
    failures_to_down: int = 3
    backoff_min: float = 0.5
    backoff_max: float = 60.0
    hedge: bool = True
    hedge_percentile: float = 90.0
    hedge_min: float = 0.05
    hedge_max: float = 1.0
    #: seconds between background probes of each upstream (daemon/probing.py); 0: none
    probe_interval: float = 60.0


@dataclass(slots=True)
class UpstreamHealth:
    consecutive_failures: int = 0
    #: how many times in a row it was marked down (drives the backoff)
    downs: int = 0
    down_until: float = 0.0
    probing: bool = False
    latency_ewma: float | None = None
    latencies: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_WINDOW))
    #: attempts started (asked, or failed at once while connects are held off)
    attempts: int = 0
    successes: int = 0
    #: failed attempts, in all and by kind (errors.UpstreamError.kind)
    failures: int = 0
    failure_kinds: dict[str, int] = field(default_factory=dict)
    #: connects that failed in a row, the latest failure, and until when no connect may go
    connect_failures: int = 0
    connect_error: UpstreamError | None = None
    connect_held_until: float = 0.0
    #: rolling figures from client attempts and probes together, outages apart (latency.py)
    figures: Figures = field(default_factory=Figures)
    #: the background probes' own figures (daemon/probing.py), over the last hour
    probe_figures: Figures = field(default_factory=lambda: Figures({"1h": WINDOWS["1h"]}))
    last_probe_at: float | None = None
    last_probe_s: float | None = None
    #: attempts started as a hedge (the one before had not answered in time), hedges whose
    #: answer was taken, and client queries whose answer came from this upstream
    hedged: int = 0
    hedge_wins: int = 0
    answers: int = 0

    @property
    def unavailable(self) -> bool:
        """Down, or not connectable (until an attempt succeeds): outage time (latency.py)."""
        return self.downs > 0 or self.connect_error is not None

    def count_failure(self, kind: str) -> None:
        self.failures += 1
        self.failure_kinds[kind] = self.failure_kinds.get(kind, 0) + 1

    @property
    def is_down(self) -> bool:
        return self.downs > 0

    def state(self, now: float) -> str:
        if not self.is_down:
            return "up"
        return "probing" if self.probing or now >= self.down_until else "down"


class Strategy(Protocol):
    def order(self, healthy: list[int], health: list[UpstreamHealth]) -> list[int]: ...


class FailoverStrategy:
    def order(self, healthy: list[int], health: list[UpstreamHealth]) -> list[int]:
        return healthy


class RoundRobinStrategy:
    def __init__(self) -> None:
        self._next = 0

    def order(self, healthy: list[int], health: list[UpstreamHealth]) -> list[int]:
        if not healthy:
            return healthy
        start = self._next % len(healthy)
        self._next += 1
        return healthy[start:] + healthy[:start]


class FastestStrategy:
    def __init__(self, explore: float, rng: random.Random) -> None:
        self._explore = explore
        self._rng = rng

    def order(self, healthy: list[int], health: list[UpstreamHealth]) -> list[int]:
        # never-measured upstreams first (latency 0), so every upstream gets measured
        ranked = sorted(healthy, key=lambda i: health[i].latency_ewma or 0.0)
        if len(ranked) > 1 and self._rng.random() < self._explore:
            pick = self._rng.randrange(1, len(ranked))
            ranked.insert(0, ranked.pop(pick))
        return ranked


def make_strategy(settings: PoolSettings, rng: random.Random) -> Strategy:
    if settings.strategy == "round_robin":
        return RoundRobinStrategy()
    if settings.strategy in ("fastest", "parallel"):
        return FastestStrategy(settings.explore if settings.strategy == "fastest" else 0.0, rng)
    return FailoverStrategy()


class Pool:
    def __init__(
        self, size: int, settings: PoolSettings | None = None, rng: random.Random | None = None
    ) -> None:
        self.settings = settings or PoolSettings()
        self.health = [UpstreamHealth() for _ in range(size)]
        self._rng = rng or random.Random()
        self._strategy = make_strategy(self.settings, self._rng)
        #: no upstream can be due for a probe before this time
        self._next_probe_at = float("inf")
        self._everyone = list(range(size))

    @property
    def fanout(self) -> int:
        """How many upstreams to ask at once at the start of a query."""
        return self.settings.fanout if self.settings.strategy == "parallel" else 1

    def order(self, now: float) -> list[int]:
        """Upstreams to try for one query, best first: healthy ones by strategy, then one probe
        for each upstream whose backoff has ended, then the rest of those that are down."""
        if self._next_probe_at == float("inf") and not self._any_down():
            return self._strategy.order(self._everyone, self.health)
        healthy = [i for i, h in enumerate(self.health) if not h.is_down]
        due = [
            i
            for i, h in enumerate(self.health)
            if h.is_down and not h.probing and now >= h.down_until
        ]
        waiting = sorted(
            (i for i, h in enumerate(self.health) if h.is_down and i not in due),
            key=lambda i: self.health[i].down_until,
        )
        return self._strategy.order(healthy, self.health) + due + waiting

    def _any_down(self) -> bool:
        return any(h.downs for h in self.health)

    def take_probes(self, now: float) -> list[int]:
        """Upstreams whose backoff has ended: each gets one probe query (sent aside by the
        caller, so no client waits on it), and is marked as probing until it returns."""
        if now < self._next_probe_at:
            return []
        due = [
            i
            for i, h in enumerate(self.health)
            if h.is_down and not h.probing and now >= h.down_until
        ]
        for index in due:
            self.health[index].probing = True
        waiting = [h.down_until for h in self.health if h.is_down and not h.probing]
        self._next_probe_at = min(waiting, default=float("inf"))
        return due

    def attempt_started(self, index: int, now: float) -> None:
        health = self.health[index]
        health.attempts += 1
        if health.is_down and now >= health.down_until:
            health.probing = True

    def record_success(self, index: int, latency: float) -> None:
        health = self.health[index]
        health.successes += 1
        if health.connect_error is not None:
            health.connect_failures = 0
            health.connect_error = None
            health.connect_held_until = 0.0
        health.consecutive_failures = 0
        health.downs = 0
        health.down_until = 0.0
        health.probing = False
        previous = health.latency_ewma
        health.latency_ewma = (
            latency if previous is None else previous + EWMA_WEIGHT * (latency - previous)
        )
        health.latencies.append(latency)

    def record_overtaken(self, index: int, elapsed: float) -> None:
        """An attempt a hedge overtook was cancelled after `elapsed` seconds: it would have
        taken at least that long. Taken into the latency estimate and the hedge window as that,
        so a stalling upstream loses its place under `fastest` (and its hedges come sooner);
        no failure, no change of health."""
        health = self.health[index]
        previous = health.latency_ewma
        health.latency_ewma = (
            elapsed if previous is None else previous + EWMA_WEIGHT * (elapsed - previous)
        )
        health.latencies.append(elapsed)

    def record_probe_success(self, index: int, latency: float) -> None:
        """A background probe was answered: see the module docstring."""
        health = self.health[index]
        if health.is_down:
            return
        health.consecutive_failures = 0
        health.connect_failures = 0
        health.connect_error = None
        health.connect_held_until = 0.0
        previous = health.latency_ewma
        health.latency_ewma = (
            latency if previous is None else previous + EWMA_WEIGHT * (latency - previous)
        )

    def record_probe_failure(self, index: int, error: UpstreamError, now: float) -> None:
        """A background probe failed: see the module docstring."""
        health = self.health[index]
        if health.is_down or (isinstance(error, UpstreamClosedError) and error.after_answers):
            return
        self._count_towards_down(index, now)
        if error.no_connection:
            self.record_unreachable(index, error, now)

    def record_failure(self, index: int, now: float, kind: str = UpstreamError.kind) -> None:
        self.health[index].count_failure(kind)
        self._count_towards_down(index, now)

    def _count_towards_down(self, index: int, now: float) -> None:
        health = self.health[index]
        health.consecutive_failures += 1
        was_probing = health.probing
        health.probing = False
        if was_probing or health.consecutive_failures >= self.settings.failures_to_down:
            if not was_probing and health.is_down and now < health.down_until:
                return  # already backing off: a late failure does not lengthen it
            health.downs += 1
            backoff = min(
                self.settings.backoff_max, self.settings.backoff_min * 2 ** (health.downs - 1)
            )
            health.down_until = now + backoff * self._rng.uniform(0.5, 1.0)
            self._next_probe_at = min(self._next_probe_at, health.down_until)

    def record_error(self, index: int, error: UpstreamError, now: float) -> None:
        """An attempt failed: counted by kind, and then as its error says."""
        if isinstance(error, UpstreamClosedError) and error.after_answers:
            # a working connection was cut under the query (and resending it did not fit in
            # the deadline): the upstream answers, so this is no step towards marking it down
            self.record_interrupted(index, error.kind)
            return
        self.record_failure(index, now, error.kind)
        if error.no_connection:
            self.record_unreachable(index, error, now)

    def record_interrupted(self, index: int, kind: str = UpstreamError.kind) -> None:
        """The attempt ended with a working connection cut under it: neither an answer nor a
        sign the upstream is down. Only a probe it was is over (the next one may go)."""
        health = self.health[index]
        health.count_failure(kind)
        health.probing = False

    def count_failure(self, index: int, kind: str) -> None:
        """A failure that is no attempt's (an answer found bogus later): counted, no more."""
        self.health[index].count_failure(kind)

    def record_unreachable(self, index: int, error: UpstreamError, now: float) -> None:
        """No connection could be made: hold further connects off. The queries that waited
        on the same connect all learn of it at once: only the first starts a hold."""
        health = self.health[index]
        if now < health.connect_held_until:
            return
        health.connect_failures += 1
        health.connect_error = error
        backoff = FIRST_CONNECT_BACKOFF * 2 ** (health.connect_failures - 1)
        backoff = min(MAX_CONNECT_BACKOFF, backoff)
        health.connect_held_until = now + backoff * self._rng.uniform(0.5, 1.0)

    def held_failure(self, index: int, now: float) -> UpstreamError | None:
        """The failure an attempt on this upstream ends in at once, without connecting, while
        connects to it are held off (None: it may be asked)."""
        health = self.health[index]
        error = health.connect_error
        if error is None or now >= health.connect_held_until:
            return None
        return type(error)(f"{error} (backing off)")

    def reset(self) -> None:
        """Forget every backoff (network change, resume): re-probe everything at once, and
        connect again at the next query."""
        for health in self.health:
            health.consecutive_failures = 0
            health.downs = 0
            health.down_until = 0.0
            health.probing = False
            health.connect_failures = 0
            health.connect_error = None
            health.connect_held_until = 0.0

    def hedge_delay(self, index: int) -> float | None:
        """How long to wait for `index` before asking the next upstream too (None: never)."""
        settings = self.settings
        if not settings.hedge:
            return None
        samples = self.health[index].latencies
        if len(samples) < MIN_SAMPLES:
            return settings.hedge_max
        ranked = sorted(samples)
        rank = min(len(ranked) - 1, int(len(ranked) * settings.hedge_percentile / 100))
        return min(settings.hedge_max, max(settings.hedge_min, ranked[rank]))
