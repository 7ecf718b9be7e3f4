"""DNS over TLS (RFC 7858): one long-lived, pipelined TLS connection per upstream.

Queries get an ID unique on their connection and are written as 2-octet-framed messages
(RFC 7766 §8), batched per event-loop turn; replies are matched by ID and question, in any order
(RFC 7766 §6.2.1.1). A broken connection fails all its waiters at once; a query caught in flight
is retried once on a fresh connection. Reconnects back off exponentially after failures.
Idle connections close after the configured time or the server's edns-tcp-keepalive (RFC 7828).
A retired connection (after a network change) takes no new query and closes once it has none.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from typing import cast

from stubby_py.core import edns, wire
from stubby_py.core.config import Config, UpstreamSpec
from stubby_py.core.errors import (
    UpstreamClosedError,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamTimeoutError,
)
from stubby_py.transports.base import Transport
from stubby_py.transports.failures import connect_error
from stubby_py.transports.multiplex import MultiplexedTransport
from stubby_py.transports.proxy import open_stream
from stubby_py.transports.tls import (
    ClientContexts,
    check_pins,
    server_hostname,
    verified_chain,
)

log = logging.getLogger(__name__)

MAX_IN_FLIGHT = 60000
#: our own generator: IDs stay random even if someone seeds the global one (tests do)
_ids = random.Random()


class _Waiter:
    __slots__ = ("future", "question", "sent_at", "sent_at_bytes", "timer")

    def __init__(
        self, future: asyncio.Future[bytes], question: bytes, sent_at_bytes: int, sent_at: float
    ) -> None:
        self.future = future
        self.question = question
        self.timer: asyncio.TimerHandle | None = None
        #: how many reply bytes the connection had received when this query was sent
        self.sent_at_bytes = sent_at_bytes
        #: when it was sent (the event loop's clock)
        self.sent_at = sent_at


class DoTConnection(asyncio.Protocol):
    """One TLS connection: frames out, frames in, an ID → waiter map."""

    def __init__(self, owner: DoTTransport) -> None:
        self._owner = owner
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._out: list[bytes] = []
        self._waiters: dict[int, _Waiter] = {}
        self._closed = False
        self._retired = False
        self.received_bytes = 0
        self.replies = 0
        #: replies delivered to their queries
        self.answered = 0
        self.last_activity = time.monotonic()
        self.idle_timeout = owner.idle_timeout
        self._idle_timer: asyncio.TimerHandle | None = None
        #: when the last bytes came in (the event loop's clock)
        self.last_received = self._loop.time()
        #: checks, while queries wait, that the connection has not gone silent
        self._silence_timer: asyncio.TimerHandle | None = None
        #: the query sent to ask a silent connection whether it is still there
        self._probe: asyncio.Future[bytes] | None = None

    @property
    def is_closed(self) -> bool:
        """No new query here: closed, or retired and closing once those in flight are done."""
        return self._closed or self._retired

    # -- asyncio.Protocol ----------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        self._schedule_idle_check()

    def data_received(self, data: bytes) -> None:
        self.received_bytes += len(data)
        self.last_activity = time.monotonic()
        self.last_received = self._loop.time()
        buf = self._buffer
        buf += data
        pos = 0
        end = len(buf)
        while end - pos >= 2:
            size = (buf[pos] << 8) | buf[pos + 1]
            if end - pos - 2 < size:
                break
            self._handle_reply(bytes(buf[pos + 2 : pos + 2 + size]))
            pos += 2 + size
        if pos:
            del buf[:pos]
        self._close_if_drained()

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail_all(UpstreamClosedError(f"{self._owner.name}: connection closed"))

    # -- queries ---------------------------------------------------------------------------
    def send(self, query: bytes, deadline: float) -> tuple[int, asyncio.Future[bytes]]:
        if self.is_closed or self._transport is None:
            raise UpstreamClosedError(f"{self._owner.name}: connection closed")
        if len(self._waiters) >= MAX_IN_FLIGHT:
            raise UpstreamError(f"{self._owner.name}: too many queries in flight")
        msg_id = _ids.getrandbits(16)
        while msg_id in self._waiters:
            msg_id = _ids.getrandbits(16)
        future: asyncio.Future[bytes] = self._loop.create_future()
        now = self._loop.time()
        question = query[wire.HEADER_LEN : wire.question_end(query)]
        waiter = _Waiter(future, question, self.received_bytes, now)
        waiter.timer = self._loop.call_at(deadline, self._expire, msg_id)
        self._waiters[msg_id] = waiter
        if not self._out:
            self._loop.call_soon(self._flush)
        self._out.append(wire.frame(wire.with_id(query, msg_id)))
        self.last_activity = time.monotonic()
        if self._silence_timer is None:
            limit = self._owner.silence_limit()
            if limit is not None:
                self._silence_timer = self._loop.call_at(now + limit, self._check_silence)
        return msg_id, future

    def forget(self, msg_id: int, future: asyncio.Future[bytes]) -> None:
        """Drop a query's waiter (its caller gave up). The ID may already serve a newer query:
        only the waiter of this very future is removed."""
        waiter = self._waiters.get(msg_id)
        if waiter is None or waiter.future is not future:
            return
        del self._waiters[msg_id]
        if waiter.timer is not None:
            waiter.timer.cancel()
        self._close_if_drained()

    def retire(self) -> None:
        """Take no new query; close once the queries in flight are answered or time out."""
        self._retired = True
        self._close_if_drained()

    def _close_if_drained(self) -> None:
        if self._retired and not self._waiters and not self._closed:
            self.close()

    def close(self, reason: str = "connection closed", *, dead: bool = False) -> None:
        """dead: the connection is taken for dead (stalled, silent): abort it, as a graceful TLS
        close would wait for the peer's close_notify that is not coming."""
        if not self._closed:
            self._closed = True
            for timer in (self._idle_timer, self._silence_timer):
                if timer is not None:
                    timer.cancel()
            if self._transport is not None:
                if dead:
                    self._transport.abort()
                else:
                    self._transport.close()
        self._fail_all(UpstreamClosedError(f"{self._owner.name}: {reason}"))

    @property
    def in_flight(self) -> int:
        return len(self._waiters)

    def _flush(self) -> None:
        if self._out and self._transport is not None and not self._closed:
            data = b"".join(self._out)
            self._out.clear()
            self._transport.write(data)

    def _handle_reply(self, reply: bytes) -> None:
        self.replies += 1
        if len(reply) < wire.HEADER_LEN:
            self._owner.stats.mismatched += 1
            return
        waiter = self._waiters.pop(wire.header_id(reply), None)
        if waiter is None:
            self._owner.stats.mismatched += 1
            return
        if waiter.timer is not None:
            waiter.timer.cancel()
        if waiter.future.done():
            return
        if not wire.is_response_to_query(reply) or not wire.question_matches(
            reply, waiter.question
        ):
            self._owner.stats.mismatched += 1
            waiter.future.set_exception(
                UpstreamProtocolError(f"{self._owner.name}: reply does not match the question")
            )
            return
        if self.replies == 1:
            self._learn_keepalive(reply)
        waiter.future.set_result(reply)
        self.answered += 1

    def _learn_keepalive(self, reply: bytes) -> None:
        try:
            layout = wire.scan_reply(reply)
        except wire.WireError:
            return
        if layout.opt_span is None:
            return
        offered = edns.keepalive_timeout(wire.opt_options(reply, layout.opt_span))
        if offered is not None:
            self.idle_timeout = min(self.idle_timeout, offered)

    def _expire(self, msg_id: int) -> None:
        waiter = self._waiters.pop(msg_id, None)
        if waiter is None or waiter.future.done():
            return
        waiter.future.set_exception(UpstreamTimeoutError(f"{self._owner.name}: timed out"))
        if self.received_bytes == waiter.sent_at_bytes and not self._closed:
            # nothing at all came back since this query went out: the connection is stalled
            is_probe = waiter.future is self._probe
            log.info(
                "%s: %s; reconnecting",
                self._owner.name,
                "no reply to the probe of a silent connection"
                if is_probe
                else "no reply on the connection for a whole attempt",
            )
            self.close("connection went silent" if is_probe else "connection stalled", dead=True)
        self._close_if_drained()

    def _check_silence(self) -> None:
        """A connection that has answered, silent for a few times its usual reply time while a
        query waits: a NAT or middlebox may have dropped it without a word (no RST, so no error
        ever comes). One small query asks; if nothing at all comes back in time either, the
        connection is closed and what it carried goes again on a fresh one (multiplex.py).
        A merely slow answer is not mistaken for that: the probe's answer is cached anywhere."""
        self._silence_timer = None
        limit = self._owner.silence_limit()
        if self._closed or not self._waiters or limit is None:
            return
        oldest = next(iter(self._waiters.values()))
        now = self._loop.time()
        quiet_since = max(oldest.sent_at, self.last_received)
        if now - quiet_since < limit or self.answered == 0:
            # not silent long enough; or a fresh connection, judged at its attempt's deadline
            again = quiet_since + limit if self.answered else now + limit
            self._silence_timer = self._loop.call_at(again, self._check_silence)
            return
        if self._probe is None or self._probe.done():
            self._probe = self._send_probe(now + 2 * limit)

    def _send_probe(self, deadline: float) -> asyncio.Future[bytes] | None:
        try:
            _, future = self.send(self._owner.probe_query, deadline)
        except UpstreamError:
            return None
        future.add_done_callback(_consume_probe)
        return future

    def _fail_all(self, error: UpstreamError) -> None:
        self._closed = True
        # a connection cut by the peer never went through close(): its timers still hold it,
        # the idle check for up to half the idle timeout (#21: dozens alive under resets)
        for timer in (self._idle_timer, self._silence_timer):
            if timer is not None:
                timer.cancel()
        self._idle_timer = self._silence_timer = None
        waiters, self._waiters = self._waiters, {}
        for waiter in waiters.values():
            if waiter.timer is not None:
                waiter.timer.cancel()
            if not waiter.future.done():
                waiter.future.set_exception(error)
        self._owner.connection_gone(self)

    def _schedule_idle_check(self) -> None:
        delay = max(0.05, self.idle_timeout / 2)
        self._idle_timer = self._loop.call_later(delay, self._check_idle)

    def _check_idle(self) -> None:
        if self._closed:
            return
        idle = time.monotonic() - self.last_activity
        if not self._waiters and idle >= self.idle_timeout:
            log.debug("%s: closing idle connection", self._owner.name)
            self.close()
            return
        self._schedule_idle_check()


def _consume_probe(future: asyncio.Future[bytes]) -> None:
    if not future.cancelled():
        future.exception()


class DoTTransport(MultiplexedTransport[DoTConnection]):
    """One DoT upstream: keeps one connection, reconnects with backoff (multiplex.py)."""

    #: TCPTransport turns this off: the same pipelined stream, in cleartext (LAN resolvers only)
    uses_tls = True

    def __init__(self, spec: UpstreamSpec, config: Config) -> None:
        super().__init__(spec, config)
        self._contexts = ClientContexts(spec, config)
        #: ". NS", the question every resolver has cached: asks a silent connection if it is there
        self.probe_query = edns.probe_query(config.transport.padding_block if self.uses_tls else 0)

    @property
    def is_encrypted(self) -> bool:
        return self.uses_tls

    async def exchange(self, query: bytes, deadline: float) -> bytes:
        # no ID-zeroing: every query gets an ID of its own on the connection
        self.stats.queries += 1
        try:
            return await self._exchange(query, deadline)
        except UpstreamError as exc:
            self.stats.count_failure(exc.kind)
            raise

    async def _open(self) -> DoTConnection:
        address = await self.endpoint.address()
        try:
            transport, protocol = await open_stream(
                self.spec, self._config, address, self.spec.port,
                lambda: DoTConnection(self),
                ssl_context=self._contexts.get() if self.uses_tls else None,
                server_hostname=server_hostname(self.spec) if self.uses_tls else None,
                timeout=self.connect_timeout,
            )  # fmt: skip
        except OSError as exc:  # ssl.SSLError included
            raise connect_error(self.name, exc) from None
        ssl_object = transport.get_extra_info("ssl_object")
        try:
            der = ssl_object.getpeercert(binary_form=True) if ssl_object else None
            check_pins(self.spec, der, verified_chain(ssl_object) if self.spec.cert_hashes else ())
        except UpstreamError:
            transport.close()
            raise
        return protocol


_: type[Transport] = DoTTransport
