"""DNS stamps (`sdns://…`): decoded and mapped onto an upstream.

The format is the DNS Stamps specification (dnscrypt.info/stamps-specifications, also the
draft-denis-dns-stamps Internet-Draft): ``sdns://`` then unpadded base64url of a protocol byte,
8 bytes of informal properties (little-endian) and length-prefixed fields. ``LP(x)`` is one
length byte then x; ``VLP(x1, …, xn)`` is a set whose every length byte but the last has 0x80 set.

    0x02 DoH  props LP(addr) VLP(hashes) LP(hostname[:port]) LP(path) [VLP(bootstrap IPs)]
    0x03 DoT  props LP(addr) VLP(hashes) LP(hostname[:port]) [VLP(bootstrap IPs)]
    0x04 DoQ  as DoT
    0x00 plain props LP(addr)

`addr` is an IP (IPv6 in brackets) with an optional port, or only `:port`, or empty: then the
hostname is to be resolved elsewhere. Until upstreams by hostname exist, such a stamp is refused
with that reason. The hashes are SHA-256 digests of the TBS part of a certificate in the
validation chain (dnscrypt-proxy's semantics, not SPKI pins): they become `cert_hashes`, checked
on top of the normal verification. The bootstrap IPs are a hint that clients may ignore: ignored.

Pure: no I/O. Every malformed stamp is a ValueError saying what is wrong.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
from dataclasses import dataclass

from stubby_py.core.config import TRANSPORT_PORTS, UpstreamSpec, _check_hostname, is_ip

PREFIX = "sdns://"

#: protocol byte → our transport; the kinds we refuse are named in KIND_NAMES
TRANSPORTS = {0x02: "https", 0x03: "tls", 0x04: "quic", 0x00: "udp"}
KIND_NAMES = {
    0x00: "plain DNS",
    0x01: "DNSCrypt",
    0x02: "DNS-over-HTTPS",
    0x03: "DNS-over-TLS",
    0x04: "DNS-over-QUIC",
    0x05: "Oblivious DoH target",
    0x81: "anonymized DNSCrypt relay",
    0x85: "Oblivious DoH relay",
}
_BASE64URL = re.compile(r"[A-Za-z0-9_-]*={0,2}")
#: what a host name may not hold (it becomes the SNI and certificate name)
_NOT_IN_HOSTNAME = re.compile(r"[\s\x00-\x1f\x7f/#?@\[\]\\]")
#: informal properties, shown by `check`, acted on nowhere
PROPERTY_NAMES = ((1, "dnssec"), (2, "no-log"), (4, "no-filter"))


@dataclass(frozen=True, slots=True)
class Stamp:
    """A decoded DoH, DoT, DoQ or plain stamp, its fields as the specification names them."""

    protocol: int
    props: int
    addr: str
    hashes: tuple[bytes, ...] = ()
    hostname: str = ""
    path: str = ""
    bootstraps: tuple[str, ...] = ()

    @property
    def property_names(self) -> tuple[str, ...]:
        return tuple(name for bit, name in PROPERTY_NAMES if self.props & bit)


class _Fields:
    """Reads the length-prefixed fields, each overrun a ValueError naming the field."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    @property
    def at_end(self) -> bool:
        return self.pos == len(self.data)

    def take(self, length: int, what: str) -> bytes:
        end = self.pos + length
        if end > len(self.data):
            raise ValueError(f"the stamp is truncated in its {what}")
        chunk, self.pos = self.data[self.pos : end], end
        return chunk

    def lp(self, what: str) -> bytes:
        (length,) = self.take(1, f"{what} length")
        return self.take(length, what)

    def vlp(self, what: str) -> tuple[bytes, ...]:
        items = []
        while True:
            (length,) = self.take(1, f"{what} length")
            item = self.take(length & 0x7F, what)
            if item:
                items.append(item)
            if not length & 0x80:
                return tuple(items)

    def text(self, what: str) -> str:
        raw = self.lp(what)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError(f"the stamp's {what} is not UTF-8 text") from None


def _unbase64(body: str) -> bytes:
    """Strict base64url: a character outside the alphabet is an error, never skipped."""
    if not _BASE64URL.fullmatch(body):
        raise ValueError("the stamp is not valid base64url (A-Z a-z 0-9 - _ only)")
    body = body.rstrip("=")
    try:
        data = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
    except (binascii.Error, ValueError):
        raise ValueError("the stamp is not valid base64url (its length is impossible)") from None
    return data


def decode(text: str) -> Stamp:
    """Decode an `sdns://` stamp. Raises ValueError (kind refused, or what is malformed)."""
    if not text.startswith(PREFIX):
        raise ValueError("a DNS stamp starts with sdns://")
    body = text[len(PREFIX) :].strip()
    if "/" in body:
        # a relay and a server joined by '/' (dnscrypt-proxy's anonymized routes)
        raise ValueError("a relay-and-server stamp pair is not supported: give the server's stamp")
    data = _unbase64(body)
    if not data:
        raise ValueError("the stamp is empty")
    if data[0] not in TRANSPORTS:
        kind = KIND_NAMES.get(data[0], f"unknown kind 0x{data[0]:02x}")
        raise ValueError(f"{kind} stamps are not supported (DoH, DoT and DoQ stamps are)")
    fields = _Fields(data[1:])
    props = int.from_bytes(fields.take(8, "properties"), "little")
    addr = fields.text("address")
    stamp = Stamp(data[0], props, addr)
    if data[0] != 0x00:
        hashes = fields.vlp("certificate hashes")
        for digest in hashes:
            if len(digest) != 32:
                raise ValueError(f"a certificate hash is {len(digest)} bytes, not 32 (SHA-256)")
        hostname = fields.text("hostname")
        path = fields.text("path") if data[0] == 0x02 else ""
        bootstraps = () if fields.at_end else fields.vlp("bootstrap addresses")
        stamp = Stamp(
            data[0], props, addr, hashes, hostname, path,
            tuple(b.decode("utf-8", "replace") for b in bootstraps),
        )  # fmt: skip
    if not fields.at_end:
        raise ValueError(f"the stamp has {len(data) - 1 - fields.pos} bytes after its last field")
    return stamp


def _split_host_port(text: str, what: str) -> tuple[str, int | None]:
    """`IP`, `IP:PORT`, `[IPv6]`, `[IPv6]:PORT`, `:PORT`, `NAME`, `NAME:PORT`."""
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"the stamp's {what} {text!r} is malformed (IPv6 as [ADDR]:PORT)")
        port_text = rest[1:] if rest else None
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    else:
        host, port_text = text, None  # a bare IPv6 address, or no port
    if port_text is None:
        return host, None
    if not (port_text.isascii() and port_text.isdigit()) or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"the stamp's {what} {text!r} has a bad port: expected 1-65535")
    return host, int(port_text)


def to_upstream(stamp: Stamp) -> UpstreamSpec:
    """The upstream a stamp describes. Raises ValueError when we cannot use it as it is."""
    transport = TRANSPORTS[stamp.protocol]
    host, addr_port = _split_host_port(stamp.addr, "address")
    name, name_port = _split_host_port(stamp.hostname, "hostname")
    kind = KIND_NAMES[stamp.protocol]
    if not is_ip(host) and (stamp.protocol == 0x00 or not (host or name)):
        about = f"names the host {host!r}" if host else f"gives no address for {name or '?'!r}"
        raise ValueError(
            f"this {kind} stamp {about}: stubby-py needs the server's IP address, or for an"
            f" encrypted server its host name (then resolved through `bootstrap`)"
        )
    if stamp.protocol == 0x00:
        return _plain_upstream(host, addr_port)
    if addr_port is not None and name_port is not None and addr_port != name_port:
        raise ValueError(
            f"the stamp's address port {addr_port} and hostname port {name_port} disagree"
        )
    if _NOT_IN_HOSTNAME.search(name):
        raise ValueError(f"the stamp's hostname {stamp.hostname!r} is not a host name")
    port = name_port or addr_port or TRANSPORT_PORTS[transport]
    auth_name = None if not name or is_ip(name) else name
    if not is_ip(host):
        # no address: the upstream goes by hostname, resolved through `bootstrap` (config.py)
        host = (auth_name or host).lower()
        _check_hostname(host)
        auth_name = auth_name.lower() if auth_name else host
    if name and is_ip(name) and ipaddress.ip_address(name) != ipaddress.ip_address(host):
        raise ValueError(f"the stamp's hostname {name!r} is an IP other than its address")
    path = stamp.path.replace("{?dns}", "") or "/dns-query"
    if transport == "https" and (not path.startswith("/") or "?" in path or " " in path):
        # (not the path itself: it may hold an account token)
        raise ValueError("the stamp's DoH path is not an absolute path without a query")
    return UpstreamSpec(
        transport, host, port, auth_name=auth_name,
        path=path if transport == "https" else "/dns-query",
        cert_hashes=tuple(digest.hex() for digest in stamp.hashes),
        stamp_props=stamp.property_names,
    )  # fmt: skip


def _plain_upstream(host: str, port: int | None) -> UpstreamSpec:
    """Plain stamps only for a resolver on this host or the local network: anything else
    is cleartext across the internet, which a stamp list should not slip in unnoticed."""
    address = ipaddress.ip_address(host)
    if not (address.is_loopback or address.is_private or address.is_link_local):
        raise ValueError(
            f"a plain DNS stamp for the public address {host} would send queries in cleartext"
            " across the internet: refused (write udp://ADDRESS if that is really meant)"
        )
    return UpstreamSpec("udp", host, port or TRANSPORT_PORTS["udp"])


def parse(text: str) -> UpstreamSpec:
    """`sdns://…` → UpstreamSpec, or ValueError saying why not."""
    return to_upstream(decode(text))
