"""Rate-limited log lines: a failing upstream or a broken zone must not flood the journal.

Sans-IO: the caller passes `now`. Each key (an upstream and a failure class, say) may log once
per interval; what was held back in between is counted and said with the next line.
"""

from __future__ import annotations

from collections.abc import Hashable

#: keys remembered at most (the oldest go first)
MAX_KEYS = 1024


class LogThrottle:
    def __init__(self, interval: float = 60.0) -> None:
        self.interval = interval
        #: key -> (when it last logged, lines held back since)
        self._keys: dict[Hashable, tuple[float, int]] = {}

    def allow(self, key: Hashable, now: float) -> int | None:
        """None: hold this line back. Else: log it, with this many held back since the last."""
        seen = self._keys.get(key)
        if seen is not None and now - seen[0] < self.interval:
            self._keys[key] = (seen[0], seen[1] + 1)
            return None
        if seen is None and len(self._keys) >= MAX_KEYS:
            del self._keys[next(iter(self._keys))]  # the one that logged longest ago
        self._keys.pop(key, None)  # to the end: the oldest line is the first to go
        self._keys[key] = (now, 0)
        return seen[1] if seen is not None else 0
