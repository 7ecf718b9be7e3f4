"""The chain of trust: from a trust anchor down to a zone's authenticated DNSKEYs (RFC 4035 §5).

`KeyChain` asks for DS and DNSKEY records, never fetches them: its walks are generators (see
outcome.Step) that yield the questions they need and are sent the replies. A cold walk to a
signer asks the DS and DNSKEY of the next few names on the path in one round, in parallel (the
signer name says where the path ends; for most chains that is every question in one round); a
walk for unsigned data asks DS first and DNSKEY only where a DS is found; a warm walk asks nothing.
How far a walk may go, and how much each round asks, is bounded, as is every verification
(verify.Budget), so no reply can make one query cost without limit. Each zone's result is kept
until its records or signatures expire: secure zones with their keys, insecure delegations, and
bogus zones for a short while (so a broken zone is not asked about on every query).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TypeVar

import dns.message
import dns.name
import dns.rcode
import dns.rdataset
import dns.rdatatype
import dns.rrset
from dns.edns import EDECode
from dns.rdtypes.ANY.DNSKEY import DNSKEY
from dns.rdtypes.ANY.DS import DS
from dns.rdtypes.dnskeybase import Flag

from stubby_py.dnssec import denial
from stubby_py.dnssec.aggressive import DenialCache, Key, name_key
from stubby_py.dnssec.anchors import TrustAnchors
from stubby_py.dnssec.outcome import Answers, Link, Question, Security, Step
from stubby_py.dnssec.verify import (
    SUPPORTED_ALGORITHMS,
    VERIFIED,
    Budget,
    SignatureCheck,
    is_supported_ds,
    is_zone_key,
    keys_matching_ds,
    verify_rrset,
)

V = TypeVar("V")
#: (zone, its authenticated DNSKEY RRset, their RRSIGs, now)
AnchorObserver = Callable[[dns.name.Name, dns.rrset.RRset, dns.rrset.RRset | None, float], None]
DS_TYPE = dns.rdatatype.DS
DNSKEY_TYPE = dns.rdatatype.DNSKEY
#: how long a bogus zone is remembered (Unbound's val-bogus-ttl)
BOGUS_TTL = 60.0
#: results are kept at most this long, whatever the TTLs say
MAX_KEY_TTL = 86_400.0
#: zones and non-cuts remembered at most each; past it, the expired go, then the oldest quarter
MAX_ENTRIES = 20_000
#: names below the deepest known zone one walk may ask about: for unsigned data (DS questions
#: only; an ip6.arpa name has 34 labels), and towards a signer (DS and DNSKEY for each name)
MAX_WALK = 40
MAX_SIGNER_WALK = 24
#: questions one round of a walk asks at most
ROUND_QUESTIONS = 8


@dataclass(frozen=True, slots=True)
class ZoneKeys:
    """What the chain of trust says about a zone cut."""

    zone: dns.name.Name
    security: Security
    #: the authenticated zone keys (SECURE only)
    keys: tuple[DNSKEY, ...] = ()
    #: wall-clock time until which this may be reused
    expires: float = 0.0
    ede: int | None = None
    reason: str = ""
    #: the chain from the trust anchor down to this zone
    links: tuple[Link, ...] = ()


def find_rrset(
    section: Iterable[dns.rrset.RRset], name: dns.name.Name, rdtype: int
) -> dns.rrset.RRset | None:
    for rrset in section:
        if rrset.rdtype == rdtype and rrset.name == name:
            return rrset
    return None


def find_sigs(
    section: Iterable[dns.rrset.RRset], name: dns.name.Name, covered: int
) -> dns.rrset.RRset | None:
    for rrset in section:
        if rrset.rdtype == dns.rdatatype.RRSIG and rrset.covers == covered and rrset.name == name:
            return rrset
    return None


def signature_expiry(check: SignatureCheck, rrset: dns.rrset.RRset, now: float) -> float:
    """Until when a verified RRset may be trusted: its TTL (at most the signed original TTL) and
    the signature's expiration (RFC 4035 §5.3.3)."""
    ttl = float(rrset.ttl)
    if check.original_ttl is not None:
        ttl = min(ttl, check.original_ttl)
    until = now + ttl
    if check.expiration is not None:
        until = min(until, float(check.expiration))
    return until


def denial_records(
    section: Iterable[dns.rrset.RRset],
    zone: dns.name.Name,
    keys: Iterable[DNSKEY],
    now: float,
    skew: float,
    budget: Budget | None = None,
) -> tuple[list[dns.rrset.RRset], list[dns.rrset.RRset], float, SignatureCheck | None]:
    """The NSEC and NSEC3 RRsets of `zone` in a section, each verified with the zone's keys.

    Records not signed by `zone` (another zone's proof in the same reply, or unsigned ones) are
    left out: a proof that needs them then fails on its own. Returns (nsecs, nsec3s, until,
    failure): until is the earliest expiry among them; failure is the check of the first record
    signed by the zone that did not verify (then the answer is bogus).
    """
    nsecs: list[dns.rrset.RRset] = []
    nsec3s: list[dns.rrset.RRset] = []
    until = now + MAX_KEY_TTL
    section = list(section)
    keys = list(keys)
    for rrset in section:
        if rrset.rdtype not in (dns.rdatatype.NSEC, dns.rdatatype.NSEC3):
            continue
        if not rrset.name.is_subdomain(zone):
            continue
        sigs = find_sigs(section, rrset.name, rrset.rdtype)
        if sigs is None or all(sig.signer != zone for sig in sigs):
            continue
        check = verify_rrset(rrset, sigs, zone, keys, now, skew, budget=budget)
        if not check.ok:
            return [], [], now, check
        until = min(until, signature_expiry(check, rrset, now))
        (nsecs if rrset.rdtype == dns.rdatatype.NSEC else nsec3s).append(rrset)
    return nsecs, nsec3s, until, None


class KeyChain:
    def __init__(
        self,
        anchors: TrustAnchors,
        *,
        skew: float = 300.0,
        max_iterations: int = 150,
        bogus_ttl: float = BOGUS_TTL,
        on_anchor_keys: AnchorObserver | None = None,
    ) -> None:
        """on_anchor_keys: told of every DNSKEY RRset of an anchored zone authenticated
        through the anchors (RFC 5011 tracking); it may replace `anchors`."""
        self.anchors = anchors
        self.on_anchor_keys = on_anchor_keys
        #: bumped by flush(): a walk that began before (under other anchors, say) keeps nothing
        self.generation = 0
        self.skew = skew
        self.max_iterations = max_iterations
        self.bogus_ttl = bogus_ttl
        #: zone cuts by name: secure (with keys), insecure, bogus
        self._zones: dict[dns.name.Name, ZoneKeys] = {}
        #: the names of `_zones` (and of some zones since forgotten) by canonical key, for
        #: `known_insecure_wire`: a client's question looked up with no dnspython name built
        self._zone_names: dict[Key, dns.name.Name] = {}
        #: the trust anchors' zones by key, and the TrustAnchors they were made from
        self._anchor_key_set: tuple[TrustAnchors | None, frozenset[Key]] = (None, frozenset())
        #: names proven not to be zone cuts, until when
        self._not_cuts: dict[dns.name.Name, float] = {}
        #: NSEC/NSEC3 records of secure proofs, for answers proven from them (RFC 8198)
        self.denials = DenialCache()

    def __len__(self) -> int:
        return len(self._zones)

    def flush(self) -> None:
        """Forget everything; walks under way then remember nothing of what they found."""
        self._zones.clear()
        self._zone_names.clear()
        self._not_cuts.clear()
        self.denials.flush()
        VERIFIED.clear()
        self.generation += 1

    def known_insecure(self, name: dns.name.Name, now: float) -> ZoneKeys | None:
        """The remembered insecure delegation `name` is at or below, when the deepest zone the
        key cache knows on its path (below the nearest trust anchor) is one; else None."""
        anchor = self.anchors.closest(name)
        if anchor is None:
            return None
        zones = self._zones
        for depth in range(len(name), len(anchor) - 1, -1):  # the deepest first
            entry = zones.get(name.split(depth)[1])
            if entry is not None and entry.expires > now:
                return entry if entry.security == Security.INSECURE else None
        return None

    def known_insecure_wire(self, qname_key: Key, now: float) -> ZoneKeys | None:
        """`known_insecure` for a name given as its canonical key (`aggressive.wire_key` of a
        client's question): the unsigned short path, with no dnspython name built."""
        entry = self.deepest_known(qname_key, now)
        return entry if entry is not None and entry.security == Security.INSECURE else None

    def deepest_known(self, qname_key: Key, now: float) -> ZoneKeys | None:
        """The deepest zone the key cache knows (unexpired) at or above the name given as its
        canonical key, from the nearest trust anchor down; None when it knows none."""
        anchors, anchor_keys = self._anchor_key_set
        if anchors is not self.anchors:
            anchor_keys = frozenset(name_key(zone) for zone in self.anchors.zones)
            self._anchor_key_set = (self.anchors, anchor_keys)
        depth = len(qname_key)
        while depth and qname_key[:depth] not in anchor_keys:
            depth -= 1
        if not depth:
            return None  # no anchor above it
        names, zones = self._zone_names, self._zones
        for cut in range(len(qname_key), depth - 1, -1):  # the deepest first
            name = names.get(qname_key[:cut])
            entry = zones.get(name) if name is not None else None
            if entry is not None and entry.expires > now:
                return entry
        return None

    def refresh_anchor(self, zone: dns.name.Name, now: float) -> Step[ZoneKeys]:
        """Fetch and authenticate an anchored zone's DNSKEY RRset afresh (RFC 5011 §2.3 active
        refresh; the on_anchor_keys hook hears it); kept only when secure, so a failed refresh
        leaves what is known as it was."""
        generation = self.generation
        answers = yield [(zone, DNSKEY_TYPE)]
        result = self._anchor_keys(zone, answers.get((zone, DNSKEY_TYPE)), now, Budget())
        if result.security == Security.SECURE:
            self._remember(result, now, generation)
        return result

    def forget(self, zone: dns.name.Name) -> None:
        """Forget what is known of `zone` (its keys are fetched and checked again when needed)."""
        self._zones.pop(zone, None)

    def forget_bogus(self, zone: dns.name.Name) -> None:
        """Forget that `zone` was found bogus: the next walk asks again (another upstream)."""
        entry = self._zones.get(zone)
        if entry is not None and entry.security == Security.BOGUS:
            del self._zones[zone]

    @property
    def not_cuts(self) -> int:
        return len(self._not_cuts)

    def cached(self, zone: dns.name.Name, now: float) -> ZoneKeys | None:
        entry = self._zones.get(zone)
        if entry is None or entry.expires <= now:
            return None
        return entry

    # -- the two walks ------------------------------------------------------------------------
    def keys_for(
        self, signer: dns.name.Name, now: float, budget: Budget | None = None
    ) -> Step[ZoneKeys]:
        """The authenticated keys of `signer` (the signer name of an RRSIG), or why there are none.

        INSECURE when an insecure delegation lies above it (its signatures mean nothing then);
        BOGUS when the chain is broken or `signer` is not a zone cut at all.
        """
        known = self.cached(signer, now)
        if known is not None:
            return known  # the warm path: one dict lookup
        result = yield from self._walk(signer, now, budget or Budget(), speculative=True)
        if result.security == Security.SECURE and result.zone != signer:
            return ZoneKeys(
                signer,
                Security.BOGUS,
                expires=now + self.bogus_ttl,
                ede=EDECode.DNSSEC_BOGUS,
                reason=f"signer {signer} is not a zone (no DS and no delegation there)",
                links=result.links,
            )
        return result

    def zone_of(
        self, name: dns.name.Name, now: float, budget: Budget | None = None
    ) -> Step[ZoneKeys]:
        """The deepest zone cut at or above `name`, walking down from the trust anchor: used for
        unsigned data, which is fine below an insecure delegation and bogus in a secure zone."""
        return (yield from self._walk(name, now, budget or Budget(), speculative=False))

    def _walk(
        self, target: dns.name.Name, now: float, budget: Budget, *, speculative: bool
    ) -> Step[ZoneKeys]:
        """Down the path from the trust anchor to `target`, ROUND_QUESTIONS a round at most.
        speculative: ask each name's DNSKEY with its DS (a signer walk: most names are cuts)."""
        anchor_zone = self.anchors.closest(target)
        if anchor_zone is None:
            return ZoneKeys(
                target,
                Security.INSECURE,
                expires=now + MAX_KEY_TTL,
                reason=f"no trust anchor at or above {target}",
            )
        generation = self.generation
        path = [target.split(depth)[1] for depth in range(len(anchor_zone), len(target) + 1)]
        current, below = self._known_part(path, now)
        if current is not None and current.security != Security.SECURE:
            return current
        limit = MAX_SIGNER_WALK if speculative else MAX_WALK
        below, beyond = below[:limit], below[limit:]
        while True:
            per_name = 2 if speculative else 1
            size = (ROUND_QUESTIONS - (current is None)) // per_name
            batch, below = below[:size], below[size:]
            answers = yield from _ask(anchor_zone if current is None else None, batch, speculative)
            if current is None:
                reply = answers.get((anchor_zone, DNSKEY_TYPE))
                current = self._anchor_keys(anchor_zone, reply, now, budget)
                self._remember(current, now, generation)
                if current.security != Security.SECURE:
                    return current
            current = yield from self._descend_batch(
                current, batch, answers, now, budget, generation
            )
            if current.security != Security.SECURE:
                return current
            if not below:
                break
        if beyond:
            # still secure this far down, and no further: a proof of a cut would be needed
            why = f"more than {limit} labels below the nearest zone known"
            return self._indeterminate(target, why, current.links, EDECode.DNSSEC_INDETERMINATE)
        return current

    def _descend_batch(
        self,
        current: ZoneKeys,
        batch: list[dns.name.Name],
        answers: Answers,
        now: float,
        budget: Budget,
        generation: int,
    ) -> Step[ZoneKeys]:
        """Down through one round's names; the deepest zone reached (or the first not secure)."""
        for name in batch:
            ds_reply = answers.get((name, DS_TYPE))
            if (name, DNSKEY_TYPE) not in answers and _has_ds(ds_reply, name):
                answers.update((yield [(name, DNSKEY_TYPE)]))
            dnskey_reply = answers.get((name, DNSKEY_TYPE))
            child = self._descend(current, name, ds_reply, dnskey_reply, now, budget, generation)
            if child is None:
                continue
            self._remember(child, now, generation)
            current = child
            if current.security != Security.SECURE:
                break
        return current

    def _known_part(
        self, path: list[dns.name.Name], now: float
    ) -> tuple[ZoneKeys | None, list[dns.name.Name]]:
        """The deepest zone on the path (anchor first) whose result is kept, and the names below
        it still to be asked about (those known not to be zone cuts left out)."""
        start = 0
        current = None
        for index in range(len(path) - 1, -1, -1):
            current = self.cached(path[index], now)
            if current is not None:
                start = index
                break
        below = [n for n in path[start + 1 :] if self._not_cuts.get(n, 0.0) <= now]
        return current, below

    # -- one zone at a time ---------------------------------------------------------------------
    def _anchor_keys(
        self, zone: dns.name.Name, reply: dns.message.Message | None, now: float, budget: Budget
    ) -> ZoneKeys:
        """RFC 4035 §5: the anchored zone's DNSKEY RRset, signed by a key the anchor vouches for."""
        anchor = self.anchors.get(zone)
        assert anchor is not None
        usable = [ds for ds in anchor.ds if is_supported_ds(ds)]
        if not anchor.is_usable:
            why = "the trust anchor names no supported algorithm"
            return self._insecure(zone, now + MAX_KEY_TTL, why, ())
        found = self._dnskeys(zone, reply, (), now)
        if isinstance(found, ZoneKeys):
            return found
        keys, rrset, sigs = found
        vouched = keys_matching_ds(zone, keys, usable)
        vouched += [key for key in keys if key in anchor.dnskeys and key not in vouched]
        until = now + MAX_KEY_TTL
        result = self._authenticate(
            zone, keys, vouched, rrset, sigs, until, "trust anchor", (), now, budget
        )
        if result.security == Security.SECURE and self.on_anchor_keys is not None:
            self.on_anchor_keys(zone, rrset, sigs, now)
        return result

    def _descend(
        self,
        parent: ZoneKeys,
        name: dns.name.Name,
        ds_reply: dns.message.Message | None,
        dnskey_reply: dns.message.Message | None,
        now: float,
        budget: Budget,
        generation: int,
    ) -> ZoneKeys | None:
        """What the DS reply for `name` (below parent's zone) says: a secure cut (with its keys),
        an insecure or bogus one, or None when `name` is not a cut at all."""
        links = parent.links
        if ds_reply is None:
            return self._indeterminate(name, f"no reply to {name} DS", links)
        rcode = ds_reply.rcode()
        if rcode not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
            text = f"{name} DS: upstream said {dns.rcode.to_text(rcode)}"
            return self._indeterminate(name, text, links)
        ds_rrset = find_rrset(ds_reply.answer, name, DS_TYPE)
        if ds_rrset is not None:
            sigs = find_sigs(ds_reply.answer, name, DS_TYPE)
            return self._secure_cut(parent, name, ds_rrset, sigs, dnskey_reply, now, budget)
        return self._no_ds(parent, name, ds_reply, now, budget, generation)

    def _secure_cut(
        self,
        parent: ZoneKeys,
        name: dns.name.Name,
        ds_rrset: dns.rrset.RRset,
        sigs: dns.rrset.RRset | None,
        dnskey_reply: dns.message.Message | None,
        now: float,
        budget: Budget,
    ) -> ZoneKeys:
        """A signed DS RRset for `name`: its keys, if the DS vouches for them."""
        links = parent.links
        check = verify_rrset(
            ds_rrset, sigs, parent.zone, parent.keys, now, self.skew, budget=budget
        )
        if not check.ok:
            return self._failed(name, check, f"DS: {check.reason}", links, now)
        until = signature_expiry(check, ds_rrset, now)
        ds_set = [ds for ds in ds_rrset if isinstance(ds, DS)]
        usable = [ds for ds in ds_set if is_supported_ds(ds)]
        if not usable:
            # RFC 4035 §5.2, RFC 6840 §5.2: a DS we cannot use is as good as none
            kinds = ", ".join(f"alg {ds.algorithm}/digest {ds.digest_type}" for ds in ds_set)
            # RFC 8914 §4.2/4.3: say why (an algorithm we know of, then a digest we do not)
            known_algorithm = any(ds.algorithm in SUPPORTED_ALGORITHMS for ds in ds_set)
            ede = (
                EDECode.UNSUPPORTED_DS_DIGEST_TYPE
                if known_algorithm
                else EDECode.UNSUPPORTED_DNSKEY_ALGORITHM
            )
            why = f"DS names only unsupported {kinds}"
            return self._insecure(name, until, why, links, ede)
        found = self._dnskeys(name, dnskey_reply, links, now)
        if isinstance(found, ZoneKeys):
            return found
        keys, rrset, key_sigs = found
        vouched = keys_matching_ds(name, keys, usable)
        return self._authenticate(
            name, keys, vouched, rrset, key_sigs, until, "DS", links, now, budget
        )

    def _no_ds(
        self,
        parent: ZoneKeys,
        name: dns.name.Name,
        ds_reply: dns.message.Message,
        now: float,
        budget: Budget,
        generation: int,
    ) -> ZoneKeys | None:
        """No DS for `name`: proven absent at an insecure delegation, or not a cut at all (None),
        or unproven (bogus)."""
        zone = parent.zone
        links = parent.links
        rcode = ds_reply.rcode()
        nsecs, nsec3s, until, failure = denial_records(
            ds_reply.authority, zone, parent.keys, now, self.skew, budget
        )
        if failure is not None:
            return self._failed(name, failure, f"no DS: {failure.reason}", links, now)
        if rcode == dns.rcode.NXDOMAIN:
            proof = denial.prove_nxdomain(name, zone, nsecs, nsec3s, self.max_iterations)
            outcome, delegation, why = proof.outcome, False, proof.reason
        else:
            absence = denial.prove_no_ds(name, zone, nsecs, nsec3s, self.max_iterations)
            outcome, delegation, why = absence.outcome, absence.delegation, absence.reason
        if outcome == denial.Denial.PROVEN:
            if delegation:
                return self._insecure(name, until, "no DS: insecure delegation", links)
            if generation == self.generation:
                self._not_cuts[name] = until
            _trim(self._not_cuts, now, lambda until: until)
            return None
        if outcome == denial.Denial.OPT_OUT:
            return self._insecure(name, until, "no DS: in an NSEC3 opt-out span", links)
        if outcome == denial.Denial.INSECURE:
            return self._insecure(name, until, f"no DS: {why}", links)
        why = f"no proof that {name} has no DS ({why})"
        return self._bogus(name, EDECode.NSEC_MISSING, why, links, now)

    def _dnskeys(
        self,
        zone: dns.name.Name,
        reply: dns.message.Message | None,
        links: tuple[Link, ...],
        now: float,
    ) -> tuple[list[DNSKEY], dns.rrset.RRset, dns.rrset.RRset | None] | ZoneKeys:
        """The zone's DNSKEY RRset and its RRSIGs from the reply, or why there are none."""
        if reply is None:
            why = f"no reply to {zone} DNSKEY"
            return self._indeterminate(zone, why, links, EDECode.DNSKEY_MISSING)
        rcode = reply.rcode()
        if rcode not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
            # a failure to fetch, not a proof of anything: not remembered
            why = f"{zone} DNSKEY: upstream said {dns.rcode.to_text(rcode)}"
            return self._indeterminate(zone, why, links, EDECode.DNSKEY_MISSING)
        rrset = find_rrset(reply.answer, zone, DNSKEY_TYPE)
        if rrset is None:
            why = f"no DNSKEY RRset for {zone} ({dns.rcode.to_text(rcode)})"
            return self._bogus(zone, EDECode.DNSKEY_MISSING, why, links, now)
        keys = [key for key in rrset if isinstance(key, DNSKEY)]
        return keys, rrset, find_sigs(reply.answer, zone, DNSKEY_TYPE)

    def _authenticate(
        self,
        zone: dns.name.Name,
        keys: list[DNSKEY],
        vouched: list[DNSKEY],
        rrset: dns.rrset.RRset,
        sigs: dns.rrset.RRset | None,
        until: float,
        vouched_by: str,
        links: tuple[Link, ...],
        now: float,
        budget: Budget,
    ) -> ZoneKeys:
        """RFC 4035 §5.2: the DNSKEY RRset is signed by a key its DS (or anchor) vouches for."""
        if not vouched:
            why = f"no DNSKEY of {zone} matches its {vouched_by}"
            return self._bogus(zone, EDECode.DNSKEY_MISSING, why, links, now)
        check = verify_rrset(rrset, sigs, zone, vouched, now, self.skew, budget=budget)
        if not check.ok:
            ede = check.ede
            if ede == EDECode.RRSIGS_MISSING:
                ede = EDECode.DNSKEY_MISSING  # no signature by a key the parent vouches for
            return self._failed(zone, check, f"DNSKEY: {check.reason}", links, now, ede)
        until = min(until, signature_expiry(check, rrset, now), now + MAX_KEY_TTL)
        tags = " ".join(f"{key.key_id()}/alg {key.algorithm}" for key in vouched)
        link = Link(str(zone), Security.SECURE, f"{vouched_by} → DNSKEY {tags}")
        usable = tuple(key for key in keys if is_zone_key(key) and not key.flags & Flag.REVOKE)
        return ZoneKeys(zone, Security.SECURE, usable, until, links=(*links, link))

    # -- results --------------------------------------------------------------------------------
    def _insecure(
        self,
        zone: dns.name.Name,
        until: float,
        why: str,
        links: tuple[Link, ...],
        ede: int | None = None,
    ) -> ZoneKeys:
        """ede: an informational Extended DNS Error (1 or 2: why it is insecure)."""
        link = Link(str(zone), Security.INSECURE, why)
        return ZoneKeys(
            zone, Security.INSECURE, expires=until, ede=ede, reason=why, links=(*links, link)
        )

    def _bogus(
        self,
        zone: dns.name.Name,
        ede: int | None,
        why: str,
        links: tuple[Link, ...],
        now: float,
    ) -> ZoneKeys:
        link = Link(str(zone), Security.BOGUS, why)
        return ZoneKeys(
            zone,
            Security.BOGUS,
            expires=now + self.bogus_ttl,
            ede=ede if ede is not None else EDECode.DNSSEC_BOGUS,
            reason=why,
            links=(*links, link),
        )

    def _indeterminate(
        self,
        zone: dns.name.Name,
        why: str,
        links: tuple[Link, ...],
        ede: int = EDECode.NO_REACHABLE_AUTHORITY,
    ) -> ZoneKeys:
        """Not known: a DS or DNSKEY could not be fetched (EDE 22 unless told), or a limit was
        reached (EDE 5 DNSSEC Indeterminate). Never remembered."""
        link = Link(str(zone), Security.INDETERMINATE, why)
        return ZoneKeys(zone, Security.INDETERMINATE, ede=ede, reason=why, links=(*links, link))

    def _failed(
        self,
        zone: dns.name.Name,
        check: SignatureCheck,
        why: str,
        links: tuple[Link, ...],
        now: float,
        ede: int | None = None,
    ) -> ZoneKeys:
        """A check that failed: bogus, or (out of budget: the query's, not the zone's fault)
        indeterminate, which is never remembered for other queries."""
        if check.over_budget:
            return self._indeterminate(zone, why, links, EDECode.DNSSEC_INDETERMINATE)
        return self._bogus(zone, ede if ede is not None else check.ede, why, links, now)

    def _remember(self, entry: ZoneKeys, now: float, generation: int) -> None:
        if entry.security == Security.INDETERMINATE or entry.expires <= now:
            return
        if generation != self.generation:
            return  # found under what flush() has since thrown away
        self._zones[entry.zone] = entry
        self._zone_names[name_key(entry.zone)] = entry.zone
        anchored = self.anchors.zones
        _trim(self._zones, now, lambda kept: kept.expires, keep=anchored)
        if len(self._zone_names) > 2 * len(self._zones) + 64:  # names of forgotten zones
            self._zone_names = {name_key(zone): zone for zone in self._zones}


def _ask(
    anchor_zone: dns.name.Name | None, batch: list[dns.name.Name], speculative: bool
) -> Step[Answers]:
    """One round of a walk's questions: the anchored zone's DNSKEY (when not known yet), each
    name's DS, and (speculative) each name's DNSKEY."""
    questions: list[Question] = []
    if anchor_zone is not None:
        questions.append((anchor_zone, DNSKEY_TYPE))
    for name in batch:
        questions.append((name, DS_TYPE))
        if speculative:
            questions.append((name, DNSKEY_TYPE))
    if not questions:
        return {}
    return (yield questions)


def _has_ds(reply: dns.message.Message | None, name: dns.name.Name) -> bool:
    return reply is not None and find_rrset(reply.answer, name, DS_TYPE) is not None


def _trim(
    entries: dict[dns.name.Name, V],
    now: float,
    expiry: Callable[[V], float],
    keep: Iterable[dns.name.Name] = (),
) -> None:
    """Bound a remembered map: past MAX_ENTRIES drop what has expired, then the oldest quarter
    (insertion order), never the names in `keep` (the trust anchors' zones)."""
    if len(entries) <= MAX_ENTRIES:
        return
    kept = set(keep)
    for name in [n for n, value in entries.items() if expiry(value) <= now and n not in kept]:
        del entries[name]
    if len(entries) > MAX_ENTRIES:
        oldest = [n for n in entries if n not in kept][: len(entries) // 4]
        for name in oldest:
            del entries[name]
