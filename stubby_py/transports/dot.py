"""DNS over TLS (RFC 7858): one long-lived, pipelined TLS connection per upstream.

Queries get an ID unique on their connection and are written as 2-octet-framed messages
(RFC 7766 §8), batched per event-loop turn; replies are matched by ID and question, in any order
(RFC 7766 §6.2.1.1). A broken connection fails all its waiters at once; a query caught in flight
is retried once on a fresh connection. When to connect again after a failed connect is the
pool's call (core/pool.py).
Idle connections close after the configured time or the server's edns-tcp-keepalive (RFC 7828).
A retired connection (after a network change) takes no new query and closes once it has none.
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import cast

from stubby_py.core import edns, wire
from stubby_py.core.config import Config, UpstreamSpec
from stubby_py.core.errors import (
    UpstreamClosedError,
    UpstreamError,
    UpstreamProtocolError,
)
from stubby_py.transports.base import Transport
from stubby_py.transports.failures import connect_error
from stubby_py.transports.multiplex import MultiplexedTransport
from stubby_py.transports.proxy import open_stream
from stubby_py.transports.tls import (
    ClientContexts,
    check_session,
    server_hostname,
)
from stubby_py.transports.toolkit import ConnectionLinks, Exchanges, FrameReader, IdleTimer, Waiter

log = logging.getLogger(__name__)

MAX_IN_FLIGHT = 60000
#: our own generator: IDs stay random even if someone seeds the global one (tests do)
_ids = random.Random()


class DoTConnection(asyncio.Protocol):
    """One TLS connection: frames out, frames in, an ID → waiter map."""

    def __init__(self, links: ConnectionLinks, probe_query: bytes) -> None:
        self._links = links
        self._label = links.label
        self._probe_query = probe_query
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._frames = FrameReader()
        self._out: list[bytes] = []
        self._exchanges: Exchanges[Waiter] = Exchanges(links.label, self._expired)
        self._closed = False
        self._retired = False
        self.received_bytes = 0
        self.replies = 0
        self.idle_timeout = links.idle_timeout
        self._idle = IdleTimer(self._loop, max(0.05, self.idle_timeout / 2), self._check_idle)
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

    @property
    def answered(self) -> int:
        """Replies delivered to their queries."""
        return self._exchanges.answered

    # -- asyncio.Protocol ----------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        self._idle.start()

    def data_received(self, data: bytes) -> None:
        self.received_bytes += len(data)
        self.last_received = self._idle.last_activity = self._loop.time()
        frames = self._frames
        frames.feed(data)
        while (reply := frames.next_message()) is not None:
            self._handle_reply(reply)
        self._close_if_drained()

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail_all(UpstreamClosedError(f"{self._label}: connection closed"))

    # -- queries ---------------------------------------------------------------------------
    def send(self, query: bytes, deadline: float) -> tuple[int, asyncio.Future[bytes]]:
        if self.is_closed or self._transport is None:
            raise UpstreamClosedError(f"{self._label}: connection closed")
        exchanges = self._exchanges
        if len(exchanges) >= MAX_IN_FLIGHT:
            raise UpstreamError(f"{self._label}: too many queries in flight")
        msg_id = _ids.getrandbits(16)
        while msg_id in exchanges:
            msg_id = _ids.getrandbits(16)
        future: asyncio.Future[bytes] = self._loop.create_future()
        exchanges.add(msg_id, Waiter(future, query, self.received_bytes), deadline)
        if not self._out:
            self._loop.call_soon(self._flush)
        self._out.append(wire.frame(wire.with_id(query, msg_id)))
        self._idle.touch()
        if self._silence_timer is None:
            limit = self._links.silence_limit()
            if limit is not None:
                self._silence_timer = self._loop.call_later(limit, self._check_silence)
        return msg_id, future

    def forget(self, msg_id: int, future: asyncio.Future[bytes]) -> None:
        """Drop a query's waiter (its caller gave up). The ID may already serve a newer query:
        only the waiter of this very future is removed."""
        if self._exchanges.forget(msg_id, future) is not None:
            self._close_if_drained()

    def retire(self) -> None:
        """Take no new query; close once the queries in flight are answered or time out."""
        self._retired = True
        self._close_if_drained()

    def _close_if_drained(self) -> None:
        if self._retired and not self._exchanges and not self._closed:
            self.close()

    def close(self, reason: str = "connection closed", *, dead: bool = False) -> None:
        """dead: the connection is taken for dead (stalled, silent): abort it, as a graceful TLS
        close would wait for the peer's close_notify that is not coming."""
        if not self._closed:
            self._closed = True
            self._cancel_timers()
            if self._transport is not None:
                if dead:
                    self._transport.abort()
                else:
                    self._transport.close()
        self._fail_all(UpstreamClosedError(f"{self._label}: {reason}"))

    @property
    def in_flight(self) -> int:
        return len(self._exchanges)

    def _flush(self) -> None:
        if self._out and self._transport is not None and not self._closed:
            data = b"".join(self._out)
            self._out.clear()
            self._transport.write(data)

    def _handle_reply(self, reply: bytes) -> None:
        self.replies += 1
        if len(reply) < wire.HEADER_LEN:
            self._links.on_mismatched(1)
            return
        msg_id = wire.header_id(reply)
        waiter = self._exchanges.get(msg_id)
        if waiter is None:
            self._links.on_mismatched(1)
            return
        if waiter.future.done():
            self._exchanges.discard(msg_id)
            return
        if not wire.is_response_to_query(reply) or not wire.question_matches(
            reply, waiter.question
        ):
            self._links.on_mismatched(1)
            self._exchanges.reject(
                msg_id, UpstreamProtocolError(f"{self._label}: reply does not match the question")
            )
            return
        if self.replies == 1:
            self._learn_keepalive(reply)
        self._exchanges.resolve(msg_id, reply)

    def _learn_keepalive(self, reply: bytes) -> None:
        try:
            layout = wire.scan_reply(reply)
        except wire.WireError:
            return
        if layout.opt_span is None:
            return
        offered = edns.keepalive_timeout(wire.opt_options(reply, layout.opt_span))
        if offered is not None and offered < self.idle_timeout:
            self.idle_timeout = offered
            self._idle.interval = max(0.05, offered / 2)

    def _expired(self, msg_id: int, waiter: Waiter) -> None:
        if self.received_bytes == waiter.sent_at_bytes and not self._closed:
            # nothing at all came back since this query went out: the connection is stalled
            is_probe = waiter.future is self._probe
            log.info(
                "%s: %s; reconnecting",
                self._label,
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
        limit = self._links.silence_limit()
        oldest = self._exchanges.oldest()
        if self._closed or oldest is None or limit is None:
            return
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
            _, future = self.send(self._probe_query, deadline)
        except UpstreamError:
            return None
        future.add_done_callback(_consume_probe)
        return future

    def _cancel_timers(self) -> None:
        self._idle.cancel()
        if self._silence_timer is not None:
            self._silence_timer.cancel()
            self._silence_timer = None

    def _fail_all(self, error: UpstreamError) -> None:
        self._closed = True
        # a connection cut by the peer never went through close(): its timers still hold it,
        # the idle check for up to half the idle timeout (#21: dozens alive under resets)
        self._cancel_timers()
        self._exchanges.fail_all(error)
        self._links.on_closed(self)

    def _check_idle(self, now: float) -> bool:
        if self._closed:
            return False
        if not self._exchanges and self._idle.idle_for(now) >= self.idle_timeout:
            log.debug("%s: closing idle connection", self._label)
            self.close()
            return False
        return True


def _consume_probe(future: asyncio.Future[bytes]) -> None:
    if not future.cancelled():
        future.exception()


class DoTTransport(MultiplexedTransport[DoTConnection]):
    """One DoT upstream: keeps one connection, reconnects when asked (multiplex.py)."""

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
        return await self._exchange(query, deadline)

    async def _open(self, address: str) -> DoTConnection:
        context = self._contexts.get() if self.uses_tls else None
        try:
            transport, protocol = await open_stream(
                self.spec, self._config, address, self.spec.port,
                lambda: DoTConnection(self.links(), self.probe_query),
                ssl_context=context,
                server_hostname=server_hostname(self.spec) if self.uses_tls else None,
                timeout=self.connect_timeout,
            )  # fmt: skip
        except OSError as exc:  # ssl.SSLError included
            raise connect_error(self.name, exc) from None
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is None or context is None:
            self._session_details = (False, "TCP", None, None)
            return protocol
        try:
            self._session_details = check_session(self.spec, ssl_object, context)
        except UpstreamError:
            transport.close()
            raise
        return protocol


_: type[Transport] = DoTTransport
