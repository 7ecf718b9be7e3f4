"""Network changes and resume from suspend (issue #10): connections renewed, backoff forgotten.

Sans-IO first: the rtnetlink parser and RouteMonitor (a dump teaches the present state; repeats
such as lifetime refreshes are no change; loopback, host/link scope and the local table are
ignored), the Debouncer and the ResumeDetector. Then `network_changed`, the one entry point every
trigger calls, against the real daemon and real local upstreams (DoT, DoH over HTTP/2 and
HTTP/3, DoQ): no query after it travels on a connection opened before it, a busy connection
finishes its queries in flight first, and every backoff is gone. Last, the netlink watcher for
real, in a network namespace the test makes (needs root and iproute2's `ip`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import itertools
import logging
import os
import queue
import random
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import trustme
from hypothesis import given
from hypothesis import strategies as st

from stubby_py.core.config import Config
from stubby_py.core.errors import UpstreamConnectError
from stubby_py.daemon import netwatch
from stubby_py.daemon.netwatch import (
    ARPHRD_LOOPBACK,
    IFA_ADDRESS,
    IFA_F_TENTATIVE,
    IFA_LOCAL,
    IFADDRMSG,
    IFF_LOOPBACK,
    IFF_RUNNING,
    IFF_UP,
    IFINFOMSG,
    IFLA_IFNAME,
    NLM_F_DUMP,
    NLM_F_MULTI,
    NLM_F_REQUEST,
    NLMSG_DONE,
    NLMSG_OVERRUN,
    RT_SCOPE_HOST,
    RT_SCOPE_LINK,
    RT_TABLE_LOCAL,
    RTA_DST,
    RTA_GATEWAY,
    RTA_OIF,
    RTA_TABLE,
    RTM_DELADDR,
    RTM_DELLINK,
    RTM_DELROUTE,
    RTM_F_CLONED,
    RTM_GETADDR,
    RTM_GETLINK,
    RTM_GETROUTE,
    RTM_NEWADDR,
    RTM_NEWLINK,
    RTM_NEWROUTE,
    RTMSG,
    RTN_UNICAST,
    Debouncer,
    NetworkWatch,
    ResumeDetector,
    ResumeWatcher,
    RouteMonitor,
    attribute,
    message,
    network_changed,
    parse_attributes,
    parse_messages,
    start_watching,
)
from stubby_py.daemon.runtime import Runtime
from tests.conftest import dot_uri, server_context
from tests.daemon_thread import running_daemon
from tests.peers import require_tool
from tests.servers import (
    LocalUpstream,
    ServerState,
    doq_server,
    h2_server,
    h3_server,
    local_upstream,
    write_cert_files,
)
from tests.servers.client_side import answer_address, ask, daemon_config, wait_for

pytestmark = pytest.mark.timeout(60)

#: route types the watcher ignores (linux/rtnetlink.h)
RTN_LOCAL, RTN_BROADCAST = 2, 3
PORT_ID = 4242
LO, ETH0, WLAN0 = 1, 2, 3
MAIN_TABLE = 254


# --- message builders ------------------------------------------------------------------------


def link(
    index: int,
    name: str,
    flags: int,
    device_type: int = 1,
    msg_type: int = RTM_NEWLINK,
    **header: int,
) -> bytes:
    body = IFINFOMSG.pack(0, device_type, index, flags, 0)
    body += attribute(IFLA_IFNAME, name.encode() + b"\0")
    return message(msg_type, body, **header)


def addr(
    index: int,
    address: str,
    prefix: int,
    scope: int = 0,
    flags: int = 0,
    msg_type: int = RTM_NEWADDR,
    **header: int,
) -> bytes:
    ip = ipaddress.ip_address(address)
    family = socket.AF_INET if ip.version == 4 else socket.AF_INET6
    body = IFADDRMSG.pack(family, prefix, flags, scope, index) + attribute(IFA_ADDRESS, ip.packed)
    if ip.version == 4:
        body += attribute(IFA_LOCAL, ip.packed)
    return message(msg_type, body, **header)


def route(
    network: str,
    oif: int,
    gateway: str | None = None,
    table: int = MAIN_TABLE,
    route_type: int = RTN_UNICAST,
    flags: int = 0,
    msg_type: int = RTM_NEWROUTE,
    **header: int,
) -> bytes:
    net = ipaddress.ip_network(network)
    family = socket.AF_INET if net.version == 4 else socket.AF_INET6
    body = RTMSG.pack(family, net.prefixlen, 0, 0, min(table, 255), 3, 0, route_type, flags)
    body += attribute(RTA_TABLE, table.to_bytes(4, "little"))
    if net.prefixlen:
        body += attribute(RTA_DST, net.network_address.packed)
    body += attribute(RTA_OIF, oif.to_bytes(4, "little"))
    if gateway is not None:
        body += attribute(RTA_GATEWAY, ipaddress.ip_address(gateway).packed)
    return message(msg_type, body, **header)


HOME_LINKS = [
    link(LO, "lo", IFF_UP | IFF_RUNNING | IFF_LOOPBACK, ARPHRD_LOOPBACK),
    link(ETH0, "eth0", IFF_UP | IFF_RUNNING),
    link(WLAN0, "wlan0", 0),
]
HOME_ADDRESSES = [
    addr(LO, "127.0.0.1", 8, RT_SCOPE_HOST),
    addr(LO, "::1", 128, RT_SCOPE_HOST),
    addr(ETH0, "192.168.1.10", 24),
    addr(ETH0, "2001:db8::10", 64),
    addr(ETH0, "fe80::10", 64, RT_SCOPE_LINK),
]
HOME_ROUTES = [
    route("0.0.0.0/0", ETH0, "192.168.1.1"),
    route("192.168.1.0/24", ETH0),
    route("192.168.1.10/32", ETH0, table=RT_TABLE_LOCAL, route_type=RTN_LOCAL),
    route("::/0", ETH0, "fe80::1"),
    route("2001:db8::/64", ETH0),
    route("fe80::/64", ETH0),
    route("::1/128", LO),
]


def synced_monitor(
    links: list[bytes] = HOME_LINKS,
    addresses: list[bytes] = HOME_ADDRESSES,
    routes: list[bytes] = HOME_ROUTES,
) -> RouteMonitor:
    """A monitor that has dumped the given state, as the kernel would answer its requests."""
    monitor = RouteMonitor(PORT_ID)
    monitor.start()
    for expected, items in ((RTM_GETLINK, links), (RTM_GETADDR, addresses), (RTM_GETROUTE, routes)):
        [request] = list(parse_messages(monitor.data_to_send()))
        assert request.type == expected
        assert request.flags == NLM_F_REQUEST | NLM_F_DUMP
        replies = [as_dump_reply(item, request.seq) for item in items]
        replies.append(message(NLMSG_DONE, bytes(4), NLM_F_MULTI, request.seq, PORT_ID))
        assert monitor.receive(b"".join(replies)) == []
    assert monitor.is_synced
    assert monitor.data_to_send() == b""
    return monitor


def as_dump_reply(item: bytes, seq: int) -> bytes:
    [msg] = list(parse_messages(item))
    return message(msg.type, msg.payload, NLM_F_MULTI, seq, PORT_ID)


# --- the parser ---------------------------------------------------------------------------------


def test_messages_of_one_datagram_are_split_at_their_aligned_lengths() -> None:
    data = message(RTM_NEWLINK, b"abcde", seq=1) + message(RTM_DELADDR, b"", seq=2, pid=7)
    messages = list(parse_messages(data))
    assert [(m.type, m.seq, m.pid, m.payload) for m in messages] == [
        (RTM_NEWLINK, 1, 0, b"abcde"),
        (RTM_DELADDR, 2, 7, b""),
    ]


def test_a_truncated_message_ends_the_datagram() -> None:
    whole = message(RTM_NEWADDR, b"1234")
    assert list(parse_messages(whole[:-1])) == []
    assert len(list(parse_messages(whole + whole[:10]))) == 1
    # a length below the header's own size cannot be stepped over
    bad = bytearray(whole)
    bad[0:4] = (3).to_bytes(4, "little")
    assert list(parse_messages(bytes(bad) + whole)) == []


def test_attributes_are_read_with_alignment_and_the_type_flags_masked() -> None:
    data = b"\0" * 4 + attribute(1, b"abc") + attribute(0x8000 | 2, b"xy") + b"\x08\x00"
    assert parse_attributes(data, 4) == {1: b"abc", 2: b"xy"}


@given(st.binary(max_size=600))
def test_arbitrary_bytes_never_raise(data: bytes) -> None:
    monitor = synced_monitor()
    for reason in monitor.receive(data):
        assert isinstance(reason, str)


@given(st.lists(st.sampled_from(HOME_LINKS + HOME_ADDRESSES + HOME_ROUTES), max_size=12))
def test_repeating_the_known_state_is_no_change(items: list[bytes]) -> None:
    """Refreshes (RA lifetimes, DHCP renewals, Wi-Fi scans) say again what is already known."""
    monitor = synced_monitor()
    assert monitor.receive(b"".join(items)) == []


# --- what counts as a change ----------------------------------------------------------------


def test_a_new_address_counts_and_its_refresh_does_not() -> None:
    monitor = synced_monitor()
    assert monitor.receive(addr(ETH0, "192.168.1.77", 24)) == ["address added on eth0"]
    assert monitor.receive(addr(ETH0, "192.168.1.77", 24)) == []
    assert monitor.receive(addr(ETH0, "192.168.1.77", 24, msg_type=RTM_DELADDR)) == [
        "address removed on eth0"
    ]


def test_an_ipv6_address_counts_once_duplicate_detection_passes() -> None:
    monitor = synced_monitor()
    assert monitor.receive(addr(ETH0, "2001:db8::77", 64, flags=IFA_F_TENTATIVE)) == []
    assert monitor.receive(addr(ETH0, "2001:db8::77", 64)) == ["address added on eth0"]


def test_loopback_host_and_link_scope_addresses_are_ignored() -> None:
    monitor = synced_monitor()
    assert monitor.receive(addr(LO, "10.9.9.9", 32)) == []  # global scope, but on lo
    assert monitor.receive(addr(ETH0, "127.0.0.2", 8, RT_SCOPE_HOST)) == []
    assert monitor.receive(addr(ETH0, "fe80::99", 64, RT_SCOPE_LINK)) == []
    assert monitor.receive(addr(ETH0, "169.254.3.4", 16, RT_SCOPE_LINK)) == []
    assert monitor.receive(addr(LO, "127.0.0.1", 8, RT_SCOPE_HOST, msg_type=RTM_DELADDR)) == []


def test_removing_an_address_never_seen_counts() -> None:
    """It may have come while messages were lost: safer to renew."""
    monitor = synced_monitor()
    assert monitor.receive(addr(WLAN0, "10.0.0.5", 24, msg_type=RTM_DELADDR)) == [
        "address removed on wlan0"
    ]


def test_only_a_link_going_up_or_down_counts() -> None:
    monitor = synced_monitor()
    # a Wi-Fi scan: RTM_NEWLINK with nothing new in the flags
    assert monitor.receive(link(ETH0, "eth0", IFF_UP | IFF_RUNNING)) == []
    assert monitor.receive(link(WLAN0, "wlan0", IFF_UP)) == []  # up, no carrier yet
    assert monitor.receive(link(WLAN0, "wlan0", IFF_UP | IFF_RUNNING)) == ["wlan0 up"]
    assert monitor.receive(link(ETH0, "eth0", IFF_UP)) == ["eth0 down"]
    assert monitor.receive(link(WLAN0, "wlan0", IFF_UP, msg_type=RTM_DELLINK)) == ["wlan0 down"]
    assert monitor.receive(link(LO, "lo", IFF_LOOPBACK, ARPHRD_LOOPBACK)) == []
    assert monitor.receive(link(9, "tun0", IFF_UP | IFF_RUNNING)) == ["tun0 up"]


def test_route_changes_count_once_and_local_ones_not_at_all() -> None:
    monitor = synced_monitor()
    vpn = route("10.8.0.0/16", WLAN0, "10.0.0.1")
    assert monitor.receive(vpn) == ["route added"]
    assert monitor.receive(vpn) == []
    assert monitor.receive(route("0.0.0.0/0", ETH0, "192.168.1.254")) == ["route added"]
    assert monitor.receive(route("0.0.0.0/0", ETH0, "192.168.1.1", msg_type=RTM_DELROUTE)) == [
        "route removed"
    ]
    ignored = [
        route("192.168.1.77/32", ETH0, table=RT_TABLE_LOCAL, route_type=RTN_LOCAL),
        route("192.168.1.255/32", ETH0, table=MAIN_TABLE, route_type=RTN_BROADCAST),
        route("203.0.113.9/32", ETH0, "192.168.1.1", flags=RTM_F_CLONED),
        route("fe80::/64", WLAN0),
        route("::1/128", LO, msg_type=RTM_DELROUTE),
    ]
    for item in ignored:
        assert monitor.receive(item) == []


def test_changes_in_one_datagram_are_all_reported() -> None:
    monitor = synced_monitor()
    burst = link(WLAN0, "wlan0", IFF_UP | IFF_RUNNING) + addr(WLAN0, "10.0.0.5", 24)
    burst += route("10.0.0.0/24", WLAN0)
    assert monitor.receive(burst) == ["wlan0 up", "address added on wlan0", "route added"]


def test_a_notification_during_the_dump_counts() -> None:
    monitor = RouteMonitor(PORT_ID)
    monitor.start()
    [request] = list(parse_messages(monitor.data_to_send()))
    # someone else's change (another port ID) arrives between the dump's parts
    other = addr(ETH0, "192.168.1.10", 24, seq=request.seq, pid=999)
    assert monitor.receive(as_dump_reply(HOME_LINKS[1], request.seq) + other) == [
        "address added on eth0"
    ]
    assert not monitor.is_synced


def test_lost_messages_count_and_start_the_dumps_again() -> None:
    monitor = synced_monitor()
    assert monitor.receive(message(NLMSG_OVERRUN, b"")) == ["netlink messages lost"]
    assert not monitor.is_synced
    [request] = list(parse_messages(monitor.data_to_send()))
    assert request.type == RTM_GETLINK
    # what was known is forgotten: the next dump teaches it again
    assert monitor.receive(addr(ETH0, "192.168.1.10", 24)) == ["address added on eth0"]


# --- debouncing and resume detection --------------------------------------------------------


def test_a_burst_is_one_action_after_a_quiet_second() -> None:
    debouncer = Debouncer(quiet=1.0, max_delay=5.0)
    assert debouncer.deadline is None
    assert debouncer.add(["eth0 down"], 10.0) == 11.0
    assert debouncer.add([], 10.5) == 11.0  # nothing relevant: no effect
    for i in range(8):
        debouncer.add(["address removed on eth0", "route removed"], 10.1 + i * 0.1)
    assert debouncer.deadline == pytest.approx(11.8)
    assert debouncer.take(11.7) is None
    assert debouncer.take(11.8) == ("eth0 down, address removed on eth0 (x8), route removed (x8)")
    assert debouncer.take(20.0) is None
    assert debouncer.deadline is None
    debouncer.add(["wlan0 up"], 30.0)
    assert debouncer.take(31.0) == "wlan0 up"


def test_a_burst_that_never_ends_still_acts_after_max_delay() -> None:
    debouncer = Debouncer(quiet=1.0, max_delay=5.0)
    now = 0.0
    fired: list[float] = []
    for _ in range(200):  # an event every 0.5 s for 100 s
        debouncer.add(["route added"], now)
        if debouncer.take(now) is not None:
            fired.append(now)
        now += 0.5
    # the first after 5 s; then each burst starts with the event after a firing
    assert fired[:3] == [5.0, 10.5, 16.0]
    assert len(fired) == 18
    assert all(b - a == pytest.approx(5.5) for a, b in itertools.pairwise(fired))


def test_many_reasons_are_cut_short() -> None:
    debouncer = Debouncer()
    debouncer.add([f"link{i} up" for i in range(10)], 0.0)
    assert debouncer.take(5.0) == "link0 up, link1 up, link2 up, link3 up, 6 more"


def test_resume_is_boottime_running_ahead_of_monotonic() -> None:
    detector = ResumeDetector(threshold=1.0)
    assert detector.check(1000.0, 500.0) is None  # first look: nothing to compare
    assert detector.check(1003.0, 503.0) is None  # awake: both clocks moved alike
    assert detector.check(1006.3, 505.5) is None  # scheduling jitter below the threshold
    assert detector.check(1309.0, 508.5) == pytest.approx(299.7)  # 5 minutes asleep
    assert detector.check(1312.0, 511.5) is None  # reported once
    assert detector.check(1312.0, 511.5) is None  # no time at all


def test_resume_watcher_reads_the_clocks(monkeypatch: pytest.MonkeyPatch) -> None:
    clocks = {time.CLOCK_BOOTTIME: 1000.0, time.CLOCK_MONOTONIC: 500.0}
    # netwatch's own name for the time module, not time.clock_gettime itself: the rest of the
    # process (the event loop, other threads) keeps the real clocks
    fake_time = SimpleNamespace(
        CLOCK_BOOTTIME=time.CLOCK_BOOTTIME,
        CLOCK_MONOTONIC=time.CLOCK_MONOTONIC,
        clock_gettime=lambda clock: clocks[clock],
    )
    monkeypatch.setattr(netwatch, "time", fake_time)
    seen: list[str] = []

    async def run() -> None:
        watcher = ResumeWatcher(seen.append, interval=0.01)
        assert watcher.start()
        assert time.clock_gettime(time.CLOCK_BOOTTIME) != 1000.0  # the real clock, untouched
        await asyncio.sleep(0.05)
        assert seen == []
        clocks[time.CLOCK_BOOTTIME] += 42.0
        for _ in range(100):
            if seen:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        watcher.close()

    asyncio.run(run())
    assert seen == ["resumed after about 42 s of suspend"]


# --- the entry point, without a daemon --------------------------------------------------------


class _Resettable:
    def __init__(self) -> None:
        self.resets = 0

    def reset(self) -> None:
        self.resets += 1


def test_network_changed_resets_every_pool_and_each_transport_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    shared, own = _Resettable(), _Resettable()
    pools = [_Resettable(), _Resettable()]
    resolver: Any = SimpleNamespace(
        resolver=SimpleNamespace(
            groups={
                "default": SimpleNamespace(transports=[shared, own], pool=pools[0]),
                "lan": SimpleNamespace(transports=[shared], pool=pools[1]),
            },
            counters={"queries": 3, "network_changes": 0},
        )
    )
    # the resolver's own method, on the stand-in, reached through netwatch's entry point
    resolver.network_changed = functools.partial(Runtime.network_changed, resolver)
    with caplog.at_level(logging.INFO, logger="stubby_py.daemon.runtime"):
        network_changed(resolver, "wlan0 up")
        network_changed(resolver, "resumed")
    assert (shared.resets, own.resets) == (2, 2)
    assert [p.resets for p in pools] == [2, 2]
    assert resolver.resolver.counters == {"queries": 3, "network_changes": 2}
    lines = [r.getMessage() for r in caplog.records if r.name == "stubby_py.daemon.runtime"]
    assert lines == [
        "network change (wlan0 up): upstream connections renewed, backoff reset",
        "network change (resumed): upstream connections renewed, backoff reset",
    ]


def test_watching_can_be_switched_off_and_survives_a_failing_reset(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def run() -> None:
        assert start_watching(SimpleNamespace(), Config.from_options(watch_network=False)) is None

        def fail(reason: str) -> None:
            raise RuntimeError(f"cannot handle {reason}")

        broken: Any = SimpleNamespace(network_changed=fail)
        watch = NetworkWatch(broken)
        watch.start()
        watch._changed("eth0 up")  # the reset fails, and is logged
        watch._changed("eth0 down")  # and the watching goes on
        watch.close()

    with caplog.at_level(logging.ERROR, logger="stubby_py.daemon.netwatch"):
        asyncio.run(run())
    assert "network change (eth0 up) not handled" in caplog.text
    assert "network change (eth0 down) not handled" in caplog.text


# --- the entry point on the real daemon --------------------------------------------------------


def _upstream_connections(server: LocalUpstream) -> int:
    return len(server._writers)


def _really_closed(connection: Any) -> bool:
    """Closed for good, not merely retired."""
    if hasattr(connection, "_is_closed"):  # QUIC (aioquic's own _closed is an Event)
        return bool(connection._is_closed)
    return bool(connection._closed)


def test_after_a_change_no_query_uses_an_idle_connection_from_before(
    dot_upstream: LocalUpstream, ca_file: str
) -> None:
    with running_daemon(daemon_config(dot_uri(dot_upstream), ca_file)) as daemon:
        assert daemon.daemon.network_watch is not None  # the daemon watches by default
        assert daemon.resolver.counters["network_changes"] == 0
        assert answer_address(ask(daemon.port, "before.example.")) == "192.0.2.1"
        transport = daemon.resolver.transports[0]
        old = transport._connection
        assert old is not None and dot_upstream.state.connections == 1

        daemon.call(network_changed, daemon.runtime, "test")
        assert _really_closed(old)  # idle: closed at once
        assert wait_for(lambda: _upstream_connections(dot_upstream) == 0, 3.0)

        assert answer_address(ask(daemon.port, "after.example.")) == "192.0.2.1"
        assert dot_upstream.state.connections == 2
        assert transport._connection is not old
        assert old.replies == 1 and transport._connection.replies == 1
        assert daemon.resolver.counters["network_changes"] == 1


def test_a_change_forgets_every_backoff(dot_upstream: LocalUpstream, ca_file: str) -> None:
    with running_daemon(daemon_config(dot_uri(dot_upstream), ca_file)) as daemon:
        resolver = daemon.resolver
        transport = resolver.transports[0]

        def back_off() -> None:
            now = asyncio.get_running_loop().time()
            for _ in range(3):
                resolver.pool.record_failure(0, now)
            health = resolver.pool.health[0]
            health.connect_failures = 6
            health.connect_held_until = now + 60.0
            health.connect_error = UpstreamConnectError(f"{transport.name}: refused")

        daemon.call(back_off)
        assert resolver.pool.health[0].state(0.0) == "down"
        # the pool holds connects off: the client gets SERVFAIL
        assert ask(daemon.port, "refused.example.").rcode() == 2
        assert dot_upstream.state.connections == 0

        daemon.call(network_changed, daemon.runtime, "resumed")
        health = resolver.pool.health[0]
        assert (health.is_down, health.consecutive_failures, health.down_until) == (False, 0, 0.0)
        assert (health.connect_failures, health.connect_held_until, health.connect_error) == (
            0,
            0.0,
            None,
        )
        assert answer_address(ask(daemon.port, "again.example.")) == "192.0.2.1"
        assert dot_upstream.state.connections == 1


# --- a busy connection finishes its queries first, on every transport ---------------------------


@dataclass
class Upstream:
    uri: str
    state: ServerState | ServerState


@pytest.fixture(scope="module")
def cert_files(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    return write_cert_files(ca, str(tmp_path_factory.mktemp("netwatch")), "dns.test", "127.0.0.1")


@pytest.fixture(params=["tls", "https", "h3", "quic"])
def upstream(
    request: pytest.FixtureRequest, ca: trustme.CA, cert_files: tuple[str, str]
) -> Iterator[Upstream]:
    kind = request.param
    if kind == "tls":
        with local_upstream(server_context(ca)) as dot:
            yield Upstream(dot_uri(dot), dot.state)
    elif kind == "https":
        with h2_server(server_context(ca)) as h2:
            yield Upstream(f"https://127.0.0.1:{h2.port}/dns-query", h2.state)
    elif kind == "h3":
        with h3_server(*cert_files) as h3:
            yield Upstream(f"h3://127.0.0.1:{h3.port}/dns-query", h3.state)
    else:
        with doq_server(*cert_files) as doq:
            yield Upstream(f"quic://127.0.0.1:{doq.port}#dns.test", doq.state)


def _queries_sent_on(connection: Any) -> int:
    if hasattr(connection, "replies"):  # DoT: every query here is answered
        return int(connection.replies)
    if hasattr(connection, "_next_key"):  # DoH over HTTP/2: one request number per query
        return int(connection._next_key)
    # QUIC: one client-initiated bidirectional stream per query (IDs 0, 4, 8, ...)
    return int(connection._quic.get_next_available_stream_id()) // 4


def test_a_busy_connection_finishes_its_queries_and_takes_no_new_one(
    upstream: Upstream, ca_file: str
) -> None:
    state = upstream.state
    with running_daemon(daemon_config(upstream.uri, ca_file)) as daemon:
        assert answer_address(ask(daemon.port, "first.example.")) == "192.0.2.1"
        transport = daemon.resolver.transports[0]
        old = transport._connection
        assert old is not None

        state.delay = 0.8
        with ThreadPoolExecutor(1) as executor:
            slow = executor.submit(ask, daemon.port, "slow.example.")
            assert wait_for(lambda: len(state.queries) == 2, 3.0)
            # each server records a query (state.queries) before it reads state.delay for it,
            # in its own thread: give it time to read 0.8 s before the delay goes back to 0
            time.sleep(0.1)
            state.delay = 0.0
            daemon.call(network_changed, daemon.runtime, "test")
            assert not _really_closed(old)  # busy: it stays for the query in flight

            assert answer_address(ask(daemon.port, "after.example.")) == "192.0.2.1"
            assert answer_address(slow.result(5)) == "192.0.2.1"  # not SERVFAIL, not retried

        assert wait_for(lambda: _really_closed(old), 3.0)  # closed once it had nothing left
        new = transport._connection
        assert new is not None and new is not old
        assert (_queries_sent_on(old), _queries_sent_on(new)) == (2, 1)
        assert transport.stats.handshakes == 2
        assert len(state.queries) == 3


def test_a_change_while_connecting_opens_again(dot_upstream: LocalUpstream, ca_file: str) -> None:
    """A connection whose opening began before the change is never used: it may have bound an
    address or route the change took away."""
    with running_daemon(daemon_config(dot_uri(dot_upstream), ca_file)) as daemon:
        transport = daemon.resolver.transports[0]
        opened: list[Any] = []
        original_open = transport._open

        async def open_then_change(address: str) -> Any:
            connection = await original_open(address)
            opened.append(connection)
            if len(opened) == 1:
                network_changed(daemon.runtime, "test")  # arrives while this one was opening
            return connection

        transport._open = open_then_change
        assert answer_address(ask(daemon.port, "www.example.")) == "192.0.2.1"
        assert len(opened) == 2
        assert _really_closed(opened[0]) and transport._connection is opened[1]
        assert opened[0].replies == 0 and opened[1].replies == 1
        assert dot_upstream.state.connections == 2


# --- the netlink watcher for real, in a network namespace ---------------------------------------

WATCHER = """
import asyncio, sys
from stubby_py.daemon.netwatch import NetlinkWatcher

async def main() -> None:
    watcher = NetlinkWatcher(
        lambda reason: print("change", reason, flush=True), quiet=float(sys.argv[1])
    )
    if not watcher.start():
        print("unavailable", flush=True)
        return
    await asyncio.wait_for(watcher.synced.wait(), 10)
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until closed
    watcher.close()

asyncio.run(main())
"""
QUIET = 0.5


@pytest.fixture
def netns() -> Iterator[tuple[str, str]]:
    ip = require_tool("ip")
    name = f"stubbytest-{os.getpid()}-{random.randrange(1 << 20)}"
    made = subprocess.run([ip, "netns", "add", name], capture_output=True, text=True, timeout=10)
    if made.returncode != 0:
        pytest.skip(f"cannot make a network namespace here: {made.stderr.strip()}")
    try:
        yield ip, name
    finally:
        subprocess.run([ip, "netns", "delete", name], capture_output=True, timeout=10)


class Watcher:
    """The watcher in a subprocess inside the namespace, its lines read by a thread."""

    def __init__(self, ip: str, namespace: str) -> None:
        self.process = subprocess.Popen(
            [ip, "netns", "exec", namespace, sys.executable, "-c", WATCHER, str(QUIET)],
            cwd=Path(__file__).resolve().parents[1],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self._errors: str | None = None

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line.strip())

    def next_line(self, timeout: float) -> str | None:
        try:
            return self.lines.get(timeout=timeout)
        except queue.Empty:
            return None

    def stop(self) -> str:
        """End it (closing its stdin), and return what it wrote to stderr."""
        if self._errors is not None:
            return self._errors
        process = self.process
        assert process.stdin and process.stdout and process.stderr
        with contextlib.suppress(OSError):
            process.stdin.close()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
        self._reader.join(5)  # stdout is at its end: the process is gone
        process.stdout.close()
        with process.stderr:
            self._errors = process.stderr.read()
        return self._errors


def _ip_batch(ip: str, namespace: str, commands: list[str]) -> subprocess.CompletedProcess[str]:
    """All the commands from one `ip` process: a burst, as a network manager makes."""
    return subprocess.run(
        [ip, "-n", namespace, "-batch", "-"],
        input="\n".join(commands) + "\n",
        capture_output=True,
        text=True,
        timeout=10,
    )


def _add_link(ip: str, namespace: str) -> list[str]:
    """`ip link add` commands for nw0 (a dummy interface; a veth pair where the kernel has no
    dummy driver) and to bring it up."""
    made = _ip_batch(ip, namespace, ["link add nw0 type dummy"])
    if made.returncode == 0:
        return ["link set nw0 up"]
    made = _ip_batch(ip, namespace, ["link add nw0 type veth peer name nw1"])
    assert made.returncode == 0, made.stderr
    return ["link set nw0 up", "link set nw1 up"]


def test_the_netlink_watcher_reports_each_burst_once(netns: tuple[str, str]) -> None:
    ip, namespace = netns
    watcher = Watcher(ip, namespace)
    try:
        assert watcher.next_line(15.0) == "ready", watcher.stop()
        up = _add_link(ip, namespace)  # a new link, still down: no change yet
        assert watcher.next_line(QUIET + 0.7) is None

        # a burst: the link comes up and gets addresses (and so prefix routes). Loopback-range
        # addresses (the tests' rule), given global scope as a network's own addresses have:
        # `ip` would make a 127/8 address host-scoped, which the watcher rightly ignores; it
        # looks at the scope and the interface, never at the address itself
        burst = [
            *up,
            "addr add 127.201.0.1/24 dev nw0 scope global",
            "addr add 127.202.0.1/24 dev nw0 scope global",
        ]
        assert _ip_batch(ip, namespace, burst).returncode == 0
        line = watcher.next_line(5.0)
        assert line is not None and line.startswith("change "), line
        assert "nw0 up" in line and "address added on nw0 (x2)" in line and "route added" in line
        assert watcher.next_line(QUIET + 0.7) is None  # one report for the whole burst

        # no change to the paths: a lifetime refresh, loopback addresses
        quiet = [
            "addr change 127.201.0.1/24 dev nw0 scope global valid_lft 300 preferred_lft 300",
            "link set lo up",
            "addr add 127.203.0.1/32 dev lo scope global",  # ignored for the interface alone
        ]
        assert _ip_batch(ip, namespace, quiet).returncode == 0
        assert watcher.next_line(QUIET + 0.7) is None

        assert _ip_batch(ip, namespace, ["addr del 127.201.0.1/24 dev nw0"]).returncode == 0
        line = watcher.next_line(5.0)
        assert line == "change address removed on nw0, route removed", line
        assert watcher.next_line(QUIET + 0.7) is None
    finally:
        errors = watcher.stop()
    assert watcher.process.returncode == 0, errors
