"""Router Advertisement options from rtnetlink (core/ra_options.py), pure: RFC 8781 PREF64 and
the RFC 8910 captive-portal URI, parsed from bytes built here, kept with their lifetimes; and
RouteMonitor (daemon/netwatch.py) collecting them without calling them a network change."""

from __future__ import annotations

import socket
from ipaddress import IPv6Address, IPv6Network

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stubby_py.core import ra_options
from stubby_py.core.ra_options import (
    RouterOffers,
    RouterOption,
    parse_captive_portal,
    parse_pref64,
    parse_user_option,
    pref64_option,
    user_option_payload,
)
from stubby_py.daemon.netwatch import IFF_RUNNING, IFF_UP, RTM_NEWLINK, message
from tests.test_netwatch import ETH0, link, synced_monitor

ROUTER = IPv6Address("fe80::1")
NSP = IPv6Network("2001:db8:64::/96")


def option(field: int, prefix: bytes = NSP.network_address.packed[:12], length: int = 2) -> bytes:
    return bytes((38, length)) + field.to_bytes(2, "big") + prefix + bytes(8 * length - 16)


@pytest.mark.parametrize(
    ("plc", "prefix", "expected"),
    [
        (0, "2001:db8:64::", "2001:db8:64::/96"),
        (1, "2001:db8:122:344::", "2001:db8:122:344::/64"),
        (2, "2001:db8:122:300::", "2001:db8:122:300::/56"),
        (3, "2001:db8:122::", "2001:db8:122::/48"),
        (4, "2001:db8:100::", "2001:db8:100::/40"),
        (5, "2001:db8::", "2001:db8::/32"),
        (1, "2001:db8:122:344:ffff:ffff::", "2001:db8:122:344::/64"),  # bits past /64 ignored
    ],
)
def test_pref64_prefix_length_codes(plc: int, prefix: str, expected: str) -> None:
    parsed = parse_pref64(option(1800 | plc, IPv6Address(prefix).packed[:12]))
    assert parsed is not None
    assert str(parsed.prefix) == expected
    assert parsed.lifetime == 1800


@pytest.mark.parametrize(
    "bad",
    [
        option(1800 | 6),  # PLC 6 and 7 are not defined: ignored (RFC 8781 §4)
        option(1800 | 7),
        option(1800, length=3),  # a length other than 2: ignored
        option(1800)[:8],  # a truncated one
        bytes((37,)) + option(1800)[1:],  # another option type
        option(1800, IPv6Address("2001:db8:64:0:ff00::").packed[:12]),  # u octet set in a /96
    ],
)
def test_pref64_options_to_ignore(bad: bytes) -> None:
    assert parse_pref64(bad) is None


def test_pref64_scaled_lifetime_and_zero() -> None:
    assert parse_pref64(option(0xFFF8)).lifetime == 65528  # type: ignore[union-attr]
    assert parse_pref64(option(8)).lifetime == 8  # type: ignore[union-attr]
    withdrawn = parse_pref64(option(0))
    assert withdrawn is not None and withdrawn.lifetime == 0
    assert parse_pref64(pref64_option(NSP, 600)) == ra_options.Pref64(NSP, 600)


def test_user_option_message_with_the_routers_address() -> None:
    data = pref64_option(NSP, 600)
    parsed = parse_user_option(user_option_payload(ETH0, data, ROUTER))
    assert parsed == RouterOption(ETH0, data, ROUTER)
    assert parse_user_option(user_option_payload(ETH0, data)) == RouterOption(ETH0, data, None)


def test_user_option_messages_to_ignore() -> None:
    data = pref64_option(NSP, 600)
    good = user_option_payload(ETH0, data, ROUTER)
    assert parse_user_option(good[:20]) is None  # the option cut short
    assert parse_user_option(bytes((socket.AF_INET,)) + good[1:]) is None
    assert parse_user_option(good[:8] + bytes((133,)) + good[9:]) is None  # not an RA
    lying = good[:17] + bytes((3,)) + good[18:]  # the option's own length says 24 octets
    assert parse_user_option(lying) is None
    assert parse_user_option(b"") is None


@given(st.binary(max_size=80))
def test_arbitrary_bytes_never_raise(data: bytes) -> None:
    parsed = parse_user_option(data)
    if parsed is not None:
        parse_pref64(parsed.option)
        parse_captive_portal(parsed.option)


def portal_option(uri: bytes) -> bytes:
    body = uri + bytes(-(len(uri) + 2) % 8)
    return bytes((37, (len(body) + 2) // 8)) + body


def test_captive_portal_option() -> None:
    uri = b"https://portal.example/api"
    assert parse_captive_portal(portal_option(uri)) == uri.decode()
    assert parse_captive_portal(portal_option(ra_options.UNRESTRICTED.encode())) is None
    assert parse_captive_portal(portal_option(b"")) is None
    assert parse_captive_portal(portal_option(uri)[:-8]) is None  # length octet says more
    assert parse_captive_portal(portal_option(b"https://a\x00b")) is None


def ra(prefix: IPv6Network, lifetime: int, ifindex: int = ETH0) -> RouterOption:
    return RouterOption(ifindex, pref64_option(prefix, lifetime), ROUTER)


def test_offers_keep_a_prefix_for_its_lifetime() -> None:
    offers = RouterOffers()
    assert offers.pref64(0.0) is None and offers.next_expiry() is None
    assert offers.note(ra(NSP, 600), now=100.0)
    offer = offers.pref64(200.0)
    assert offer is not None and offer.prefix == NSP and offer.router == ROUTER
    assert offers.next_expiry() == 700.0
    assert offers.note(ra(NSP, 600), now=650.0)  # refreshed by the next advertisement
    assert offers.pref64(1000.0) is not None
    assert offers.pref64(1250.0) is None  # ran out
    assert offers.next_expiry() is None


def test_lifetime_zero_withdraws_and_the_longest_valid_wins() -> None:
    offers = RouterOffers()
    new = IPv6Network("64:ff9b::/96")
    offers.note(ra(NSP, 600), now=0.0)
    offers.note(ra(new, 1800), now=0.0)
    assert offers.pref64(1.0).prefix == new  # type: ignore[union-attr]
    assert offers.note(ra(new, 0), now=2.0)
    assert offers.pref64(3.0).prefix == NSP  # type: ignore[union-attr]
    assert not offers.note(ra(new, 0), now=4.0)  # nothing left to withdraw


def test_an_interface_going_down_takes_its_offers() -> None:
    offers = RouterOffers()
    offers.note(ra(NSP, 600), now=0.0)
    offers.note(RouterOption(ETH0, portal_option(b"https://portal.example/")), now=0.0)
    assert offers.portal_uri() == "https://portal.example/"
    assert not offers.forget_interface(ETH0 + 1)
    assert offers.forget_interface(ETH0)
    assert offers.pref64(1.0) is None and offers.portal_uri() is None


def test_route_monitor_collects_options_and_links_going_down() -> None:
    monitor = synced_monitor()
    payload = user_option_payload(ETH0, pref64_option(NSP, 600), ROUTER)
    assert monitor.receive(message(ra_options.RTM_NEWNDUSEROPT, payload)) == []
    assert monitor.router_options == [RouterOption(ETH0, pref64_option(NSP, 600), ROUTER)]
    assert monitor.links_down == []
    assert monitor.receive(link(ETH0, "eth0", IFF_UP)) == ["eth0 down"]
    assert monitor.links_down == [ETH0]
    assert monitor.receive(link(ETH0, "eth0", IFF_UP | IFF_RUNNING, msg_type=RTM_NEWLINK))
    assert monitor.links_down == [ETH0]
