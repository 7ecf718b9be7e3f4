"""DNS64 synthesis and RFC 7050 prefix discovery, pure (core/dns64.py): table tests."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import pytest

from stubby_py.core import dns64

WKP = IPv6Network("64:ff9b::/96")
NSP = IPv6Network("2001:db8:64::/96")
SOA = "ns.example. host.example. 1 3600 600 86400 {minimum}"


def reply(
    name: str,
    qtype: str,
    answer: list[tuple[str, int, str, str]] = (),  # type: ignore[assignment]
    soa: tuple[int, int] | None = None,
    rcode: dns.rcode.Rcode = dns.rcode.NOERROR,
) -> bytes:
    query = dns.message.make_query(name, qtype)
    message = dns.message.make_response(query)
    message.set_rcode(rcode)
    message.flags |= dns.flags.RA | dns.flags.AD
    for owner, ttl, rtype, text in answer:
        texts = text.split() if rtype in ("A", "AAAA") else [text]
        message.answer.append(dns.rrset.from_text(owner, ttl, "IN", rtype, *texts))
    if soa is not None:
        ttl, minimum = soa
        message.authority.append(
            dns.rrset.from_text("example.", ttl, "IN", "SOA", SOA.format(minimum=minimum))
        )
    return message.to_wire()


def question(name: str) -> bytes:
    return dns.message.make_query(name, "AAAA").to_wire()[12:]


def addresses(body: bytes) -> dict[str, list[tuple[str, int]]]:
    message = dns.message.from_wire(body)
    found: dict[str, list[tuple[str, int]]] = {}
    for rrset in message.answer:
        for rdata in rrset:
            found.setdefault(dns.rdatatype.to_text(rrset.rdtype), []).append(
                (rdata.to_text(), rrset.ttl)
            )
    return found


NODATA = reply("www.example.", "AAAA", soa=(3600, 300))


@pytest.mark.parametrize(
    ("prefix", "v4", "v6"),
    [  # RFC 6052 §2.4's table
        ("2001:db8::/32", "192.0.2.33", "2001:db8:c000:221::"),
        ("2001:db8:100::/40", "192.0.2.33", "2001:db8:1c0:2:21::"),
        ("2001:db8:122::/48", "192.0.2.33", "2001:db8:122:c000:2:2100::"),
        ("2001:db8:122:300::/56", "192.0.2.33", "2001:db8:122:3c0:0:221::"),
        ("2001:db8:122:344::/64", "192.0.2.33", "2001:db8:122:344:c0:2:2100:0"),
        ("2001:db8:122:344::/96", "192.0.2.33", "2001:db8:122:344::192.0.2.33"),
        ("64:ff9b::/96", "192.0.2.33", "64:ff9b::192.0.2.33"),
    ],
)
def test_embed_and_extract_follow_rfc6052(prefix: str, v4: str, v6: str) -> None:
    network = IPv6Network(prefix)
    assert dns64.embed(network, IPv4Address(v4)) == IPv6Address(v6)
    assert dns64.extract(IPv6Address(v6), network.prefixlen) == IPv4Address(v4)


def test_nodata_is_synthesized_without_ad_and_ttl_capped_by_soa_minimum() -> None:
    a = reply("www.example.", "A", [("www.example.", 3600, "A", "93.184.216.34")])
    body = dns64.synthesize(question("www.example."), NODATA, a, WKP)
    assert body is not None
    message = dns.message.from_wire(body)
    assert not message.flags & dns.flags.AD
    assert message.rcode() == dns.rcode.NOERROR
    assert addresses(body) == {"AAAA": [("64:ff9b::5db8:d822", 300)]}


@pytest.mark.parametrize(
    ("a_ttl", "soa", "expected"),
    [
        (60, (3600, 300), 60),  # the A's TTL is shorter
        (3600, (3600, 300), 300),  # the SOA's MINIMUM
        (3600, (100, 300), 100),  # the SOA's own TTL (RFC 2308 negative TTL)
        (3600, None, 600),  # no SOA: 600 s at most (§5.1.7)
        (30, None, 30),
    ],
)
def test_ttl_is_the_smaller_of_a_and_negative_ttl(
    a_ttl: int, soa: tuple[int, int] | None, expected: int
) -> None:
    aaaa = reply("www.example.", "AAAA", soa=soa)
    a = reply("www.example.", "A", [("www.example.", a_ttl, "A", "93.184.216.34")])
    body = dns64.synthesize(question("www.example."), aaaa, a, WKP)
    assert body is not None
    assert addresses(body)["AAAA"][0][1] == expected


def test_cname_chain_is_kept_and_aaaa_owned_by_the_target() -> None:
    aaaa = reply("www.example.", "AAAA", [("www.example.", 300, "CNAME", "cdn.example.")], (60, 60))
    a = reply(
        "www.example.", "A",
        [("www.example.", 300, "CNAME", "cdn.example."),
         ("cdn.example.", 120, "A", "93.184.216.34 8.8.4.4")],
    )  # fmt: skip
    body = dns64.synthesize(question("www.example."), aaaa, a, NSP)
    assert body is not None
    message = dns.message.from_wire(body)
    assert [(r.name.to_text(), dns.rdatatype.to_text(r.rdtype)) for r in message.answer] == [
        ("www.example.", "CNAME"), ("cdn.example.", "AAAA"),
    ]  # fmt: skip
    assert sorted(addresses(body)["AAAA"]) == [
        ("2001:db8:64::5db8:d822", 60), ("2001:db8:64::808:404", 60),
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("prefix", "a_records", "expected"),
    [
        (NSP, "127.0.0.1", None),
        (NSP, "0.1.2.3", None),
        (NSP, "169.254.1.1", None),
        (NSP, "255.255.255.255", None),
        (NSP, "10.1.2.3", ["2001:db8:64::a01:203"]),  # a network-specific prefix may map these
        (WKP, "10.1.2.3", None),  # the Well-Known Prefix: global addresses only (RFC 6052 §3.1)
        (WKP, "192.168.1.1", None),
        (WKP, "127.0.0.1 93.184.216.34", ["64:ff9b::5db8:d822"]),  # the excluded one is left out
    ],
)
def test_excluded_addresses(
    prefix: IPv6Network, a_records: str, expected: list[str] | None
) -> None:
    a = reply("www.example.", "A", [("www.example.", 300, "A", a_records)])
    body = dns64.synthesize(question("www.example."), NODATA, a, prefix)
    if expected is None:
        assert body is None
    else:
        assert body is not None
        assert [text for text, _ttl in addresses(body)["AAAA"]] == expected


def test_config_excluded_ranges() -> None:
    a = reply("www.example.", "A", [("www.example.", 300, "A", "93.184.216.34")])
    also = [IPv4Network("93.184.0.0/16")]
    assert dns64.synthesize(question("www.example."), NODATA, a, WKP, also) is None


def test_not_synthesized_when_not_nodata() -> None:
    a = reply("www.example.", "A", [("www.example.", 300, "A", "93.184.216.34")])
    with_aaaa = reply("www.example.", "AAAA", [("www.example.", 300, "AAAA", "2001:db8::1")])
    nxdomain = reply("www.example.", "AAAA", soa=(60, 60), rcode=dns.rcode.NXDOMAIN)
    servfail = reply("www.example.", "AAAA", rcode=dns.rcode.SERVFAIL)
    name = dns.name.from_text("www.example.")
    for aaaa in (with_aaaa, nxdomain, servfail):
        assert not dns64.wants_synthesis(0x0100, name, aaaa)
        assert dns64.synthesize(question("www.example."), aaaa, a, WKP) is None
    assert dns64.wants_synthesis(0x0100, name, NODATA)
    empty_a = reply("www.example.", "A", soa=(60, 60))
    assert dns64.synthesize(question("www.example."), NODATA, empty_a, WKP) is None


def test_cd_and_ip6_arpa_are_not_synthesized() -> None:
    name = dns.name.from_text("www.example.")
    assert not dns64.wants_synthesis(0x0100 | dns.flags.CD, name, NODATA)
    reverse = dns.name.from_text("1.0.0.0.ip6.arpa.")
    assert not dns64.wants_synthesis(0x0100, reverse, NODATA)


def test_rrsigs_of_the_a_reply_are_dropped() -> None:
    sig = "A 13 2 300 20300101000000 20200101000000 1 example. AAAA"
    a = reply(
        "www.example.", "A",
        [("www.example.", 300, "A", "93.184.216.34"), ("www.example.", 300, "RRSIG", sig)],
    )  # fmt: skip
    body = dns64.synthesize(question("www.example."), NODATA, a, WKP)
    assert body is not None
    assert set(addresses(body)) == {"AAAA"}


def test_question_keeps_the_clients_case() -> None:
    a = reply("www.example.", "A", [("www.example.", 300, "A", "93.184.216.34")])
    body = dns64.synthesize(question("WwW.ExAmple."), NODATA, a, WKP)
    assert body is not None
    assert body[12 : 12 + len(question("WwW.ExAmple."))] == question("WwW.ExAmple.")


@pytest.mark.parametrize(
    ("records", "expected"),
    [
        (["64:ff9b::c000:aa", "64:ff9b::c000:ab"], ["64:ff9b::/96"]),
        (["2001:db8:122:344::192.0.0.171"], ["2001:db8:122:344::/96"]),
        (["2001:db8:c000:aa::"], ["2001:db8::/32"]),
        (["2001:db8:122:344:c0:0:aa00:0"], ["2001:db8:122:344::/64"]),
        (["2001:db8:122:3c0:0:aa::"], ["2001:db8:122:300::/56"]),
        (["2001:db8::1"], []),  # no well-known address in it
    ],
)
def test_rfc7050_discovery(records: list[str], expected: list[str]) -> None:
    body = reply("ipv4only.arpa.", "AAAA", [("ipv4only.arpa.", 300, "AAAA", " ".join(records))])
    assert [str(p) for p in dns64.discovered_prefixes(body)] == expected


def test_rfc7050_discovery_without_answer() -> None:
    assert dns64.discovered_prefixes(reply("ipv4only.arpa.", "AAAA", soa=(60, 60))) == []
    nx = reply("ipv4only.arpa.", "AAAA", rcode=dns.rcode.NXDOMAIN)
    assert dns64.discovered_prefixes(nx) == []
    assert dns64.discovered_prefixes(b"\x00") == []


@pytest.mark.parametrize(
    ("text", "ok"),
    [
        ("auto", "auto"), ("off", "off"), ("64:ff9b::/96", "64:ff9b::/96"),
        ("2001:db8:0:0::/64", "2001:db8::/64"), ("64:ff9b::/80", None),
        ("64:ff9b::1/96", None), ("2001:db8:0:0:ff00::/96", None), ("nat64", None),
    ],
)  # fmt: skip
def test_prefix_setting(text: str, ok: str | None) -> None:
    if ok is None:
        with pytest.raises(ValueError):
            dns64.parse_prefix_setting(text)
    else:
        assert dns64.parse_prefix_setting(text) == ok


def test_config_file_option() -> None:
    from stubby_py.core.config import parse_config
    from stubby_py.core.errors import ConfigError

    assert parse_config("dns64: off\n", "road.yaml").road.dns64 == "off"
    assert parse_config("dns64: 64:ff9b:0::/96\n", "road.yaml").road.dns64 == "64:ff9b::/96"
    assert parse_config("captive_portal: auto\n", "road.yaml").road.dns64 == "auto"
    with pytest.raises(ConfigError, match=r"road.yaml:2: dns64: .*RFC 6052"):
        parse_config("# road\ndns64: 64:ff9b::/80\n", "road.yaml")


# --- RFC 6147 review fixes ----------------------------------------------------------------------


def test_only_class_in_is_synthesized() -> None:
    """§5.1.7: DNS64 for another class is undefined; such a question is passed as it came."""
    name = dns.name.from_text("www.example.")
    assert dns64.wants_synthesis(0x0100, name, NODATA, dns.rdataclass.IN)
    assert not dns64.wants_synthesis(0x0100, name, NODATA, dns.rdataclass.CH)
    assert dns64.plan(0x0100, name, NODATA, dns.rdataclass.HS) is dns64.Plan.PASS


def test_ipv4_mapped_aaaa_counts_as_none() -> None:
    """§5.1.4: ::ffff:0:0/96 is excluded by default: a reply with only such AAAA records is
    synthesized, as a NODATA would be."""
    mapped = reply("www.example.", "AAAA", [("www.example.", 300, "AAAA", "::ffff:93.184.216.34")])
    name = dns.name.from_text("www.example.")
    assert dns64.plan(0x0100, name, mapped) is dns64.Plan.SYNTHESIZE
    a = reply("www.example.", "A", [("www.example.", 300, "A", "93.184.216.34")])
    body = dns64.synthesize(question("www.example."), mapped, a, WKP)
    assert body is not None
    assert addresses(body) == {"AAAA": [("64:ff9b::5db8:d822", 300)]}


def test_configured_ipv6_exclusions() -> None:
    documentation = reply("www.example.", "AAAA", [("www.example.", 300, "AAAA", "2001:db8::1")])
    name = dns.name.from_text("www.example.")
    assert dns64.plan(0x0100, name, documentation) is dns64.Plan.PASS
    excluded = [*dns64.EXCLUDED_AAAA, IPv6Network("2001:db8::/32")]
    assert dns64.plan(0x0100, name, documentation, excluded_aaaa=excluded) is dns64.Plan.SYNTHESIZE
    a = reply("www.example.", "A", [("www.example.", 300, "A", "93.184.216.34")])
    body = dns64.synthesize(question("www.example."), documentation, a, NSP, (), excluded)
    assert body is not None and addresses(body)["AAAA"] == [("2001:db8:64::5db8:d822", 300)]


def test_excluded_records_are_dropped_from_a_mixed_answer() -> None:
    """§5.1.4: with usable records too, the excluded ones are left out (and the changed answer
    loses its AD and the RRSIGs of its AAAA set)."""
    sig = "AAAA 13 2 300 20300101000000 20200101000000 1 example. AAAA"
    mixed = reply(
        "www.example.", "AAAA",
        [("www.example.", 300, "AAAA", "::ffff:93.184.216.34 2001:db8::1"),
         ("www.example.", 300, "RRSIG", sig)],
    )  # fmt: skip
    name = dns.name.from_text("www.example.")
    assert dns64.plan(0x0100, name, mixed) is dns64.Plan.FILTER
    assert dns64.plan(0x0100 | dns.flags.CD, name, mixed) is dns64.Plan.PASS  # §5.5: as it came
    body = dns64.without_excluded(question("www.example."), mixed)
    assert body is not None
    assert addresses(body) == {"AAAA": [("2001:db8::1", 300)]}
    assert not dns.message.from_wire(body).flags & dns.flags.AD


def test_authority_and_additional_come_from_the_a_reply() -> None:
    """§5.4: the synthesized answer's authority and additional sections are those of the
    response to the final query (the A query)."""
    query = dns.message.make_query("www.example.", "A")
    a = dns.message.make_response(query)
    a.answer.append(dns.rrset.from_text("www.example.", 300, "IN", "A", "93.184.216.34"))
    a.authority.append(dns.rrset.from_text("example.", 300, "IN", "NS", "ns.example."))
    a.additional.append(dns.rrset.from_text("ns.example.", 300, "IN", "A", "192.0.2.53"))
    body = dns64.synthesize(question("www.example."), NODATA, a.to_wire(), WKP)
    assert body is not None
    message = dns.message.from_wire(body)
    assert [r.to_text() for r in message.authority] == ["example. 300 IN NS ns.example."]
    assert [r.to_text() for r in message.additional] == ["ns.example. 300 IN A 192.0.2.53"]
