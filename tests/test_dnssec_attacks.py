"""Regression tests for the DNSSEC validator's security review (findings F1-F10, L1, L2): forged
replies an on-path attacker or a hostile zone can send, and what the validator must make of them.
Zones are signed in memory (tests/signed_zones.py); no socket is involved."""

from __future__ import annotations

import base64
import os
import time
from collections.abc import Callable, Iterator

import dns.dnssec
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from dns.dnssecalgs.eddsa import PublicEDDSA
from dns.edns import EDECode
from dns.rdtypes.ANY.DNSKEY import DNSKEY

from stubby_py.dnssec import chain as chain_module
from stubby_py.dnssec.chain import KeyChain
from stubby_py.dnssec.outcome import Security, Verdict
from stubby_py.dnssec.validate import MAX_CHAIN, Validator
from stubby_py.dnssec.verify import Budget
from tests.signed_zones import NOW, Tree, Zone, name

A = dns.rdatatype.A
ROOT = dns.name.root
ED25519 = 15


# -- helpers --------------------------------------------------------------------------------------
def wild_tree() -> tuple[Tree, Zone]:
    """example. with a wildcard and a complete NSEC chain (example., *.example., mail.example.)."""
    tree = Tree()
    zone = tree.add_zone("example.")
    tree.add("example.", "SOA", "ns.example. host.example. 1 3600 600 86400 300")
    tree.add("*.example.", "A", "192.0.2.99")
    tree.add("mail.example.", "A", "192.0.2.25")
    tree.add("mail.example.", "MX", "10 mail.example.")
    tree.add("mail.example.", "TLSA", "3 1 1 " + "ab" * 32)
    tree.add("example.", "NSEC", "*.example. SOA NS DNSKEY RRSIG NSEC")
    tree.add("*.example.", "NSEC", "mail.example. A RRSIG NSEC")
    tree.add("mail.example.", "NSEC", "example. A MX TLSA RRSIG NSEC")
    return tree, zone


def reply_to(
    qname: str, qtype: str, rcode: dns.rcode.Rcode = dns.rcode.NOERROR
) -> dns.message.Message:
    query = dns.message.make_query(qname, qtype, want_dnssec=True)
    reply = dns.message.make_response(query)
    reply.set_rcode(rcode)
    return reply


def signed(zone: Zone, owner: str, rdtype: str) -> list[dns.rrset.RRset]:
    """[the RRset, its RRSIG RRset] as the zone holds them."""
    key = (name(owner), dns.rdatatype.from_text(rdtype))
    rrset = next(r for r in zone.rrsets if (r.name, r.rdtype) == key)
    return [rrset, zone.sigs[key]]


def moved(rrset: dns.rrset.RRset, owner: str) -> dns.rrset.RRset:
    """The same rdatas (a record, or its RRSIGs) at another owner name."""
    out = dns.rrset.RRset(name(owner), rrset.rdclass, rrset.rdtype, rrset.covers)
    for rdata in rrset:
        out.add(rdata)
    out.ttl = rrset.ttl
    return out


def judge(
    tree: Tree,
    reply: dns.message.Message,
    qname: str,
    qtype: str,
    validator: Validator | None = None,
    now: float = NOW,
) -> Verdict:
    validator = validator or Validator(KeyChain(tree.anchors()))
    step = validator.validate(reply, name(qname), dns.rdatatype.from_text(qtype), now)
    return tree.drive(step)


def junk_rrsig(covered: str, signer: str, key_tag: int, labels: int) -> dns.rdata.Rdata:
    """A well-formed RRSIG, valid now, whose signature is random bytes."""
    times = f"{int(NOW + 3600)} {int(NOW - 3600)}"
    junk = base64.b64encode(os.urandom(64)).decode()
    text = f"{covered} {ED25519} {labels} 300 {times} {key_tag} {signer} {junk}"
    return dns.rdata.from_text("IN", "RRSIG", text)


def parsed(wire: bytes) -> dns.message.Message:
    return dns.message.from_wire(wire)


def section_types(section: list[dns.rrset.RRset]) -> set[str]:
    return {dns.rdatatype.to_text(r.rdtype) for r in section}


def deny_below(tree: Tree, parent: Zone, *proof: tuple[str, str]) -> None:
    """Answer DS questions for names below `parent`'s apex with `proof` (signed NSECs of parent)
    in the authority section, as a resolver would for names that do not exist there."""

    def tamper(reply: dns.message.Message) -> None:
        question = reply.question[0]
        below = question.name != parent.origin and question.name.is_subdomain(parent.origin)
        if question.rdtype == dns.rdatatype.DS and below and tree.zone_for(question.name) is parent:
            reply.answer.clear()
            reply.authority.clear()
            for owner, rdtype in proof:
                reply.authority += signed(parent, owner, rdtype)

    tree.tamper = tamper


# -- F1: a wildcard-expanded NSEC is no proof of anything at its new owner ------------------------
def test_f1_control_real_answers_are_secure() -> None:
    tree, zone = wild_tree()
    mx = reply_to("mail.example.", "MX")
    mx.answer += signed(zone, "mail.example.", "MX")
    assert judge(tree, mx, "mail.example.", "MX").security == Security.SECURE

    nodata = reply_to("mail.example.", "AAAA")
    nodata.authority += signed(zone, "example.", "SOA") + signed(zone, "mail.example.", "NSEC")
    assert judge(tree, nodata, "mail.example.", "AAAA").security == Security.SECURE

    # a real wildcard expansion, proven by the wildcard's own NSEC at its own owner
    expanded = reply_to("abc.example.", "A")
    record, sig = signed(zone, "*.example.", "A")
    expanded.answer += [moved(record, "abc.example."), moved(sig, "abc.example.")]
    expanded.authority += signed(zone, "*.example.", "NSEC")
    assert judge(tree, expanded, "abc.example.", "A").security == Security.SECURE


@pytest.mark.parametrize("qtype", ["MX", "TLSA"])
def test_f1_wildcard_nsec_copied_to_another_owner_is_no_nodata_proof(qtype: str) -> None:
    tree, zone = wild_tree()
    nsec, sig = signed(zone, "*.example.", "NSEC")  # *.example. NSEC mail.example. A RRSIG NSEC
    forged = reply_to("mail.example.", qtype)
    forged.authority += signed(zone, "example.", "SOA")
    forged.authority += [moved(nsec, "mail.example."), moved(sig, "mail.example.")]
    verdict = judge(tree, forged, "mail.example.", qtype)
    assert verdict.security == Security.BOGUS, verdict


def test_f1_wildcard_nsec_copied_to_another_owner_is_no_nxdomain_proof() -> None:
    tree, zone = wild_tree()
    nsec, sig = signed(zone, "*.example.", "NSEC")
    forged = reply_to("abc.example.", "A", dns.rcode.NXDOMAIN)  # the wildcard answers it
    forged.authority += signed(zone, "example.", "SOA")
    # "!.example." sorts before *.example., so this span covers both abc.example. and the wildcard
    forged.authority += [moved(nsec, "!.example."), moved(sig, "!.example.")]
    verdict = judge(tree, forged, "abc.example.", "A")
    assert verdict.security == Security.BOGUS, verdict


# -- F2: the rcode must agree with the answer ----------------------------------------------------
def test_f2_signed_answer_with_nxdomain_rcode_is_bogus() -> None:
    tree, zone = wild_tree()
    forged = reply_to("mail.example.", "A", dns.rcode.NXDOMAIN)
    forged.answer += signed(zone, "mail.example.", "A")
    verdict = judge(tree, forged, "mail.example.", "A")
    assert verdict.security == Security.BOGUS, verdict


def test_f2_control_cname_to_a_proven_nxdomain_is_secure() -> None:
    # RFC 6604: NXDOMAIN speaks of the last name of a CNAME chain
    tree = Tree()
    zone = tree.add_zone("example.")
    tree.add("example.", "SOA", "ns.example. host.example. 1 3600 600 86400 300")
    tree.add("alias.example.", "CNAME", "gone.example.")
    tree.add("example.", "NSEC", "alias.example. SOA NS DNSKEY RRSIG NSEC")
    tree.add("alias.example.", "NSEC", "example. CNAME RRSIG NSEC")
    reply = reply_to("alias.example.", "A", dns.rcode.NXDOMAIN)
    reply.answer += signed(zone, "alias.example.", "CNAME")
    reply.authority += signed(zone, "example.", "SOA") + signed(zone, "alias.example.", "NSEC")
    reply.authority += signed(zone, "example.", "NSEC")
    verdict = judge(tree, reply, "alias.example.", "A")
    assert verdict.security == Security.SECURE, verdict


# -- F3: only validated records reach the client --------------------------------------------------
def with_extras(zone: Zone) -> dns.message.Message:
    reply = reply_to("mail.example.", "A")
    reply.answer += signed(zone, "mail.example.", "A")
    reply.answer.append(dns.rrset.from_text("mail.example.", 300, "IN", "CNAME", "evil.attacker."))
    reply.answer.append(dns.rrset.from_text("www.bank.example.", 300, "IN", "A", "6.6.6.6"))
    reply.authority.append(dns.rrset.from_text("example.", 300, "IN", "NS", "ns.attacker."))
    reply.additional.append(dns.rrset.from_text("ns.attacker.", 300, "IN", "A", "6.6.6.6"))
    return reply


@pytest.mark.parametrize("dnssec_records", [True, False])
def test_f3_unsigned_extras_are_not_passed_on(dnssec_records: bool) -> None:
    from stubby_py.dnssec.validate import render

    tree, zone = wild_tree()
    reply = with_extras(zone)
    verdict = judge(tree, reply, "mail.example.", "A")
    assert verdict.security == Security.SECURE, verdict
    out = parsed(render(reply, verdict, dnssec_records))
    text = out.to_text()
    for junk in ("evil.attacker", "bank.example", "ns.attacker", "6.6.6.6"):
        assert junk not in text
    assert out.authority == [] and out.additional == []
    answer = {(str(r.name), dns.rdatatype.to_text(r.rdtype)) for r in out.answer}
    expected = {("mail.example.", "A")}
    if dnssec_records:
        expected.add(("mail.example.", "RRSIG"))
    assert answer == expected
    a = out.find_rrset(out.answer, name("mail.example."), dns.rdataclass.IN, A)
    assert [rd.to_text() for rd in a] == ["192.0.2.25"]
    assert out.id == reply.id and out.question == reply.question


@pytest.mark.parametrize("dnssec_records", [True, False])
def test_f3_negative_answer_keeps_only_its_proof(dnssec_records: bool) -> None:
    from stubby_py.dnssec.validate import render

    tree, zone = wild_tree()
    reply = reply_to("mail.example.", "AAAA")
    reply.authority += signed(zone, "example.", "SOA") + signed(zone, "mail.example.", "NSEC")
    reply.authority.append(dns.rrset.from_text("example.", 300, "IN", "NS", "ns.attacker."))
    reply.additional.append(dns.rrset.from_text("ns.attacker.", 300, "IN", "A", "6.6.6.6"))
    verdict = judge(tree, reply, "mail.example.", "AAAA")
    assert verdict.security == Security.SECURE, verdict
    out = parsed(render(reply, verdict, dnssec_records))
    assert out.answer == [] and out.additional == []
    expected = {"SOA", "NSEC", "RRSIG"} if dnssec_records else {"SOA"}
    assert section_types(out.authority) == expected
    assert "attacker" not in out.to_text()


# -- F4: a chain too long to follow is not secure -------------------------------------------------
def cname_chain(links: int, sign_target: bool) -> tuple[Tree, dns.message.Message]:
    tree, zone = wild_tree()
    for i in range(links):
        tree.add(f"c{i}.example.", "CNAME", f"c{i + 1}.example." if i < links - 1 else "t.example.")
    reply = reply_to("c0.example.", "A")
    for i in range(links):
        reply.answer += signed(zone, f"c{i}.example.", "CNAME")
    if sign_target:
        tree.add("t.example.", "A", "192.0.2.7")
        reply.answer += signed(zone, "t.example.", "A")
    else:
        reply.answer.append(dns.rrset.from_text("t.example.", 300, "IN", "A", "6.6.6.6"))
    return tree, reply


@pytest.mark.parametrize("links", sorted({MAX_CHAIN - 1, MAX_CHAIN, MAX_CHAIN + 1, 13}))
def test_f4_signed_cnames_to_a_forged_tail_are_bogus(links: int) -> None:
    tree, reply = cname_chain(links, sign_target=False)
    verdict = judge(tree, reply, "c0.example.", "A")
    assert verdict.security == Security.BOGUS, verdict


def test_f4_control_short_signed_chain_is_secure() -> None:
    tree, reply = cname_chain(3, sign_target=True)
    assert judge(tree, reply, "c0.example.", "A").security == Security.SECURE


# -- F5: KeyTrap (CVE-2023-50387) ----------------------------------------------------------------
def key_tag(rdata: bytes) -> int:
    """RFC 4034 Appendix B."""
    acc = sum(byte << 8 if i % 2 == 0 else byte for i, byte in enumerate(rdata))
    acc += (acc >> 16) & 0xFFFF
    return acc & 0xFFFF


def colliding_keys(count: int, tag: int) -> list[DNSKEY]:
    """`count` distinct Ed25519 zone keys that all have key tag `tag`: 30 random bytes, and the
    last two chosen to make the checksum come out right."""
    keys: list[DNSKEY] = []
    while len(keys) < count:
        head = bytes([1, 0, 3, ED25519]) + os.urandom(30)  # flags 256, protocol 3
        partial = key_tag(head + b"\0\0")
        for carry in range(4):
            last = (tag - partial - carry) & 0xFFFF
            rdata = head + last.to_bytes(2, "big")
            if key_tag(rdata) == tag:
                break
        else:
            continue
        key = dns.rdata.from_wire(dns.rdataclass.IN, dns.rdatatype.DNSKEY, rdata, 0, len(rdata))
        assert isinstance(key, DNSKEY)
        ed25519.Ed25519PublicKey.from_public_bytes(key.key)  # a key the library will load
        assert dns.dnssec.key_id(key) == tag
        keys.append(key)
    return keys


@pytest.fixture
def count_verifications(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Counts Ed25519 public-key operations, however the validator reaches them."""
    calls = [0]
    original = PublicEDDSA.verify

    def verify(self: PublicEDDSA, signature: bytes, data: bytes) -> None:
        calls[0] += 1
        original(self, signature, data)

    monkeypatch.setattr(PublicEDDSA, "verify", verify)
    yield calls


def test_f5_keytrap_is_cut_short(
    monkeypatch: pytest.MonkeyPatch, count_verifications: list[int]
) -> None:
    from stubby_py.dnssec.verify import Budget

    budgets: list[Budget] = []
    original_init = Budget.__init__

    def init(self: Budget) -> None:
        original_init(self)
        budgets.append(self)

    monkeypatch.setattr(Budget, "__init__", init)

    keys_n = sigs_n = 100
    tree = Tree()
    tree.add_zone("example.")
    evil = tree.add_zone("evil.example.")
    tag = dns.dnssec.key_id(evil.dnskey) ^ 0x5555
    keyset = next(r for r in evil.rrsets if r.rdtype == dns.rdatatype.DNSKEY)
    for key in colliding_keys(keys_n, tag):
        keyset.add(key)
    tree.sign(evil, keyset)  # the zone's own, valid KSK vouches for all of them
    assert len(keyset) == keys_n + 1
    rrset = dns.rrset.from_text("www.evil.example.", 300, "IN", "A", "192.0.2.1")
    sigs = [junk_rrsig("A", "evil.example.", tag, 3) for _ in range(sigs_n)]
    reply = reply_to("www.evil.example.", "A")
    reply.answer += [rrset, dns.rrset.from_rdata_list(rrset.name, 300, sigs)]
    assert len(reply.answer[1]) == sigs_n

    started = time.perf_counter()
    verdict = judge(tree, reply, "www.evil.example.", "A")
    elapsed = time.perf_counter() - started

    assert elapsed < 2.0
    # out of budget: this query fails (EDE 5, DNSSEC Indeterminate), nothing is concluded for others
    assert verdict.security == Security.INDETERMINATE, verdict
    assert verdict.ede == EDECode.DNSSEC_INDETERMINATE
    assert "limit" in verdict.reason.lower()
    assert budgets, "the validator made no verify.Budget"
    assert max(b.spent for b in budgets) <= Budget.MAX_VERIFICATIONS
    assert count_verifications[0] <= Budget.MAX_VERIFICATIONS


# -- F6: one answer, a bounded number of questions ------------------------------------------------
def assert_bounded(asked: list[list[tuple[dns.name.Name, int]]]) -> None:
    assert sum(map(len, asked)) <= 64, [len(r) for r in asked]
    assert max(map(len, asked), default=0) <= 8, [len(r) for r in asked]


@pytest.mark.parametrize("depth", [20, 39, 120])
def test_f6_unsigned_answer_at_a_deep_name_in_a_secure_zone(depth: int) -> None:
    tree, zone = wild_tree()
    deny_below(tree, zone, ("*.example.", "NSEC"), ("mail.example.", "NSEC"))
    deep = ".".join(["a"] * depth) + ".example."
    reply = reply_to(deep, "A")
    reply.answer.append(dns.rrset.from_text(deep, 300, "IN", "A", "6.6.6.6"))
    verdict = judge(tree, reply, deep, "A")
    assert verdict.security in (Security.BOGUS, Security.INDETERMINATE), verdict
    assert_bounded(tree.asked)


@pytest.mark.parametrize("depth", [20, 39, 120])
def test_f6_deep_signer_named_by_a_junk_rrsig(depth: int) -> None:
    # a good wildcard answer at a deep name, plus an RRSIG whose signer is that name: the walk
    # to that signer asks DS and DNSKEY for every label between it and example.
    tree, zone = wild_tree()
    deny_below(tree, zone, ("*.example.", "NSEC"), ("mail.example.", "NSEC"))
    deep = ".".join(["x"] * depth) + ".example."
    record, sig = signed(zone, "*.example.", "A")
    sigs = moved(sig, deep)
    sigs.add(junk_rrsig("A", deep, 1, len(name(deep)) - 1))
    reply = reply_to(deep, "A")
    reply.answer += [moved(record, deep), sigs]
    reply.authority += signed(zone, "mail.example.", "NSEC")  # covers the name: no closer match
    judge(tree, reply, deep, "A")
    assert_bounded(tree.asked)


def test_f6_unsigned_answer_at_a_very_deep_name_below_an_insecure_cut() -> None:
    tree = Tree()
    tree.add_zone("com.")
    tree.add("com.", "SOA", "ns.com. h.com. 1 3600 600 86400 300")
    tree.add_zone("insecure.com.", signed=False)
    deep = ".".join(["a"] * 120) + ".insecure.com."
    reply = reply_to(deep, "A")
    reply.answer.append(dns.rrset.from_text(deep, 300, "IN", "A", "192.0.2.1"))
    verdict = judge(tree, reply, deep, "A")
    assert verdict.security != Security.SECURE, verdict
    assert_bounded(tree.asked)


# -- F7: the key chain's memory stays bounded, and the anchor's keys stay -------------------------
def test_f7_not_cuts_stay_bounded_and_root_keys_are_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    limit = 16
    monkeypatch.setattr(chain_module, "MAX_ENTRIES", limit)
    tree, example = wild_tree()
    tree.add("www.example.", "A", "192.0.2.1")
    zones = [tree.add_zone(f"z{i}.example.") for i in range(30)]
    for zone in zones:
        tree.add(str(zone.origin), "NSEC", f"{zone.origin} NS SOA DNSKEY RRSIG NSEC", zone=zone)

    def tamper(reply: dns.message.Message) -> None:
        # names below each z<i>.example. do not exist: its apex NSEC covers them (and the wildcard)
        question = reply.question[0]
        zone = tree.zone_for(question.name)
        if question.rdtype == dns.rdatatype.DS and question.name != zone.origin:
            reply.set_rcode(dns.rcode.NXDOMAIN)
            reply.answer.clear()
            reply.authority[:] = signed(zone, str(zone.origin), "NSEC")

    tree.tamper = tamper
    chain = KeyChain(tree.anchors())
    validator = Validator(chain)
    for i, zone in enumerate(zones):
        deep = ".".join(["x"] * 20) + f".{zone.origin}"
        reply = reply_to(deep, "A")
        reply.answer.append(dns.rrset.from_text(deep, 300, "IN", "A", "6.6.6.6"))
        verdict = judge(tree, reply, deep, "A", validator, NOW + i)
        assert verdict.security != Security.SECURE
        assert len(chain._not_cuts) <= limit
        assert len(chain._zones) <= limit
    assert chain.cached(ROOT, NOW + 30) is not None
    # and the kept root keys are used: a fresh answer does not ask for them again
    tree.tamper = None
    tree.asked.clear()
    www = reply_to("www.example.", "A")
    www.answer += signed(example, "www.example.", "A")
    assert judge(tree, www, "www.example.", "A", validator, NOW + 31).security == Security.SECURE
    assert all((ROOT, dns.rdatatype.DNSKEY) not in round_ for round_ in tree.asked)


# -- F8: ANY answers are validated ----------------------------------------------------------------
def test_f8_forged_unsigned_any_answer_is_bogus() -> None:
    tree, _ = wild_tree()
    forged = reply_to("mail.example.", "ANY")
    forged.answer.append(dns.rrset.from_text("mail.example.", 300, "IN", "A", "6.6.6.6"))
    verdict = judge(tree, forged, "mail.example.", "ANY")
    assert verdict.security == Security.BOGUS, verdict


def test_f8_signed_any_answer_with_one_forged_rrset_is_bogus() -> None:
    tree, zone = wild_tree()
    forged = reply_to("mail.example.", "ANY")
    forged.answer += signed(zone, "mail.example.", "A") + signed(zone, "mail.example.", "MX")
    forged.answer.append(dns.rrset.from_text("mail.example.", 300, "IN", "AAAA", "2001:db8::6"))
    verdict = judge(tree, forged, "mail.example.", "ANY")
    assert verdict.security == Security.BOGUS, verdict


def test_f8_signed_any_answer_is_secure() -> None:
    tree, zone = wild_tree()
    reply = reply_to("mail.example.", "ANY")
    for rdtype in ("A", "MX", "TLSA", "NSEC"):
        reply.answer += signed(zone, "mail.example.", rdtype)
    verdict = judge(tree, reply, "mail.example.", "ANY")
    assert verdict.security == Security.SECURE, verdict


# -- F10: a failed fetch is indeterminate, and not remembered -------------------------------------
@pytest.mark.parametrize("zone_name", [".", "example."])
def test_f10_dnskey_servfail_once_is_indeterminate_then_secure(zone_name: str) -> None:
    tree, zone = wild_tree()
    servfails = [0]

    def servfail(reply: dns.message.Message) -> None:
        question = reply.question[0]
        if question.rdtype == dns.rdatatype.DNSKEY and question.name == name(zone_name):
            reply.answer.clear()
            reply.set_rcode(dns.rcode.SERVFAIL)
            servfails[0] += 1

    tree.tamper = servfail
    validator = Validator(KeyChain(tree.anchors()))
    reply = reply_to("mail.example.", "A")
    reply.answer += signed(zone, "mail.example.", "A")
    first = judge(tree, reply, "mail.example.", "A", validator, NOW)
    assert servfails[0] >= 1
    assert first.security == Security.INDETERMINATE, first
    tree.tamper = None
    again = judge(tree, reply, "mail.example.", "A", validator, NOW + 1)
    assert again.security == Security.SECURE, again


# -- L1: a junk RRSIG must not spoil a good one ---------------------------------------------------
def test_l1_junk_rrsig_by_a_deeper_non_zone_signer_is_ignored() -> None:
    tree, zone = wild_tree()
    record, sig = signed(zone, "mail.example.", "A")
    sigs = moved(sig, "mail.example.")
    sigs.add(junk_rrsig("A", "mail.example.", 1, 2))
    reply = reply_to("mail.example.", "A")
    reply.answer += [record, sigs]
    verdict = judge(tree, reply, "mail.example.", "A")
    assert verdict.security == Security.SECURE, verdict


# -- L2: another zone's NSEC/NSEC3 in the authority section is ignored ---------------------------
def foreign_nsec(tree: Tree, sub: Zone) -> list[dns.rrset.RRset]:
    tree.add("sub.example.", "NSEC", "sub.example. NS SOA DNSKEY RRSIG NSEC", zone=sub)
    return signed(sub, "sub.example.", "NSEC")


def foreign_nsec3(tree: Tree, sub: Zone) -> list[dns.rrset.RRset]:
    owner = dns.dnssec.nsec3_hash("sub.example.", None, 0, 1) + ".sub.example."
    tree.add(owner, "NSEC3", "1 0 0 - " + "0" * 32 + " NS SOA DNSKEY RRSIG", zone=sub)
    return signed(sub, owner, "NSEC3")


@pytest.mark.parametrize("make", [foreign_nsec, foreign_nsec3], ids=["nsec", "nsec3"])
def test_l2_other_zones_denial_records_are_ignored(
    make: Callable[[Tree, Zone], list[dns.rrset.RRset]],
) -> None:
    tree, zone = wild_tree()
    sub = tree.add_zone("sub.example.")
    reply = reply_to("mail.example.", "AAAA")
    reply.authority += signed(zone, "example.", "SOA") + signed(zone, "mail.example.", "NSEC")
    reply.authority += make(tree, sub)
    verdict = judge(tree, reply, "mail.example.", "AAAA")
    assert verdict.security == Security.SECURE, verdict


def test_a_spent_budget_does_not_mark_a_zone_bogus_for_other_queries() -> None:
    """Review finding: a query that spent its verification budget on an attacker's records
    (junk signatures along a CNAME chain) must not leave an honest zone cached as bogus."""
    tree = Tree()
    tree.add_zone("example.")
    tree.add_zone("victim.example.")
    chain = KeyChain(tree.anchors())
    spent = Budget()
    spent.spent = Budget.MAX_VERIFICATIONS  # as if the query's earlier links took it all
    result = tree.drive(chain.keys_for(name("victim.example."), NOW, spent))
    assert result.security == Security.INDETERMINATE, result
    assert chain.cached(name("victim.example."), NOW) is None
    assert chain.cached(dns.name.root, NOW) is None  # nothing concluded on an empty budget
    fresh = tree.drive(chain.keys_for(name("victim.example."), NOW, Budget()))
    assert fresh.security == Security.SECURE, fresh
