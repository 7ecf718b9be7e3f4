"""Aggressive use of the validated cache (RFC 8198): answers proven from NSEC/NSEC3 already held.

The validator hands over the NSEC and NSEC3 records (with their RRSIGs) of every denial or
wildcard proof it found secure, and the zone's SOA from signed negative answers. A later
question in the same zone may then be answered here with no upstream query: NXDOMAIN when the
held records cover the name and the wildcard at its closest encloser, NODATA when one matches
the name (or the wildcard) without the type. The proofs are denial.py's own, run on the few
held records that sort around the name, so a synthesized answer is proven exactly as a received
one would be; an NSEC3 opt-out span proves nothing (RFC 8198 §4.2). A wildcard RRset that was
a proven expansion is held too, and answers for another name the held records show to be covered
by it (RFC 8198 §5.3), with the same proof a received expansion must carry. Records are kept until
their TTL (at most the signed original TTL), their signature or the zone's keys expire,
whichever is first; the whole is bounded and is flushed with the key cache. Sans-IO.
"""

from __future__ import annotations

import bisect
import io
import struct
from dataclasses import dataclass, field
from typing import TypeVar

import dns.name
import dns.rcode
import dns.rdatatype
import dns.rrset
from dns.rdtypes.ANY.NSEC import NSEC
from dns.rdtypes.ANY.NSEC3 import NSEC3
from dns.rdtypes.ANY.SOA import SOA

from stubby_py.dnssec import denial, primitives

K = TypeVar("K", dns.name.Name, str)
NSEC_TYPE = dns.rdatatype.NSEC
NSEC3_TYPE = dns.rdatatype.NSEC3
#: questions never answered from held proofs: DS is the parent's (a zone's apex records do not
#: speak for it), ANY and RRSIG are not denied by a bitmap the usual way
NOT_SYNTHESIZED = frozenset({dns.rdatatype.DS, dns.rdatatype.ANY, dns.rdatatype.RRSIG})
#: NSEC/NSEC3 records and wildcard RRsets held at most, all zones together: ~2.7 KB each as
#: dnspython objects with their RRSIGs and wire form (measured), so ~5 MB at most; a zone's
#: whole neighbourhood of a flood of random names takes a handful
MAX_RECORDS = 2_000
#: zones held at most
MAX_ZONES = 500
#: labels below the zone a name may have to be looked up (each costs NSEC3 hashing)
MAX_DEPTH = 16
#: proven NSEC spans remembered for the fast path
MAX_PROVEN = 4_096


_HEADER = struct.Struct("!HHHHHH")
_RR_FIXED = 10  # type, class, TTL, RDLENGTH
#: QR, RD, RA, AD: a recursive server's secure answer (the client's ID and question go in later)
_FLAGS = 0x8000 | 0x0100 | 0x0080 | 0x0020
_DNSSEC_TYPES = frozenset({dns.rdatatype.RRSIG, NSEC_TYPE, NSEC3_TYPE})


@dataclass(slots=True)
class Held:
    """A validated RRset with its RRSIGs, usable until `until` (POSIX seconds)."""

    rrset: dns.rrset.RRset
    sigs: dns.rrset.RRset
    until: float
    #: the records' wire form, uncompressed, made once when first answered from
    _wire: tuple[bytes, bytes] | None = field(default=None, init=False, repr=False, compare=False)

    def wire(self) -> tuple[bytes, bytes]:
        if self._wire is None:
            self._wire = (_to_wire(self.rrset), _to_wire(self.sigs))
        return self._wire


def _to_wire(rrset: dns.rrset.RRset) -> bytes:
    out = io.BytesIO()
    rrset.to_wire(out)
    return out.getvalue()


@dataclass(frozen=True, slots=True)
class Synthesis:
    """An answer proven from held records."""

    zone: dns.name.Name
    rcode: int
    #: the authority section: the SOA (not for a wildcard answer), then the proof, each with
    #: its RRSIGs
    authority: tuple[Held, ...]
    ttl: int
    reason: str
    #: a wildcard answer: the held wildcard RRset and its RRSIGs, to be expanded to the
    #: question's name (`owner`, in wire form)
    answer: Held | None = None
    owner: bytes = b""

    def with_ttl(self, ttl: int) -> Synthesis:
        """The same answer with another TTL (`dataclasses.replace`, which looks the fields up
        on every call, was a tenth of the CPU of an answer from held records)."""
        return Synthesis(
            self.zone, self.rcode, self.authority, ttl, self.reason, self.answer, self.owner
        )

    def render(self, question: bytes, qtype: int, dnssec_records: bool) -> bytes:
        """The reply body, the records in wire form as held (TTLs as received: the caller caps
        them to `ttl`); RRSIG, NSEC and NSEC3 records only with `dnssec_records` (DO)."""
        parts: list[bytes] = []
        answers = 0
        if self.answer is not None:
            owner = question[:-4]
            old = len(_name_wire(self.answer.rrset.name))
            data, sigs = self.answer.wire()
            parts.append(_reowned(data, len(self.answer.rrset), old, owner))
            answers = len(self.answer.rrset)
            if dnssec_records:
                parts.append(_reowned(sigs, len(self.answer.sigs), old, owner))
                answers += len(self.answer.sigs)
        authority = 0
        for held in self.authority:
            data, sigs = held.wire()
            if dnssec_records or held.rrset.rdtype not in _DNSSEC_TYPES:
                parts.append(data)
                authority += len(held.rrset)
            if dnssec_records:
                parts.append(sigs)
                authority += len(held.sigs)
        header = _HEADER.pack(0, _FLAGS | self.rcode, 1, answers, authority, 0)
        return b"".join((header, question, *parts))


def _name_wire(name: dns.name.Name) -> bytes:
    wire = name.to_wire()
    assert wire is not None
    return wire


def _reowned(data: bytes, count: int, old_owner_length: int, owner: bytes) -> bytes:
    """Uncompressed records, all of one owner, given another owner."""
    out: list[bytes] = []
    pos = 0
    for _ in range(count):
        pos += old_owner_length
        end = pos + _RR_FIXED + int.from_bytes(data[pos + 8 : pos + 10], "big")
        out += (owner, data[pos:end])
        pos = end
    return b"".join(out)


@dataclass(slots=True)
class _Zone:
    soa: Held | None = None
    #: wildcard RRsets (owner *.<closest encloser>) by owner and type
    wildcards: dict[tuple[dns.name.Name, int], Held] = field(default_factory=dict)
    #: NSEC records by owner, and the owners in canonical order
    nsecs: dict[dns.name.Name, Held] = field(default_factory=dict)
    nsec_owners: list[dns.name.Name] = field(default_factory=list)
    #: the same owners as canonical keys (same order), and each NSEC's span by owner key
    owner_keys: list[Key] = field(default_factory=list)
    spans: dict[Key, _Span] = field(default_factory=dict)
    #: NSEC3 records of one parameter set, by hashed owner label (upper-case base32hex)
    nsec3_params: tuple[bytes, int] | None = None
    nsec3s: dict[str, Held] = field(default_factory=dict)
    nsec3_hashes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.nsecs) + len(self.nsec3s) + len(self.wildcards)


class DenialCache:
    def __init__(self, max_records: int = MAX_RECORDS, max_zones: int = MAX_ZONES) -> None:
        self.max_records = max_records
        self.max_zones = max_zones
        self._zones: dict[dns.name.Name, _Zone] = {}
        self._by_key: dict[Key, _Zone] = {}
        self._records = 0
        #: proven spans: (zone, NSEC owner, closest encloser, qtype) -> the answer for any name
        #: that NSEC covers with that closest encloser (the fast path, `synthesize_wire`)
        self._proven: dict[tuple[Key, Key, Key, int], _Proven] = {}

    def __len__(self) -> int:
        return self._records

    def flush(self) -> None:
        self._zones.clear()
        self._by_key.clear()
        self._proven.clear()
        self._records = 0

    # -- learning -----------------------------------------------------------------------------
    def learn(
        self,
        zone: dns.name.Name,
        proofs: list[Held],
        now: float,
        soa: Held | None = None,
    ) -> None:
        """Hold the records of a proof found secure in `zone` (and its SOA, when signed)."""
        held = self._zone(zone)
        if soa is not None and soa.until > now:
            held.soa = soa
        for proof in proofs:
            if proof.until <= now:
                continue
            if proof.rrset.rdtype == NSEC_TYPE:
                self._add_nsec(held, proof)
            elif proof.rrset.rdtype == NSEC3_TYPE:
                self._add_nsec3(held, zone, proof)
        if self._records > self.max_records:
            self._trim(now)

    def learn_wildcard(
        self, zone: dns.name.Name, wildcard: Held, proofs: list[Held], now: float
    ) -> None:
        """Hold a wildcard RRset (owner *.<encloser>) whose expansion was proven in `zone`, and
        the records of that proof."""
        if wildcard.until <= now:
            return
        held = self._zone(zone)
        key = (wildcard.rrset.name, wildcard.rrset.rdtype)
        if key not in held.wildcards:
            self._records += 1
        held.wildcards[key] = wildcard
        self.learn(zone, proofs, now)

    def _zone(self, zone: dns.name.Name) -> _Zone:
        held = self._zones.get(zone)
        if held is None:
            if len(self._zones) >= self.max_zones:
                self._drop_zone(next(iter(self._zones)))
            held = self._zones[zone] = self._by_key[name_key(zone)] = _Zone()
        return held

    def _add_nsec(self, held: _Zone, proof: Held) -> None:
        owner = proof.rrset.name
        key = name_key(owner)
        if owner not in held.nsecs:
            bisect.insort(held.nsec_owners, owner)
            bisect.insort(held.owner_keys, key)
            self._records += 1
        held.nsecs[owner] = proof
        rdata = next(iter(proof.rrset))
        if isinstance(rdata, NSEC):
            held.spans[key] = _Span.of(key, rdata)

    def _add_nsec3(self, held: _Zone, zone: dns.name.Name, proof: Held) -> None:
        rdata = next(iter(proof.rrset), None)
        if not isinstance(rdata, NSEC3) or len(proof.rrset.name) != len(zone) + 1:
            return
        params = (rdata.salt, rdata.iterations)
        if held.nsec3_params != params:
            # a zone has one chain; a new parameter set replaces what was held of the old one
            self._records -= len(held.nsec3s)
            held.nsec3s.clear()
            held.nsec3_hashes.clear()
            held.nsec3_params = params
        hashed = proof.rrset.name.labels[0].decode("latin-1").upper()
        if hashed not in held.nsec3s:
            bisect.insort(held.nsec3_hashes, hashed)
            self._records += 1
        held.nsec3s[hashed] = proof

    def _trim(self, now: float) -> None:
        """Past the bound: drop the expired, then whole zones, the longest held first."""
        self._proven.clear()
        for zone in list(self._zones):
            held = self._zones[zone]
            for owner in [o for o, p in held.nsecs.items() if p.until <= now]:
                del held.nsecs[owner]
                held.nsec_owners.remove(owner)
                owner_key = name_key(owner)
                held.owner_keys.remove(owner_key)
                held.spans.pop(owner_key, None)
                self._records -= 1
            for hashed in [h for h, p in held.nsec3s.items() if p.until <= now]:
                del held.nsec3s[hashed]
                held.nsec3_hashes.remove(hashed)
                self._records -= 1
            for key in [k for k, p in held.wildcards.items() if p.until <= now]:
                del held.wildcards[key]
                self._records -= 1
        while self._records > self.max_records * 3 // 4 and self._zones:
            self._drop_zone(next(iter(self._zones)))

    def _drop_zone(self, zone: dns.name.Name) -> None:
        self._records -= len(self._zones.pop(zone))
        self._by_key.pop(name_key(zone), None)
        self._proven.clear()

    # -- answering ----------------------------------------------------------------------------
    def synthesize(
        self, qname: dns.name.Name, qtype: int, now: float, max_iterations: int
    ) -> Synthesis | None:
        """A wildcard answer, NXDOMAIN or NODATA for (qname, qtype) proven from held records,
        or None."""
        if qtype in NOT_SYNTHESIZED:
            return None
        zone, held = self._zone_of(qname)
        if held is None or len(qname) - len(zone) > MAX_DEPTH:
            return None
        if held.nsecs:
            proofs = self._nsec_candidates(held, qname, now)
            nsecs, nsec3s = [p.rrset for p in proofs], []
        else:
            proofs = self._nsec3_candidates(held, zone, qname, now, max_iterations)
            nsecs, nsec3s = [], [p.rrset for p in proofs]
        if not proofs:
            return None
        found = None
        if held.wildcards:
            found = self._wildcard_answer(
                held, zone, qname, qtype, proofs, nsecs, nsec3s, now, max_iterations
            )
        if found is None:
            found = self._negative(
                held, zone, qname, qtype, proofs, nsecs, nsec3s, now, max_iterations
            )
        if found is None:
            return None
        if held.nsecs:
            self._remember_span(zone, held, qname, qtype, found, now)
        return found

    def _negative(
        self,
        held: _Zone,
        zone: dns.name.Name,
        qname: dns.name.Name,
        qtype: int,
        proofs: list[Held],
        nsecs: list[dns.rrset.RRset],
        nsec3s: list[dns.rrset.RRset],
        now: float,
        max_iterations: int,
    ) -> Synthesis | None:
        """NXDOMAIN, else NODATA, proven from the candidate records, with the zone's SOA."""
        if held.soa is None or held.soa.until <= now:
            return None
        proven = denial.prove_nxdomain(qname, zone, nsecs, nsec3s, max_iterations)
        rcode = dns.rcode.NXDOMAIN
        if proven.outcome != denial.Denial.PROVEN:
            proven = denial.prove_nodata(qname, qtype, zone, nsecs, nsec3s, max_iterations)
            rcode = dns.rcode.NOERROR
            if proven.outcome != denial.Denial.PROVEN:
                return None
        return self._answer(zone, held.soa, proofs, rcode, proven.reason, now)

    def _remember_span(
        self,
        zone: dns.name.Name,
        held: _Zone,
        qname: dns.name.Name,
        qtype: int,
        found: Synthesis,
        now: float,
    ) -> None:
        """After a proof from NSEC records: when one NSEC covers qname (it is no owner and no
        empty non-terminal), the proof holds for every name that NSEC covers with the same
        closest encloser (the wildcard part of the proof is the same), so remember it."""
        key = name_key(qname)
        index = bisect.bisect_right(held.owner_keys, key)
        span = held.spans.get(held.owner_keys[index - 1] if index else held.owner_keys[-1])
        if span is None or not span.covers(key):
            return
        if len(self._proven) >= MAX_PROVEN:
            self._proven.clear()
        records = list(found.authority)
        if found.answer is not None:
            records.append(found.answer)
            cap = int(found.answer.rrset.ttl)
        else:
            cap = _soa_minimum(found.authority[0].rrset)
        until = min(h.until for h in records)
        proven_key = (name_key(zone), span.owner, span.encloser(key), qtype)
        self._proven[proven_key] = _Proven(span, found, until, cap)

    def held_depth(self, qname_key: Key) -> int:
        """The label count of the deepest zone with held records at or above the name (its
        canonical key); 0 when there is none."""
        by_key = self._by_key
        for depth in range(len(qname_key), 0, -1):
            if qname_key[:depth] in by_key:
                return depth
        return 0

    def synthesize_wire(self, qname_wire: bytes, qtype: int, now: float) -> Synthesis | None:
        """The fast path: an answer for a name an NSEC span already proved an answer for
        (`_remember_span`), found with no dnspython name and no proof run again."""
        if not self._proven:
            return None
        key = wire_key(qname_wire)
        if key is None:
            return None
        by_key = self._by_key
        for depth in range(len(key), 0, -1):
            zone_key = key[:depth]
            held = by_key.get(zone_key)
            if held is not None:
                break
        else:
            return None
        owners = held.owner_keys
        if not owners:
            return None
        index = bisect.bisect_right(owners, key)
        span = held.spans.get(owners[index - 1] if index else owners[-1])
        if span is None or not span.covers(key):
            return None
        proven = self._proven.get((zone_key, span.owner, span.encloser(key), qtype))
        if proven is None or proven.until <= now or proven.span != span:
            return None
        ttl = max(0, min(int(proven.until - now), proven.cap))
        return proven.found.with_ttl(ttl)

    @staticmethod
    def _wildcard_answer(
        held: _Zone,
        zone: dns.name.Name,
        qname: dns.name.Name,
        qtype: int,
        proofs: list[Held],
        nsecs: list[dns.rrset.RRset],
        nsec3s: list[dns.rrset.RRset],
        now: float,
        max_iterations: int,
    ) -> Synthesis | None:
        """qname expanded from a held wildcard of qtype at an ancestor, when the held records
        prove that ancestor is qname's closest encloser (RFC 4035 §5.3.4, RFC 5155 §8.8)."""
        for depth in range(len(qname) - 1, len(zone) - 1, -1):
            encloser = qname.split(depth)[1]
            wildcard = held.wildcards.get((dns.name.Name((b"*", *encloser.labels)), qtype))
            if wildcard is None or wildcard.until <= now:
                continue
            proven = denial.prove_wildcard_answer(
                qname, encloser, zone, nsecs, nsec3s, max_iterations
            )
            if proven.outcome != denial.Denial.PROVEN:
                return None
            until = min(p.until for p in (wildcard, *proofs))
            ttl = max(0, min(int(until - now), wildcard.rrset.ttl))
            authority = tuple(proofs)
            return Synthesis(zone, dns.rcode.NOERROR, authority, ttl, proven.reason, wildcard)
        return None

    def _zone_of(self, qname: dns.name.Name) -> tuple[dns.name.Name, _Zone | None]:
        """The deepest zone held at or above qname (the proofs themselves stop at its cuts)."""
        zones = self._zones
        for depth in range(len(qname), 0, -1):
            zone = qname.split(depth)[1]
            held = zones.get(zone)
            if held is not None:
                return zone, held
        return dns.name.root, None

    def _nsec_candidates(self, held: _Zone, qname: dns.name.Name, now: float) -> list[Held]:
        """The NSEC sorting at or before qname, and the one at or before the wildcard at the
        closest encloser it implies: all an NXDOMAIN or NODATA proof needs (RFC 8198 §5.1)."""
        first = _floor(held.nsec_owners, qname)
        if first is None:
            return []
        found = [held.nsecs[first]]
        rdata = next(iter(found[0].rrset))
        if first != qname and isinstance(rdata, NSEC):
            common = max(qname.fullcompare(first)[2], qname.fullcompare(rdata.next)[2])
            wildcard = dns.name.Name((b"*", *qname.split(common)[1].labels))
            second = _floor(held.nsec_owners, wildcard)
            if second is not None and second != first:
                found.append(held.nsecs[second])
        return [p for p in found if p.until > now]

    def _nsec3_candidates(
        self,
        held: _Zone,
        zone: dns.name.Name,
        qname: dns.name.Name,
        now: float,
        max_iterations: int,
    ) -> list[Held]:
        """The NSEC3 records matching or covering the hash of qname, of each ancestor down to
        the zone, and of the wildcard below each: the closest encloser proof's pieces."""
        if held.nsec3_params is None or not held.nsec3_hashes:
            return []
        salt, iterations = held.nsec3_params
        if iterations > max_iterations:
            return []
        found: dict[str, Held] = {}
        for depth in range(len(qname), len(zone) - 1, -1):
            ancestor = qname.split(depth)[1]
            names = [ancestor]
            if depth < len(qname):
                names.append(dns.name.Name((b"*", *ancestor.labels)))
            for name in names:
                hashed = primitives.nsec3_hash(name, salt, iterations)
                floor = _floor(held.nsec3_hashes, hashed)
                if floor is not None:
                    found[floor] = held.nsec3s[floor]
        return [p for p in found.values() if p.until > now]

    @staticmethod
    def _answer(
        zone: dns.name.Name,
        soa: Held,
        proofs: list[Held],
        rcode: int,
        reason: str,
        now: float,
    ) -> Synthesis:
        """The authority section; every TTL is to be the least of the held records' remaining
        TTLs and the SOA minimum (RFC 8198 §5.4, RFC 9077)."""
        record = next(iter(soa.rrset))
        assert isinstance(record, SOA)
        until = min(p.until for p in (soa, *proofs))
        ttl = max(0, min(int(until - now), record.minimum))
        return Synthesis(zone, rcode, (soa, *proofs), ttl, reason)


#: a name as a canonical sort key (RFC 4034 §6.1): its labels lower-cased, the root's first;
#: tuple order is canonical order, and an ancestor's key is a prefix of its descendants'
Key = tuple[bytes, ...]


def name_key(name: dns.name.Name) -> Key:
    return tuple(label.lower() for label in reversed(name.labels))


def wire_key(wire: bytes) -> Key | None:
    """The key of an uncompressed name in wire form (a client's question), None if malformed."""
    labels = []
    pos = 0
    end = len(wire)
    while pos < end:
        length = wire[pos]
        if length == 0:
            labels.append(b"")
            return tuple(reversed(labels)) if pos + 1 == end else None
        if length > 63:
            return None
        labels.append(wire[pos + 1 : pos + 1 + length].lower())
        pos += 1 + length
    return None


def _common(a: Key, b: Key) -> int:
    count = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        count += 1
    return count


@dataclass(frozen=True, slots=True)
class _Span:
    """An NSEC's owner and next name as keys, and whether it is no authority below its owner."""

    owner: Key
    next: Key
    hides_below: bool

    @classmethod
    def of(cls, owner: Key, rdata: NSEC) -> _Span:
        types = denial._bitmap_types(rdata.windows)
        return cls(owner, name_key(rdata.next), denial._hides_below(types))

    def covers(self, key: Key) -> bool:
        """The NSEC proves the name does not exist (denial._nsec_covering, on keys)."""
        owner, next_ = self.owner, self.next
        between = owner < key < next_ if owner < next_ else (key > owner or key < next_)
        if not between:
            return False
        if len(next_) > len(key) and next_[: len(key)] == key:
            return False  # the next name is below it: an empty non-terminal
        below_owner = len(key) > len(owner) and key[: len(owner)] == owner
        return not (below_owner and self.hides_below)

    def encloser(self, key: Key) -> Key:
        """The closest encloser of a name it covers (denial._nsec_closest_encloser)."""
        return key[: max(_common(key, self.owner), _common(key, self.next))]


@dataclass(frozen=True, slots=True)
class _Proven:
    span: _Span
    found: Synthesis
    until: float
    cap: int


def _soa_minimum(soa: dns.rrset.RRset) -> int:
    record = next(iter(soa))
    assert isinstance(record, SOA)
    return int(record.minimum)


def _floor(ordered: list[K], key: K) -> K | None:
    """The greatest entry at or before key; the last one when key sorts first (the zone's last
    record wraps around to its apex)."""
    if not ordered:
        return None
    index = bisect.bisect_right(ordered, key)
    return ordered[index - 1] if index else ordered[-1]
