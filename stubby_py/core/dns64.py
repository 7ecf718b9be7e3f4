"""DNS64 (RFC 6147) for IPv6-only networks, the pure part: when to synthesize, the synthesized
AAAA reply, and the NAT64 prefix found in `ipv4only.arpa AAAA` answers (RFC 7050 §3).

Synthesis takes three messages: the client's AAAA query, the upstream's AAAA reply, already
validated, and the A reply for the same name (asked by the daemon through the normal path):

- only a NOERROR reply with no usable AAAA record in its answer is synthesized (RFC 6147 §5.1.1:
  NODATA, after any CNAME chain, §5.1.5); an NXDOMAIN is passed on as it came (§5.1.2), and so
  is a SERVFAIL, unlike §5.1.2's "treat it as empty": from a validating resolver SERVFAIL is
  how a bogus answer looks (RFC 4035), and synthesizing over it would route around DNSSEC;
- AAAA records in the exclusion set (§5.1.4: ::ffff:0:0/96 always, IPv4-mapped addresses reach
  nothing from an IPv6-only host, and the configured IPv6 ranges) are as good as none: a reply
  with only such records is synthesized; one with others too loses the excluded ones (§5.1.4's
  SHOULD) and, being changed, its AD and the RRSIGs of its AAAA set;
- a client that set CD is not served synthesized or changed records (§5.5 case 3: it
  validates for itself, and a made-up AAAA cannot validate; §5.5 names CD with DO, a CD query
  without DO is treated alike: CD means "unchecked", and synthesis here follows validation);
  nor are names under ip6.arpa (PTR synthesis, §5.3.1, is optional and not done), nor classes
  other than IN (§5.1.7: undefined);
- an A record in an excluded range (always 0.0.0.0/8, 127.0.0.0/8, 169.254.0.0/16 and
  255.255.255.255/32, which no NAT64 can reach (RFC 6890), and the configured IPv4 ranges; with
  the Well-Known Prefix 64:ff9b::/96 also every non-global address, RFC 6052 §3.1) is not
  mapped; when none is left, the NODATA reply stands (§5.4);
- the synthesized AAAA takes the owner name and TTL of its A record set, capped by the
  negative-caching TTL of the AAAA reply (min of the SOA's TTL and MINIMUM, RFC 2308 §5, which
  is §5.1.7's "TTL of the SOA"; 600 s when the reply has no SOA); the CNAME chain of the A
  reply is kept, its RRSIGs are dropped (the answer is made here and is never marked AD, where
  §5.5 case 2 would allow it); the authority and additional sections are the A reply's (§5.4).

Prefixes of every length RFC 6052 §2.2 defines (32, 40, 48, 56, 64, 96) are supported; bits
64-71 (the u octet) must be zero.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from stubby_py.core import wire

PREFIX_LENGTHS = (32, 40, 48, 56, 64, 96)
WELL_KNOWN_PREFIX = IPv6Network("64:ff9b::/96")
#: RFC 7050 §2.1: the name asked, and the two addresses its A records hold
DISCOVERY_NAME = "ipv4only.arpa."
WELL_KNOWN_ADDRESSES = (IPv4Address("192.0.0.170"), IPv4Address("192.0.0.171"))
#: never mapped, whatever the prefix: no NAT64 reaches these (RFC 6890)
EXCLUDED = tuple(
    IPv4Network(n) for n in ("0.0.0.0/8", "127.0.0.0/8", "169.254.0.0/16", "255.255.255.255/32")
)
#: RFC 6147 §5.1.4: AAAA records in these are as good as none (its default exclusion set)
EXCLUDED_AAAA = (IPv6Network("::ffff:0:0/96"),)
#: §5.1.7: the cap when the AAAA reply carries no SOA
NO_SOA_TTL = 600
_REVERSE_V6 = dns.name.from_text("ip6.arpa.")


def check_prefix(text: str) -> IPv6Network:
    """A NAT64 prefix as configured: ValueError saying what is wrong."""
    try:
        prefix = IPv6Network(text, strict=True)
    except ValueError as exc:
        raise ValueError(f"expected auto, off or an IPv6 prefix like 64:ff9b::/96: {exc}") from None
    if prefix.prefixlen not in PREFIX_LENGTHS:
        lengths = ", ".join(f"/{n}" for n in PREFIX_LENGTHS)
        raise ValueError(f"a NAT64 prefix is {lengths} (RFC 6052), got /{prefix.prefixlen}")
    if prefix.network_address.packed[8] != 0:
        raise ValueError("bits 64-71 of a NAT64 prefix must be zero (RFC 6052 §2.2)")
    return prefix


def embed(prefix: IPv6Network, address: IPv4Address) -> IPv6Address:
    """RFC 6052 §2.2: the IPv4 address inside the prefix (the u octet, bits 64-71, stays 0)."""
    packed = prefix.network_address.packed
    start = _start(prefix.prefixlen)
    stream = (packed[:8] + packed[9:])[:start] + address.packed
    stream = stream.ljust(15, b"\x00")
    return IPv6Address(stream[:8] + b"\x00" + stream[8:])


def _start(length: int) -> int:
    """Where the IPv4 address starts in the address without its u octet (bits 64-71)."""
    return length // 8 if length <= 64 else length // 8 - 1


def extract(address: IPv6Address, length: int) -> IPv4Address:
    """The IPv4 address embedded at prefix length `length` (RFC 6052 §2.2)."""
    packed = address.packed
    start = _start(length)
    octets = (packed[:8] + packed[9:])[start : start + 4]
    return IPv4Address(octets)


def excluded(address: IPv4Address, prefix: IPv6Network, also: Iterable[IPv4Network] = ()) -> bool:
    if any(address in network for network in EXCLUDED) or any(address in n for n in also):
        return True
    return prefix == WELL_KNOWN_PREFIX and not address.is_global


class Plan(enum.Enum):
    """What to do with an AAAA reply."""

    PASS = "pass"  # as it came
    SYNTHESIZE = "synthesize"  # from the A records
    FILTER = "filter"  # without its excluded AAAA records (without_excluded)


def plan(
    query_flags: int,
    qname: dns.name.Name,
    aaaa_reply: bytes,
    qclass: int = dns.rdataclass.IN,
    excluded_aaaa: Sequence[IPv6Network] = EXCLUDED_AAAA,
) -> Plan:
    """What this AAAA reply calls for (before asking for the A records)."""
    if query_flags & dns.flags.CD or qclass != dns.rdataclass.IN:
        return Plan.PASS
    if qname.is_subdomain(_REVERSE_V6):
        return Plan.PASS
    # read from the octets: this runs for every AAAA answer (cache hits too) while DNS64 is on
    try:
        layout = wire.scan_reply(aaaa_reply)
    except wire.WireError:
        return Plan.PASS
    if layout.rcode != dns.rcode.NOERROR:
        return Plan.PASS
    usable = excluded = 0
    for ttl_at in layout.ttl_offsets[: layout.answer_count]:
        rtype, _rclass, _ttl, rdlen = wire.RR_FIXED.unpack_from(aaaa_reply, ttl_at - 4)
        if rtype != dns.rdatatype.AAAA:
            continue
        if rdlen != 16:
            return Plan.PASS
        if _address_excluded(IPv6Address(aaaa_reply[ttl_at + 6 : ttl_at + 22]), excluded_aaaa):
            excluded += 1
        else:
            usable += 1
    if not usable:
        return Plan.SYNTHESIZE
    return Plan.FILTER if excluded else Plan.PASS


def wants_synthesis(
    query_flags: int,
    qname: dns.name.Name,
    aaaa_reply: bytes,
    qclass: int = dns.rdataclass.IN,
    excluded_aaaa: Sequence[IPv6Network] = EXCLUDED_AAAA,
) -> bool:
    return plan(query_flags, qname, aaaa_reply, qclass, excluded_aaaa) is Plan.SYNTHESIZE


def _aaaa_excluded(rdata: dns.rdata.Rdata, excluded_aaaa: Sequence[IPv6Network]) -> bool:
    return _address_excluded(IPv6Address(rdata.address), excluded_aaaa)  # type: ignore[attr-defined]


def _address_excluded(address: IPv6Address, excluded_aaaa: Sequence[IPv6Network]) -> bool:
    return any(address in network for network in excluded_aaaa)


def _count_aaaa(
    message: dns.message.Message, excluded_aaaa: Sequence[IPv6Network]
) -> tuple[int, int]:
    """(usable, excluded) AAAA records in the answer."""
    usable = excluded = 0
    for rrset in message.answer:
        if rrset.rdtype == dns.rdatatype.AAAA:
            for rdata in rrset:
                if _aaaa_excluded(rdata, excluded_aaaa):
                    excluded += 1
                else:
                    usable += 1
    return usable, excluded


def _is_nodata(message: dns.message.Message, excluded_aaaa: Sequence[IPv6Network]) -> bool:
    if message.rcode() != dns.rcode.NOERROR:
        return False
    return _count_aaaa(message, excluded_aaaa)[0] == 0


def without_excluded(
    question: bytes, aaaa_reply: bytes, excluded_aaaa: Sequence[IPv6Network] = EXCLUDED_AAAA
) -> bytes | None:
    """§5.1.4: the AAAA reply without its excluded AAAA records and the RRSIGs of its AAAA sets
    (they no longer match), never AD; None if it cannot be read."""
    try:
        message = dns.message.from_wire(aaaa_reply, ignore_trailing=True)
    except dns.exception.DNSException:
        return None
    answer: list[dns.rrset.RRset] = []
    for rrset in message.answer:
        if rrset.rdtype == dns.rdatatype.RRSIG and rrset.covers == dns.rdatatype.AAAA:
            continue
        if rrset.rdtype == dns.rdatatype.AAAA:
            kept = dns.rrset.RRset(rrset.name, rrset.rdclass, rrset.rdtype)
            for rdata in rrset:
                if not _aaaa_excluded(rdata, excluded_aaaa):
                    kept.add(rdata, rrset.ttl)
            if not kept:
                continue
            rrset = kept
        answer.append(rrset)
    message.answer = answer
    message.flags &= ~dns.flags.AD
    return _with_question(message, question)


def _with_question(message: dns.message.Message, question: bytes) -> bytes:
    message.id = 0
    wire = message.to_wire()
    # the client's question as it sent it (its case): client_reply copies the body after it
    return wire[:12] + question + wire[12 + len(question) :]


def _negative_ttl(message: dns.message.Message) -> int:
    for rrset in message.authority:
        if rrset.rdtype == dns.rdatatype.SOA:
            return int(min(rrset.ttl, min(rdata.minimum for rdata in rrset)))
    return NO_SOA_TTL


def synthesize(
    question: bytes,
    aaaa_reply: bytes,
    a_reply: bytes,
    prefix: IPv6Network,
    also_excluded: Iterable[IPv4Network] = (),
    excluded_aaaa: Sequence[IPv6Network] = EXCLUDED_AAAA,
) -> bytes | None:
    """The synthesized AAAA reply (its question is `question`, the client's, in wire form), or
    None when there is nothing to synthesize: the AAAA reply has usable AAAA records or is no
    NOERROR, the A reply has no A record, or every A record is excluded."""
    try:
        aaaa = dns.message.from_wire(aaaa_reply, ignore_trailing=True)
        a = dns.message.from_wire(a_reply, ignore_trailing=True)
        qname, _end = dns.name.from_wire(question, 0)
    except dns.exception.DNSException:
        return None
    if not _is_nodata(aaaa, excluded_aaaa) or a.rcode() != dns.rcode.NOERROR:
        return None
    cap = _negative_ttl(aaaa)
    also = list(also_excluded)
    answer: list[dns.rrset.RRset] = []
    made = 0
    for rrset in a.answer:
        if rrset.rdtype == dns.rdatatype.CNAME or rrset.rdtype == dns.rdatatype.DNAME:
            answer.append(rrset)
            continue
        if rrset.rdtype != dns.rdatatype.A or rrset.rdclass != dns.rdataclass.IN:
            continue  # RRSIGs: the synthesized answer is not signed
        mapped = dns.rrset.RRset(rrset.name, dns.rdataclass.IN, dns.rdatatype.AAAA)
        for rdata in rrset:
            address = IPv4Address(rdata.address)
            if excluded(address, prefix, also):
                continue
            v6 = str(embed(prefix, address))
            mapped.add(
                dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.AAAA, v6),
                min(rrset.ttl, cap),
            )
        if mapped:
            answer.append(mapped)
            made += len(mapped)
    if not made:
        return None
    reply = dns.message.Message(id=0)
    reply.flags = dns.flags.QR | (a.flags & (dns.flags.RD | dns.flags.RA))
    reply.question = [dns.rrset.RRset(qname, dns.rdataclass.IN, dns.rdatatype.AAAA)]
    reply.answer = answer
    reply.authority = a.authority  # §5.4: from the final query's response
    reply.additional = a.additional
    return _with_question(reply, question)


def discovered_prefixes(reply: bytes) -> list[IPv6Network]:
    """RFC 7050 §3: the NAT64 prefixes an `ipv4only.arpa AAAA` reply reveals, in the order of its
    records, each found where one of the well-known addresses is embedded (longest first)."""
    try:
        message = dns.message.from_wire(reply, ignore_trailing=True)
    except dns.exception.DNSException:
        return []
    if message.rcode() != dns.rcode.NOERROR:
        return []
    found: list[IPv6Network] = []
    for rrset in message.answer:
        if rrset.rdtype != dns.rdatatype.AAAA:
            continue
        for rdata in rrset:
            address = IPv6Address(rdata.address)
            prefix = _prefix_of(address)
            if prefix is not None and prefix not in found:
                found.append(prefix)
    return found


def _prefix_of(address: IPv6Address) -> IPv6Network | None:
    for length in reversed(PREFIX_LENGTHS):
        if address.packed[8] != 0:
            return None  # the u octet is zero at every length
        if extract(address, length) in WELL_KNOWN_ADDRESSES:
            network = IPv6Network((int(address) >> (128 - length) << (128 - length), length))
            return network
    return None


def discovery_query() -> bytes:
    message = dns.message.make_query(DISCOVERY_NAME, dns.rdatatype.AAAA)
    message.id = 0
    return message.to_wire()


def parse_prefix_setting(text: str) -> str:
    """`dns64`: auto, off, or a prefix (returned in its canonical text)."""
    if text in ("auto", "off"):
        return text
    return str(check_prefix(text))
