"""Verify once (issue #15): signatures that verified are remembered, and the memory never makes
changed data, an untrusted key or an expired signature good."""

from __future__ import annotations

import dns.dnssec
import dns.rdata
import dns.rdatatype
import dns.rrset
from cryptography.hazmat.primitives.asymmetric import ed25519
from dns.edns import EDECode
from dns.rdtypes.dnskeybase import Flag

from stubby_py.dnssec import verify
from stubby_py.dnssec.chain import KeyChain
from stubby_py.dnssec.outcome import Security
from stubby_py.dnssec.validate import Validator
from stubby_py.dnssec.verify import Budget, VerifiedSignatures, verify_rrset
from tests.signed_zones import ALGORITHM, NOW, Tree, message, name

A = dns.rdatatype.A


def signed(tree: Tree, owner: str = "www.example.") -> tuple[dns.rrset.RRset, dns.rrset.RRset]:
    reply = message(tree, owner, "A")
    rrset = next(r for r in reply.answer if r.rdtype == A)
    sigs = next(r for r in reply.answer if r.rdtype == dns.rdatatype.RRSIG)
    return rrset, sigs


def example_tree() -> Tree:
    tree = Tree()
    tree.add_zone("example.")
    tree.add("www.example.", "A", "192.0.2.1")
    tree.add("*.example.", "A", "192.0.2.7")
    return tree


def test_the_same_signed_data_is_verified_once() -> None:
    tree = example_tree()
    rrset, sigs = signed(tree)
    zone = tree.zones[name("example.")]
    first, second = Budget(), Budget()
    assert verify_rrset(rrset, sigs, zone.origin, [zone.dnskey], NOW, budget=first).ok
    assert verify_rrset(rrset, sigs, zone.origin, [zone.dnskey], NOW, budget=second).ok
    assert (first.spent, second.spent) == (1, 0)


def test_wildcard_expansions_share_one_verification() -> None:
    tree = example_tree()
    zone = tree.zones[name("example.")]
    spent = []
    for label in ("a", "b", "c"):
        rrset, sigs = signed(tree, "*.example.")
        expanded = dns.rrset.from_rdata_list(name(f"{label}.example."), rrset.ttl, list(rrset))
        moved = dns.rrset.from_rdata_list(expanded.name, sigs.ttl, list(sigs))
        budget = Budget()
        check = verify_rrset(expanded, moved, zone.origin, [zone.dnskey], NOW, budget=budget,
                             expanded_ok=True)  # fmt: skip
        assert check.ok
        spent.append(budget.spent)
    assert spent == [1, 0, 0]


def test_changed_data_with_a_remembered_signature_is_bogus() -> None:
    tree = example_tree()
    validator = Validator(KeyChain(tree.anchors(), skew=300))
    reply = message(tree, "www.example.", "A")
    verdict = tree.drive(validator.validate(reply, name("www.example."), A, NOW))
    assert verdict.security == Security.SECURE

    def change(reply: dns.message.Message) -> None:
        for rrset in reply.answer:
            if rrset.rdtype == A:
                rrset.clear()
                rrset.add(dns.rdata.from_text("IN", "A", "192.0.2.66"))

    tree.tamper = change
    reply = message(tree, "www.example.", "A")
    verdict = tree.drive(validator.validate(reply, name("www.example."), A, NOW))
    assert (verdict.security, verdict.ede) == (Security.BOGUS, EDECode.DNSSEC_BOGUS)


def test_a_key_no_longer_trusted_does_not_verify_from_memory() -> None:
    tree = example_tree()
    rrset, sigs = signed(tree)
    zone = tree.zones[name("example.")]
    assert verify_rrset(rrset, sigs, zone.origin, [zone.dnskey], NOW).ok
    # rolled: the zone's keys are now another one
    rolled = dns.dnssec.make_dnskey(ed25519.Ed25519PrivateKey.generate().public_key(), ALGORITHM)
    check = verify_rrset(rrset, sigs, zone.origin, [rolled], NOW)
    assert (check.ok, check.ede) == (False, EDECode.DNSKEY_MISSING)
    # revoked: the same key with the REVOKE bit speaks only for the DNSKEY RRset
    revoked = dns.dnssec.make_dnskey(zone.key.public_key(), ALGORITHM, flags=257 | Flag.REVOKE)
    assert not verify_rrset(rrset, sigs, zone.origin, [revoked], NOW).ok
    # flushed: the chain forgets, and so does the memory of signatures
    assert len(verify.VERIFIED) > 0
    KeyChain(tree.anchors()).flush()
    assert len(verify.VERIFIED) == 0


def test_an_expired_signature_is_expired_even_when_remembered() -> None:
    tree = example_tree()
    tree.add("soon.example.", "A", "192.0.2.9", inception=NOW - 60, expiration=NOW + 60)
    rrset, sigs = signed(tree, "soon.example.")
    zone = tree.zones[name("example.")]
    assert verify_rrset(rrset, sigs, zone.origin, [zone.dnskey], NOW, skew=0).ok
    check = verify_rrset(rrset, sigs, zone.origin, [zone.dnskey], NOW + 120, skew=0)
    assert (check.ok, check.ede) == (False, EDECode.SIGNATURE_EXPIRED)


def test_the_memory_is_bounded_and_keeps_what_is_used() -> None:
    memory = VerifiedSignatures(limit=8)
    memory.add(b"hot")
    for n in range(100):
        memory.hit(b"hot")
        memory.add(b"cold%d" % n)
        assert len(memory) <= 8
    assert b"hot" in memory
    assert b"cold0" not in memory
