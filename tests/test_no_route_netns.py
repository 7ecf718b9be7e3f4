"""An upstream whose address family has no route here is not tried (transports/multiplex.py).

In a network namespace with only its loopback up there is no IPv6 route beyond ::1: an upstream
at 2001:db8::53 is reported `no-route` with no connect attempted (the transport's _open is never
called), and under round_robin every query is answered by the IPv4 upstream. Once the address is
added on the namespace's loopback (a route appears) and the network change is told, the IPv6
upstream is connected to and answers again. The test runs in a thread inside the namespace (its
daemon, servers and clients are threads started from it, so there as well: tests/netns.py).
"""

from __future__ import annotations

import os
import subprocess
import time
from typing import Any

import pytest
import trustme

from stubby_py.daemon.netwatch import network_changed
from tests.clients import ask_many, rcodes
from tests.conftest import server_context
from tests.daemon_thread import make_config, running_daemon
from tests.netns import require_netns, run_in
from tests.servers import LocalUpstream, local_upstream

pytestmark = pytest.mark.timeout(90)

HOST = "dot.test"
IPV6 = "2001:db8::53"


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


def test_an_upstream_without_a_route_is_skipped_until_one_appears(
    ca: trustme.CA, ca_file: str
) -> None:
    require_netns()
    namespace = f"s4nr{os.getpid() % 100000}"
    _ip("netns", "add", namespace)
    try:
        _ip("-n", namespace, "link", "set", "lo", "up")
        run_in(namespace, lambda: _scenario(namespace, ca, ca_file), timeout=80)
    finally:
        subprocess.run(["ip", "netns", "del", namespace], capture_output=True, timeout=10)


def _scenario(namespace: str, ca: trustme.CA, ca_file: str) -> None:
    with local_upstream(server_context(ca, HOST)) as ipv4:
        config = make_config(
            [f"tls://[{IPV6}]:{ipv4.port}#{HOST}", f"tls://127.0.0.1:{ipv4.port}#{HOST}"],
            ca_file, strategy="round_robin", timeout=4.0,
        )  # fmt: skip
        with running_daemon(config) as daemon:
            (transport,) = [t for t in daemon.resolver.transports if t.spec.address == IPV6]
            opens: list[Any] = []
            original_open = transport._open

            async def counted_open(*args: Any) -> Any:
                opens.append(args)
                return await original_open(*args)

            transport._open = counted_open
            for index in range(6):
                started = time.monotonic()
                assert rcodes(ask_many([f"q{index}.example."], daemon.port)) == ["NOERROR"]
                # no connect timeout, no retry delay: just the IPv4 upstream's answer
                assert time.monotonic() - started < 1.0
            health = daemon.resolver.pool.health[0]  # the upstreams' order
            assert dict(health.failure_kinds).keys() == {"no-route"}
            assert opens == []  # skipped without a connect
            assert len(ipv4.state.queries) == 6

            # a route appears (the address on our loopback) with a server behind it
            _ip("-n", namespace, "addr", "add", f"{IPV6}/128", "dev", "lo", "nodad")
            ipv6 = LocalUpstream(server_context(ca, HOST))
            ipv6.host, ipv6.port = IPV6, ipv4.port
            ipv6.start()
            try:
                daemon.call(lambda: network_changed(daemon.runtime, "test"))
                for index in range(20):
                    if ipv6.state.queries:
                        break
                    assert rcodes(ask_many([f"r{index}.example."], daemon.port)) == ["NOERROR"]
                assert ipv6.state.connections >= 1 and ipv6.state.queries
                assert opens
            finally:
                ipv6.stop()
