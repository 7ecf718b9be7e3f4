"""NSEC and NSEC3 denial-of-existence proofs (RFC 4035 §5.4, RFC 5155 §8, RFC 6840 §4, RFC 9276).

Pure functions over RRsets whose signatures the validator has already verified as records of
`zone`: do they prove the claimed NXDOMAIN, NODATA, wildcard expansion or DS absence? No I/O, no
clock, no signatures; the only work beyond comparing names is NSEC3 hashing, and that is refused
past an iteration limit before it starts (RFC 9276 §3.2).
"""

from __future__ import annotations

import base64
import enum
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import dns.name
import dns.rdatatype
import dns.rrset
from dns.rdtypes.ANY.NSEC import NSEC
from dns.rdtypes.ANY.NSEC3 import NSEC3

from stubby_py.dnssec import primitives

#: RFC 9276 §3.2 leaves the limit to the validator; Unbound and BIND use 150
DEFAULT_MAX_ITERATIONS = 150
#: RFC 5155 §11: the only NSEC3 hash algorithm
NSEC3_SHA1 = 1
NSEC3_OPT_OUT = 0x01
_SHA1_LENGTH = 20
_SHA1_B32_LENGTH = 32

_CNAME = dns.rdatatype.CNAME
_DNAME = dns.rdatatype.DNAME
_DS = dns.rdatatype.DS
_NS = dns.rdatatype.NS
_SOA = dns.rdatatype.SOA


class Denial(enum.Enum):
    #: the records prove the claim
    PROVEN = "proven"
    #: only an NSEC3 opt-out span covers the name: an unsigned delegation may exist there
    #: (RFC 5155 §6, §8.6); the caller treats the answer as insecure
    OPT_OUT = "opt-out"
    #: NSEC3 past the iteration limit (RFC 9276 §3.2) or only unknown NSEC3 hash algorithms
    #: (RFC 5155 §8.1); the caller treats the answer as insecure
    INSECURE = "insecure"
    #: missing or contradicting records; the caller treats the answer as bogus (EDE 12)
    NOT_PROVEN = "not-proven"


#: distinct (salt, iterations) NSEC3 sets one proof may hash for (a zone changing its
#: parameters has two for a while)
MAX_NSEC3_PARAMETER_SETS = 2


@dataclass(frozen=True, slots=True)
class DenialResult:
    outcome: Denial
    #: short human text, e.g. "no NSEC covers www.example."
    reason: str
    #: INSECURE because of the NSEC3 iteration count (RFC 9276 §3.2: EDE 27 may say so)
    too_many_iterations: bool = False


@dataclass(frozen=True, slots=True)
class DsAbsence:
    """What a signed NODATA answer to a DS query at `name` says about `name`."""

    #: PROVEN: no DS at name; OPT_OUT, INSECURE, NOT_PROVEN as in Denial
    outcome: Denial
    #: True: name is a zone cut (NS present, no SOA), so an insecure delegation; also True for
    #: OPT_OUT. False: name exists in the zone but is no cut (or is an empty non-terminal); also
    #: False when the outcome is INSECURE or NOT_PROVEN, where nothing is known.
    delegation: bool
    reason: str
    #: INSECURE because of the NSEC3 iteration count (RFC 9276 §3.2)
    too_many_iterations: bool = False


# -- public proofs ----------------------------------------------------------------------------


def prove_nxdomain(
    qname: dns.name.Name,
    zone: dns.name.Name,
    nsecs: Iterable[dns.rrset.RRset],
    nsec3s: Iterable[dns.rrset.RRset],
    max_iterations: int = DEFAULT_MAX_ITERATIONS,
) -> DenialResult:
    """qname does not exist and no wildcard could have answered for it (RFC 4035 §3.1.3.2,
    §5.4; RFC 5155 §8.4)."""
    if not _strictly_below(qname, zone):
        return DenialResult(Denial.NOT_PROVEN, f"{qname} is not below the zone {zone}")
    verdict = _prove(
        zone,
        nsecs,
        nsec3s,
        max_iterations,
        lambda records: _nsec_nxdomain(qname, records),
        lambda chain: _nsec3_nxdomain(qname, chain),
    )
    return _result(verdict)


def prove_nodata(
    qname: dns.name.Name,
    qtype: int,
    zone: dns.name.Name,
    nsecs: Iterable[dns.rrset.RRset],
    nsec3s: Iterable[dns.rrset.RRset],
    max_iterations: int = DEFAULT_MAX_ITERATIONS,
) -> DenialResult:
    """qname exists (or a wildcard answers for it) without qtype or a CNAME (RFC 4035 §3.1.3.1,
    §3.1.3.4; RFC 5155 §8.5-§8.7)."""
    verdict = _nodata(qname, qtype, zone, nsecs, nsec3s, max_iterations)
    return _result(verdict)


def prove_wildcard_answer(
    qname: dns.name.Name,
    wildcard_parent: dns.name.Name,
    zone: dns.name.Name,
    nsecs: Iterable[dns.rrset.RRset],
    nsec3s: Iterable[dns.rrset.RRset],
    max_iterations: int = DEFAULT_MAX_ITERATIONS,
) -> DenialResult:
    """An answer synthesized from *.wildcard_parent was right: qname itself does not exist and
    wildcard_parent is its closest encloser (RFC 4035 §5.3.4; RFC 5155 §8.8)."""
    if not (_strictly_below(qname, wildcard_parent) and wildcard_parent.is_subdomain(zone)):
        why = f"{qname} is not below {wildcard_parent} in the zone {zone}"
        return DenialResult(Denial.NOT_PROVEN, why)
    verdict = _prove(
        zone,
        nsecs,
        nsec3s,
        max_iterations,
        lambda records: _nsec_wildcard_answer(qname, wildcard_parent, records),
        lambda chain: _nsec3_wildcard_answer(qname, wildcard_parent, chain),
    )
    return _result(verdict)


def prove_no_ds(
    name: dns.name.Name,
    zone: dns.name.Name,
    nsecs: Iterable[dns.rrset.RRset],
    nsec3s: Iterable[dns.rrset.RRset],
    max_iterations: int = DEFAULT_MAX_ITERATIONS,
) -> DsAbsence:
    """A NODATA answer to `name DS` from the parent zone: no DS, and whether name is a cut
    (RFC 4035 §5.2, RFC 5155 §8.6, RFC 6840 §4.4)."""
    verdict = _nodata(name, _DS, zone, nsecs, nsec3s, max_iterations)
    return DsAbsence(
        verdict.outcome, verdict.delegation, verdict.reason, verdict.too_many_iterations
    )


# -- shared plumbing --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Verdict:
    outcome: Denial
    reason: str
    delegation: bool = False
    too_many_iterations: bool = False


def _result(verdict: _Verdict) -> DenialResult:
    return DenialResult(verdict.outcome, verdict.reason, verdict.too_many_iterations)


def _no(reason: str) -> _Verdict:
    return _Verdict(Denial.NOT_PROVEN, reason)


# When several proofs were tried (NSEC and NSEC3, or NSEC3 parameter sets), the strongest wins:
# every record is authentic, so the weaker ones only lacked pieces.
_RANK = {Denial.PROVEN: 3, Denial.OPT_OUT: 2, Denial.INSECURE: 1, Denial.NOT_PROVEN: 0}

_NsecProof = Callable[[list["_Nsec"]], _Verdict]
_Nsec3Proof = Callable[["_Nsec3Chain"], _Verdict]


def _prove(
    zone: dns.name.Name,
    nsecs: Iterable[dns.rrset.RRset],
    nsec3s: Iterable[dns.rrset.RRset],
    max_iterations: int,
    with_nsec: _NsecProof,
    with_nsec3: _Nsec3Proof,
) -> _Verdict:
    verdicts = []
    records = _nsec_records(nsecs, zone)
    if records:
        verdicts.append(with_nsec(records))
    verdicts.extend(_nsec3_verdicts(nsec3s, zone, max_iterations, with_nsec3))
    if not verdicts:
        return _no(f"no NSEC or NSEC3 records of {zone}")
    return max(verdicts, key=lambda verdict: _RANK[verdict.outcome])


def _nodata(
    qname: dns.name.Name,
    qtype: int,
    zone: dns.name.Name,
    nsecs: Iterable[dns.rrset.RRset],
    nsec3s: Iterable[dns.rrset.RRset],
    max_iterations: int,
) -> _Verdict:
    if not qname.is_subdomain(zone):
        return _no(f"{qname} is not in the zone {zone}")
    return _prove(
        zone,
        nsecs,
        nsec3s,
        max_iterations,
        lambda records: _nsec_nodata(qname, qtype, records),
        lambda chain: _nsec3_nodata(qname, qtype, chain),
    )


def _strictly_below(name: dns.name.Name, ancestor: dns.name.Name) -> bool:
    return name != ancestor and name.is_subdomain(ancestor)


def _wildcard(encloser: dns.name.Name) -> dns.name.Name:
    # the wildcard's wire form is never longer than the qname below `encloser` it stands for
    return dns.name.Name((b"*", *encloser.labels))


def _bitmap_types(windows: Iterable[tuple[int, bytes]]) -> frozenset[int]:
    """The types in an NSEC/NSEC3 type bit map (RFC 4034 §4.1.2)."""
    types = set()
    for window, bitmap in windows:
        for index, octet in enumerate(bitmap):
            for bit in range(8):
                if octet & (0x80 >> bit):
                    types.add(window * 256 + index * 8 + bit)
    return frozenset(types)


def _type_text(rdtype: int) -> str:
    return dns.rdatatype.to_text(dns.rdatatype.RdataType.make(rdtype))


def _is_cut(types: frozenset[int]) -> bool:
    return _NS in types and _SOA not in types


def _hides_below(types: frozenset[int]) -> bool:
    """RFC 6840 §4.1, RFC 5155 §8.3: a record at a zone cut or a DNAME is no authority for any
    name below its owner."""
    return _is_cut(types) or _DNAME in types


def _nodata_verdict(types: frozenset[int], qtype: int, owner: dns.name.Name) -> _Verdict:
    """Does the bitmap of the record at `owner` deny qtype there?"""
    problem = None
    if qtype in types:
        problem = f"{_type_text(qtype)} exists at {owner}"
    elif _CNAME in types:
        problem = f"{owner} is a CNAME (RFC 6840 §4.3)"
    elif qtype == _DS and _SOA in types and owner != dns.name.root:
        problem = f"the record at {owner} is from the child side of the cut"
    elif qtype != _DS and _is_cut(types):
        problem = f"{owner} is a delegation: the answer should have been a referral"
    if problem is not None:
        return _no(problem)
    what = _type_text(qtype)
    return _Verdict(Denial.PROVEN, f"no {what} at {owner}", delegation=_is_cut(types))


# -- NSEC (RFC 4035) ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Nsec:
    owner: dns.name.Name
    next: dns.name.Name
    types: frozenset[int]


def _nsec_records(nsecs: Iterable[dns.rrset.RRset], zone: dns.name.Name) -> list[_Nsec]:
    records = []
    for rrset in nsecs:
        if rrset.rdtype != dns.rdatatype.NSEC or not rrset.name.is_subdomain(zone):
            continue
        for rdata in rrset:
            if isinstance(rdata, NSEC) and rdata.next.is_subdomain(zone):
                records.append(_Nsec(rrset.name, rdata.next, _bitmap_types(rdata.windows)))
    return records


def _between(record: _Nsec, name: dns.name.Name) -> bool:
    """owner < name < next in canonical order (RFC 4034 §6.1); the last NSEC of the zone, whose
    next name is the apex, covers everything after its owner."""
    if record.owner < record.next:
        return bool(record.owner < name < record.next)
    return bool(name > record.owner or name < record.next)


def _may_speak_below(record: _Nsec, name: dns.name.Name) -> bool:
    return not (_strictly_below(name, record.owner) and _hides_below(record.types))


def _nsec_matching(records: list[_Nsec], name: dns.name.Name) -> _Nsec | None:
    return next((record for record in records if record.owner == name), None)


def _nsec_ent(records: list[_Nsec], name: dns.name.Name) -> _Nsec | None:
    """An NSEC that shows name to be an empty non-terminal: it sorts between owner and next, and
    next is a descendant of it (RFC 4592 §2.2.2)."""
    for record in records:
        if (
            _between(record, name)
            and _strictly_below(record.next, name)
            and _may_speak_below(record, name)
        ):
            return record
    return None


def _nsec_covering(records: list[_Nsec], name: dns.name.Name) -> _Nsec | None:
    """An NSEC that proves name does not exist (RFC 4035 §5.4)."""
    for record in records:
        if (
            _between(record, name)
            and not _strictly_below(record.next, name)
            and _may_speak_below(record, name)
        ):
            return record
    return None


def _nsec_no_cover(records: list[_Nsec], name: dns.name.Name) -> _Verdict:
    """Why no NSEC proves that name does not exist."""
    if _nsec_matching(records, name) is not None:
        return _no(f"an NSEC shows {name} exists")
    if _nsec_ent(records, name) is not None:
        return _no(f"an NSEC shows {name} is an empty non-terminal")
    for record in records:
        if _between(record, name) and not _may_speak_below(record, name):
            return _no(f"the NSEC at {record.owner} is a delegation or DNAME: no proof below it")
    return _no(f"no NSEC covers {name}")


def _nsec_closest_encloser(name: dns.name.Name, cover: _Nsec) -> dns.name.Name:
    """The deepest existing ancestor of a name the NSEC covers: the longer of its common
    ancestors with owner and next (RFC 4592 §3.3.1, as Unbound's nsec_closest_encloser)."""
    common = max(name.fullcompare(cover.owner)[2], name.fullcompare(cover.next)[2])
    return name.split(common)[1]


def _nsec_nxdomain(qname: dns.name.Name, records: list[_Nsec]) -> _Verdict:
    cover = _nsec_covering(records, qname)
    if cover is None:
        return _nsec_no_cover(records, qname)
    wildcard = _wildcard(_nsec_closest_encloser(qname, cover))
    if _nsec_covering(records, wildcard) is None:
        return _nsec_no_cover(records, wildcard)
    return _Verdict(Denial.PROVEN, f"NSEC covers {qname} and {wildcard}")


def _nsec_nodata(qname: dns.name.Name, qtype: int, records: list[_Nsec]) -> _Verdict:
    match = _nsec_matching(records, qname)
    if match is not None:
        return _nodata_verdict(match.types, qtype, qname)
    if _nsec_ent(records, qname) is not None:
        return _Verdict(Denial.PROVEN, f"{qname} is an empty non-terminal")
    cover = _nsec_covering(records, qname)
    if cover is None:
        return _nsec_no_cover(records, qname)
    # RFC 4035 §3.1.3.4: qname does not exist, the wildcard at its closest encloser does
    wildcard = _wildcard(_nsec_closest_encloser(qname, cover))
    wild_match = _nsec_matching(records, wildcard)
    if wild_match is None:
        if _nsec_ent(records, wildcard) is not None:
            return _Verdict(Denial.PROVEN, f"the wildcard {wildcard} is an empty non-terminal")
        return _no(f"{qname} does not exist and no NSEC matches {wildcard}")
    verdict = _nodata_verdict(wild_match.types, qtype, wildcard)
    return _Verdict(verdict.outcome, verdict.reason)


def _nsec_wildcard_answer(
    qname: dns.name.Name, parent: dns.name.Name, records: list[_Nsec]
) -> _Verdict:
    cover = _nsec_covering(records, qname)
    if cover is None:
        return _nsec_no_cover(records, qname)
    encloser = _nsec_closest_encloser(qname, cover)
    if encloser != parent:
        return _no(f"the closest encloser of {qname} is {encloser}, not {parent}")
    return _Verdict(Denial.PROVEN, f"NSEC covers {qname} below {parent}")


# -- NSEC3 (RFC 5155) ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Nsec3:
    #: the owner's first label and the next hashed owner, both upper-case base32hex
    hashed: str
    next_hashed: str
    types: frozenset[int]
    opt_out: bool


class _Nsec3Chain:
    """The NSEC3 records of one zone that share one parameter set, with a hash cache."""

    def __init__(
        self, zone: dns.name.Name, salt: bytes, iterations: int, records: list[_Nsec3]
    ) -> None:
        self.zone = zone
        self.salt = salt
        self.iterations = iterations
        self.records = records
        self._hashes: dict[dns.name.Name, str] = {}

    def hash(self, name: dns.name.Name) -> str:
        hashed = self._hashes.get(name)
        if hashed is None:
            hashed = primitives.nsec3_hash(name, self.salt, self.iterations)
            self._hashes[name] = hashed
        return hashed

    def matching(self, name: dns.name.Name) -> _Nsec3 | None:
        hashed = self.hash(name)
        return next((record for record in self.records if record.hashed == hashed), None)

    def covering(self, name: dns.name.Name) -> _Nsec3 | None:
        """RFC 5155 §3.1.7: hash(owner) < hash(name) < next hashed owner; the last record of
        the chain wraps to the first (a chain of one covers every other hash)."""
        hashed = self.hash(name)
        for record in self.records:
            if record.hashed < record.next_hashed:
                if record.hashed < hashed < record.next_hashed:
                    return record
            elif hashed > record.hashed or hashed < record.next_hashed:
                return record
        return None


def _nsec3_record(owner: dns.name.Name, rdata: NSEC3, zone: dns.name.Name) -> _Nsec3 | None:
    """The record in our terms, or None if it cannot be part of a SHA-1 chain of `zone`."""
    if len(owner) != len(zone) + 1 or not owner.is_subdomain(zone):
        return None
    hashed = owner.labels[0].decode("latin-1").upper()
    if len(hashed) != _SHA1_B32_LENGTH or len(rdata.next) != _SHA1_LENGTH:
        return None
    next_hashed = base64.b32hexencode(rdata.next).decode("ascii")
    types = _bitmap_types(rdata.windows)
    return _Nsec3(hashed, next_hashed, types, bool(rdata.flags & NSEC3_OPT_OUT))


def _nsec3_groups(
    nsec3s: Iterable[dns.rrset.RRset], zone: dns.name.Name
) -> tuple[dict[tuple[bytes, int], list[_Nsec3]], bool]:
    """The usable NSEC3 records of `zone` by (salt, iterations), and whether any record of the
    zone was set aside for an unknown hash algorithm."""
    groups: dict[tuple[bytes, int], list[_Nsec3]] = {}
    unknown_algorithm = False
    for rrset in nsec3s:
        if rrset.rdtype != dns.rdatatype.NSEC3 or not rrset.name.is_subdomain(zone):
            continue
        for rdata in rrset:
            if not isinstance(rdata, NSEC3):
                continue
            if rdata.algorithm != NSEC3_SHA1:
                unknown_algorithm = True  # RFC 5155 §8.1: ignored
                continue
            if rdata.flags & ~NSEC3_OPT_OUT:
                continue  # RFC 5155 §8.2: unknown flags, ignored
            record = _nsec3_record(rrset.name, rdata, zone)
            if record is not None:
                groups.setdefault((rdata.salt, rdata.iterations), []).append(record)
    return groups, unknown_algorithm


def _nsec3_verdicts(
    nsec3s: Iterable[dns.rrset.RRset],
    zone: dns.name.Name,
    max_iterations: int,
    proof: _Nsec3Proof,
) -> list[_Verdict]:
    groups, unknown_algorithm = _nsec3_groups(nsec3s, zone)
    if not groups and unknown_algorithm:
        # RFC 5155 §8.1: such records are ignored, so "will generally be considered bogus"
        return [_Verdict(Denial.NOT_PROVEN, "only unknown NSEC3 hash algorithms")]
    if len(groups) > MAX_NSEC3_PARAMETER_SETS:
        # a zone has one NSEC3 chain; many sets in one reply only multiply the hashing
        # (CVE-2023-50868), so they prove nothing
        why = f"{len(groups)} NSEC3 parameter sets in one answer"
        return [_Verdict(Denial.NOT_PROVEN, why)]
    verdicts = []
    for (salt, iterations), records in groups.items():
        if iterations > max_iterations:
            # RFC 9276 §3.2: insecure, and without spending the hashing on it
            reason = f"NSEC3 iterations {iterations} > {max_iterations}"
            verdicts.append(_Verdict(Denial.INSECURE, reason, too_many_iterations=True))
        else:
            verdicts.append(proof(_Nsec3Chain(zone, salt, iterations, records)))
    return verdicts


@dataclass(frozen=True, slots=True)
class _Encloser:
    encloser: dns.name.Name
    next_closer: dns.name.Name
    #: the NSEC3 covering the next closer name
    cover: _Nsec3


def _closest_encloser_proof(qname: dns.name.Name, chain: _Nsec3Chain) -> _Encloser | str:
    """RFC 5155 §8.3: the closest provable encloser of qname (an ancestor with a matching NSEC3,
    neither a cut nor a DNAME) and the NSEC3 covering the next closer name; else why not."""
    for depth in range(len(qname) - 1, len(chain.zone) - 1, -1):
        candidate = qname.split(depth)[1]
        match = chain.matching(candidate)
        if match is None:
            continue
        if _hides_below(match.types):
            return f"the closest encloser {candidate} is a delegation or DNAME"
        next_closer = qname.split(depth + 1)[1]
        cover = chain.covering(next_closer)
        if cover is None:
            return f"no NSEC3 covers the next closer name {next_closer}"
        return _Encloser(candidate, next_closer, cover)
    return f"no NSEC3 matches an ancestor of {qname}"


def _nsec3_nxdomain(qname: dns.name.Name, chain: _Nsec3Chain) -> _Verdict:
    if chain.matching(qname) is not None:
        return _no(f"an NSEC3 shows {qname} exists")
    proof = _closest_encloser_proof(qname, chain)
    if isinstance(proof, str):
        return _no(proof)
    wildcard = _wildcard(proof.encloser)
    if chain.matching(wildcard) is not None:
        return _no(f"an NSEC3 shows {wildcard} exists")
    if chain.covering(wildcard) is None:
        return _no(f"no NSEC3 covers {wildcard}")
    if proof.cover.opt_out:
        # RFC 5155 §6: the next closer name may be an unsigned delegation left out of the chain
        return _Verdict(Denial.OPT_OUT, f"{proof.next_closer} is in an NSEC3 opt-out span")
    return _Verdict(Denial.PROVEN, f"NSEC3 closest encloser {proof.encloser}, no {wildcard}")


def _nsec3_nodata(qname: dns.name.Name, qtype: int, chain: _Nsec3Chain) -> _Verdict:
    match = chain.matching(qname)
    if match is not None:
        return _nodata_verdict(match.types, qtype, qname)  # RFC 5155 §8.5, §8.6
    proof = _closest_encloser_proof(qname, chain)
    if isinstance(proof, str):
        return _no(f"no NSEC3 matches {qname} and {proof}")
    wildcard = _wildcard(proof.encloser)
    wild_match = chain.matching(wildcard)
    if wild_match is not None:
        verdict = _nodata_verdict(wild_match.types, qtype, wildcard)  # RFC 5155 §8.7
        return _Verdict(verdict.outcome, verdict.reason)
    if proof.cover.opt_out:
        # RFC 5155 §8.6 for DS; for other types the name may lie under an unsigned delegation
        # in the opt-out span (Unbound treats that as insecure too)
        why = f"{proof.next_closer} is in an NSEC3 opt-out span"
        return _Verdict(Denial.OPT_OUT, why, delegation=True)
    return _no(f"no NSEC3 matches {qname} or {wildcard}, and no opt-out covers it")


def _nsec3_wildcard_answer(
    qname: dns.name.Name, parent: dns.name.Name, chain: _Nsec3Chain
) -> _Verdict:
    # RFC 5155 §8.8: the RRSIG labels field names the closest encloser; opt-out does not matter
    next_closer = qname.split(len(parent) + 1)[1]
    if chain.covering(next_closer) is None:
        return _no(f"no NSEC3 covers the next closer name {next_closer}")
    return _Verdict(Denial.PROVEN, f"NSEC3 covers {next_closer} below {parent}")
