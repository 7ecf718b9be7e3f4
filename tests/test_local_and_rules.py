"""Local answers (RFC 6761/6303/8375) and forwarding rules, with no network."""

from __future__ import annotations

import dns.message
import dns.rcode
import pytest

from stubby_py.core import local, wire
from stubby_py.core.router import Router


def client_query(name: str, rdtype: str = "A") -> wire.ClientQuery:
    return wire.parse_query(dns.message.make_query(name, rdtype).to_wire())


def wire_name(name: str) -> bytes:
    """The lower-cased wire form of the name, as the resolver looks rules up."""
    return client_query(name).key[:-5]


def answer(name: str, rdtype: str = "A") -> dns.message.Message | None:
    query = client_query(name, rdtype)
    zone = local.local_zone(query)
    return None if zone is None else dns.message.from_wire(local.local_answer(query, zone))


@pytest.mark.parametrize(
    ("name", "rdtype", "rcode", "data"),
    [
        ("localhost.", "A", "NOERROR", "127.0.0.1"),
        ("LocalHost.", "AAAA", "NOERROR", "::1"),
        ("app.dev.localhost.", "A", "NOERROR", "127.0.0.1"),
        ("localhost.", "MX", "NOERROR", None),
        ("1.0.0.127.in-addr.arpa.", "PTR", "NOERROR", "localhost."),
        ("1." + "0." * 31 + "ip6.arpa.", "PTR", "NOERROR", "localhost."),
        ("5.1.168.192.in-addr.arpa.", "PTR", "NXDOMAIN", None),
        ("1.0.0.10.in-addr.arpa.", "PTR", "NXDOMAIN", None),
        ("9.0.20.172.in-addr.arpa.", "PTR", "NXDOMAIN", None),
        ("printer.home.arpa.", "A", "NXDOMAIN", None),
        ("nas.local.", "A", "NXDOMAIN", None),
        ("anything.invalid.", "A", "NXDOMAIN", None),
    ],
)
def test_locally_served_names(name: str, rdtype: str, rcode: str, data: str | None) -> None:
    reply = answer(name, rdtype)
    assert reply is not None
    assert dns.rcode.to_text(reply.rcode()) == rcode
    if data is None:
        assert not reply.answer and reply.authority  # NODATA/NXDOMAIN with an SOA
    else:
        assert reply.answer[0][0].to_text() == data


@pytest.mark.parametrize(
    "name",
    ["example.com.", "www.test.", "example.", "1.1.1.1.in-addr.arpa.", "8.8.8.8.in-addr.arpa.",
     "localhost.example.", "notlocal."],
)  # fmt: skip
def test_other_names_are_forwarded(name: str) -> None:
    assert answer(name) is None


def test_most_specific_rule_wins_case_insensitively() -> None:
    router = Router({"corp.example": "vpn", "dev.corp.example": "lab", "lan": "home"})
    key = wire_name
    assert router.group_for(key("a.b.Dev.Corp.Example.")) == "lab"
    assert router.group_for(key("www.corp.example.")) == "vpn"
    assert router.group_for(key("corp.example.")) == "vpn"
    assert router.group_for(key("NAS.LAN.")) == "home"
    assert router.group_for(key("example.")) is None
    assert router.group_for(key("xcorp.example.")) is None
    assert Router({".": "all"}).group_for(key("anything.")) == "all"


def test_rule_for_names_the_most_specific_rule_as_configured() -> None:
    rules = {"corp.example": "vpn", "Dev.Corp.Example.": "lab", "lan": "home"}
    router = Router(rules)
    key = wire_name
    assert router.rule_for(key("a.b.dev.corp.EXAMPLE.")) == ("Dev.Corp.Example.", "lab")
    assert router.rule_for(key("www.corp.example.")) == ("corp.example", "vpn")
    assert router.rule_for(key("corp.example.")) == ("corp.example", "vpn")
    assert router.rule_for(key("NAS.LAN.")) == ("lan", "home")
    assert router.rule_for(key("example.")) is None
    assert router.rule_for(key("xcorp.example.")) is None
    assert Router({".": "all"}).rule_for(key("anything.")) == (".", "all")
    assert Router({}).rule_for(key("anything.")) is None
    # group_for agrees with it everywhere
    for name in ("a.dev.corp.example.", "corp.example.", "nas.lan.", "example.", "."):
        found = router.rule_for(key(name))
        assert router.group_for(key(name)) == (found[1] if found else None)


def test_designated_resolvers_that_would_not_parse_are_not_announced() -> None:
    """DDR records come from the certificate's name: one that cannot be a target (a label over
    63 octets) means no records at all, decided once at start, never a query that raises; a
    wildcard name is no one host, so the target is the owner."""
    from stubby_py.core import local as local_answers

    listeners = (("tls", "127.0.0.1", 853, ""), ("https", "0.0.0.0", 443, "/dns-query"))
    good = local_answers.designated_resolvers(listeners, "dns.home.example")
    assert good == (
        "1 dns.home.example. alpn=dot port=853 ipv4hint=127.0.0.1",
        "2 dns.home.example. alpn=h2 port=443 dohpath=/dns-query{?dns}",
    )
    assert local_answers.designated_resolvers(listeners, "a" * 70 + ".example") == ()
    assert local_answers.designated_resolvers(listeners[:1], "*.home.example") == (
        "1 . alpn=dot port=853 ipv4hint=127.0.0.1",
    )
