"""Clients that misbehave (router mode on a hostile LAN): a denied source gets nothing it was not
meant to get and holds no TCP slot, a client that never reads its TCP replies or trickles bytes
costs bounded memory and is closed, and other clients are answered meanwhile."""

from __future__ import annotations

import contextlib
import socket
import struct
import time
from types import SimpleNamespace

import dns.message
import dns.opcode
import dns.query
import dns.rcode
import pytest

from stubby_py.core.access import AccessList
from stubby_py.core.ratelimit import RateLimiter, client_key
from stubby_py.listeners.plain import TCPConnections
from tests.conftest import dot_uri
from tests.daemon_thread import DaemonThread, make_config, running_daemon
from tests.servers import LocalUpstream
from tests.service import wait_for

MALFORMED = struct.pack("!HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0) + b"\x05abc"


def notify_message() -> bytes:
    query = dns.message.make_query("zone.example.", "SOA")
    query.set_opcode(dns.opcode.NOTIFY)
    return query.to_wire()


def udp_replies(port: int, packets: list[bytes], source: str, wait: float) -> list[bytes]:
    """Send every packet from `source` at once; the replies that come within `wait` (returning
    as soon as there is one per packet)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((source, 0))
        for packet in packets:
            sock.sendto(packet, ("127.0.0.1", port))
        replies: list[bytes] = []
        deadline = time.monotonic() + wait
        while len(replies) < len(packets) and (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            try:
                replies.append(sock.recv(65535))
            except TimeoutError:
                break
    return replies


# -- item 3: the access list comes before reading the message ---------------------------------


@pytest.mark.parametrize("packet", [MALFORMED, notify_message()], ids=["malformed", "notify"])
def test_deny_action_drop_drops_malformed_and_notify(
    dot_upstream: LocalUpstream, ca_file: str, packet: bytes
) -> None:
    config = make_config(
        [dot_uri(dot_upstream)], ca_file, allow=("127.0.0.1/32",), deny_action="drop"
    )
    with running_daemon(config) as daemon:
        assert udp_replies(daemon.port, [packet], "127.0.0.2", wait=0.5) == []
        assert daemon.resolver.counters["dropped"] == 1
        # the same packet from an allowed source is answered (FORMERR, NOTIMP)
        assert len(udp_replies(daemon.port, [packet], "127.0.0.1", wait=3.0)) == 1


@pytest.mark.parametrize("packet", [MALFORMED, notify_message()], ids=["malformed", "notify"])
def test_deny_action_refuse_refuses_malformed_and_notify(
    dot_upstream: LocalUpstream, ca_file: str, packet: bytes
) -> None:
    config = make_config(
        [dot_uri(dot_upstream)], ca_file, allow=("127.0.0.1/32",), deny_action="refuse"
    )
    with running_daemon(config) as daemon:
        [reply] = udp_replies(daemon.port, [packet], "127.0.0.2", wait=3.0)
        assert reply[:2] == packet[:2]  # the ID
        assert reply[2] & 0x80  # QR
        assert reply[3] & 0x0F == dns.rcode.REFUSED
        assert daemon.resolver.counters["formerr"] == daemon.resolver.counters["notimp"] == 0


def test_refused_to_a_denied_source_is_rate_limited(
    dot_upstream: LocalUpstream, ca_file: str
) -> None:
    config = make_config(
        [dot_uri(dot_upstream)], ca_file, allow=("127.0.0.1/32",), deny_action="refuse",
        rate_limit=5.0, rate_limit_burst=5, rate_limit_exempt=(),
    )  # fmt: skip
    with running_daemon(config) as daemon:
        flood = [dns.message.make_query(f"d{i}.example.", "A").to_wire() for i in range(100)]
        replies = udp_replies(daemon.port, flood, "127.0.0.2", wait=1.0)
        assert 5 <= len(replies) <= 15  # the burst, and what came back at 5 a second
        assert all(r[3] & 0x0F == dns.rcode.REFUSED for r in replies)


def test_formerr_flood_from_a_limited_client_is_limited(
    dot_upstream: LocalUpstream, ca_file: str
) -> None:
    config = make_config(
        [dot_uri(dot_upstream)], ca_file, rate_limit=5.0, rate_limit_burst=5,
        rate_limit_exempt=(),
    )  # fmt: skip
    with running_daemon(config) as daemon:
        flood = [bytes([i >> 8, i & 255]) + MALFORMED[2:] for i in range(200)]
        replies = udp_replies(daemon.port, flood, "127.0.0.2", wait=1.0)
        assert 5 <= len(replies) <= 15  # the burst, and what came back at 5 a second
        assert all(r[3] & 0x0F == dns.rcode.FORMERR for r in replies)
        assert daemon.resolver.counters["rate_limited"] >= len(flood) - 15


# -- items 1 and 2: TCP ----------------------------------------------------------------------

BIG = "big.example."


def framed(message: dns.message.Message) -> bytes:
    data = message.to_wire()
    return struct.pack("!H", len(data)) + data


def tcp_answer(port: int, name: str, source: str = "127.0.0.1") -> dns.message.Message:
    query = dns.message.make_query(name, "TXT")
    return dns.query.tcp(query, "127.0.0.1", port=port, timeout=3, source=source)


def is_closed_by_peer(sock: socket.socket, wait: float) -> bool:
    """Whether the daemon closes (or resets) `sock` within `wait`, reading and discarding what
    it sent meanwhile."""
    sock.settimeout(0.2)
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        try:
            if not sock.recv(1 << 20):
                return True
        except TimeoutError:
            continue
        except (ConnectionResetError, BrokenPipeError):
            return True
    return False


def rss_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def open_tcp(daemon: DaemonThread) -> int:
    tcp = daemon.daemon.tcp
    return int(daemon.call(lambda: len(tcp.open)))


def test_a_client_that_never_reads_its_replies_is_bounded_and_closed(
    dot_upstream: LocalUpstream, ca_file: str
) -> None:
    # ~10 KB answer: 40 TXT strings of 250 octets
    dot_upstream.state.records[BIG] = [("TXT", f'"{i:03} ' + "x" * 246 + '"') for i in range(40)]
    config = make_config([dot_uri(dot_upstream)], ca_file, tcp_idle_timeout=1.0)
    with running_daemon(config) as daemon:
        assert len(tcp_answer(daemon.port, BIG).to_wire()) > 10_000  # cached now
        queries = framed(dns.message.make_query(BIG, "TXT")) * 10_000
        before = rss_bytes()
        with socket.create_connection(("127.0.0.1", daemon.port), timeout=3) as hog:
            hog.setblocking(False)
            sent = 0
            deadline = time.monotonic() + 2.0
            while sent < len(queries) and time.monotonic() < deadline:
                try:
                    sent += hog.send(queries[sent:])
                except BlockingIOError:
                    time.sleep(0.01)  # the daemon stopped reading: as it should
            time.sleep(0.5)  # let the daemon take what it read
            grown = rss_bytes() - before
            # unbounded, 10,000 replies of 10 KB replies would be held: ~100 MB
            assert grown < 30 << 20, f"the daemon grew by {grown >> 20} MB"
            tcp = daemon.daemon.tcp
            assert daemon.call(tcp.unsent) < 256 << 10
            # others are still answered, over UDP and TCP
            assert dns.query.udp(
                dns.message.make_query("other.example.", "A"), "127.0.0.1", port=daemon.port,
                timeout=3,
            ).answer  # fmt: skip
            assert tcp_answer(daemon.port, BIG).answer
            # the hog's replies made no progress for tcp_idle_timeout: closed
            assert wait_for(lambda: open_tcp(daemon) == 0, timeout=5)
            assert daemon.call(lambda: tcp.closed_unread) == 1
            hog.setblocking(True)
            assert is_closed_by_peer(hog, wait=5)


def test_a_client_that_reads_gets_every_large_answer(
    dot_upstream: LocalUpstream, ca_file: str
) -> None:
    """Back-pressure pauses and resumes: 1,000 pipelined queries for a 10 KB answer, sent with a
    half-close, are all answered to a client that reads (10 MB through a 64 KiB window)."""
    dot_upstream.state.records[BIG] = [("TXT", f'"{i:03} ' + "x" * 246 + '"') for i in range(40)]
    config = make_config([dot_uri(dot_upstream)], ca_file)
    with running_daemon(config) as daemon:
        assert tcp_answer(daemon.port, BIG).answer  # cached now
        queries = [dns.message.make_query(BIG, "TXT") for _ in range(1000)]
        with socket.create_connection(("127.0.0.1", daemon.port), timeout=5) as sock:
            sock.sendall(b"".join(framed(q) for q in queries))
            sock.shutdown(socket.SHUT_WR)
            ids = []
            for _ in queries:
                size = struct.unpack("!H", _recv_exactly(sock, 2))[0]
                ids.append(dns.message.from_wire(_recv_exactly(sock, size)).id)
            assert sock.recv(1) == b""  # then closed
        assert sorted(ids) == sorted(q.id for q in queries)


def test_pipelining_cap_counts_queries_not_reads(dot_upstream: LocalUpstream, ca_file: str) -> None:
    """One read of many pipelined queries that go upstream hands at most MAX_PIPELINED to the
    resolver; the rest follow as answers go out, and every one is answered (the client
    half-closes after sending: what it sent is still answered, then the connection closes)."""
    dot_upstream.state.delay = 0.3
    config = make_config([dot_uri(dot_upstream)], ca_file, timeout=5.0, attempt_timeout=5.0)
    with running_daemon(config) as daemon:
        queries = [dns.message.make_query(f"p{i}.example.", "A") for i in range(400)]
        with socket.create_connection(("127.0.0.1", daemon.port), timeout=10) as sock:
            sock.sendall(b"".join(framed(q) for q in queries))
            sock.shutdown(socket.SHUT_WR)
            time.sleep(0.15)  # everything read, nothing answered yet
            inflight = daemon.call(lambda: len(daemon.resolver._inflight))
            assert 0 < inflight <= 128
            ids = set()
            for _ in queries:
                size = struct.unpack("!H", _recv_exactly(sock, 2))[0]
                ids.add(dns.message.from_wire(_recv_exactly(sock, size)).id)
            assert sock.recv(1) == b""
        assert ids == {q.id for q in queries}


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        assert chunk, "connection closed early"
        data += chunk
    return data


def test_dropped_messages_free_their_pipelining_slot(
    dot_upstream: LocalUpstream, ca_file: str
) -> None:
    """Messages dropped unanswered (empty, responses) do not count as in flight: else 128 of
    them would stop the connection being read for good, and it would never be idle."""
    config = make_config([dot_uri(dot_upstream)], ca_file, tcp_idle_timeout=1.0)
    response = dns.message.make_response(dns.message.make_query("r.example.", "A")).to_wire()
    with (
        running_daemon(config) as daemon,
        socket.create_connection(("127.0.0.1", daemon.port), timeout=3) as sock,
    ):
        junk = b"\x00\x00" * 100 + (struct.pack("!H", len(response)) + response) * 100
        sock.sendall(junk + framed(dns.message.make_query("after.example.", "A")))
        size = struct.unpack("!H", _recv_exactly(sock, 2))[0]
        assert dns.message.from_wire(_recv_exactly(sock, size)).answer
        assert is_closed_by_peer(sock, wait=5)  # then idle


def test_a_rate_limited_tcp_client_is_closed_when_idle(
    dot_upstream: LocalUpstream, ca_file: str
) -> None:
    config = make_config(
        [dot_uri(dot_upstream)], ca_file, rate_limit=5.0, rate_limit_burst=5,
        rate_limit_exempt=(), tcp_idle_timeout=1.0,
    )  # fmt: skip
    with running_daemon(config) as daemon:
        queries = [dns.message.make_query(f"t{i}.example.", "A") for i in range(300)]
        with socket.create_connection(
            ("127.0.0.1", daemon.port), timeout=3, source_address=("127.0.0.2", 0)
        ) as sock:
            sock.sendall(b"".join(framed(q) for q in queries))
            assert is_closed_by_peer(sock, wait=5)
        assert daemon.resolver.counters["rate_limited"] >= 280


def test_denied_connections_hold_no_slot(dot_upstream: LocalUpstream, ca_file: str) -> None:
    config = make_config(
        [dot_uri(dot_upstream)], ca_file, allow=("127.0.0.1/32",), tcp_max_connections=4
    )
    with running_daemon(config) as daemon, contextlib.ExitStack() as stack:
        denied = []
        for _ in range(8):
            sock = socket.create_connection(
                ("127.0.0.1", daemon.port), timeout=3, source_address=("127.0.0.2", 0)
            )
            denied.append(stack.enter_context(sock))
        # the allowed client still gets a slot and an answer
        assert tcp_answer(daemon.port, "allowed.example.").rcode() == dns.rcode.NOERROR
        assert all(is_closed_by_peer(sock, wait=2) for sock in denied)
        tcp = daemon.daemon.tcp
        assert daemon.call(lambda: (tcp.denied, tcp.rejected, tcp.rejected_per_client)) == (8, 0, 0)


def test_slowloris_is_closed_within_the_idle_timeout(
    dot_upstream: LocalUpstream, ca_file: str
) -> None:
    config = make_config([dot_uri(dot_upstream)], ca_file, tcp_idle_timeout=1.0)
    with running_daemon(config) as daemon:
        message = framed(dns.message.make_query("slow.example.", "A"))
        with socket.create_connection(("127.0.0.1", daemon.port), timeout=3) as sock:
            started = time.monotonic()
            closed = False
            for byte in message:  # a byte every 0.1 s: the whole query would take 3 s
                try:
                    sock.sendall(bytes([byte]))
                except (ConnectionResetError, BrokenPipeError):
                    closed = True
                    break
                if is_closed_by_peer(sock, wait=0.1):
                    closed = True
                    break
            assert closed, "a connection trickling bytes was kept open"
            assert time.monotonic() - started < len(message) * 0.1
        tcp = daemon.daemon.tcp
        assert daemon.call(lambda: tcp.closed_idle) == 1
        assert tcp_answer(daemon.port, "fine.example.").rcode() == dns.rcode.NOERROR


def test_an_ipv6_client_is_its_slash_64() -> None:
    assert client_key("2001:db8:1:2::1", 64) == client_key("2001:db8:1:2:ffff::5", 64)
    assert client_key("2001:db8:1:2::1", 64) == "2001:db8:1:2::/64"
    assert client_key("2001:db8:1:3::1", 64) != client_key("2001:db8:1:2::1", 64)
    assert client_key("2001:db8:1:2::1", 128) != client_key("2001:db8:1:2::5", 128)
    assert client_key("::ffff:192.0.2.7", 64) == client_key("192.0.2.7", 64) == "192.0.2.7"
    assert client_key("fe80::1%eth0", 64) == "fe80::/64"
    # the per-client TCP cap
    resolver = SimpleNamespace(acl=AccessList(["2001:db8::/32"]))
    tcp = TCPConnections(resolver, 100, 10.0, max_per_client=2)  # type: ignore[arg-type]
    assert tcp.admit("2001:db8:1:2::1") and tcp.admit("2001:db8:1:2::2")
    assert tcp.admit("2001:db8:1:2::3") is None  # a third address of the same /64
    assert tcp.admit("2001:db8:1:3::1") is not None
    assert tcp.admit("2001:db9::1") is None and tcp.denied == 1
    # the rate limit
    limiter = RateLimiter(rate=1, burst=1)
    assert limiter.allows("2001:db8:1:2::1", 0.0)
    assert not limiter.allows("2001:db8:1:2::2", 0.0)
    assert limiter.allows("2001:db8:1:3::1", 0.0)


def test_ipv6_connections_count_per_slash_64(dot_upstream: LocalUpstream, ca_file: str) -> None:
    config = make_config([dot_uri(dot_upstream)], ca_file, tcp_max_connections_per_client=2)
    config = config.with_options(listen=(("::1", 0),))
    with running_daemon(config) as daemon, contextlib.ExitStack() as stack:
        for _ in range(2):
            stack.enter_context(socket.create_connection(("::1", daemon.port), timeout=3))
        tcp = daemon.daemon.tcp
        assert wait_for(lambda: daemon.call(lambda: dict(tcp.per_client)) == {"::/64": 2})
        extra = stack.enter_context(socket.create_connection(("::1", daemon.port), timeout=3))
        assert is_closed_by_peer(extra, wait=2)
        assert daemon.call(lambda: tcp.rejected_per_client) == 1
