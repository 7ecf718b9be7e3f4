"""DNS over TLS, TCP and UDP on loopback: `LocalUpstream` (RFC 7766 framing on streams).

It answers through `answers.outcome` and counts connections; with a TLS context it serves DoT
only, without one TCP and UDP on the same port number.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import struct
from collections.abc import Iterator

from tests.servers.answers import outcome
from tests.servers.misbehaviour import Misbehaviour
from tests.servers.thread import ServerThread


class LocalUpstream(ServerThread):
    """Serve until stopped. `tls_context` None: plain TCP (and UDP) only."""

    def __init__(self, tls_context: ssl.SSLContext | None) -> None:
        super().__init__()
        self._tls = tls_context
        self._writers: set[asyncio.StreamWriter] = set()
        self.udp_port = 0
        #: where to listen (a test may set another address, or a fixed port, before start)
        self.host = "127.0.0.1"
        self.port = 0

    async def _start(self) -> None:
        self._server = await asyncio.start_server(
            self._serve_stream, self.host, self.port, ssl=self._tls
        )
        self.port = self._server.sockets[0].getsockname()[1]
        if self._tls is None:
            self._udp, _ = await self._loop.create_datagram_endpoint(
                lambda: _UDPServer(self), local_addr=(self.host, self.port)
            )
            self.udp_port = self.port

    async def _stop(self) -> None:
        self._server.close()
        for writer in list(self._writers):
            writer.close()
        if self._tls is None:
            self._udp.close()
        await asyncio.sleep(0.05)

    def drop_connections(self) -> None:
        """Close every open connection now (as a server restart would)."""

        def _drop() -> None:
            for writer in list(self._writers):
                writer.transport.abort()

        self._loop.call_soon_threadsafe(_drop)

    async def _serve_stream(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.state.connections += 1
        self.state.peers.append(writer.get_extra_info("peername")[0])
        ssl_object = writer.get_extra_info("ssl_object")
        if ssl_object is not None:
            self.state.handshakes += 1
            self.state.resumptions += ssl_object.session_reused
        self._writers.add(writer)
        held: list[bytes] = []
        try:
            while True:
                header = await reader.readexactly(2)
                data = await reader.readexactly(struct.unpack("!H", header)[0])
                result = outcome(self.state, data)
                if result.misbehaviour is Misbehaviour.CLOSE:
                    writer.transport.abort()
                    return
                reply = result.reply
                if reply is None:
                    continue
                if result.misbehaviour is Misbehaviour.REVERSE:
                    held.append(reply)
                    if len(held) >= 2:
                        for item in reversed(held):
                            writer.write(struct.pack("!H", len(item)) + item)
                        held.clear()
                    continue
                if result.delay:
                    loop = asyncio.get_running_loop()
                    loop.call_later(result.delay, _write_framed, writer, reply)
                else:
                    _write_framed(writer, reply)
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            pass
        finally:
            self._writers.discard(writer)
            with contextlib.suppress(Exception):
                writer.close()


def _write_framed(writer: asyncio.StreamWriter, reply: bytes) -> None:
    if not writer.is_closing():
        writer.write(struct.pack("!H", len(reply)) + reply)


class _UDPServer(asyncio.DatagramProtocol):
    def __init__(self, owner: LocalUpstream) -> None:
        self._owner = owner

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        result = outcome(self._owner.state, data, udp=True)
        if result.reply is None:
            return
        send = self._transport.sendto  # type: ignore[attr-defined]
        if result.delay:
            asyncio.get_running_loop().call_later(result.delay, send, result.reply, addr)
        else:
            send(result.reply, addr)


@contextlib.contextmanager
def local_upstream(tls_context: ssl.SSLContext | None) -> Iterator[LocalUpstream]:
    server = LocalUpstream(tls_context).start()
    try:
        yield server
    finally:
        server.stop()
