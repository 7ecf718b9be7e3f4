"""Validating one upstream reply (RFC 4035 §5, RFC 6840): from the question to a verdict.

The answer section is followed from the question name through CNAMEs and DNAMEs; each RRset is
verified in its own zone (the signer's keys come from the chain of trust). What is left at the end
of the chain, an NXDOMAIN or NODATA, must be proven by signed NSEC or NSEC3 records from the
authority section; so must a wildcard expansion. The answer is as strong as its weakest link: one
bogus link makes it bogus, one insecure link (an unsigned zone) makes it insecure.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.rrset
from dns.edns import EDECode
from dns.rdtypes.ANY.CNAME import CNAME
from dns.rdtypes.ANY.DNAME import DNAME

from stubby_py.dnssec import denial
from stubby_py.dnssec.chain import (
    KeyChain,
    ZoneKeys,
    denial_records,
    find_rrset,
    find_sigs,
    signature_expiry,
)
from stubby_py.dnssec.outcome import Link, Security, Step, Verdict
from stubby_py.dnssec.verify import verify_rrset

#: most CNAME/DNAME links followed (Unbound's max-query-restarts is 11)
MAX_CHAIN = 12
RRSIG = dns.rdatatype.RRSIG
CNAME_TYPE = dns.rdatatype.CNAME
DNAME_TYPE = dns.rdatatype.DNAME
SOA = dns.rdatatype.SOA
#: types a DO-less client never sees unless it asked for them (RFC 4035 §3.2.1)
DNSSEC_TYPES = frozenset({dns.rdatatype.RRSIG, dns.rdatatype.NSEC, dns.rdatatype.NSEC3})


@dataclass
class _Judgement:
    """The links of one answer as they are judged."""

    now: float
    security: Security = Security.SECURE
    ede: int | None = None
    reason: str = ""
    zone: str = ""
    until: float = float("inf")
    links: list[Link] = field(default_factory=list)

    def add(
        self,
        security: Security,
        *,
        ede: int | None = None,
        reason: str = "",
        zone: str = "",
        links: tuple[Link, ...] = (),
    ) -> None:
        for link in links:
            if link not in self.links:
                self.links.append(link)
        if security > self.security:
            self.security = security
            self.ede = ede
            self.reason = reason
            self.zone = zone

    def expires(self, until: float) -> None:
        self.until = min(self.until, until)

    @property
    def failed(self) -> bool:
        return self.security >= Security.INDETERMINATE

    def verdict(self) -> Verdict:
        cap = None
        if self.until != float("inf"):
            cap = max(0, int(self.until - self.now))
        return Verdict(self.security, self.ede, self.reason, self.zone, cap, tuple(self.links))


class Validator:
    def __init__(self, chain: KeyChain) -> None:
        self.chain = chain

    @property
    def skew(self) -> float:
        return self.chain.skew

    def validate(
        self, reply: dns.message.Message, qname: dns.name.Name, qtype: int, now: float
    ) -> Step[Verdict]:
        """Judge `reply` to (qname, qtype), asked with DO and CD set."""
        judged = _Judgement(now)
        rcode = reply.rcode()
        if rcode not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
            judged.add(Security.INSECURE, reason=f"{dns.rcode.to_text(rcode)} is not validated")
            return judged.verdict()
        if qtype in (RRSIG, dns.rdatatype.ANY):
            # RFC 4035 §3.1.5 / RFC 8482: answers to these are not sets a signature can cover whole
            judged.add(
                Security.INSECURE,
                reason=f"{dns.rdatatype.RdataType.make(qtype).name} is not validated",
            )
            return judged.verdict()
        answer = reply.answer
        sname: dns.name.Name | None = qname
        seen: set[dns.name.Name] = set()
        for _ in range(MAX_CHAIN):
            if sname is None or sname in seen or judged.failed:
                break  # a loop or a broken link: the links judged are all there is
            seen.add(sname)
            rrset = find_rrset(answer, sname, qtype)
            if rrset is not None:
                yield from self._positive(rrset, reply, judged)
                break
            link = _redirection(answer, sname, judged)
            if link is None:
                yield from self._negative(sname, qtype, rcode, reply, judged)
                break
            yield from self._positive(link[0], reply, judged)
            sname = link[1]
        return judged.verdict()

    # -- answers --------------------------------------------------------------------------------
    def _positive(
        self, rrset: dns.rrset.RRset, reply: dns.message.Message, judged: _Judgement
    ) -> Step[None]:
        now = judged.now
        sigs = find_sigs(reply.answer, rrset.name, rrset.rdtype)
        signer = _signer(sigs, rrset.name)
        if signer is None:
            zone = yield from self.chain.zone_of(rrset.name, now)
            if zone.security == Security.BOGUS and zone.ede == EDECode.NSEC_MISSING:
                # no signature, and no proof of an unsigned zone: the signature is what is missing
                zone = replace(zone, security=Security.SECURE)
            if zone.security == Security.SECURE:
                why = f"{rrset.name} {dns.rdatatype.to_text(rrset.rdtype)} is unsigned"
                why += f" in the secure zone {zone.zone}"
                judged.add(Security.BOGUS, ede=EDECode.RRSIGS_MISSING, zone=str(zone.zone),
                           reason=why, links=zone.links)  # fmt: skip
            else:
                _take(judged, zone)
            return
        keys = yield from self.chain.keys_for(signer, now)
        if keys.security != Security.SECURE:
            _take(judged, keys)
            return
        check = verify_rrset(rrset, sigs, signer, keys.keys, now, self.skew)
        if not check.ok:
            judged.add(Security.BOGUS, ede=check.ede, reason=check.reason, zone=str(signer),
                       links=keys.links)  # fmt: skip
            return
        judged.add(Security.SECURE, links=keys.links)
        judged.expires(signature_expiry(check, rrset, now))
        assert check.labels is not None
        if check.labels < len(rrset.name) - 1 - int(rrset.name.is_wild()):
            # RFC 4035 §5.3.4: expanded from a wildcard; the name itself must be proven absent
            source = rrset.name.split(check.labels + 1)[1]
            self._wildcard(rrset.name, source, signer, keys, reply, judged)

    def _wildcard(
        self,
        name: dns.name.Name,
        source: dns.name.Name,
        signer: dns.name.Name,
        keys: ZoneKeys,
        reply: dns.message.Message,
        judged: _Judgement,
    ) -> None:
        nsecs, nsec3s, until, failure = denial_records(
            reply.authority, signer, keys.keys, judged.now, self.skew
        )
        if failure is not None:
            judged.add(Security.BOGUS, ede=failure.ede, reason=failure.reason, zone=str(signer))
            return
        proof = denial.prove_wildcard_answer(
            name, source, signer, nsecs, nsec3s, self.chain.max_iterations
        )
        self._judge_denial(proof, f"wildcard answer for {name}", signer, judged)
        judged.expires(until)

    # -- NXDOMAIN and NODATA ----------------------------------------------------------------------
    def _negative(
        self,
        sname: dns.name.Name,
        qtype: int,
        rcode: int,
        reply: dns.message.Message,
        judged: _Judgement,
    ) -> Step[None]:
        now = judged.now
        authority = reply.authority
        soa = next((r for r in authority if r.rdtype == SOA and sname.is_subdomain(r.name)), None)
        signer = None
        if soa is not None:
            signer = _signer(find_sigs(authority, soa.name, SOA), soa.name)
        if signer is None:
            signer = _denial_signer(authority, sname)
        kind = "NXDOMAIN" if rcode == dns.rcode.NXDOMAIN else "NODATA"
        if signer is None:
            zone = yield from self.chain.zone_of(sname, now)
            if zone.security == Security.SECURE:
                judged.add(Security.BOGUS, ede=EDECode.RRSIGS_MISSING, zone=str(zone.zone),
                           reason=f"unsigned {kind} for {sname} in the secure zone {zone.zone}",
                           links=zone.links)  # fmt: skip
            else:
                _take(judged, zone)
            return
        keys = yield from self.chain.keys_for(signer, now)
        if keys.security != Security.SECURE:
            _take(judged, keys)
            return
        judged.add(Security.SECURE, links=keys.links)
        if soa is not None and soa.name == signer:
            check = verify_rrset(soa, find_sigs(authority, soa.name, SOA), signer, keys.keys,
                                 now, self.skew)  # fmt: skip
            if not check.ok:
                judged.add(Security.BOGUS, ede=check.ede, reason=check.reason, zone=str(signer))
                return
            judged.expires(signature_expiry(check, soa, now))
        nsecs, nsec3s, until, failure = denial_records(authority, signer, keys.keys, now, self.skew)
        if failure is not None:
            judged.add(Security.BOGUS, ede=failure.ede, reason=failure.reason, zone=str(signer))
            return
        judged.expires(until)
        limit = self.chain.max_iterations
        if rcode == dns.rcode.NXDOMAIN:
            proof = denial.prove_nxdomain(sname, signer, nsecs, nsec3s, limit)
        else:
            proof = denial.prove_nodata(sname, qtype, signer, nsecs, nsec3s, limit)
        self._judge_denial(proof, f"{kind} for {sname}", signer, judged)

    def _judge_denial(
        self,
        proof: denial.DenialResult,
        what: str,
        zone: dns.name.Name,
        judged: _Judgement,
    ) -> None:
        outcome = proof.outcome
        if outcome == denial.Denial.PROVEN:
            return
        if outcome in (denial.Denial.OPT_OUT, denial.Denial.INSECURE):
            # RFC 9276 §3.2: say so when it is the iteration count that made it insecure
            ede = EDECode.UNSUPPORTED_NSEC3_ITERATIONS_VALUE if proof.too_many_iterations else None
            judged.add(Security.INSECURE, ede=ede, reason=f"{what}: {proof.reason}", zone=str(zone))
            return
        judged.add(Security.BOGUS, ede=EDECode.NSEC_MISSING, zone=str(zone),
                   reason=f"{what} not proven: {proof.reason}")  # fmt: skip


def _take(judged: _Judgement, zone: ZoneKeys) -> None:
    """An insecure, bogus or indeterminate zone decides the link."""
    judged.add(zone.security, ede=zone.ede, reason=zone.reason, zone=str(zone.zone),
               links=zone.links)  # fmt: skip
    if zone.security == Security.INSECURE:
        judged.expires(zone.expires)


def _signer(sigs: dns.rrset.RRset | None, owner: dns.name.Name) -> dns.name.Name | None:
    """The deepest signer of `sigs` that could sign at `owner` (the owner is in its zone)."""
    best: dns.name.Name | None = None
    for sig in sigs or ():
        signer = sig.signer
        if owner.is_subdomain(signer) and (best is None or len(signer) > len(best)):
            best = signer
    return best


def _denial_signer(authority: list[dns.rrset.RRset], sname: dns.name.Name) -> dns.name.Name | None:
    """The zone that signed the NSEC/NSEC3 records of a negative answer without a signed SOA."""
    for rrset in authority:
        if rrset.rdtype == RRSIG and rrset.covers in (dns.rdatatype.NSEC, dns.rdatatype.NSEC3):
            signer = _signer(rrset, rrset.name)
            if signer is not None and sname.is_subdomain(signer):
                return signer
    return None


def _redirection(
    answer: list[dns.rrset.RRset], sname: dns.name.Name, judged: _Judgement
) -> tuple[dns.rrset.RRset, dns.name.Name | None] | None:
    """The CNAME or DNAME that leads on from sname, and where to; None when nothing does.

    A DNAME's synthesized CNAME is unsigned (RFC 6672 §5.3.1): the signed DNAME vouches for it,
    so it must say exactly what the DNAME says.
    """
    cname = find_rrset(answer, sname, CNAME_TYPE)
    dname = _covering_dname(answer, sname)
    if dname is not None and (cname is None or find_sigs(answer, sname, CNAME_TYPE) is None):
        target = _synthesize(sname, dname)
        if target is None or (cname is not None and _cname_target(cname) != target):
            why = f"the CNAME at {sname} does not follow the DNAME {dname.name}"
            judged.add(Security.BOGUS, ede=EDECode.DNSSEC_BOGUS, zone=str(dname.name), reason=why)
            target = None
        return dname, target
    if cname is not None:
        return cname, _cname_target(cname)
    return None


def _covering_dname(answer: list[dns.rrset.RRset], sname: dns.name.Name) -> dns.rrset.RRset | None:
    """The deepest DNAME in the answer owned by a proper ancestor of sname."""
    best: dns.rrset.RRset | None = None
    for rrset in answer:
        if rrset.rdtype != DNAME_TYPE:
            continue
        below = sname != rrset.name and sname.is_subdomain(rrset.name)
        if below and (best is None or len(rrset.name) > len(best.name)):
            best = rrset
    return best


def _synthesize(sname: dns.name.Name, dname: dns.rrset.RRset) -> dns.name.Name | None:
    """RFC 6672 §2.2: sname with the DNAME owner replaced by its target; None if too long."""
    record = next(iter(dname))
    assert isinstance(record, DNAME)
    try:
        return sname.relativize(dname.name).concatenate(record.target)
    except dns.name.NameTooLong:
        return None


def _cname_target(cname: dns.rrset.RRset) -> dns.name.Name | None:
    record = next(iter(cname), None)
    return record.target if isinstance(record, CNAME) else None


def without_dnssec_records(reply: dns.message.Message, qtype: int) -> bytes:
    """The reply without RRSIG, NSEC and NSEC3 records (unless asked for by type), for a client
    that did not set DO (RFC 4035 §3.2.1)."""
    kept = dns.message.Message(reply.id)
    kept.flags = reply.flags
    kept.question = reply.question
    for section in ("answer", "authority", "additional"):
        rrsets = [
            rrset
            for rrset in getattr(reply, section)
            if rrset.rdtype not in DNSSEC_TYPES or rrset.rdtype == qtype
        ]
        setattr(kept, section, rrsets)
    return kept.to_wire()
