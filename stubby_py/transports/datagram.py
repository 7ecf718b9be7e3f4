"""A connected datagram endpoint whose socket never outlives a failed or cancelled open.

uvloop's create_datagram_endpoint (0.23) loses its transport in two cases asyncio's own loop
handles: the opening task cancelled while it waits for connection_made (a query's deadline, a
shutdown), and connect(2) failing (ENETUNREACH for an IPv6 address on an IPv4-only network).
Here an open cancelled midway closes what it would have handed back, and the socket is made and
connected first, by us, where the protocol allows it.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import Any, TypeVar

P = TypeVar("P", bound=asyncio.BaseProtocol)

#: the name of the task that opens the socket: it must run to its end (a cancel at uvloop's
#: await is what loses the transport), so a sweep that cancels every task should leave it be;
#: it ends within a turn of the loop
OPENING_TASK = "stubby_py: opening a datagram socket"


async def open_connected(
    protocol_factory: Callable[[], P], host: str, port: int, *, addressed_sends: bool = False
) -> tuple[asyncio.DatagramTransport, P]:
    """A datagram transport connected to host:port (an address, or a name to look up).

    `addressed_sends`: the protocol names the peer on every sendto, as aioquic does. A socket
    connected here would refuse those (uvloop passes the address on, libuv answers EISCONN), so
    uvloop connects it itself, and a failing connect(2) then leaves its transport to the garbage
    collector: QUIC transports check the route first (bootstrap.RouteCache), so that is rare.

    Raises OSError (socket.gaierror for a name that does not resolve) as create_datagram_endpoint
    does."""
    loop = asyncio.get_running_loop()
    if addressed_sends:
        opening = loop.create_task(
            loop.create_datagram_endpoint(protocol_factory, remote_addr=(host, port)),
            name=OPENING_TASK,
        )
    else:
        family, address = await _address(loop, host, port)
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            sock.connect(address)
        except BaseException:
            sock.close()
            raise
        opening = loop.create_task(
            loop.create_datagram_endpoint(protocol_factory, sock=sock), name=OPENING_TASK
        )
    try:
        transport, protocol = await asyncio.shield(opening)
    except asyncio.CancelledError:
        if opening.done():
            _close_opened(opening)
        else:
            opening.add_done_callback(_close_opened)
        raise
    return transport, protocol


async def _address(
    loop: asyncio.AbstractEventLoop, host: str, port: int
) -> tuple[socket.AddressFamily, Any]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM, flags=socket.AI_NUMERICHOST)
    except socket.gaierror:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    family, _, _, _, address = infos[0]
    return family, address


def _close_opened(opening: asyncio.Task[tuple[asyncio.BaseTransport, Any]]) -> None:
    if opening.cancelled() or opening.exception() is not None:
        return
    transport, _ = opening.result()
    transport.close()
