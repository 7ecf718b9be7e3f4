"""Accepting TLS connections: the access list and the connection caps before the handshake.

asyncio's `create_server(ssl=...)` tells the protocol about a connection only once the handshake
is done, so a client outside `allow` would get a whole TLS handshake first. Here the socket is
accepted by hand, the client checked, and only then is TLS started on it
(`connect_accepted_socket`). A listener's own `allow` narrows the global one the same way: a
client outside it is closed at accept, counted as denied. Handshakes under way count against
the shared TCP caps, the total and the client's (so one client cannot hold every slot with
handshakes it never finishes), and each is bounded by HANDSHAKE_TIMEOUT.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import socket
import ssl
from collections.abc import Callable

from stubby_py.core.ratelimit import client_key
from stubby_py.listeners.plain import OwnAllow, TCPConnections
from stubby_py.listeners.tls_files import ServerCertificate

log = logging.getLogger(__name__)

HANDSHAKE_TIMEOUT = 10.0
#: at a close, how long to wait for the client's close_notify before the connection is cut
SHUTDOWN_TIMEOUT = 1.0
#: after accept() fails (out of file descriptors), wait this long before the next
ACCEPT_BACKOFF = 0.1


def bind(address: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.create_server((address, port), family=family, backlog=1024)
    sock.setblocking(False)
    return sock


class TLSServer:
    def __init__(
        self,
        sock: socket.socket,
        shared: TCPConnections,
        certificate: ServerCertificate,
        alpn: str,
        protocol: Callable[[], asyncio.Protocol],
        own_allow: OwnAllow | None = None,
    ) -> None:
        self.sock = sock
        #: the listener's own `allow` (the daemon changes it on reload)
        self.own_allow = own_allow or OwnAllow()
        self.port: int = sock.getsockname()[1]
        self._shared = shared
        self._certificate = certificate
        self._alpn = alpn
        self._protocol = protocol
        self._handshakes: set[asyncio.Task[None]] = set()
        #: client (client_key) → its handshakes under way
        self._pending: dict[str, int] = {}
        self._accepting: asyncio.Task[None] | None = None
        #: handshakes that failed or timed out (garbage instead of TLS, no common ALPN...)
        self.failed_handshakes = 0

    def start(self) -> None:
        self._accepting = asyncio.get_running_loop().create_task(self._accept())

    def close(self) -> None:
        if self._accepting is not None:
            self._accepting.cancel()
        for task in list(self._handshakes):
            task.cancel()
        self.sock.close()

    async def _accept(self) -> None:
        loop = asyncio.get_running_loop()
        shared = self._shared
        own_allow = self.own_allow
        while True:
            try:
                conn, addr = await loop.sock_accept(self.sock)
            except OSError as exc:
                log.warning("TLS listener: accept failed: %s", exc.strerror or exc)
                await asyncio.sleep(ACCEPT_BACKOFF)
                continue
            peer = addr[0]
            if (
                not shared.reading
                or not shared.resolver.acl.allows(peer)
                or own_allow.refuses(peer)
            ):
                shared.denied += shared.reading
                conn.close()
                continue
            if len(shared.open) + len(self._handshakes) >= shared.max_connections:
                shared.rejected += 1
                conn.close()
                continue
            client = client_key(addr[0], shared.ipv6_prefix)
            pending = self._pending.get(client, 0)
            if shared.per_client.get(client, 0) + pending >= shared.max_per_client:
                shared.rejected_per_client += 1
                conn.close()
                continue
            self._pending[client] = pending + 1
            task = loop.create_task(self._handshake(conn))
            self._handshakes.add(task)
            task.add_done_callback(functools.partial(self._handshake_done, client=client))

    def _handshake_done(self, task: asyncio.Task[None], *, client: str) -> None:
        self._handshakes.discard(task)
        left = self._pending.get(client, 0) - 1
        if left > 0:
            self._pending[client] = left
        else:
            self._pending.pop(client, None)

    async def _handshake(self, conn: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        try:
            context = self._certificate.context(self._alpn)
            await asyncio.wait_for(
                loop.connect_accepted_socket(
                    self._protocol,
                    conn,
                    ssl=context,
                    ssl_handshake_timeout=HANDSHAKE_TIMEOUT,
                    ssl_shutdown_timeout=SHUTDOWN_TIMEOUT,
                ),
                HANDSHAKE_TIMEOUT + 1,
            )
        except (TimeoutError, OSError, ssl.SSLError, EOFError) as exc:
            self.failed_handshakes += 1
            self._shared.tls_handshake_failures += 1
            log.debug("TLS handshake failed: %s", exc)
            conn.close()
        except asyncio.CancelledError:  # the listener closes (shutdown)
            conn.close()
            raise
