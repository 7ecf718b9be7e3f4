"""Clients that misbehave (router mode on a hostile LAN): a denied source gets nothing it was not
meant to get and holds no TCP slot, a client that never reads its TCP replies or trickles bytes
costs bounded memory and is closed, and other clients are answered meanwhile."""

from __future__ import annotations

import socket
import struct
import time

import dns.message
import dns.opcode
import dns.rcode
import pytest

from tests.conftest import dot_uri
from tests.daemon_thread import make_config, running_daemon
from tests.upstream_server import LocalUpstream

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
