"""Plain DNS over UDP and TCP, for resolvers on the LAN that forwarding rules name.

Never used for the default pool: cleartext only where the configuration asks for it.
UDP replies with TC set are retried over TCP (RFC 7766 §5); TCP is the DoT stream without TLS.
Each UDP query has a socket of its own (a fresh source port, RFC 5452); at most MAX_UDP_SOCKETS
per upstream are open at once (the file descriptor budget counts on it: fdbudget.py), and a query
over that waits for one, within its deadline.
"""

from __future__ import annotations

import asyncio
import secrets

from stubby_py.core import wire
from stubby_py.core.config import Config, UpstreamSpec
from stubby_py.core.errors import UpstreamConnectError, UpstreamTimeoutError
from stubby_py.transports.base import ConnectInfo, Transport, TransportStats
from stubby_py.transports.datagram import open_connected
from stubby_py.transports.dot import DoTTransport

MAX_UDP_SOCKETS = 64


class TCPTransport(DoTTransport):
    uses_tls = False


class _UDPExchange(asyncio.DatagramProtocol):
    def __init__(self, msg_id: int, question: bytes, stats: TransportStats) -> None:
        self.future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._msg_id = msg_id
        self._question = question
        self._stats = stats

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        if self.future.done():
            return
        if (
            len(data) < wire.HEADER_LEN
            or wire.header_id(data) != self._msg_id
            or not wire.is_response_to_query(data)
            or not wire.question_matches(data, self._question)
        ):
            # RFC 5452: ignore and keep waiting for the real reply
            self._stats.mismatched += 1
            return
        self.future.set_result(data)

    def error_received(self, exc: Exception) -> None:
        if not self.future.done():
            self.future.set_exception(UpstreamConnectError(f"UDP error: {exc}"))


class UDPTransport:
    def __init__(self, spec: UpstreamSpec, config: Config) -> None:
        self.spec = spec
        self.stats = TransportStats()
        self._tcp = TCPTransport(spec, config)
        self._sockets = asyncio.Semaphore(MAX_UDP_SOCKETS)

    @property
    def name(self) -> str:
        return self.spec.label

    @property
    def is_encrypted(self) -> bool:
        return False

    async def exchange(self, query: bytes, deadline: float) -> bytes:
        reply = await self._exchange(query, deadline)
        if wire.U16.unpack_from(reply, 2)[0] & wire.TC:
            reply = await self._tcp.exchange(query, deadline)
        return reply

    async def connect(self, deadline: float, *, fresh: bool = False) -> ConnectInfo:
        """UDP has no connection: nothing to open, nothing measured."""
        return ConnectInfo(0.0, protocol="UDP")

    async def _exchange(self, query: bytes, deadline: float) -> bytes:
        try:
            async with asyncio.timeout_at(deadline):
                await self._sockets.acquire()
        except TimeoutError:
            raise UpstreamTimeoutError(
                f"{self.name}: timed out, {MAX_UDP_SOCKETS} queries already in flight"
            ) from None
        try:
            return await self._exchange_on_new_socket(query, deadline)
        finally:
            self._sockets.release()

    async def _exchange_on_new_socket(self, query: bytes, deadline: float) -> bytes:
        loop = asyncio.get_running_loop()
        msg_id = secrets.randbits(16)  # cleartext: unpredictable IDs (RFC 5452)
        question = query[wire.HEADER_LEN : wire.question_end(query)]
        try:
            transport, protocol = await open_connected(
                lambda: _UDPExchange(msg_id, question, self.stats),
                self.spec.address, self.spec.port,
            )  # fmt: skip
        except OSError as exc:
            raise UpstreamConnectError(f"{self.name}: {exc.strerror or exc}") from None
        try:
            transport.sendto(wire.with_id(query, msg_id))
            return await asyncio.wait_for(protocol.future, max(0.0, deadline - loop.time()))
        except TimeoutError:
            raise UpstreamTimeoutError(f"{self.name}: timed out") from None
        finally:
            transport.close()

    def reset(self) -> None:
        """Network change: each UDP query has a socket of its own; only TCP holds a connection."""
        self._tcp.reset()

    async def aclose(self) -> None:
        await self._tcp.aclose()


_: type[Transport] = UDPTransport
