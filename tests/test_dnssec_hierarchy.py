"""The private signed hierarchy is what it claims, judged by BIND's delv, not by our validator.

delv validates through the hierarchy's non-validating Unbound from the private root's trust
anchor: secure names must come out "fully validated", insecure ones "unsigned answer", bogus ones
must fail for the reason they were built to show. Direct questions to NSD check the shapes the
e2e table relies on (NSEC3 parameters, DS digests, validity windows, edits after signing), and
the tamper proxy is checked to forge exactly one RDATA octet.
"""

from __future__ import annotations

import datetime
import re
import ssl
import subprocess
import time
from pathlib import Path

import dns.dnssec
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest

from tests.dnssec_hierarchy import (
    ALGORITHM_ZONES,
    BOGUS_ADDRESS,
    CHANGED_ADDRESS,
    MANY_ITERATIONS,
    Hierarchy,
    signed_hierarchy,
)
from tests.peers import LOOPBACK, answers_on_udp, require_tool
from tests.servers.tamper_proxy import find_rdata, flip_rdata_byte, running_tamper_proxy

pytestmark = [pytest.mark.interop, pytest.mark.timeout(60)]

RRSIG = dns.rdatatype.RRSIG


def delv(h: Hierarchy, name: str, rdtype: str) -> str:
    binary = require_tool("delv")
    args = [binary, f"@{LOOPBACK}", "-p", str(h.resolver_port), "-a", str(h.delv_anchor_file)]
    done = subprocess.run(
        [*args, "+root=.", name, rdtype], capture_output=True, text=True, timeout=30, check=False
    )
    return done.stdout + done.stderr


def ask(port: int, name: str, rdtype: str, *, dnssec: bool = True) -> dns.message.Message:
    query = dns.message.make_query(name, rdtype, want_dnssec=dnssec)
    query.flags &= ~dns.flags.RD
    return dns.query.tcp(query, LOOPBACK, port=port, timeout=5)


def authoritative(h: Hierarchy, name: str, rdtype: str) -> dns.message.Message:
    return ask(h.auth_port, name, rdtype)


def rrset_of(
    reply: dns.message.Message, name: str, rdtype: int, covers: int = 0
) -> dns.rrset.RRset:
    for rrset in reply.answer:
        if rrset.name == dns.name.from_text(name) and (rrset.rdtype, rrset.covers) == (
            rdtype,
            covers,
        ):
            return rrset
    raise AssertionError(f"no {name} {rdtype} (covers {covers}) in\n{reply}")


# --- delv: secure, insecure, bogus ------------------------------------------------------------

SECURE_POSITIVE: list[tuple[str, str, str]] = [("www.test.", "A", "192.0.2.1")]
for _zone, _number in ALGORITHM_ZONES.items():
    SECURE_POSITIVE += [
        (f"www.{_zone}", "A", f"192.0.2.{_number}"),
        (f"www.{_zone}", "TXT", f'"alg {_number}"'),
    ]
for _zone, _other in (("nsec.test.", "nsec3.test."), ("nsec3.test.", "nsec.test.")):
    SECURE_POSITIVE += [
        (f"www.{_zone}", "A", "192.0.2.10"),
        (f"x.wild.{_zone}", "TXT", '"wild"'),
        (f"alias.{_zone}", "A", f"CNAME\twww.{_other}"),
        (f"a.b.ent.{_zone}", "A", "192.0.2.11"),
    ]
SECURE_POSITIVE += [
    ("www.dname.nsec.test.", "A", "192.0.2.10"),
    ("www.optout.test.", "A", "192.0.2.12"),
    # correctly signed; only a validator without SHA-1 DS / RSASHA1 calls them insecure
    ("www.sha1ds.test.", "A", "192.0.2.30"),
    ("www.rsasha1.test.", "A", "192.0.2.30"),
]

SECURE_NEGATIVE: list[tuple[str, str]] = []
for _zone in ("nsec.test.", "nsec3.test."):
    SECURE_NEGATIVE += [
        (f"nx.{_zone}", "A"),
        (f"www.{_zone}", "MX"),
        (f"x.wild.{_zone}", "MX"),
        (f"ent.{_zone}", "A"),
        (f"b.ent.{_zone}", "A"),
    ]

#: (name, type, what delv says): the reason each bogus case was built for, in BIND 9.18's words
BOGUS: list[tuple[str, str, str]] = [
    ("www.expired.test.", "A", "RRSIG has expired"),
    ("www.future.test.", "A", "RRSIG validity period has not begun"),
    ("www.badds.test.", "A", "badds.test/DNSKEY: no valid signature found (DS)"),
    ("www.nosig.test.", "A", "insecurity proof failed"),
    ("www.changed.test.", "A", "RRSIG failed to verify"),
    ("www.badkeysig.test.", "A", "badkeysig.test/DNSKEY: no valid signature found (DS)"),
    ("nx.nonsec.test.", "A", "broken trust chain"),
]


@pytest.mark.parametrize(("name", "rdtype", "data"), SECURE_POSITIVE)
def test_secure_answers_are_fully_validated(
    dnssec_hierarchy: Hierarchy, name: str, rdtype: str, data: str
) -> None:
    out = delv(dnssec_hierarchy, name, rdtype)
    assert "; fully validated" in out, out
    assert "resolution failed" not in out and "unsigned answer" not in out, out
    assert data in out, out


@pytest.mark.parametrize(("name", "rdtype"), SECURE_NEGATIVE)
def test_secure_denials_are_fully_validated(
    dnssec_hierarchy: Hierarchy, name: str, rdtype: str
) -> None:
    out = delv(dnssec_hierarchy, name, rdtype)
    assert "; negative response, fully validated" in out, out
    wanted = "NXDOMAIN" if name.startswith("nx.") else "NXRRSET"
    assert wanted in out, out


@pytest.mark.parametrize(
    ("name", "address"),
    [("www.insecure.test.", "192.0.2.21"), ("www.unsigned.optout.test.", "192.0.2.20")],
)
def test_unsigned_delegations_give_unsigned_answers(
    dnssec_hierarchy: Hierarchy, name: str, address: str
) -> None:
    out = delv(dnssec_hierarchy, name, "A")
    assert "; unsigned answer" in out and address in out, out
    assert "fully validated" not in out and "resolution failed" not in out, out


def test_cname_from_secure_into_insecure(dnssec_hierarchy: Hierarchy) -> None:
    out = delv(dnssec_hierarchy, "to-insecure.nsec.test.", "A")
    secure, _, insecure = out.partition("; unsigned answer")
    assert "; fully validated" in secure and "CNAME\twww.insecure.test." in secure, out
    assert "192.0.2.21" in insecure, out


def test_nsec3_iterations_above_the_limit_are_insecure(dnssec_hierarchy: Hierarchy) -> None:
    """RFC 9276 §3.2: delv treats 200 iterations as insecure, not as bogus."""
    out = delv(dnssec_hierarchy, "nx.manyiter.test.", "A")
    assert "; negative response, unsigned answer" in out and "NXDOMAIN" in out, out


@pytest.mark.parametrize(("name", "rdtype", "reason"), BOGUS)
def test_bogus_names_fail_for_their_reason(
    dnssec_hierarchy: Hierarchy, name: str, rdtype: str, reason: str
) -> None:
    out = delv(dnssec_hierarchy, name, rdtype)
    assert "resolution failed" in out, out
    assert "fully validated" not in out and "unsigned answer" not in out, out
    assert reason in out, out


# --- the shapes behind the cases, asked of NSD directly ------------------------------------------


def test_trust_anchor_files_describe_the_served_root_key(dnssec_hierarchy: Hierarchy) -> None:
    h = dnssec_hierarchy
    served = rrset_of(authoritative(h, ".", "DNSKEY"), ".", dns.rdatatype.DNSKEY)
    dnskey_text = h.anchor_dnskey_file.read_text()
    assert dnskey_text.startswith(". 3600 IN DNSKEY 257 3 13 ")
    anchor_key = dns.rrset.from_text(".", 3600, "IN", "DNSKEY", dnskey_text.split(None, 4)[4])
    assert set(anchor_key) == set(served)
    ds_text = h.anchor_ds_file.read_text()
    assert ds_text.startswith(". 3600 IN DS ")
    anchor_ds = dns.rrset.from_text(".", 3600, "IN", "DS", ds_text.split(None, 4)[4])[0]
    assert anchor_ds == dns.dnssec.make_ds(".", served[0], "SHA256")
    delv_text = h.delv_anchor_file.read_text()
    pattern = rf'\. static-ds {anchor_ds.key_tag} 13 2 "{anchor_ds.digest.hex().upper()}";'
    assert delv_text.startswith("trust-anchors {") and re.search(pattern, delv_text), delv_text


def nsec3_records(reply: dns.message.Message) -> list[dns.rrset.RRset]:
    return [r for r in reply.authority if r.rdtype == dns.rdatatype.NSEC3]


def test_nsec3_parameters(dnssec_hierarchy: Hierarchy) -> None:
    h = dnssec_hierarchy
    for zone, iterations in (("nsec3.test.", 0), ("optout.test.", 0), ("manyiter.test.", 200)):
        param = rrset_of(authoritative(h, zone, "NSEC3PARAM"), zone, dns.rdatatype.NSEC3PARAM)[0]
        assert (param.algorithm, param.flags, param.iterations, param.salt) == (
            1,
            0,
            iterations,
            b"",
        )
    assert MANY_ITERATIONS == 200
    for zone, opt_out in (("nsec3.test.", 0), ("optout.test.", 1), ("manyiter.test.", 0)):
        reply = authoritative(h, f"nx.{zone}", "A")
        assert reply.rcode() == dns.rcode.NXDOMAIN
        found = nsec3_records(reply)
        assert found and all(rd.flags & 1 == opt_out for rrset in found for rd in rrset), reply


def test_unsigned_delegations_have_no_ds_and_a_signed_proof(dnssec_hierarchy: Hierarchy) -> None:
    h = dnssec_hierarchy
    for child, denial in (("insecure.test.", "NSEC"), ("unsigned.optout.test.", "NSEC3")):
        reply = authoritative(h, child, "DS")
        assert reply.rcode() == dns.rcode.NOERROR and not reply.answer, reply
        types = {r.rdtype for r in reply.authority}
        assert dns.rdatatype.from_text(denial) in types and RRSIG in types, reply


def test_ds_digests_and_keys_of_the_special_zones(dnssec_hierarchy: Hierarchy) -> None:
    h = dnssec_hierarchy

    def ds_and_keys(zone: str) -> tuple[dns.rrset.RRset, dns.rrset.RRset]:
        ds = rrset_of(authoritative(h, zone, "DS"), zone, dns.rdatatype.DS)
        keys = rrset_of(authoritative(h, zone, "DNSKEY"), zone, dns.rdatatype.DNSKEY)
        return ds, keys

    ds, keys = ds_and_keys("sha1ds.test.")
    assert [d.digest_type for d in ds] == [1]
    assert ds[0] == dns.dnssec.make_ds("sha1ds.test.", keys[0], "SHA1", validating=True)
    ds, keys = ds_and_keys("rsasha1.test.")
    assert [k.algorithm for k in keys] == [5] and [d.digest_type for d in ds] == [2]
    ds, keys = ds_and_keys("badds.test.")
    assert ds[0].key_tag not in {dns.dnssec.key_id(k) for k in keys}
    for zone, number in ALGORITHM_ZONES.items():
        ds, keys = ds_and_keys(zone)
        assert [k.algorithm for k in keys] == [number]
        assert ds[0] == dns.dnssec.make_ds(zone, keys[0], "SHA256")


def test_validity_windows(dnssec_hierarchy: Hierarchy) -> None:
    now = datetime.datetime.now(datetime.UTC).timestamp()
    for zone, in_past in (("expired.test.", True), ("future.test.", False)):
        reply = authoritative(dnssec_hierarchy, f"www.{zone}", "A")
        sig = rrset_of(reply, f"www.{zone}", RRSIG, dns.rdatatype.A)[0]
        if in_past:
            assert sig.expiration < now - 86400, sig
        else:
            assert sig.inception > now + 86400, sig


def test_edits_after_signing(dnssec_hierarchy: Hierarchy) -> None:
    h = dnssec_hierarchy
    nosig = authoritative(h, "www.nosig.test.", "A")
    assert rrset_of(nosig, "www.nosig.test.", dns.rdatatype.A)[0].address == BOGUS_ADDRESS
    assert not any(r.rdtype == RRSIG for r in nosig.answer), nosig
    changed = authoritative(h, "www.changed.test.", "A")
    assert rrset_of(changed, "www.changed.test.", dns.rdatatype.A)[0].address == CHANGED_ADDRESS
    rrset_of(changed, "www.changed.test.", RRSIG, dns.rdatatype.A)
    nonsec = authoritative(h, "nx.nonsec.test.", "A")
    assert nonsec.rcode() == dns.rcode.NXDOMAIN
    types = {r.rdtype for r in nonsec.authority}
    assert dns.rdatatype.SOA in types and dns.rdatatype.NSEC not in types, nonsec
    keys = authoritative(h, "badkeysig.test.", "DNSKEY")
    key_rrset = rrset_of(keys, "badkeysig.test.", dns.rdatatype.DNSKEY)
    key_sig = rrset_of(keys, "badkeysig.test.", RRSIG, dns.rdatatype.DNSKEY)
    with pytest.raises(dns.dnssec.ValidationFailure):
        dns.dnssec.validate(key_rrset, key_sig, {dns.name.from_text("badkeysig.test."): key_rrset})


# --- the Unbound in front: DO honoured, no validation, DoT ---------------------------------------


def test_dig_through_unbound_shows_rrsigs_without_ad(dnssec_hierarchy: Hierarchy) -> None:
    binary = require_tool("dig")
    port = str(dnssec_hierarchy.resolver_port)
    for name in ("www.nsec.test.", "www.expired.test."):
        out = subprocess.run(
            [binary, f"@{LOOPBACK}", "-p", port, "+dnssec", "+tries=1", "+time=5", name, "A"],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        ).stdout
        assert "status: NOERROR" in out and re.search(
            rf"{re.escape(name)}\s+\d+\s+IN\s+RRSIG\s+A ", out
        )
        flags = re.search(r";; flags: ([a-z ]+);", out)
        assert flags is not None and "ad" not in flags.group(1).split(), out


def test_unbound_over_dot(dnssec_hierarchy: Hierarchy) -> None:
    h = dnssec_hierarchy
    context = ssl.create_default_context(cafile=str(h.ca_file))
    query = dns.message.make_query("www.ed25519.test.", "A", want_dnssec=True)
    reply = dns.query.tls(
        query,
        LOOPBACK,
        port=h.resolver_dot_port,
        ssl_context=context,
        server_hostname=h.dot_auth_name,
        timeout=5,
    )
    assert rrset_of(reply, "www.ed25519.test.", dns.rdatatype.A)[0].address == "192.0.2.15"
    rrset_of(reply, "www.ed25519.test.", RRSIG, dns.rdatatype.A)


def test_build_is_fast_and_everything_stops(tmp_path: Path) -> None:
    started = time.monotonic()
    with signed_hierarchy(tmp_path / "h") as h:
        elapsed = time.monotonic() - started
        ports = (h.auth_port, h.resolver_port)
        assert all(answers_on_udp(p, "www.test.") for p in ports)
    assert elapsed < 15, f"build and start took {elapsed:.1f} s"
    assert not any(answers_on_udp(p, "www.test.") for p in ports)


# --- the tamper proxy ---------------------------------------------------------------------------


def test_flip_finds_the_first_matching_non_rrsig_record() -> None:
    query = dns.message.make_query("www.example.", "A", want_dnssec=True)
    reply = dns.message.make_response(query)
    reply.answer.append(dns.rrset.from_text("other.example.", 60, "IN", "A", "192.0.2.1"))
    sig = "A 13 2 60 20300101000000 20200101000000 1 example. AAAA"
    reply.answer.append(dns.rrset.from_text("www.example.", 60, "IN", "RRSIG", sig))
    reply.answer.append(dns.rrset.from_text("www.example.", 60, "IN", "A", "192.0.2.7"))
    wire = reply.to_wire()  # owners compressed against the question
    forged, flip = flip_rdata_byte(wire, dns.name.from_text("WWW.example."))
    assert flip is not None and flip.rdtype == dns.rdatatype.A and flip.rdata_length == 4
    assert [i for i in range(len(wire)) if wire[i] != forged[i]] == [flip.offset]
    parsed = dns.message.from_wire(forged)
    assert [str(rd) for r in parsed.answer for rd in r if r.rdtype == dns.rdatatype.A] == [
        "192.0.2.1",
        "192.0.2.248",
    ]
    assert flip_rdata_byte(wire, dns.name.from_text("nx.example.")) == (wire, None)
    assert find_rdata(wire[: flip.rdata_start + 2], dns.name.from_text("www.example.")) is None


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_tamper_proxy_forges_one_rdata_octet(dnssec_hierarchy: Hierarchy, transport: str) -> None:
    h = dnssec_hierarchy
    exchange = dns.query.udp if transport == "udp" else dns.query.tcp
    with running_tamper_proxy(h.resolver_port, "www.nsec.test.") as proxy:
        query = dns.message.make_query("www.nsec.test.", "A", want_dnssec=True)
        forged = exchange(query, LOOPBACK, port=proxy.port, timeout=5)
        assert proxy.tampered == 1 and proxy.last is not None and proxy.last_flip is not None
        original, sent = proxy.last
        assert len(original) == len(sent)
        assert [i for i in range(len(sent)) if original[i] != sent[i]] == [proxy.last_flip.offset]
        assert dns.message.from_wire(sent) == forged
        a = rrset_of(forged, "www.nsec.test.", dns.rdatatype.A)[0]
        assert a.address == "192.0.2.245"
        before = dns.message.from_wire(original)
        assert rrset_of(forged, "www.nsec.test.", RRSIG, dns.rdatatype.A) == rrset_of(
            before, "www.nsec.test.", RRSIG, dns.rdatatype.A
        )
        # other names pass untouched, and so does everything once switched off
        other = exchange(
            dns.message.make_query("www.nsec3.test.", "A"), LOOPBACK, port=proxy.port, timeout=5
        )
        assert rrset_of(other, "www.nsec3.test.", dns.rdatatype.A)[0].address == "192.0.2.10"
        proxy.enabled = False
        clean = exchange(query, LOOPBACK, port=proxy.port, timeout=5)
        assert rrset_of(clean, "www.nsec.test.", dns.rdatatype.A)[0].address == "192.0.2.10"
        assert (proxy.tampered, proxy.forwarded) == (1, 3)
