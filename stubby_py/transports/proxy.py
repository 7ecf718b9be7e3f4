"""Opening an upstream's TCP stream: directly, or through its SOCKS5 or HTTP CONNECT proxy.

Every stream transport (DoT, TCP, DoH over HTTP/2, `check --connect`) opens its connections
here, so none can go around the proxy. Through a proxy, the tunnel comes first (python-socks
speaks SOCKS5 and HTTP CONNECT over a plain socket), then the TLS handshake runs end to end
through it with the usual certificate, name and pin checks. A proxy that cannot be reached,
wants other credentials, refuses the tunnel or answers garbage fails the upstream with
`proxy-refused`, `proxy-auth` or `proxy-error` (a timeout with `timeout`); the upstream is
never tried directly instead.

QUIC (DoQ, HTTP/3) datagrams go through a SOCKS5 proxy's UDP ASSOCIATE (RFC 1928 §7):
`open_datagram` asks for the association over a TCP control connection (kept open: the
association lasts as long as it), then sends each datagram to the proxy's relay with the SOCKS5
UDP header naming the upstream, and takes the header off the relay's replies. python-socks has
no UDP ASSOCIATE, so that exchange is written here (greeting, RFC 1929 credentials, the
request, its reply). A proxy without it (microsocks answers "command not supported") fails the
upstream with `proxy-error`. HTTP proxies carry TCP only; plain udp:// upstreams are refused with
a proxy (config.proxy_problem).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import ssl
import struct
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from stubby_py.core.config import Config, ProxySpec, UpstreamSpec, upstream_proxy
from stubby_py.core.errors import (
    ProxyAuthError,
    ProxyError,
    ProxyRefusedError,
    UpstreamTimeoutError,
)
from stubby_py.transports.datagram import open_connected

if TYPE_CHECKING:
    from python_socks import ProxyError as SocksProxyError

P = TypeVar("P", bound=asyncio.BaseProtocol)
D = TypeVar("D", bound=asyncio.DatagramProtocol)

#: HTTP 407 Proxy Authentication Required, and 401 that some proxies (tinyproxy) answer instead
_HTTP_AUTH_CODES = (401, 407)


def tunnel_destination(spec: UpstreamSpec, proxy: ProxySpec, host: str) -> str:
    """What the proxy is asked to connect to: with socks5h the upstream's authentication name
    (the proxy resolves it: Tor), else the address."""
    if proxy.kind == "socks5h" and spec.auth_name:
        return spec.auth_name
    return host


def path_text(spec: UpstreamSpec, config: Config) -> str:
    """How the upstream is reached, for `check --connect`: `direct` or `via socks5 IP:PORT`."""
    proxy = upstream_proxy(spec, config)
    return "direct" if proxy is None else f"via {proxy.label}"


async def open_stream(
    spec: UpstreamSpec,
    config: Config,
    host: str,
    port: int,
    protocol_factory: Callable[[], P],
    *,
    ssl_context: ssl.SSLContext | None,
    server_hostname: str | None,
    timeout: float,
) -> tuple[asyncio.Transport, P]:
    """A connection to the upstream at host:port (TLS when `ssl_context` is given).

    Raises OSError (ssl.SSLError included) for the TCP connect or TLS handshake, as
    loop.create_connection does (failures.connect_error maps it), and ProxyError or
    UpstreamTimeoutError for the proxy's part.
    """
    loop = asyncio.get_running_loop()
    proxy = upstream_proxy(spec, config)
    if proxy is None:
        if ssl_context is None:
            return await loop.create_connection(protocol_factory, host, port)
        return await loop.create_connection(
            protocol_factory, host, port, ssl=ssl_context,
            server_hostname=server_hostname, ssl_handshake_timeout=timeout,
        )  # fmt: skip
    sock = await _tunnel(spec, proxy, host, port, timeout)
    try:
        if ssl_context is None:
            return await loop.create_connection(protocol_factory, sock=sock)
        return await loop.create_connection(
            protocol_factory, sock=sock, ssl=ssl_context,
            server_hostname=server_hostname, ssl_handshake_timeout=timeout,
        )  # fmt: skip
    except BaseException:
        sock.close()
        raise


async def _tunnel(
    spec: UpstreamSpec, proxy: ProxySpec, host: str, port: int, timeout: float
) -> socket.socket:
    """A connected socket to host:port through the proxy, or the proxy's failure."""
    # imported here: a daemon without a proxy (most) need not load python-socks
    from python_socks import ProxyConnectionError, ProxyTimeoutError, ProxyType
    from python_socks import ProxyError as SocksProxyError
    from python_socks.async_.asyncio import Proxy

    kinds = {"socks5": ProxyType.SOCKS5, "socks5h": ProxyType.SOCKS5, "http": ProxyType.HTTP}
    connector = Proxy(
        kinds[proxy.kind],
        proxy.host,
        proxy.port,
        username=proxy.username,
        password=proxy.password,
        rdns=proxy.kind == "socks5h",
    )
    destination = tunnel_destination(spec, proxy, host)
    where = f"{spec.label}: proxy {proxy.label}"
    try:
        return await connector.connect(destination, port, timeout=timeout)
    except ProxyTimeoutError:
        raise UpstreamTimeoutError(f"{where}: no tunnel within {timeout:g} s") from None
    except ProxyConnectionError as exc:
        cause = exc.__cause__ if isinstance(exc.__cause__, OSError) else exc
        reason = cause.strerror or str(cause)
        raise ProxyRefusedError(f"{where} cannot be reached: {reason}") from None
    except SocksProxyError as exc:
        raise _reply_error(where, exc) from None
    except OSError as exc:  # the proxy cut the connection in the middle of its reply
        raise ProxyError(f"{where} closed the connection: {exc.strerror or exc}") from None
    except (ValueError, LookupError, UnicodeError) as exc:  # a reply python-socks cannot parse
        raise ProxyError(f"{where} answered garbage: {exc}") from None


def _reply_error(where: str, exc: SocksProxyError) -> ProxyError:
    text = str(exc)
    lowered = text.lower()
    if exc.error_code in _HTTP_AUTH_CODES or "authentication" in lowered:
        return ProxyAuthError(f"{where} refused the credentials: {text}")
    if "unexpected socks version" in lowered or "invalid" in lowered or "malformed" in lowered:
        return ProxyError(f"{where} answered garbage: {text}")
    if not text or "closed unexpectedly" in lowered:
        return ProxyError(f"{where} closed the connection without a full answer")
    return ProxyError(f"{where} refused the tunnel: {text}")


# --- SOCKS5 UDP ASSOCIATE (QUIC) ----------------------------------------------------------------

_SOCKS_VERSION = 5
_NO_AUTH, _USER_PASS, _NO_METHOD = 0x00, 0x02, 0xFF
_UDP_ASSOCIATE = 0x03
_ATYP_IPV4, _ATYP_NAME, _ATYP_IPV6 = 0x01, 0x03, 0x04
_SOCKS_REPLIES = {
    1: "general SOCKS server failure", 2: "connection not allowed by ruleset",
    3: "network unreachable", 4: "host unreachable", 5: "connection refused",
    6: "TTL expired", 7: "command not supported (no UDP ASSOCIATE)",
    8: "address type not supported",
}  # fmt: skip


class _SocksReplyError(Exception):
    """The proxy's answer in the UDP ASSOCIATE exchange: `auth` for the credentials' part."""

    def __init__(self, text: str, *, auth: bool = False, garbage: bool = False) -> None:
        super().__init__(text)
        self.auth = auth
        self.garbage = garbage


async def open_datagram(
    spec: UpstreamSpec,
    config: Config,
    host: str,
    port: int,
    protocol_factory: Callable[[], D],
    *,
    timeout: float,
) -> tuple[asyncio.DatagramTransport, D]:
    """A datagram endpoint to the upstream at host:port: connected directly, or through the
    proxy's UDP relay (the protocol sees the upstream as its peer either way).

    Raises OSError for the direct socket (failures.socket_error maps it), and ProxyError or
    UpstreamTimeoutError for the proxy's part.
    """
    loop = asyncio.get_running_loop()
    proxy = upstream_proxy(spec, config)
    if proxy is None:
        return await open_connected(protocol_factory, host, port, addressed_sends=True)
    where = f"{spec.label}: proxy {proxy.label}"
    if proxy.kind == "http":  # the configuration refuses it; never send around the proxy
        raise ProxyError(f"{where} is an HTTP proxy: it carries no UDP")
    reader, writer, relay = await _associate(proxy, where, timeout)
    header = _udp_header(tunnel_destination(spec, proxy, host), port)
    inner = protocol_factory()
    try:
        udp, adapter = await open_connected(
            lambda: _SocksDatagrams(inner, header, (host, port), writer), *relay
        )
    except BaseException:
        writer.transport.abort()
        raise
    wrapper = adapter.attach(udp)
    adapter.watcher = loop.create_task(_watch_control(reader, wrapper))
    return wrapper, inner


async def _associate(
    proxy: ProxySpec, where: str, timeout: float
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, tuple[str, int]]:
    """The control connection and the relay's address, or the proxy's failure."""
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(proxy.host, proxy.port), timeout
        )
    except TimeoutError:
        raise UpstreamTimeoutError(f"{where}: no connection within {timeout:g} s") from None
    except OSError as exc:
        raise ProxyRefusedError(f"{where} cannot be reached: {exc.strerror or exc}") from None
    try:
        relay = await asyncio.wait_for(_udp_associate(reader, writer, proxy), timeout)
    except BaseException as exc:
        writer.transport.abort()
        if isinstance(exc, TimeoutError):
            raise UpstreamTimeoutError(f"{where}: no UDP ASSOCIATE within {timeout:g} s") from None
        if isinstance(exc, asyncio.IncompleteReadError | OSError):
            raise ProxyError(f"{where} closed the connection without a full answer") from None
        if isinstance(exc, _SocksReplyError):
            error = ProxyAuthError if exc.auth else ProxyError
            what = "answered garbage" if exc.garbage else "refused UDP ASSOCIATE"
            raise error(f"{where} {what}: {exc}") from None
        raise
    if ipaddress.ip_address(relay[0]).is_unspecified:
        relay = (proxy.host, relay[1])  # "the same address as the control connection"
    return reader, writer, relay


async def _udp_associate(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, proxy: ProxySpec
) -> tuple[str, int]:
    """The SOCKS5 exchange up to the UDP ASSOCIATE reply: the relay's (address, port)."""
    methods = bytes([_NO_AUTH, _USER_PASS]) if proxy.username is not None else bytes([_NO_AUTH])
    writer.write(bytes([_SOCKS_VERSION, len(methods)]) + methods)
    version, method = await reader.readexactly(2)
    if version != _SOCKS_VERSION:
        raise _SocksReplyError(f"not a SOCKS5 reply (version {version})", garbage=True)
    if method == _NO_METHOD:
        raise _SocksReplyError("it accepts none of the offered methods", auth=True)
    if method == _USER_PASS and proxy.username is not None:
        user = proxy.username.encode()
        password = (proxy.password or "").encode()
        writer.write(bytes([1, len(user)]) + user + bytes([len(password)]) + password)
        _, status = await reader.readexactly(2)
        if status != 0:
            raise _SocksReplyError("username and password refused", auth=True)
    elif method != _NO_AUTH:
        raise _SocksReplyError(f"unknown method {method}", garbage=True)
    # the client's address is not known before its socket exists: 0.0.0.0:0 (RFC 1928 §7)
    writer.write(bytes([_SOCKS_VERSION, _UDP_ASSOCIATE, 0, _ATYP_IPV4, 0, 0, 0, 0, 0, 0]))
    version, reply, _, atyp = await reader.readexactly(4)
    if version != _SOCKS_VERSION:
        raise _SocksReplyError(f"not a SOCKS5 reply (version {version})", garbage=True)
    if reply != 0:
        raise _SocksReplyError(_SOCKS_REPLIES.get(reply, f"reply code {reply}"))
    if atyp == _ATYP_IPV4:
        address = socket.inet_ntop(socket.AF_INET, await reader.readexactly(4))
    elif atyp == _ATYP_IPV6:
        address = socket.inet_ntop(socket.AF_INET6, await reader.readexactly(16))
    else:
        raise _SocksReplyError(f"relay address of type {atyp}", garbage=True)
    (relay_port,) = struct.unpack("!H", await reader.readexactly(2))
    return address, relay_port


def _udp_header(host: str, port: int) -> bytes:
    """RSV, FRAG 0, the destination (RFC 1928 §7)."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        name = host.encode("idna")
        destination = bytes([_ATYP_NAME, len(name)]) + name
    else:
        atyp = _ATYP_IPV4 if address.version == 4 else _ATYP_IPV6
        destination = bytes([atyp]) + address.packed
    return b"\x00\x00\x00" + destination + struct.pack("!H", port)


def _payload_offset(data: bytes) -> int | None:
    """Where the datagram starts after the relay's header; None for a fragment or garbage."""
    if len(data) < 4 or data[2] != 0:
        return None  # fragments are never sent by us, and are not taken
    atyp = data[3]
    if atyp == _ATYP_IPV4:
        offset = 4 + 4 + 2
    elif atyp == _ATYP_IPV6:
        offset = 4 + 16 + 2
    elif atyp == _ATYP_NAME and len(data) > 4:
        offset = 5 + data[4] + 2
    else:
        return None
    return offset if len(data) >= offset else None


async def _watch_control(reader: asyncio.StreamReader, transport: asyncio.BaseTransport) -> None:
    """The association ends with the control connection: close the endpoint when it does."""
    with contextlib.suppress(OSError):
        while await reader.read(512):
            pass
    transport.close()


class _SocksDatagramTransport(asyncio.DatagramTransport):
    """What the QUIC protocol sends through: each datagram with the SOCKS5 header, to the relay;
    `peername` is the upstream, as on a direct socket."""

    def __init__(
        self,
        udp: asyncio.DatagramTransport,
        header: bytes,
        peer: tuple[str, int],
        control: asyncio.StreamWriter,
    ) -> None:
        super().__init__()
        self._udp = udp
        self._header = header
        self._peer = peer
        self._control = control

    def sendto(self, data: Any, addr: Any = None) -> None:
        self._udp.sendto(self._header + bytes(data))

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "peername":
            return self._peer
        return self._udp.get_extra_info(name, default)

    def is_closing(self) -> bool:
        return self._udp.is_closing()

    def close(self) -> None:
        self._udp.close()
        self._control.close()

    def abort(self) -> None:
        self._udp.abort()
        self._control.transport.abort()


class _SocksDatagrams(asyncio.DatagramProtocol):
    """Between the relay's socket and the QUIC protocol: strips the relay's header."""

    def __init__(
        self,
        inner: asyncio.DatagramProtocol,
        header: bytes,
        peer: tuple[str, int],
        control: asyncio.StreamWriter,
    ) -> None:
        self._inner = inner
        self._header = header
        self._peer = peer
        self._control = control
        #: what the inner protocol sends through (made with the relay's socket)
        self.wrapper: _SocksDatagramTransport | None = None
        #: reads the control connection until it closes (kept: a task needs a reference)
        self.watcher: asyncio.Task[None] | None = None

    def attach(self, udp: asyncio.DatagramTransport) -> _SocksDatagramTransport:
        """The inner protocol's transport, made (once) from the relay's socket: here rather
        than in connection_made, which the loop may call only after the endpoint is returned."""
        if self.wrapper is None:
            self.wrapper = _SocksDatagramTransport(udp, self._header, self._peer, self._control)
            self._inner.connection_made(self.wrapper)
        return self.wrapper

    def datagram_received(self, data: bytes, addr: Any) -> None:
        offset = _payload_offset(data)
        if offset is not None:
            self._inner.datagram_received(data[offset:], self._peer)

    def error_received(self, exc: Exception) -> None:
        self._inner.error_received(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self._control.close()
        if self.watcher is not None:
            self.watcher.cancel()
        self._inner.connection_lost(exc)
