"""Records and signed data read from a reply's octets (dnssec/records.py) are what dnspython
makes of the same octets, and the validator's fast path (Validator.validate_answer) comes to
the verdict and the client's reply the full path comes to, or leaves the answer to it."""

from __future__ import annotations

import random
import struct
from collections.abc import Iterator

import dns.dnssec
import dns.flags
import dns.message
import dns.name
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import pytest
from dns.rdtypes.ANY.RRSIG import RRSIG
from hypothesis import given, settings
from hypothesis import strategies as st

from stubby_py.core.wire import WireError
from stubby_py.dnssec import records
from stubby_py.dnssec.chain import KeyChain
from stubby_py.dnssec.outcome import Security
from stubby_py.dnssec.validate import Validator
from tests.signed_zones import NOW, Tree, message, name

# -- canonical form against dnspython ------------------------------------------------------------

#: RDATA texts by type; {n} is a name (random case), {h} a hostname-ish label
_TEMPLATES = {
    "A": ["192.0.2.{i}"],
    "AAAA": ["2001:db8::{i}"],
    "TXT": ['"Text {n} {i}"'],
    "NS": ["{n}"],
    "CNAME": ["{n}"],
    "PTR": ["{n}"],
    "DNAME": ["{n}"],
    "MX": ["{i} {n}"],
    "AFSDB": ["{i} {n}"],
    "RT": ["{i} {n}"],
    "KX": ["{i} {n}"],
    "SRV": ["{i} 5 853 {n}"],
    "SOA": ["{n} {n2} {i} 7200 900 1209600 300"],
    "RP": ["{n} {n2}"],
    "PX": ["{i} {n} {n2}"],
    "NSEC": ["{n} A RRSIG NSEC"],
    "DS": ["{i} 13 2 " + "ab" * 32],
    "HINFO": ['"Cpu{i}" "Os"'],
}
_LABELS = ["Www", "mail", "EXAMPLE", "Test", "a", "b-c", "xN--Z", "sub"]


def _random_name(rnd: random.Random, depth: int | None = None) -> str:
    depth = rnd.randint(1, 4) if depth is None else depth
    labels = [
        "".join(c.upper() if rnd.random() < 0.5 else c.lower() for c in rnd.choice(_LABELS))
        for _ in range(depth)
    ]
    return ".".join(labels) + "."


def _signed_reply(seed: int) -> bytes:
    """A reply of a few RRsets and RRSIGs over them, as single records in a random order,
    rendered by dnspython with name compression; owner and RDATA names in random case."""
    rnd = random.Random(seed)
    shared = [_random_name(rnd) for _ in range(3)]  # names repeated: compression points at them
    msg = dns.message.make_response(dns.message.make_query(shared[0], "A"))
    parts: list[tuple[int, dns.rrset.RRset]] = []
    chosen = {(rnd.choice(shared), rnd.choice(list(_TEMPLATES))) for _ in range(rnd.randint(1, 3))}
    for owner_text, rdtype in sorted(chosen):
        owner = dns.name.from_text(owner_text)
        section = rnd.randint(0, 1)
        texts = []
        singleton = dns.rdatatype.is_singleton(dns.rdatatype.from_text(rdtype))
        for _ in range(1 if singleton else rnd.randint(1, 4)):
            text = rnd.choice(_TEMPLATES[rdtype]).format(
                i=rnd.randint(1, 9), n=rnd.choice([*shared, _random_name(rnd)]),
                n2=_random_name(rnd),
            )  # fmt: skip
            texts.append(text)
        for text in texts:
            rrset = dns.rrset.from_text(owner, 300, "IN", rdtype, text)
            parts.append((section, rrset))
        labels = len(owner) - 1 - rnd.randint(0, len(owner) - 2)  # wildcard expansions too
        signer = owner.split(rnd.randint(1, len(owner)))[1]
        for tag in range(rnd.randint(1, 2)):
            sig = (f"{rdtype} 13 {labels} 300 20300101000000 20200101000000 {tag} "
                   f"{signer.to_text().swapcase()} AAAA")  # fmt: skip
            parts.append((section, dns.rrset.from_text(owner, 300, "IN", "RRSIG", sig)))
    rnd.shuffle(parts)
    for section, rrset in parts:
        (msg.answer if section == 0 else msg.authority).append(rrset)
    return msg.to_wire()


def signature_pairs(wire: bytes) -> Iterator[tuple[dns.rrset.RRset, RRSIG]]:
    """Every RRSIG of the reply (as dnspython parses it) with the RRset it covers."""
    msg = dns.message.from_wire(wire)
    for section in (msg.answer, msg.authority):
        for rrsig_set in section:
            if rrsig_set.rdtype != dns.rdatatype.RRSIG:
                continue
            covered = msg.find_rrset(section, rrsig_set.name, rrsig_set.rdclass, rrsig_set.covers)
            for rrsig in rrsig_set:
                yield covered, rrsig


def _theirs(wire: bytes) -> set[bytes]:
    """dnspython's signed data for every RRSIG of the reply over the RRset it covers."""
    return {
        dns.dnssec._make_rrsig_signature_data(covered, rrsig)
        for covered, rrsig in signature_pairs(wire)
    }


def _ours(wire: bytes) -> set[bytes]:
    read = records.read_records(wire)
    found = set()
    for record in read:
        if record.rtype != records.RRSIG:
            continue
        sig = records.signature(record)
        rdatas = [
            r.rdata
            for r in read
            if r.section == record.section and r.owner == record.owner
            and r.rtype == sig.type_covered and r.rdata is not None
        ]  # fmt: skip
        found.add(records.signed_data(sig, record.owner, sig.type_covered, record.rclass, rdatas))
    return found


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=0, max_value=2**32))
def test_signed_data_is_dnspythons_for_random_signed_rrsets(seed: int) -> None:
    wire = _signed_reply(seed)
    assert _ours(wire) == _theirs(wire)


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=2**32))
def test_each_records_canonical_form_is_dnspythons(seed: int) -> None:
    wire = _signed_reply(seed)
    msg = dns.message.from_wire(wire)
    theirs = {
        (rrset.name.to_digestable(), rrset.rdtype, rdata.to_digestable())
        for section in (msg.answer, msg.authority)
        for rrset in section
        for rdata in rrset
    }
    ours = {(r.owner, r.rtype, r.rdata) for r in records.read_records(wire)}
    assert ours == theirs


def test_names_in_rdata_are_lowercased_where_rfc_4034_says_and_nsec_keeps_its_case() -> None:
    msg = dns.message.make_response(dns.message.make_query("WwW.Example.", "MX"))
    msg.answer.append(dns.rrset.from_text("WwW.Example.", 60, "IN", "MX", "10 Mail.EXAMPLE."))
    msg.answer.append(dns.rrset.from_text("WwW.Example.", 60, "IN", "NSEC", "Next.EXAMPLE. MX"))
    read = records.read_records(msg.to_wire())
    assert [r.owner for r in read] == [b"\x03www\x07example\x00"] * 2
    assert read[0].rdata == b"\x00\x0a\x04mail\x07example\x00"
    assert read[1].rdata is not None and read[1].rdata.startswith(b"\x04Next\x07EXAMPLE\x00")


def test_a_compressed_owner_and_rdata_name_are_read_through_their_pointers() -> None:
    msg = dns.message.make_response(dns.message.make_query("example.", "NS"))
    msg.answer.append(dns.rrset.from_text("example.", 60, "IN", "NS", "ns.example."))
    wire = msg.to_wire()
    assert wire.count(b"\x07example") == 1  # the answer's names are pointers
    (ns,) = records.read_records(wire)
    assert ns.owner == b"\x07example\x00"
    assert ns.rdata == b"\x02ns\x07example\x00"


def test_a_type_whose_layout_is_not_known_has_no_canonical_form() -> None:
    msg = dns.message.make_response(dns.message.make_query("example.", "NAPTR"))
    msg.answer.append(
        dns.rrset.from_text("example.", 60, "IN", "NAPTR", '1 1 "u" "E2U+sip" "" sip.example.')
    )
    (naptr,) = records.read_records(msg.to_wire())
    assert naptr.rtype == 35 and naptr.rdata is None


def _header(ancount: int) -> bytes:
    """A header and the question a. A: the first record begins at octet 19 (0x13)."""
    return struct.pack("!HHHHHH", 1, 0x8180, 1, ancount, 0, 0) + b"\x01a\x00\x00\x01\x00\x01"


@pytest.mark.parametrize(
    "record",
    [
        b"\xc0\x13" + b"\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04\x7f\x00\x00\x01",  # to itself
        b"\xc0\x40" + b"\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04\x7f\x00\x00\x01",  # forward
        b"\x80abc\x00" + b"\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04\x7f\x00\x00\x01",  # label type
        b"\xc0\x0c" + b"\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x08\x7f\x00\x00\x01",  # RDATA past end
        b"\xc0\x0c" + b"\x00\x02\x00\x01\x00\x00\x00\x3c\x00\x02\xc0\x1f",  # NS name: to itself
        b"\xc0\x0c" + b"\x00\x0f\x00\x01\x00\x00\x00\x3c\x00\x06\x00\x01\x01x\x00\x00",  # MX: extra
        b"\xc0\x02" + b"\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04\x7f\x00\x00\x01",  # header
        b"\xc0\x0c" + b"\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04\x7f\x00\x00\x01\x00",  # junk
        b"\x3f" + b"a" * 63 * 5,  # a name longer than 255 octets, past the end too
    ],
)
def test_malformed_records_raise_wire_error(record: bytes) -> None:
    with pytest.raises(WireError):
        records.read_records(_header(1) + record)


def test_a_truncated_reply_raises_wire_error_wherever_it_is_cut() -> None:
    wire = _signed_reply(7)
    for cut in range(len(wire)):
        try:
            records.read_records(wire[:cut])
        except WireError:
            continue
        # a cut that falls between records leaves a shorter but well-formed prefix only when the
        # counts say fewer records; these counts say more, so every cut must fail
        pytest.fail(f"cut at {cut} of {len(wire)} read without an error")


# -- the fast path against the full path --------------------------------------------------------


@pytest.fixture
def tree() -> Tree:
    tree = Tree()
    tree.add_zone("example.")
    tree.add("www.example.", "A", "192.0.2.1", "192.0.2.2", "192.0.2.3")
    tree.add("mail.example.", "MX", "10 MX1.Example.", "20 mx2.example.")
    tree.add("*.wild.example.", "A", "192.0.2.9")
    return tree


def _warm(tree: Tree, validator: Validator, qname: str = "www.example.") -> None:
    """The full path once, so the zone's keys are known."""
    verdict = tree.drive(validator.validate(message(tree, qname, "A"), name(qname), 1, NOW))
    assert verdict.security == Security.SECURE


def _full(tree: Tree, wire: bytes, qname: str, qtype: int, do: bool) -> tuple[object, bytes]:
    validator = Validator(KeyChain(tree.anchors(), skew=300))
    msg = dns.message.from_wire(wire)
    verdict = tree.drive(validator.validate(msg, name(qname), qtype, NOW))
    return verdict, validator.render(msg, verdict, do, wire)


@pytest.mark.parametrize("do", [True, False])
@pytest.mark.parametrize("qname,rdtype", [("www.example.", "A"), ("mail.example.", "MX")])
def test_the_fast_path_comes_to_the_full_paths_verdict_and_reply(
    tree: Tree, qname: str, rdtype: str, do: bool
) -> None:
    validator = Validator(KeyChain(tree.anchors(), skew=300))
    _warm(tree, validator)
    msg = message(tree, qname, rdtype)
    msg.authority.append(dns.rrset.from_text("example.", 60, "IN", "NS", "ns.example."))
    wire = msg.to_wire()
    qtype = dns.rdatatype.from_text(rdtype)
    found = validator.validate_answer(wire, name(qname.upper()).to_wire(), qtype, do, NOW)
    assert found is not None
    verdict, body = found
    full_verdict, full_body = _full(tree, wire, qname, qtype, do)
    assert verdict.security == Security.SECURE == full_verdict.security  # type: ignore[attr-defined]
    assert verdict.ttl_cap == full_verdict.ttl_cap  # type: ignore[attr-defined]
    assert verdict.chain == full_verdict.chain  # type: ignore[attr-defined]
    assert body == full_body


@pytest.mark.parametrize("do", [True, False])
def test_rrsigs_before_the_data_and_the_data_split_still_take_the_fast_path(
    tree: Tree, do: bool
) -> None:
    validator = Validator(KeyChain(tree.anchors(), skew=300))
    _warm(tree, validator)
    msg = message(tree, "www.example.", "A")
    data, sig = msg.answer
    first, *rest = list(data)
    msg.answer = [sig, dns.rrset.from_rdata(data.name, data.ttl, first)]
    msg.answer += [dns.rrset.from_rdata(data.name.to_text().upper(), data.ttl, r) for r in rest]
    wire = msg.to_wire()
    found = validator.validate_answer(wire, name("www.example.").to_wire(), 1, do, NOW)
    assert found is not None and found[0].security == Security.SECURE
    assert found[1] == _full(tree, wire, "www.example.", 1, do)[1]
    assert [r.rdtype for r in dns.message.from_wire(found[1]).answer] == ([46, 1] if do else [1])


def _tampered_byte(wire: bytes, old: bytes, new: bytes) -> bytes:
    assert wire.count(old) == 1
    return wire.replace(old, new)


@pytest.mark.parametrize(
    "what",
    ["changed data", "keys not known", "another name", "wildcard", "truncated", "servfail",
     "rrsig query"],
)  # fmt: skip
def test_what_the_fast_path_does_not_vouch_for_it_leaves_to_the_full_path(
    tree: Tree, what: str
) -> None:
    validator = Validator(KeyChain(tree.anchors(), skew=300))
    if what != "keys not known":
        _warm(tree, validator)
    qname, qtype = "www.example.", 1
    wire = message(tree, qname, "A").to_wire()
    if what == "changed data":
        wire = _tampered_byte(wire, bytes([192, 0, 2, 2]), bytes([192, 0, 2, 66]))
    elif what == "another name":
        msg = message(tree, qname, "A")
        msg.answer += message(tree, "mail.example.", "MX").answer
        wire = msg.to_wire()
    elif what == "wildcard":
        qname = "x.wild.example."
        wire = message(tree, "*.wild.example.", "A").to_wire()
        msg = dns.message.from_wire(wire)
        for rrset in msg.answer:
            rrset.name = name(qname)
        wire = msg.to_wire()
    elif what == "truncated":
        wire = wire[:-7]
    elif what == "servfail":
        wire = wire[:3] + bytes([wire[3] | 2]) + wire[4:]
    elif what == "rrsig query":
        qtype = dns.rdatatype.RRSIG
    assert validator.validate_answer(wire, name(qname).to_wire(), qtype, True, NOW) is None
    if what == "changed data":  # and the full path finds it bogus
        msg = dns.message.from_wire(wire)
        verdict = tree.drive(validator.validate(msg, name(qname), qtype, NOW))
        assert verdict.security == Security.BOGUS


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_damaged_replies_never_crash_the_fast_path(data: st.DataObject) -> None:
    tree = Tree()
    tree.add_zone("example.")
    tree.add("www.example.", "A", "192.0.2.1")
    validator = Validator(KeyChain(tree.anchors(), skew=300))
    _warm(tree, validator)
    wire = bytearray(message(tree, "www.example.", "A").to_wire())
    for _ in range(data.draw(st.integers(1, 4))):
        index = data.draw(st.integers(0, len(wire) - 1))
        wire[index] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(wire)))
    found = validator.validate_answer(bytes(wire[:cut]), name("www.example.").to_wire(), 1,
                                      True, NOW)  # fmt: skip
    if found is not None:  # what still verifies is the signed data, and nothing else
        kept = dns.message.from_wire(found[1])
        assert [r.rdtype for r in kept.answer] in ([1, 46], [46, 1])
        assert {rd.to_text() for rd in kept.answer[0] if kept.answer[0].rdtype == 1} <= {
            "192.0.2.1"
        }
