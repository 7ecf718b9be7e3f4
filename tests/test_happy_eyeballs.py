"""Happy Eyeballs (RFC 8305) for an upstream with several addresses, and addresses with no route.

An upstream by hostname whose first address is a black hole (a listener whose accept queue is
full: the kernel drops every further SYN, as a firewall that drops would) and whose second works:
the second is started after the attempt delay, the first query is answered well before the
connect timeout, and the losing connect is closed. The schedule itself (transports/toolkit.py)
is tested on its own. The no-route tests are in tests/test_no_route_netns.py.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from stubby_py.core.config import parse_upstream_uri
from stubby_py.transports import bootstrap
from stubby_py.transports.toolkit import CONNECTION_ATTEMPT_DELAY, AttemptSchedule
from tests.clients import ask_many, rcodes
from tests.conftest import server_context
from tests.daemon_thread import make_config, running_daemon
from tests.servers import doq_server, local_upstream, write_cert_files

pytestmark = pytest.mark.timeout(60)

HOST = "dot.test"
BLACK_HOLE = "127.0.0.2"
#: the connect timeout of these tests (attempt_timeout): far above what racing takes
CONNECT_TIMEOUT = 6.0


@pytest.fixture(autouse=True)
def _fresh_books() -> Iterator[None]:
    bootstrap.forget()
    yield
    bootstrap.forget()


@contextlib.contextmanager
def black_hole(port: int) -> Iterator[None]:
    """127.0.0.2:`port` takes one connection and never accepts it: with listen(0) the accept
    queue is then full, and the kernel drops every later SYN to it unanswered."""
    with socket.socket() as listener, socket.socket() as filler:
        listener.bind((BLACK_HOLE, port))
        listener.listen(0)
        filler.connect((BLACK_HOLE, port))
        yield


def syn_sent_to(address: str, port: int) -> int:
    """Sockets of this host still trying to connect to address:port (/proc/net/tcp)."""
    packed = socket.inet_aton(address)[::-1].hex().upper()
    remote = f"{packed}:{port:04X}"
    lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    return sum(1 for line in lines if line.split()[2] == remote and line.split()[3] == "02")


def test_a_black_holed_first_address_costs_the_attempt_delay_not_the_timeout(
    ca: trustme.CA, ca_file: str, tmp_path: Path
) -> None:
    with (
        local_upstream(server_context(ca, HOST)) as upstream,
        local_upstream(None) as resolver,
        black_hole(upstream.port),
    ):
        resolver.state.records[f"{HOST}."] = [("A", BLACK_HOLE), ("A", "127.0.0.1")]
        config = make_config(
            [f"tls://{HOST}:{upstream.port}"], ca_file,
            bootstrap=(parse_upstream_uri(f"udp://127.0.0.1:{resolver.port}"),),
            bootstrap_file=str(tmp_path / "bootstrap.json"),
            timeout=CONNECT_TIMEOUT + 2, attempt_timeout=CONNECT_TIMEOUT,
        )  # fmt: skip
        with running_daemon(config) as daemon:
            started = time.monotonic()
            results = ask_many(["a.example."], daemon.port, timeout=CONNECT_TIMEOUT)
            took = time.monotonic() - started
            assert rcodes(results) == ["NOERROR"]
            # the bootstrap, then the black hole for the attempt delay, then the handshake
            assert took < CONNECT_TIMEOUT / 2, took
            assert upstream.state.connections == 1
            # the losing connect was given up at once, not left to time out
            deadline = time.monotonic() + 2.0
            while syn_sent_to(BLACK_HOLE, upstream.port) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert syn_sent_to(BLACK_HOLE, upstream.port) == 0
            # the next connection starts with the address that won
            (book,) = bootstrap.books()
            transport = daemon.resolver.transports[0]
            transport.reset_connection()
            started = time.monotonic()
            assert rcodes(ask_many(["b.example."], daemon.port)) == ["NOERROR"]
            assert time.monotonic() - started < CONNECT_TIMEOUT / 2
            assert book.addresses() == [BLACK_HOLE, "127.0.0.1"]
            assert upstream.state.connections == 2
            assert syn_sent_to(BLACK_HOLE, upstream.port) == 0


def test_doq_races_the_quic_handshake(ca: trustme.CA, ca_file: str, tmp_path: Path) -> None:
    """DoQ: the first address takes the Initial and never answers (a UDP socket nobody reads);
    the handshake with the second is started after the attempt delay and wins."""
    cert, key = write_cert_files(ca, str(tmp_path), HOST)
    with (
        doq_server(cert, key) as upstream,
        local_upstream(None) as resolver,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent,
    ):
        silent.bind((BLACK_HOLE, upstream.port))
        resolver.state.records[f"{HOST}."] = [("A", BLACK_HOLE), ("A", "127.0.0.1")]
        config = make_config(
            [f"quic://{HOST}:{upstream.port}"], ca_file,
            bootstrap=(parse_upstream_uri(f"udp://127.0.0.1:{resolver.port}"),),
            bootstrap_file=None, timeout=CONNECT_TIMEOUT + 2, attempt_timeout=CONNECT_TIMEOUT,
        )  # fmt: skip
        with running_daemon(config) as daemon:
            started = time.monotonic()
            results = ask_many(["a.example."], daemon.port, timeout=CONNECT_TIMEOUT)
            assert rcodes(results) == ["NOERROR"]
            assert time.monotonic() - started < CONNECT_TIMEOUT / 2
            assert upstream.state.handshakes == 1
            assert silent.recv(4096)  # the losing attempt did send its Initial there


def test_schedule_starts_the_next_after_the_delay_or_at_once_after_a_failure() -> None:
    schedule = AttemptSchedule(["2001:db8::1", "192.0.2.1", "2001:db8::2"], delay=0.25)
    assert schedule.due(10.0) == "2001:db8::1"
    assert schedule.due(10.1) is None
    assert schedule.wait(10.1) == pytest.approx(0.15)
    assert schedule.due(10.25) == "192.0.2.1"
    schedule.failed()  # the second failed at once: the third need not wait
    assert schedule.wait(10.26) == 0.0
    assert schedule.due(10.26) == "2001:db8::2"
    assert schedule.due(20.0) is None and schedule.wait(20.0) is None
    assert 0.1 <= CONNECTION_ATTEMPT_DELAY <= 2.0  # RFC 8305 §5's bounds
