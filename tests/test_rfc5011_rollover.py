"""A root key rollover followed end to end (RFC 5011), in memory: the key chain tells the anchor
updates of each authenticated root DNSKEY RRset; after the 30-day hold-down the new key is
trusted, after the old key's revocation only the new one is, and the state survives a restart.
Without the updates, the same zones are bogus once the old key is gone."""

from __future__ import annotations

from pathlib import Path

import dns.dnssec
import dns.name
import dns.rdatatype
import dns.rrset
from cryptography.hazmat.primitives.asymmetric import ed25519
from dns.rdtypes.ANY.DNSKEY import DNSKEY

from stubby_py.daemon.anchor_updates import AnchorUpdates
from stubby_py.dnssec.chain import KeyChain
from stubby_py.dnssec.outcome import Security
from stubby_py.dnssec.validate import Validator
from tests.signed_zones import NOW, Tree, Zone, name

DAY = 86_400.0
LONG = NOW + 90 * DAY  # every signature here is valid for the whole story
REVOKE = 0x0080


def resign(tree: Tree, zone: Zone, signers: list[tuple[ed25519.Ed25519PrivateKey, DNSKEY]]) -> None:
    """Sign every RRset of the zone with each of `signers` (one RRSIG each), valid till LONG."""
    for rrset in zone.rrsets:
        sigs = [
            dns.dnssec.sign(rrset, key, zone.origin, dnskey, inception=NOW - 3600, expiration=LONG)
            for key, dnskey in signers
        ]
        zone.sigs[(rrset.name, rrset.rdtype)] = dns.rrset.from_rdata_list(
            rrset.name, rrset.ttl, sigs
        )


def keyset(zone: Zone) -> dns.rrset.RRset:
    return next(r for r in zone.rrsets if r.rdtype == dns.rdatatype.DNSKEY)


def secure_at(tree: Tree, chain: KeyChain, when: float) -> Security:
    reply = tree.reply(name("www.example."), dns.rdatatype.A)
    verdict = tree.drive(Validator(chain).validate(reply, name("www.example."), 1, when))
    return verdict.security


def test_a_root_key_rollover_is_followed_and_remembered(tmp_path: Path) -> None:
    tree = Tree()
    example = tree.add_zone("example.")
    tree.add("www.example.", "A", "192.0.2.1")
    root = tree.zones[dns.name.root]
    old = (root.key, root.dnskey)
    resign(tree, root, [old])
    resign(tree, example, [(example.key, example.dnskey)])
    configured = tree.anchors()  # the DS of the old root key, as built-in anchors are
    state = tmp_path / "trust-anchors.json"

    updates = AnchorUpdates(configured, str(state))
    chain = KeyChain(updates.anchors(), on_anchor_keys=updates.observe)
    updates.chain = chain
    without = KeyChain(configured)  # the same, with no RFC 5011

    # day 0: a new key appears beside the old one, the key set signed by both
    new_private = ed25519.Ed25519PrivateKey.generate()
    new = (new_private, dns.dnssec.make_dnskey(new_private.public_key(), 15, flags=257))
    keyset(root).add(new[1])
    resign(tree, root, [old, new])
    assert secure_at(tree, chain, NOW) == Security.SECURE
    assert new[1] not in updates.anchors().get(dns.name.root).dnskeys  # add hold-down

    # day 31: still published: trusted now
    assert secure_at(tree, chain, NOW + 31 * DAY) == Security.SECURE
    assert new[1] in updates.anchors().get(dns.name.root).dnskeys

    # day 32: the old key is revoked (REVOKE set, the key set signed by the revoked key itself)
    revoked_key = dns.dnssec.make_dnskey(root.key.public_key(), 15, flags=257 | REVOKE)
    keys = keyset(root)
    keys.discard(old[1])
    keys.add(revoked_key)
    resign(tree, root, [(root.key, revoked_key), new])
    assert secure_at(tree, chain, NOW + 32 * DAY) == Security.SECURE
    anchors = updates.anchors().get(dns.name.root)
    assert anchors.ds == ()  # the configured DS named the revoked key
    assert new[1] in anchors.dnskeys

    # day 33: only the new key is left
    keys.discard(revoked_key)
    resign(tree, root, [new])
    assert secure_at(tree, chain, NOW + 33 * DAY) == Security.SECURE
    assert secure_at(tree, without, NOW + 33 * DAY) == Security.BOGUS

    # a restart: the state file carries the rollover
    restarted = AnchorUpdates(configured, str(state))
    again = KeyChain(restarted.anchors(), on_anchor_keys=restarted.observe)
    restarted.chain = again
    assert secure_at(tree, again, NOW + 34 * DAY) == Security.SECURE


def test_a_state_kept_for_other_anchors_is_not_taken_up(tmp_path: Path) -> None:
    """A key learnt (or configured) under other anchors must not stay trusted through the
    state file once the configuration no longer names it."""
    tree = Tree()
    state = tmp_path / "trust-anchors.json"
    first = AnchorUpdates(tree.anchors(), str(state))
    chain = KeyChain(first.anchors(), on_anchor_keys=first.observe)
    first.chain = chain
    tree.drive(chain.keys_for(dns.name.root, NOW))
    first._save()
    assert state.exists()
    other = Tree()  # another root, another key
    second = AnchorUpdates(other.anchors(), str(state))
    assert second.anchors() == other.anchors()
    assert not second.trackers[dns.name.root].keys
