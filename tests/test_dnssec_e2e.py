"""stubby-py validating against the private signed hierarchy, end to end (RFC 4033-4035, 5155,
6840, 8914, 9276).

The daemon forwards to the hierarchy's non-validating Unbound with ``dnssec: validate`` and the
private root's DS as its trust anchor. Each case of the hierarchy has one expected outcome:
secure -> AD (to clients that set DO or AD), insecure -> no AD, bogus -> SERVFAIL with the
Extended DNS Error of its cause; CD=1 -> the data as received, never AD; no DNSSEC records to
clients without DO. A proxy that flips one octet of signed data must never get its forgery past.
delv's view of the same cases is in test_dnssec_hierarchy.py.
"""

from __future__ import annotations

import json
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dns.edns
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest

from stubby_py.dnssec.validate import Validator
from tests.daemon_thread import make_config, running_daemon
from tests.dnssec_hierarchy import (
    ALGORITHM_ZONES,
    BOGUS_ADDRESS,
    BOGUS_ZONES,
    CHANGED_ADDRESS,
    Hierarchy,
)
from tests.peers import LOOPBACK
from tests.servers.tamper_proxy import running_tamper_proxy

pytestmark = [pytest.mark.interop, pytest.mark.timeout(60)]

DNSSEC_TYPES = {dns.rdatatype.RRSIG, dns.rdatatype.NSEC, dns.rdatatype.NSEC3}
NOERROR, NXDOMAIN, SERVFAIL = dns.rcode.NOERROR, dns.rcode.NXDOMAIN, dns.rcode.SERVFAIL
UNSUPPORTED_NSEC3_ITERATIONS = 27  # RFC 9276 §6 (EDE registry)


@pytest.fixture(scope="module")
def port(dnssec_hierarchy: Hierarchy) -> Iterator[int]:
    """A validating daemon forwarding to the hierarchy's Unbound over plain UDP/TCP."""
    config = make_config(
        [dnssec_hierarchy.resolver_upstream],
        dnssec="validate",
        trust_anchors=str(dnssec_hierarchy.anchor_ds_file),
    )
    with running_daemon(config) as daemon:
        yield daemon.port


def ask(
    port: int,
    name: str,
    rdtype: str = "A",
    *,
    do: bool = True,
    cd: bool = False,
    ad: bool = False,
    edns: bool = True,
) -> dns.message.Message:
    query = dns.message.make_query(name, rdtype, use_edns=0 if edns else False, want_dnssec=do)
    if cd:
        query.flags |= dns.flags.CD
    if ad:
        query.flags |= dns.flags.AD
    return dns.query.tcp(query, LOOPBACK, port=port, timeout=10)


def has_ad(reply: dns.message.Message) -> bool:
    return bool(reply.flags & dns.flags.AD)


def ede_codes(reply: dns.message.Message) -> list[int]:
    return [o.code for o in reply.options if isinstance(o, dns.edns.EDEOption)]


def rdata_texts(reply: dns.message.Message, rdtype: int) -> list[str]:
    return [rd.to_text() for r in reply.answer if r.rdtype == rdtype for rd in r]


def dnssec_records(reply: dns.message.Message) -> list[dns.rrset.RRset]:
    sections = (reply.answer, reply.authority, reply.additional)
    return [r for section in sections for r in section if r.rdtype in DNSSEC_TYPES]


def signed_types(reply: dns.message.Message) -> set[int]:
    """The types the answer section's RRSIGs cover."""
    return {r.covers for r in reply.answer if r.rdtype == dns.rdatatype.RRSIG}


def describe(reply: dns.message.Message) -> str:
    return f"ede={ede_codes(reply)}\n{reply}"


# --- the table ------------------------------------------------------------------------------

#: (name, type, rcode, answer data of that type or None): secure, AD with DO
SECURE: list[tuple[str, str, int, str | None]] = [("www.test.", "A", NOERROR, "192.0.2.1")]
for _zone, _number in ALGORITHM_ZONES.items():
    SECURE += [
        (f"www.{_zone}", "A", NOERROR, f"192.0.2.{_number}"),
        (f"www.{_zone}", "TXT", NOERROR, f'"alg {_number}"'),
    ]
for _zone, _other in (("nsec.test.", "nsec3.test."), ("nsec3.test.", "nsec.test.")):
    SECURE += [
        (f"www.{_zone}", "A", NOERROR, "192.0.2.10"),
        (f"nx.{_zone}", "A", NXDOMAIN, None),
        (f"www.{_zone}", "MX", NOERROR, None),  # NODATA
        (f"x.wild.{_zone}", "TXT", NOERROR, '"wild"'),  # wildcard answer
        (f"x.wild.{_zone}", "MX", NOERROR, None),  # wildcard NODATA
        (f"ent.{_zone}", "A", NOERROR, None),  # empty non-terminal NODATA
        (f"a.b.ent.{_zone}", "A", NOERROR, "192.0.2.11"),
        (f"alias.{_zone}", "A", NOERROR, "192.0.2.10"),  # CNAME into the other zone
    ]
SECURE += [
    ("www.dname.nsec.test.", "A", NOERROR, "192.0.2.10"),  # DNAME into nsec3.test.
    ("www.optout.test.", "A", NOERROR, "192.0.2.12"),
]
SECURE_IDS = [f"{n}{t}" for n, t, _, _ in SECURE]

#: (name, type, rcode, data): insecure, never AD
INSECURE: list[tuple[str, str, int, str | None]] = [
    ("www.insecure.test.", "A", NOERROR, "192.0.2.21"),  # no DS at test.
    ("www.unsigned.optout.test.", "A", NOERROR, "192.0.2.20"),  # no DS, NSEC3 opt-out
    ("to-insecure.nsec.test.", "A", NOERROR, "192.0.2.21"),  # secure CNAME to insecure
    ("to-insecure.nsec3.test.", "A", NOERROR, "192.0.2.21"),
    # RFC 4035 §5.2 / RFC 8624: a DS whose digest, or a key whose algorithm, is not supported
    ("www.sha1ds.test.", "A", NOERROR, "192.0.2.30"),
    ("www.rsasha1.test.", "A", NOERROR, "192.0.2.30"),
    # RFC 9276 §3.2: NSEC3 with 200 iterations proves nothing; insecure, not bogus
    ("nx.manyiter.test.", "A", NXDOMAIN, None),
]
INSECURE_IDS = [f"{n}{t}" for n, t, _, _ in INSECURE]


def bogus_name(zone: str) -> str:
    return f"nx.{zone}" if zone == "nonsec.test." else f"www.{zone}"


#: (name, EDE codes any of which fits, rcode and A data under CD=1)
BOGUS: list[tuple[str, set[int], int, str | None]] = []
for _zone, _code in BOGUS_ZONES.items():
    _codes = {6, 9} if _zone == "badkeysig.test." else {_code}
    if _zone == "nonsec.test.":
        BOGUS.append((bogus_name(_zone), _codes, NXDOMAIN, None))
    else:
        _data = CHANGED_ADDRESS if _zone == "changed.test." else BOGUS_ADDRESS
        BOGUS.append((bogus_name(_zone), _codes, NOERROR, _data))
BOGUS_IDS = [name for name, _, _, _ in BOGUS]


def check_data(reply: dns.message.Message, rdtype: str, data: str | None) -> None:
    wanted = dns.rdatatype.from_text(rdtype)
    if data is None:
        assert not rdata_texts(reply, wanted), describe(reply)
    else:
        assert rdata_texts(reply, wanted) == [data], describe(reply)


# --- secure -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "rdtype", "rcode", "data"), SECURE, ids=SECURE_IDS)
def test_secure_with_do_has_ad_and_rrsigs(
    port: int, name: str, rdtype: str, rcode: int, data: str | None
) -> None:
    reply = ask(port, name, rdtype)
    assert reply.rcode() == rcode and has_ad(reply), describe(reply)
    check_data(reply, rdtype, data)
    if data is not None:
        covered = signed_types(reply)
        assert dns.rdatatype.from_text(rdtype) in covered, describe(reply)
    else:
        # RFC 4035 §3.1.3: the denial and its signatures come along
        denial = {r.rdtype for r in reply.authority}
        assert dns.rdatatype.RRSIG in denial, describe(reply)
        assert denial & {dns.rdatatype.NSEC, dns.rdatatype.NSEC3}, describe(reply)


@pytest.mark.parametrize(("name", "rdtype", "rcode", "data"), SECURE, ids=SECURE_IDS)
def test_secure_with_ad_but_no_do_has_ad_and_no_dnssec_records(
    port: int, name: str, rdtype: str, rcode: int, data: str | None
) -> None:
    """RFC 6840 §5.7: AD in the query asks for AD in the reply, without DNSSEC records."""
    reply = ask(port, name, rdtype, do=False, ad=True)
    assert reply.rcode() == rcode and has_ad(reply), describe(reply)
    check_data(reply, rdtype, data)
    assert not dnssec_records(reply), describe(reply)


@pytest.mark.parametrize("name", ["x.wild.nsec.test.", "x.wild.nsec3.test."])
def test_wildcard_answer_keeps_its_proof(port: int, name: str) -> None:
    """RFC 4035 §3.1.3.3: a wildcard expansion comes with the proof no closer name exists."""
    reply = ask(port, name, "TXT")
    assert has_ad(reply), describe(reply)
    assert {r.rdtype for r in reply.authority} & {dns.rdatatype.NSEC, dns.rdatatype.NSEC3}


def test_cname_and_dname_chains_are_whole(port: int) -> None:
    alias = ask(port, "alias.nsec.test.")
    assert rdata_texts(alias, dns.rdatatype.CNAME) == ["www.nsec3.test."], describe(alias)
    dname = ask(port, "www.dname.nsec.test.")
    assert rdata_texts(dname, dns.rdatatype.DNAME) == ["nsec3.test."], describe(dname)
    assert rdata_texts(dname, dns.rdatatype.CNAME) == ["www.nsec3.test."], describe(dname)
    assert dns.rdatatype.DNAME in signed_types(dname), describe(dname)


# --- insecure -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "rdtype", "rcode", "data"), INSECURE, ids=INSECURE_IDS)
def test_insecure_answers_have_no_ad(
    port: int, name: str, rdtype: str, rcode: int, data: str | None
) -> None:
    for do, ad in ((True, False), (False, True)):
        reply = ask(port, name, rdtype, do=do, ad=ad)
        assert reply.rcode() == rcode and not has_ad(reply), describe(reply)
        check_data(reply, rdtype, data)
        # only the "why insecure" codes: unsupported algorithm, digest, NSEC3 iterations
        assert set(ede_codes(reply)) <= {1, 2, UNSUPPORTED_NSEC3_ITERATIONS}, describe(reply)


@pytest.mark.parametrize(
    ("name", "code"), [("www.sha1ds.test.", 2), ("www.rsasha1.test.", 1)], ids=["digest", "alg"]
)
def test_unsupported_algorithms_are_flagged(port: int, name: str, code: int) -> None:
    """Insecure because of what this validator does not support: EDE 2 (DS digest) or 1
    (algorithm) says so (RFC 8914 §4.2, §4.3), on the first answer and on cached ones."""
    for _ in range(2):
        reply = ask(port, name)
        assert reply.rcode() == NOERROR and not has_ad(reply), describe(reply)
        assert ede_codes(reply) == [code], describe(reply)
    # another name in the zone, now known insecure (the short path): the same EDE
    other = ask(port, "nx." + name.removeprefix("www."))
    assert other.rcode() == NXDOMAIN and ede_codes(other) == [code], describe(other)


def test_too_many_nsec3_iterations_are_flagged(port: int) -> None:
    """RFC 9276 §3.2: an insecure answer for this reason SHOULD carry EDE 27."""
    reply = ask(port, "nx.manyiter.test.")
    assert reply.rcode() == NXDOMAIN and not has_ad(reply), describe(reply)
    assert UNSUPPORTED_NSEC3_ITERATIONS in ede_codes(reply), describe(reply)


# --- bogus --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "codes", "cd_rcode", "cd_data"), BOGUS, ids=BOGUS_IDS)
def test_bogus_is_servfail_with_its_ede(
    port: int, name: str, codes: set[int], cd_rcode: int, cd_data: str | None
) -> None:
    for do in (True, False):
        reply = ask(port, name, do=do)
        assert reply.rcode() == SERVFAIL, describe(reply)
        assert not has_ad(reply) and not reply.answer, describe(reply)
        assert codes & set(ede_codes(reply)), f"want EDE {codes}: {describe(reply)}"


@pytest.mark.parametrize(("name", "codes", "cd_rcode", "cd_data"), BOGUS, ids=BOGUS_IDS)
def test_checking_disabled_gets_bogus_data_as_received(
    port: int, name: str, codes: set[int], cd_rcode: int, cd_data: str | None
) -> None:
    """RFC 4035 §3.2.2: CD=1 hands over the data unvalidated; never AD (RFC 6840 §5.9)."""
    for do in (True, False):
        reply = ask(port, name, do=do, cd=True)
        assert reply.rcode() == cd_rcode and not has_ad(reply), describe(reply)
        check_data(reply, "A", cd_data)
        if do and name in ("www.expired.test.", "www.changed.test."):
            assert dns.rdatatype.A in signed_types(reply), describe(reply)
        if not do:
            assert not dnssec_records(reply), describe(reply)


# --- DO-stripping across the table ---------------------------------------------------------------

ALL = [(n, t) for n, t, _, _ in SECURE + INSECURE]


@pytest.mark.parametrize(("name", "rdtype"), ALL, ids=[f"{n}{t}" for n, t in ALL])
def test_no_dnssec_records_without_do(port: int, name: str, rdtype: str) -> None:
    """RFC 4035 §3.2.1: without DO, no RRSIG, NSEC or NSEC3 in any section."""
    for edns in (True, False):
        reply = ask(port, name, rdtype, do=False, edns=edns)
        assert reply.rcode() in (NOERROR, NXDOMAIN), describe(reply)
        assert not dnssec_records(reply), describe(reply)
        assert not has_ad(reply), describe(reply)


# --- forged data and other upstreams -------------------------------------------------------------


def test_forged_rdata_never_reaches_the_client(dnssec_hierarchy: Hierarchy) -> None:
    name = "www.nsec.test."
    with running_tamper_proxy(dnssec_hierarchy.resolver_port, name) as proxy:
        config = make_config(
            [f"udp://{LOOPBACK}:{proxy.port}"],
            dnssec="validate",
            trust_anchors=str(dnssec_hierarchy.anchor_ds_file),
        )
        with running_daemon(config) as daemon:
            for do in (True, False):
                reply = ask(daemon.port, name, do=do)
                assert reply.rcode() == SERVFAIL and not reply.answer, describe(reply)
                assert 6 in ede_codes(reply), describe(reply)  # DNSSEC Bogus
            assert proxy.tampered >= 1
            # the forgery is really there: CD=1 hands it over as received
            unchecked = ask(daemon.port, name, cd=True)
            assert rdata_texts(unchecked, dns.rdatatype.A) == ["192.0.2.245"], describe(unchecked)
            assert not has_ad(unchecked)
            # names the proxy leaves alone still validate through it
            clean = ask(daemon.port, "www.nsec3.test.")
            assert has_ad(clean) and rdata_texts(clean, dns.rdatatype.A) == ["192.0.2.10"]


def test_a_lying_upstream_is_passed_over_for_an_honest_one(dnssec_hierarchy: Hierarchy) -> None:
    """A bogus answer may be one upstream's lie: the next upstream is asked before SERVFAIL."""
    name = "www.nsec.test."
    with running_tamper_proxy(dnssec_hierarchy.resolver_port, name) as proxy:
        config = make_config(
            [f"udp://{LOOPBACK}:{proxy.port}", dnssec_hierarchy.resolver_upstream],
            dnssec="validate",
            trust_anchors=str(dnssec_hierarchy.anchor_ds_file),
            strategy="failover",
            hedge=False,
        )
        with running_daemon(config) as daemon:
            reply = ask(daemon.port, name)
            assert reply.rcode() == NOERROR and has_ad(reply), describe(reply)
            assert rdata_texts(reply, dns.rdatatype.A) == ["192.0.2.10"], describe(reply)
            assert proxy.tampered >= 1
            snapshot = daemon.call(daemon.runtime.snapshot)
            assert snapshot["counters"]["dnssec_retries"] == 1
            liar = snapshot["upstreams"][0]
            assert liar["failure_kinds"].get("dnssec-bogus") == 1, liar
            # a truly bogus zone stays SERVFAIL, after asking each upstream once
            bogus = ask(daemon.port, "www.changed.test.")
            assert bogus.rcode() == SERVFAIL and 6 in ede_codes(bogus), describe(bogus)


def test_validation_over_dot(dnssec_hierarchy: Hierarchy) -> None:
    h = dnssec_hierarchy
    config = make_config(
        [h.resolver_dot_upstream],
        str(h.ca_file),
        dnssec="validate",
        trust_anchors=str(h.anchor_ds_file),
    )
    with running_daemon(config) as daemon:
        secure = ask(daemon.port, "www.ecdsap384.test.")
        assert has_ad(secure) and rdata_texts(secure, dns.rdatatype.A) == ["192.0.2.14"]
        bogus = ask(daemon.port, "www.expired.test.")
        assert bogus.rcode() == SERVFAIL and 7 in ede_codes(bogus), describe(bogus)


def test_validation_off_passes_bogus_data(dnssec_hierarchy: Hierarchy) -> None:
    config = make_config([dnssec_hierarchy.resolver_upstream], dnssec="off")
    with running_daemon(config) as daemon:
        reply = ask(daemon.port, "www.expired.test.")
        assert reply.rcode() == NOERROR and not has_ad(reply), describe(reply)
        assert rdata_texts(reply, dns.rdatatype.A) == [BOGUS_ADDRESS]


# --- the daemon around the validator -------------------------------------------------------------


def test_a_rule_naming_the_default_group_is_still_validated(dnssec_hierarchy: Hierarchy) -> None:
    config = make_config(
        [dnssec_hierarchy.resolver_upstream],
        dnssec="validate",
        trust_anchors=str(dnssec_hierarchy.anchor_ds_file),
        rules=(("nsec.test.", "default"),),
    )
    with running_daemon(config) as daemon:
        secure = ask(daemon.port, "www.nsec.test.")
        assert has_ad(secure), describe(secure)
        bogus = ask(daemon.port, "www.expired.test.")
        assert bogus.rcode() == SERVFAIL


def test_bogus_answers_are_logged_by_zone_and_error_never_by_query_name(
    dnssec_hierarchy: Hierarchy, caplog: pytest.LogCaptureFixture
) -> None:
    config = make_config(
        [dnssec_hierarchy.resolver_upstream],
        dnssec="validate",
        trust_anchors=str(dnssec_hierarchy.anchor_ds_file),
    )
    with caplog.at_level("DEBUG", logger="stubby_py"), running_daemon(config) as daemon:
        for name in ("www.expired.test.", "secret-host.nosig.test.", "www.nosig.test."):
            ask(daemon.port, name)
    text = "\n".join(record.getMessage() for record in caplog.records)
    assert "DNSSEC bogus below zone test.: EDE 7 (Signature Expired)" in text, text
    for name in ("www.expired", "secret-host", "www.nosig"):
        assert name not in text, text


def test_turning_validation_on_forgets_answers_cached_unchecked(
    dnssec_hierarchy: Hierarchy,
) -> None:
    config = make_config(
        [dnssec_hierarchy.resolver_upstream],
        dnssec="off",
        trust_anchors=str(dnssec_hierarchy.anchor_ds_file),
    )
    with running_daemon(config) as daemon:
        unchecked = ask(daemon.port, "www.changed.test.")
        assert unchecked.rcode() == NOERROR  # off: the upstream's data, cached
        daemon.call(daemon.runtime.reconfigure, config.with_options(dnssec="validate"))
        checked = ask(daemon.port, "www.changed.test.")
        assert checked.rcode() == SERVFAIL and 6 in ede_codes(checked), describe(checked)


def test_unsigned_answers_below_a_known_insecure_delegation_take_the_short_path(
    dnssec_hierarchy: Hierarchy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once the key cache knows insecure.test. is an unsigned delegation, an unsigned answer
    below it (no RRSIG, no CNAME to follow) is insecure without being parsed or rewritten;
    a CNAME into it, or signed data, still takes the whole path."""
    config = make_config(
        [dnssec_hierarchy.resolver_upstream],
        dnssec="validate",
        trust_anchors=str(dnssec_hierarchy.anchor_ds_file),
    )
    parses: list[int] = []
    real_from_wire = dns.message.from_wire

    def counting_from_wire(*args: Any, **kwargs: Any) -> dns.message.Message:
        if threading.current_thread() is not threading.main_thread():  # the daemon's, not ours
            parses.append(1)
        return real_from_wire(*args, **kwargs)

    with running_daemon(config) as daemon:
        first = ask(daemon.port, "www.insecure.test.", do=False)
        assert first.rcode() == NOERROR and not has_ad(first), describe(first)
        monkeypatch.setattr("stubby_py.daemon.validation.dns.message.from_wire", counting_from_wire)
        for name, rdtype, rcode in (
            ("www.insecure.test.", "TXT", NOERROR),
            ("nx.insecure.test.", "A", NXDOMAIN),
        ):
            reply = ask(daemon.port, name, rdtype, do=False, ad=True)
            assert reply.rcode() == rcode and not has_ad(reply), describe(reply)
        assert parses == []  # the short path: not parsed
        chained = ask(daemon.port, "to-insecure.nsec.test.", ad=True)
        assert rdata_texts(chained, dns.rdatatype.A) == ["192.0.2.21"] and not has_ad(chained)
        assert parses  # a chain to follow: the whole path
        counters = daemon.call(daemon.runtime.snapshot)["counters"]
        assert counters["dnssec_insecure"] >= 4 and counters["dnssec_bogus"] == 0


def test_questions_below_a_known_insecure_delegation_build_no_dnspython_name(
    dnssec_hierarchy: Hierarchy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The unsigned short path looks the question up by its wire form: no dnspython name is
    built for it, and no proof from held NSEC records is tried (none above an insecure cut
    proves anything below it), yet the answers are the same."""
    config = make_config(
        [dnssec_hierarchy.resolver_upstream],
        dnssec="validate",
        trust_anchors=str(dnssec_hierarchy.anchor_ds_file),
    )
    names: list[int] = []
    proofs: list[int] = []
    real_from_wire = dns.name.from_wire
    real_synthesize = Validator.synthesize

    def in_daemon() -> bool:
        return threading.current_thread() is not threading.main_thread()

    def counting_from_wire(*args: Any, **kwargs: Any) -> tuple[dns.name.Name, int]:
        if in_daemon():
            names.append(1)
        return real_from_wire(*args, **kwargs)

    def counting_synthesize(self: Validator, *args: Any) -> Any:
        if in_daemon():
            proofs.append(1)
        return real_synthesize(self, *args)

    with running_daemon(config) as daemon:
        # the chain: insecure.test. proven an unsigned delegation; held NSEC records of test.
        assert ask(daemon.port, "www.insecure.test.").rcode() == NOERROR
        assert ask(daemon.port, "nx.nsec.test.").rcode() == NXDOMAIN
        monkeypatch.setattr("stubby_py.daemon.validation.dns.name.from_wire", counting_from_wire)
        monkeypatch.setattr(Validator, "synthesize", counting_synthesize)
        for name, rcode in (("nx1.insecure.test.", NXDOMAIN), ("a.wild.insecure.test.", NOERROR)):
            reply = ask(daemon.port, name, "A", do=False, ad=True)
            assert reply.rcode() == rcode and not has_ad(reply), describe(reply)
        assert names == [] and proofs == []
        signed = ask(daemon.port, "nx2.nsec.test.", ad=True)
        assert signed.rcode() == NXDOMAIN and has_ad(signed), describe(signed)
        assert proofs  # a signed zone's name is still proven from held records
        counters = daemon.call(daemon.runtime.snapshot)["counters"]
        assert counters["dnssec_insecure"] >= 3 and counters["dnssec_bogus"] == 0


def test_no_proof_from_held_records_is_tried_below_a_deeper_known_zone_cut(
    dnssec_hierarchy: Hierarchy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """NSEC records held for test. say nothing about names in ecdsap256.test., a zone the key
    cache knows: a question there goes upstream without an RFC 8198 proof being tried; one
    for a name in test. itself is still answered from them."""
    config = make_config(
        [dnssec_hierarchy.resolver_upstream],
        dnssec="validate",
        trust_anchors=str(dnssec_hierarchy.anchor_ds_file),
    )
    proofs: list[int] = []
    real_synthesize = Validator.synthesize

    def counting_synthesize(self: Validator, *args: Any) -> Any:
        if threading.current_thread() is not threading.main_thread():
            proofs.append(1)
        return real_synthesize(self, *args)

    with running_daemon(config) as daemon:
        assert ask(daemon.port, "www.ecdsap256.test.").rcode() == NOERROR  # the zone known
        assert ask(daemon.port, "nx1.test.").rcode() == NXDOMAIN  # test.'s NSEC held
        monkeypatch.setattr(Validator, "synthesize", counting_synthesize)
        reply = ask(daemon.port, "www.ecdsap256.test.", "TXT", ad=True)
        assert reply.rcode() == NOERROR and has_ad(reply), describe(reply)
        assert proofs == []
        denied = ask(daemon.port, "nx2.test.", ad=True)
        assert denied.rcode() == NXDOMAIN and has_ad(denied), describe(denied)
        assert proofs  # a name in test. itself: proven from the held records
        counters = daemon.call(daemon.runtime.snapshot)["counters"]
        assert counters["dnssec_synthesized"] >= 1 and counters["dnssec_bogus"] == 0


def test_a_validated_answer_is_copied_from_the_upstream_octets_not_rendered(
    dnssec_hierarchy: Hierarchy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A secure answer for a client without DO loses its RRSIGs by copying the other records'
    octets: dnspython renders nothing, and the client gets the data, AD, and no RRSIG."""
    config = make_config(
        [dnssec_hierarchy.resolver_upstream],
        dnssec="validate",
        trust_anchors=str(dnssec_hierarchy.anchor_ds_file),
    )
    renders: list[int] = []
    real_to_wire = dns.message.Message.to_wire

    def counting_to_wire(self: dns.message.Message, *args: Any, **kwargs: Any) -> bytes:
        if threading.current_thread() is not threading.main_thread():
            renders.append(1)
        return real_to_wire(self, *args, **kwargs)

    with running_daemon(config) as daemon:
        assert ask(daemon.port, "www.ecdsap256.test.").rcode() == NOERROR  # keys cached
        monkeypatch.setattr(dns.message.Message, "to_wire", counting_to_wire)
        reply = ask(daemon.port, "www.ecdsap256.test.", "TXT", do=False, ad=True)
        assert reply.rcode() == NOERROR and has_ad(reply), describe(reply)
        assert [r.rdtype for r in reply.answer] == [dns.rdatatype.TXT]
        assert renders == []
        signed = ask(daemon.port, "www.ed25519.test.", "TXT", do=True)  # a new zone's keys
        assert has_ad(signed) and any(r.rdtype == dns.rdatatype.RRSIG for r in signed.answer)


def test_trust_anchor_state_is_refreshed_and_kept_in_the_state_directory(
    dnssec_hierarchy: Hierarchy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """RFC 5011 §2.3: the root's keys are fetched again on a schedule of their own, with no
    query asking; their states go to $STATE_DIRECTORY/trust-anchors.json (systemd's
    StateDirectory=), the configured key Valid."""
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path))
    monkeypatch.setattr("stubby_py.daemon.anchor_updates.FIRST_REFRESH", 0.2)
    config = make_config(
        [dnssec_hierarchy.resolver_upstream],
        dnssec="validate",
        trust_anchors=str(dnssec_hierarchy.anchor_ds_file),
    )
    state = tmp_path / "trust-anchors.json"
    with running_daemon(config):
        deadline = time.monotonic() + 10
        while not state.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
    assert state.exists(), "no refresh wrote the state"
    assert stat.S_IMODE(state.stat().st_mode) == 0o600
    saved = json.loads(state.read_text())
    assert [key["state"] for key in saved["trackers"]["."]["keys"]] == ["Valid"]
    # made for these anchors: with others configured, the state is not taken up
    assert saved["configured"] and all(line.startswith(". DS ") for line in saved["configured"])
