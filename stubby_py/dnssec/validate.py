"""Validating one upstream reply (RFC 4035 §5, RFC 6840): from the question to a verdict.

The answer section is followed from the question name through CNAMEs and DNAMEs; each RRset is
verified in its own zone (the signer's keys come from the chain of trust). What is left at the end
of the chain, an NXDOMAIN or NODATA, must be proven by signed NSEC or NSEC3 records from the
authority section; so must a wildcard expansion. The answer is as strong as its weakest link: one
bogus link makes it bogus, one insecure link (an unsigned zone) makes it insecure.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.rrset
from dns.edns import EDECode
from dns.rdata import Rdata
from dns.rdtypes.ANY.CNAME import CNAME
from dns.rdtypes.ANY.DNAME import DNAME

from stubby_py.core import wire
from stubby_py.dnssec import denial, records
from stubby_py.dnssec.aggressive import Held, Synthesis
from stubby_py.dnssec.chain import (
    KeyChain,
    ZoneKeys,
    denial_records,
    find_rrset,
    find_sigs,
    signature_expiry,
)
from stubby_py.dnssec.outcome import Link, Security, Step, Verdict
from stubby_py.dnssec.verify import Budget, SignatureCheck, verify_rrset, verify_signed

#: most CNAME/DNAME links followed (Unbound's max-query-restarts is 11)
MAX_CHAIN = 12
RRSIG = dns.rdatatype.RRSIG
CNAME_TYPE = dns.rdatatype.CNAME
DNAME_TYPE = dns.rdatatype.DNAME
SOA = dns.rdatatype.SOA
#: signers tried for one RRset; RRsets in one ANY answer validated
MAX_SIGNERS = 2
MAX_ANY_RRSETS = 16
#: types a signature may not stand for by wildcard expansion (only answer data may be expanded)
NEVER_EXPANDED = frozenset(
    {dns.rdatatype.DS, dns.rdatatype.DNSKEY, dns.rdatatype.SOA, dns.rdatatype.NSEC,
     dns.rdatatype.NSEC3, dns.rdatatype.DNAME}
)  # fmt: skip
#: types a DO-less client never sees unless it asked for them (RFC 4035 §3.2.1)
DNSSEC_TYPES = frozenset({dns.rdatatype.RRSIG, dns.rdatatype.NSEC, dns.rdatatype.NSEC3})
#: question types the fast path leaves to the full one: RRSIG (not validated) and ANY
_NOT_FAST = frozenset({dns.rdatatype.RRSIG, dns.rdatatype.ANY})
#: signer names the fast path keeps parsed
_MAX_NAMES = 1024


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
    budget: Budget = field(default_factory=Budget)
    #: the records the verdict covers, with their RRSIGs: all the client may be given
    answer: list[dns.rrset.RRset] = field(default_factory=list)
    authority: list[dns.rrset.RRset] = field(default_factory=list)
    #: False: the reply was not examined (an rcode or type not validated): pass it on whole
    examined: bool = True
    #: the key chain's generation when judging began: proofs found under keys a flush has
    #: since thrown away are not held for later answers
    generation: int = 0

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

    def check_failed(
        self, check: SignatureCheck, *, zone: str = "", links: tuple[Link, ...] = ()
    ) -> None:
        """A failed check: bogus, or indeterminate (EDE 5) when it ran out of budget."""
        if check.over_budget:
            security, ede = Security.INDETERMINATE, int(EDECode.DNSSEC_INDETERMINATE)
        else:
            security, ede = Security.BOGUS, check.ede  # type: ignore[assignment]
        self.add(security, ede=ede, reason=check.reason, zone=zone, links=links)

    def keep(self, section: list[dns.rrset.RRset], *rrsets: dns.rrset.RRset | None) -> None:
        for rrset in rrsets:
            if rrset is not None and rrset not in section:
                section.append(rrset)

    def expires(self, until: float) -> None:
        self.until = min(self.until, until)

    @property
    def failed(self) -> bool:
        return self.security >= Security.INDETERMINATE

    def verdict(self) -> Verdict:
        cap = None
        if self.until != float("inf"):
            cap = max(0, int(self.until - self.now))
        kept = (tuple(self.answer), tuple(self.authority)) if self.examined else None
        return Verdict(
            self.security, self.ede, self.reason, self.zone, cap, tuple(self.links), kept
        )


class Validator:
    def __init__(self, chain: KeyChain, *, aggressive: bool = True) -> None:
        """aggressive: answer from held NSEC/NSEC3 proofs (RFC 8198; `aggressive_nsec`)."""
        self.chain = chain
        self.aggressive = aggressive
        #: signer names of the fast path, by their wire form
        self._names: dict[bytes, dns.name.Name] = {}

    def synthesize(self, qname: dns.name.Name, qtype: int, now: float) -> Synthesis | None:
        """An NXDOMAIN or NODATA proven from the NSEC/NSEC3 records of earlier secure answers
        (RFC 8198), or None (then the question goes upstream)."""
        if not self.aggressive:
            return None
        return self.chain.denials.synthesize(qname, qtype, now, self.chain.max_iterations)

    def synthesize_wire(self, qname_wire: bytes, qtype: int, now: float) -> Synthesis | None:
        """`synthesize` for a name inside an NSEC span that already proved the same answer (the
        fast path: no name parsed, no proof run again); None: take `synthesize`."""
        if not self.aggressive:
            return None
        return self.chain.denials.synthesize_wire(qname_wire, qtype, now)

    def _hold(
        self,
        judged: _Judgement,
        zone: ZoneKeys,
        authority: list[dns.rrset.RRset],
        proofs: list[dns.rrset.RRset],
        until: float,
        soa: Held | None = None,
        *,
        wildcard: Held | None = None,
    ) -> None:
        """Keep the records of a proof found secure for answers proven from them later (and the
        wildcard RRset whose expansion it proved, under its own owner name)."""
        if not self.aggressive or judged.generation != self.chain.generation:
            return
        until = min(until, zone.expires)
        held = []
        for rrset in proofs:
            sigs = find_sigs(authority, rrset.name, rrset.rdtype)
            if sigs is not None:
                held.append(Held(rrset, sigs, until))
        if wildcard is not None:
            wildcard = replace(wildcard, until=min(wildcard.until, zone.expires))
            self.chain.denials.learn_wildcard(zone.zone, wildcard, held, judged.now)
            return
        if soa is not None:
            soa = replace(soa, until=min(soa.until, zone.expires))
        self.chain.denials.learn(zone.zone, held, judged.now, soa)

    @staticmethod
    def render(
        reply: dns.message.Message, verdict: Verdict, dnssec_records: bool, body: bytes = b""
    ) -> bytes:
        """The client's reply; copied from the received octets `body` when that can be done."""
        if body:
            copied = render_wire(body, reply, verdict, dnssec_records)
            if copied is not None:
                return copied
        return render(reply, verdict, dnssec_records)

    def validate_answer(
        self, body: bytes, qname_wire: bytes, qtype: int, dnssec_records: bool, now: float
    ) -> tuple[Verdict, bytes] | None:
        """The fast path for the commonest signed answer: the question's own RRset with its
        RRSIGs and nothing else in the answer section, signed (not by wildcard expansion) by a
        zone whose keys are already known secure. Returns the verdict and the client's reply
        copied from `body` (the answer section only, RRSIGs only with `dnssec_records`), as
        `validate` and `render` would make them, but read straight from the octets
        (records.py). None: anything else, a signature that did not verify included; the caller
        takes the full path then, which judges and explains every other case."""
        if qtype in _NOT_FAST or len(body) < wire.HEADER_LEN or body[3] & 0x0F:
            return None  # the rcode's low bits: only NOERROR
        if body[4:6] != b"\x00\x01":
            return None  # one question
        owner = qname_wire.lower()
        found = _own_rrset(body, owner, qtype)
        if found is None:
            return None
        rdatas, ttl, sigs, answer = found
        budget = Budget()
        for signer in self._fast_signers(sigs, owner, now):
            keys = self.chain.cached(signer, now)
            if keys is None or keys.security != Security.SECURE:
                return None  # the walk, or a verdict that is not secure: the full path
            check = verify_signed(owner, qtype, 1, rdatas, sigs, signer, keys.keys, now,
                                  self.skew, budget=budget)  # fmt: skip
            if check.ok:
                break
        else:
            return None
        until = now + min(ttl, check.original_ttl if check.original_ttl is not None else ttl)
        if check.expiration is not None:
            until = min(until, float(check.expiration))
        copied = _answer_copy(body, answer, qtype, dnssec_records)
        if copied is None:
            return None
        verdict = Verdict(Security.SECURE, ttl_cap=max(0, int(until - now)), chain=keys.links)
        return verdict, copied

    def _fast_signers(
        self, sigs: list[records.Signature], owner: bytes, now: float
    ) -> list[dns.name.Name]:
        """`_signers` for the fast path: the signers that could sign at `owner`, known first,
        then the deepest, at most MAX_SIGNERS."""
        found = {sig.signer for sig in sigs if records.is_subdomain(owner, sig.signer)}
        names = []
        for signer in found:
            name = self._names.get(signer)
            if name is None:
                if len(self._names) >= _MAX_NAMES:
                    self._names.clear()
                name = self._names[signer] = dns.name.from_wire(signer, 0)[0]
            names.append(name)
        if len(names) > 1:
            names.sort(key=lambda n: (self.chain.cached(n, now) is None, -len(n)))
        return names[:MAX_SIGNERS]

    @property
    def skew(self) -> float:
        return self.chain.skew

    def validate(
        self, reply: dns.message.Message, qname: dns.name.Name, qtype: int, now: float
    ) -> Step[Verdict]:
        """Judge `reply` to (qname, qtype), asked with DO and CD set."""
        judged = _Judgement(now, generation=self.chain.generation)
        rcode = reply.rcode()
        if rcode not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN) or qtype == RRSIG:
            # RFC 4035 §3.1.5: RRSIGs are not themselves signed; other rcodes carry no data
            what = dns.rcode.to_text(rcode) if qtype != RRSIG else "an RRSIG query"
            judged.add(Security.INSECURE, reason=f"{what} is not validated")
            judged.examined = False
            return judged.verdict()
        if qtype == dns.rdatatype.ANY:
            yield from self._any(qname, rcode, reply, judged)
            return judged.verdict()
        answer = reply.answer
        sname: dns.name.Name | None = qname
        seen: set[dns.name.Name] = set()
        for _ in range(MAX_CHAIN + 1):  # the question's name, then one name per link
            if sname is None or sname in seen or judged.failed:
                break  # a loop or a broken link: the links judged are all there is
            seen.add(sname)
            rrset = find_rrset(answer, sname, qtype)
            if rrset is not None:
                if rcode != dns.rcode.NOERROR:
                    # RFC 6604: the rcode speaks of the chain's last name, which has data
                    why = f"{dns.rcode.to_text(rcode)} with data for {sname}"
                    judged.add(Security.BOGUS, ede=EDECode.DNSSEC_BOGUS, reason=why)
                    break
                yield from self._positive(rrset, reply, judged)
                break
            link = _redirection(answer, sname, judged)
            if link is None:
                yield from self._negative(sname, qtype, rcode, reply, judged)
                break
            yield from self._positive(link[0], reply, judged)
            judged.keep(judged.answer, link[2])  # a DNAME's synthesized CNAME
            sname = link[1]
        else:
            judged.add(Security.BOGUS, ede=EDECode.DNSSEC_BOGUS,
                       reason=f"more than {MAX_CHAIN} CNAME/DNAME links")  # fmt: skip
        return judged.verdict()

    def _any(
        self, qname: dns.name.Name, rcode: int, reply: dns.message.Message, judged: _Judgement
    ) -> Step[None]:
        """ANY (over TCP; RFC 8482): every RRset at the name is validated on its own."""
        rrsets = [r for r in reply.answer if r.name == qname and r.rdtype != RRSIG]
        if not rrsets:
            yield from self._negative(qname, dns.rdatatype.ANY, rcode, reply, judged)
            return
        for rrset in rrsets[:MAX_ANY_RRSETS]:
            yield from self._positive(rrset, reply, judged)
            if judged.failed:
                return
        if len(rrsets) > MAX_ANY_RRSETS:
            judged.add(Security.BOGUS, ede=EDECode.DNSSEC_BOGUS,
                       reason=f"more than {MAX_ANY_RRSETS} RRsets in an ANY answer")  # fmt: skip

    # -- answers --------------------------------------------------------------------------------
    def _positive(
        self, rrset: dns.rrset.RRset, reply: dns.message.Message, judged: _Judgement
    ) -> Step[None]:
        now = judged.now
        sigs = find_sigs(reply.answer, rrset.name, rrset.rdtype)
        signers = _signers(sigs, rrset.name, self.chain, now)
        if not signers:
            yield from self._unsigned(rrset, reply, judged)
            return
        # a junk RRSIG naming another signer must not spoil a good one: try each (at most two)
        for signer in signers:
            keys = yield from self.chain.keys_for(signer, now, judged.budget)
            if keys.security != Security.SECURE:
                failure: tuple[ZoneKeys, SignatureCheck | None] = (keys, None)
                continue
            check = verify_rrset(rrset, sigs, signer, keys.keys, now, self.skew,
                                 budget=judged.budget, expanded_ok=_may_expand(rrset))  # fmt: skip
            if check.ok:
                break
            failure = (keys, check)
        else:
            keys, bad = failure
            if bad is None:
                _take(judged, keys)
                judged.keep(judged.answer, rrset, sigs)
            else:
                judged.check_failed(bad, zone=str(keys.zone), links=keys.links)
            return
        judged.add(Security.SECURE, links=keys.links)
        judged.keep(judged.answer, rrset, sigs)
        judged.expires(signature_expiry(check, rrset, now))
        assert check.labels is not None
        if check.labels < len(rrset.name) - 1 - int(rrset.name.is_wild()):
            # RFC 4035 §5.3.4: expanded from a wildcard; the name itself must be proven absent
            source = rrset.name.split(check.labels + 1)[1]
            assert sigs is not None
            expansion = Held(rrset, sigs, signature_expiry(check, rrset, now))
            self._wildcard(expansion, source, signer, keys, reply, judged)

    def _unsigned(
        self, rrset: dns.rrset.RRset, reply: dns.message.Message, judged: _Judgement
    ) -> Step[None]:
        """Unsigned data: fine below an insecure delegation, bogus in a secure zone."""
        zone = yield from self.chain.zone_of(rrset.name, judged.now, judged.budget)
        if zone.security == Security.BOGUS and zone.ede == EDECode.NSEC_MISSING:
            # no signature, and no proof of an unsigned zone: the signature is what is missing
            zone = replace(zone, security=Security.SECURE)
        if zone.security == Security.SECURE:
            why = f"{rrset.name} {dns.rdatatype.to_text(rrset.rdtype)} is unsigned"
            why += f" in the secure zone {zone.zone}"
            judged.add(Security.BOGUS, ede=EDECode.RRSIGS_MISSING, zone=str(zone.zone),
                       reason=why, links=zone.links)  # fmt: skip
            return
        _take(judged, zone)
        judged.keep(judged.answer, rrset)

    def _wildcard(
        self,
        expansion: Held,
        source: dns.name.Name,
        signer: dns.name.Name,
        keys: ZoneKeys,
        reply: dns.message.Message,
        judged: _Judgement,
    ) -> None:
        name = expansion.rrset.name
        nsecs, nsec3s, until, failure = denial_records(
            reply.authority, signer, keys.keys, judged.now, self.skew, judged.budget
        )
        if failure is not None:
            judged.check_failed(failure, zone=str(signer))
            return
        _keep_proof(judged, reply.authority, nsecs + nsec3s)
        proof = denial.prove_wildcard_answer(
            name, source, signer, nsecs, nsec3s, self.chain.max_iterations
        )
        self._judge_denial(proof, f"wildcard answer for {name}", signer, judged)
        judged.expires(until)
        if proof.outcome == denial.Denial.PROVEN:
            owner = dns.name.Name((b"*", *source.labels))
            # only the RRSIGs that speak for the wildcard (a junk one is not replayed)
            labels = len(source) - 1
            sigs = [s for s in expansion.sigs if s.signer == signer and s.labels == labels]
            wildcard = Held(
                _renamed(expansion.rrset, owner, expansion.rrset),
                _renamed(expansion.sigs, owner, sigs),
                min(expansion.until, until),
            )
            self._hold(judged, keys, reply.authority, nsecs + nsec3s, until, wildcard=wildcard)

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
        signers = _signers(find_sigs(authority, soa.name, SOA), soa.name) if soa else []
        signer = signers[0] if signers else _denial_signer(authority, sname)
        kind = "NXDOMAIN" if rcode == dns.rcode.NXDOMAIN else "NODATA"
        if signer is None:
            zone = yield from self.chain.zone_of(sname, now, judged.budget)
            if zone.security == Security.SECURE:
                judged.add(Security.BOGUS, ede=EDECode.RRSIGS_MISSING, zone=str(zone.zone),
                           reason=f"unsigned {kind} for {sname} in the secure zone {zone.zone}",
                           links=zone.links)  # fmt: skip
            else:
                _take(judged, zone)
                judged.keep(judged.authority, soa)
            return
        keys = yield from self.chain.keys_for(signer, now, judged.budget)
        if keys.security != Security.SECURE:
            _take(judged, keys)
            judged.keep(judged.authority, soa)
            return
        judged.add(Security.SECURE, links=keys.links)
        held_soa = None
        if soa is not None and soa.name == signer:
            soa_sigs = find_sigs(authority, soa.name, SOA)
            check = verify_rrset(soa, soa_sigs, signer, keys.keys, now, self.skew,
                                 budget=judged.budget)  # fmt: skip
            if not check.ok:
                judged.check_failed(check, zone=str(signer))
                return
            judged.keep(judged.authority, soa, soa_sigs)
            judged.expires(signature_expiry(check, soa, now))
            assert soa_sigs is not None
            held_soa = Held(soa, soa_sigs, signature_expiry(check, soa, now))
        nsecs, nsec3s, until, failure = denial_records(
            authority, signer, keys.keys, now, self.skew, judged.budget
        )
        if failure is not None:
            judged.check_failed(failure, zone=str(signer))
            return
        _keep_proof(judged, authority, nsecs + nsec3s)
        judged.expires(until)
        limit = self.chain.max_iterations
        if rcode == dns.rcode.NXDOMAIN:
            proof = denial.prove_nxdomain(sname, signer, nsecs, nsec3s, limit)
        else:
            proof = denial.prove_nodata(sname, qtype, signer, nsecs, nsec3s, limit)
        self._judge_denial(proof, f"{kind} for {sname}", signer, judged)
        if proof.outcome == denial.Denial.PROVEN and held_soa is not None:
            self._hold(judged, keys, authority, nsecs + nsec3s, until, held_soa)

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


def _answer_copy(
    body: bytes, answer: list[records.Record], qtype: int, dnssec_records: bool
) -> bytes | None:
    """The reply's answer section alone (`_own_rrset` read it), RRSIGs only when
    `dnssec_records`: the octets up to its last kept record, for records.py follows only names
    that point backwards, so nothing kept leads into what is left out. With RRSIGs before data a
    client without DO is given, `_copy_records` moves the records."""
    kept = answer
    if not dnssec_records:
        kept = [record for record in answer if record.rtype != RRSIG]
        if any(record.rtype == RRSIG for record in answer[: len(kept)]):
            owner = answer[0].owner
            wanted: _Wanted = {(0, owner, qtype, 0, answer[0].rclass): len(kept)}
            try:
                return _copy_records(body, wanted, dnssec_records, qtype)
            except (wire.WireError, struct.error, IndexError):
                return None
    msg_id, flags = struct.unpack_from("!HH", body)
    return _HEADER.pack(msg_id, flags, 1, len(kept), 0, 0) + body[wire.HEADER_LEN : kept[-1].end]


def _own_rrset(
    body: bytes, owner: bytes, qtype: int
) -> tuple[list[bytes], int, list[records.Signature], list[records.Record]] | None:
    """When the answer section holds only the RRset (owner, qtype, IN) and RRSIGs over it: its
    canonical RDATA, its smallest TTL, the signatures and the section's records; else None."""
    rdatas: list[bytes] = []
    sigs: list[records.Signature] = []
    ttl = None
    try:
        # what follows the answer section is left out, but must be well formed
        answer = [record for record in records.read_records(body) if record.section == 0]
        for record in answer:
            if record.owner != owner or record.rclass != 1:
                return None
            if record.rtype == qtype and record.rdata is not None:
                rdatas.append(record.rdata)
                ttl = record.ttl if ttl is None else min(ttl, record.ttl)
            elif record.rtype == RRSIG and (sig := records.signature(record)).type_covered == qtype:
                sigs.append(sig)
            else:
                return None
    except wire.WireError:
        return None
    if ttl is None or not sigs:
        return None
    return rdatas, ttl, sigs, answer


def _renamed(
    rrset: dns.rrset.RRset, owner: dns.name.Name, rdatas: Iterable[Rdata]
) -> dns.rrset.RRset:
    """`rdatas` of `rrset`'s type, TTL and class at another owner."""
    renamed = dns.rrset.RRset(owner, rrset.rdclass, rrset.rdtype, rrset.covers)
    for rdata in rdatas:
        renamed.add(rdata, rrset.ttl)
    return renamed


def _take(judged: _Judgement, zone: ZoneKeys) -> None:
    """An insecure, bogus or indeterminate zone decides the link."""
    judged.add(zone.security, ede=zone.ede, reason=zone.reason, zone=str(zone.zone),
               links=zone.links)  # fmt: skip
    if zone.security == Security.INSECURE:
        judged.expires(zone.expires)


def _signers(
    sigs: dns.rrset.RRset | None,
    owner: dns.name.Name,
    chain: KeyChain | None = None,
    now: float = 0.0,
) -> list[dns.name.Name]:
    """The signers of `sigs` that could sign at `owner` (the owner is in their zone), at most
    MAX_SIGNERS: those whose keys are known first (a junk RRSIG naming some deep signer must
    not cost a walk before the real one is tried), then the deepest."""
    found = {sig.signer for sig in sigs or () if owner.is_subdomain(sig.signer)}

    def rank(signer: dns.name.Name) -> tuple[bool, int]:
        known = chain is not None and chain.cached(signer, now) is not None
        return (not known, -len(signer))

    return sorted(found, key=rank)[:MAX_SIGNERS]


def _may_expand(rrset: dns.rrset.RRset) -> bool:
    """Whether this answer RRset may be a wildcard expansion (data, not keys or delegations)."""
    return rrset.rdtype not in NEVER_EXPANDED


def _keep_proof(
    judged: _Judgement, authority: list[dns.rrset.RRset], proofs: list[dns.rrset.RRset]
) -> None:
    for rrset in proofs:
        judged.keep(judged.authority, rrset, find_sigs(authority, rrset.name, rrset.rdtype))


def _denial_signer(authority: list[dns.rrset.RRset], sname: dns.name.Name) -> dns.name.Name | None:
    """The zone that signed the NSEC/NSEC3 records of a negative answer without a signed SOA."""
    for rrset in authority:
        if rrset.rdtype == RRSIG and rrset.covers in (dns.rdatatype.NSEC, dns.rdatatype.NSEC3):
            for signer in _signers(rrset, rrset.name):
                if sname.is_subdomain(signer):
                    return signer
    return None


def _redirection(
    answer: list[dns.rrset.RRset], sname: dns.name.Name, judged: _Judgement
) -> tuple[dns.rrset.RRset, dns.name.Name | None, dns.rrset.RRset | None] | None:
    """The CNAME or DNAME that leads on from sname, where to, and a DNAME's synthesized CNAME;
    None when nothing leads on.

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
        return dname, target, cname
    if cname is not None:
        return cname, _cname_target(cname), None
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


#: record types whose RDATA holds no domain name: a record of these types carries no
#: compression pointer past its owner name
_NAMELESS_RDATA = frozenset({1, 13, 16, 28, 43, 44, 48, 50, 51, 52, 257})
_RR_FIXED = struct.Struct("!HHIH")
_HEADER = struct.Struct("!HHHHHH")


def _name_segments(data: bytes, pos: int) -> tuple[bytes, int, int]:
    """The name at pos, lower-cased and uncompressed; where it ends in place; and the end of
    the furthest octet any pointer in it led to (0: none). WireError when malformed."""
    labels: list[bytes] = []
    end = 0
    reach = 0
    hops = 0
    while True:
        if pos >= len(data):
            raise wire.WireError("name runs past the end")
        length = data[pos]
        if length >= 0xC0:
            if pos + 2 > len(data) or hops > 64:
                raise wire.WireError("bad pointer")
            if not end:
                end = pos + 2
            pos = ((length & 0x3F) << 8) | data[pos + 1]
            if pos < wire.HEADER_LEN:
                # into the header, whose counts, ID and flags the copy rewrites: render instead
                raise wire.WireError("pointer into the header")
            hops += 1
            reach = max(reach, wire.skip_name(data, pos))
            continue
        if length > 63:
            raise wire.WireError("unknown label type")
        labels.append(data[pos : pos + 1 + length].lower())
        pos += 1 + length
        if length == 0:
            return b"".join(labels), end or pos, reach


#: (section, owner in canonical form, type, type covered, class) -> records still to copy
_Wanted = dict[tuple[int, bytes, int, int, int], int]


def render_wire(
    body: bytes, reply: dns.message.Message, verdict: Verdict, dnssec_records: bool
) -> bytes | None:
    """`render` by copying the kept records' octets out of the reply as received (`body`, the
    octets `reply` was parsed from), with no dnspython rendering; None when that cannot be
    done safely (a kept RRset that is not one of the reply's, a count that does not match, a
    compression pointer that would lead elsewhere once records before it are left out): the
    caller renders then. Records keep their order and TTLs as received."""
    if len(reply.question) != 1:
        return None
    qtype = reply.question[0].rdtype
    wanted: _Wanted | None = None
    if verdict.kept is not None:
        wanted = {}
        for index, (kept, received) in enumerate(
            ((verdict.kept[0], reply.answer), (verdict.kept[1], reply.authority))
        ):
            for rrset in kept:
                if not any(rrset is r for r in received):
                    return None  # made by the validator (a DNAME's CNAME): not in the octets
                if dnssec_records or rrset.rdtype not in DNSSEC_TYPES or rrset.rdtype == qtype:
                    name = rrset.name.to_digestable()
                    key = (index, name, rrset.rdtype, rrset.covers, rrset.rdclass)
                    wanted[key] = wanted.get(key, 0) + len(rrset)
    try:
        return _copy_records(body, wanted, dnssec_records, qtype)
    except (wire.WireError, struct.error, IndexError):
        return None


def _copy_records(
    body: bytes, wanted: _Wanted | None, dnssec_records: bool, qtype: int
) -> bytes | None:
    """The records `wanted` counts (section, owner, type, type covered, class), or with None every
    record but the DNSSEC ones a client without DO is not given; see render_wire."""
    msg_id, flags, qdcount, ancount, nscount, arcount = _HEADER.unpack_from(body)
    pos = wire.question_end(body)
    parts = [body[wire.HEADER_LEN : pos]]
    counts = [0, 0, 0]
    first_dropped = 0  # where the first record left out began (0: none yet)
    for index in range(ancount + nscount + arcount):
        section = 0 if index < ancount else 1 if index < ancount + nscount else 2
        start = pos
        owner, owner_end, reach = _name_segments(body, pos)
        rtype, rclass, _ttl, rdlength = _RR_FIXED.unpack_from(body, owner_end)
        pos = owner_end + 10 + rdlength
        if wanted is None:
            keep = dnssec_records or rtype not in DNSSEC_TYPES or rtype == qtype
        elif section == 2:
            keep = False
        else:
            covers = body[owner_end + 10] << 8 | body[owner_end + 11] if rtype == 46 else 0
            key = (section, owner, rtype, covers, rclass)
            keep = wanted.get(key, 0) > 0
            if keep:
                wanted[key] -= 1
        if not keep:
            first_dropped = first_dropped or start
            continue
        if first_dropped and (reach > first_dropped or rtype not in _NAMELESS_RDATA):
            return None  # a pointer into what moved or went
        parts.append(body[start:pos])
        counts[section] += 1
    if pos != len(body) or qdcount != 1 or (wanted is not None and any(wanted.values())):
        return None
    return _HEADER.pack(msg_id, flags, 1, *counts) + b"".join(parts)


def render(reply: dns.message.Message, verdict: Verdict, dnssec_records: bool) -> bytes:
    """The reply the client gets: only the records the verdict covers (RFC 4035 §3.2.3: nothing
    unvalidated rides along with AD, no additional section), and RRSIG, NSEC and NSEC3 records
    only for a client that set DO or asked for that type (RFC 4035 §3.2.1). A reply that was not
    examined is passed on whole, but for the DNSSEC records."""
    qtype = reply.question[0].rdtype if reply.question else 0
    out = dns.message.Message(reply.id)
    out.flags = reply.flags
    out.question = reply.question
    if verdict.kept is None:
        sections = (reply.answer, reply.authority, reply.additional)
    else:
        sections = (list(verdict.kept[0]), list(verdict.kept[1]), [])
    wanted = [
        [r for r in section if dnssec_records or r.rdtype not in DNSSEC_TYPES or r.rdtype == qtype]
        for section in sections
    ]
    out.answer, out.authority, out.additional = wanted
    return out.to_wire()
