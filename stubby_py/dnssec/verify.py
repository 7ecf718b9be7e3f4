"""RRSIG verification (RFC 4035 §5.3) with a reason for every failure.

primitives.py does the cryptography and the canonical form; this module decides which signatures
may speak for an RRset, applies the clock with a skew allowance, and says why nothing verified in
the Extended DNS Error vocabulary (RFC 8914) the client will see.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import dns.exception
import dns.name
import dns.rdataset
import dns.rdatatype
import dns.rrset
from cryptography.exceptions import UnsupportedAlgorithm
from dns.edns import EDECode
from dns.rdtypes.ANY.DNSKEY import DNSKEY
from dns.rdtypes.ANY.DS import DS
from dns.rdtypes.ANY.RRSIG import RRSIG
from dns.rdtypes.dnskeybase import Flag

from stubby_py.core.wire import WireError, rdtype_text
from stubby_py.dnssec import primitives, records

#: RFC 8624 §3.1 algorithms we validate: RSASHA256, RSASHA512, ECDSA P-256/P-384, Ed25519, Ed448
#: (those primitives.py makes public keys for)
SUPPORTED_ALGORITHMS = primitives.ALGORITHMS
#: RFC 8624 §3.3 DS digest types we validate: SHA-256, SHA-384
SUPPORTED_DIGESTS = frozenset({2, 4})
DNSKEY_PROTOCOL = 3


@dataclass(frozen=True, slots=True)
class SignatureCheck:
    """What verifying one RRset came to."""

    ok: bool
    #: the Extended DNS Error for a failure (None when ok)
    ede: int | None
    reason: str
    #: of the signature that verified: when it expires (POSIX seconds), its original TTL, and
    #: how many labels its owner had before any wildcard expansion (RFC 4034 §3.1.3)
    expiration: int | None = None
    original_ttl: int | None = None
    labels: int | None = None
    #: when that signature's validity began (POSIX seconds): which of two RRsets is newer
    inception: int | None = None
    #: failed for want of budget (KeyTrap limits), not for a signature proven wrong: a result
    #: that says nothing about the zone for other queries
    over_budget: bool = False


def is_zone_key(key: DNSKEY) -> bool:
    return bool(key.flags & Flag.ZONE) and key.protocol == DNSKEY_PROTOCOL


class _SignatureFields(Protocol):
    """What judging one RRSIG reads: dnspython's RRSIG, or records.Signature (the fast path)."""

    @property
    def algorithm(self) -> int: ...
    @property
    def key_tag(self) -> int: ...
    @property
    def type_covered(self) -> int: ...
    @property
    def labels(self) -> int: ...
    @property
    def original_ttl(self) -> int: ...
    @property
    def expiration(self) -> int: ...
    @property
    def inception(self) -> int: ...
    @property
    def signature(self) -> bytes: ...


@dataclass(slots=True)
class _KeyFacts:
    """What verification needs of one DNSKEY, worked out once: its tag, its canonical RDATA (a
    part of every verified-signature digest), and its public key object (built on first use:
    building one costs as much as a verification)."""

    key: DNSKEY
    tag: int
    wire: bytes
    public: Any = None


#: facts by id() of the DNSKEY; the entry holds the key, so the id cannot be reused meanwhile
_KEY_FACTS: dict[int, _KeyFacts] = {}
_MAX_KEY_FACTS = 2048


def _facts(key: DNSKEY) -> _KeyFacts:
    facts = _KEY_FACTS.get(id(key))
    if facts is None or facts.key is not key:
        if len(_KEY_FACTS) >= _MAX_KEY_FACTS:
            _KEY_FACTS.clear()
        facts = _KeyFacts(key, key.key_id(), key.to_digestable())
        _KEY_FACTS[id(key)] = facts
    return facts


def _candidate_keys(keys: Iterable[DNSKEY], rrsig: _SignatureFields) -> list[_KeyFacts]:
    """Keys that could have made `rrsig`: same tag and algorithm, zone keys, and not revoked
    unless the signature covers the DNSKEY RRset itself (RFC 5011 §2.1)."""
    candidates = []
    for key in keys:
        if (
            key.algorithm == rrsig.algorithm
            and is_zone_key(key)
            and (not key.flags & Flag.REVOKE or rrsig.type_covered == dns.rdatatype.DNSKEY)
        ):
            facts = _facts(key)
            if facts.tag == rrsig.key_tag:
                candidates.append(facts)
    return candidates


def _speaks_for(
    rrsig: RRSIG, rrset: dns.rrset.RRset, zone: dns.name.Name, expanded_ok: bool
) -> bool:
    """RFC 4035 §5.3.1: signer is the zone, the owner is in it, the type and class match, and the
    labels field is no more than the owner's label count. Fewer labels means the RRset was
    expanded from a wildcard: only answer data may be; a proof (NSEC, NSEC3, SOA) or a key or
    delegation record (DNSKEY, DS) copied to another owner that way proves nothing."""
    owner_labels = len(rrset.name) - 1 - int(rrset.name.is_wild())
    return (
        rrsig.signer == zone
        and rrset.name.is_subdomain(zone)
        and rrsig.type_covered == rrset.rdtype
        and rrsig.rdclass == rrset.rdclass
        and (rrsig.labels == owner_labels or (expanded_ok and rrsig.labels < owner_labels))
    )


# Failures from least to most telling: when every signature fails, the client hears the most
# specific reason (a bad signature says more than a missing key).
_RANK = {
    EDECode.RRSIGS_MISSING: 0,
    EDECode.UNSUPPORTED_DNSKEY_ALGORITHM: 1,
    EDECode.DNSKEY_MISSING: 2,
    EDECode.SIGNATURE_NOT_YET_VALID: 3,
    EDECode.SIGNATURE_EXPIRED: 4,
    EDECode.DNSSEC_BOGUS: 5,
}


class Budget:
    """How many signature verifications one client query may cost, all zones together.

    KeyTrap (CVE-2023-50387): a zone can publish many keys sharing a key tag and many signatures
    for each RRset, making a validator that tries every pair spend seconds per answer. We try at
    most MAX_KEYS_PER_SIGNATURE keys per signature, MAX_SIGNATURES_PER_RRSET signatures per
    RRset, and MAX_VERIFICATIONS verifications per query; past that the answer is bogus.
    """

    MAX_VERIFICATIONS = 64
    MAX_SIGNATURES_PER_RRSET = 8
    MAX_KEYS_PER_SIGNATURE = 4

    __slots__ = ("spent",)

    def __init__(self) -> None:
        self.spent = 0

    def spend(self) -> bool:
        """Count one verification; False when there is no budget left for it."""
        if self.spent >= self.MAX_VERIFICATIONS:
            return False
        self.spent += 1
        return True


_OVER_BUDGET = "too many signatures or keys to try (limit against KeyTrap, CVE-2023-50387)"


def verify_rrset(
    rrset: dns.rrset.RRset,
    rrsigs: dns.rdataset.Rdataset | None,
    zone: dns.name.Name,
    keys: Iterable[DNSKEY],
    now: float,
    skew: float = 300.0,
    *,
    budget: Budget | None = None,
    expanded_ok: bool = False,
) -> SignatureCheck:
    """Does any RRSIG in `rrsigs` by `zone`, made with one of `keys`, verify `rrset` at `now`?

    skew: seconds a signature may be past its expiration or before its inception and still
    count, for clocks that are a little off (Unbound's val-sig-skew). expanded_ok: the RRset may
    be a wildcard expansion (answer data only). budget: the query's verification budget.
    """
    speaking = [
        rrsig
        for rrsig in rrsigs or ()
        if isinstance(rrsig, RRSIG) and _speaks_for(rrsig, rrset, zone, expanded_ok)
    ]

    def signed_data(rrsig: RRSIG) -> bytes:
        return primitives.signed_data(rrset, rrsig)

    def what() -> str:
        return f"{rrset.name} {dns.rdatatype.to_text(rrset.rdtype)}"

    return _first_verified(speaking, signed_data, what, zone, keys, now, skew, budget)


def verify_signed(
    owner: bytes,
    rtype: int,
    rclass: int,
    rdatas: list[bytes],
    sigs: Iterable[records.Signature],
    zone: dns.name.Name,
    keys: Iterable[DNSKEY],
    now: float,
    skew: float = 300.0,
    *,
    budget: Budget | None = None,
) -> SignatureCheck:
    """`verify_rrset` for an RRset read from a reply's octets (records.py): the records'
    canonical RDATA at the canonical `owner`, and the RRSIGs found with them. A signature that
    stands for a wildcard expansion does not speak for it here (the caller proves expansions)."""
    zone_wire = zone.to_digestable()
    owner_labels = records.label_count(owner) - int(owner.startswith(b"\x01*"))
    speaking = [
        sig
        for sig in sigs
        if sig.signer == zone_wire
        and sig.owner == owner
        and sig.type_covered == rtype
        and sig.rclass == rclass
        and sig.labels == owner_labels
        and records.is_subdomain(owner, zone_wire)
    ]

    def signed_data(sig: records.Signature) -> bytes:
        return records.signed_data(sig, owner, rtype, rclass, rdatas)

    def what() -> str:
        return f"{dns.name.from_wire(owner, 0)[0]} {rdtype_text(rtype)}"

    return _first_verified(speaking, signed_data, what, zone, keys, now, skew, budget)


S = TypeVar("S", bound=_SignatureFields)


def _first_verified(
    sigs: list[S],
    signed_data: Callable[[S], bytes],
    what: Callable[[], str],
    zone: dns.name.Name,
    keys: Iterable[DNSKEY],
    now: float,
    skew: float,
    budget: Budget | None,
) -> SignatureCheck:
    """The first of `sigs` (each one that speaks for the RRset `what()` names) that verifies,
    or the most telling reason none did."""
    keys = list(keys)
    budget = budget if budget is not None else Budget()
    worst: tuple[int, str] = (EDECode.RRSIGS_MISSING, "")
    for tried, rrsig in enumerate(sigs):
        if tried >= Budget.MAX_SIGNATURES_PER_RRSET:
            worst = (EDECode.DNSSEC_BOGUS, _OVER_BUDGET)
            break
        failure = _check_one(rrsig, signed_data, zone, keys, now, skew, budget)
        if failure is None:
            return SignatureCheck(
                True, None, "", rrsig.expiration, rrsig.original_ttl, rrsig.labels, rrsig.inception
            )
        if failure[1] == _OVER_BUDGET or _RANK[EDECode(failure[0])] > _RANK[EDECode(worst[0])]:
            worst = failure
        if failure[1] == _OVER_BUDGET:
            break
    over = worst[1] == _OVER_BUDGET
    reason = worst[1] or f"no RRSIG by {zone} for {what()}"
    return SignatureCheck(False, worst[0], f"{what()}: {reason}", over_budget=over)


def _check_one(
    rrsig: S,
    signed_data: Callable[[S], bytes],
    zone: dns.name.Name,
    keys: list[DNSKEY],
    now: float,
    skew: float,
    budget: Budget,
) -> tuple[int, str] | None:
    """None when `rrsig` verifies the data it signs; else (EDE code, reason)."""
    if rrsig.algorithm not in SUPPORTED_ALGORITHMS:
        return EDECode.UNSUPPORTED_DNSKEY_ALGORITHM, f"algorithm {rrsig.algorithm} unsupported"
    candidates = _candidate_keys(keys, rrsig)
    if not candidates:
        return EDECode.DNSKEY_MISSING, (
            f"no DNSKEY of {zone} with tag {rrsig.key_tag} algorithm {rrsig.algorithm}"
        )
    if now > rrsig.expiration + skew:
        return EDECode.SIGNATURE_EXPIRED, f"signature expired {_when(rrsig.expiration)}"
    if now < rrsig.inception - skew:
        return EDECode.SIGNATURE_NOT_YET_VALID, (
            f"signature not valid before {_when(rrsig.inception)}"
        )
    try:
        data = signed_data(rrsig)
    except (dns.exception.DNSException, WireError) as exc:
        return EDECode.DNSSEC_BOGUS, f"signature by key {rrsig.key_tag} unusable ({exc})"
    verified = _verified_by_one(rrsig.signature, data, candidates, budget)
    if verified is None:
        return EDECode.DNSSEC_BOGUS, _OVER_BUDGET
    if verified:
        return None
    if len(candidates) > Budget.MAX_KEYS_PER_SIGNATURE:
        return EDECode.DNSSEC_BOGUS, _OVER_BUDGET
    return EDECode.DNSSEC_BOGUS, f"signature by key {rrsig.key_tag} does not verify"


class VerifiedSignatures:
    """Signatures that verified, so that the same signed data is never verified twice.

    An entry is a digest of the exact signed data (RFC 4034 §3.1.8.1: the RRSIG's fields, its
    signer and the RRset in canonical form, a wildcard owner as signed), the signature and the
    DNSKEY that verified it. The cache only answers "this key made this signature over this
    data": a changed record changes the data and misses; a key is asked about only when the
    caller still trusts it (a rolled, revoked or flushed key is never offered); the clock is
    checked against the RRSIG's validity before the cache is looked at. Bounded, with
    second-chance (CLOCK) eviction: an entry used since it was last passed over is spared once.
    """

    __slots__ = ("_entries", "hits", "limit")

    def __init__(self, limit: int = 4096) -> None:
        self.limit = limit
        #: digest -> visited since the hand passed; insertion order is the SIEVE queue
        self._entries: dict[bytes, bool] = {}
        self.hits = 0

    def __contains__(self, proof: bytes) -> bool:
        return proof in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def hit(self, proof: bytes) -> None:
        self.hits += 1
        self._entries[proof] = True

    def add(self, proof: bytes) -> None:
        entries = self._entries
        if len(entries) >= self.limit:
            self._evict()
        entries[proof] = False

    def _evict(self) -> None:
        """From the oldest on, used entries go to the back (their bit cleared) until an unused
        one is found and dropped."""
        entries = self._entries
        for _ in range(len(entries) + 1):
            oldest = next(iter(entries))
            visited = entries.pop(oldest)
            if not visited:
                return
            entries[oldest] = False

    def clear(self) -> None:
        self._entries.clear()


#: the process's verified signatures (flushed with the key cache, KeyChain.flush)
VERIFIED = VerifiedSignatures()


def _proof_key(data: bytes, signature: bytes, key: _KeyFacts) -> bytes:
    parts = (len(data), len(signature), data, signature, key.wire)
    return hashlib.sha256(b"%d:%d:%b%b%b" % parts).digest()


def _verified_by_one(
    signature: bytes, data: bytes, candidates: list[_KeyFacts], budget: Budget
) -> bool | None:
    """Whether one of the first MAX_KEYS_PER_SIGNATURE candidates made the signature over the
    data (remembered, or verified now); None when the budget ran out first."""
    for key in candidates[: Budget.MAX_KEYS_PER_SIGNATURE]:
        proof = _proof_key(data, signature, key)
        if proof in VERIFIED:
            VERIFIED.hit(proof)
            return True
        if not budget.spend():
            return None
        if _verifies(signature, data, key):
            VERIFIED.add(proof)
            return True
    return False


#: a DNSKEY whose public key cannot be built (not a usable key of its algorithm)
_UNUSABLE = object()


def _verifies(signature: bytes, data: bytes, facts: _KeyFacts) -> bool:
    public = facts.public
    if public is None:
        try:
            public = primitives.PublicKey(facts.key.algorithm, facts.key.key)
        except (ValueError, TypeError, UnsupportedAlgorithm):
            public = _UNUSABLE
        facts.public = public
    if public is _UNUSABLE:
        return False
    return bool(public.verifies(signature, data))


def _when(posix: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(posix))


def is_supported_ds(ds: DS) -> bool:
    """RFC 4035 §5.2, RFC 6840 §5.2: a DS we can use names an algorithm and digest we support."""
    return ds.algorithm in SUPPORTED_ALGORITHMS and ds.digest_type in SUPPORTED_DIGESTS


def keys_matching_ds(
    zone: dns.name.Name, keys: Iterable[DNSKEY], ds_set: Iterable[DS]
) -> list[DNSKEY]:
    """The zone keys that a supported DS record in `ds_set` commits to (RFC 4034 §5.1.4)."""
    wanted = [ds for ds in ds_set if is_supported_ds(ds)]
    matching = []
    for key in keys:
        if not is_zone_key(key) or key.flags & Flag.REVOKE:
            continue
        tag = key.key_id()
        for ds in wanted:
            if ds.key_tag != tag or ds.algorithm != key.algorithm:
                continue
            if primitives.ds_digest(zone, key, ds.digest_type) == ds.digest:
                matching.append(key)
                break
    return matching
