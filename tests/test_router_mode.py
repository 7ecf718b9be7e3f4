"""Home-router mode: the checks that keep a LAN resolver from being abused, end to end from a
second loopback address (127.0.0.2) as another client: the per-client TCP cap, the rate limit
(drops above the rate, answers again once the bucket refills), the deny action."""

from __future__ import annotations

import contextlib
import socket
import struct
import time

import dns.message
import dns.rcode
import pytest

from tests.conftest import dot_uri
from tests.daemon_thread import make_config, running_daemon
from tests.servers import LocalUpstream
from tests.service import udp_burst, wait_for


def tcp_ask(port: int, name: str, *, source: str = "127.0.0.1") -> dns.message.Message:
    with socket.create_connection(("127.0.0.1", port), timeout=3, source_address=(source, 0)) as s:
        return tcp_ask_on(s, name)


def tcp_ask_on(sock: socket.socket, name: str) -> dns.message.Message:
    data = dns.message.make_query(name, "A").to_wire()
    sock.sendall(struct.pack("!H", len(data)) + data)
    size = struct.unpack("!H", _read(sock, 2))[0]
    return dns.message.from_wire(_read(sock, size))


def _read(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionResetError("closed")
        data += chunk
    return data


def is_closed_at_once(port: int, source: str) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=3, source_address=(source, 0)) as s:
        try:
            tcp_ask_on(s, "capped.example.")
        except (ConnectionResetError, BrokenPipeError):
            return True
    return False


def test_tcp_connections_are_capped_per_client(dot_upstream: LocalUpstream, ca_file: str) -> None:
    config = make_config([dot_uri(dot_upstream)], ca_file, tcp_max_connections_per_client=2)
    with running_daemon(config) as daemon:
        held = [socket.create_connection(("127.0.0.1", daemon.port), timeout=3) for _ in range(2)]
        try:
            assert tcp_ask_on(held[0], "held.example.").rcode() == dns.rcode.NOERROR
            assert is_closed_at_once(daemon.port, "127.0.0.1")  # a third from the same client
            # another client is not affected by the first one's connections
            assert tcp_ask(daemon.port, "other.example.", source="127.0.0.2").answer
        finally:
            held.pop().close()
        # one closed: the client may open another
        tcp = daemon.daemon.tcp
        assert wait_for(lambda: daemon.call(lambda: tcp.per_client.get("127.0.0.1")) == 1)
        assert tcp_ask(daemon.port, "again.example.").answer
        held[0].close()
        assert daemon.call(lambda: tcp.rejected_per_client) == 1
        assert wait_for(lambda: daemon.call(lambda: dict(tcp.per_client)) == {})


def test_rate_limit_drops_above_the_rate_and_recovers(
    dot_upstream: LocalUpstream, ca_file: str
) -> None:
    config = make_config(
        [dot_uri(dot_upstream)], ca_file, rate_limit=5.0, rate_limit_burst=5,
        rate_limit_exempt=(),
    )  # fmt: skip
    with running_daemon(config) as daemon:
        names = [f"r{i}.example." for i in range(20)]
        answered = udp_burst(daemon.port, names, "127.0.0.2", wait=0.5)
        assert 5 <= answered <= 7  # the burst, and a token or two that came back meanwhile
        limited = daemon.resolver.counters["rate_limited"]
        assert limited == len(names) - answered
        # another client has a bucket of its own
        assert udp_burst(daemon.port, ["other.example."], "127.0.0.3", wait=2.0) == 1
        time.sleep(1.0)  # refilled: answered again
        assert udp_burst(daemon.port, names[:3], "127.0.0.2", wait=2.0) == 3


@pytest.mark.parametrize(("action", "replies"), [("refuse", 1), ("drop", 0)])
def test_deny_action(dot_upstream: LocalUpstream, ca_file: str, action: str, replies: int) -> None:
    config = make_config(
        [dot_uri(dot_upstream)], ca_file, allow=("127.0.0.1/32",), deny_action=action
    )
    with running_daemon(config) as daemon:
        assert udp_burst(daemon.port, ["denied.example."], "127.0.0.2", wait=0.5) == replies
        assert udp_burst(daemon.port, ["allowed.example."], "127.0.0.1", wait=3.0) == 1
    assert len(dot_upstream.state.queries) == 1


def test_tcp_cap_and_connection_count_survive_many_clients(
    dot_upstream: LocalUpstream, ca_file: str
) -> None:
    config = make_config(
        [dot_uri(dot_upstream)], ca_file, tcp_max_connections=4, tcp_max_connections_per_client=2
    )
    with running_daemon(config) as daemon, contextlib.ExitStack() as stack:
        for source in ("127.0.0.2", "127.0.0.3"):
            for _ in range(2):
                sock = socket.create_connection(
                    ("127.0.0.1", daemon.port), timeout=3, source_address=(source, 0)
                )
                stack.enter_context(sock)
                assert tcp_ask_on(sock, "fill.example.").answer
        assert is_closed_at_once(daemon.port, "127.0.0.4")  # the total cap
        tcp = daemon.daemon.tcp
        assert daemon.call(lambda: (tcp.rejected, tcp.rejected_per_client)) == (1, 0)
