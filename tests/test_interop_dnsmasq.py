"""stubby-py as a home router's upstream: a real dnsmasq (as on OpenWrt) forwards to it with
`server=IP#PORT` and `no-resolv`, and stubby-py forwards over DoT.

    dnspython ──UDP/TCP──▶ dnsmasq ──plain DNS──▶ stubby-py ──DoT──▶ local upstream

Everything on loopback; dnsmasq serves no DHCP, reads no /etc/dnsmasq.conf, /etc/hosts or
/etc/resolv.conf, and writes no pid file.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import dns.message
import dns.query
import dns.rcode
import pytest

from tests.conftest import dot_uri
from tests.daemon_thread import make_config, running_daemon
from tests.peers import PeerError, _stop, answers_on_udp, free_port, require_tool
from tests.servers import LocalUpstream
from tests.service import wait_for

pytestmark = pytest.mark.interop


@contextlib.contextmanager
def dnsmasq(upstream_port: int, log: Path) -> Iterator[int]:
    binary = require_tool("dnsmasq", "/usr/sbin/dnsmasq")
    port = free_port()
    command = [
        binary, "--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv", "--no-hosts",
        "--no-poll", "--pid-file=", f"--server=127.0.0.1#{upstream_port}", f"--port={port}",
        "--listen-address=127.0.0.1", "--bind-interfaces", "--log-queries",
        f"--log-facility={log}",
    ]  # fmt: skip
    if os.geteuid() == 0:
        command += ["--user=root", "--group=root"]  # stay able to write the log
    with log.open("wb") as console:
        process = subprocess.Popen(command, stdout=console, stderr=subprocess.STDOUT)
    try:
        ready = wait_for(
            lambda: process.poll() is not None or answers_on_udp(port, "ready.dnsmasq.test."),
            timeout=10,
        )
        if not ready or process.poll() is not None:
            raise PeerError(f"dnsmasq did not come up:\n{log.read_text(errors='replace')}")
        yield port
    finally:
        _stop(process, 5)


def test_dnsmasq_forwards_to_stubby_py_which_forwards_over_dot(
    dot_upstream: LocalUpstream, ca_file: str, tmp_path: Path
) -> None:
    dot_upstream.state.records["www.router.test."] = [("A", "192.0.2.53"), ("AAAA", "2001:db8::53")]
    # as on a LAN box: only the router (here dnsmasq on 127.0.0.1) may ask
    config = make_config([dot_uri(dot_upstream)], ca_file, allow=("127.0.0.1/32",))
    with running_daemon(config) as daemon, dnsmasq(daemon.port, tmp_path / "dnsmasq.log") as port:
        for rdtype, address in (("A", "192.0.2.53"), ("AAAA", "2001:db8::53")):
            query = dns.message.make_query("www.router.test.", rdtype)
            reply = dns.query.udp(query, "127.0.0.1", port=port, timeout=5)
            assert reply.rcode() == dns.rcode.NOERROR
            assert [r.address for r in reply.answer[0]] == [address]
        # a TCP client: dnsmasq forwards over TCP, stubby-py answers on its TCP listener
        tcp_query = dns.message.make_query("tcp.router.test.", "A")
        reply = dns.query.tcp(tcp_query, "127.0.0.1", port=port, timeout=5)
        assert reply.rcode() == dns.rcode.NOERROR and reply.answer
        nx_query = dns.message.make_query("gone.router.test.", "A")
        dot_upstream.state.nxdomain.add("gone.router.test.")
        assert dns.query.udp(nx_query, "127.0.0.1", port=port, timeout=5).rcode() == (
            dns.rcode.NXDOMAIN
        )
        counters = daemon.resolver.counters
        assert counters["refused"] == 0 and counters["queries"] >= 4
    asked = b"".join(dot_upstream.state.queries).lower()
    for name in (b"\x03www\x06router\x04test", b"\x03tcp\x06router", b"\x04gone\x06router"):
        assert name in asked  # every name went out over DoT
