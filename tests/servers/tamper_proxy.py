"""A loopback DNS proxy that forges answers: one flipped RDATA byte under a valid RRSIG.

It sits between a client (stubby-py) and an upstream (the hierarchy's Unbound) on UDP and TCP
(RFC 7766 framing), relays every message, and in each reply flips one octet of the RDATA of the
first answer record whose owner is the target name (RRSIGs skipped, so the signature stays the
original one and no longer matches). A validator must turn such a reply into SERVFAIL
(RFC 4035 §5.3), never pass on the forged data.

``with running_tamper_proxy(upstream_port, "www.nsec.test.") as proxy:`` runs it in a thread on
its own event loop; ``proxy.enabled`` switches the forging off and on, ``proxy.tampered`` counts
forged replies, ``proxy.last`` holds the last (original, forged) pair.

`ResettingProxy` is the other tamperer here: a TCP relay for TLS (DoT, DoH) that kills each
connection after the server has sent it a given number of TLS records, as a NAT or middlebox that
cuts long-lived connections does: the record that hits the limit is dropped and both sides get a
TCP RST, so whatever was in flight on that connection is lost.
``with running_resetting_proxy(upstream_port, cut_after=30) as proxy:`` runs it like the forging
one; ``python -m tests.servers.tamper_proxy --upstream PORT --cut-after 30`` runs it as a
process of its own (bench/resets.py).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import socket
import struct
import sys
import threading
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from typing import Any

import dns.exception
import dns.name
import dns.rdatatype

from stubby_py.transports.datagram import open_connected
from tests.peers import LOOPBACK, free_ports

HEADER = struct.Struct("!HHHHHH")
RR_FIXED = struct.Struct("!HHIH")  # type, class, TTL, RDLENGTH (RFC 1035 §4.1.3)


@dataclass(frozen=True)
class Flip:
    """Where a reply was changed: the octet's offset and the RDATA it lies in."""

    offset: int
    rdata_start: int
    rdata_length: int
    rdtype: int


def find_rdata(wire: bytes, owner: dns.name.Name) -> Flip | None:
    """Locate the last RDATA octet of the first non-RRSIG answer record owned by ``owner``."""
    try:
        _, _, qdcount, ancount, _, _ = HEADER.unpack_from(wire)
        offset = HEADER.size
        for _ in range(qdcount):
            _, used = dns.name.from_wire(wire, offset)
            offset += used + 4
        for _ in range(ancount):
            name, used = dns.name.from_wire(wire, offset)
            offset += used
            rdtype, _, _, length = RR_FIXED.unpack_from(wire, offset)
            offset += RR_FIXED.size
            if name == owner and rdtype != dns.rdatatype.RRSIG and length > 0:
                if offset + length > len(wire):
                    return None
                return Flip(offset + length - 1, offset, length, rdtype)
            offset += length
    except (struct.error, dns.exception.DNSException):
        return None
    return None


def flip_rdata_byte(wire: bytes, owner: dns.name.Name) -> tuple[bytes, Flip | None]:
    """``wire`` with one RDATA octet inverted (see `find_rdata`), or unchanged and None."""
    flip = find_rdata(wire, owner)
    if flip is None:
        return wire, None
    forged = bytearray(wire)
    forged[flip.offset] ^= 0xFF
    return bytes(forged), flip


class TamperProxy:
    """The proxy itself, on the running event loop: `start`, then `aclose`."""

    def __init__(self, upstream_port: int, name: str, *, upstream_host: str = LOOPBACK) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.owner = dns.name.from_text(name)
        #: forge replies (True) or relay them untouched (False); may be set from any thread
        self.enabled = True
        self.forwarded = 0
        self.tampered = 0
        #: the last forged reply: (as received, as sent)
        self.last: tuple[bytes, bytes] | None = None
        self.last_flip: Flip | None = None
        self.port = 0
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    def process(self, reply: bytes) -> bytes:
        self.forwarded += 1
        if not self.enabled:
            return reply
        forged, flip = flip_rdata_byte(reply, self.owner)
        if flip is not None:
            self.tampered += 1
            self.last = (reply, forged)
            self.last_flip = flip
        return forged

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        for _ in range(5):
            port = free_ports(1)[0]
            udp, _ = await loop.create_datagram_endpoint(
                lambda: _ClientDatagrams(self), local_addr=(LOOPBACK, port)
            )
            try:
                self._tcp = await asyncio.start_server(self._serve_tcp, LOOPBACK, port)
            except OSError:
                udp.close()
                continue
            self._udp = udp
            self.port = port
            return
        raise OSError("tamper proxy: no free UDP+TCP port")

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def relay_udp(self, query: bytes, client: tuple[str, int]) -> None:
        loop = asyncio.get_running_loop()
        received: asyncio.Future[bytes] = loop.create_future()
        # (not loop.create_datagram_endpoint: under uvloop a relay cancelled at stop while the
        # socket opens would leave it to the garbage collector, and its ResourceWarning would
        # land in a later test)
        transport, _ = await open_connected(lambda: _UpstreamDatagram(received), *self.upstream)
        try:
            transport.sendto(query)
            reply = await asyncio.wait_for(received, 5.0)
        except TimeoutError:
            return
        finally:
            transport.close()
        if self._udp is not None:
            self._udp.sendto(self.process(reply), client)

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        up_writer: asyncio.StreamWriter | None = None
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
            self._writers.add(up_writer)
            await asyncio.gather(
                _copy_frames(reader, up_writer, None), _copy_frames(up_reader, writer, self)
            )
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            for w in (writer, up_writer):
                if w is not None:
                    self._writers.discard(w)
                    w.close()
                    with contextlib.suppress(OSError):
                        await w.wait_closed()

    async def aclose(self) -> None:
        if self._tcp is not None:
            self._tcp.close()
        for w in list(self._writers):
            w.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._tcp is not None:
            await self._tcp.wait_closed()
        if self._udp is not None:
            self._udp.close()
        await asyncio.sleep(0.01)  # let closed transports finish closing


async def _copy_frames(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, proxy: TamperProxy | None
) -> None:
    """Relay length-prefixed messages until EOF, forging replies when ``proxy`` is given."""
    while True:
        try:
            (length,) = struct.unpack("!H", await reader.readexactly(2))
            message = await reader.readexactly(length)
        except asyncio.IncompleteReadError:
            writer.close()
            return
        if proxy is not None:
            message = proxy.process(message)
        writer.write(struct.pack("!H", len(message)) + message)
        await writer.drain()


class _ClientDatagrams(asyncio.DatagramProtocol):
    def __init__(self, proxy: TamperProxy) -> None:
        self.proxy = proxy

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.proxy.spawn(self.proxy.relay_udp(data, addr))


class _UpstreamDatagram(asyncio.DatagramProtocol):
    def __init__(self, received: asyncio.Future[bytes]) -> None:
        self.received = received

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if not self.received.done():
            self.received.set_result(data)


#: TLS record header (RFC 8446 §5.1): content type, legacy version, length
TLS_RECORD = struct.Struct("!BHH")
#: TLS 1.3 sends everything after the ServerHello as application_data (content type 23)
TLS_APPLICATION_DATA = 23
#: how long a silent cut swallows what the client sends before it resets the connection after all
#: (some NATs answer a forgotten flow's packets with a RST later; and a client closing it
#: gracefully would otherwise wait out its TLS shutdown timeout, 30 s)
SILENT_HOLD = 3.0


class ResettingProxy:
    """A TCP relay that resets each connection once the server has sent it `cut_after` TLS
    application-data records (with TLS 1.3 that counts the encrypted handshake and the session
    tickets too: a few records more than the replies). cut_after 0: never cut.

    silent: cut without telling the client (a NAT that forgot the flow): its side stays open and
    whatever it sends is swallowed for SILENT_HOLD seconds (or until it closes), then reset."""

    def __init__(
        self,
        upstream_port: int,
        cut_after: int,
        *,
        upstream_host: str = LOOPBACK,
        silent: bool = False,
    ) -> None:
        self.upstream = (upstream_host, upstream_port)
        #: may be changed from any thread; applies to records counted from then on
        self.cut_after = cut_after
        self.silent = silent
        self.connections = 0
        self.cuts = 0
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self, port: int = 0, host: str = LOOPBACK) -> None:
        self._server = await asyncio.start_server(self._serve, host, port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.add(writer)
        up_writer: asyncio.StreamWriter | None = None
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
            self._writers.add(up_writer)
            upward = asyncio.ensure_future(_copy_bytes(reader, up_writer))
            try:
                cut = await self._copy_records(up_reader, writer)
            finally:
                upward.cancel()
                await asyncio.gather(upward, return_exceptions=True)
            if cut:
                self.cuts += 1
                _reset(up_writer)
                if self.silent:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(_swallow(reader), SILENT_HOLD)
                _reset(writer)
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            for w in (writer, up_writer):
                if w is not None:
                    self._writers.discard(w)
                    w.close()

    async def _copy_records(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        """Relay the server's TLS records; True when the connection is to be cut."""
        records = 0
        while True:
            try:
                header = await reader.readexactly(TLS_RECORD.size)
                content_type, _, length = TLS_RECORD.unpack(header)
                body = await reader.readexactly(length)
            except asyncio.IncompleteReadError:
                writer.close()
                return False
            if content_type == TLS_APPLICATION_DATA:
                records += 1
                if self.cut_after and records >= self.cut_after:
                    return True
            writer.write(header + body)
            await writer.drain()

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
        for w in list(self._writers):
            w.close()
        if self._server is not None:
            await self._server.wait_closed()
        await asyncio.sleep(0.01)


async def _swallow(reader: asyncio.StreamReader) -> None:
    while await reader.read(65536):
        pass  # into the void


async def _copy_bytes(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP RST (SO_LINGER 0), as a middlebox that kills a connection does."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


@contextlib.contextmanager
def running_resetting_proxy(
    upstream_port: int, cut_after: int, *, upstream_host: str = LOOPBACK, silent: bool = False
) -> Iterator[ResettingProxy]:
    """Run a `ResettingProxy` on an event loop in a background thread until the block ends."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="resetting-proxy", daemon=True)
    thread.start()
    proxy = ResettingProxy(upstream_port, cut_after, upstream_host=upstream_host, silent=silent)
    try:
        asyncio.run_coroutine_threadsafe(proxy.start(), loop).result(10)
        yield proxy
    finally:
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(proxy.aclose(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


@contextlib.contextmanager
def running_tamper_proxy(
    upstream_port: int, name: str, *, upstream_host: str = LOOPBACK
) -> Iterator[TamperProxy]:
    """Run a `TamperProxy` on an event loop in a background thread until the block ends."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="tamper-proxy", daemon=True)
    thread.start()
    proxy = TamperProxy(upstream_port, name, upstream_host=upstream_host)
    try:
        asyncio.run_coroutine_threadsafe(proxy.start(), loop).result(10)
        yield proxy
    finally:
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(proxy.aclose(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


async def _serve_resetting(args: argparse.Namespace) -> None:
    proxy = ResettingProxy(
        args.upstream, args.cut_after, upstream_host=args.upstream_host, silent=args.silent
    )
    await proxy.start(args.port, args.listen)
    print(f"listening on {args.listen}:{proxy.port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    print(f"connections {proxy.connections} cuts {proxy.cuts}", flush=True)
    await proxy.aclose()


def main(argv: list[str] | None = None) -> int:
    """Run a ResettingProxy as a process of its own (bench/resets.py) until SIGTERM."""
    parser = argparse.ArgumentParser(description="TCP relay that resets TLS connections")
    parser.add_argument("--listen", default=LOOPBACK)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--upstream-host", default=LOOPBACK)
    parser.add_argument("--upstream", type=int, required=True, help="the upstream's port")
    parser.add_argument("--cut-after", type=int, required=True, help="TLS records per connection")
    parser.add_argument("--silent", action="store_true", help="cut without a RST to the client")
    asyncio.run(_serve_resetting(parser.parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
