"""The validator's logic with no network: zones signed in memory (tests/signed_zones.py) answer
its DS/DNSKEY questions. The private hierarchy served by real servers is in test_dnssec_e2e.py."""

from __future__ import annotations

import dns.dnssec
import dns.name
import dns.rdatatype
import dns.rrset
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from dns.edns import EDECode

from stubby_py.dnssec.chain import KeyChain
from stubby_py.dnssec.outcome import Security, Verdict
from stubby_py.dnssec.validate import Validator, render
from tests.signed_zones import NOW, Tree, message, name

A = dns.rdatatype.A


@pytest.fixture
def tree() -> Tree:
    tree = Tree()
    tree.add_zone("example.")
    tree.add("www.example.", "A", "192.0.2.1")
    tree.add_zone("sub.example.")
    tree.add("www.sub.example.", "A", "192.0.2.2")
    tree.add_zone("plain.example.", signed=False)
    tree.add("www.plain.example.", "A", "192.0.2.3")
    tree.add("alias.example.", "CNAME", "www.sub.example.")
    tree.add("to-plain.example.", "CNAME", "www.plain.example.")
    return tree


def judge(tree: Tree, qname: str, rdtype: str = "A", validator: Validator | None = None,
          now: float = NOW) -> Verdict:  # fmt: skip
    validator = validator or Validator(KeyChain(tree.anchors(), skew=300))
    reply = message(tree, qname, rdtype)
    return tree.drive(validator.validate(reply, name(qname), dns.rdatatype.from_text(rdtype), now))


def chained(tree: Tree, alias: str, target: str) -> dns.message.Message:
    """A recursive resolver's reply to `alias` A: the CNAME, then the target's A."""
    reply = message(tree, alias, "CNAME")
    reply.question = message(tree, alias, "A").question
    reply.answer += message(tree, target, "A").answer
    return reply


def test_secure_answer_asks_the_whole_chain_in_one_round(tree: Tree) -> None:
    verdict = judge(tree, "www.sub.example.")
    assert verdict.security == Security.SECURE, verdict
    assert len(tree.asked) == 1
    asked = {(str(n), dns.rdatatype.to_text(t)) for n, t in tree.asked[0]}
    assert asked == {(".", "DNSKEY"), ("example.", "DS"), ("example.", "DNSKEY"),
                     ("sub.example.", "DS"), ("sub.example.", "DNSKEY")}  # fmt: skip
    assert [link.zone for link in verdict.chain] == [".", "example.", "sub.example."]
    assert all(link.security == Security.SECURE for link in verdict.chain)
    assert verdict.ttl_cap is not None and verdict.ttl_cap <= 300


def test_a_warm_chain_asks_nothing(tree: Tree) -> None:
    validator = Validator(KeyChain(tree.anchors()))
    judge(tree, "www.sub.example.", validator=validator)
    tree.asked.clear()
    assert judge(tree, "www.example.", validator=validator).security == Security.SECURE
    reply = chained(tree, "alias.example.", "www.sub.example.")
    verdict = tree.drive(validator.validate(reply, name("alias.example."), A, NOW))
    assert verdict.security == Security.SECURE
    assert tree.asked == []


def test_changed_data_is_bogus(tree: Tree) -> None:
    def change(reply: dns.message.Message) -> None:
        for rrset in reply.answer:
            if rrset.rdtype == A:
                rrset.clear()
                rrset.add(dns.rdata.from_text("IN", "A", "192.0.2.66"))

    tree.tamper = change
    verdict = judge(tree, "www.example.")
    assert verdict.security == Security.BOGUS
    assert verdict.ede == EDECode.DNSSEC_BOGUS
    assert verdict.zone == "example."


def test_stripped_signature_is_rrsigs_missing(tree: Tree) -> None:
    def strip(reply: dns.message.Message) -> None:
        reply.answer = [
            r
            for r in reply.answer
            if r.rdtype != dns.rdatatype.RRSIG or r.name != name("www.example.")
        ]

    tree.tamper = strip
    verdict = judge(tree, "www.example.")
    assert (verdict.security, verdict.ede) == (Security.BOGUS, EDECode.RRSIGS_MISSING)


@pytest.mark.parametrize(
    ("inception", "expiration", "ede"),
    [(NOW - 7200, NOW - 3600, EDECode.SIGNATURE_EXPIRED),
     (NOW + 3600, NOW + 7200, EDECode.SIGNATURE_NOT_YET_VALID)],
)  # fmt: skip
def test_signature_times(tree: Tree, inception: float, expiration: float, ede: int) -> None:
    tree.add("late.example.", "A", "192.0.2.9", inception=inception, expiration=expiration)
    verdict = judge(tree, "late.example.")
    assert (verdict.security, verdict.ede) == (Security.BOGUS, ede)


def test_skew_allowance_accepts_a_signature_just_expired(tree: Tree) -> None:
    tree.add("late.example.", "A", "192.0.2.9", inception=NOW - 7200, expiration=NOW - 100)
    assert judge(tree, "late.example.").security == Security.SECURE  # skew 300 s


def test_ttl_capped_by_signature_expiry(tree: Tree) -> None:
    tree.add("soon.example.", "A", "192.0.2.9", inception=NOW - 60, expiration=NOW + 42)
    verdict = judge(tree, "soon.example.")
    assert verdict.security == Security.SECURE
    assert verdict.ttl_cap is not None and 40 <= verdict.ttl_cap <= 42


def test_ds_matching_no_key_is_dnskey_missing(tree: Tree) -> None:
    zone = tree.zones[name("sub.example.")]
    other = ed25519.Ed25519PrivateKey.generate()
    zone.dnskey = dns.dnssec.make_dnskey(other.public_key(), 15, flags=257)
    zone.key = other
    zone.rrsets = [r for r in zone.rrsets if r.rdtype != dns.rdatatype.DNSKEY]
    tree.add("sub.example.", "DNSKEY", zone.dnskey.to_text(), zone=zone)
    tree.add("www2.sub.example.", "A", "192.0.2.5")
    verdict = judge(tree, "www2.sub.example.")
    assert (verdict.security, verdict.ede) == (Security.BOGUS, EDECode.DNSKEY_MISSING)
    assert verdict.zone == "sub.example."


def test_unsupported_ds_digest_makes_the_zone_insecure(tree: Tree) -> None:
    tree.add_zone("legacy.example.")
    parent = tree.zones[name("example.")]
    ds = next(
        r
        for r in parent.rrsets
        if r.rdtype == dns.rdatatype.DS and r.name == name("legacy.example.")
    )
    ds.clear()
    ds.add(
        dns.dnssec.make_ds(
            name("legacy.example."),
            tree.zones[name("legacy.example.")].dnskey,
            1,
            policy=dns.dnssec.allow_all_policy,
        )
    )
    tree.sign(parent, ds)
    tree.add("www.legacy.example.", "A", "192.0.2.7")
    verdict = judge(tree, "www.legacy.example.")
    assert verdict.security == Security.INSECURE, verdict


def test_insecure_delegation_proven_by_nsec(tree: Tree) -> None:
    verdict = judge(tree, "www.plain.example.")
    assert verdict.security == Security.INSECURE, verdict
    assert verdict.chain[-1].zone == "plain.example."


def test_cname_from_secure_into_insecure_is_insecure(tree: Tree) -> None:
    validator = Validator(KeyChain(tree.anchors()))
    reply = chained(tree, "to-plain.example.", "www.plain.example.")
    verdict = tree.drive(validator.validate(reply, name("to-plain.example."), A, NOW))
    assert verdict.security == Security.INSECURE


def test_cross_zone_cname_is_secure_when_both_links_are(tree: Tree) -> None:
    validator = Validator(KeyChain(tree.anchors()))
    reply = chained(tree, "alias.example.", "www.sub.example.")
    verdict = tree.drive(validator.validate(reply, name("alias.example."), A, NOW))
    assert verdict.security == Security.SECURE


def test_unreachable_dnskey_is_indeterminate(tree: Tree) -> None:
    tree.fail.add((name("example."), dns.rdatatype.DNSKEY))
    verdict = judge(tree, "www.example.")
    assert verdict.security == Security.INDETERMINATE
    assert verdict.ede == EDECode.DNSKEY_MISSING


def test_signer_that_is_not_a_zone_is_bogus(tree: Tree) -> None:
    # www.example. signed as if it were a zone of its own, with example.'s key
    example = tree.zones[name("example.")]
    rrset = dns.rrset.from_text("x.www.example.", 300, "IN", "A", "192.0.2.8")
    example.rrsets.append(rrset)
    sig = dns.dnssec.sign(rrset, example.key, name("www.example."), example.dnskey,
                          inception=NOW - 60, expiration=NOW + 600)  # fmt: skip
    example.sigs[(rrset.name, rrset.rdtype)] = dns.rrset.from_rdata(rrset.name, 300, sig)
    example.rrsets.append(
        dns.rrset.from_text("www.example.", 300, "IN", "NSEC", "zz.example. A RRSIG NSEC")
    )
    tree.sign(example, example.rrsets[-1])
    verdict = judge(tree, "x.www.example.")
    assert verdict.security == Security.BOGUS


def test_clients_get_the_validated_records_and_dnssec_ones_only_with_do(tree: Tree) -> None:
    validator = Validator(KeyChain(tree.anchors()))
    reply = message(tree, "www.example.", "A")
    reply.additional.append(dns.rrset.from_text("ns.evil.", 300, "IN", "A", "203.0.113.1"))
    verdict = tree.drive(validator.validate(reply, name("www.example."), A, NOW))
    assert verdict.security == Security.SECURE
    with_do = dns.message.from_wire(render(reply, verdict, True))
    assert [r.rdtype for r in with_do.answer] == [A, dns.rdatatype.RRSIG]
    assert with_do.additional == []  # nothing unvalidated rides along
    without_do = dns.message.from_wire(render(reply, verdict, False))
    assert [r.rdtype for r in without_do.answer] == [A]


def test_an_rrsig_query_is_passed_on_unexamined(tree: Tree) -> None:
    validator = Validator(KeyChain(tree.anchors()))
    reply = message(tree, "example.", "DNSKEY")
    reply.question = dns.message.make_query("example.", "RRSIG").question
    verdict = tree.drive(validator.validate(reply, name("example."), dns.rdatatype.RRSIG, NOW))
    assert verdict.security == Security.INSECURE and verdict.kept is None
    asked_for = dns.message.from_wire(render(reply, verdict, False))
    assert dns.rdatatype.RRSIG in [r.rdtype for r in asked_for.answer]


def test_a_zone_with_a_ksk_and_a_zsk(tree: Tree) -> None:
    """The usual split (the root zone's too): the DS names the KSK, the KSK signs the DNSKEY
    RRset, the ZSK (flags 256, no DS) signs the data."""
    zone = tree.add_zone("split.example.")
    zsk_private = ed25519.Ed25519PrivateKey.generate()
    zsk = dns.dnssec.make_dnskey(zsk_private.public_key(), 15, flags=256)
    keyset = next(r for r in zone.rrsets if r.rdtype == dns.rdatatype.DNSKEY)
    keyset.add(zsk)
    tree.sign(zone, keyset)  # by the KSK
    rrset = dns.rrset.from_text("www.split.example.", 300, "IN", "A", "192.0.2.77")
    zone.rrsets.append(rrset)
    tree.sign(zone, rrset, key=zsk_private, dnskey=zsk)
    verdict = judge(tree, "www.split.example.")
    assert verdict.security == Security.SECURE, verdict
    # data signed only by the KSK's tag but with the ZSK's key material is no good
    bad = dns.rrset.from_text("bad.split.example.", 300, "IN", "A", "192.0.2.78")
    zone.rrsets.append(bad)
    tree.sign(zone, bad, key=zsk_private, dnskey=zone.dnskey)
    assert judge(tree, "bad.split.example.").security == Security.BOGUS


def test_an_algorithm_rollover_validates_with_either_signature(tree: Tree) -> None:
    """RFC 6840 §5.11: a signature by any key the DS vouches for will do, during a rollover."""
    zone = tree.zones[name("example.")]
    old_private = ed25519.Ed25519PrivateKey.generate()
    old = dns.dnssec.make_dnskey(old_private.public_key(), 15, flags=257)
    keyset = next(r for r in zone.rrsets if r.rdtype == dns.rdatatype.DNSKEY)
    keyset.add(old)
    tree.sign(zone, keyset)
    rrset = dns.rrset.from_text("roll.example.", 300, "IN", "A", "192.0.2.79")
    zone.rrsets.append(rrset)
    tree.sign(zone, rrset, key=old_private, dnskey=old)  # a key without a DS, in the signed set
    assert judge(tree, "roll.example.").security == Security.SECURE


def test_a_walk_under_way_when_the_chain_is_flushed_keeps_nothing(tree: Tree) -> None:
    """flush() (new trust anchors, RFC 5011) in the middle of a walk: the walk still answers,
    but what it found under the old anchors is not remembered for anyone else."""
    chain = KeyChain(tree.anchors())
    step = chain.keys_for(name("sub.example."), NOW)
    questions = next(step)
    chain.flush()
    try:
        step.send({q: tree.reply(*q) for q in questions})
    except StopIteration as done:
        assert done.value.security == Security.SECURE
    else:
        raise AssertionError("the walk asked for more")
    assert chain.cached(name("sub.example."), NOW) is None
    assert chain.cached(dns.name.root, NOW) is None
    again = tree.drive(chain.keys_for(name("sub.example."), NOW))
    assert again.security == Security.SECURE
    assert chain.cached(name("sub.example."), NOW) is not None
