"""Upstream transports: DoT, DoH (HTTP/2, HTTP/3), DoQ and plain UDP/TCP behind one interface."""

from __future__ import annotations

from collections.abc import Callable

from stubby_py.config import Config, UpstreamSpec
from stubby_py.transports.base import Transport
from stubby_py.transports.doh import DoHTransport
from stubby_py.transports.doh3 import DoH3Transport
from stubby_py.transports.doq import DoQTransport
from stubby_py.transports.dot import DoTTransport
from stubby_py.transports.plain import TCPTransport, UDPTransport

_TRANSPORTS: dict[str, Callable[[UpstreamSpec, Config], Transport]] = {
    "tls": DoTTransport,
    "https": DoHTransport,
    "h3": DoH3Transport,
    "quic": DoQTransport,
    "udp": UDPTransport,
    "tcp": TCPTransport,
}


def make_transport(spec: UpstreamSpec, config: Config) -> Transport:
    """The transport object for one configured upstream."""
    try:
        transport_class = _TRANSPORTS[spec.transport]
    except KeyError:
        raise NotImplementedError(
            f"transport {spec.transport}:// is not available in this build"
        ) from None
    return transport_class(spec, config)
