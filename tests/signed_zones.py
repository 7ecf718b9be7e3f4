"""Signed zones made in memory with dnspython, and a responder over them, for the validator's
sans-IO tests: the validator's questions are answered from these zones, no socket involved.

Each zone has one Ed25519 key (fast to make and to verify). A parent holds its children's DS
records; `unsigned` children get an NSEC at the delegation instead (NS, no DS).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import dns.dnssec
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataset
import dns.rdatatype
import dns.rrset
from cryptography.hazmat.primitives.asymmetric import ed25519
from dns.rdtypes.ANY.DNSKEY import DNSKEY

from stubby_py.dnssec.anchors import AnchorSet, TrustAnchors
from stubby_py.dnssec.outcome import Answers, Question, Step, T

NOW = time.time()
ALGORITHM = 15  # Ed25519


def name(text: str) -> dns.name.Name:
    return dns.name.from_text(text)


@dataclass
class Zone:
    origin: dns.name.Name
    key: ed25519.Ed25519PrivateKey
    dnskey: DNSKEY
    signed: bool = True
    rrsets: list[dns.rrset.RRset] = field(default_factory=list)
    sigs: dict[tuple[dns.name.Name, int], dns.rrset.RRset] = field(default_factory=dict)


class Tree:
    """Zones under a root, signed now (valid an hour either side unless told otherwise)."""

    def __init__(self) -> None:
        self.zones: dict[dns.name.Name, Zone] = {}
        self.asked: list[list[Question]] = []
        self.tamper: Callable[[dns.message.Message], None] | None = None
        self.fail: set[Question] = set()
        self.add_zone(".")

    def add_zone(self, origin: str, *, signed: bool = True) -> Zone:
        key = ed25519.Ed25519PrivateKey.generate()
        dnskey = dns.dnssec.make_dnskey(key.public_key(), ALGORITHM, flags=257)
        zone = Zone(name(origin), key, dnskey, signed)
        self.zones[zone.origin] = zone
        if signed:
            self.add(origin, "DNSKEY", dnskey.to_text(), ttl=3600)
        parent = self.parent_of(zone.origin)
        if parent is not None:
            self.add(origin, "NS", f"ns.{origin}", zone=parent)
            if signed:
                ds = dns.dnssec.make_ds(zone.origin, dnskey, 2)
                self.add(origin, "DS", ds.to_text(), zone=parent)
            else:
                # the delegation's NSEC: NS and no DS (the next name wraps to the apex)
                self.add(origin, "NSEC", f"{parent.origin} NS RRSIG NSEC", zone=parent)
        return zone

    def parent_of(self, origin: dns.name.Name) -> Zone | None:
        if origin == dns.name.root:
            return None
        candidate = origin.parent()
        while candidate not in self.zones:
            candidate = candidate.parent()
        return self.zones[candidate]

    def zone_for(self, owner: dns.name.Name) -> Zone:
        candidate = owner
        while candidate not in self.zones:
            candidate = candidate.parent()
        return self.zones[candidate]

    def add(
        self,
        owner: str,
        rdtype: str,
        *texts: str,
        ttl: int = 300,
        zone: Zone | None = None,
        inception: float | None = None,
        expiration: float | None = None,
    ) -> dns.rrset.RRset:
        rrset = dns.rrset.from_text(owner, ttl, "IN", rdtype, *texts)
        if zone is None:
            zone = self.zone_for(rrset.name)
        zone.rrsets.append(rrset)
        if zone.signed:
            self.sign(zone, rrset, inception, expiration)
        return rrset

    def sign(
        self,
        zone: Zone,
        rrset: dns.rrset.RRset,
        inception: float | None = None,
        expiration: float | None = None,
        key: ed25519.Ed25519PrivateKey | None = None,
        dnskey: DNSKEY | None = None,
    ) -> None:
        sig = dns.dnssec.sign(
            rrset, key or zone.key, zone.origin, dnskey or zone.dnskey,
            inception=inception if inception is not None else NOW - 3600,
            expiration=expiration if expiration is not None else NOW + 3600,
        )  # fmt: skip
        zone.sigs[(rrset.name, rrset.rdtype)] = dns.rrset.from_rdata(rrset.name, rrset.ttl, sig)

    def anchors(self) -> TrustAnchors:
        root = self.zones[dns.name.root]
        ds = dns.dnssec.make_ds(dns.name.root, root.dnskey, 2)
        return TrustAnchors({dns.name.root: AnchorSet(ds=(ds,))})

    # -- answering ------------------------------------------------------------------------------
    def reply(self, qname: dns.name.Name, rdtype: int) -> dns.message.Message:
        """What a recursive resolver would say (DO and CD set), from these zones."""
        query = dns.message.make_query(qname, rdtype, want_dnssec=True)
        reply = dns.message.make_response(query)
        reply.flags |= dns.flags.RA
        # DS lives in the parent; everything else in the zone of the name
        zone = self.zone_for(qname)
        if rdtype == dns.rdatatype.DS and qname == zone.origin:
            parent = self.parent_of(qname)
            assert parent is not None
            zone = parent
        found = self._find(zone, qname, rdtype)
        if found is not None:
            self._put(reply.answer, zone, found)
        else:
            nsec = self._find(zone, qname, dns.rdatatype.NSEC)
            if nsec is not None:
                self._put(reply.authority, zone, nsec)
        if self.tamper is not None:
            self.tamper(reply)
        return reply

    def _find(self, zone: Zone, owner: dns.name.Name, rdtype: int) -> dns.rrset.RRset | None:
        for rrset in zone.rrsets:
            if rrset.name == owner and rrset.rdtype == rdtype:
                return rrset
        return None

    def _put(self, section: list[dns.rrset.RRset], zone: Zone, rrset: dns.rrset.RRset) -> None:
        section.append(rrset)
        sig = zone.sigs.get((rrset.name, rrset.rdtype))
        if sig is not None:
            section.append(sig)

    def drive(self, step: Step[T]) -> T:
        """Run a validation step, answering its questions from the zones."""
        try:
            questions = next(step)
            while True:
                self.asked.append(list(questions))
                answers: Answers = {
                    q: None if q in self.fail else self.reply(*q) for q in questions
                }
                questions = step.send(answers)
        except StopIteration as done:
            result: T = done.value
            return result


def message(tree: Tree, qname: str, rdtype: str) -> dns.message.Message:
    return tree.reply(name(qname), dns.rdatatype.from_text(rdtype))


def rdatas(rrsets: Iterable[dns.rrset.RRset]) -> list[str]:
    return [rd.to_text() for rrset in rrsets for rd in rrset]
