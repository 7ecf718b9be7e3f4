"""Captive portals on loopback: the network's resolver is a dnsmasq that answers the portal's
address for every name (tests/portal_network.py); the only upstream has nothing behind its port.

A portal is suspected within seconds of the start; the connectivity-check names are answered
through dnsmasq (no AD, short TTL); every other name gets SERVFAIL with an Extended DNS Error
saying so, and dnsmasq's query log never sees it; `stubby-py portal open` lets every name
through for the window, `close` ends it; when the upstream listens again the suspicion ends.
The same with nftables in network namespaces: test_road_netns.py.
"""

from __future__ import annotations

import json
import ssl
import subprocess
import sys
from pathlib import Path

import dns.edns
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rrset
import pytest
import trustme

from stubby_py.core import portal
from stubby_py.daemon import control, metrics
from tests.conftest import AUTH_NAME, server_context
from tests.daemon_thread import make_config, running_daemon
from tests.peers import answers_on_udp, free_port
from tests.portal_network import PORTAL_ADDRESS, names_asked, portal_dnsmasq
from tests.servers import LocalUpstream
from tests.service import wait_for

pytestmark = pytest.mark.timeout(90)

UPSTREAM_ADDRESS = "192.0.2.53"


def ask(port: int, name: str) -> dns.message.Message:
    query = dns.message.make_query(name, "A", use_edns=0)
    query.flags |= dns.flags.AD
    return dns.query.udp(query, "127.0.0.1", port=port, timeout=5)


def ede_texts(reply: dns.message.Message) -> list[str]:
    return [str(o.text) for o in reply.options if o.otype == dns.edns.EDE]  # type: ignore[attr-defined]


def portal_cli(sock: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "stubby_py", "portal", "--socket", sock, *args],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip


# --- the policy -----------------------------------------------------------------------------


def test_routes_while_suspected_and_in_the_window() -> None:
    state = portal.PortalState()
    assert state.route("www.example.com.", 0.0) is portal.Route.UPSTREAM
    assert state.suspect(10.0, "portal.hotel.example.")
    assert not state.suspect(11.0)  # one suspicion at a time
    assert state.route("captive.apple.com.", 12.0) is portal.Route.NETWORK
    assert state.route("portal.hotel.example.", 12.0) is portal.Route.NETWORK
    assert state.route("www.example.com.", 12.0) is portal.Route.BLOCKED
    assert state.route("sub.captive.apple.com.", 12.0) is portal.Route.BLOCKED
    assert portal.PortalState().open_window(0.0, 10 * portal.WINDOW_MAX) == portal.WINDOW_MAX
    until = state.open_window(20.0, 60)
    assert state.route("www.example.com.", 21.0) is portal.Route.NETWORK
    assert state.route("www.example.com.", until) is portal.Route.BLOCKED  # the window ran out
    # the suspicion's own bound
    assert state.route("captive.apple.com.", 10.0 + portal.SUSPECT_BOUND) is portal.Route.UPSTREAM
    assert not state.engaged


def test_clear_ends_suspicion_and_window() -> None:
    state = portal.PortalState()
    state.suspect(0.0)
    state.open_window(1.0, 60)
    assert state.clear()
    assert state.route("www.example.com.", 2.0) is portal.Route.UPSTREAM
    disabled = portal.PortalState(enabled=False)
    assert not disabled.suspect(0.0)


def test_ttls_capped() -> None:
    reply = dns.message.make_response(dns.message.make_query("captive.apple.com.", "A"))
    reply.answer.append(
        dns.rrset.from_text("captive.apple.com.", 3600, "IN", "A", PORTAL_ADDRESS)
    )
    body = reply.to_wire()
    from stubby_py.core import wire

    layout = wire.scan_reply(body)
    capped = portal.cap_ttls(body, layout.ttl_offsets)
    assert dns.message.from_wire(capped).answer[0].ttl == portal.PORTAL_TTL


# --- a daemon ---------------------------------------------------------------------------------


class _FixedPortDoT(LocalUpstream):
    def __init__(self, context: ssl.SSLContext, port: int) -> None:
        super().__init__(context)
        self.port = port


def test_portal_suspected_check_names_through_the_network_other_names_nowhere(
    ca: trustme.CA, ca_file: str, tmp_path: Path
) -> None:
    network_port, upstream_port = free_port(), free_port()
    sock = str(tmp_path / "control.sock")
    ready = lambda: answers_on_udp(network_port, "ready.portal.test.")  # noqa: E731
    with portal_dnsmasq(tmp_path / "dnsmasq.log", "127.0.0.1", network_port, ready) as log:
        config = make_config(
            [f"tls://127.0.0.1:{upstream_port}#{AUTH_NAME}"], ca_file, control_socket=sock,
            network_resolver=f"udp://127.0.0.1:{network_port}", captive_portal="auto",
        )  # fmt: skip
        with running_daemon(config) as daemon:
            assert wait_for(lambda: control.request(sock, "portal")["suspected"], 10), (
                "no portal suspected"
            )
            check = ask(daemon.port, "captive.apple.com.")
            assert check.rcode() == dns.rcode.NOERROR
            assert check.answer[0][0].address == PORTAL_ADDRESS
            assert not check.flags & dns.flags.AD
            assert check.answer[0].ttl <= portal.PORTAL_TTL

            other = ask(daemon.port, "www.example.com.")
            assert other.rcode() == dns.rcode.SERVFAIL
            assert any("captive portal suspected" in text for text in ede_texts(other))
            asked = names_asked(log)
            assert "captive.apple.com" in asked
            assert "www.example.com" not in asked

            explained = control.request(sock, "explain", name="nmcheck.gnome.org", type="A")
            assert explained["explain"]["source"] == "network-resolver"
            shown = portal_cli(sock)
            assert shown.returncode == 0, shown.stderr
            assert "portal suspected:  since" in shown.stdout
            assert "captive.apple.com." in shown.stdout
            figures = daemon.daemon.collect_stats()
            counters = figures["counters"]
            assert counters["portal_answers"] >= 1 and counters["portal_blocked"] >= 1
            assert figures["portal"]["suspected"]
            exported = metrics.render(figures)
            assert "stubby_py_portal_suspected 1" in exported
            assert "stubby_py_portal_blocked_total" in exported

            # the user's window: every name to the network resolver, then closed again
            opened = portal_cli(sock, "open", "--minutes", "1", "--json")
            assert opened.returncode == 0, opened.stderr
            assert json.loads(opened.stdout)["window_until"]
            assert ask(daemon.port, "login.hotel.example.").answer[0][0].address == PORTAL_ADDRESS
            assert "login.hotel.example" in names_asked(log)
            assert portal_cli(sock, "close").returncode == 0
            assert ask(daemon.port, "after.hotel.example.").rcode() == dns.rcode.SERVFAIL
            assert "after.hotel.example" not in names_asked(log)

            # signed in: the upstream can be reached again, and the suspicion ends
            upstream = _FixedPortDoT(server_context(ca), upstream_port)
            upstream.state.address = UPSTREAM_ADDRESS
            upstream.start()
            try:
                assert wait_for(
                    lambda: not control.request(sock, "portal")["suspected"],
                    3 * portal_timeout(),
                ), "the suspicion did not end when the upstream came back"
                back = ask(daemon.port, "captive.apple.com.")
                assert back.answer[0][0].address == UPSTREAM_ADDRESS
            finally:
                upstream.stop()


def portal_timeout() -> float:
    from stubby_py.daemon import road

    return road.MAX_INTERVAL + 2


def test_captive_portal_off_sends_nothing_to_the_network(ca_file: str, tmp_path: Path) -> None:
    network_port, upstream_port = free_port(), free_port()
    sock = str(tmp_path / "control.sock")
    ready = lambda: answers_on_udp(network_port, "ready.portal.test.")  # noqa: E731
    with portal_dnsmasq(tmp_path / "dnsmasq.log", "127.0.0.1", network_port, ready) as log:
        config = make_config(
            [f"tls://127.0.0.1:{upstream_port}#{AUTH_NAME}"], ca_file, control_socket=sock,
            network_resolver=f"udp://127.0.0.1:{network_port}", captive_portal="off",
            dns64="off",  # auto would ask the network resolver for ipv4only.arpa (RFC 7050)
        )  # fmt: skip
        with running_daemon(config) as daemon:
            reply = ask(daemon.port, "captive.apple.com.")
            assert reply.rcode() == dns.rcode.SERVFAIL
            assert not control.request(sock, "portal")["suspected"]
            refused = portal_cli(sock, "open")
            assert refused.returncode != 0 and "captive_portal is off" in refused.stderr
        assert names_asked(log) == {"ready.portal.test"}
