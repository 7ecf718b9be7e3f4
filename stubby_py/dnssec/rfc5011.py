"""RFC 5011 automated updates of trust anchors: which keys of an anchored zone to trust now.

An `AnchorTracker` follows one anchored zone's secure entry point (SEP) keys through the states of
RFC 5011 §4 (Start, AddPend, Valid, Missing, Revoked, Removed), fed the zone's DNSKEY RRsets as
the validator authenticates them, and says which anchors to validate from (`anchors()`): the
configured ones, plus keys that have waited out the add hold-down, minus every revoked key. It
also says when to look again (§2.3). Sans-IO: the caller fetches, authenticates and keeps the
clock; `state_text` and `parse_state`, at the bottom, turn the state into text and back (the
daemon keeps it in a file).

The one rule the caller must keep: `observe` is only ever given a DNSKEY RRset that it has
authenticated through a currently trusted key (the anchors this tracker last gave it). A key
learnt from an unauthenticated RRset would be a key an attacker chose. `observe` checks this
again itself and raises ValueError when no trusted key signs the RRset.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from typing import Any

import dns.exception
import dns.name
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset
from dns.rdtypes.ANY.DNSKEY import DNSKEY
from dns.rdtypes.ANY.DS import DS
from dns.rdtypes.dnskeybase import Flag

from stubby_py.dnssec import primitives
from stubby_py.dnssec.anchors import AnchorSet
from stubby_py.dnssec.verify import SUPPORTED_ALGORITHMS, Budget, is_zone_key, verify_rrset

START = "Start"
ADDPEND = "AddPend"
VALID = "Valid"
MISSING = "Missing"
REVOKED = "Revoked"
REMOVED = "Removed"
#: the states a tracked key can be in (a key in Start is simply not tracked)
TRACKED_STATES = frozenset({ADDPEND, VALID, MISSING, REVOKED, REMOVED})

HOUR = 3600.0
DAY = 86_400.0
#: RFC 5011 §2.4.1: at least 30 days (or the RRset's original TTL, when that is longer)
ADD_HOLDDOWN = 30 * DAY
#: RFC 5011 §2.4.2
REMOVE_HOLDDOWN = 30 * DAY
#: at most this many keys are tracked; new keys past it are not taken up (the state stays small
#: whatever a zone publishes; revocations of trusted keys are always recorded)
MAX_TRACKED = 64
STATE_VERSION = 1
#: the largest state file worth reading: MAX_TRACKED keys of a few kB each, for many zones
MAX_STATE_BYTES = 4 << 20

_VOUCHER = re.compile(r"\A[0-9]{1,5}/[0-9]{1,3}\Z")


@dataclasses.dataclass(slots=True)
class TrackedKey:
    """One SEP key of the zone and where RFC 5011 §4 has it."""

    #: the key as published without the REVOKE bit: its identity, and what a DS commits to
    #: (a revoked key is published with flags | 0x0080, and so under another key tag, §2.1)
    key: DNSKEY
    state: str
    #: POSIX seconds: when first seen, and when its state last changed
    first_seen: float
    last_change: float
    #: when last seen (either form) in a validated RRset; the remove hold-down counts from here
    last_seen: float = 0.0
    #: AddPend: the end of the add hold-down (§2.2)
    valid_at: float = 0.0
    #: AddPend: "tag/algorithm" of the trusted keys that validated the RRset that first held it;
    #: if all of them are revoked before the hold-down ends, the acceptance starts over (§2.2)
    vouchers: tuple[str, ...] = ()

    @property
    def tag(self) -> int:
        return int(self.key.key_id())

    @property
    def is_trusted(self) -> bool:
        """§4.2: Valid and Missing keys are trust anchors."""
        return self.state in (VALID, MISSING)


def _unrevoked(key: DNSKEY) -> DNSKEY:
    if not key.flags & Flag.REVOKE:
        return key
    plain = key.replace(flags=key.flags & ~Flag.REVOKE)
    assert isinstance(plain, DNSKEY)
    return plain


def _identity(key: DNSKEY) -> bytes:
    """The same key whether or not its REVOKE bit is set."""
    return _unrevoked(key).to_digestable()


def _label(key: DNSKEY) -> str:
    return f"{_unrevoked(key).key_id()}/{key.algorithm}"


def _is_sep(key: DNSKEY) -> bool:
    """Only SEP zone keys of an algorithm we validate are tracked (RFC 5011 §2, RFC 4034 §2.1.1)."""
    return is_zone_key(key) and bool(key.flags & Flag.SEP) and key.algorithm in SUPPORTED_ALGORITHMS


def _ds_names(zone: dns.name.Name, ds: DS, key: DNSKEY, *, loose: bool = False) -> bool:
    """Does `ds` commit to `key` (compared without its REVOKE bit)? A digest we cannot compute
    matches only when `loose` (to drop the DS of a revoked key): never for trusting a key, as a
    key tag can be ground."""
    key = _unrevoked(key)
    if ds.key_tag != key.key_id() or ds.algorithm != key.algorithm:
        return False
    made = primitives.ds_digest(zone, key, ds.digest_type)
    if made is None:
        return loose
    return made == ds.digest


class AnchorTracker:
    """RFC 5011 for one anchored zone: its SEP keys' states and the anchors they make."""

    def __init__(
        self, zone: dns.name.Name, configured: AnchorSet, keys: list[TrackedKey] | None = None
    ) -> None:
        if not zone.is_absolute():
            raise ValueError(f"trust anchor zone {zone} is not an absolute name")
        self.zone = zone
        self.configured = configured
        self._keys: dict[bytes, TrackedKey] = {}
        #: the newest signature inception of an RRset taken in (older ones are replays)
        self._newest_inception = 0.0
        for tracked in keys or ():
            if tracked.state not in TRACKED_STATES:
                raise ValueError(f"key {tracked.tag}: unknown state {tracked.state!r}")
            identity = _identity(tracked.key)
            if identity in self._keys:
                raise ValueError(f"key {tracked.tag} is tracked twice")
            self._keys[identity] = dataclasses.replace(tracked, key=_unrevoked(tracked.key))

    # -- what is trusted ----------------------------------------------------------------------
    @property
    def keys(self) -> tuple[TrackedKey, ...]:
        return tuple(self._keys.values())

    def state_of(self, key: DNSKEY) -> str:
        """The key's state (with or without its REVOKE bit); Start when not tracked."""
        tracked = self._keys.get(_identity(key))
        return tracked.state if tracked is not None else START

    @property
    def exhausted(self) -> bool:
        """No usable trust anchor is left (every key revoked, RFC 5011 §5): the zone can no
        longer be validated until the anchors are replaced by hand (§8.2)."""
        return not self.anchors().is_usable

    def states(self) -> list[tuple[bytes, str]]:
        """Each tracked key's identity and state: what a saved state must not lose."""
        return sorted((_identity(t.key), t.state) for t in self._keys.values())

    def anchors(self) -> AnchorSet:
        """The configured anchors less every revoked key (a revoked key is never trusted again,
        §2.1, whatever the configuration says), plus the Valid and Missing keys (§4.2)."""
        revoked = [t.key for t in self._keys.values() if t.state in (REVOKED, REMOVED)]
        revoked_ids = {_identity(key) for key in revoked}
        ds = tuple(
            d
            for d in self.configured.ds
            if not any(_ds_names(self.zone, d, k, loose=True) for k in revoked)
        )
        dnskeys = [k for k in self.configured.dnskeys if _identity(k) not in revoked_ids]
        covered = {_identity(k) for k in dnskeys}
        for tracked in self._keys.values():
            if not tracked.is_trusted or _identity(tracked.key) in covered:
                continue
            if not any(_ds_names(self.zone, d, tracked.key) for d in ds):
                dnskeys.append(tracked.key)
        return AnchorSet(ds, tuple(dnskeys))

    def _is_trusted(self, key: DNSKEY) -> bool:
        """Is `key` (without its REVOKE bit) a trust anchor now?"""
        tracked = self._keys.get(_identity(key))
        if tracked is not None and tracked.state != ADDPEND:
            return tracked.is_trusted
        return self._is_configured(key)

    def _is_configured(self, key: DNSKEY) -> bool:
        key = _unrevoked(key)
        return key in self.configured.dnskeys or any(
            _ds_names(self.zone, ds, key) for ds in self.configured.ds
        )

    # -- RFC 5011 §4 ----------------------------------------------------------------------------
    def observe(
        self,
        dnskeys: dns.rrset.RRset,
        rrsigs: dns.rrset.RRset | None,
        now: float,
        *,
        skew: float = 3600.0,
    ) -> bool:
        """Take in the zone's DNSKEY RRset, which the CALLER HAS AUTHENTICATED through a
        currently trusted key. Returns True when `anchors()` changed (rebuild from it then).

        Raises ValueError when the RRset is not the zone's DNSKEY RRset, or when no trusted key
        signs it: neither an ordinary signature by a trusted key nor a trusted key's signature
        under its own revocation (§2.1). An RRset vouched for only by such revocations is used
        for those revocations alone.
        """
        if dnskeys.name != self.zone or dnskeys.rdtype != dns.rdatatype.DNSKEY:
            raise ValueError(f"expected the DNSKEY RRset of {self.zone}, got {dnskeys.name}")
        before = self.anchors()
        budget = Budget()
        zone_keys = [key for key in dnskeys if isinstance(key, DNSKEY) and is_zone_key(key)]
        # any trusted zone key vouches (an anchor may be a non-SEP key); only SEP keys are tracked
        vouchers, signed_ttl, inception = self._vouchers(
            zone_keys, dnskeys, rrsigs, now, skew, budget
        )
        published = [key for key in zone_keys if _is_sep(key)]
        revoked = self._revocations(published, dnskeys, rrsigs, now, skew, budget)
        if not vouchers and not any(self._is_trusted(key) for key in revoked):
            raise ValueError(
                f"{self.zone} DNSKEY RRset is signed by no trusted key: only an RRset "
                "authenticated through the current trust anchors may be observed"
            )
        for key in revoked:
            self._revoke(key, now)
        if vouchers and inception < self._newest_inception:
            # an RRset signed before one already seen: a replay (its signatures may still be
            # valid) must not take a new key back to Start nor a trusted one to Missing
            return self.anchors() != before
        if vouchers:
            self._newest_inception = inception
            # §2.4.1: the original TTL, which the signature covers; never the reply's TTL field,
            # which an upstream can set to 68 years and so park a new key for good
            hold = max(ADD_HOLDDOWN, signed_ttl)
            self._update(published, vouchers, hold, now)
        return self.anchors() != before

    def _vouchers(
        self,
        zone_keys: list[DNSKEY],
        dnskeys: dns.rrset.RRset,
        rrsigs: dns.rrset.RRset | None,
        now: float,
        skew: float,
        budget: Budget,
    ) -> tuple[list[str], float, float]:
        """The trusted keys whose signatures verify the RRset (what "validated" it, §2.2), the
        largest original TTL and the latest inception among those signatures."""
        labels: list[str] = []
        signed_ttl = 0.0
        inception = 0.0
        for key in zone_keys:
            if key.flags & Flag.REVOKE or not self._is_trusted(key):
                continue
            check = verify_rrset(dnskeys, rrsigs, self.zone, [key], now, skew, budget=budget)
            if check.ok:
                labels.append(_label(key))
                signed_ttl = max(signed_ttl, float(check.original_ttl or 0))
                inception = max(inception, float(check.inception or 0))
        return labels, signed_ttl, inception

    def _revocations(
        self,
        published: list[DNSKEY],
        dnskeys: dns.rrset.RRset,
        rrsigs: dns.rrset.RRset | None,
        now: float,
        skew: float,
        budget: Budget,
    ) -> list[DNSKEY]:
        """§2.1: keys we track or were configured with, published with the REVOKE bit and
        signing this RRset themselves. A REVOKE bit without that self-signature is ignored."""
        found = []
        for key in published:
            if not key.flags & Flag.REVOKE:
                continue
            tracked = self._keys.get(_identity(key))
            if tracked is not None and tracked.state in (REVOKED, REMOVED):
                continue
            if tracked is None and not self._is_configured(key):
                continue  # a key we never knew: its revocation changes nothing
            # the revoked key alone: its signature may verify only the DNSKEY RRset (§2.1)
            check = verify_rrset(dnskeys, rrsigs, self.zone, [key], now, skew, budget=budget)
            if check.ok:
                found.append(key)
        return found

    def _revoke(self, key: DNSKEY, now: float) -> None:
        """§4.1 RevBit: Valid or Missing (or configured) → Revoked, no longer a trust anchor.
        An AddPend key that revokes itself is not taken up either (§2.1: the key MUST NOT be
        used as a trust anchor)."""
        identity = _identity(key)
        tracked = self._keys.get(identity)
        if tracked is None:
            tracked = TrackedKey(_unrevoked(key), REVOKED, now, now)
            self._keys[identity] = tracked
        tracked.state = REVOKED
        tracked.last_change = now
        tracked.last_seen = now
        tracked.valid_at = 0.0
        tracked.vouchers = ()

    def _update(
        self, published: list[DNSKEY], vouchers: list[str], hold: float, now: float
    ) -> None:
        """The rest of the §4 state table, for an RRset validated by `vouchers`."""
        present = {_identity(k): k for k in published if not k.flags & Flag.REVOKE}
        seen = {_identity(k) for k in published}
        for identity, tracked in list(self._keys.items()):
            if identity in seen:
                tracked.last_seen = now
            if tracked.state == ADDPEND:
                # a hold-down set longer than this RRset's signed TTL asks for is cut back
                tracked.valid_at = min(tracked.valid_at, tracked.first_seen + hold)
            if not self._transition(tracked, identity in present, identity in seen, now):
                del self._keys[identity]  # back to Start
        for identity, key in present.items():
            if identity not in self._keys:
                self._new_key(identity, key, vouchers, hold, now)

    def _transition(self, tracked: TrackedKey, present: bool, seen: bool, now: float) -> bool:
        """One tracked key's events for this RRset; False when it goes back to Start."""
        if tracked.state == ADDPEND:
            # §4.1 KeyRem: AddPend → Start; §2.2: so too when all its vouchers are revoked
            if not present or self._vouchers_revoked(tracked):
                return False
            if now >= tracked.valid_at:
                # §4.1 AddTime: held down, and present again now that the hold-down is over
                self._set(tracked, VALID, now)
        elif tracked.state == VALID and not present:
            self._set(tracked, MISSING, now)  # KeyRem
        elif tracked.state == MISSING and present:
            self._set(tracked, VALID, now)  # KeyPres
        elif tracked.state == REVOKED and not seen and now - tracked.last_seen >= REMOVE_HOLDDOWN:
            # RemTime: gone from the RRset for the remove hold-down. Kept as Removed, not
            # forgotten: a configured anchor may still name it, and it must stay untrusted.
            self._set(tracked, REMOVED, now)
        return True

    def _vouchers_revoked(self, tracked: TrackedKey) -> bool:
        revoked = {_label(t.key) for t in self._keys.values() if t.state in (REVOKED, REMOVED)}
        return bool(tracked.vouchers) and all(v in revoked for v in tracked.vouchers)

    def _new_key(
        self, identity: bytes, key: DNSKEY, vouchers: list[str], hold: float, now: float
    ) -> None:
        """§4.1 NewKey: Start → AddPend, the add hold-down starting now (§2.2, §2.4.1). A key
        the configuration already trusts is Valid from the start."""
        if self._is_configured(key):
            self._keys[identity] = TrackedKey(key, VALID, now, now, now)
        elif len(self._keys) < MAX_TRACKED:
            self._keys[identity] = TrackedKey(
                key, ADDPEND, now, now, now, valid_at=now + hold, vouchers=tuple(vouchers)
            )

    @staticmethod
    def _set(tracked: TrackedKey, state: str, now: float) -> None:
        tracked.state = state
        tracked.last_change = now
        if state != ADDPEND:
            tracked.valid_at = 0.0
            tracked.vouchers = ()

    # -- RFC 5011 §2.3 --------------------------------------------------------------------------
    def next_refresh(self, now: float, orig_ttl: int, sig_expiration: float) -> float:
        """When to query the DNSKEY RRset next (POSIX seconds), after a successful refresh:
        now + MAX(1 hr, MIN(15 days, 1/2*OrigTTL, 1/2*RRSigExpirationInterval)).
        sig_expiration: when the RRset's signatures expire (POSIX seconds)."""
        interval = max(0.0, sig_expiration - now)
        return now + max(HOUR, min(15 * DAY, max(0, orig_ttl) / 2, interval / 2))

    def retry_after(self, now: float, orig_ttl: int, sig_expiration: float) -> float:
        """When to try again (POSIX seconds) after a failed refresh:
        now + MAX(1 hour, MIN(1 day, .1 * OrigTTL, .1 * RRSigExpirationInterval))."""
        interval = max(0.0, sig_expiration - now)
        return now + max(HOUR, min(DAY, 0.1 * max(0, orig_ttl), 0.1 * interval))

    # -- persistence ----------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "zone": self.zone.to_text(),
            "keys": [
                {
                    "key": t.key.to_text(),
                    "state": t.state,
                    "first_seen": t.first_seen,
                    "last_change": t.last_change,
                    "last_seen": t.last_seen,
                    "valid_at": t.valid_at,
                    "vouchers": list(t.vouchers),
                }
                for t in self._keys.values()
            ],
        }

    @classmethod
    def from_json(cls, zone: dns.name.Name, configured: AnchorSet, data: object) -> AnchorTracker:
        """A tracker from `to_json()`'s output (as read back from a file, so anything);
        ValueError naming what is wrong if damaged."""
        if not isinstance(data, dict):
            raise ValueError("trust anchor state: expected an object")
        if data.get("version") != STATE_VERSION:
            raise ValueError(f"trust anchor state: unknown version {data.get('version')!r}")
        if data.get("zone") != zone.to_text():
            raise ValueError(f"trust anchor state is for {data.get('zone')!r}, not {zone}")
        entries = data.get("keys")
        if not isinstance(entries, list):
            raise ValueError("trust anchor state: 'keys' must be a list")
        if len(entries) > MAX_TRACKED:
            raise ValueError(f"trust anchor state: more than {MAX_TRACKED} keys")
        keys = [_tracked_from_json(index, entry) for index, entry in enumerate(entries)]
        try:
            return cls(zone, configured, keys)
        except ValueError as exc:
            raise ValueError(f"trust anchor state: {exc}") from None


_FIELDS = frozenset(
    {"key", "state", "first_seen", "last_change", "last_seen", "valid_at", "vouchers"}
)


def _tracked_from_json(index: int, entry: object) -> TrackedKey:
    where = f"trust anchor state: keys[{index}]"
    if not isinstance(entry, dict) or set(entry) != _FIELDS:
        raise ValueError(f"{where}: expected an object with {', '.join(sorted(_FIELDS))}")
    state = entry["state"]
    if state not in TRACKED_STATES:
        raise ValueError(f"{where}.state: unknown state {state!r}")
    vouchers = entry["vouchers"]
    if not isinstance(vouchers, list) or not all(
        isinstance(v, str) and _VOUCHER.match(v) for v in vouchers
    ):
        raise ValueError(f"{where}.vouchers: expected a list of 'tag/algorithm' strings")
    return TrackedKey(
        _key(f"{where}.key", entry["key"]),
        state,
        first_seen=_time(where, entry, "first_seen"),
        last_change=_time(where, entry, "last_change"),
        last_seen=_time(where, entry, "last_seen"),
        valid_at=_time(where, entry, "valid_at"),
        vouchers=tuple(vouchers),
    )


def _time(where: str, entry: dict[str, Any], name: str) -> float:
    value = entry[name]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{where}.{name}: expected a number of seconds, got {value!r}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{where}.{name}: {value!r} is not a time")
    return float(value)


def _key(where: str, text: object) -> DNSKEY:
    if not isinstance(text, str):
        raise ValueError(f"{where}: expected DNSKEY presentation text")
    try:
        key = dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.DNSKEY, text)
    except (dns.exception.DNSException, ValueError) as exc:
        raise ValueError(f"{where}: not a DNSKEY ({exc})") from None
    assert isinstance(key, DNSKEY)
    if not is_zone_key(key) or not key.flags & Flag.SEP or key.flags & Flag.REVOKE:
        raise ValueError(f"{where}: flags {key.flags}: expected a SEP zone key without REVOKE")
    return key


# -- the state as text (daemon/anchor_updates.py keeps it in a file) ----------------------------
def state_text(data: dict[str, Any]) -> bytes:
    """`data` (trackers' `to_json`, and what else the caller keeps) as the state file's text."""
    return (json.dumps(data, indent=1, sort_keys=True, allow_nan=False) + "\n").encode()


def parse_state(text: bytes) -> dict[str, Any]:
    """The JSON object `state_text` wrote; ValueError if damaged."""
    try:
        data = json.loads(text.decode("utf-8"))
    except UnicodeDecodeError:
        raise ValueError("damaged trust anchor state (not UTF-8 text)") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"damaged trust anchor state (line {exc.lineno}: {exc.msg})") from None
    if not isinstance(data, dict):
        raise ValueError("damaged trust anchor state (not a JSON object)")
    return data
