"""Configuration: defaults, URIs, and errors that name file, line, key and what was expected."""

from __future__ import annotations

import pytest

from stubby_py.core.config import (
    Config,
    load_config,
    parse_config,
    parse_listen,
    parse_upstream_uri,
)
from stubby_py.core.errors import ConfigError


def test_no_file_gives_builtin_encrypted_pool_on_loopback() -> None:
    config = load_config(None)
    assert config.listeners.addresses == (("127.0.0.1", 53), ("::1", 53))
    assert config.access.allow == ("127.0.0.0/8", "::1/128")
    upstreams = config.forwarding.upstreams
    assert upstreams and all(u.transport == "tls" and u.auth_name for u in upstreams)


def test_empty_file_is_the_defaults() -> None:
    assert parse_config("", "empty.yaml").forwarding == load_config(None).forwarding


def test_full_file_is_read() -> None:
    config = parse_config(
        """
listen: ["127.0.0.1:5353", "[::1]:5353"]
allow: [127.0.0.0/8, 192.168.1.0/24]
upstreams:
  - tls://9.9.9.9#dns.quad9.net
  - url: tls://[2620:fe::fe]:853#dns.quad9.net
    name: quad9-v6
    spki_pins: ["/SlsviBkb05Y/8XiKF9+CZsgCtrqPQk5bh47o0R3/Cg="]
timeout: 2
padding_block_size: 468
""",
        "c.yaml",
    )
    assert config.listeners.addresses == (("127.0.0.1", 5353), ("::1", 5353))
    assert config.access.allow[1] == "192.168.1.0/24"
    second = config.forwarding.upstreams[1]
    assert second.address == "2620:fe::fe" and second.name == "quad9-v6"
    assert second.spki_pins == ("/SlsviBkb05Y/8XiKF9+CZsgCtrqPQk5bh47o0R3/Cg=",)
    assert config.forwarding.timeout == 2.0 and config.transport.padding_block == 468


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("listen: [127.0.0.1:53]\ntimout: 3\n", "c.yaml:2: timout: unknown key"),
        ("timeout: soon\n", "c.yaml:1: timeout: expected a number"),
        ("timeout: 99\n", "c.yaml:1: timeout: expected a number from 0.1 to 30"),
        ("listen:\n  - 127.0.0.1:53\n  - 300.1.1.1:53\n", "c.yaml:3: listen[1]: expected IP:PORT"),
        ("listen: [127.0.0.1:99999]\n", "c.yaml:1: listen[0]: expected a port number"),
        ("listen: 127.0.0.1:53\n", "c.yaml:1: listen: expected a list"),
        ("allow: [10.0.0.0/33]\n", "c.yaml:1: allow[0]: expected a network"),
        ("upstreams:\n  - ftp://1.2.3.4\n", "c.yaml:2: upstreams[0]: expected a URI"),
        (
            "upstreams:\n  - tls://dns.quad9.net\n",
            "c.yaml:2: upstreams[0]: an upstream given by hostname needs `bootstrap:`",
        ),
        (
            "upstreams:\n  - tls://dns_quad9\n",
            "c.yaml:2: upstreams[0]: expected an IP address or a host name",
        ),
        (
            "upstreams:\n  - url: tls://1.1.1.1\n    pins: []\n",
            "c.yaml:3: upstreams[0].pins: unknown",
        ),
        ("upstreams:\n  - url: tls://1.1.1.1\n    spki_pins: [abc]\n", "upstreams[0].spki_pins[0]"),
        ("upstreams: []\n", "c.yaml:1: upstreams: expected at least one upstream"),
        ("log_level: loud\n", "c.yaml:1: log_level: expected one of debug, info"),
        ("listen: [\n", "c.yaml:2: not valid YAML"),
        ("- a\n- b\n", "c.yaml:1: : expected a mapping"),
        ("ca_file: /nonexistent.pem\n", "c.yaml:1: ca_file: expected a readable file"),
        ("strategy: random\n", "c.yaml:1: strategy: expected one of failover, round_robin"),
        ("parallel_fanout: 1\n", "c.yaml:1: parallel_fanout: expected a whole number from 2"),
        ("rules:\n  lan: lan\n", "c.yaml:2: rules.lan: unknown upstream group 'lan'"),
        ("upstream_groups:\n  lan: []\n", "c.yaml:2: upstream_groups.lan: expected at least one"),
        (
            "upstream_groups:\n  lan: [udp://x]\n",
            "c.yaml:2: upstream_groups.lan[0]: expected an IP",
        ),
        ("upstream_groups:\n  default: [udp://1.1.1.1]\n", "'default' is the main pool"),
        ("rules:\n  'a..b': default\n", "c.yaml:2: rules.a..b: expected a domain name"),
        ("rate_limit_action: ban\n", "c.yaml:1: rate_limit_action: expected one of drop, refuse"),
        ("ipv6_client_prefix: 8\n", "c.yaml:1: ipv6_client_prefix: expected a whole number from"),
    ],
)
def test_errors_name_file_line_key_and_expectation(text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "c.yaml")
    assert expected in str(info.value)


def test_missing_file_is_named() -> None:
    with pytest.raises(ConfigError, match=r"/nope\.yaml: cannot read"):
        load_config("/nope.yaml")


@pytest.mark.parametrize(
    ("uri", "transport", "address", "port", "auth"),
    [
        ("tls://9.9.9.9#dns.quad9.net", "tls", "9.9.9.9", 853, "dns.quad9.net"),
        ("tls://[2620:fe::fe]:8853#dns.quad9.net", "tls", "2620:fe::fe", 8853, "dns.quad9.net"),
        ("https://1.1.1.1/dns-query", "https", "1.1.1.1", 443, None),
        ("https://dns.google/dns-query{?dns}#8.8.8.8", "https", "8.8.8.8", 443, "dns.google"),
        ("h3://dns.google:8443/dns-query#8.8.4.4", "h3", "8.8.4.4", 8443, "dns.google"),
        (
            "quic://94.140.14.14#dns.adguard-dns.com",
            "quic",
            "94.140.14.14",
            853,
            "dns.adguard-dns.com",
        ),
        ("udp://192.168.1.1", "udp", "192.168.1.1", 53, None),
        ("tcp://192.168.1.1:5353", "tcp", "192.168.1.1", 5353, None),
    ],
)
def test_upstream_uris(uri: str, transport: str, address: str, port: int, auth: str | None) -> None:
    spec = parse_upstream_uri(uri)
    assert (spec.transport, spec.address, spec.port, spec.auth_name) == (
        transport,
        address,
        port,
        auth,
    )
    assert spec.is_encrypted == (transport not in ("udp", "tcp"))


@pytest.mark.parametrize(
    "uri",
    [
        "https://dns_google/dns-query",
        "udp://dns.google",
        "udp://1.1.1.1#name",
        "tls://1.1.1.1/path",
        "tls://1.1.1.1:0x",
    ],
)
def test_bad_upstream_uris(uri: str) -> None:
    with pytest.raises(ValueError):
        parse_upstream_uri(uri)


def test_listen_forms() -> None:
    assert parse_listen("[::1]:5353") == ("::1", 5353)
    assert parse_listen("192.168.1.2") == ("192.168.1.2", 53)
    assert Config().listeners.addresses[0] == ("127.0.0.1", 53)


def test_groups_and_rules_are_read() -> None:
    config = parse_config(
        """
upstream_groups:
  lan: [udp://192.168.1.1]
  vpn: [tcp://10.8.0.1, "tls://10.8.0.2#dns.corp.example"]
rules:
  lan: lan
  168.192.in-addr.arpa: lan
  corp.example: vpn
  example.org: default
strategy: fastest
""",
        "c.yaml",
    )
    groups = dict(config.forwarding.groups)
    assert [u.address for u in groups["vpn"]] == ["10.8.0.1", "10.8.0.2"]
    assert dict(config.forwarding.rules) == {
        "lan": "lan", "168.192.in-addr.arpa": "lan", "corp.example": "vpn", "example.org": "default"
    }  # fmt: skip
    assert config.pool.strategy == "fastest"
