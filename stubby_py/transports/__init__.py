"""Upstream transports: DoT, DoH (HTTP/2, HTTP/3), DoQ and plain UDP/TCP behind one interface.

Transport modules are imported when an upstream needs them: h2 and aioquic cost about 15 MB of
memory that a DoT-only daemon (the default) should not carry.
"""

from __future__ import annotations

import importlib

from stubby_py.core.config import Config, UpstreamSpec
from stubby_py.transports.base import Transport

#: URI scheme → (module, class)
_TRANSPORTS: dict[str, tuple[str, str]] = {
    "tls": ("stubby_py.transports.dot", "DoTTransport"),
    "https": ("stubby_py.transports.doh", "DoHTransport"),
    "h3": ("stubby_py.transports.doh3", "DoH3Transport"),
    "quic": ("stubby_py.transports.doq", "DoQTransport"),
    "udp": ("stubby_py.transports.plain", "UDPTransport"),
    "tcp": ("stubby_py.transports.plain", "TCPTransport"),
}


def make_transport(spec: UpstreamSpec, config: Config) -> Transport:
    """The transport object for one configured upstream."""
    try:
        module_name, class_name = _TRANSPORTS[spec.transport]
    except KeyError:
        raise NotImplementedError(
            f"transport {spec.transport}:// is not available in this build"
        ) from None
    transport: Transport = getattr(importlib.import_module(module_name), class_name)(spec, config)
    return transport
