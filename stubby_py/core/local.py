"""Names answered here and never forwarded (RFC 6761, RFC 6303, RFC 8375, RFC 6762).

- `localhost` and every name below it: A 127.0.0.1, AAAA ::1, nothing else (RFC 6761 §6.3);
- reverse loopback (127.in-addr.arpa, ::1 in ip6.arpa): PTR localhost.;
- `invalid` (RFC 6761 §6.4): NXDOMAIN;
- `resolver.arpa` (DDR, RFC 9462): `_dns.resolver.arpa` SVCB lists our encrypted listeners
  that the asking client may use (their own `allow`; NODATA when there are none); never
  forwarded, whatever the rules say;
- private, link-local and other locally-served reverse zones (RFC 6303 §4), `home.arpa`
  (RFC 8375) and `local` (mDNS, RFC 6762 §22): NXDOMAIN, unless a forwarding rule sends them
  somewhere (the resolver consults the rules first). Special-use names such as `test` and
  `example` are forwarded like any other: whether they exist is the upstream's business.
"""

from __future__ import annotations

import logging

import dns.exception
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from stubby_py.core.access import AccessList
from stubby_py.core.wire import ClientQuery

log = logging.getLogger(__name__)

TTL = 3600
#: the SVCB records of DDR: listeners change with a restart, so they are not kept for long
DDR_TTL = 300
RESOLVER_ARPA = dns.name.from_text("resolver.arpa.")
_DDR_NAME = dns.name.from_text("_dns.resolver.arpa.")
_LOCALHOST = dns.name.from_text("localhost.")
_SOA_TEXT = "localhost. nobody.invalid. 1 3600 1200 604800 10800"

_LOOPBACK_REVERSE = tuple(
    dns.name.from_text(z) for z in ("127.in-addr.arpa.", "1." + "0." * 31 + "ip6.arpa.")
)
_NXDOMAIN_ZONES = tuple(
    dns.name.from_text(z)
    for z in (
        ["invalid.", "local.", "home.arpa.", "0.in-addr.arpa.", "10.in-addr.arpa.",
         "254.169.in-addr.arpa.", "168.192.in-addr.arpa.", "2.0.192.in-addr.arpa.",
         "100.51.198.in-addr.arpa.", "113.0.203.in-addr.arpa.", "255.255.255.255.in-addr.arpa.",
         "0." * 32 + "ip6.arpa.", "d.f.ip6.arpa.", "8.e.f.ip6.arpa.", "9.e.f.ip6.arpa.",
         "a.e.f.ip6.arpa.", "b.e.f.ip6.arpa.", "8.b.d.0.1.0.0.2.ip6.arpa."]
        + [f"{n}.172.in-addr.arpa." for n in range(16, 32)]
        + [f"{n}.100.in-addr.arpa." for n in range(64, 128)]  # shared address space, RFC 6598
    )
)  # fmt: skip
#: cheap pre-check on the lower-cased wire name before any parsing
_SUFFIXES = (b"\x09localhost\x00", b"\x04arpa\x00", b"\x07invalid\x00", b"\x05local\x00")


def is_candidate(query: ClientQuery) -> bool:
    return query.key[:-5].endswith(_SUFFIXES)


def _zone_of(name: dns.name.Name, zones: tuple[dns.name.Name, ...]) -> dns.name.Name | None:
    for zone in zones:
        if name.is_subdomain(zone):
            return zone
    return None


def local_zone(query: ClientQuery) -> dns.name.Name | None:
    """The locally served zone the query falls in, or None to forward it."""
    if not is_candidate(query):
        return None
    name = dns.name.from_wire(query.question, 0)[0]
    if name.is_subdomain(_LOCALHOST):
        return _LOCALHOST
    if name.is_subdomain(RESOLVER_ARPA):
        return RESOLVER_ARPA
    return _zone_of(name, _LOOPBACK_REVERSE) or _zone_of(name, _NXDOMAIN_ZONES)


def local_answer(
    query: ClientQuery, zone: dns.name.Name, designated: tuple[str, ...] = ()
) -> bytes:
    """A reply body (no OPT) for a query in a locally served zone; `designated`: the SVCB
    records (presentation form) of DDR."""
    name = dns.name.from_wire(query.question, 0)[0]
    message = dns.message.make_query(
        name,
        dns.rdatatype.RdataType.make(query.qtype),
        dns.rdataclass.RdataClass.make(query.qclass),
    )
    reply = dns.message.make_response(message)
    reply.flags |= dns.flags.AA | dns.flags.RA
    if zone == RESOLVER_ARPA:
        records = _ddr_records(name, query.qtype, designated)
    else:
        records = _records(name, zone, query.qtype)
    if records is None:
        reply.set_rcode(dns.rcode.NXDOMAIN)
    else:
        reply.answer.extend(records)
    if not reply.answer:
        reply.authority.append(dns.rrset.from_text(zone, TTL, "IN", "SOA", _SOA_TEXT))
    return reply.to_wire()


def _records(name: dns.name.Name, zone: dns.name.Name, qtype: int) -> list[dns.rrset.RRset] | None:
    """The answer records, [] for NODATA, None for NXDOMAIN."""
    if zone == _LOCALHOST:
        if qtype == dns.rdatatype.A:
            return [dns.rrset.from_text(name, TTL, "IN", "A", "127.0.0.1")]
        if qtype == dns.rdatatype.AAAA:
            return [dns.rrset.from_text(name, TTL, "IN", "AAAA", "::1")]
        return []
    if zone in _LOOPBACK_REVERSE:
        # a whole address: 4 octets under in-addr.arpa, or ::1 itself, which is the zone
        is_address = len(name) == len(zone) + (3 if zone == _LOOPBACK_REVERSE[0] else 0)
        if is_address:
            ptr = dns.rrset.from_text(name, TTL, "IN", "PTR", "localhost.")
            return [ptr] if qtype == dns.rdatatype.PTR else []
    return [] if name == zone else None


def _ddr_records(
    name: dns.name.Name, qtype: int, designated: tuple[str, ...]
) -> list[dns.rrset.RRset] | None:
    if name == _DDR_NAME and qtype == dns.rdatatype.SVCB and designated:
        return [dns.rrset.from_text_list(name, DDR_TTL, "IN", "SVCB", list(designated))]
    return [] if name in (_DDR_NAME, RESOLVER_ARPA) else None


def designated_resolvers(
    listeners: tuple[tuple[str, str, int, str], ...], hostname: str | None
) -> tuple[str, ...]:
    """SVCB records (RFC 9461, RFC 9462 §4) for our encrypted listeners, each given as
    (scheme, address, port, DoH path): ALPN, port, DoH path, the address as a hint (not for a
    wildcard address). The target is the certificate's hostname, which a client checks the
    certificate against; "." (the owner) without one. DoH over HTTP/2 and HTTP/3 on one address,
    port number and path are one record with alpn=h2,h3 (RFC 9461 §5: a client may use either
    protocol from the list on that port)."""
    usable = hostname and not hostname.startswith("*")  # a wildcard SAN names no one host
    target = f"{hostname.rstrip('.')}." if hostname and usable else "."
    endpoints: dict[tuple[str, str, int, str], list[str]] = {}
    for scheme, address, port, path in listeners:
        alpn = {"tls": "dot", "quic": "doq", "h3": "h3"}.get(scheme, "h2")
        doh = scheme in ("https", "h3")
        key = ("doh" if doh else scheme, address, port, path)
        alpns = endpoints.setdefault(key, [])
        if alpn not in alpns:
            alpns.append(alpn)
    records = []
    for priority, ((kind, address, port, path), alpns) in enumerate(endpoints.items(), start=1):
        text = f"{priority} {target} alpn={','.join(alpns)} port={port}"
        if address not in ("0.0.0.0", "::"):
            text += f" {'ipv6hint' if ':' in address else 'ipv4hint'}={address}"
        if kind == "doh":
            text += f" dohpath={path}{{?dns}}"
        records.append(text)
    try:
        # parsed here once, so that a query never meets a record that does not parse
        dns.rrset.from_text_list(_DDR_NAME, DDR_TTL, "IN", "SVCB", records)
    except dns.exception.DNSException as exc:
        log.warning("DDR: no designated resolvers announced: the records do not parse (%s)", exc)
        return ()
    return tuple(records)


#: an encrypted listener for DDR: (scheme, address, port, DoH path)
Listener = tuple[str, str, int, str]


class Designation:
    """DDR per client: the SVCB records of the encrypted listeners whose own `allow` (None:
    none) admits the client, so it is not told of a listener that would close on it. Records
    are made once per set of admitting listeners."""

    def __init__(
        self, listeners: tuple[tuple[Listener, AccessList | None], ...], hostname: str | None
    ) -> None:
        self._listeners = listeners
        self._hostname = hostname
        self._made: dict[tuple[bool, ...], tuple[str, ...]] = {}
        #: the records for every client, when no listener has an `allow` of its own
        self._everyone: tuple[str, ...] | None = None
        if all(acl is None for _, acl in listeners):
            self._everyone = designated_resolvers(tuple(e for e, _ in listeners), hostname)

    def for_client(self, client_ip: str) -> tuple[str, ...]:
        if self._everyone is not None:
            return self._everyone
        admitted = tuple(acl is None or acl.allows(client_ip) for _, acl in self._listeners)
        records = self._made.get(admitted)
        if records is None:
            usable = tuple(e for (e, _), ok in zip(self._listeners, admitted, strict=True) if ok)
            records = self._made[admitted] = designated_resolvers(usable, self._hostname)
        return records


NO_DESIGNATION = Designation((), None)


def is_always_local(zone: dns.name.Name) -> bool:
    """localhost, loopback reverse names and resolver.arpa are never forwarded, whatever the
    rules say."""
    return zone in (_LOCALHOST, RESOLVER_ARPA) or zone in _LOOPBACK_REVERSE


def hinfo_answer(query: ClientQuery, cpu: str, os: str) -> bytes:
    """A reply body with a synthesized HINFO record (RFC 8482 §4.2, the minimal ANY answer)."""
    name = dns.name.from_wire(query.question, 0)[0]
    message = dns.message.make_query(
        name, dns.rdatatype.ANY, dns.rdataclass.RdataClass.make(query.qclass)
    )
    reply = dns.message.make_response(message)
    reply.flags |= dns.flags.RA
    reply.answer.append(dns.rrset.from_text(name, TTL, "IN", "HINFO", f'"{cpu}" "{os}"'))
    return reply.to_wire()
