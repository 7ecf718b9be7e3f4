"""UDP and TCP listeners: bytes in, bytes out (RFC 1035 §4.2, RFC 7766).

TCP: 2-octet framing, many queries pipelined on one connection and answered as each completes
(out of order, RFC 7766 §6.2.1.1), an idle timeout, caps on connections (in total and per client
address, RFC 7766 §6.2.2) and on queries in flight per connection (reading pauses until answers
drain).

At shutdown the listeners stop taking queries (`stop_reading`) but keep their sockets open, so the
queries already in flight are still answered; then they close.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from typing import Any, cast

from stubby_py import wire
from stubby_py.resolver import Resolver

log = logging.getLogger(__name__)

MAX_PIPELINED = 128


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


class UDPListener(asyncio.DatagramProtocol):
    def __init__(self, resolver: Resolver) -> None:
        self._resolver = resolver
        self._transport: asyncio.DatagramTransport | None = None
        self._reading = True

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

        self._resolver.handle(data, addr[0], respond, udp=True)

    def error_received(self, exc: Exception) -> None:
        log.debug("UDP listener: %s", exc)


class TCPConnections:
    """Shared state of all TCP connections: the caps, the idle timeout, who holds how many.

    The limits are plain attributes, so a reload can change them for connections to come.
    """

    def __init__(
        self,
        resolver: Resolver,
        max_connections: int,
        idle_timeout: float,
        max_per_client: int | None = None,
    ) -> None:
        self.resolver = resolver
        self.max_connections = max_connections
        self.max_per_client = max_per_client or max_connections
        self.idle_timeout = idle_timeout
        self.open: set[TCPListener] = set()
        #: client address → its connections open now (addresses with none are removed)
        self.per_client: dict[str, int] = {}
        #: connections closed at once: over the total cap, over the per-client cap
        self.rejected = 0
        self.rejected_per_client = 0
        self.reading = True

    def protocol(self) -> TCPListener:
        return TCPListener(self)

    def admit(self, peer: str) -> bool:
        """Count a new connection from `peer` in, or say no (it is over a cap)."""
        if len(self.open) >= self.max_connections:
            self.rejected += 1
            return False
        held = self.per_client.get(peer, 0)
        if held >= self.max_per_client:
            self.rejected_per_client += 1
            return False
        self.per_client[peer] = held + 1
        return True

    def release(self, peer: str) -> None:
        held = self.per_client.get(peer, 0) - 1
        if held > 0:
            self.per_client[peer] = held
        else:
            self.per_client.pop(peer, None)

    def stop_reading(self) -> None:
        """Shutdown: take no new queries on open connections; answers in flight still go out."""
        self.reading = False
        for connection in list(self.open):
            connection.stop_reading()

    def close_all(self) -> None:
        for connection in list(self.open):
            connection.close()


class TCPListener(asyncio.Protocol):
    def __init__(self, shared: TCPConnections) -> None:
        self._shared = shared
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._in_flight = 0
        self._paused = False
        self._closed = False
        self._eof = False
        self._peer = ""
        self._counted = False
        self._last_activity = time.monotonic()
        self._idle_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self._peer = peer[0] if peer else ""
        if not self._shared.reading or not self._shared.admit(self._peer):
            self._closed = True
            self._transport.abort()
            return
        self._counted = True
        self._shared.open.add(self)
        self._schedule_idle_check()

    def stop_reading(self) -> None:
        self._eof = True  # as if the client had finished: close once the answers are out
        if self._transport is None or self._closed:
            return
        if self._in_flight == 0:
            self._transport.close()
        elif not self._paused:
            self._paused = True
            self._transport.pause_reading()

    def data_received(self, data: bytes) -> None:
        if not self._shared.reading:
            return
        self._last_activity = time.monotonic()
        buf = self._buffer
        buf += data
        pos = 0
        end = len(buf)
        while end - pos >= 2 and not self._closed:
            size = (buf[pos] << 8) | buf[pos + 1]
            if end - pos - 2 < size:
                break
            message = bytes(buf[pos + 2 : pos + 2 + size])
            pos += 2 + size
            self._in_flight += 1
            self._shared.resolver.handle(message, self._peer, self._respond_once(), udp=False)
        if pos:
            del buf[:pos]
        if self._in_flight >= MAX_PIPELINED and not self._paused and self._transport is not None:
            self._paused = True
            self._transport.pause_reading()

    def _respond_once(self) -> Any:
        answered = False

        def respond(reply: bytes) -> None:
            nonlocal answered
            if answered:
                return
            answered = True
            self._in_flight -= 1
            self._last_activity = time.monotonic()
            if self._closed or self._transport is None:
                return
            self._transport.write(wire.frame(reply))
            if self._eof and self._in_flight == 0:
                self._transport.close()
            if self._paused and self._in_flight < MAX_PIPELINED // 2 and self._shared.reading:
                self._paused = False
                self._transport.resume_reading()

        return respond

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._shared.open.discard(self)
        if self._counted:
            self._counted = False
            self._shared.release(self._peer)
        if self._idle_timer is not None:
            self._idle_timer.cancel()

    def eof_received(self) -> bool:
        # keep the write side open so queries in flight still get their answers
        self._eof = True
        return self._in_flight != 0

    def close(self) -> None:
        if self._transport is not None and not self._closed:
            self._transport.close()

    def _schedule_idle_check(self) -> None:
        loop = asyncio.get_running_loop()
        self._idle_timer = loop.call_later(self._shared.idle_timeout / 2, self._check_idle)

    def _check_idle(self) -> None:
        if self._closed:
            return
        idle = time.monotonic() - self._last_activity
        if self._in_flight == 0 and idle >= self._shared.idle_timeout:
            self.close()
            return
        self._schedule_idle_check()
