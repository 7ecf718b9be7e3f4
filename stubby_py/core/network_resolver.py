"""The network's own resolver: which one the network offered, from what the system recorded.

Used for one purpose only, the captive-portal check (core/portal.py): never as an upstream.
`network_resolver: auto` reads, in this order, and takes the first usable address:

1. /run/NetworkManager/no-stub-resolv.conf   NetworkManager's servers (DHCP/RA or configured)
2. /run/systemd/resolve/resolv.conf          systemd-resolved's servers, per link included
3. /run/systemd/netif/links/*                systemd-networkd's state of each link (DNS=)
4. /etc/resolv.conf.before-stubby-py         the copy the README's set-up keeps
5. /etc/resolv.conf                          (when a DHCP client rewrote it)

An address is unusable when it is loopback (127.0.0.53 is resolved's stub, 127.0.0.1 may be
us), unspecified, an IPv6 link-local one (no interface to scope it to) or one we listen on.
A network's captive-portal URI (RFC 8910, DHCP option 114 or the RA option) is read where the
system records it in a file: systemd-networkd's link state (CAPTIVE_PORTAL=, systemd 254 and
later). NetworkManager shows it only over D-Bus, which is not read.
This module parses and chooses; daemon/road.py reads the files.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

NM_RESOLV_CONF = "/run/NetworkManager/no-stub-resolv.conf"
RESOLVED_RESOLV_CONF = "/run/systemd/resolve/resolv.conf"
NETWORKD_LINKS = "/run/systemd/netif/links"
SAVED_RESOLV_CONF = "/etc/resolv.conf.before-stubby-py"
RESOLV_CONF = "/etc/resolv.conf"
#: the files read, in order (networkd's links directory: each file in it, by name)
SOURCES = (NM_RESOLV_CONF, RESOLVED_RESOLV_CONF, NETWORKD_LINKS, SAVED_RESOLV_CONF, RESOLV_CONF)


@dataclass(frozen=True, slots=True)
class NetworkResolver:
    address: str
    port: int = 53
    #: where it was learned (a file's path, or "config")
    source: str = "config"

    @property
    def label(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"udp://{host}:{self.port}"


def resolv_conf_servers(text: str) -> list[str]:
    """The `nameserver` addresses of a resolv.conf, in order."""
    servers = []
    for line in text.splitlines():
        fields = line.split("#", 1)[0].split(";", 1)[0].split()
        if len(fields) >= 2 and fields[0] == "nameserver":
            servers.append(fields[1])
    return servers


def link_fields(text: str) -> dict[str, str]:
    """A systemd-networkd link state file (KEY=VALUE lines)."""
    fields = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and not line.startswith("#"):
            fields[key.strip()] = value.strip()
    return fields


def link_servers(text: str) -> list[str]:
    """The link's DNS servers; networkd may write ADDRESS:PORT, [ADDRESS]:PORT, %IFINDEX and
    #SERVER-NAME forms: the address is kept (a scoped one stays scoped, and is skipped)."""
    servers = []
    for item in link_fields(text).get("DNS", "").split():
        item = item.split("#", 1)[0]
        if item.startswith("["):
            host, _, rest = item[1:].partition("]")
            item = host + (rest if rest.startswith("%") else "")
        elif item.count(":") == 1:
            item = item.split(":", 1)[0]
        servers.append(item)
    return servers


def link_portal(text: str) -> str | None:
    """The RFC 8910 captive-portal URI networkd records for the link, if any."""
    return link_fields(text).get("CAPTIVE_PORTAL") or None


def portal_host(uri: str | None) -> str | None:
    """The host name of a captive-portal URI (RFC 8910: https, the RFC 8908 API), to resolve
    through the network resolver; None if there is none or it is an IP address."""
    if not uri:
        return None
    try:
        host = urlsplit(uri).hostname
    except ValueError:
        return None
    if not host:
        return None
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return host.rstrip(".").lower() + "."
    return None


def usable(address: str, own: Iterable[tuple[str, int]]) -> bool:
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if ip.is_loopback or ip.is_unspecified or ip.is_multicast or "%" in address:
        return False
    if ip.version == 6 and ip.is_link_local:
        return False
    return all(ipaddress.ip_address(host) != ip for host, _port in own)


def choose(
    sources: Sequence[tuple[str, Sequence[str]]], own: Iterable[tuple[str, int]]
) -> NetworkResolver | None:
    """The first usable server of the first source that has one: (source, servers) in order."""
    own = list(own)
    for source, servers in sources:
        for server in servers:
            if usable(server, own):
                return NetworkResolver(str(ipaddress.ip_address(server)), 53, source)
    return None


def configured(setting: str) -> NetworkResolver | None:
    """`network_resolver: udp://IP[:PORT]` (checked by the configuration reader)."""
    if not setting.startswith("udp://"):
        return None
    parts = urlsplit(setting)
    return NetworkResolver(str(parts.hostname), parts.port or 53, "config")
