"""RRSIG verification (RFC 4035 §5.3) with a reason for every failure.

dnspython does the cryptography and the canonical form; this module decides which signatures may
speak for an RRset, applies the clock with a skew allowance, and says why nothing verified in the
Extended DNS Error vocabulary (RFC 8914) the client will see.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

import dns.dnssec
import dns.exception
import dns.name
import dns.rdataset
import dns.rdatatype
import dns.rrset
from dns.edns import EDECode
from dns.rdtypes.ANY.DNSKEY import DNSKEY
from dns.rdtypes.ANY.DS import DS
from dns.rdtypes.ANY.RRSIG import RRSIG
from dns.rdtypes.dnskeybase import Flag

#: RFC 8624 §3.1 algorithms we validate: RSASHA256, RSASHA512, ECDSA P-256/P-384, Ed25519, Ed448
SUPPORTED_ALGORITHMS = frozenset({8, 10, 13, 14, 15, 16})
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


def is_zone_key(key: DNSKEY) -> bool:
    return bool(key.flags & Flag.ZONE) and key.protocol == DNSKEY_PROTOCOL


def _candidate_keys(keys: Iterable[DNSKEY], rrsig: RRSIG) -> list[DNSKEY]:
    """Keys that could have made `rrsig`: same tag and algorithm, zone keys, and not revoked
    unless the signature covers the DNSKEY RRset itself (RFC 5011 §2.1)."""
    return [
        key
        for key in keys
        if key.algorithm == rrsig.algorithm
        and is_zone_key(key)
        and (not key.flags & Flag.REVOKE or rrsig.type_covered == dns.rdatatype.DNSKEY)
        and dns.dnssec.key_id(key) == rrsig.key_tag
    ]


def _speaks_for(rrsig: RRSIG, rrset: dns.rrset.RRset, zone: dns.name.Name) -> bool:
    """RFC 4035 §5.3.1: signer is the zone, the owner is in it, the type and class match, and the
    labels field is no more than the owner's label count (less: a wildcard expansion)."""
    owner_labels = len(rrset.name) - 1 - int(rrset.name.is_wild())
    return (
        rrsig.signer == zone
        and rrset.name.is_subdomain(zone)
        and rrsig.type_covered == rrset.rdtype
        and rrsig.rdclass == rrset.rdclass
        and rrsig.labels <= owner_labels
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


def verify_rrset(
    rrset: dns.rrset.RRset,
    rrsigs: dns.rdataset.Rdataset | None,
    zone: dns.name.Name,
    keys: Iterable[DNSKEY],
    now: float,
    skew: float = 300.0,
) -> SignatureCheck:
    """Does any RRSIG in `rrsigs` by `zone`, made with one of `keys`, verify `rrset` at `now`?

    skew: seconds a signature may be past its expiration or before its inception and still
    count, for clocks that are a little off (Unbound's val-sig-skew).
    """
    keys = list(keys)
    owner = rrset.name.to_text()
    rdtype = dns.rdatatype.to_text(rrset.rdtype)
    worst: tuple[int, str] = (EDECode.RRSIGS_MISSING, f"no RRSIG by {zone} for {owner} {rdtype}")
    for rrsig in rrsigs or ():
        assert isinstance(rrsig, RRSIG)
        if not _speaks_for(rrsig, rrset, zone):
            continue
        failure = _check_one(rrset, rrsig, zone, keys, now, skew)
        if failure is None:
            return SignatureCheck(
                True, None, "", rrsig.expiration, rrsig.original_ttl, rrsig.labels
            )
        if _RANK[EDECode(failure[0])] > _RANK[EDECode(worst[0])]:
            worst = failure
    return SignatureCheck(False, worst[0], f"{owner} {rdtype}: {worst[1]}")


def _check_one(
    rrset: dns.rrset.RRset,
    rrsig: RRSIG,
    zone: dns.name.Name,
    keys: list[DNSKEY],
    now: float,
    skew: float,
) -> tuple[int, str] | None:
    """None when `rrsig` verifies `rrset`; else (EDE code, reason)."""
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
    # within the skew allowance the signature counts: verify it as of a moment in its window
    moment = min(max(now, rrsig.inception), rrsig.expiration)
    keyset = dns.rdataset.Rdataset(rrset.rdclass, dns.rdatatype.DNSKEY)
    for key in candidates:
        keyset.add(key)
    try:
        dns.dnssec.validate_rrsig(
            rrset, rrsig, {zone: keyset}, now=moment, policy=dns.dnssec.allow_all_policy
        )
    except (dns.exception.ValidationFailure, dns.exception.UnsupportedAlgorithm) as exc:
        return EDECode.DNSSEC_BOGUS, f"signature by key {rrsig.key_tag} does not verify ({exc})"
    return None


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
        tag = dns.dnssec.key_id(key)
        for ds in wanted:
            if ds.key_tag != tag or ds.algorithm != key.algorithm:
                continue
            made = dns.dnssec.make_ds(zone, key, ds.digest_type, policy=dns.dnssec.allow_all_policy)
            if made.digest == ds.digest:
                matching.append(key)
                break
    return matching
