"""The metrics endpoint cannot cost DNS its file descriptors: connections over
metrics_max_connections and from outside metrics_allow are closed at accept without a byte, and a
client that does not send its request in time is closed."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import dns.message
import dns.query
import dns.rcode
import pytest

from stubby_py.core.config import Config
from tests.conftest import dot_uri
from tests.daemon_thread import DaemonThread, make_config, running_daemon
from tests.peers import free_ports
from tests.servers import LocalUpstream
from tests.service import ask, closed_by_peer, daemon_process, wait_for, write_config

REQUEST = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"
#: idle connections opened in the flood: well past the daemon's open files limit below
FLOOD = 300
OPEN_FILES = 256


def connect(port: int, source: str = "127.0.0.1") -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(source, 0))


def read_to_end(sock: socket.socket) -> bytes:
    """Everything the other end sends until it closes (a reset ends it too)."""
    chunks = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except ConnectionError:
        pass
    return b"".join(chunks)


def http_reply(port: int, source: str = "127.0.0.1") -> bytes:
    """What the endpoint sends back for one GET /metrics from `source`, until it closes."""
    with connect(port, source) as sock:
        try:
            sock.sendall(REQUEST)
        except ConnectionError:
            return b""  # closed at accept before the request went out
        return read_to_end(sock)


def test_idle_metrics_connections_do_not_take_dns_down(
    dot_upstream: LocalUpstream, ca_file: str, tmp_path: Path
) -> None:
    """Before: the idle connections took every descriptor and the next upstream connection
    failed (EMFILE): SERVFAIL for every query not in the cache, TCP clients not accepted."""
    port, metrics_port = free_ports(2)
    config = write_config(
        tmp_path / "config.yaml", port, [dot_uri(dot_upstream)], ca_file,
        control_socket=False, metrics_listen=f"127.0.0.1:{metrics_port}",
    )  # fmt: skip
    log = tmp_path / "daemon.log"
    held: list[socket.socket] = []
    with daemon_process(config, log, open_files=OPEN_FILES, ready="metrics on"):
        try:
            for _ in range(FLOOD):
                held.append(connect(metrics_port))
            # the upstream connection is opened now, after the flood: it needs a descriptor
            assert ask(port, "after-flood.example.").rcode() == dns.rcode.NOERROR, log.read_text()
            tcp = dns.query.tcp(
                dns.message.make_query("tcp.example.", "A"), "127.0.0.1", port=port, timeout=3
            )
            assert tcp.rcode() == dns.rcode.NOERROR and tcp.answer
            cap = Config().service.metrics_max_connections
            assert wait_for(lambda: sum(map(closed_by_peer, held)) >= FLOOD - cap)
            assert sum(map(closed_by_peer, held)) == FLOOD - cap  # the first `cap` are served
        finally:
            for sock in held:
                sock.close()
    assert "over metrics_max_connections" in log.read_text()


@pytest.fixture
def metrics_daemon(dot_upstream: LocalUpstream, ca_file: str) -> Iterator[DaemonThread]:
    config = make_config(
        [dot_uri(dot_upstream)], ca_file,
        metrics_listen=("127.0.0.1", 0), metrics_allow=("127.0.0.2/32",),
    )  # fmt: skip
    with running_daemon(config) as daemon:
        yield daemon


def test_a_source_outside_metrics_allow_gets_no_answer(metrics_daemon: DaemonThread) -> None:
    daemon = metrics_daemon.daemon
    assert daemon.metrics is not None
    port = daemon.metrics.port
    assert http_reply(port, "127.0.0.1") == b""
    assert http_reply(port, "127.0.0.2").startswith(b"HTTP/1.1 200 OK")
    # a reload changes the access list for connections to come
    swapped = daemon.config.with_options(metrics_allow=("127.0.0.1/32",))
    metrics_daemon.call(daemon._apply, swapped)
    assert http_reply(port, "127.0.0.1").startswith(b"HTTP/1.1 200 OK")
    assert http_reply(port, "127.0.0.2") == b""
    assert daemon.metrics.denied == 2


def test_idle_slow_and_oversized_requests_are_closed_without_an_answer(
    metrics_daemon: DaemonThread,
) -> None:
    daemon = metrics_daemon.daemon
    assert daemon.metrics is not None
    daemon.metrics.head_timeout = 0.5
    port = daemon.metrics.port
    with (
        connect(port, "127.0.0.2") as idle,
        connect(port, "127.0.0.2") as slow,
        connect(port, "127.0.0.2") as oversized,
    ):
        oversized.sendall(b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 10_000)
        deadline = time.monotonic() + 3
        while not closed_by_peer(slow) and time.monotonic() < deadline:
            slow.send(b"G")  # a byte at a time never completes the request head
            time.sleep(0.05)
        for sock in (idle, slow, oversized):
            assert wait_for(lambda: closed_by_peer(sock), 3)  # noqa: B023
            assert read_to_end(sock) == b""  # no answer
    assert daemon.metrics.open == 0
    assert http_reply(port, "127.0.0.2").startswith(b"HTTP/1.1 200 OK")
