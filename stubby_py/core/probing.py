"""Background probing, the policy: which upstream is probed when, and with which name. Pure.

Every upstream of every group is probed about once per `probe_interval` seconds, each at its own
jittered time (±25 %), so probes neither come in bursts nor form a rhythm an observer could set a
clock by; the first probe of an upstream comes at a random point of its first interval, so a
daemon (re)started with many upstreams does not probe them all at once. The name comes from a
fixed built-in list of popular names, in turn: names any resolver has cached, and never one a
client asked for, so a probe tells an observer nothing about the user. At most MAX_IN_FLIGHT
probes run at once; an upstream whose probe could not start stays due and goes first next time.
"""

from __future__ import annotations

import random
from collections.abc import Hashable, Iterable

#: the names probes ask for (A), in turn: popular names, cached by every public resolver
PROBE_NAMES = (
    "google.com.",
    "youtube.com.",
    "facebook.com.",
    "wikipedia.org.",
    "amazon.com.",
    "apple.com.",
    "microsoft.com.",
    "cloudflare.com.",
    "github.com.",
    "netflix.com.",
    "instagram.com.",
    "linkedin.com.",
    "reddit.com.",
    "yahoo.com.",
    "bing.com.",
    "whatsapp.com.",
)
#: probes running at once, over all upstreams
MAX_IN_FLIGHT = 4
#: each interval is the configured one times a factor drawn from this range
JITTER = (0.75, 1.25)


class ProbeSchedule:
    """When each upstream (by a key the caller chooses) is next due for a probe."""

    def __init__(self, interval: float, rng: random.Random | None = None) -> None:
        self.interval = interval
        self._rng = rng or random.Random()
        self._next: dict[Hashable, float] = {}
        self._name = self._rng.randrange(len(PROBE_NAMES))

    def configure(self, interval: float) -> None:
        """A new interval (a reload): every upstream gets a new first time under it."""
        if interval != self.interval:
            self.interval = interval
            self._next.clear()

    def due(self, keys: Iterable[Hashable], now: float, room: int) -> list[Hashable]:
        """The upstreams to probe now (at most `room`, most overdue first). Keys not seen before
        get their first time; keys no longer given are forgotten."""
        if self.interval <= 0:
            return []
        known = self._next
        current = set()
        for key in keys:
            current.add(key)
            if key not in known:
                known[key] = now + self.interval * self._rng.uniform(0.1, 1.0)
        for gone in [key for key in known if key not in current]:
            del known[gone]
        ready = sorted((at, index) for index, (key, at) in enumerate(known.items()) if at <= now)
        keys_in_order = list(known)
        return [keys_in_order[index] for _, index in ready[: max(0, room)]]

    def started(self, key: Hashable, now: float) -> None:
        """A probe of `key` started: its next one is an interval (jittered) from now."""
        self._next[key] = now + self.interval * self._rng.uniform(*JITTER)

    def next_at(self) -> float | None:
        """When the next probe is due (None: nothing to probe)."""
        if self.interval <= 0 or not self._next:
            return None
        return min(self._next.values())

    def name(self) -> str:
        """The next name to ask for."""
        self._name = (self._name + 1) % len(PROBE_NAMES)
        return PROBE_NAMES[self._name]
