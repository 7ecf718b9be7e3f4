"""One long-lived connection per upstream carrying many queries at once: what DoH and DoQ share.

Each query travels on a stream of its own (RFC 9113 §5 for HTTP/2, RFC 9000 §2 for QUIC under
HTTP/3 and RFC 9250 §4.2), so replies need no ID matching: a stream → waiter map routes them, each
waiter with one deadline timer. A broken connection fails all its waiters at once; a query caught
in flight by a closing connection goes again on a fresh one: once in any case (the stale cached
connection of RFC 9250 §5.5.1 and RFC 9113 §9.1 GOAWAY), and again as long as the connections that
die under it had answered others first (a middlebox cutting long-lived connections: `may_resend`);
such an end is marked on the error (`after_answers`), so the pool does not count it against the
upstream. Connecting is single-flight; a failed connect is marked on its error (`no_connection`)
and the pool (core/pool.py) decides when this upstream is asked to connect again. An upstream's
addresses (several for one by hostname: bootstrap.py) are raced as RFC 8305 says, the schedule
from toolkit.AttemptSchedule; those this host has no route to are not tried (`no-route`).

reset() (a network change or a resume from suspend: netwatch.py) retires
the connection: it takes no new query and closes once its queries in flight are answered or time
out (at once if it has none). A connection whose opening began before a reset is closed unused and
opened again, so no query that comes after a reset travels on a connection from before it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections import deque
from typing import Any, Generic, Protocol, TypeVar, cast

from stubby_py.core import wire
from stubby_py.core.config import Config, UpstreamSpec, upstream_proxy
from stubby_py.core.errors import (
    NoRouteError,
    UpstreamClosedError,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamTimeoutError,
)
from stubby_py.core.latency import percentile
from stubby_py.core.logthrottle import LogThrottle
from stubby_py.transports.base import ConnectInfo, TransportStats
from stubby_py.transports.bootstrap import endpoint_for
from stubby_py.transports.toolkit import AttemptSchedule, ConnectionLinks

log = logging.getLogger(__name__)

#: how many times one connect opens again because resets kept arriving while it was opening
MAX_STALE_OPENS = 3
#: a failing connect is logged once per this many seconds and kind (what came between is counted)
CONNECT_LOG_INTERVAL = 600.0
#: how many times one query goes again after the connections it travelled on were cut (each of
#: them after answering others): the query's deadline is the usual bound, this one is for a
#: query that kills every connection it is sent on
MAX_RESENDS = 64
#: reply times kept per upstream, and how many are needed before `silence_limit` says anything
REPLY_TIMES = 64
MIN_REPLY_TIMES = 8
#: a silence this many times the quick reply time (and at least SILENCE_MIN seconds) is odd
SILENCE_FACTOR = 4.0
SILENCE_MIN = 0.1


def checked_reply(reply: bytes, question: bytes, label: str) -> bytes:
    """The reply, if it is a response with message ID 0 to our question (RFC 8484 §4.1,
    RFC 9250 §4.2.1); UpstreamProtocolError otherwise."""
    if len(reply) < wire.HEADER_LEN:
        raise UpstreamProtocolError(f"{label}: reply shorter than a DNS header")
    if wire.header_id(reply) != 0:
        raise UpstreamProtocolError(f"{label}: reply has message ID {wire.header_id(reply)}, not 0")
    if not wire.is_response_to_query(reply) or not wire.question_matches(reply, question):
        raise UpstreamProtocolError(f"{label}: reply does not match the question")
    return reply


def with_id_zero(query: bytes) -> bytes:
    """RFC 8484 §4.1, RFC 9250 §4.2.1: message ID 0 on the wire (the resolver sends 0 already)."""
    return query if query[:2] == b"\x00\x00" else wire.with_id(query, 0)


def may_resend(resends: int, after_answers: bool) -> bool:
    """Whether a query whose connection died under it goes once more on a fresh one.

    Once always (a stale cached connection, RFC 9250 §5.5.1); after that, as long as each dead
    connection had answered queries before it died (a NAT or middlebox that cuts long-lived
    connections, a server that closes them after so many queries): the upstream works, only the
    connection did not last. A bound still stops a query that itself kills every connection it
    travels on. A connection that answered nothing is a failure of the upstream."""
    return resends <= 1 or (after_answers and resends <= MAX_RESENDS)


def _consume_outcome(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()


async def _cancel_attempts(attempts: dict[asyncio.Task[Any], str]) -> None:
    """The connects that lost a race (or whose connect was given up): cancelled, and any
    connection one of them made in the meantime closed."""
    for task in attempts:
        task.cancel()
    if attempts:
        await asyncio.wait(attempts)
    for task in attempts:
        if not task.cancelled() and task.exception() is None:
            task.result().close()


class StreamConnection(Protocol):
    """What MultiplexedTransport needs of a connection."""

    @property
    def is_closed(self) -> bool: ...

    @property
    def answered(self) -> int:
        """Replies this connection has delivered."""
        ...

    def send(self, query: bytes, deadline: float) -> tuple[int, asyncio.Future[bytes]]: ...

    def forget(self, key: int, future: asyncio.Future[bytes]) -> None:
        """Drop the waiter of this query; a key reused by a newer query is left alone."""
        ...

    def retire(self) -> None:
        """Take no new query (is_closed turns true); close when those in flight are done."""
        ...

    def close(self) -> None: ...


C = TypeVar("C", bound=StreamConnection)


class MultiplexedTransport(Generic[C]):
    """Keeps one connection to one upstream: connects when a query needs one.

    Subclasses open the connection (`_open`); the connection calls `connection_gone` when it
    closes for any reason.
    """

    def __init__(self, spec: UpstreamSpec, config: Config) -> None:
        self.spec = spec
        self.stats = TransportStats()
        self._connect_log = LogThrottle(CONNECT_LOG_INTERVAL)
        #: where to connect, asked at each connect (an upstream by hostname: bootstrap.py)
        self.endpoint = endpoint_for(spec, config)
        #: through a proxy, whether the upstream has a route is the proxy's business
        self._direct = upstream_proxy(spec, config) is None
        self.idle_timeout = config.transport.idle_timeout
        self.connect_timeout = max(config.transport.attempt_timeout, 1.0)
        self._config = config
        self._connection: C | None = None
        self._connecting: asyncio.Task[C] | None = None
        #: counts reset() calls: a connection opened across one is stale
        self._generation = 0
        #: connections retired by reset() that still carry queries
        self._retiring: set[C] = set()
        #: how long the latest replies took, seconds
        self._reply_times: deque[float] = deque(maxlen=REPLY_TIMES)
        self._silence_max = max(SILENCE_MIN, config.transport.attempt_timeout / 4)
        #: what the subclass's _open learnt of the session it set up (resumed, protocol, ALPN,
        #: cipher), read once by _connect
        self._session_details: tuple[bool, str, str | None, str | None] = (False, "", None, None)

    @property
    def name(self) -> str:
        return self.spec.label

    @property
    def is_encrypted(self) -> bool:
        return True

    async def exchange(self, query: bytes, deadline: float) -> bytes:
        return await self._exchange(with_id_zero(query), deadline)

    async def _exchange(self, query: bytes, deadline: float) -> bytes:
        loop = asyncio.get_running_loop()
        resends = 0
        while True:
            connection = self._connection
            if connection is None or connection.is_closed:
                connection = await self._connected(deadline)
            try:
                key, future = connection.send(query, deadline)
                sent_at = loop.time()
                try:
                    reply = await future
                finally:
                    connection.forget(key, future)
                self._reply_times.append(loop.time() - sent_at)
                return reply
            except UpstreamClosedError as exc:
                # the connection went away under the query (idle close, GOAWAY, a restart, a
                # middlebox cutting it, a stale cached connection) or was retired by a reset
                # before the query went out: the query goes again on a fresh one
                resends += 1
                exc.after_answers = connection.answered > 0
                if loop.time() >= deadline or not may_resend(resends, exc.after_answers):
                    raise
                self.stats.resent += 1

    def silence_limit(self) -> float | None:
        """How long a connection that has answered may stay silent while a query waits before
        it is asked whether it is still there: a few times this upstream's quick reply time
        (its 10th percentile: about the round trip, not the time a resolver may take to
        resolve), but at most a quarter of an attempt, so that probe and resend fit in one.
        None until there are enough replies to know it."""
        if len(self._reply_times) < MIN_REPLY_TIMES:
            return None
        quick = percentile(sorted(self._reply_times), 10)
        return min(self._silence_max, max(SILENCE_MIN, SILENCE_FACTOR * quick))

    async def _connected(self, deadline: float) -> C:
        loop = asyncio.get_running_loop()
        now = loop.time()
        if self._connecting is None:
            self._connecting = loop.create_task(self._connect())
            # every waiter may time out first: the outcome is then read here, never lost
            self._connecting.add_done_callback(_consume_outcome)
        task = self._connecting
        try:
            return await asyncio.wait_for(asyncio.shield(task), max(0.0, deadline - now))
        except TimeoutError:
            error = UpstreamTimeoutError(f"{self.name}: connecting took too long")
            error.no_connection = True  # no connection was made (the pool and fallback read it)
            raise error from None

    async def connect(self, deadline: float, *, fresh: bool = False) -> ConnectInfo:
        """The connection queries would use, opened now if there is none (transports/base.py)."""
        if fresh:
            self.reset_connection()
        connection = self._connection
        if connection is not None and not connection.is_closed and self.stats.last_connect:
            return dataclasses.replace(self.stats.last_connect, reused=True)
        await self._connected(deadline)
        assert self.stats.last_connect is not None
        return self.stats.last_connect

    async def _connect(self) -> C:
        started = time.perf_counter()
        try:
            connection = await self._open_fresh()
        except UpstreamError as exc:
            self._connect_failed(exc)
            raise
        except TimeoutError:
            error = UpstreamTimeoutError(f"{self.name}: handshake timed out")
            self._connect_failed(error)
            raise error from None
        finally:
            self._connecting = None
        self._connection = connection
        self._count_handshake(time.perf_counter() - started)
        return connection

    def _count_handshake(self, seconds: float) -> None:
        stats = self.stats
        resumed, protocol, alpn, cipher = self._session_details
        stats.handshakes += 1
        stats.last_connect = ConnectInfo(seconds, resumed, False, protocol, alpn, cipher)
        if resumed:
            stats.resumptions += 1
            stats.last_resumed_s = seconds
            stats.resumed_handshakes.add(seconds)
        else:
            stats.last_full_s = seconds
            stats.full_handshakes.add(seconds)

    async def _open_fresh(self) -> C:
        """A connection whose opening began after the latest reset(): one begun before it may
        have bound an address or taken a route that the network change took away."""
        for _ in range(MAX_STALE_OPENS):
            generation = self._generation
            connection = await asyncio.wait_for(self._open_each_address(), self.connect_timeout)
            if generation == self._generation:
                return connection
            connection.close()
        raise UpstreamClosedError(f"{self.name}: the network kept changing while connecting")

    async def _open(self, address: str) -> C:
        raise NotImplementedError

    async def _open_each_address(self) -> C:
        """The upstream's addresses raced as RFC 8305 §5 says (an upstream by hostname may have
        several, IPv6 and IPv4 interleaved): the first at once, each next one after the attempt
        delay or as soon as an attempt fails; the first connection made (its whole handshake,
        TLS or QUIC included) wins and the attempts still under way are cancelled, and what
        they opened closed. An address this host has no route to is not tried at all."""
        candidates = await self.endpoint.candidates()
        addresses = [a for a in candidates if not self._direct or self.endpoint.routed(a)]
        if not addresses:
            raise NoRouteError(f"{self.name}: no route to {', '.join(candidates)}")
        loop = asyncio.get_running_loop()
        schedule = AttemptSchedule(addresses)
        attempts: dict[asyncio.Task[C], str] = {}
        last_error: UpstreamError | None = None
        try:
            while True:
                address = schedule.due(loop.time())
                if address is not None:
                    attempts[loop.create_task(self._open(address))] = address
                if not attempts:
                    assert last_error is not None
                    raise last_error
                done, _ = await asyncio.wait(
                    attempts, timeout=schedule.wait(loop.time()),
                    return_when=asyncio.FIRST_COMPLETED,
                )  # fmt: skip
                for task in done:
                    address = attempts.pop(task)
                    error = task.exception()
                    if error is None:
                        self.endpoint.succeeded(address)
                        return task.result()
                    if not isinstance(error, UpstreamError):
                        raise error
                    self.endpoint.failed(address)
                    schedule.failed()
                    last_error = error
                    if attempts or schedule.wait(loop.time()) is not None:
                        log.debug("%s; trying the next address", error)
        finally:
            await _cancel_attempts(attempts)

    def _connect_failed(self, exc: UpstreamError) -> None:
        exc.no_connection = True
        # background probes try a dead upstream every minute (the default pool's IPv6 entries
        # on an IPv4-only network): say so once per CONNECT_LOG_INTERVAL and kind, not each time
        held = self._connect_log.allow(exc.kind, asyncio.get_running_loop().time())
        if held is not None:
            log.warning("%s%s", exc, f" ({held} more like it since the last)" if held else "")

    def links(self) -> ConnectionLinks:
        """What a new connection of this transport reports to it, and asks of it."""
        return ConnectionLinks(
            label=self.name,
            idle_timeout=self.idle_timeout,
            on_closed=self.connection_gone,
            on_mismatched=self._count_mismatched,
            silence_limit=self.silence_limit,
        )

    def _count_mismatched(self, count: int) -> None:
        self.stats.mismatched += count

    def connection_gone(self, connection: object) -> None:
        if self._connection is connection:
            self._connection = None
        self._retiring.discard(cast(C, connection))

    def reset(self) -> None:
        """Network change or resume: retire the connection, so that no later query travels
        on it (the pool forgets its backoffs: pool.Pool.reset)."""
        self.endpoint.network_changed()
        self.reset_connection()

    def reset_connection(self) -> None:
        """Retire the connection (it closes once its queries in flight are done): the next
        query opens a new one, resuming the session where the transport keeps its ticket."""
        self._generation += 1
        connection, self._connection = self._connection, None
        if connection is not None and not connection.is_closed:
            self._retiring.add(connection)
            connection.retire()  # may close it at once, and so leave _retiring

    async def aclose(self) -> None:
        task = self._connecting
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if self._connection is not None:
            self._connection.close()
        for connection in list(self._retiring):
            connection.close()
