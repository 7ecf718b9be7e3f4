"""Opening an upstream's TCP stream: directly, or through its SOCKS5 or HTTP CONNECT proxy.

Every stream transport (DoT, TCP, DoH over HTTP/2, `check --connect`) opens its connections
here, so none can go around the proxy. Through a proxy, the tunnel comes first (python-socks
speaks SOCKS5 and HTTP CONNECT over a plain socket), then the TLS handshake runs end to end
through it with the usual certificate, name and pin checks. A proxy that cannot be reached,
wants other credentials, refuses the tunnel or answers garbage fails the upstream with
`proxy-refused`, `proxy-auth` or `proxy-error` (a timeout with `timeout`); the upstream is
never tried directly instead.

QUIC (DoQ, HTTP/3) and plain UDP would need SOCKS5 UDP ASSOCIATE: the configuration refuses
them with a proxy (config.proxy_problem), and `open_stream` is never asked for them.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Callable
from typing import TypeVar

from python_socks import ProxyConnectionError, ProxyTimeoutError, ProxyType
from python_socks import ProxyError as SocksProxyError
from python_socks.async_.asyncio import Proxy

from stubby_py.config import Config, ProxySpec, UpstreamSpec, upstream_proxy
from stubby_py.errors import (
    ProxyAuthError,
    ProxyError,
    ProxyRefusedError,
    UpstreamTimeoutError,
)

P = TypeVar("P", bound=asyncio.BaseProtocol)

_PROXY_TYPES = {"socks5": ProxyType.SOCKS5, "socks5h": ProxyType.SOCKS5, "http": ProxyType.HTTP}
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
    connector = Proxy(
        _PROXY_TYPES[proxy.kind],
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
