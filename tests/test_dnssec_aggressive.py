"""RFC 8198 synthesis in the validator, with no network: zones signed in memory
(tests/signed_zones.py). The signed hierarchy end to end is in test_dnssec_aggressive_e2e.py."""

from __future__ import annotations

import dataclasses
import random

import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.rrset

from stubby_py.dnssec.aggressive import DenialCache, Held, Synthesis
from stubby_py.dnssec.chain import KeyChain
from stubby_py.dnssec.outcome import Security
from stubby_py.dnssec.validate import Validator
from tests.signed_zones import NOW, Tree, name

A = dns.rdatatype.A
NSEC = dns.rdatatype.NSEC
SOA_MINIMUM = 60


def example(nsec_expiration: float | None = None) -> Tree:
    """example. holds b and www; its NSEC chain is example. -> b -> www -> example."""
    tree = Tree()
    tree.add_zone("example.")
    tree.add("example.", "SOA", f"ns.example. host.example. 1 3600 600 86400 {SOA_MINIMUM}")
    tree.add("b.example.", "A", "192.0.2.1")
    tree.add("www.example.", "A", "192.0.2.2")
    apex_types = "SOA NS DNSKEY NSEC RRSIG"
    tree.add("example.", "NSEC", f"b.example. {apex_types}", expiration=nsec_expiration)
    tree.add("b.example.", "NSEC", "www.example. A NSEC RRSIG", expiration=nsec_expiration)
    tree.add("www.example.", "NSEC", "example. A NSEC RRSIG", expiration=nsec_expiration)
    return tree


def negative(tree: Tree, qname: str, rcode: int, *owners: str) -> dns.message.Message:
    """A resolver's NXDOMAIN/NODATA: the zone's SOA and the NSEC records at `owners`."""
    zone = tree.zones[name("example.")]
    reply = dns.message.make_response(dns.message.make_query(qname, A, want_dnssec=True))
    reply.set_rcode(rcode)
    for owner, rdtype in [("example.", dns.rdatatype.SOA)] + [(o, NSEC) for o in owners]:
        rrset = next(r for r in zone.rrsets if r.name == name(owner) and r.rdtype == rdtype)
        reply.authority += [rrset, zone.sigs[(rrset.name, rdtype)]]
    if tree.tamper is not None:
        tree.tamper(reply)
    return reply


def learn_nxdomain(tree: Tree, validator: Validator) -> None:
    """c.example. does not exist: b.example. -> www.example. covers it, the apex NSEC *."""
    reply = negative(tree, "c.example.", dns.rcode.NXDOMAIN, "b.example.", "example.")
    verdict = tree.drive(validator.validate(reply, name("c.example."), A, NOW))
    assert verdict.security == Security.SECURE, verdict


def test_another_name_in_the_span_is_proven_nxdomain() -> None:
    tree = example()
    validator = Validator(KeyChain(tree.anchors()))
    learn_nxdomain(tree, validator)
    found = validator.synthesize(name("d.example."), A, NOW)
    assert found is not None and found.rcode == dns.rcode.NXDOMAIN
    assert 0 < found.ttl <= SOA_MINIMUM
    question = dns.message.make_query("d.example.", A)
    body = found.render(question.to_wire()[12:], A, True)
    reply = dns.message.from_wire(body)
    assert reply.rcode() == dns.rcode.NXDOMAIN and reply.question == question.question
    assert {r.rdtype for r in reply.authority} == {dns.rdatatype.SOA, NSEC, dns.rdatatype.RRSIG}
    plain = dns.message.from_wire(found.render(question.to_wire()[12:], A, False))
    assert [r.rdtype for r in plain.authority] == [dns.rdatatype.SOA]
    # outside the held spans (after www: the last NSEC, not held), or a name that exists
    assert validator.synthesize(name("x.example."), A, NOW) is None
    assert validator.synthesize(name("www.example."), A, NOW) is None
    # NODATA: b has A only; the held NSEC at b denies other types, never A, never DS
    nodata = validator.synthesize(name("b.example."), dns.rdatatype.TXT, NOW)
    assert nodata is not None and nodata.rcode == dns.rcode.NOERROR
    assert validator.synthesize(name("b.example."), A, NOW) is None
    assert validator.synthesize(name("b.example."), dns.rdatatype.DS, NOW) is None


def test_held_records_expire_with_their_ttl_and_signatures() -> None:
    tree = example()
    validator = Validator(KeyChain(tree.anchors()))
    learn_nxdomain(tree, validator)
    assert validator.synthesize(name("d.example."), A, NOW + 290) is not None
    assert validator.synthesize(name("d.example."), A, NOW + 301) is None  # TTL 300
    tree = example(nsec_expiration=NOW + 100)
    validator = Validator(KeyChain(tree.anchors()))
    learn_nxdomain(tree, validator)
    assert validator.synthesize(name("d.example."), A, NOW + 90) is not None
    assert validator.synthesize(name("d.example."), A, NOW + 101) is None


def test_a_bogus_nsec_is_never_held() -> None:
    tree = example()

    def forge(reply: dns.message.Message) -> None:
        # the NSEC at b now claims to reach zz: it no longer matches its RRSIG
        for i, rrset in enumerate(reply.authority):
            if rrset.rdtype == NSEC and rrset.name == name("b.example."):
                reply.authority[i] = dns.rrset.from_text(
                    rrset.name, rrset.ttl, "IN", "NSEC", "zz.example. A NSEC RRSIG"
                )

    tree.tamper = forge
    validator = Validator(KeyChain(tree.anchors()))
    reply = negative(tree, "c.example.", dns.rcode.NXDOMAIN, "b.example.", "example.")
    verdict = tree.drive(validator.validate(reply, name("c.example."), A, NOW))
    assert verdict.security == Security.BOGUS
    assert len(validator.chain.denials) == 0
    assert validator.synthesize(name("d.example."), A, NOW) is None
    assert validator.synthesize(name("x.example."), A, NOW) is None


def test_off_and_flush() -> None:
    tree = example()
    off = Validator(KeyChain(tree.anchors()), aggressive=False)
    learn_nxdomain(tree, off)
    assert len(off.chain.denials) == 0 and off.synthesize(name("d.example."), A, NOW) is None
    validator = Validator(KeyChain(tree.anchors()))
    learn_nxdomain(tree, validator)
    validator.chain.flush()
    assert validator.synthesize(name("d.example."), A, NOW) is None


def test_the_held_records_are_bounded() -> None:
    cache = DenialCache(max_records=10, max_zones=3)
    for zone_number in range(5):
        zone = name(f"z{zone_number}.example.")
        proofs = []
        for n in range(8):
            owner = dns.name.from_text(f"n{n}", zone)
            nsec = dns.rrset.from_text(owner, 300, "IN", "NSEC", f"n{n + 1}.{zone} A")
            sig = dns.rrset.RRset(owner, 1, dns.rdatatype.RRSIG, NSEC)
            proofs.append(Held(nsec, sig, NOW + 300))
        cache.learn(zone, proofs, NOW)
        assert len(cache) <= 10
    assert len(cache._zones) <= 3


def test_the_fast_path_never_answers_where_the_proof_would_not() -> None:
    """synthesize_wire reuses a proven NSEC span by canonical keys; for every name it answers,
    the full proof (denial.py) gives the same answer, and it answers names in a proven span."""
    tree = Tree()
    tree.add_zone("example.")
    tree.add("example.", "SOA", f"ns.example. host.example. 1 3600 600 86400 {SOA_MINIMUM}")
    tree.add("b.example.", "A", "192.0.2.1")
    tree.add("x.y.b.example.", "A", "192.0.2.3")  # y.b.example.: an empty non-terminal
    tree.add("d.example.", "NS", "ns.d.example.")  # an insecure delegation
    tree.add("www.example.", "A", "192.0.2.2")
    chain = ["example.", "b.example.", "x.y.b.example.", "d.example.", "www.example."]
    types = ["SOA NS DNSKEY NSEC RRSIG", "A NSEC RRSIG", "A NSEC RRSIG", "NS NSEC RRSIG",
             "A NSEC RRSIG"]  # fmt: skip
    for owner, next_, bits in zip(chain, chain[1:] + chain[:1], types, strict=True):
        tree.add(owner, "NSEC", f"{next_} {bits}")
    validator = Validator(KeyChain(tree.anchors()))
    rng = random.Random(8198)
    alphabet = "abcdwxyz-*"
    names = ["c.y.b.example.", "y.b.example.", "C.Y.B.Example.", "a.b.example.", "b.example.",
             "x.y.b.example.", "e.d.example.", "d.example.", "c.example.", "zzz.example.",
             "*.example.", "e.example.", "example.", "*.y.b.example."]  # fmt: skip
    for _ in range(400):
        labels = ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 3)))
                  for _ in range(rng.randint(1, 3))]  # fmt: skip
        names.append(".".join(labels) + ".example.")
    # every NSEC held, as the answers of a while would leave them
    zone = tree.zones[name("example.")]
    soa = next(r for r in zone.rrsets if r.rdtype == dns.rdatatype.SOA)
    held = [Held(r, zone.sigs[(r.name, NSEC)], NOW + 300) for r in zone.rrsets if r.rdtype == NSEC]
    soa_held = Held(soa, zone.sigs[(soa.name, soa.rdtype)], NOW + 300)
    validator.chain.denials.learn(zone.origin, held, NOW, soa_held)
    fast_answers = 0
    for text in names:
        qname = name(text)
        for qtype in (A, dns.rdatatype.TXT):
            full = validator.synthesize(qname, qtype, NOW)  # remembers proven spans
            fast = validator.synthesize_wire(qname.to_wire() or b"", qtype, NOW)
            if fast is not None:
                fast_answers += 1
                assert full is not None, f"{text}: fast path answered, the proof does not"
                assert (fast.rcode, fast.authority) == (full.rcode, full.authority), text
    assert fast_answers > 50
    # the empty non-terminal after a name below it was proven: NODATA, never NXDOMAIN
    validator.synthesize(name("c.y.b.example."), A, NOW)
    ent = validator.synthesize_wire(name("y.b.example.").to_wire() or b"", A, NOW)
    assert ent is None or ent.rcode == dns.rcode.NOERROR


def test_with_ttl_keeps_every_other_field() -> None:
    """`Synthesis.with_ttl` copies the fields by hand (for speed): a field added later and not
    copied there fails here."""
    held = Held(
        dns.rrset.from_text("a.test.", 300, "IN", "A", "192.0.2.1"),
        dns.rrset.from_text("a.test.", 300, "IN", "TXT", '"sig"'),
        NOW + 60,
    )
    found = Synthesis(name("test."), dns.rcode.NXDOMAIN, (held,), 300, "why", held, b"\x01a")
    assert found.with_ttl(7) == dataclasses.replace(found, ttl=7)
    assert {f.name for f in dataclasses.fields(Synthesis)} == {
        "zone", "rcode", "authority", "ttl", "reason", "answer", "owner"
    }  # fmt: skip
