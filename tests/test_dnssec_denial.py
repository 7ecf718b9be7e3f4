"""NSEC and NSEC3 denial proofs: NXDOMAIN, NODATA, wildcards, DS absence, opt-out, limits.

NSEC chains come from dnspython's own zone signer; NSEC3 chains are built here from a name list
(RFC 5155 §7.1), including the RFC 5155 Appendix A example zone. Responses are cut down to the
records a server would send, picked by a plain interval test independent of the module under
test.
"""

from __future__ import annotations

import base64
import functools

import dns.dnssec
import dns.name
import dns.rdata
import dns.rdatatype
import dns.rrset
import dns.zone
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stubby_py.dnssec.denial import (
    Denial,
    prove_no_ds,
    prove_nodata,
    prove_nxdomain,
    prove_wildcard_answer,
)

A = dns.rdatatype.A
AAAA = dns.rdatatype.AAAA
DS = dns.rdatatype.DS
MX = dns.rdatatype.MX
TXT = dns.rdatatype.TXT
PROVEN, OPT_OUT, INSECURE, NOT_PROVEN = (
    Denial.PROVEN,
    Denial.OPT_OUT,
    Denial.INSECURE,
    Denial.NOT_PROVEN,
)


def n(text: str) -> dns.name.Name:
    return dns.name.from_text(text)


EXAMPLE = n("example.")


# -- record builders and a server's choice of records -------------------------------------------


def nsec_chain(zone: dns.name.Name, entries: dict[str, str]) -> list[dns.rrset.RRset]:
    """A closed NSEC chain over `entries` (owner text -> types), in canonical order."""
    owners = sorted(n(owner) for owner in entries)
    types = {n(owner): kinds for owner, kinds in entries.items()}
    chain = []
    for index, owner in enumerate(owners):
        following = owners[(index + 1) % len(owners)]
        text = f"{following} {types[owner]} RRSIG NSEC"
        chain.append(dns.rrset.from_text(owner, 300, "IN", "NSEC", text))
    return chain


def nsec3_chain(
    zone: dns.name.Name,
    entries: dict[str, str],
    *,
    salt: str = "",
    iterations: int = 0,
    opt_out: bool = False,
    algorithm: int = 1,
    flags: int | None = None,
) -> list[dns.rrset.RRset]:
    """A closed NSEC3 chain over `entries` plus their empty non-terminals (RFC 5155 §7.1).
    Owners are written in lower case, as signers do."""
    names = {n(owner): kinds for owner, kinds in entries.items()}
    for name in list(names):
        for depth in range(len(zone), len(name)):
            names.setdefault(name.split(depth)[1], "")
    hashed = sorted(
        (dns.dnssec.nsec3_hash(name, salt or None, iterations, 1), kinds)
        for name, kinds in names.items()
    )
    flag_field = (1 if opt_out else 0) if flags is None else flags
    chain = []
    for index, (digest, kinds) in enumerate(hashed):
        following = hashed[(index + 1) % len(hashed)][0]
        text = f"{algorithm} {flag_field} {iterations} {salt or '-'} {following} {kinds}"
        owner = dns.name.from_text(digest.lower(), zone)
        chain.append(dns.rrset.from_text(owner, 300, "IN", "NSEC3", text.strip()))
    return chain


def _inside(low: object, value: object, high: object) -> bool:
    if low < high:  # type: ignore[operator]
        return bool(low < value < high)  # type: ignore[operator]
    return bool(value > low or value < high)  # type: ignore[operator]


def nsec_pick(chain: list[dns.rrset.RRset], *names: str) -> list[dns.rrset.RRset]:
    """The NSEC records matching or covering any of `names`."""
    picked = []
    for rrset in chain:
        following = rrset[0].next
        for name in map(n, names):
            if (rrset.name == name or _inside(rrset.name, name, following)) and (
                rrset not in picked
            ):
                picked.append(rrset)
    return picked


def nsec3_pick(
    chain: list[dns.rrset.RRset], *names: str, salt: str = "", iterations: int = 0
) -> list[dns.rrset.RRset]:
    """The NSEC3 records matching or covering the hash of any of `names`."""
    digests = [dns.dnssec.nsec3_hash(name, salt or None, iterations, 1) for name in names]
    picked = []
    for rrset in chain:
        owner = rrset.name.labels[0].decode().upper()
        following = base64.b32hexencode(rrset[0].next).decode()
        for digest in digests:
            if (digest == owner or _inside(owner, digest, following)) and rrset not in picked:
                picked.append(rrset)
    return picked


def without(chain: list[dns.rrset.RRset], drop: list[dns.rrset.RRset]) -> list[dns.rrset.RRset]:
    return [rrset for rrset in chain if rrset not in drop]


# -- an NSEC-signed zone, signed by dnspython -------------------------------------------------

NSEC_ZONE_TEXT = """
$ORIGIN example.
$TTL 3600
@      SOA ns1 hostmaster 1 3600 300 3600000 3600
@      NS ns1
@      MX 1 ns1
a      NS ns1.a
a      DS 58470 13 2 3079F1593EBAD6DC121E202A8B766A6A4837206C3079F1593EBAD6DC121E202A
ns1.a  A 192.0.2.5
ai     A 192.0.2.9
b      NS ns1.b
ns1.b  A 192.0.2.7
cn     CNAME ai
d      DNAME example.net.
ns1    A 192.0.2.1
*.w    MX 1 ai
x.w    MX 1 ai
x.y.w  MX 1 ai
"""


@functools.cache
def signed_nsec_chain() -> tuple[dns.rrset.RRset, ...]:
    zone = dns.zone.from_text(NSEC_ZONE_TEXT, "example.", relativize=False)
    key = ed25519.Ed25519PrivateKey.generate()
    dnskey = dns.dnssec.make_dnskey(key.public_key(), 15, flags=257)
    dns.dnssec.sign_zone(zone, keys=[(key, dnskey)], lifetime=3600)
    chain = []
    for name, node in zone.nodes.items():
        rdataset = node.get_rdataset(dns.rdataclass.IN, dns.rdatatype.NSEC)
        if rdataset is not None:
            chain.append(dns.rrset.from_rdata_list(name, rdataset.ttl, list(rdataset)))
    return tuple(sorted(chain, key=lambda rrset: rrset.name))


@pytest.fixture
def nsecs() -> list[dns.rrset.RRset]:
    return list(signed_nsec_chain())


def test_signed_chain_is_the_expected_shape(nsecs: list[dns.rrset.RRset]) -> None:
    # glue below the cuts has no NSEC; everything else does, apex first, in canonical order
    owners = [rrset.name.to_text() for rrset in nsecs]
    assert owners == [
        "example.",
        "a.example.",
        "ai.example.",
        "b.example.",
        "cn.example.",
        "d.example.",
        "ns1.example.",
        "*.w.example.",
        "x.w.example.",
        "x.y.w.example.",
    ]


# -- NSEC: NXDOMAIN -----------------------------------------------------------------------------


def test_nsec_nxdomain_proven(nsecs: list[dns.rrset.RRset]) -> None:
    response = nsec_pick(nsecs, "nope.example.", "*.example.")
    assert len(response) == 2
    result = prove_nxdomain(n("nope.example."), EXAMPLE, response, [])
    assert result.outcome == PROVEN, result.reason


def test_nsec_nxdomain_without_wildcard_proof(nsecs: list[dns.rrset.RRset]) -> None:
    response = nsec_pick(nsecs, "nope.example.")
    result = prove_nxdomain(n("nope.example."), EXAMPLE, response, [])
    assert result.outcome == NOT_PROVEN
    assert "*.example." in result.reason


def test_nsec_nxdomain_wrong_covering_record(nsecs: list[dns.rrset.RRset]) -> None:
    response = nsec_pick(nsecs, "aa.example.", "*.example.")  # covers aa, not nope
    result = prove_nxdomain(n("nope.example."), EXAMPLE, response, [])
    assert result.outcome == NOT_PROVEN
    assert "no NSEC covers nope.example." in result.reason


def test_nsec_nxdomain_for_an_existing_name(nsecs: list[dns.rrset.RRset]) -> None:
    result = prove_nxdomain(n("ns1.example."), EXAMPLE, nsecs, [])
    assert result.outcome == NOT_PROVEN
    assert "exists" in result.reason


def test_nsec_nxdomain_for_an_empty_non_terminal(nsecs: list[dns.rrset.RRset]) -> None:
    result = prove_nxdomain(n("y.w.example."), EXAMPLE, nsecs, [])
    assert result.outcome == NOT_PROVEN
    assert "empty non-terminal" in result.reason


def test_nsec_nxdomain_refused_where_a_wildcard_answers(nsecs: list[dns.rrset.RRset]) -> None:
    # q.w.example does not exist, but *.w.example would have answered for it
    result = prove_nxdomain(n("q.w.example."), EXAMPLE, nsecs, [])
    assert result.outcome == NOT_PROVEN
    assert "*.w.example." in result.reason


def test_nsec_nxdomain_wraps_at_the_end_of_the_chain(nsecs: list[dns.rrset.RRset]) -> None:
    response = nsec_pick(nsecs, "zzz.example.", "*.example.")
    last = nsecs[-1]
    assert last in response and last[0].next == EXAMPLE  # the wrapping record does the covering
    assert prove_nxdomain(n("zzz.example."), EXAMPLE, response, []).outcome == PROVEN
    assert prove_nxdomain(n("zzz.example."), EXAMPLE, [nsecs[0]], []).outcome == NOT_PROVEN


def test_nsec_case_does_not_matter(nsecs: list[dns.rrset.RRset]) -> None:
    response = nsec_pick(nsecs, "nope.example.", "*.example.")
    result = prove_nxdomain(n("NoPe.EXAMPLE."), n("Example."), response, [])
    assert result.outcome == PROVEN
    upper = [dns.rrset.from_text(n("NS1.EXAMPLE."), 300, "IN", "NSEC", "*.W.EXAMPLE. A")]
    assert prove_nodata(n("ns1.example."), MX, EXAMPLE, upper, []).outcome == PROVEN


def test_nsec_records_of_another_zone_are_ignored() -> None:
    root = [
        dns.rrset.from_text(n("."), 300, "IN", "NSEC", "com. NS SOA RRSIG NSEC DNSKEY"),
        dns.rrset.from_text(n("com."), 300, "IN", "NSEC", "org. NS DS RRSIG NSEC"),
    ]
    qname = n("nope.example.")
    assert prove_nxdomain(qname, dns.name.root, root, []).outcome == PROVEN
    result = prove_nxdomain(qname, EXAMPLE, root, [])
    assert result.outcome == NOT_PROVEN
    assert "no NSEC or NSEC3 records" in result.reason
    # owned outside the zone: ignored even where its span would reach into the zone
    stray = [dns.rrset.from_text(n("com."), 300, "IN", "NSEC", "zzz.example. NS")]
    assert prove_nxdomain(qname, EXAMPLE, stray, []).outcome == NOT_PROVEN


def test_nxdomain_outside_the_zone_or_at_its_apex(nsecs: list[dns.rrset.RRset]) -> None:
    assert prove_nxdomain(n("nope.example.net."), EXAMPLE, nsecs, []).outcome == NOT_PROVEN
    assert prove_nxdomain(EXAMPLE, EXAMPLE, nsecs, []).outcome == NOT_PROVEN


def test_no_records_at_all() -> None:
    result = prove_nxdomain(n("nope.example."), EXAMPLE, [], [])
    assert result.outcome == NOT_PROVEN


# -- NSEC: the ancestor-delegation rule (RFC 6840 §4.1) ------------------------------------------


@pytest.mark.parametrize("owner", ["b.example.", "d.example."])  # a cut, a DNAME
def test_nsec_at_cut_or_dname_proves_nothing_below(
    nsecs: list[dns.rrset.RRset], owner: str
) -> None:
    qname = dns.name.from_text("foo", n(owner))
    record = next(rrset for rrset in nsecs if rrset.name == n(owner))
    assert record.name < qname < record[0].next  # it would cover qname, were it allowed to
    response = [*nsec_pick(nsecs, qname.to_text(), "*.example."), *nsecs]
    result = prove_nxdomain(qname, EXAMPLE, response, [])
    assert result.outcome == NOT_PROVEN
    assert "delegation or DNAME" in result.reason
    assert prove_nodata(qname, A, EXAMPLE, response, []).outcome == NOT_PROVEN


# -- NSEC: NODATA ---------------------------------------------------------------------------------


def test_nsec_nodata(nsecs: list[dns.rrset.RRset]) -> None:
    response = nsec_pick(nsecs, "ns1.example.")
    assert prove_nodata(n("ns1.example."), MX, EXAMPLE, response, []).outcome == PROVEN
    present = prove_nodata(n("ns1.example."), A, EXAMPLE, response, [])
    assert present.outcome == NOT_PROVEN and "A exists" in present.reason


def test_nsec_nodata_at_a_cname_is_refused(nsecs: list[dns.rrset.RRset]) -> None:
    result = prove_nodata(n("cn.example."), A, EXAMPLE, nsec_pick(nsecs, "cn.example."), [])
    assert result.outcome == NOT_PROVEN
    assert "CNAME" in result.reason


def test_nsec_nodata_at_a_delegation_is_refused(nsecs: list[dns.rrset.RRset]) -> None:
    result = prove_nodata(n("b.example."), A, EXAMPLE, nsec_pick(nsecs, "b.example."), [])
    assert result.outcome == NOT_PROVEN
    assert "referral" in result.reason


def test_nsec_nodata_from_a_covering_record_alone_is_refused(
    nsecs: list[dns.rrset.RRset],
) -> None:
    response = nsec_pick(nsecs, "nope.example.", "*.example.")
    assert prove_nodata(n("nope.example."), A, EXAMPLE, response, []).outcome == NOT_PROVEN


@pytest.mark.parametrize("ent", ["y.w.example.", "w.example."])
def test_nsec_nodata_at_an_empty_non_terminal(nsecs: list[dns.rrset.RRset], ent: str) -> None:
    response = nsec_pick(nsecs, ent)
    assert len(response) == 1 and response[0].name != n(ent)
    assert prove_nodata(n(ent), A, EXAMPLE, response, []).outcome == PROVEN
    absence = prove_no_ds(n(ent), EXAMPLE, response, [])
    assert (absence.outcome, absence.delegation) == (PROVEN, False)


def test_nsec_wildcard_nodata(nsecs: list[dns.rrset.RRset]) -> None:
    response = nsec_pick(nsecs, "q.w.example.", "*.w.example.")
    assert prove_nodata(n("q.w.example."), AAAA, EXAMPLE, response, []).outcome == PROVEN
    has_mx = prove_nodata(n("q.w.example."), MX, EXAMPLE, response, [])
    assert has_mx.outcome == NOT_PROVEN and "MX exists at *.w.example." in has_mx.reason


def test_nsec_wildcard_nodata_needs_the_wildcard_record() -> None:
    entries = {"example.": "SOA NS", "*.w.example.": "MX", "p.w.example.": "A", "z.w.example.": "A"}
    chain = nsec_chain(EXAMPLE, entries)
    covering = nsec_pick(chain, "q.w.example.")
    assert [rrset.name for rrset in covering] == [n("p.w.example.")]
    qname = n("q.w.example.")
    result = prove_nodata(qname, AAAA, EXAMPLE, covering, [])
    assert result.outcome == NOT_PROVEN and "*.w.example." in result.reason
    response = nsec_pick(chain, "q.w.example.", "*.w.example.")
    assert prove_nodata(qname, AAAA, EXAMPLE, response, []).outcome == PROVEN


def test_wildcard_that_is_an_empty_non_terminal() -> None:
    # *.w.example exists only as the parent of a.*.w.example: q.w.example matches it, NODATA
    entries = {"example.": "SOA NS", "a.*.w.example.": "TXT", "z.w.example.": "A"}
    qname = n("q.w.example.")
    for nsecs, nsec3s in ((nsec_chain(EXAMPLE, entries), []), ([], nsec3_chain(EXAMPLE, entries))):
        assert prove_nodata(qname, A, EXAMPLE, nsecs, nsec3s).outcome == PROVEN
        assert prove_nxdomain(qname, EXAMPLE, nsecs, nsec3s).outcome == NOT_PROVEN


# -- NSEC: wildcard answers -----------------------------------------------------------------------


@pytest.mark.parametrize("qname", ["q.w.example.", "a.q.w.example."])
def test_nsec_wildcard_answer(nsecs: list[dns.rrset.RRset], qname: str) -> None:
    response = nsec_pick(nsecs, qname)
    assert prove_wildcard_answer(n(qname), n("w.example."), EXAMPLE, response, []).outcome == (
        PROVEN
    )


def test_nsec_wildcard_answer_wrong_source_or_existing_name(
    nsecs: list[dns.rrset.RRset],
) -> None:
    response = nsec_pick(nsecs, "q.w.example.")
    wrong = prove_wildcard_answer(n("q.w.example."), EXAMPLE, EXAMPLE, response, [])
    assert wrong.outcome == NOT_PROVEN and "closest encloser" in wrong.reason
    exists = prove_wildcard_answer(n("x.w.example."), n("w.example."), EXAMPLE, nsecs, [])
    assert exists.outcome == NOT_PROVEN
    # a name below an existing name cannot come from the wildcard above it
    deeper = prove_wildcard_answer(n("q.x.w.example."), n("w.example."), EXAMPLE, nsecs, [])
    assert deeper.outcome == NOT_PROVEN
    not_below = prove_wildcard_answer(n("w.example."), n("w.example."), EXAMPLE, nsecs, [])
    assert not_below.outcome == NOT_PROVEN


# -- NSEC: DS absence -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "outcome", "delegation"),
    [
        ("b.example.", PROVEN, True),  # insecure delegation
        ("ns1.example.", PROVEN, False),  # no cut
        ("a.example.", NOT_PROVEN, False),  # DS present
        ("cn.example.", NOT_PROVEN, False),  # a CNAME
        ("example.", NOT_PROVEN, False),  # the child apex's record, wrong side of the cut
    ],
)
def test_nsec_no_ds(
    nsecs: list[dns.rrset.RRset], name: str, outcome: Denial, delegation: bool
) -> None:
    absence = prove_no_ds(n(name), EXAMPLE, nsec_pick(nsecs, name), [])
    assert (absence.outcome, absence.delegation) == (outcome, delegation), absence.reason
    assert prove_nodata(n(name), DS, EXAMPLE, nsec_pick(nsecs, name), []).outcome == outcome


def test_nsec_no_ds_at_the_root() -> None:
    root = [dns.rrset.from_text(n("."), 300, "IN", "NSEC", "aaa. NS SOA RRSIG NSEC DNSKEY")]
    absence = prove_no_ds(dns.name.root, dns.name.root, root, [])
    assert (absence.outcome, absence.delegation) == (PROVEN, False)


# -- NSEC3: the RFC 5155 Appendix A zone and its Appendix B answers -------------------------------

RFC5155_SALT = "aabbccdd"
RFC5155_ITERATIONS = 12
RFC5155_NAMES = {
    # b.example is an unsigned delegation, left out of the opt-out chain; glue has no NSEC3
    "example.": "NS SOA MX RRSIG DNSKEY NSEC3PARAM",
    "a.example.": "NS DS RRSIG",
    "ai.example.": "A HINFO AAAA RRSIG",
    "c.example.": "NS DS RRSIG",
    "ns1.example.": "A RRSIG",
    "ns2.example.": "A RRSIG",
    "*.w.example.": "MX RRSIG",
    "x.w.example.": "MX RRSIG",
    "x.y.w.example.": "MX RRSIG",
    "xx.example.": "A HINFO AAAA RRSIG",
}


def rfc5155_chain(opt_out: bool = True) -> list[dns.rrset.RRset]:
    return nsec3_chain(
        EXAMPLE,
        RFC5155_NAMES,
        salt=RFC5155_SALT,
        iterations=RFC5155_ITERATIONS,
        opt_out=opt_out,
    )


def rfc5155_pick(chain: list[dns.rrset.RRset], *names: str) -> list[dns.rrset.RRset]:
    return nsec3_pick(chain, *names, salt=RFC5155_SALT, iterations=RFC5155_ITERATIONS)


def test_rfc5155_chain_matches_the_rfc() -> None:
    chain = rfc5155_chain()
    assert len(chain) == 12  # ten names and the empty non-terminals w and y.w
    apex = next(rrset for rrset in chain if rrset.name.labels[0].startswith(b"0p9m"))
    assert apex.to_text().split()[0] == "0p9mhaveqvm6t7vbl5lop2u3t2rp3tom.example."
    assert base64.b32hexencode(apex[0].next).decode().lower() == "2t7b4g4vsa5smi47k61mv5bv1a22bojr"


@pytest.mark.parametrize(("opt_out", "outcome"), [(True, OPT_OUT), (False, PROVEN)])
def test_rfc5155_b1_name_error(opt_out: bool, outcome: Denial) -> None:
    chain = rfc5155_chain(opt_out)
    # closest encloser x.w.example, next closer c.x.w.example, wildcard *.x.w.example
    response = rfc5155_pick(chain, "x.w.example.", "c.x.w.example.", "*.x.w.example.")
    assert len(response) <= 3
    result = prove_nxdomain(n("a.c.x.w.example."), EXAMPLE, [], response)
    assert result.outcome == outcome, result.reason


def test_rfc5155_b2_no_data() -> None:
    response = rfc5155_pick(rfc5155_chain(), "ns1.example.")
    assert len(response) == 1
    assert prove_nodata(n("ns1.example."), MX, EXAMPLE, [], response).outcome == PROVEN
    assert prove_nodata(n("ns1.example."), A, EXAMPLE, [], response).outcome == NOT_PROVEN


def test_rfc5155_b2_1_no_data_at_an_empty_non_terminal() -> None:
    response = rfc5155_pick(rfc5155_chain(), "y.w.example.")
    assert prove_nodata(n("y.w.example."), A, EXAMPLE, [], response).outcome == PROVEN


def test_rfc5155_b3_opt_out_referral() -> None:
    names = ("example.", "b.example.")  # closest encloser and next closer of mc.b.example
    absence = prove_no_ds(n("b.example."), EXAMPLE, [], rfc5155_pick(rfc5155_chain(), *names))
    assert (absence.outcome, absence.delegation) == (OPT_OUT, True)
    plain = rfc5155_pick(rfc5155_chain(opt_out=False), *names)
    absence = prove_no_ds(n("b.example."), EXAMPLE, [], plain)
    assert absence.outcome == NOT_PROVEN


def test_rfc5155_b4_wildcard_expansion() -> None:
    # opt-out on the record covering the next closer z.w.example does not matter (§8.8)
    response = rfc5155_pick(rfc5155_chain(), "z.w.example.")
    result = prove_wildcard_answer(n("a.z.w.example."), n("w.example."), EXAMPLE, [], response)
    assert result.outcome == PROVEN, result.reason
    short = prove_wildcard_answer(n("a.z.w.example."), n("w.example."), EXAMPLE, [], [])
    assert short.outcome == NOT_PROVEN


def test_rfc5155_b5_wildcard_no_data() -> None:
    names = ("w.example.", "z.w.example.", "*.w.example.")
    response = rfc5155_pick(rfc5155_chain(), *names)
    assert prove_nodata(n("a.z.w.example."), AAAA, EXAMPLE, [], response).outcome == PROVEN
    result = prove_nodata(n("a.z.w.example."), MX, EXAMPLE, [], response)
    assert result.outcome == NOT_PROVEN and "MX exists at *.w.example." in result.reason


# -- NSEC3: a zone of our own ---------------------------------------------------------------------

OWN_NAMES = {
    "example.": "NS SOA RRSIG DNSKEY NSEC3PARAM",
    "a.example.": "A RRSIG",
    "cn.example.": "CNAME RRSIG",
    "del.example.": "NS",  # an insecure delegation that has its NSEC3 (no opt-out)
    "sec.example.": "NS DS RRSIG",
    "dn.example.": "DNAME RRSIG",
    "*.w.example.": "TXT RRSIG",
    "x.w.example.": "A RRSIG",
}


def own_chain(**options: object) -> list[dns.rrset.RRset]:
    return nsec3_chain(EXAMPLE, OWN_NAMES, **options)  # type: ignore[arg-type]


def nxdomain_response(chain: list[dns.rrset.RRset], qname: str) -> list[dns.rrset.RRset]:
    return nsec3_pick(chain, "example.", qname, "*.example.")


def test_nsec3_nxdomain_proven_and_opt_out() -> None:
    result = prove_nxdomain(
        n("nope.example."), EXAMPLE, [], nxdomain_response(own_chain(), "nope.example.")
    )
    assert result.outcome == PROVEN, result.reason
    opted = own_chain(opt_out=True)
    result = prove_nxdomain(
        n("nope.example."), EXAMPLE, [], nxdomain_response(opted, "nope.example.")
    )
    assert result.outcome == OPT_OUT


def test_nsec3_nxdomain_missing_pieces() -> None:
    chain = own_chain()
    wild_cover = nsec3_pick(chain, "*.example.")
    qname = next(
        f"q{i}.example." for i in range(100) if nsec3_pick(chain, f"q{i}.example.") != wild_cover
    )
    no_wild = without(nxdomain_response(chain, qname), wild_cover)
    result = prove_nxdomain(n(qname), EXAMPLE, [], no_wild)
    assert result.outcome == NOT_PROVEN and "*.example." in result.reason
    no_encloser = without(nxdomain_response(chain, qname), nsec3_pick(chain, "example."))
    result = prove_nxdomain(n(qname), EXAMPLE, [], no_encloser)
    assert result.outcome == NOT_PROVEN
    no_next_closer = without(nxdomain_response(chain, qname), nsec3_pick(chain, qname))
    result = prove_nxdomain(n(qname), EXAMPLE, [], no_next_closer)
    assert result.outcome == NOT_PROVEN and qname in result.reason


def test_nsec3_nxdomain_for_existing_names() -> None:
    chain = own_chain()
    assert prove_nxdomain(n("a.example."), EXAMPLE, [], chain).outcome == NOT_PROVEN
    assert prove_nxdomain(n("w.example."), EXAMPLE, [], chain).outcome == NOT_PROVEN  # ENT
    wild = prove_nxdomain(n("q.w.example."), EXAMPLE, [], chain)
    assert wild.outcome == NOT_PROVEN and "*.w.example. exists" in wild.reason


def test_nsec3_wrap_around_at_the_end_of_the_chain() -> None:
    chain = own_chain()
    hashes = sorted(rrset.name.labels[0].decode().upper() for rrset in chain)
    last = next(rrset for rrset in chain if rrset.name.labels[0].decode().upper() == hashes[-1])

    def past_the_ends(name: str) -> bool:
        digest = dns.dnssec.nsec3_hash(name, None, 0, 1)
        return digest > hashes[-1] or digest < hashes[0]

    qname = next(f"w{i}.example." for i in range(200) if past_the_ends(f"w{i}.example."))
    response = nxdomain_response(chain, qname)
    assert last in response
    assert prove_nxdomain(n(qname), EXAMPLE, [], response).outcome == PROVEN
    assert prove_nxdomain(n(qname), EXAMPLE, [], without(response, [last])).outcome == NOT_PROVEN


def test_nsec3_chain_of_one_covers_everything_else() -> None:
    chain = nsec3_chain(EXAMPLE, {"example.": "NS SOA"})
    assert len(chain) == 1
    assert prove_nxdomain(n("any.example."), EXAMPLE, [], chain).outcome == PROVEN
    assert prove_nodata(EXAMPLE, A, EXAMPLE, [], chain).outcome == PROVEN


def test_nsec3_case_does_not_matter() -> None:
    response = nxdomain_response(own_chain(), "nope.example.")
    upper = [
        dns.rrset.from_text(rrset.name.to_text().upper(), 300, "IN", "NSEC3", rrset[0].to_text())
        for rrset in response
    ]
    assert upper[0].name.labels[0].isupper()
    assert prove_nxdomain(n("NOPE.Example."), n("EXAMPLE."), [], upper).outcome == PROVEN


def test_nsec3_records_of_another_zone_are_ignored() -> None:
    response = nxdomain_response(own_chain(), "nope.example.")
    moved = [
        dns.rrset.from_rdata(rrset.name.relativize(EXAMPLE).concatenate(n("other.")), 300, rrset[0])
        for rrset in response
    ]
    assert prove_nxdomain(n("nope.example."), EXAMPLE, [], moved).outcome == NOT_PROVEN
    # the same hashes as if from the chain of a child zone sub.example
    child = [
        dns.rrset.from_rdata(
            dns.name.Name((rrset.name.labels[0], *n("sub.example.").labels)), 300, rrset[0]
        )
        for rrset in response
    ]
    assert prove_nxdomain(n("nope.example."), EXAMPLE, [], child).outcome == NOT_PROVEN
    assert prove_nxdomain(n("nope.example."), EXAMPLE, [], response).outcome == PROVEN


def test_nsec3_nodata() -> None:
    chain = own_chain()
    for qname, qtype, outcome, why in [
        ("a.example.", MX, PROVEN, "no MX"),
        ("a.example.", A, NOT_PROVEN, "A exists"),
        ("cn.example.", A, NOT_PROVEN, "CNAME"),
        ("del.example.", A, NOT_PROVEN, "referral"),
        ("w.example.", A, PROVEN, "no A"),  # empty non-terminal
        ("example.", A, PROVEN, "no A"),
    ]:
        result = prove_nodata(n(qname), qtype, EXAMPLE, [], nsec3_pick(chain, qname))
        assert result.outcome == outcome, (qname, result.reason)
        assert why in result.reason


def test_nsec3_wildcard_nodata() -> None:
    chain = own_chain()
    response = nsec3_pick(chain, "w.example.", "q.w.example.", "*.w.example.")
    assert prove_nodata(n("q.w.example."), A, EXAMPLE, [], response).outcome == PROVEN
    assert prove_nodata(n("q.w.example."), TXT, EXAMPLE, [], response).outcome == NOT_PROVEN
    no_wild = without(response, nsec3_pick(chain, "*.w.example."))
    assert prove_nodata(n("q.w.example."), A, EXAMPLE, [], no_wild).outcome == NOT_PROVEN


def test_nsec3_nodata_under_opt_out_is_insecure() -> None:
    # no wildcard, the next closer in an opt-out span: an unsigned delegation may hold the name
    chain = own_chain(opt_out=True)
    response = nxdomain_response(chain, "nope.example.")
    assert prove_nodata(n("nope.example."), A, EXAMPLE, [], response).outcome == OPT_OUT
    plain = nxdomain_response(own_chain(), "nope.example.")
    assert prove_nodata(n("nope.example."), A, EXAMPLE, [], plain).outcome == NOT_PROVEN


def test_nsec3_wildcard_answer() -> None:
    for options in ({}, {"opt_out": True}):
        chain = own_chain(**options)
        response = nsec3_pick(chain, "q.w.example.")
        result = prove_wildcard_answer(n("a.q.w.example."), n("w.example."), EXAMPLE, [], response)
        assert result.outcome == PROVEN, result.reason
    exists = prove_wildcard_answer(n("x.w.example."), n("w.example."), EXAMPLE, [], chain)
    assert exists.outcome == NOT_PROVEN


@pytest.mark.parametrize(
    ("name", "outcome", "delegation"),
    [
        ("del.example.", PROVEN, True),
        ("a.example.", PROVEN, False),
        ("w.example.", PROVEN, False),
        ("sec.example.", NOT_PROVEN, False),
        ("cn.example.", NOT_PROVEN, False),
        ("example.", NOT_PROVEN, False),  # the apex record: child side of a cut
    ],
)
def test_nsec3_no_ds(name: str, outcome: Denial, delegation: bool) -> None:
    absence = prove_no_ds(n(name), EXAMPLE, [], nsec3_pick(own_chain(), name))
    assert (absence.outcome, absence.delegation) == (outcome, delegation), absence.reason


def test_nsec3_no_ds_opt_out() -> None:
    names = ("example.", "unsigned.example.")
    absence = prove_no_ds(
        n("unsigned.example."), EXAMPLE, [], nsec3_pick(own_chain(opt_out=True), *names)
    )
    assert (absence.outcome, absence.delegation) == (OPT_OUT, True)
    nodata = prove_nodata(
        n("unsigned.example."), DS, EXAMPLE, [], nsec3_pick(own_chain(opt_out=True), *names)
    )
    assert nodata.outcome == OPT_OUT
    absence = prove_no_ds(n("unsigned.example."), EXAMPLE, [], nsec3_pick(own_chain(), *names))
    assert absence.outcome == NOT_PROVEN


@pytest.mark.parametrize("cut", ["del.example.", "dn.example."])
def test_nsec3_closest_encloser_at_a_cut_or_dname(cut: str) -> None:
    chain = own_chain()
    qname = f"foo.{cut}"
    response = nsec3_pick(chain, cut, qname, f"*.{cut}")
    result = prove_nxdomain(n(qname), EXAMPLE, [], response)
    assert result.outcome == NOT_PROVEN and "delegation or DNAME" in result.reason
    assert prove_nodata(n(qname), A, EXAMPLE, [], response).outcome == NOT_PROVEN
    assert prove_no_ds(n(qname), EXAMPLE, [], response).outcome == NOT_PROVEN


# -- NSEC3: parameters, limits, unknown algorithms ------------------------------------------------


@pytest.mark.parametrize(
    ("iterations", "limit", "outcome"),
    [(150, 150, PROVEN), (151, 150, INSECURE), (200, 150, INSECURE), (12, 10, INSECURE)],
)
def test_nsec3_iteration_limit(iterations: int, limit: int, outcome: Denial) -> None:
    chain = own_chain(iterations=iterations, salt="ab")
    response = nsec3_pick(
        chain, "example.", "nope.example.", "*.example.", salt="ab", iterations=iterations
    )
    result = prove_nxdomain(n("nope.example."), EXAMPLE, [], response, max_iterations=limit)
    assert result.outcome == outcome, result.reason
    if outcome == INSECURE:
        assert result.reason == f"NSEC3 iterations {iterations} > {limit}"
        assert result.too_many_iterations
        absence = prove_no_ds(n("a.example."), EXAMPLE, [], chain, max_iterations=limit)
        assert absence.outcome == INSECURE and absence.too_many_iterations
    else:
        assert not result.too_many_iterations


def test_nsec3_unknown_hash_algorithm_proves_nothing() -> None:
    # RFC 5155 §8.1: ignored, so an answer with only these is bogus (as Unbound has it)
    unknown = own_chain(algorithm=2)
    result = prove_nxdomain(n("nope.example."), EXAMPLE, [], unknown)
    assert result.outcome == NOT_PROVEN and "unknown" in result.reason
    assert not result.too_many_iterations
    mixed = [*unknown, *nxdomain_response(own_chain(), "nope.example.")]
    assert prove_nxdomain(n("nope.example."), EXAMPLE, [], mixed).outcome == PROVEN


def test_nsec3_unknown_flags_are_ignored() -> None:
    chain = own_chain(flags=2)
    result = prove_nxdomain(n("nope.example."), EXAMPLE, [], chain)
    assert result.outcome == NOT_PROVEN


def test_nsec3_parameter_sets_are_not_combined() -> None:
    one = own_chain(salt="01")
    encloser = nsec3_pick(one, "example.", salt="01")
    # a second salt whose records covering nope and *.example do not include its apex record
    for salt in (f"{i:02x}" for i in range(2, 40)):
        two = own_chain(salt=salt)
        covers = nsec3_pick(two, "nope.example.", "*.example.", salt=salt)
        apex = nsec3_pick(two, "example.", salt=salt)
        if apex[0] not in covers:
            break
    else:
        pytest.fail("no suitable salt")
    qname = n("nope.example.")
    assert prove_nxdomain(qname, EXAMPLE, [], covers).outcome == NOT_PROVEN
    assert prove_nxdomain(qname, EXAMPLE, [], encloser + covers).outcome == NOT_PROVEN
    assert prove_nxdomain(qname, EXAMPLE, [], encloser + covers + apex).outcome == PROVEN


def test_nsec_and_nsec3_together_the_proof_that_holds_wins(nsecs: list[dns.rrset.RRset]) -> None:
    nsec3s = nxdomain_response(own_chain(), "nope.example.")
    assert prove_nxdomain(n("nope.example."), EXAMPLE, nsecs[:1], nsec3s).outcome == PROVEN
    response = nsec_pick(nsecs, "nope.example.", "*.example.")
    assert prove_nxdomain(n("nope.example."), EXAMPLE, response, nsec3s[:1]).outcome == PROVEN


# -- properties over random zones ----------------------------------------------------------------

LABELS = st.sampled_from(["a", "b", "c", "*"])
QUERY_LABELS = st.sampled_from(["a", "b", "c", "d", "*"])


def relative_names(labels: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.lists(labels, min_size=1, max_size=3).map(lambda parts: ".".join(parts))


def existing_names(names: set[dns.name.Name]) -> set[dns.name.Name]:
    """The names and every ancestor down to the apex (the empty non-terminals)."""
    found = {EXAMPLE}
    for name in names:
        found.update(name.split(depth)[1] for depth in range(len(EXAMPLE), len(name) + 1))
    return found


def expected(qname: dns.name.Name, names: set[dns.name.Name]) -> tuple[bool, bool]:
    """(NXDOMAIN, NODATA for A) by RFC 1034 §4.3.2 and RFC 4592 name matching."""
    existing = existing_names(names)
    if qname in existing:
        return False, True
    encloser = next(
        qname.split(depth)[1]
        for depth in range(len(qname) - 1, 0, -1)
        if qname.split(depth)[1] in existing
    )
    wildcard_exists = dns.name.Name((b"*", *encloser.labels)) in existing
    return not wildcard_exists, wildcard_exists


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    zone_names=st.sets(relative_names(LABELS), min_size=1, max_size=8),
    query=relative_names(QUERY_LABELS),
)
def test_random_zones_deny_exactly_the_missing_names(zone_names: set[str], query: str) -> None:
    names = {dns.name.from_text(text, EXAMPLE) for text in zone_names}
    qname = dns.name.from_text(query, EXAMPLE)
    nxdomain, nodata = expected(qname, names)
    entries = {"example.": "NS SOA", **{name.to_text(): "TXT" for name in names}}
    nsecs = nsec_chain(EXAMPLE, entries)
    nsec3s = nsec3_chain(EXAMPLE, entries)
    for with_nsec, with_nsec3 in ((nsecs, []), ([], nsec3s)):
        assert (prove_nxdomain(qname, EXAMPLE, with_nsec, with_nsec3).outcome == PROVEN) == (
            nxdomain
        )
        assert (prove_nodata(qname, A, EXAMPLE, with_nsec, with_nsec3).outcome == PROVEN) == (
            nodata
        )
        if qname in names:  # TXT exists there: never denied
            assert prove_nodata(qname, TXT, EXAMPLE, with_nsec, with_nsec3).outcome == NOT_PROVEN


@settings(max_examples=60, deadline=None)
@given(zone_names=st.sets(relative_names(LABELS), min_size=1, max_size=8))
def test_random_zones_never_deny_an_existing_name(zone_names: set[str]) -> None:
    names = {dns.name.from_text(text, EXAMPLE) for text in zone_names}
    entries = {"example.": "NS SOA", **{name.to_text(): "TXT" for name in names}}
    nsecs, nsec3s = nsec_chain(EXAMPLE, entries), nsec3_chain(EXAMPLE, entries)
    for name in existing_names(names) - {EXAMPLE}:
        assert prove_nxdomain(name, EXAMPLE, nsecs, []).outcome == NOT_PROVEN
        assert prove_nxdomain(name, EXAMPLE, [], nsec3s).outcome == NOT_PROVEN
