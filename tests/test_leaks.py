"""Nothing of a closed connection, a retired transport or a finished query stays behind (#21).

A daemon that runs for weeks closes its upstream connections thousands of times: the server
closes them, a middlebox resets them, they idle out, a network change retires them, a reload
retires whole transports. Each test here closes connections in one of those ways on the real
daemon (loopback servers of every transport) and checks, with weak references and gc.collect()
run on the daemon's loop, that the objects that belonged to them are gone, and that the maps kept
per upstream stay bounded.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import signal
import time
import tracemalloc
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.events
import pytest
import trustme

from stubby_py.daemon import control, heap, memtrace
from stubby_py.transports.tls import SESSION_READ_LEAKS
from tests.clients import ask_many, rcodes
from tests.conftest import AUTH_NAME, server_context
from tests.daemon_thread import DaemonThread, make_config, running_daemon
from tests.servers import doq_server, h2_server, h3_server, local_upstream, write_cert_files
from tests.servers.tamper_proxy import running_resetting_proxy

TRANSPORTS = ("dot", "doh", "h3", "doq")
#: queries per round: enough for several connections to come and go
QUERIES = 40
#: streams over one DoH connection in the sans-IO test: past any sensible bound, below h2's own
STREAMS_PER_CONNECTION = 6000


@pytest.fixture(scope="module")
def cert_files(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    return write_cert_files(ca, str(tmp_path_factory.mktemp("leaks")), AUTH_NAME, "127.0.0.1")


@pytest.fixture(params=TRANSPORTS)
def upstream_uri(
    request: pytest.FixtureRequest, ca: trustme.CA, cert_files: tuple[str, str]
) -> Iterator[str]:
    kind = request.param
    if kind == "dot":
        with local_upstream(server_context(ca)) as server:
            yield f"tls://127.0.0.1:{server.port}#{AUTH_NAME}"
    elif kind == "doh":
        with h2_server(server_context(ca)) as server:
            yield f"https://{AUTH_NAME}:{server.port}/dns-query#127.0.0.1"
    elif kind == "h3":
        with h3_server(*cert_files) as server:
            yield f"h3://{AUTH_NAME}:{server.port}/dns-query#127.0.0.1"
    else:
        with doq_server(*cert_files) as server:
            yield f"quic://127.0.0.1:{server.port}#{AUTH_NAME}"


def gone(daemon: DaemonThread, refs: list[weakref.ref[Any]], timeout: float = 3.0) -> list[str]:
    """What is still alive of refs after full collections on the daemon's loop, given a
    moment for closes under way to finish (far less than any timer of a connection)."""
    deadline = time.monotonic() + timeout
    while True:
        daemon.call(gc.collect)
        left = [type(obj).__name__ for ref in refs if (obj := ref()) is not None]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.1)


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def answered(daemon: DaemonThread, prefix: str, count: int = QUERIES) -> None:
    results = ask_many([f"{prefix}{i}.example." for i in range(count)], daemon.port, timeout=5)
    assert rcodes(results).count("NOERROR") == count, rcodes(results)


def current_connection(daemon: DaemonThread) -> Any:
    connection = daemon.resolver.transports[0]._connection
    assert connection is not None, "no connection open: the test tests nothing"
    return connection


def test_connections_retired_by_network_changes_are_gone(upstream_uri: str, ca_file: str) -> None:
    config = make_config([upstream_uri], ca_file, cache_size=0)
    with running_daemon(config) as daemon:
        refs = []
        for round_ in range(3):
            answered(daemon, f"n{round_}-")
            refs.append(weakref.ref(current_connection(daemon)))
            daemon.call(daemon.runtime.network_changed, "test")
        answered(daemon, "after-")
        assert gone(daemon, refs) == []
        transport = daemon.resolver.transports[0]
        assert len(transport._retiring) == 0
        # finished queries leave nothing either
        assert wait_until(lambda: not daemon.resolver._tasks and not daemon.resolver._inflight)


def test_connections_closed_idle_are_gone(upstream_uri: str, ca_file: str) -> None:
    # long enough that the connection is still there to be looked at under a loaded machine
    config = make_config([upstream_uri], ca_file, cache_size=0, upstream_idle_timeout=1.0)
    with running_daemon(config) as daemon:
        refs = []
        for round_ in range(2):
            answered(daemon, f"i{round_}-")
            refs.append(weakref.ref(current_connection(daemon)))
            assert wait_until(lambda: daemon.resolver.transports[0]._connection is None), (
                "it never idled out"
            )
        assert gone(daemon, refs) == []


def test_transports_retired_by_reloads_are_gone(upstream_uri: str, ca_file: str) -> None:
    config = make_config([upstream_uri], ca_file, cache_size=0, timeout=1.0)
    with running_daemon(config) as daemon:
        refs: list[weakref.ref[Any]] = []
        for round_ in range(3):
            answered(daemon, f"r{round_}-")
            transport = daemon.resolver.transports[0]
            refs += [weakref.ref(transport), weakref.ref(current_connection(daemon))]
            del transport
            # another idle timeout: a transport setting, so every transport is built anew
            changed = config.with_options(upstream_idle_timeout=10.0 + round_)
            daemon.call(daemon.runtime.reconfigure, changed)
        answered(daemon, "after-")
        # retired transports close after the query timeout (+0.5 s)
        assert wait_until(lambda: not daemon.runtime._retired, 5.0)
        assert gone(daemon, refs) == []


def test_connections_reset_by_a_middlebox_are_gone(ca: trustme.CA, ca_file: str) -> None:
    with (
        local_upstream(server_context(ca)) as server,
        running_resetting_proxy(server.port, 8) as proxy,
    ):
        uri = f"tls://127.0.0.1:{proxy.port}#{AUTH_NAME}"
        with running_daemon(make_config([uri], ca_file, cache_size=0)) as daemon:
            transport = daemon.resolver.transports[0]
            refs = []
            for round_ in range(20):
                answered(daemon, f"c{round_}-", 4)
                if transport._connection is not None:
                    refs.append(weakref.ref(transport._connection))
            assert proxy.cuts >= 3, "the proxy cut nothing: the test tests nothing"
            refs.pop()  # the last one may be open still
            assert gone(daemon, refs) == []


def test_per_upstream_maps_stay_bounded(ca: trustme.CA, ca_file: str) -> None:
    """Many connections come and go (reset by a middlebox): what the transport keeps per
    upstream does not grow with them."""
    with (
        local_upstream(server_context(ca)) as server,
        running_resetting_proxy(server.port, 8) as proxy,
    ):
        uri = f"tls://127.0.0.1:{proxy.port}#{AUTH_NAME}"
        with running_daemon(make_config([uri], ca_file, cache_size=0)) as daemon:
            for round_ in range(10):
                answered(daemon, f"m{round_}-", 20)
                daemon.call(daemon.runtime.network_changed, "test")
            assert proxy.cuts >= 3
            transport = daemon.resolver.transports[0]
            sizes = {
                name: len(value)
                for name, value in vars(transport).items()
                if isinstance(value, (dict, set, list))
            }
            assert all(size <= 64 for size in sizes.values()), sizes


def test_doh_connection_remembers_a_bounded_number_of_closed_streams(
    ca: trustme.CA, ca_file: str
) -> None:
    """h2 remembers every closed stream of a connection up to 65,536 (about 5 MiB): a DoH
    connection that lives for weeks would carry them all. The h2 state machine the daemon's
    connection runs is driven here, sans I/O, against an h2 server through more streams."""
    with h2_server(server_context(ca)) as server:
        uri = f"https://{AUTH_NAME}:{server.port}/dns-query#127.0.0.1"
        with running_daemon(make_config([uri], ca_file, cache_size=0)) as daemon:
            answered(daemon, "h", 2)
            client_class = type(current_connection(daemon)._h2)
    client = client_class(config=h2.config.H2Configuration(client_side=True))
    peer = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=False))
    client.initiate_connection()
    peer.initiate_connection()
    peer.receive_data(client.data_to_send())
    client.receive_data(peer.data_to_send())
    peer.receive_data(client.data_to_send())
    request = [(":method", "GET"), (":scheme", "https"), (":authority", "x"), (":path", "/")]
    for _ in range(STREAMS_PER_CONNECTION):
        client.send_headers(client.get_next_available_stream_id(), request, end_stream=True)
        for event in peer.receive_data(client.data_to_send()):
            if isinstance(event, h2.events.RequestReceived) and event.stream_id is not None:
                peer.send_headers(event.stream_id, [(":status", "200")], end_stream=True)
        client.receive_data(peer.data_to_send())
    client.get_next_available_stream_id()  # h2 files closed streams away when counting
    assert len(client._closed_streams) <= 4096


def test_control_socket_network_change_and_task_count(
    ca: trustme.CA, ca_file: str, tmp_path: Path
) -> None:
    """What bench/soak.py uses: `network-changed` does what netwatch does on a route change
    (the connection is retired and collected), and `stats` counts the event loop's tasks."""
    path = str(tmp_path / "control.sock")
    with local_upstream(server_context(ca)) as server:
        uri = f"tls://127.0.0.1:{server.port}#{AUTH_NAME}"
        with running_daemon(make_config([uri], ca_file, control_socket=path)) as daemon:
            answered(daemon, "t", 4)
            refs = [weakref.ref(current_connection(daemon))]
            assert control.request(path, "network-changed") == {"ok": True}
            stats = control.request(path, "stats")
            assert stats["counters"]["network_changes"] == 1
            assert isinstance(stats["tasks"], int) and stats["tasks"] >= 1
            answered(daemon, "u", 4)
            assert gone(daemon, refs) == []


@pytest.mark.parametrize("setting", ["auto", "on", "off"])
def test_tls_sessions_are_resumed_only_where_reading_them_does_not_leak(
    ca: trustme.CA, ca_file: str, setting: str
) -> None:
    """CPython's ssl leaks a copy of the session at each SSLObject.session read (gh-116810; on
    3.11, 7 KB per DoT reconnect in bench/soak.py, without end). tls_resumption "auto" resumes
    only on a Python without that leak, so the server sees no resumed handshake here on one
    with it; "on" resumes (each read leaks there), "off" never does."""
    expect_resumed = setting == "on" or (setting == "auto" and not SESSION_READ_LEAKS)
    for scheme in ("dot", "doh"):
        if scheme == "dot":
            opened = local_upstream(server_context(ca))
        else:
            opened = h2_server(server_context(ca))
        with opened as server:
            uri = (
                f"tls://127.0.0.1:{server.port}#{AUTH_NAME}"
                if scheme == "dot"
                else f"https://{AUTH_NAME}:{server.port}/dns-query#127.0.0.1"
            )
            options = {} if setting == "auto" else {"tls_resumption": setting}  # auto: the default
            config = make_config([uri], ca_file, cache_size=0, **options)
            with running_daemon(config) as daemon:
                for round_ in range(4):
                    answered(daemon, f"r{setting}{round_}-", 4)
                    daemon.call(daemon.runtime.network_changed, "test")
                answered(daemon, f"r{setting}-last-", 4)
            assert server.state.handshakes == 5, scheme
            assert (server.state.resumptions > 0) == expect_resumed, (scheme, setting)


def test_mallinfo_lines_on_sigusr1(tmp_path: Path) -> None:
    """STUBBY_PY_MALLINFO: each SIGUSR1 appends one JSON line of the C heap's figures (what told
    the TLS session leak of gh-116810 from fragmentation), without tracemalloc."""
    if memtrace.mallinfo() is None:
        pytest.skip("not glibc 2.33 or later: no mallinfo2")
    path = tmp_path / "mallinfo.jsonl"

    async def run() -> None:
        loop = asyncio.get_running_loop()
        assert memtrace.start_if_asked(loop, {memtrace.ENV_MALLINFO: str(path)})
        try:
            for _ in range(2):
                os.kill(os.getpid(), signal.SIGUSR1)
                await asyncio.sleep(0.1)
        finally:
            loop.remove_signal_handler(signal.SIGUSR1)

    asyncio.run(run())
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(lines) == 2
    assert all(line["rss"] > 0 and line["mallinfo2"]["uordblks"] > 0 for line in lines)
    assert not tracemalloc.is_tracing()


def test_free_heap_pages_go_back_to_the_kernel() -> None:
    """What a reload does once its retired transports are closed (daemon/heap.py): the free
    chunks left between live ones are returned, where glibc alone returns only the top."""
    if heap._malloc_trim() is None:
        pytest.skip("not glibc: no malloc_trim")

    def rss_mib() -> float:
        with open("/proc/self/statm", encoding="ascii") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    kept, freed = [], []
    for index in range(12_000):  # 48 MiB, one chunk in 8 kept: the heap cannot shrink from the top
        (kept if index % 8 == 7 else freed).append(bytearray(4000))
    freed.clear()
    before = rss_mib()
    assert heap.release_free_pages()
    assert rss_mib() < before - 20
    assert len(kept) == 1500
