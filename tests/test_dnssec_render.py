"""The client's reply copied from the received octets (validate.render_wire) is the reply
dnspython would render (validate.render), or the copy is refused and dnspython renders."""

from __future__ import annotations

import struct

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import pytest

from stubby_py.dnssec.outcome import Security, Verdict
from stubby_py.dnssec.validate import render, render_wire

SIG = "13 3 300 20300101000000 20200101000000 12345 pos.test. AAAA"


def sig(covered: str) -> str:
    return f"{covered} {SIG}"


def reply(
    qname: str,
    qtype: str,
    answer: list[tuple[str, str, str]],
    authority: list[tuple[str, str, str]] = (),  # type: ignore[assignment]
    additional: list[tuple[str, str, str]] = (),  # type: ignore[assignment]
    rcode: int = dns.rcode.NOERROR,
) -> bytes:
    query = dns.message.make_query(qname, qtype)
    message = dns.message.make_response(query)
    message.flags |= dns.flags.AA
    message.set_rcode(rcode)
    for section, records in (
        (message.answer, answer),
        (message.authority, authority),
        (message.additional, additional),
    ):
        for name, rdtype, text in records:
            section.append(dns.rrset.from_text(name, 300, "IN", rdtype, text))
    return message.to_wire()


def view(wire: bytes) -> tuple[object, ...]:
    """What a client sees: header, question and each section's RRsets (order aside)."""
    message = dns.message.from_wire(wire)

    def rrsets(section: list[dns.rrset.RRset]) -> set[tuple[object, ...]]:
        return {(r.name, r.rdtype, r.covers, frozenset(r)) for r in section}

    return (
        message.id,
        message.flags,
        tuple(message.question),
        rrsets(message.answer),
        rrsets(message.authority),
        rrsets(message.additional),
    )


POSITIVE = reply(
    "h1.pos.test.",
    "A",
    [("h1.pos.test.", "A", "192.0.2.1"), ("h1.pos.test.", "RRSIG", sig("A"))],
    [("h1.pos.test.", "RRSIG", sig("A"))],
    [("ns.test.", "A", "127.0.0.1")],
)
#: an NS record after an RRSIG: its RDATA holds a name, which might point into the RRSIG
WITH_NS = reply(
    "h1.pos.test.",
    "A",
    [("h1.pos.test.", "A", "192.0.2.1"), ("h1.pos.test.", "RRSIG", sig("A"))],
    [("pos.test.", "NS", "ns.test."), ("pos.test.", "RRSIG", sig("NS"))],
    [("ns.test.", "A", "127.0.0.1")],
)
NXDOMAIN_SOA_FIRST = reply(
    "nx.pos.test.",
    "A",
    [],
    [
        ("pos.test.", "SOA", "ns.test. hostmaster.test. 1 3600 600 86400 300"),
        ("pos.test.", "RRSIG", sig("SOA")),
        ("h0.pos.test.", "NSEC", "z.pos.test. A RRSIG NSEC"),
        ("h0.pos.test.", "RRSIG", sig("NSEC")),
    ],
    rcode=dns.rcode.NXDOMAIN,
)
#: an NSEC before the SOA: left out for a client without DO, the SOA after it would move
NXDOMAIN_NSEC_FIRST = reply(
    "nx.pos.test.",
    "A",
    [],
    [
        ("h0.pos.test.", "NSEC", "z.pos.test. A RRSIG NSEC"),
        ("pos.test.", "SOA", "ns.test. hostmaster.test. 1 3600 600 86400 300"),
    ],
    rcode=dns.rcode.NXDOMAIN,
)


def kept_all(wire: bytes) -> tuple[dns.message.Message, Verdict]:
    message = dns.message.from_wire(wire)
    kept = (tuple(message.answer), tuple(message.authority))
    return message, Verdict(Security.SECURE, kept=kept)


@pytest.mark.parametrize("wire", [POSITIVE, NXDOMAIN_SOA_FIRST], ids=["positive", "nxdomain"])
@pytest.mark.parametrize("do", [False, True])
@pytest.mark.parametrize("examined", [True, False])
def test_the_copy_is_what_dnspython_renders(wire: bytes, do: bool, examined: bool) -> None:
    message, verdict = kept_all(wire)
    if not examined:
        verdict = Verdict(Security.INSECURE)  # kept None: all but the DNSSEC records
    copied = render_wire(wire, message, verdict, do)
    assert copied is not None
    assert view(copied) == view(render(message, verdict, do))


def test_only_the_kept_rrsets_are_copied() -> None:
    message = dns.message.from_wire(POSITIVE)
    verdict = Verdict(Security.SECURE, kept=(tuple(message.answer), ()))
    for do in (False, True):
        copied = render_wire(POSITIVE, message, verdict, do)
        assert copied is not None
        assert view(copied) == view(render(message, verdict, do))
        got = dns.message.from_wire(copied)
        assert not got.authority and not got.additional
        assert len(got.answer) == (2 if do else 1)


def test_a_record_that_would_move_past_a_left_out_one_is_not_copied() -> None:
    message, verdict = kept_all(NXDOMAIN_NSEC_FIRST)
    assert render_wire(NXDOMAIN_NSEC_FIRST, message, verdict, False) is None  # dnspython then
    copied = render_wire(NXDOMAIN_NSEC_FIRST, message, verdict, True)  # nothing left out
    assert copied is not None and view(copied) == view(render(message, verdict, True))


def test_a_record_with_a_name_in_its_rdata_after_a_left_out_one_is_not_copied() -> None:
    message, verdict = kept_all(WITH_NS)
    assert render_wire(WITH_NS, message, verdict, False) is None
    copied = render_wire(WITH_NS, message, verdict, True)  # only the additional section goes
    assert copied is not None and view(copied) == view(render(message, verdict, True))


def test_a_pointer_into_a_left_out_record_is_not_copied() -> None:
    """An A record whose owner points into an NSEC record left out: copied, it would point
    into whatever came to lie there."""
    question = b"\x02nx\x03pos\x04test\x00" + struct.pack("!HH", 1, 1)
    nsec_owner = 12 + len(question)
    nsec = (
        b"\x02h0\x03pos\x04test\x00"
        + struct.pack("!HHIH", 47, 1, 300, 13)
        + b"\x03pos\x04test\x00\x00\x01\x40"  # next name pos.test.; bitmap: window 0, A
    )
    a_record = struct.pack("!H", 0xC000 | nsec_owner) + struct.pack("!HHIH", 1, 1, 300, 4)
    a_record += bytes([192, 0, 2, 1])
    wire = struct.pack("!HHHHHH", 7, 0x8400, 1, 0, 2, 0) + question + nsec + a_record
    message = dns.message.from_wire(wire)
    assert render_wire(wire, message, Verdict(Security.INSECURE), False) is None
    verdict = Verdict(Security.SECURE, kept=((), tuple(message.authority)))
    assert render_wire(wire, message, verdict, False) is None


def test_an_rrset_the_validator_made_is_not_copied() -> None:
    message = dns.message.from_wire(POSITIVE)
    made = dns.rrset.from_text("h1.pos.test.", 300, "IN", "A", "192.0.2.1")
    verdict = Verdict(Security.SECURE, kept=((made,), ()))
    assert render_wire(POSITIVE, message, verdict, False) is None


def test_damaged_octets_are_not_copied() -> None:
    message, verdict = kept_all(POSITIVE)
    assert render_wire(POSITIVE[:-3], message, verdict, False) is None
    assert render_wire(POSITIVE + b"\x00", message, verdict, False) is None


def test_a_pointer_into_the_header_is_not_copied() -> None:
    """A name may point into the header (dnspython reads it), whose counts, ID and flags the copy
    rewrites: the name would change after it was validated, so dnspython renders instead."""
    question = b"\x02nx\x03pos\x04test\x00" + struct.pack("!HH", 1, 1)
    # owner: the label "\x00\x01" read from offset 10 (ARCOUNT), then the root (offset 12 is
    # not reached: the label at 10 is length 0 = the root itself)
    a_record = struct.pack("!H", 0xC000 | 10) + struct.pack("!HHIH", 1, 1, 300, 4)
    a_record += bytes([192, 0, 2, 1])
    wire = struct.pack("!HHHHHH", 7, 0x8400, 1, 1, 0, 0) + question + a_record
    message = dns.message.from_wire(wire)
    verdict = Verdict(Security.SECURE, kept=(tuple(message.answer), ()))
    assert render_wire(wire, message, verdict, True) is None
