"""`network_resolver`: the resolver the network offered, read from what NetworkManager, systemd
and resolv.conf record (in that order), never one of our own addresses or a loopback stub; and
learned again when the network changes (netwatch.py's hook)."""

from __future__ import annotations

from pathlib import Path

import pytest

from stubby_py.core import network_resolver
from stubby_py.core.network_resolver import NetworkResolver, choose, portal_host
from stubby_py.daemon import control
from stubby_py.daemon.road import STATE_ROOT_VARIABLE, read_sources
from tests.daemon_thread import make_config, running_daemon

pytestmark = pytest.mark.timeout(30)


def _tree(root: Path, files: dict[str, str]) -> str:
    for path, text in files.items():
        target = root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    return str(root)


def test_resolv_conf_and_lease_parsing() -> None:
    text = "# generated\nsearch lan\nnameserver 192.168.1.1 ; router\nnameserver fe80::1%wlan0\n"
    assert network_resolver.resolv_conf_servers(text) == ["192.168.1.1", "fe80::1%wlan0"]
    link = (
        "ADMIN_STATE=configured\nDNS=10.1.0.1 10.1.0.2:5353#dns.hotel.example [fe80::1%3]:53\n"
        "CAPTIVE_PORTAL=https://portal.hotel.example/api\n"
    )
    assert network_resolver.link_servers(link) == ["10.1.0.1", "10.1.0.2", "fe80::1%3"]
    assert portal_host(network_resolver.link_portal(link)) == "portal.hotel.example."
    assert portal_host("https://192.0.2.1/api") is None  # nothing to resolve


def test_choose_skips_loopback_stubs_our_own_addresses_and_link_local() -> None:
    own = [("192.168.1.5", 53)]
    sources = [
        ("nm", ["127.0.0.1", "::1"]),  # the README's set-up: NetworkManager points at us
        ("resolved", ["127.0.0.53", "192.168.1.5", "fe80::1%wlan0", "0.0.0.0"]),
        ("lease", ["192.168.1.1"]),
    ]
    assert choose(sources, own) == NetworkResolver("192.168.1.1", 53, "lease")
    assert choose([("x", ["127.0.0.53"])], own) is None


def test_sources_are_read_in_the_documented_order(tmp_path: Path) -> None:
    root = _tree(
        tmp_path,
        {
            "/etc/resolv.conf": "nameserver 10.9.9.9\n",
            "/etc/resolv.conf.before-stubby-py": "nameserver 10.8.8.8\n",
            "/run/systemd/netif/links/3": "DNS=10.7.7.7\nCAPTIVE_PORTAL=https://login.cafe.example/\n",
            "/run/systemd/resolve/resolv.conf": "nameserver 127.0.0.1\nnameserver 10.6.6.6\n",
            "/run/NetworkManager/no-stub-resolv.conf": "nameserver 127.0.0.1\n",
        },
    )
    sources, portal_uri = read_sources(root)
    assert [path for path, _ in sources] == [
        network_resolver.NM_RESOLV_CONF,
        network_resolver.RESOLVED_RESOLV_CONF,
        f"{network_resolver.NETWORKD_LINKS}/3",
        network_resolver.SAVED_RESOLV_CONF,
        network_resolver.RESOLV_CONF,
    ]
    assert portal_uri == "https://login.cafe.example/"
    chosen = choose(sources, [])
    assert chosen == NetworkResolver("10.6.6.6", 53, network_resolver.RESOLVED_RESOLV_CONF)


def test_learned_at_start_and_again_on_a_network_change(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "root"
    _tree(root, {"/run/systemd/resolve/resolv.conf": "nameserver 192.0.2.10\n"})
    monkeypatch.setenv(STATE_ROOT_VARIABLE, str(root))
    sock = str(tmp_path / "control.sock")
    # upstream: a port with nothing behind it; the portal check is off (this test reads files)
    config = make_config(
        ["udp://127.0.0.1:9"], control_socket=sock, captive_portal="off",
        network_resolver="auto",
    )  # fmt: skip
    with running_daemon(config):
        status = control.request(sock, "portal")
        assert status["network_resolver"] == "udp://192.0.2.10:53"
        assert status["network_resolver_source"] == network_resolver.RESOLVED_RESOLV_CONF
        _tree(root, {"/run/systemd/resolve/resolv.conf": "nameserver 192.0.2.20\n"})
        control.request(sock, "network-changed")
        assert control.request(sock, "portal")["network_resolver"] == "udp://192.0.2.20:53"


def test_our_own_address_is_refused() -> None:
    from stubby_py.core.config import parse_config
    from stubby_py.core.errors import ConfigError

    with pytest.raises(ConfigError, match=r"road.yaml:2: network_resolver: .*stubby-py itself"):
        parse_config("listen: [127.0.0.1:53]\nnetwork_resolver: udp://127.0.0.1\n", "road.yaml")


def test_off_and_configured(tmp_path: Path) -> None:
    sock = str(tmp_path / "control.sock")
    config = make_config(["udp://127.0.0.1:9"], control_socket=sock, network_resolver="off")
    with running_daemon(config):
        assert control.request(sock, "portal")["network_resolver"] is None
    config = config.with_options(network_resolver="udp://127.0.0.2:5353", captive_portal="off")
    with running_daemon(config):
        status = control.request(sock, "portal")
        assert (status["network_resolver"], status["network_resolver_source"]) == (
            "udp://127.0.0.2:5353", "config",
        )  # fmt: skip
