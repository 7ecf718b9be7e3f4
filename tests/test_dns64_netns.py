"""DNS64 on the road, in network namespaces the test makes (tests/netns.py): where the NAT64
prefix comes from.

The network's namespace sends real Router Advertisements (a raw ICMPv6 socket: type 134, hop limit
255, from its link-local address) with a PREF64 option (RFC 8781) and a captive-portal URI (RFC
8910); radvd would do, but Debian's 2.19 has no `nat64prefix` yet. It runs dnsmasq as the network's
resolver answering `ipv4only.arpa AAAA` with the Well-Known Prefix forms (RFC 7050). The laptop's
namespace accepts RAs on its link (accept_ra=2) and runs the daemon with `dns64: auto`, its
network resolver learned from systemd-networkd's link state (through the test's state root).

- With both offered, the RA's prefix wins (RFC 8781 §5.1): an IPv4-only name's AAAA is made
  under it.
- The router stops advertising: the prefix runs out with its lifetime, and RFC 7050 through the
  network resolver gives the Well-Known Prefix.
- Advertisements again, then the laptop's link loses its carrier: the RA's prefix goes with the
  link.

Everything stays inside the namespaces.
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from ipaddress import IPv6Network
from pathlib import Path
from typing import Any

import dns.message
import dns.query
import dns.rdatatype
import pytest
import trustme

from stubby_py.daemon import control
from tests.conftest import AUTH_NAME, server_context
from tests.netns import Road, enter, road, run_in
from tests.peers import _stop, answers_on_udp, require_tool
from tests.servers import LocalUpstream
from tests.service import wait_for
from tests.test_road_netns import LISTEN_PORT, laptop_daemon, start_in

pytestmark = pytest.mark.timeout(150)

RA_PREFIX = "2001:db8:64::/96"
WELL_KNOWN = "64:ff9b::/96"
#: the RA's prefix lifetime: short, so that it runs out soon after the router stops
#: advertising; the advertisements come well within it
LIFETIME = 16
ADVERTISE_EVERY = 2.0
PORTAL_URI = b"https://portal.road.test/api"
V4ONLY = "v4only.road.test."
V4_ADDRESS = "93.184.216.34"


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


def network_link(net: Road) -> str:
    """The network's end of the veth pair."""
    shown = subprocess.run(
        ["ip", "-n", net.network, "-o", "link", "show", "type", "veth"],
        check=True, capture_output=True, text=True, timeout=10,
    )  # fmt: skip
    return shown.stdout.split(":")[1].strip().split("@")[0]


def pref64_option(prefix: str, lifetime: int) -> bytes:
    """RFC 8781 §4, built by hand: type 38, length 2, scaled lifetime and PLC 0 (/96), the
    prefix's first 96 bits."""
    scaled_and_plc = (lifetime // 8) << 3 | 0
    network = IPv6Network(prefix)
    return bytes((38, 2)) + struct.pack("!H", scaled_and_plc) + network.network_address.packed[:12]


def portal_option(uri: bytes) -> bytes:
    """RFC 8910 §2.3: the URI, padded with NULs to a multiple of 8 octets."""
    body = uri + bytes(-(len(uri) + 2) % 8)
    return bytes((37, (len(body) + 2) // 8)) + body


def router_advertisement(*options: bytes) -> bytes:
    """RFC 4861 §4.2: type 134, code 0 (the kernel fills in the checksum of a raw ICMPv6
    socket), hop limit 64, no flags, router lifetime 0 (not a default router), no timers."""
    return struct.pack("!BBHBBHII", 134, 0, 0, 64, 0, 0, 0, 0) + b"".join(options)


def link_local(namespace: str, interface: str) -> str | None:
    """The interface's link-local address once duplicate detection passed."""
    shown = subprocess.run(
        ["ip", "-n", namespace, "-6", "-o", "addr", "show", "dev", interface, "scope", "link"],
        capture_output=True, text=True, timeout=10,
    )  # fmt: skip
    for line in shown.stdout.splitlines():
        if "tentative" not in line:
            return line.split()[3].split("/")[0]
    return None


@contextlib.contextmanager
def router(net: Road, interface: str) -> Iterator[None]:
    """The network's router: Router Advertisements every ADVERTISE_EVERY seconds on its link
    (from its link-local address, hop limit 255), with a PREF64 and a captive-portal option."""
    addresses: list[str | None] = [None]

    def ready() -> bool:
        addresses[0] = link_local(net.network, interface)
        return addresses[0] is not None

    assert wait_for(ready, 10), "no link-local address on the network's link"
    source = str(addresses[0])
    message = router_advertisement(pref64_option(RA_PREFIX, LIFETIME), portal_option(PORTAL_URI))
    stop = threading.Event()
    started = threading.Event()
    errors: list[BaseException] = []

    def advertise() -> None:
        try:
            enter(net.network)
            index = socket.if_nametoindex(interface)
            with socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6) as sock:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, index)
                sock.bind((source, 0, 0, index))
                started.set()
                while not stop.is_set():
                    sock.sendto(message, ("ff02::1", 0, 0, index))
                    stop.wait(ADVERTISE_EVERY)
        except BaseException as exc:  # handed to the test
            errors.append(exc)
            started.set()

    thread = threading.Thread(target=advertise, daemon=True)
    thread.start()
    try:
        started.wait(10)
        assert not errors, errors
        yield
    finally:
        stop.set()
        thread.join(10)
    assert not errors, errors


@contextlib.contextmanager
def nat64_dnsmasq(net: Road, tmp_path: Path) -> Iterator[None]:
    """The network's resolver: `ipv4only.arpa` with its two addresses and their Well-Known
    Prefix forms (RFC 7050 §2.2), and nothing else."""
    binary = require_tool("dnsmasq", "/usr/sbin/dnsmasq")
    log = tmp_path / "dnsmasq.log"
    command = [
        "ip", "netns", "exec", net.network, binary, "--keep-in-foreground",
        "--conf-file=/dev/null", "--no-resolv", "--no-hosts", "--no-poll", "--pid-file=",
        "--port=53", f"--listen-address={net.gateway}", "--bind-interfaces",
        "--host-record=ipv4only.arpa,192.0.0.170,64:ff9b::c000:aa",
        "--host-record=ipv4only.arpa,192.0.0.171,64:ff9b::c000:ab",
        "--host-record=ready.road.test,192.0.2.1", "--log-queries", f"--log-facility={log}",
    ]  # fmt: skip
    if os.geteuid() == 0:
        command += ["--user=root", "--group=root"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        ready = lambda: run_in(  # noqa: E731
            net.laptop, lambda: answers_on_udp(53, "ready.road.test.", host=net.gateway)
        )
        up = wait_for(lambda: process.poll() is not None or ready(), timeout=10)
        assert up and process.poll() is None, log.read_text(errors="replace")
        yield
    finally:
        _stop(process, 5)


@contextlib.contextmanager
def upstream(net: Road, ca: trustme.CA) -> Iterator[LocalUpstream]:
    """The provider, past the gateway: DoT, with an IPv4-only name (A, and AAAA NODATA)."""
    dot = start_in(net.network, LocalUpstream(server_context(ca)), net.internet, 853)
    dot.state.records = {V4ONLY: [("A", V4_ADDRESS)]}
    try:
        yield dot
    finally:
        dot.stop()


def aaaa(net: Road, name: str) -> list[str]:
    query = dns.message.make_query(name, "AAAA")
    reply = run_in(
        net.laptop, lambda: dns.query.udp(query, "127.0.0.1", port=LISTEN_PORT, timeout=5)
    )
    return [r.to_text() for s in reply.answer if s.rdtype == dns.rdatatype.AAAA for r in s]


def dns64_state(sock: str) -> tuple[Any, Any]:
    status = control.request(sock, "portal")
    return status.get("dns64_prefix"), status.get("dns64_source")


def test_nat64_prefix_from_router_advertisements_then_rfc7050(
    ca: trustme.CA, ca_file: str, tmp_path: Path
) -> None:
    with road() as net, upstream(net, ca), nat64_dnsmasq(net, tmp_path):
        accept_ra = f"/proc/sys/net/ipv6/conf/{net.laptop_link}/accept_ra"
        ip("netns", "exec", net.laptop, "sh", "-c", f"echo 2 > {accept_ra}")
        state_root = tmp_path / "netstate"
        link = state_root / "run/systemd/netif/links/2"
        link.parent.mkdir(parents=True)
        link.write_text(f"ADMIN_STATE=configured\nDNS={net.gateway}\n")
        their_link = network_link(net)
        with laptop_daemon(
            net, tmp_path, ca_file, env={"STUBBY_PY_NETWORK_STATE_ROOT": str(state_root)},
            upstreams=[f"tls://{net.internet}#{AUTH_NAME}"], network_resolver="auto",
            captive_portal="off", dns64="auto",
        ) as sock:  # fmt: skip
            # before any RA: RFC 7050 through the network resolver
            assert wait_for(lambda: dns64_state(sock) == (WELL_KNOWN, "rfc7050"), 15)
            assert aaaa(net, V4ONLY) == ["64:ff9b::5db8:d822"]

            with router(net, their_link):
                # the RA's prefix is preferred over RFC 7050's (RFC 8781 §5.1)
                assert wait_for(lambda: dns64_state(sock) == (RA_PREFIX, "ra-pref64"), 30)
                assert aaaa(net, V4ONLY) == ["2001:db8:64::5db8:d822"]
                status = control.request(sock, "portal")
                assert "PREF64 in router advertisements from fe80::" in status["dns64"]
                assert net.laptop_link in status["dns64"]
                assert status["portal_uri"] == PORTAL_URI.decode()  # RFC 8910, from the RA
                stats = control.request(sock, "stats")["portal"]
                assert stats["dns64_source"] == "ra-pref64"

            # no more advertisements: the prefix runs out with its lifetime, RFC 7050 takes over
            stopped = time.monotonic()
            assert wait_for(lambda: dns64_state(sock) == (WELL_KNOWN, "rfc7050"), LIFETIME + 15)
            assert time.monotonic() - stopped > LIFETIME / 4  # not before it ran out
            assert aaaa(net, V4ONLY) == ["64:ff9b::5db8:d822"]

            with router(net, their_link):
                assert wait_for(lambda: dns64_state(sock) == (RA_PREFIX, "ra-pref64"), 30)
            # the laptop's link loses its carrier: what its routers offered goes with it
            ip("-n", net.network, "link", "set", their_link, "down")
            lost = time.monotonic()
            assert wait_for(lambda: dns64_state(sock)[1] != "ra-pref64", 10)
            assert time.monotonic() - lost < LIFETIME / 2  # the link, not the lifetime
            ip("-n", net.network, "link", "set", their_link, "up")
            assert wait_for(lambda: dns64_state(sock) == (WELL_KNOWN, "rfc7050"), 30)
