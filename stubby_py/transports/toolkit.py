"""What every connection is built from, upstream (transports) and client side (listeners) alike.

- FrameReader: 2-octet length-prefixed DNS messages out of a byte stream (RFC 1035 §4.2.2,
  RFC 7766 §8), sans-IO: feed bytes, take messages.
- IdleTimer: a periodic check on the event loop's clock, for idle and stall timeouts.
- Exchanges: the queries in flight on one connection (a message ID or stream → waiter), each
  with its deadline timer on the loop's clock.
- ConnectionLinks: what a connection tells its owner and asks of it, as callbacks given at
  construction (a connection holds no reference to its owner transport).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from stubby_py.core import wire
from stubby_py.core.errors import UpstreamError, UpstreamTimeoutError


class FrameReader:
    """Length-prefixed messages out of a stream: `feed` what was received, then take
    `next_message()` until it says None (a message not complete yet stays buffered)."""

    __slots__ = ("_buffer", "_pos")

    def __init__(self) -> None:
        self._buffer = bytearray()
        #: where the next message starts: taken messages are dropped at the next feed
        self._pos = 0

    def feed(self, data: bytes) -> None:
        if self._pos:
            del self._buffer[: self._pos]
            self._pos = 0
        self._buffer += data

    def next_message(self) -> bytes | None:
        buffer = self._buffer
        pos = self._pos
        available = len(buffer) - pos
        if available < 2:
            return None
        size = (buffer[pos] << 8) | buffer[pos + 1]
        if available - 2 < size:
            return None
        end = pos + 2 + size
        message = bytes(buffer[pos + 2 : end])
        if end == len(buffer):
            buffer.clear()
            self._pos = 0
        else:
            self._pos = end
        return message

    def has_message(self) -> bool:
        """Whether a whole message is buffered (next_message would return it)."""
        buffer = self._buffer
        pos = self._pos
        available = len(buffer) - pos
        return available >= 2 and available - 2 >= ((buffer[pos] << 8) | buffer[pos + 1])

    def buffered(self) -> int:
        """Octets received and not yet taken."""
        return len(self._buffer) - self._pos

    def clear(self) -> None:
        self._buffer.clear()
        self._pos = 0


class IdleTimer:
    """Calls `check(now)` every `interval` seconds (the event loop's clock) while `check`
    returns True; `check` decides whether the connection is idle and closes it if so.

    `touch()` marks activity; `last_activity` is when it was last marked."""

    __slots__ = ("_check", "_handle", "_loop", "interval", "last_activity")

    def __init__(
        self, loop: asyncio.AbstractEventLoop, interval: float, check: Callable[[float], bool]
    ) -> None:
        self._loop = loop
        self._check = check
        self._handle: asyncio.TimerHandle | None = None
        self.interval = interval
        self.last_activity = loop.time()

    def touch(self) -> None:
        self.last_activity = self._loop.time()

    def idle_for(self, now: float) -> float:
        return now - self.last_activity

    def start(self) -> None:
        self.cancel()
        self._handle = self._loop.call_later(self.interval, self._fire)

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _fire(self) -> None:
        self._handle = None
        if self._check(self._loop.time()):
            self._handle = self._loop.call_later(self.interval, self._fire)


class Waiter:
    """One query in flight: the caller's future, its question and its deadline timer."""

    __slots__ = ("future", "question", "sent_at", "sent_at_bytes", "timer")

    def __init__(self, future: asyncio.Future[bytes], query: bytes, sent_at_bytes: int) -> None:
        self.future = future
        #: the question section of the query, to check the reply against
        self.question = query[wire.HEADER_LEN : wire.question_end(query)]
        #: how many bytes the connection had received when this query went out
        self.sent_at_bytes = sent_at_bytes
        #: when it went out (the event loop's clock; set by Exchanges.add)
        self.sent_at = 0.0
        self.timer: asyncio.TimerHandle | None = None


W = TypeVar("W", bound=Waiter)


class Exchanges(Generic[W]):
    """The queries in flight on one connection, by key (a message ID, a stream ID or a request
    number).

    A waiter leaves the map when it is answered, fails, expires or is forgotten; `on_expired` is
    told about expiries so that the connection can cancel the stream and check for a stall.
    """

    def __init__(self, label: str, on_expired: Callable[[int, W], None]) -> None:
        self._loop = asyncio.get_running_loop()
        self._label = label
        self._on_expired = on_expired
        self._waiters: dict[int, W] = {}
        #: replies delivered to their waiters
        self.answered = 0

    def __len__(self) -> int:
        return len(self._waiters)

    def __contains__(self, key: int) -> bool:
        return key in self._waiters

    def add(self, key: int, waiter: W, deadline: float) -> None:
        waiter.sent_at = self._loop.time()
        waiter.timer = self._loop.call_at(deadline, self._expire, key)
        self._waiters[key] = waiter

    def oldest(self) -> W | None:
        """The query waiting longest (the map keeps the order they went out in)."""
        return next(iter(self._waiters.values()), None)

    def get(self, key: int) -> W | None:
        return self._waiters.get(key)

    def keys(self) -> list[int]:
        return list(self._waiters)

    def discard(self, key: int) -> W | None:
        """Take a waiter out without settling it (the caller gave up on it)."""
        waiter = self._waiters.pop(key, None)
        if waiter is not None and waiter.timer is not None:
            waiter.timer.cancel()
        return waiter

    def forget(self, key: int, future: asyncio.Future[bytes]) -> W | None:
        """discard(), but only if the key still serves this very future (a message ID may be
        reused by a newer query once the older one is gone)."""
        waiter = self._waiters.get(key)
        if waiter is None or waiter.future is not future:
            return None
        return self.discard(key)

    def resolve(self, key: int, reply: bytes) -> None:
        waiter = self.discard(key)
        if waiter is not None and not waiter.future.done():
            waiter.future.set_result(reply)
            self.answered += 1

    def reject(self, key: int, error: UpstreamError) -> None:
        waiter = self.discard(key)
        if waiter is not None and not waiter.future.done():
            waiter.future.set_exception(error)

    def fail_all(self, error: UpstreamError) -> None:
        waiters, self._waiters = self._waiters, {}
        for waiter in waiters.values():
            if waiter.timer is not None:
                waiter.timer.cancel()
            if not waiter.future.done():
                waiter.future.set_exception(error)

    def _expire(self, key: int) -> None:
        waiter = self._waiters.pop(key, None)
        if waiter is None:
            return
        if not waiter.future.done():
            waiter.future.set_exception(UpstreamTimeoutError(f"{self._label}: timed out"))
        self._on_expired(key, waiter)


@dataclass(frozen=True, slots=True)
class ConnectionLinks:
    """A connection's ties to its owner transport, given at construction."""

    #: the upstream's name, for errors and logs
    label: str
    #: close after this long with nothing in flight (a connection may learn a shorter one)
    idle_timeout: float
    #: the connection is gone (closed by either side): its owner stops handing it queries
    on_closed: Callable[[object], None]
    #: a reply matched no query in flight (or not its question)
    on_mismatched: Callable[[int], None]
    #: how long an answering connection may stay silent while a query waits (None: unknown)
    silence_limit: Callable[[], float | None]


#: RFC 8305 §5 Connection Attempt Delay (its recommended value): the next address is tried this
#: long after the last attempt began, or at once when that attempt fails sooner
CONNECTION_ATTEMPT_DELAY = 0.25


class AttemptSchedule:
    """Which of an upstream's addresses to start connecting to, and when (RFC 8305 §5; sans-IO:
    multiplex.py runs the attempts). The first starts at once; each next one after the attempt
    delay, or at once when an attempt fails; attempts under way go on until one connects."""

    def __init__(self, addresses: list[str], delay: float = CONNECTION_ATTEMPT_DELAY) -> None:
        self._waiting = list(addresses)
        self._delay = delay
        #: when the next address is due (None: now)
        self._next_at: float | None = None

    def due(self, now: float) -> str | None:
        """The address to start now, if one is due."""
        if not self._waiting or (self._next_at is not None and now < self._next_at):
            return None
        self._next_at = now + self._delay
        return self._waiting.pop(0)

    def failed(self) -> None:
        """An attempt failed: the next address is due at once."""
        self._next_at = None

    def wait(self, now: float) -> float | None:
        """How long until the next address is due; None when there is none left to start."""
        if not self._waiting:
            return None
        return 0.0 if self._next_at is None else max(0.0, self._next_at - now)
