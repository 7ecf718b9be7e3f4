"""Router Advertisement options the kernel hands to userspace, pure: bytes in, facts out.

Linux acts on most options of an IPv6 Router Advertisement itself and passes the rest to
userspace, one option per RTM_NEWNDUSEROPT message on the rtnetlink group RTNLGRP_ND_USEROPT
(net/ipv6/ndisc.c, ndisc_is_useropt: prefix information 3, RDNSS 25, DNSSL 31, 6CO 34, captive
portal 37, PREF64 38). A message is `struct nduseroptmsg` (16 octets), the option as it came
(type, length in units of 8 octets, body), then an NDUSEROPT_SRCADDR attribute: the router's
address. The kernel keeps none of these: a daemon learns them from the next advertisement.

Two are read here:
- PREF64 (RFC 8781 §4): the NAT64 prefix, its lifetime (13 bits in units of 8 seconds, at most
  65528 s; 0 withdraws it) and the prefix length code (0-5: /96, /64, /56, /48, /40, /32; any
  other value, or a length other than 2, and the option is ignored). Every one of those lengths
  is usable here (core/dns64.py embeds at all RFC 6052 lengths); a /96 whose bits 64-71 are
  not zero is not a NAT64 prefix (RFC 6052 §2.2) and is ignored.
- the captive-portal URI (RFC 8910 §2.3): the URI padded with NULs to a multiple of 8 octets.

`RouterOffers` keeps what the advertisements offered per interface, each PREF64 prefix until its
lifetime runs out, is withdrawn, or its interface goes down.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from ipaddress import IPv6Address, IPv6Network

from stubby_py.core import dns64

#: linux/rtnetlink.h
RTM_NEWNDUSEROPT = 68
RTNLGRP_ND_USEROPT = 20
NDUSEROPT_SRCADDR = 1
#: family, options' length, interface index, ICMPv6 type and code (then padding)
NDUSEROPTMSG = struct.Struct("=BxHiBBHI")
AF_INET6 = 10  # Linux's (rtnetlink is Linux's); socket's is not imported in this pure ring
ICMPV6_ROUTER_ADVERTISEMENT = 134
#: ND option types (IANA "IPv6 Neighbor Discovery Option Formats")
OPTION_CAPTIVE_PORTAL = 37
OPTION_PREF64 = 38
#: RFC 8781 §4: prefix length code → prefix length
PLC_LENGTHS = (96, 64, 56, 48, 40, 32)
#: RFC 8910 §2: "no captive portal here"
UNRESTRICTED = "urn:ietf:params:capport:unrestricted"


@dataclass(frozen=True, slots=True)
class RouterOption:
    """One option of a Router Advertisement, as the kernel passed it on."""

    ifindex: int
    #: the whole option: type, length and body
    option: bytes
    #: the advertising router's (link-local) address, when the kernel said
    router: IPv6Address | None = None

    @property
    def type(self) -> int:
        return self.option[0]


@dataclass(frozen=True, slots=True)
class Pref64:
    prefix: IPv6Network
    #: seconds; 0: the prefix is withdrawn
    lifetime: int


def parse_user_option(payload: bytes) -> RouterOption | None:
    """An RTM_NEWNDUSEROPT message's payload (after the netlink header): the option of a Router
    Advertisement, or None for anything else or anything malformed."""
    if len(payload) < NDUSEROPTMSG.size:
        return None
    family, length, ifindex, icmp_type, _code, _pad2, _pad3 = NDUSEROPTMSG.unpack_from(payload)
    end = NDUSEROPTMSG.size + length
    if family != AF_INET6 or icmp_type != ICMPV6_ROUTER_ADVERTISEMENT:
        return None
    if length < 8 or end > len(payload) or payload[NDUSEROPTMSG.size + 1] * 8 != length:
        return None
    option = payload[NDUSEROPTMSG.size : end]
    router = None
    offset = (end + 3) & ~3
    while offset + 4 <= len(payload):
        attr_length, attr_type = struct.unpack_from("=HH", payload, offset)
        if attr_length < 4 or offset + attr_length > len(payload):
            break
        if attr_type == NDUSEROPT_SRCADDR and attr_length == 4 + 16:
            router = IPv6Address(payload[offset + 4 : offset + 20])
        offset += (attr_length + 3) & ~3
    return RouterOption(ifindex, option, router)


def user_option_payload(ifindex: int, option: bytes, router: IPv6Address | None = None) -> bytes:
    """The payload the kernel sends for `option` (tests build messages with it)."""
    header = NDUSEROPTMSG.pack(AF_INET6, len(option), ifindex, 134, 0, 0, 0)
    data = header + option
    if router is not None:
        data += bytes(-len(data) % 4) + struct.pack("=HH", 20, NDUSEROPT_SRCADDR) + router.packed
    return data


def parse_pref64(option: bytes) -> Pref64 | None:
    """RFC 8781 §4; None when the receiver must ignore it (or it is no NAT64 prefix)."""
    if len(option) != 16 or option[0] != OPTION_PREF64 or option[1] != 2:
        return None
    field = int.from_bytes(option[2:4], "big")
    plc = field & 0x7
    if plc >= len(PLC_LENGTHS):
        return None
    length = PLC_LENGTHS[plc]
    bits = int.from_bytes(option[4:16] + bytes(4), "big")
    network = IPv6Network((bits >> (128 - length) << (128 - length), length))
    try:
        dns64.check_prefix(str(network))
    except ValueError:
        return None
    return Pref64(network, field & 0xFFF8)  # the scaled lifetime times 8


def pref64_option(prefix: IPv6Network, lifetime: int) -> bytes:
    """The option a router sends (tests)."""
    plc = PLC_LENGTHS.index(prefix.prefixlen)
    field = (min(lifetime, 65528) // 8) << 3 | plc
    return bytes((OPTION_PREF64, 2)) + field.to_bytes(2, "big") + prefix.network_address.packed[:12]


def parse_captive_portal(option: bytes) -> str | None:
    """RFC 8910 §2.3: the URI; None if malformed, empty, or the "unrestricted" URN."""
    if len(option) < 8 or option[0] != OPTION_CAPTIVE_PORTAL or option[1] * 8 != len(option):
        return None
    text = option[2:].rstrip(b"\x00")
    if not text or b"\x00" in text:
        return None
    try:
        uri = text.decode("ascii")
    except UnicodeDecodeError:
        return None
    return None if uri == UNRESTRICTED or not uri.isprintable() else uri


@dataclass(frozen=True, slots=True)
class Pref64Offer:
    prefix: IPv6Network
    ifindex: int
    router: IPv6Address | None
    #: when it runs out, on the clock `RouterOffers` is given
    expires: float


class RouterOffers:
    """What the routers' advertisements offer: NAT64 prefixes with their lifetimes, and the
    captive-portal URI, per interface. Times are on one monotonic clock the caller passes."""

    def __init__(self) -> None:
        self._prefixes: dict[tuple[int, IPv6Network], Pref64Offer] = {}
        self._portals: dict[int, str] = {}

    def note(self, option: RouterOption, now: float) -> bool:
        """Take one option; True if it may change `pref64()` or `portal_uri()`."""
        if option.type == OPTION_PREF64:
            pref64 = parse_pref64(option.option)
            if pref64 is None:
                return False
            key = (option.ifindex, pref64.prefix)
            if pref64.lifetime == 0:
                return self._prefixes.pop(key, None) is not None
            expires = now + pref64.lifetime
            self._prefixes[key] = Pref64Offer(pref64.prefix, option.ifindex, option.router, expires)
            return True  # a new prefix, or a new lifetime that may make it the longest valid
        if option.type == OPTION_CAPTIVE_PORTAL:
            uri = parse_captive_portal(option.option)
            old_uri = self._portals.pop(option.ifindex, None)
            if uri is not None:
                self._portals[option.ifindex] = uri
            return uri != old_uri
        return False

    def forget_interface(self, ifindex: int) -> bool:
        """The interface went down: what its routers offered is gone with it."""
        keys = [key for key in self._prefixes if key[0] == ifindex]
        for key in keys:
            del self._prefixes[key]
        portal = self._portals.pop(ifindex, None)
        return bool(keys) or portal is not None

    def expire(self, now: float) -> bool:
        """Drop the prefixes whose lifetime ran out; True if any was dropped."""
        gone = [key for key, offer in self._prefixes.items() if offer.expires <= now]
        for key in gone:
            del self._prefixes[key]
        return bool(gone)

    def pref64(self, now: float) -> Pref64Offer | None:
        """The prefix to use: of those still valid, the one valid longest (during a renumbering
        the old prefix is advertised with a shrinking lifetime, the new one with a full one)."""
        self.expire(now)
        return self._best(now)

    def _best(self, now: float) -> Pref64Offer | None:
        valid = [offer for offer in self._prefixes.values() if offer.expires > now]
        return max(valid, key=lambda offer: offer.expires, default=None)

    def next_expiry(self) -> float | None:
        return min((offer.expires for offer in self._prefixes.values()), default=None)

    def portal_uri(self) -> str | None:
        return next(iter(self._portals.values()), None)
