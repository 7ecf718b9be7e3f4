"""The running daemon: sockets, signals, sd_notify, orderly shutdown."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import signal
import socket
from dataclasses import dataclass, field

from stubby_py.config import Config
from stubby_py.errors import StubbyError
from stubby_py.listener import TCPConnections, UDPListener
from stubby_py.resolver import Resolver
from stubby_py.transports import make_transport

log = logging.getLogger(__name__)

DRAIN_SECONDS = 3.0
SD_LISTEN_FDS_START = 3


class ListenError(StubbyError):
    pass


def sd_notify(message: str) -> None:
    """sd_notify(3) without libsystemd: one datagram to $NOTIFY_SOCKET, if set."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return
    if path.startswith("@"):
        path = "\0" + path[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto(message.encode(), path)
    except OSError as exc:
        log.debug("sd_notify failed: %s", exc)


def _listen_error(address: str, port: int, exc: OSError) -> ListenError:
    where = f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
    if exc.errno == errno.EADDRINUSE:
        why = "the address is already in use (another DNS server running?)"
    elif exc.errno == errno.EACCES:
        why = "permission denied: ports below 1024 need root or CAP_NET_BIND_SERVICE"
    elif exc.errno == errno.EADDRNOTAVAIL:
        why = "no such address on this machine"
    else:
        why = exc.strerror or str(exc)
    return ListenError(
        f"cannot listen on {where}: {why}. Try --listen 127.0.0.1:5353, "
        "or run under systemd with the stubby-py.socket unit"
    )


@dataclass
class Daemon:
    config: Config
    resolver: Resolver | None = None
    bound: list[tuple[str, int]] = field(default_factory=list)
    _servers: list[asyncio.Server] = field(default_factory=list)
    _udp: list[asyncio.DatagramTransport] = field(default_factory=list)
    _tcp: list[TCPConnections] = field(default_factory=list)

    async def start(self) -> None:
        transports = [make_transport(spec, self.config) for spec in self.config.upstreams]
        self.resolver = Resolver(self.config, transports)
        inherited = inherited_sockets()
        if inherited:
            await self._adopt(inherited)
        else:
            for address, port in self.config.listen:
                await self._listen(address, port)
        for address, port in self.bound:
            where = f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
            log.info("listening on %s (UDP and TCP)", where)
        names = ", ".join(t.name for t in transports)
        log.info("forwarding to %s", names)

    async def _listen(self, address: str, port: int) -> None:
        assert self.resolver is not None
        loop = asyncio.get_running_loop()
        connections = TCPConnections(
            self.resolver, self.config.tcp_max_connections, self.config.tcp_idle_timeout
        )
        try:
            server = await loop.create_server(
                connections.protocol, address, port, reuse_address=True, backlog=1024
            )
            # port 0: UDP takes the port TCP was given, so both answer on one address
            port = server.sockets[0].getsockname()[1]
            udp, _ = await loop.create_datagram_endpoint(
                lambda: UDPListener(self.resolver),  # type: ignore[arg-type]
                local_addr=(address, port),
            )
        except OSError as exc:
            raise _listen_error(address, port, exc) from None
        self._servers.append(server)
        self._tcp.append(connections)
        self._udp.append(udp)
        self.bound.append((address, port))

    async def _adopt(self, sockets: list[socket.socket]) -> None:
        """Serve on sockets systemd passed us (socket activation): no bind, no privilege."""
        assert self.resolver is not None
        loop = asyncio.get_running_loop()
        connections = TCPConnections(
            self.resolver, self.config.tcp_max_connections, self.config.tcp_idle_timeout
        )
        self._tcp.append(connections)
        for sock in sockets:
            sock.setblocking(False)
            if sock.type == socket.SOCK_DGRAM:
                udp, _ = await loop.create_datagram_endpoint(
                    lambda: UDPListener(self.resolver),  # type: ignore[arg-type]
                    sock=sock,
                )
                self._udp.append(udp)
            else:
                server = await loop.create_server(connections.protocol, sock=sock, backlog=1024)
                self._servers.append(server)
            address, port = sock.getsockname()[:2]
            if (address, port) not in self.bound:
                self.bound.append((address, port))

    async def stop(self) -> None:
        """Stop listening, answer what is in flight (bounded), close upstream connections."""
        sd_notify("STOPPING=1")
        for server in self._servers:
            server.close()
        for udp in self._udp:
            udp.close()
        if self.resolver is not None:
            await self.resolver.drain(DRAIN_SECONDS)
        for connections in self._tcp:
            connections.close_all()
        if self.resolver is not None:
            await self.resolver.aclose()


def inherited_sockets() -> list[socket.socket]:
    """sd_listen_fds(3): the sockets systemd passed, if they are meant for this process."""
    if os.environ.get("LISTEN_PID") != str(os.getpid()):
        return []
    count = int(os.environ.get("LISTEN_FDS", "0") or 0)
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(name, None)
    return [socket.socket(fileno=SD_LISTEN_FDS_START + i) for i in range(count)]


def watchdog_interval() -> float | None:
    """Half of systemd's WatchdogSec, if the watchdog is on for this process."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 2_000_000


async def _watchdog(interval: float) -> None:
    # a ping from the event loop itself proves the loop is not stuck
    while True:
        sd_notify("WATCHDOG=1")
        await asyncio.sleep(interval)


def _flush_cache(resolver: Resolver) -> None:
    """SIGUSR2: forget every cached answer and held failure (no restart needed)."""
    log.info("SIGUSR2: cache flushed, %d answers dropped", resolver.cache.flush())


async def serve(config: Config) -> None:
    daemon = Daemon(config)
    await daemon.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    if daemon.resolver is not None:
        loop.add_signal_handler(signal.SIGUSR2, _flush_cache, daemon.resolver)
    sd_notify("READY=1\nSTATUS=answering queries")
    interval = watchdog_interval()
    pinger = loop.create_task(_watchdog(interval)) if interval else None
    await stop.wait()
    if pinger is not None:
        pinger.cancel()
    log.info("shutting down")
    await daemon.stop()


def run(config: Config) -> None:
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(config))
        return
    uvloop.run(serve(config))
