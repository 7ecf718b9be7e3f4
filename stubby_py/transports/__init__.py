"""Upstream transports: DoT, DoH (HTTP/2, HTTP/3), DoQ and plain UDP/TCP behind one interface."""

from __future__ import annotations

from stubby_py.config import Config, UpstreamSpec
from stubby_py.transports.base import Transport
from stubby_py.transports.dot import DoTTransport
from stubby_py.transports.plain import TCPTransport, UDPTransport


def make_transport(spec: UpstreamSpec, config: Config) -> Transport:
    """The transport object for one configured upstream."""
    if spec.transport == "tls":
        return DoTTransport(spec, config)
    if spec.transport == "udp":
        return UDPTransport(spec, config)
    if spec.transport == "tcp":
        return TCPTransport(spec, config)
    raise NotImplementedError(f"transport {spec.transport}:// is not available in this build")
