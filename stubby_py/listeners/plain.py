"""UDP and TCP listeners: bytes in, bytes out (RFC 1035 §4.2, RFC 7766).

TCP: 2-octet framing, many queries pipelined on one connection and answered as each completes
(out of order, RFC 7766 §6.2.1.1), caps on connections (in total and per client, RFC 7766 §6.2.2;
an IPv6 client is its /64 by default) and on queries in flight per connection. A connection from
outside the access list is closed at accept, before it counts against a cap. Reading pauses while
a connection is at its pipelining cap or its unsent replies exceed WRITE_BUFFER_HIGH (the client
is not reading them), so whatever a client sends, its connection holds at most one read of
queries (256 KiB with uvloop), WRITE_BUFFER_HIGH (plus one WRITE_BATCH) of replies and the
answers to the queries in flight. Replies given while a read's queries are handed on (cache
hits) are written together, a batch at a time. A connection is closed when no complete query
came and no answer went for `idle_timeout` (trickling bytes does not count), or when its unsent
replies made no progress for as long.

A listener may have an `allow` of its own, narrowing the global one there (OwnAllow): a TCP
connection from outside it is closed at accept like one from outside the global list; a UDP
query from outside it is turned away as one from outside the global list is (`deny_action`).
A UDP listener without one checks nothing more per datagram: it hands its queries straight on.

At shutdown the listeners stop taking queries (`stop_reading`) but keep their sockets open, so the
queries already in flight are still answered; then they close.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any, Protocol, cast

from stubby_py.core import wire
from stubby_py.core.access import AccessList
from stubby_py.core.ratelimit import client_key
from stubby_py.listeners.handler import QueryHandler, Respond
from stubby_py.transports.toolkit import FrameReader, IdleTimer

log = logging.getLogger(__name__)

#: queries handed to the resolver and not yet answered, per connection
MAX_PIPELINED = 128
#: unsent reply octets above which a connection is not read (nor its buffered queries taken)
WRITE_BUFFER_HIGH = 64 * 1024
WRITE_BUFFER_LOW = 16 * 1024
#: replies given while one read's queries are dispatched (cache hits, local answers) are
#: written together, up to this many octets at a time (a TLS record's worth): one write, one
#: TLS record and one send for many replies, instead of one of each per reply
WRITE_BATCH = 16 * 1024


#: a burst of queries waits here while the loop is busy; the kernel default (~208 KB) overflows
UDP_RECEIVE_BUFFER = 4 << 20


def enlarge_receive_buffer(sock: socket.socket) -> None:
    """As Unbound's so-rcvbuf: beyond net.core.rmem_max only with CAP_NET_ADMIN (root, or
    systemd's ReceiveBuffer= on the socket unit); otherwise as large as the system allows."""
    for option in (getattr(socket, "SO_RCVBUFFORCE", None), socket.SO_RCVBUF):
        if option is None:
            continue
        try:
            sock.setsockopt(socket.SOL_SOCKET, option, UDP_RECEIVE_BUFFER)
            return
        except OSError:
            continue


class OwnAllow:
    """A listener's own `allow`, which narrows the global one on that listener; `acl` None: it
    has none. The daemon sets `acl` again on reload, for connections to come."""

    __slots__ = ("acl",)

    def __init__(self, acl: AccessList | None = None) -> None:
        self.acl = acl

    def refuses(self, client_ip: str) -> bool:
        acl = self.acl
        return acl is not None and not acl.allows(client_ip)


class _Narrowed:
    """The query handler behind a UDP listener's own `allow`."""

    __slots__ = ("_acl", "_resolver")

    def __init__(self, resolver: QueryHandler, acl: AccessList) -> None:
        self._resolver = resolver
        self._acl = acl

    def handle(self, data: bytes, client_ip: str, respond: Respond, *, udp: bool) -> bool:
        if self._acl.allows(client_ip):
            return self._resolver.handle(data, client_ip, respond, udp=udp)
        return self._resolver.handle_denied(data, client_ip, respond)


class UDPListener(asyncio.DatagramProtocol):
    def __init__(self, resolver: QueryHandler, own_allow: AccessList | None = None) -> None:
        self._resolver = resolver
        #: what queries go to: the resolver, or the resolver behind the listener's own `allow`
        self._handler: QueryHandler | _Narrowed = resolver
        self.narrow(own_allow)
        self._transport: asyncio.DatagramTransport | None = None
        self._reading = True

    def narrow(self, own_allow: AccessList | None) -> None:
        """Set the listener's own `allow` (None: none), for datagrams to come."""
        resolver = self._resolver
        self._handler = resolver if own_allow is None else _Narrowed(resolver, own_allow)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.DatagramTransport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            enlarge_receive_buffer(sock)

    def stop_reading(self) -> None:
        """Take no new queries; answers to those in flight still go out."""
        self._reading = False

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        transport = self._transport
        if transport is None or not self._reading:
            return

        def respond(reply: bytes) -> None:
            if not transport.is_closing():
                transport.sendto(reply, addr)

        self._handler.handle(data, addr[0], respond, udp=True)

    def error_received(self, exc: Exception) -> None:
        log.debug("UDP listener: %s", exc)


class Connection(Protocol):
    """What the shared caps and shutdown need of a connection."""

    def unsent(self) -> int: ...

    def stop_reading(self) -> None: ...

    def close(self) -> None: ...


class TCPConnections:
    """Shared state of all TCP connections: the caps, the idle timeout, who holds how many.

    The limits are plain attributes, so a reload can change them for connections to come.
    """

    def __init__(
        self,
        resolver: QueryHandler,
        max_connections: int,
        idle_timeout: float,
        max_per_client: int | None = None,
        ipv6_prefix: int = 64,
    ) -> None:
        self.resolver = resolver
        self.max_connections = max_connections
        self.max_per_client = max_per_client or max_connections
        self.idle_timeout = idle_timeout
        self.ipv6_prefix = ipv6_prefix
        #: TCP connections, DoT ones included, and DoH connections (listeners/doh.py)
        self.open: set[Connection] = set()
        #: client (client_key) → its connections open now (clients with none are removed)
        self.per_client: dict[str, int] = {}
        #: connections closed at once: over the total cap, over the per-client cap, from outside
        #: the access list
        self.rejected = 0
        self.rejected_per_client = 0
        self.denied = 0
        #: connections closed later: idle (or never a whole query), replies not being read
        self.closed_idle = 0
        self.closed_unread = 0
        #: DoT/DoH connections whose TLS handshake failed or timed out (listeners/server.py)
        self.tls_handshake_failures = 0
        self.reading = True

    def protocol(self) -> TCPListener:
        return TCPListener(self)

    def admit(self, peer: str, own_allow: OwnAllow | None = None) -> str | None:
        """Count a new connection from `peer` in (its client_key), or say no: it is outside the
        access list or the listener's own (not counted against any cap), or over a cap."""
        narrowed_out = own_allow is not None and own_allow.refuses(peer)
        if narrowed_out or not self.resolver.acl.allows(peer):
            self.denied += 1
            return None
        if len(self.open) >= self.max_connections:
            self.rejected += 1
            return None
        client = client_key(peer, self.ipv6_prefix)
        held = self.per_client.get(client, 0)
        if held >= self.max_per_client:
            self.rejected_per_client += 1
            return None
        self.per_client[client] = held + 1
        return client

    def accept(
        self,
        connection: Connection,
        transport: asyncio.Transport,
        own_allow: OwnAllow | None = None,
    ) -> tuple[str, str | None]:
        """A new connection: (peer address, client key), counted in and open; or (peer, None)
        when it is refused (shutting down, outside the access list or the listener's own, over
        a cap) and aborted."""
        peername = transport.get_extra_info("peername")
        peer = peername[0] if peername else ""
        client = self.admit(peer, own_allow) if self.reading else None
        if client is None:
            transport.abort()
            return peer, None
        self.open.add(connection)
        transport.set_write_buffer_limits(WRITE_BUFFER_HIGH, WRITE_BUFFER_LOW)
        return peer, client

    def release(self, client: str) -> None:
        held = self.per_client.get(client, 0) - 1
        if held > 0:
            self.per_client[client] = held
        else:
            self.per_client.pop(client, None)

    def unsent(self) -> int:
        """Reply octets written and not yet taken by the kernel, over all connections."""
        return sum(connection.unsent() for connection in self.open)

    def stop_reading(self) -> None:
        """Shutdown: take no new queries on open connections; answers in flight still go out."""
        self.reading = False
        for connection in list(self.open):
            connection.stop_reading()

    def close_all(self) -> None:
        for connection in list(self.open):
            connection.close()


class TCPListener(asyncio.Protocol):
    def __init__(self, shared: TCPConnections, own_allow: OwnAllow | None = None) -> None:
        self._shared = shared
        #: the listener's own `allow` (plain TCP; TLS listeners check theirs before the handshake)
        self._own_allow = own_allow
        self._transport: asyncio.Transport | None = None
        #: received octets not yet handed on: at most one read, and what is left of a message
        self._frames = FrameReader()
        self._in_flight = 0
        self._reading_paused = False
        self._writing_paused = False
        self._dispatching = False
        #: framed replies waiting to be written together, while _dispatch runs (else None)
        self._batch: list[bytes] | None = None
        self._batch_size = 0
        self._closed = False
        self._eof = False
        self._peer = ""
        self._client: str | None = None
        loop = asyncio.get_running_loop()
        self._loop = loop
        #: last complete query received or answer written (a trickled byte is not activity)
        self._idle = IdleTimer(loop, shared.idle_timeout / 2, self._check_idle)
        #: last time the unsent replies were seen to shrink (or there were none)
        self._write_progress = self._idle.last_activity
        self._unsent_seen = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        self._peer, self._client = self._shared.accept(self, self._transport, self._own_allow)
        if self._client is None:
            self._closed = True
            return
        self._idle.start()

    def stop_reading(self) -> None:
        self._eof = True  # as if the client had finished: close once the answers are out
        if self._transport is None or self._closed:
            return
        if not self._reading_paused:
            self._reading_paused = True
            self._transport.pause_reading()
        self._finish_if_done()

    def unsent(self) -> int:
        if self._transport is None or self._closed:
            return 0
        return self._transport.get_write_buffer_size()

    def data_received(self, data: bytes) -> None:
        if not self._shared.reading:
            return
        self._frames.feed(data)
        self._dispatch()

    def _dispatch(self) -> None:
        """Hand buffered complete queries to the resolver while the connection may take more:
        fewer than MAX_PIPELINED unanswered and its replies being read. The rest stay buffered
        (reading paused) until answers go out."""
        if self._dispatching:
            return  # an answer given synchronously, from inside the loop below
        if self._shared.reading and not self._closed:
            frames = self._frames
            handle = self._handle
            taken = False
            # (an exception from handle() is a bug: the transport closes the connection)
            self._dispatching = True
            self._batch, self._batch_size = [], 0
            while self._in_flight < MAX_PIPELINED and not self._writing_paused:
                message = frames.next_message()
                if message is None:
                    break
                taken = True
                self._in_flight += 1
                if not handle(message, self._respond_once()):
                    self._in_flight -= 1  # dropped: no answer will come
            self._write_batch()
            self._batch = None
            self._dispatching = False
            if taken:
                self._idle.touch()
            if self._reading_paused or self._writing_paused or self._in_flight >= MAX_PIPELINED:
                self._pace_reading()
        if self._eof:
            self._finish_if_done()

    def _handle(self, message: bytes, respond: Respond) -> bool:
        """One query to the resolver (DoT wraps this to pad its replies)."""
        return self._shared.resolver.handle(message, self._peer, respond, udp=False)

    def _pace_reading(self) -> None:
        transport = self._transport
        if transport is None or self._closed or self._eof:
            return
        if self._in_flight >= MAX_PIPELINED or self._writing_paused:
            if not self._reading_paused:
                self._reading_paused = True
                transport.pause_reading()
        elif self._reading_paused and self._in_flight <= MAX_PIPELINED // 2:
            self._reading_paused = False
            transport.resume_reading()

    def _finish_if_done(self) -> None:
        """After the client's EOF (or at shutdown): close once every query taken is answered."""
        if not self._eof or self._in_flight or self._closed or self._transport is None:
            return
        if self._shared.reading and self._frames.has_message():
            return  # queries sent before the EOF, waiting for the client to read replies
        self._transport.close()

    def _respond_once(self) -> Any:
        answered = False

        def respond(reply: bytes) -> None:
            nonlocal answered
            if answered:
                return
            answered = True
            self._in_flight -= 1
            self._idle.touch()
            if self._closed or self._transport is None:
                return
            batch = self._batch
            if batch is None:
                self._transport.write(wire.frame(reply))
            else:
                batch.append(wire.frame(reply))
                self._batch_size += len(reply) + 2
                if self._batch_size >= WRITE_BATCH:
                    self._write_batch()  # may pause writing: the dispatch loop then stops
            if self._reading_paused or self._eof:
                self._dispatch()

        return respond

    def _write_batch(self) -> None:
        batch = self._batch
        if not batch:
            return
        data = b"".join(batch)
        batch.clear()
        self._batch_size = 0
        if not self._closed and self._transport is not None:
            self._transport.write(data)

    def pause_writing(self) -> None:
        self._writing_paused = True
        self._pace_reading()

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._write_progress = self._loop.time()
        self._dispatch()

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._frames.clear()
        self._shared.open.discard(self)
        if self._client is not None:
            self._shared.release(self._client)
            self._client = None
        self._idle.cancel()

    def eof_received(self) -> bool:
        # keep the write side open so queries taken or buffered still get their answers
        self._eof = True
        return self._in_flight != 0 or self._frames.has_message()

    def close(self) -> None:
        if self._transport is not None and not self._closed:
            self._transport.close()

    def _check_idle(self, now: float) -> bool:
        transport = self._transport
        if self._closed or transport is None:
            return False
        shared = self._shared
        unsent = transport.get_write_buffer_size()
        if unsent == 0 or unsent < self._unsent_seen:
            self._write_progress = now
        self._unsent_seen = unsent
        if unsent:
            if now - self._write_progress >= shared.idle_timeout:
                # the client does not read its replies; close() would wait for them forever
                shared.closed_unread += 1
                self._closed = True  # answers still in flight are not written to it
                transport.abort()
                return False
        elif self._in_flight == 0 and self._idle.idle_for(now) >= shared.idle_timeout:
            shared.closed_idle += 1
            transport.close()
            return False
        return True
