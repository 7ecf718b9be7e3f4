"""RFC 5011 key states for one anchored zone, with an injected clock: hold-downs, revocation by
self-signature, the anchors they make, refresh timers, and the saved state."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dns.dnssec
import dns.name
import dns.rdata
import dns.rdatatype
import dns.rrset
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from dns.rdtypes.ANY.DNSKEY import DNSKEY

from stubby_py.daemon import anchor_updates
from stubby_py.dnssec import rfc5011
from stubby_py.dnssec.anchors import AnchorSet
from stubby_py.dnssec.rfc5011 import AnchorTracker, TrackedKey
from stubby_py.state_files import StateFileError

ZONE = dns.name.from_text("example.")
T0 = 1_700_000_000.0
HOUR = 3600.0
DAY = 86_400.0
SEP = 257
REVOKE = 0x0080


class Key:
    """An Ed25519 key of ZONE, as a SEP key (257) and as the same key revoked (257|0x80)."""

    def __init__(self, flags: int = SEP) -> None:
        self.private = ed25519.Ed25519PrivateKey.generate()
        self.dnskey = dns.dnssec.make_dnskey(self.private.public_key(), 15, flags=flags)
        self.revoked = dns.dnssec.make_dnskey(self.private.public_key(), 15, flags=flags | REVOKE)

    def ds(self) -> Any:
        return dns.dnssec.make_ds(ZONE, self.dnskey, "SHA256")


def keyset(
    published: list[DNSKEY],
    signers: list[tuple[Key, DNSKEY]],
    now: float,
    ttl: int = 3600,
) -> tuple[dns.rrset.RRset, dns.rrset.RRset]:
    """The zone's DNSKEY RRset and its RRSIGs, one by each (key, published form) in signers."""
    rrset = dns.rrset.from_rdata_list(ZONE, ttl, published)
    sigs = [
        dns.dnssec.sign(
            rrset, key.private, ZONE, form, inception=now - HOUR, expiration=now + 20 * DAY
        )
        for key, form in signers
    ]
    return rrset, dns.rrset.from_rdata_list(ZONE, ttl, sigs)


def observe(
    tracker: AnchorTracker,
    published: list[DNSKEY],
    signers: list[tuple[Key, DNSKEY]],
    now: float,
    ttl: int = 3600,
) -> bool:
    rrset, sigs = keyset(published, signers, now, ttl)
    return tracker.observe(rrset, sigs, now)


def trusted(tracker: AnchorTracker, key: Key) -> bool:
    """Does tracker.anchors() let `key` (unrevoked) be a trust anchor?"""
    anchors = tracker.anchors()
    by_ds = any(rfc5011._ds_names(ZONE, ds, key.dnskey) for ds in anchors.ds)
    return by_ds or key.dnskey in anchors.dnskeys


@pytest.fixture
def old() -> Key:
    return Key()


@pytest.fixture
def new() -> Key:
    return Key()


def ds_tracker(*keys: Key) -> AnchorTracker:
    """A tracker configured, as the built-in root anchors are, with DS records."""
    return AnchorTracker(ZONE, AnchorSet(ds=tuple(k.ds() for k in keys)))


def test_revoke_bit_changes_the_key_tag(old: Key) -> None:
    # RFC 5011 §2.1: the REVOKE bit is part of the key tag computation
    assert dns.dnssec.key_id(old.dnskey) != dns.dnssec.key_id(old.revoked)


def test_a_60_day_rollover(old: Key, new: Key) -> None:
    tracker = ds_tracker(old)
    # day 0: only the configured key: taken up as Valid, the anchors unchanged
    assert observe(tracker, [old.dnskey], [(old, old.dnskey)], T0) is False
    assert tracker.state_of(old.dnskey) == rfc5011.VALID
    assert tracker.anchors() == AnchorSet(ds=(old.ds(),))

    # day 1: the new key is published; polled twice a day, it is AddPend for 30 days
    start = T0 + DAY
    changes = []
    for step in range(62):  # 31 days, every 12 hours
        now = start + step * 12 * HOUR
        changes.append(observe(tracker, [old.dnskey, new.dnskey], [(old, old.dnskey)], now))
        expected = rfc5011.VALID if now >= start + 30 * DAY else rfc5011.ADDPEND
        assert tracker.state_of(new.dnskey) == expected, step
        assert trusted(tracker, new) == (expected == rfc5011.VALID)
    assert changes.count(True) == 1 and changes.index(True) == 60  # exactly at day 1 + 30
    assert tracker.anchors().dnskeys == (new.dnskey,)

    # day 32: the old key is revoked, the key set signed by the revoked key itself and the new
    revoked_at = start + 31 * DAY
    published = [old.revoked, new.dnskey]
    signers = [(old, old.revoked), (new, new.dnskey)]
    assert observe(tracker, published, signers, revoked_at) is True
    assert tracker.state_of(old.dnskey) == rfc5011.REVOKED
    assert tracker.state_of(old.revoked) == rfc5011.REVOKED
    assert tracker.anchors() == AnchorSet(dnskeys=(new.dnskey,))  # the configured DS is dropped
    assert not tracker.exhausted

    # day 33 on: the revoked key is gone; Removed 30 days after it was last seen
    gone = revoked_at + DAY
    for step in range(32):
        now = gone + step * DAY
        assert observe(tracker, [new.dnskey], [(new, new.dnskey)], now) is False
        expected = rfc5011.REMOVED if now - revoked_at >= 30 * DAY else rfc5011.REVOKED
        assert tracker.state_of(old.dnskey) == expected, step
    assert tracker.state_of(old.dnskey) == rfc5011.REMOVED
    # never trusted again, though the configuration still has its DS
    assert tracker.anchors() == AnchorSet(dnskeys=(new.dnskey,))
    assert not trusted(tracker, old)


def test_new_key_needs_a_sighting_at_the_end_of_the_hold_down(old: Key, new: Key) -> None:
    tracker = ds_tracker(old)
    observe(tracker, [old.dnskey, new.dnskey], [(old, old.dnskey)], T0)
    assert tracker.state_of(new.dnskey) == rfc5011.ADDPEND
    # a second before the end: still pending
    observe(tracker, [old.dnskey, new.dnskey], [(old, old.dnskey)], T0 + 30 * DAY - 1)
    assert tracker.state_of(new.dnskey) == rfc5011.ADDPEND
    assert not trusted(tracker, new)
    # the hold-down has run out, but without an RRset seen since, nothing is trusted yet
    assert not trusted(tracker, new)
    assert observe(tracker, [old.dnskey, new.dnskey], [(old, old.dnskey)], T0 + 40 * DAY)
    assert tracker.state_of(new.dnskey) == rfc5011.VALID
    assert trusted(tracker, new)


def test_add_hold_down_is_the_original_ttl_when_longer(old: Key, new: Key) -> None:
    tracker = ds_tracker(old)
    ttl = int(45 * DAY)
    observe(tracker, [old.dnskey, new.dnskey], [(old, old.dnskey)], T0, ttl=ttl)
    (pending,) = [k for k in tracker.keys if k.state == rfc5011.ADDPEND]
    assert pending.valid_at == T0 + 45 * DAY
    observe(tracker, [old.dnskey, new.dnskey], [(old, old.dnskey)], T0 + 31 * DAY, ttl=ttl)
    assert tracker.state_of(new.dnskey) == rfc5011.ADDPEND
    observe(tracker, [old.dnskey, new.dnskey], [(old, old.dnskey)], T0 + 45 * DAY, ttl=ttl)
    assert tracker.state_of(new.dnskey) == rfc5011.VALID


def test_a_pending_key_that_vanishes_starts_over(old: Key, new: Key) -> None:
    tracker = ds_tracker(old)
    both = [old.dnskey, new.dnskey]
    observe(tracker, both, [(old, old.dnskey)], T0)
    # day 10: a validated RRset without it: back to Start (KeyRem)
    observe(tracker, [old.dnskey], [(old, old.dnskey)], T0 + 10 * DAY)
    assert tracker.state_of(new.dnskey) == rfc5011.START
    # day 11: back again, the hold-down counted afresh
    observe(tracker, both, [(old, old.dnskey)], T0 + 11 * DAY)
    assert tracker.state_of(new.dnskey) == rfc5011.ADDPEND
    observe(tracker, both, [(old, old.dnskey)], T0 + 35 * DAY)  # 30 days after first sight
    assert tracker.state_of(new.dnskey) == rfc5011.ADDPEND
    assert not trusted(tracker, new)
    observe(tracker, both, [(old, old.dnskey)], T0 + 41 * DAY)
    assert tracker.state_of(new.dnskey) == rfc5011.VALID


def test_a_valid_key_goes_missing_and_comes_back_still_trusted(old: Key, new: Key) -> None:
    tracker = ds_tracker(old, new)
    observe(tracker, [old.dnskey, new.dnskey], [(old, old.dnskey)], T0)
    assert tracker.state_of(new.dnskey) == rfc5011.VALID  # configured: valid at once
    assert observe(tracker, [old.dnskey], [(old, old.dnskey)], T0 + DAY) is False
    assert tracker.state_of(new.dnskey) == rfc5011.MISSING
    assert trusted(tracker, new)  # Missing keys remain anchors (§4.2)
    observe(tracker, [old.dnskey, new.dnskey], [(old, old.dnskey)], T0 + 2 * DAY)
    assert tracker.state_of(new.dnskey) == rfc5011.VALID


def test_learnt_key_missing_stays_an_anchor(old: Key, new: Key) -> None:
    tracker = ds_tracker(old)
    observe(tracker, [old.dnskey, new.dnskey], [(old, old.dnskey)], T0)
    observe(tracker, [old.dnskey, new.dnskey], [(old, old.dnskey)], T0 + 30 * DAY)
    assert observe(tracker, [old.dnskey], [(old, old.dnskey)], T0 + 31 * DAY) is False
    assert tracker.state_of(new.dnskey) == rfc5011.MISSING
    assert new.dnskey in tracker.anchors().dnskeys


def test_revoke_bit_without_self_signature_is_ignored(old: Key, new: Key) -> None:
    tracker = ds_tracker(old, new)
    observe(tracker, [old.dnskey, new.dnskey], [(new, new.dnskey)], T0)
    impostor = Key()
    # the revoked form published, but the "self-signature" is made with another private key
    # under the revoked key's tag and algorithm
    rrset = dns.rrset.from_rdata_list(ZONE, 3600, [old.revoked, new.dnskey])
    good = dns.dnssec.sign(rrset, new.private, ZONE, new.dnskey, T0, T0 + 20 * DAY)
    made = dns.dnssec.sign(rrset, impostor.private, ZONE, impostor.dnskey, T0, T0 + 20 * DAY)
    forged = made.replace(key_tag=dns.dnssec.key_id(old.revoked))
    sigs = dns.rrset.from_rdata_list(ZONE, 3600, [good, forged])
    assert tracker.observe(rrset, sigs, T0 + HOUR) is False
    assert tracker.state_of(old.dnskey) == rfc5011.MISSING  # not Revoked
    assert trusted(tracker, old)
    # and with no signature by the revoked key at all
    assert observe(tracker, [old.revoked, new.dnskey], [(new, new.dnskey)], T0 + 2 * HOUR) is False
    assert tracker.state_of(old.dnskey) == rfc5011.MISSING
    assert tracker.anchors().ds == (old.ds(), new.ds())


def test_revoked_configured_key_is_never_trusted_again(old: Key, new: Key) -> None:
    tracker = AnchorTracker(ZONE, AnchorSet(ds=(old.ds(), new.ds()), dnskeys=(old.dnskey,)))
    signers = [(old, old.revoked), (new, new.dnskey)]
    assert observe(tracker, [old.revoked, new.dnskey], signers, T0) is True
    assert tracker.state_of(old.dnskey) == rfc5011.REVOKED
    assert tracker.anchors() == AnchorSet(ds=(new.ds(),))  # DS and DNSKEY of the old key gone
    # the zone publishes the old key unrevoked again: it stays Revoked, not even AddPend
    observe(tracker, [old.dnskey, new.dnskey], [(new, new.dnskey)], T0 + DAY)
    observe(tracker, [old.dnskey, new.dnskey], [(new, new.dnskey)], T0 + 40 * DAY)
    assert tracker.state_of(old.dnskey) == rfc5011.REVOKED
    assert not trusted(tracker, old)
    # nor after a restart with the same configuration
    again = AnchorTracker.from_json(ZONE, tracker.configured, tracker.to_json())
    assert not trusted(again, old)
    assert again.anchors() == AnchorSet(ds=(new.ds(),))


def test_removed_key_republished_is_not_taken_up(old: Key, new: Key) -> None:
    tracker = ds_tracker(old, new)
    observe(tracker, [old.revoked, new.dnskey], [(old, old.revoked), (new, new.dnskey)], T0)
    observe(tracker, [new.dnskey], [(new, new.dnskey)], T0 + 31 * DAY)
    assert tracker.state_of(old.dnskey) == rfc5011.REMOVED
    observe(tracker, [old.dnskey, new.dnskey], [(new, new.dnskey)], T0 + 32 * DAY)
    observe(tracker, [old.dnskey, new.dnskey], [(new, new.dnskey)], T0 + 70 * DAY)
    assert tracker.state_of(old.dnskey) == rfc5011.REMOVED
    assert not trusted(tracker, old)


def test_revoked_key_still_published_is_not_removed(old: Key, new: Key) -> None:
    tracker = ds_tracker(old, new)
    signers = [(old, old.revoked), (new, new.dnskey)]
    for day in range(0, 61, 10):
        observe(tracker, [old.revoked, new.dnskey], signers, T0 + day * DAY)
    assert tracker.state_of(old.dnskey) == rfc5011.REVOKED
    # RemTime counts from its last sight (day 60), not from the revocation
    observe(tracker, [new.dnskey], [(new, new.dnskey)], T0 + 61 * DAY)
    observe(tracker, [new.dnskey], [(new, new.dnskey)], T0 + 90 * DAY - 1)
    assert tracker.state_of(old.dnskey) == rfc5011.REVOKED
    observe(tracker, [new.dnskey], [(new, new.dnskey)], T0 + 90 * DAY)
    assert tracker.state_of(old.dnskey) == rfc5011.REMOVED


def test_unauthenticated_rrset_is_refused(old: Key, new: Key) -> None:
    tracker = ds_tracker(old)
    observe(tracker, [old.dnskey], [(old, old.dnskey)], T0)
    before = tracker.to_json()
    stranger = Key()
    # signed only by a key nobody trusts
    with pytest.raises(ValueError, match="signed by no trusted key"):
        observe(tracker, [old.dnskey, stranger.dnskey], [(stranger, stranger.dnskey)], T0 + DAY)
    # no signatures at all
    rrset = dns.rrset.from_rdata_list(ZONE, 3600, [old.dnskey, stranger.dnskey])
    with pytest.raises(ValueError, match="signed by no trusted key"):
        tracker.observe(rrset, None, T0 + DAY)
    # signatures that have expired
    with pytest.raises(ValueError, match="signed by no trusted key"):
        rrset, sigs = keyset([old.dnskey, stranger.dnskey], [(old, old.dnskey)], T0)
        tracker.observe(rrset, sigs, T0 + 30 * DAY)
    # a revocation of a key nobody trusts proves nothing either
    with pytest.raises(ValueError, match="signed by no trusted key"):
        observe(tracker, [stranger.revoked], [(stranger, stranger.revoked)], T0 + DAY)
    assert tracker.to_json() == before
    # another zone's keys
    other = dns.rrset.from_rdata_list(dns.name.from_text("example.net."), 3600, [old.dnskey])
    with pytest.raises(ValueError, match=r"DNSKEY RRset of example\."):
        tracker.observe(other, None, T0 + DAY)


def test_every_key_revoked_leaves_the_tracker_exhausted(old: Key, new: Key) -> None:
    tracker = ds_tracker(old)
    observe(tracker, [old.dnskey], [(old, old.dnskey)], T0)
    assert not tracker.exhausted
    # the only trusted key revokes itself; the new key signs too but is trusted by nobody
    signers = [(old, old.revoked), (new, new.dnskey)]
    assert observe(tracker, [old.revoked, new.dnskey], signers, T0 + DAY) is True
    assert tracker.state_of(old.dnskey) == rfc5011.REVOKED
    assert tracker.exhausted
    assert tracker.anchors() == AnchorSet()
    # vouched for by nothing but a revocation, the RRset adds no key
    assert tracker.state_of(new.dnskey) == rfc5011.START
    # and with nothing trusted left, nothing can be observed any more
    with pytest.raises(ValueError):
        observe(tracker, [new.dnskey], [(new, new.dnskey)], T0 + 2 * DAY)


def test_pending_key_starts_over_when_its_vouchers_are_revoked(old: Key, new: Key) -> None:
    # RFC 5011 §2.2: all keys that validated the RRset first holding it revoked → timer reset
    other = Key()
    tracker = ds_tracker(old, other)
    observe(tracker, [old.dnskey, other.dnskey, new.dnskey], [(old, old.dnskey)], T0)
    (pending,) = [k for k in tracker.keys if k.state == rfc5011.ADDPEND]
    assert pending.vouchers == (f"{dns.dnssec.key_id(old.dnskey)}/15",)
    signers = [(old, old.revoked), (other, other.dnskey)]
    observe(tracker, [old.revoked, other.dnskey, new.dnskey], signers, T0 + 10 * DAY)
    assert tracker.state_of(new.dnskey) == rfc5011.ADDPEND
    (pending,) = [k for k in tracker.keys if k.state == rfc5011.ADDPEND]
    assert pending.first_seen == T0 + 10 * DAY
    assert pending.valid_at == T0 + 40 * DAY
    observe(tracker, [other.dnskey, new.dnskey], [(other, other.dnskey)], T0 + 31 * DAY)
    assert tracker.state_of(new.dnskey) == rfc5011.ADDPEND
    observe(tracker, [other.dnskey, new.dnskey], [(other, other.dnskey)], T0 + 40 * DAY)
    assert tracker.state_of(new.dnskey) == rfc5011.VALID


def test_pending_key_that_revokes_itself_is_never_trusted(old: Key, new: Key) -> None:
    tracker = ds_tracker(old)
    observe(tracker, [old.dnskey, new.dnskey], [(old, old.dnskey)], T0)
    signers = [(old, old.dnskey), (new, new.revoked)]
    observe(tracker, [old.dnskey, new.revoked], signers, T0 + DAY)
    assert tracker.state_of(new.dnskey) == rfc5011.REVOKED
    observe(tracker, [old.dnskey, new.dnskey], [(old, old.dnskey)], T0 + 40 * DAY)
    assert tracker.state_of(new.dnskey) == rfc5011.REVOKED
    assert not trusted(tracker, new)


def test_only_sep_keys_are_tracked(old: Key) -> None:
    zsk = Key(flags=256)
    tracker = ds_tracker(old)
    observe(tracker, [old.dnskey, zsk.dnskey], [(old, old.dnskey)], T0)
    observe(tracker, [old.dnskey, zsk.dnskey], [(old, old.dnskey)], T0 + 31 * DAY)
    assert tracker.state_of(zsk.dnskey) == rfc5011.START
    assert [k.key for k in tracker.keys] == [old.dnskey]
    assert zsk.dnskey not in tracker.anchors().dnskeys


def test_a_non_sep_anchor_vouches_but_is_not_tracked(new: Key) -> None:
    zsk = Key(flags=256)
    tracker = AnchorTracker(ZONE, AnchorSet(dnskeys=(zsk.dnskey,)))
    assert observe(tracker, [zsk.dnskey, new.dnskey], [(zsk, zsk.dnskey)], T0) is False
    assert tracker.state_of(new.dnskey) == rfc5011.ADDPEND
    assert tracker.state_of(zsk.dnskey) == rfc5011.START
    assert observe(tracker, [zsk.dnskey, new.dnskey], [(zsk, zsk.dnskey)], T0 + 30 * DAY)
    assert tracker.anchors() == AnchorSet(dnskeys=(zsk.dnskey, new.dnskey))


def test_dnskey_anchors_are_tracked_like_ds_anchors(old: Key, new: Key) -> None:
    tracker = AnchorTracker(ZONE, AnchorSet(dnskeys=(old.dnskey,)))
    observe(tracker, [old.dnskey, new.dnskey], [(old, old.dnskey)], T0)
    assert tracker.state_of(old.dnskey) == rfc5011.VALID
    assert observe(tracker, [old.dnskey, new.dnskey], [(old, old.dnskey)], T0 + 30 * DAY)
    assert tracker.anchors() == AnchorSet(dnskeys=(old.dnskey, new.dnskey))


def test_tracked_keys_are_bounded(old: Key) -> None:
    tracker = ds_tracker(old)
    many = [Key() for _ in range(rfc5011.MAX_TRACKED + 5)]
    observe(tracker, [old.dnskey] + [k.dnskey for k in many], [(old, old.dnskey)], T0)
    assert len(tracker.keys) == rfc5011.MAX_TRACKED


# -- RFC 5011 §2.3 timers ---------------------------------------------------------------------
@pytest.mark.parametrize(
    ("orig_ttl", "expires_in", "refresh", "retry"),
    [
        # MIN(15 days, TTL/2, expiry/2) = TTL/2 = 1 day; retry MIN(1 day, TTL/10, exp/10) = 4.8 h
        (172_800, 10 * DAY, DAY, 4.8 * HOUR),
        # the signatures expire first: 2 days → refresh in 1 day, retry in 0.2 day
        (30 * 86_400, 2 * DAY, DAY, 0.2 * DAY),
        # short TTL: both held at 1 hour
        (600, 10 * DAY, HOUR, HOUR),
        # long TTL and signatures: capped at 15 days and 1 day
        (60 * 86_400, 60 * DAY, 15 * DAY, DAY),
        # signatures already expired: the floor
        (172_800, -HOUR, HOUR, HOUR),
    ],
)
def test_refresh_and_retry_times(
    orig_ttl: int, expires_in: float, refresh: float, retry: float
) -> None:
    tracker = AnchorTracker(ZONE, AnchorSet())
    assert tracker.next_refresh(T0, orig_ttl, T0 + expires_in) == pytest.approx(T0 + refresh)
    assert tracker.retry_after(T0, orig_ttl, T0 + expires_in) == pytest.approx(T0 + retry)


# -- persistence ------------------------------------------------------------------------------
def rolled_over(old: Key, new: Key) -> AnchorTracker:
    tracker = ds_tracker(old)
    third = Key()
    observe(tracker, [old.dnskey, new.dnskey], [(old, old.dnskey)], T0)
    observe(tracker, [old.dnskey, new.dnskey], [(old, old.dnskey)], T0 + 30 * DAY)
    signers = [(old, old.revoked), (new, new.dnskey)]
    observe(tracker, [old.revoked, new.dnskey, third.dnskey], signers, T0 + 31 * DAY)
    return tracker


def test_state_round_trip_through_a_file(tmp_path: Path, old: Key, new: Key) -> None:
    tracker = rolled_over(old, new)
    states = sorted(k.state for k in tracker.keys)
    assert states == [rfc5011.ADDPEND, rfc5011.REVOKED, rfc5011.VALID]
    path = str(tmp_path / "trust-anchors.json")
    assert anchor_updates.load_state(path) is None
    anchor_updates.save_state(path, {ZONE.to_text(): tracker.to_json()})
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["trust-anchors.json"]  # no temporary left
    loaded = anchor_updates.load_state(path)
    assert loaded is not None
    again = AnchorTracker.from_json(ZONE, tracker.configured, loaded[ZONE.to_text()])
    assert again.keys == tracker.keys
    assert again.anchors() == tracker.anchors()
    assert again.to_json() == tracker.to_json()
    # and it goes on where it left off: the pending key's hold-down survived
    observe(again, [new.dnskey], [(new, new.dnskey)], T0 + 32 * DAY)
    assert again.state_of(old.dnskey) == rfc5011.REVOKED


def test_save_replaces_the_old_file(tmp_path: Path) -> None:
    path = str(tmp_path / "state.json")
    anchor_updates.save_state(path, {"a": 1})
    anchor_updates.save_state(path, {"b": 2})
    assert anchor_updates.load_state(path) == {"b": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]


@pytest.mark.parametrize(
    "content",
    [b"", b"{", b"[1, 2]", b"\xff\xfe not text", b'{"a": 1} trailing', b"null"],
)
def test_damaged_state_file_is_rejected(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "state.json"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="damaged trust anchor state"):
        anchor_updates.load_state(str(path))


def test_a_state_file_that_is_a_link_open_to_others_or_too_big_is_refused(
    tmp_path: Path,
) -> None:
    """The state file is read as every state file is (state_files.py): a key planted in it
    through a link or by another user is never trusted."""
    path = tmp_path / "state.json"
    real = tmp_path / "real.json"
    anchor_updates.save_state(str(real), {"a": 1})
    path.symlink_to(real)
    with pytest.raises(StateFileError, match="a symbolic link"):
        anchor_updates.load_state(str(path))
    with pytest.raises(StateFileError, match="not a regular file"):
        anchor_updates.save_state(str(path), {"b": 2})
    assert anchor_updates.load_state(str(real)) == {"a": 1}
    real.chmod(0o666)
    with pytest.raises(StateFileError, match="writable by other users"):
        anchor_updates.load_state(str(real))
    path.unlink()
    path.write_bytes(b" " * (rfc5011.MAX_STATE_BYTES + 1))
    with pytest.raises(StateFileError, match="more than the"):
        anchor_updates.load_state(str(path))


def _set(field: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(data: dict[str, Any]) -> None:
        data["keys"][0][field] = value

    return change


def _flags(flags: str) -> Callable[[dict[str, Any]], None]:
    def change(data: dict[str, Any]) -> None:
        entry = data["keys"][0]
        entry["key"] = entry["key"].replace("257 ", flags, 1)

    return change


def _delete(data: dict[str, Any]) -> None:
    del data["keys"][0]["last_seen"]


DAMAGE: dict[str, Callable[[dict[str, Any]], None]] = {
    "version": lambda data: data.update(version=2),
    "zone": lambda data: data.update(zone="example.net."),
    "keys not a list": lambda data: data.update(keys={"0": data["keys"][0]}),
    "too many keys": lambda data: data.update(keys=[data["keys"][0]] * (rfc5011.MAX_TRACKED + 1)),
    "duplicate key": lambda data: data["keys"].append(dict(data["keys"][0])),
    "entry not an object": lambda data: data["keys"].__setitem__(0, "257 3 15 AAAA"),
    "unknown state": _set("state", "Trusted"),
    "Start is not stored": _set("state", "Start"),
    "key not base64": _set("key", "257 3 15 not-base64!"),
    "key not text": _set("key", 257),
    "ZSK": _flags("256 "),
    "REVOKE bit stored": _flags("385 "),
    "negative time": _set("first_seen", -1),
    "NaN time": _set("last_seen", float("nan")),
    "bool time": _set("valid_at", True),
    "text time": _set("last_change", "yesterday"),
    "missing field": _delete,
    "extra field": _set("trusted", True),
    "bad voucher": _set("vouchers", ["not a tag"]),
    "vouchers not a list": _set("vouchers", "1/15"),
}


@pytest.mark.parametrize("how", sorted(DAMAGE))
def test_damaged_state_is_rejected(old: Key, new: Key, how: str) -> None:
    tracker = rolled_over(old, new)
    data = json.loads(json.dumps(tracker.to_json()))
    AnchorTracker.from_json(ZONE, tracker.configured, data)  # undamaged: fine
    DAMAGE[how](data)
    with pytest.raises(ValueError, match="trust anchor state"):
        AnchorTracker.from_json(ZONE, tracker.configured, data)


def test_from_json_rejects_a_non_object() -> None:
    with pytest.raises(ValueError, match="expected an object"):
        AnchorTracker.from_json(ZONE, AnchorSet(), [])


def test_constructor_copies_and_checks_keys(old: Key) -> None:
    entry = TrackedKey(old.revoked, rfc5011.VALID, T0, T0)
    tracker = AnchorTracker(ZONE, AnchorSet(), [entry])
    assert tracker.keys[0].key == old.dnskey  # kept without its REVOKE bit
    assert entry.key == old.revoked  # the caller's object is not changed
    with pytest.raises(ValueError, match="unknown state"):
        AnchorTracker(ZONE, AnchorSet(), [TrackedKey(old.dnskey, "Start", T0, T0)])
    with pytest.raises(ValueError, match="tracked twice"):
        AnchorTracker(ZONE, AnchorSet(), [entry, TrackedKey(old.dnskey, rfc5011.VALID, T0, T0)])
    with pytest.raises(ValueError, match="absolute"):
        AnchorTracker(dns.name.from_text("example", None), AnchorSet())


def test_the_unsigned_ttl_field_cannot_stretch_the_hold_down(old: Key, new: Key) -> None:
    """Review finding: the reply's TTL field is not signed; only the RRSIG's original TTL may
    lengthen the add hold-down (§2.4.1), else an upstream could park a new key for 68 years."""
    tracker = ds_tracker(old)
    rrset, sigs = keyset([old.dnskey, new.dnskey], [(old, old.dnskey)], T0)
    rrset.ttl = 2**31 - 1  # after signing: the signature still verifies (original TTL 3600)
    tracker.observe(rrset, sigs, T0)
    (pending,) = [k for k in tracker.keys if k.state == rfc5011.ADDPEND]
    assert pending.valid_at == T0 + 30 * DAY
    observe(tracker, [old.dnskey, new.dnskey], [(old, old.dnskey)], T0 + 31 * DAY)
    assert tracker.state_of(new.dnskey) == rfc5011.VALID


def test_an_older_rrset_replayed_does_not_reset_a_pending_key(old: Key, new: Key) -> None:
    """An RRset signed before the newest one seen (its signatures still valid) is a replay: it
    must not send a pending key back to Start, restarting its hold-down."""
    tracker = ds_tracker(old)
    stale, stale_sigs = keyset([old.dnskey], [(old, old.dnskey)], T0 - 5 * DAY)
    observe(tracker, [old.dnskey, new.dnskey], [(old, old.dnskey)], T0)
    assert tracker.state_of(new.dnskey) == rfc5011.ADDPEND
    tracker.observe(stale, stale_sigs, T0 + 10 * DAY)  # signed five days before T0
    assert tracker.state_of(new.dnskey) == rfc5011.ADDPEND
    observe(tracker, [old.dnskey, new.dnskey], [(old, old.dnskey)], T0 + 30 * DAY)
    assert tracker.state_of(new.dnskey) == rfc5011.VALID


def test_a_ds_digest_we_cannot_compute_never_makes_a_key_trusted(old: Key) -> None:
    """A key tag can be ground: with a digest type we cannot check, tag and algorithm alone
    may drop a revoked key's DS, never vouch for a key."""
    real = old.ds()
    unknown = dns.rdata.from_text("IN", "DS", f"{real.key_tag} {real.algorithm} 99 {'00' * 32}")
    assert not rfc5011._ds_names(ZONE, unknown, old.dnskey)
    assert rfc5011._ds_names(ZONE, unknown, old.dnskey, loose=True)
    tracker = AnchorTracker(ZONE, AnchorSet(ds=(unknown,)))
    rrset, sigs = keyset([old.dnskey], [(old, old.dnskey)], T0)
    with pytest.raises(ValueError):
        tracker.observe(rrset, sigs, T0)  # nothing it trusts signed this
