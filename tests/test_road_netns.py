"""On the road, in network namespaces the test makes (tests/netns.py): a laptop joins a network
whose firewall (nftables in the laptop's namespace) blocks what hotels and cafés block.

- Port 853 dropped, 443 open: the DoT upstream's DoH fallback answers, and once 853 passes
  again queries go back to DoT.
- A captive portal: everything to the upstreams dropped after a network change, the network's
  resolver (a dnsmasq in the network's namespace, learned from systemd-networkd's link state with
  the portal's RFC 8910 URI) answering the portal's address for every name: the portal is
  suspected within seconds, the check names and the portal's host resolve through it, other
  names never reach it, and the suspicion ends when the upstreams come back.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dns.exception
import dns.message
import dns.query
import dns.rcode
import pytest
import trustme
import yaml

from stubby_py.core import fallback
from stubby_py.daemon import control
from tests.conftest import AUTH_NAME, server_context
from tests.netns import Road, enter, road, run_in
from tests.peers import answers_on_udp
from tests.portal_network import PORTAL_ADDRESS, names_asked, portal_dnsmasq
from tests.servers import H2DoHServer, LocalUpstream
from tests.servers.thread import ServerThread
from tests.service import wait_for

pytestmark = pytest.mark.timeout(120)

DOT_ADDRESS = "192.0.2.53"
DOH_ADDRESS = "192.0.2.43"
LISTEN_PORT = 53


def start_in(namespace: str, server: ServerThread, host: str, port: int) -> Any:
    """Start a test server listening on host:port inside `namespace`."""
    server.host = host  # type: ignore[attr-defined]
    server.port = port
    server._thread.start()
    server.call(lambda: enter(namespace))
    server.run(server._start())
    return server


@contextlib.contextmanager
def upstreams(net: Road, ca: trustme.CA) -> Iterator[tuple[LocalUpstream, H2DoHServer]]:
    """The provider: DoT on port 853 and DoH on 443 of the same address, past the gateway."""
    dot = start_in(net.network, LocalUpstream(server_context(ca)), net.internet, 853)
    dot.state.address = DOT_ADDRESS
    try:
        doh = start_in(net.network, H2DoHServer(server_context(ca)), net.internet, 443)
        doh.state.address = DOH_ADDRESS
        try:
            yield dot, doh
        finally:
            doh.stop()
    finally:
        dot.stop()


@contextlib.contextmanager
def laptop_daemon(
    net: Road, tmp_path: Path, ca_file: str, env: dict[str, str] | None = None, **extra: Any
) -> Iterator[str]:
    """stubby-py in the laptop's namespace on 127.0.0.1:53 there; yields its control socket."""
    sock = str(tmp_path / "control.sock")
    options: dict[str, Any] = {
        "listen": [f"127.0.0.1:{LISTEN_PORT}"],
        "ca_file": ca_file,
        "user": None,
        "cache_file": False,
        "cache_size": 0,
        "control_socket": sock,
        "dnssec": "off",
        "query_log": str(tmp_path / "queries.log"),
        **extra,
    }
    config = tmp_path / "stubby.yaml"
    config.write_text(yaml.safe_dump(options, sort_keys=False))
    log_path = tmp_path / "daemon.log"
    command = net.exec_command(
        net.laptop, [sys.executable, "-m", "stubby_py", "run", "-c", str(config)]
    )
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, stderr=log, env={**os.environ, **(env or {})})
    try:
        # the control socket is made after the listeners: wait for both
        started = wait_for(
            lambda: process.poll() is not None
            or ("listening on" in log_path.read_text() and os.path.exists(sock)),
            15,
        )
        assert started and process.poll() is None, log_path.read_text()
        yield sock
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def ask(net: Road, name: str, timeout: float = 3.0) -> dns.message.Message | None:
    """Ask the laptop's stub (from inside the laptop); None when nothing came back."""
    query = dns.message.make_query(name, "A", use_edns=0)

    def asking() -> dns.message.Message | None:
        try:
            return dns.query.udp(query, "127.0.0.1", port=LISTEN_PORT, timeout=timeout)
        except dns.exception.Timeout:
            return None

    return run_in(net.laptop, asking)


def address(reply: dns.message.Message | None) -> str | None:
    if reply is None or not reply.answer:
        return None
    return str(reply.answer[0][0].address)


def answered_from(net: Road, expected: str, timeout: float) -> bool:
    """Distinct names (nothing cached) until one is answered with `expected`."""
    names = (f"n{i}-{time.monotonic_ns()}.example." for i in range(10_000))
    return wait_for(lambda: address(ask(net, next(names))) == expected, timeout, pause=0.2)


def test_port_853_blocked_doh_fallback_then_back_to_dot(
    ca: trustme.CA, ca_file: str, tmp_path: Path
) -> None:
    with road() as net, upstreams(net, ca) as (_dot, doh):
        upstream = {
            "url": f"tls://{net.internet}#{AUTH_NAME}",
            "fallback": [f"https://{AUTH_NAME}/dns-query#{net.internet}"],
        }
        with laptop_daemon(net, tmp_path, ca_file, upstreams=[upstream]) as sock:
            assert address(ask(net, "before.example.")) == DOT_ADDRESS
            net.nft("tcp dport 853 drop")
            assert answered_from(net, DOH_ADDRESS, timeout=10), "the DoH fallback never answered"
            (figures,) = control.request(sock, "stats")["upstreams"]
            assert figures["fallback"]["active"] == f"https://{AUTH_NAME}:443#{net.internet}"
            query_log = tmp_path / "queries.log"
            assert wait_for(lambda: "upstream-fallback:" in query_log.read_text(), 5)

            net.nft()
            assert answered_from(net, DOT_ADDRESS, timeout=4 * fallback.FIRST_BACKOFF), (
                "queries did not go back to DoT once port 853 passed again"
            )
            (figures,) = control.request(sock, "stats")["upstreams"]
            assert figures["fallback"]["active"] is None
        assert doh.state.queries, "the fallback was never asked"



def test_captive_portal_after_a_network_change(
    ca: trustme.CA, ca_file: str, tmp_path: Path
) -> None:
    with road() as net, upstreams(net, ca):
        # what systemd-networkd records of the link and the network's DHCP offer (read through
        # the state root the tests give the daemon instead of the machine's own /run)
        state_root = tmp_path / "netstate"
        link = state_root / "run/systemd/netif/links/2"
        link.parent.mkdir(parents=True)
        link.write_text(
            f"ADMIN_STATE=configured\nDNS={net.gateway}\n"
            "CAPTIVE_PORTAL=https://portal.road.test/api\n"
        )
        ready = lambda: run_in(  # noqa: E731
            net.laptop, lambda: answers_on_udp(53, "ready.portal.test.", host=net.gateway)
        )
        dnsmasq_log = tmp_path / "dnsmasq.log"
        prefix = ("ip", "netns", "exec", net.network)
        with portal_dnsmasq(dnsmasq_log, net.gateway, 53, ready, prefix) as log, laptop_daemon(
            net, tmp_path, ca_file, env={"STUBBY_PY_NETWORK_STATE_ROOT": str(state_root)},
            upstreams=[f"tls://{net.internet}#{AUTH_NAME}"], network_resolver="auto",
        ) as sock:  # fmt: skip
            assert address(ask(net, "before.example.")) == DOT_ADDRESS
            status = control.request(sock, "portal")
            assert status["network_resolver"] == f"udp://{net.gateway}:53"
            assert not status["suspected"]

            # the hotel: everything past the gateway dropped, and a network change
            net.nft(f"ip daddr {net.internet} drop")
            changed = time.monotonic()
            net.change_network()
            assert wait_for(lambda: control.request(sock, "portal")["suspected"], 15)
            assert time.monotonic() - changed < 15
            assert address(ask(net, "connectivity-check.ubuntu.com.")) == PORTAL_ADDRESS
            assert address(ask(net, "portal.road.test.")) == PORTAL_ADDRESS
            blocked = ask(net, "mail.example.")
            assert blocked is not None and blocked.rcode() == dns.rcode.SERVFAIL
            asked = names_asked(log)
            assert {"connectivity-check.ubuntu.com", "portal.road.test"} <= asked
            assert "mail.example" not in asked and "before.example" not in asked

            # signed in: the upstreams answer again
            net.nft()
            assert wait_for(lambda: not control.request(sock, "portal")["suspected"], 30)
            assert address(ask(net, "mail.example.")) == DOT_ADDRESS
            assert "mail.example" not in names_asked(log)
