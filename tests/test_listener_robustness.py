"""Whatever a client sends, the listener answers it or drops it; it never crashes or goes quiet."""

from __future__ import annotations

import contextlib
import socket
import struct
from collections.abc import Iterator
from typing import Any

import dns.message
import dns.opcode
import dns.query
import dns.rcode
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import dot_uri
from tests.daemon_thread import DaemonThread, make_config, running_daemon
from tests.servers import LocalUpstream
from tests.service import wait_for


@pytest.fixture
def daemon(dot_upstream: LocalUpstream, ca_file: str) -> Iterator[DaemonThread]:
    config = make_config([dot_uri(dot_upstream)], ca_file, timeout=1.0, attempt_timeout=1.0)
    with running_daemon(config) as running:
        yield running


def exchange_udp(port: int, data: bytes, timeout: float) -> bytes | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.sendto(data, ("127.0.0.1", port))
        try:
            return sock.recv(65535)
        except TimeoutError:
            return None


def still_answers(port: int) -> None:
    reply = dns.query.udp(
        dns.message.make_query("alive.example.", "A"), "127.0.0.1", port=port, timeout=3
    )
    assert reply.rcode() == dns.rcode.NOERROR


@pytest.mark.parametrize("data", [b"", b"\x00", bytes(11)])
def test_less_than_a_header_is_dropped(daemon: DaemonThread, data: bytes) -> None:
    assert exchange_udp(daemon.port, data, 0.3) is None
    still_answers(daemon.port)


def test_a_response_is_never_answered(daemon: DaemonThread) -> None:
    reply = dns.message.make_response(dns.message.make_query("x.example.", "A"))
    assert exchange_udp(daemon.port, reply.to_wire(), 0.3) is None


def test_broken_body_gets_formerr_with_the_id(daemon: DaemonThread) -> None:
    data = struct.pack("!HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0) + b"\x05abc"
    reply = exchange_udp(daemon.port, data, 2)
    assert reply is not None
    assert struct.unpack("!H", reply[:2])[0] == 0x1234
    assert reply[3] & 0x0F == dns.rcode.FORMERR


def test_unknown_opcode_gets_notimp(daemon: DaemonThread) -> None:
    query = dns.message.make_query("x.example.", "A")
    query.set_opcode(dns.opcode.NOTIFY)
    reply = dns.message.from_wire(exchange_udp(daemon.port, query.to_wire(), 2) or b"")
    assert reply.rcode() == dns.rcode.NOTIMP and reply.id == query.id


def test_edns_version_one_gets_badvers(daemon: DaemonThread) -> None:
    query = dns.message.make_query("x.example.", "A", use_edns=1)
    reply = dns.message.from_wire(exchange_udp(daemon.port, query.to_wire(), 2) or b"")
    assert reply.rcode() == dns.rcode.BADVERS


@given(data=st.binary(min_size=12, max_size=200))
@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_random_datagrams_are_answered_with_their_id(daemon: DaemonThread, data: bytes) -> None:
    data = data[:2] + bytes([data[2] & 0x7F]) + data[3:]  # QR clear: it claims to be a query
    reply = exchange_udp(daemon.port, data, 3)
    assert reply is not None and reply[:2] == data[:2]
    assert reply[2] & 0x80


@given(position=st.integers(min_value=2, max_value=60), value=st.integers(0, 255))
@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_mutated_queries_are_answered(daemon: DaemonThread, position: int, value: int) -> None:
    data = bytearray(dns.message.make_query("mutant.example.", "A", use_edns=0).to_wire())
    position %= len(data)
    data[position] = value
    data[2] &= 0x7F
    reply = exchange_udp(daemon.port, bytes(data), 3)
    assert reply is not None and reply[:2] == data[:2]


def test_garbage_on_tcp_does_not_hurt_other_clients(daemon: DaemonThread) -> None:
    with socket.create_connection(("127.0.0.1", daemon.port), timeout=3) as sock:
        sock.sendall(struct.pack("!H", 5) + b"\x01\x02\x03\x04\x05")
        sock.sendall(struct.pack("!H", 14) + bytes(14))
        head = sock.recv(2)
        assert len(head) == 2
    still_answers(daemon.port)


def test_tcp_pipelined_queries_all_answered_on_one_connection(daemon: DaemonThread) -> None:
    queries = [dns.message.make_query(f"p{i}.example.", "A") for i in range(50)]
    with socket.create_connection(("127.0.0.1", daemon.port), timeout=5) as sock:
        sock.sendall(
            b"".join(struct.pack("!H", len(w)) + w for w in (q.to_wire() for q in queries))
        )
        ids = set()
        for _ in queries:
            size = struct.unpack("!H", _recv_exactly(sock, 2))[0]
            ids.add(dns.message.from_wire(_recv_exactly(sock, size)).id)
    assert ids == {q.id for q in queries}


class CountingTransport:
    """A connection's own transport, counting the writes made through it."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.writes = 0

    def write(self, data: bytes) -> None:
        self.writes += 1
        self.real.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


def test_cached_replies_to_one_read_go_out_in_few_writes(daemon: DaemonThread) -> None:
    """Replies given while a read's queries are dispatched (cache hits) are written together:
    a write (a TLS record, on DoT) per batch of replies, not per reply; every query answered."""
    cached = dns.query.tcp(dns.message.make_query("batch.example.", "A"), "127.0.0.1",
                           port=daemon.port, timeout=3)  # fmt: skip
    assert cached.rcode() == dns.rcode.NOERROR
    queries = [dns.message.make_query("batch.example.", "A") for _ in range(500)]
    tcp = daemon.daemon.tcp
    with socket.create_connection(("127.0.0.1", daemon.port), timeout=5) as sock:
        assert wait_for(lambda: daemon.call(lambda: len(tcp.open)) == 1)

        def count_writes() -> CountingTransport:
            (connection,) = tcp.open
            counting = connection._transport = CountingTransport(connection._transport)
            return counting

        counting = daemon.call(count_writes)
        sock.sendall(
            b"".join(struct.pack("!H", len(w)) + w for w in (q.to_wire() for q in queries))
        )
        ids = []
        for _ in queries:
            size = struct.unpack("!H", _recv_exactly(sock, 2))[0]
            ids.append(dns.message.from_wire(_recv_exactly(sock, size)).id)
    assert sorted(ids) == sorted(q.id for q in queries)
    writes = daemon.call(lambda: counting.writes)
    assert writes <= 50, f"{writes} writes for {len(queries)} replies"


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        assert chunk, "connection closed early"
        data += chunk
    return data


def test_tcp_idle_connections_are_closed(dot_upstream: LocalUpstream, ca_file: str) -> None:
    config = make_config([dot_uri(dot_upstream)], ca_file, tcp_idle_timeout=0.3)
    with (
        running_daemon(config) as daemon,
        socket.create_connection(("127.0.0.1", daemon.port), timeout=3) as sock,
    ):
        assert sock.recv(10) == b""  # closed by the daemon after the idle timeout


def test_tcp_connection_cap(dot_upstream: LocalUpstream, ca_file: str) -> None:
    config = make_config([dot_uri(dot_upstream)], ca_file, tcp_max_connections=2)
    with running_daemon(config) as daemon:
        held = [socket.create_connection(("127.0.0.1", daemon.port), timeout=3) for _ in range(2)]
        try:
            extra = socket.create_connection(("127.0.0.1", daemon.port), timeout=3)
            with extra, contextlib.suppress(ConnectionResetError):
                assert extra.recv(10) == b""
        finally:
            for sock in held:
                sock.close()
        still_answers(daemon.port)


def test_clients_outside_the_allow_list_are_refused(
    dot_upstream: LocalUpstream, ca_file: str
) -> None:
    config = make_config([dot_uri(dot_upstream)], ca_file, allow=("127.0.0.1/32",))
    with running_daemon(config) as daemon:
        query = dns.message.make_query("x.example.", "A", use_edns=0)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind(("127.0.0.2", 0))
            sock.settimeout(3)
            sock.sendto(query.to_wire(), ("127.0.0.1", daemon.port))
            reply = dns.message.from_wire(sock.recv(4096))
        assert reply.rcode() == dns.rcode.REFUSED
        assert [o.code for o in reply.options] == [18]  # EDE Prohibited
        still_answers(daemon.port)
    assert dot_upstream.state.queries == [dot_upstream.state.queries[0]]
