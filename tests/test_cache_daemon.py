"""The cache in the running daemon, end to end over a local DoT upstream: hits that never reach
the upstream, joined identical queries, stale answers, held failures, prefetch, persistence."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from subprocess import Popen

import dns.asyncquery
import dns.edns
import dns.flags
import dns.message
import dns.query
import dns.rcode
import pytest
from dns.edns import EDECode

from tests.conftest import dot_uri
from tests.daemon_thread import make_config, running_daemon
from tests.servers import LocalUpstream, Misbehaviour


def config_for(server: LocalUpstream, ca_file: str, **changes):  # type: ignore[no-untyped-def]
    return make_config([dot_uri(server)], ca_file, **changes)


def raw_udp(port: int, query: dns.message.Message) -> bytes:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(5)
        sock.sendto(query.to_wire(), ("127.0.0.1", port))
        return sock.recv(65535)


def raw_tcp(port: int, query: dns.message.Message) -> bytes:
    data = query.to_wire()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(struct.pack("!H", len(data)) + data)
        size = struct.unpack("!H", _read(sock, 2))[0]
        return _read(sock, size)


def _read(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        assert chunk, "connection closed early"
        data += chunk
    return data


def question_bytes(wire_message: bytes) -> bytes:
    end = 12
    while wire_message[end]:
        end += wire_message[end] + 1
    return wire_message[12 : end + 5]


def ede_codes(reply: dns.message.Message) -> list[int]:
    return [o.code for o in reply.options if isinstance(o, dns.edns.EDEOption)]


def ask(port: int, name: str, **kw) -> dns.message.Message:  # type: ignore[no-untyped-def]
    return dns.query.udp(dns.message.make_query(name, "A", **kw), "127.0.0.1", port=port, timeout=5)


@pytest.mark.parametrize("transport", [raw_udp, raw_tcp])
def test_repeat_query_is_answered_from_the_cache(
    dot_upstream: LocalUpstream,
    ca_file: str,
    transport: Callable[[int, dns.message.Message], bytes],
) -> None:
    with running_daemon(config_for(dot_upstream, ca_file)) as daemon:
        first = dns.message.make_query("www.Example.test.", "A", use_edns=0)
        reply = dns.message.from_wire(transport(daemon.port, first))
        assert reply.answer[0].ttl == 300
        assert len(dot_upstream.state.queries) == 1
        time.sleep(1.1)
        again = dns.message.make_query("WWW.eXaMpLe.TEST.", "A", use_edns=0)
        again.id = 4242
        wire_reply = transport(daemon.port, again)
        reply = dns.message.from_wire(wire_reply)
        assert len(dot_upstream.state.queries) == 1  # never reached the upstream
        assert reply.id == 4242
        assert question_bytes(wire_reply) == question_bytes(again.to_wire())  # exact case
        assert reply.rcode() == dns.rcode.NOERROR
        assert reply.answer[0][0].address == "192.0.2.1"
        assert 297 <= reply.answer[0].ttl <= 299  # decremented by the time it was cached
        assert daemon.resolver.counters["cache_hits"] == 1


def test_cached_answer_too_big_for_udp_is_truncated_then_whole_over_tcp(
    dot_upstream: LocalUpstream, ca_file: str
) -> None:
    dot_upstream.state.records = {
        "big.example.": [("A", f"192.0.2.{i}") for i in range(1, 61)]  # about 1 kB
    }
    with running_daemon(config_for(dot_upstream, ca_file)) as daemon:
        full = dns.query.tcp(
            dns.message.make_query("big.example.", "A"), "127.0.0.1", port=daemon.port, timeout=5
        )
        assert len(full.answer[0]) == 60
        cut = dns.message.from_wire(
            raw_udp(daemon.port, dns.message.make_query("big.example.", "A"))
        )
        assert cut.flags & dns.flags.TC and not cut.answer
        whole = dns.message.from_wire(
            raw_tcp(daemon.port, dns.message.make_query("big.example.", "A"))
        )
        assert len(whole.answer[0]) == 60
        assert len(dot_upstream.state.queries) == 1


def test_hundred_identical_queries_cause_one_upstream_query(
    dot_upstream: LocalUpstream, ca_file: str
) -> None:
    dot_upstream.state.delay = 0.3  # every client asks while the first question is in flight

    async def hundred(port: int) -> list[tuple[dns.message.Message, dns.message.Message]]:
        queries = [
            dns.message.make_query("same.example." if i % 2 else "SAME.Example.", "A")
            for i in range(100)
        ]
        replies = await asyncio.gather(
            *(dns.asyncquery.udp(q, "127.0.0.1", port=port, timeout=5) for q in queries)
        )
        return list(zip(queries, replies, strict=True))

    with running_daemon(config_for(dot_upstream, ca_file)) as daemon:
        pairs = asyncio.run(hundred(daemon.port))
        counters = dict(daemon.resolver.counters)
    assert len(dot_upstream.state.queries) == 1
    for query, reply in pairs:
        assert reply.id == query.id
        assert reply.question[0].name.to_text() == query.question[0].name.to_text()
        assert reply.answer[0][0].address == "192.0.2.1"
    assert counters["cache_misses"] == 1
    assert counters["joined"] + counters["cache_hits"] == 99


@pytest.mark.parametrize("fault", [Misbehaviour.STALL, Misbehaviour.CLOSE])
def test_stale_answer_when_the_upstream_fails_after_expiry(
    dot_upstream: LocalUpstream, ca_file: str, fault: Misbehaviour
) -> None:
    config = config_for(dot_upstream, ca_file, cache_max_ttl=1, timeout=0.6, attempt_timeout=0.5)
    with running_daemon(config) as daemon:
        fresh = ask(daemon.port, "stale.example.", use_edns=0)
        assert fresh.answer[0].ttl == 1 and not ede_codes(fresh)
        time.sleep(1.2)
        dot_upstream.state.misbehaviour = fault
        stale = ask(daemon.port, "stale.example.", use_edns=0)
        assert stale.rcode() == dns.rcode.NOERROR
        assert stale.answer[0][0].address == "192.0.2.1"
        assert stale.answer[0].ttl == 30
        assert ede_codes(stale) == [EDECode.STALE_ANSWER]
        asked = len(dot_upstream.state.queries)
        # the failure is held (RFC 9520): the next asking gets the stale answer at once
        start = time.monotonic()
        again = ask(daemon.port, "stale.example.", use_edns=0)
        assert time.monotonic() - start < 0.3
        assert again.answer[0].ttl == 30 and ede_codes(again) == [EDECode.STALE_ANSWER]
        assert len(dot_upstream.state.queries) == asked
        assert daemon.resolver.counters["stale"] == 2


def test_stale_serving_can_be_switched_off(dot_upstream: LocalUpstream, ca_file: str) -> None:
    config = config_for(
        dot_upstream, ca_file, cache_max_ttl=1, timeout=0.6, attempt_timeout=0.5, serve_stale=False
    )
    with running_daemon(config) as daemon:
        ask(daemon.port, "nostale.example.")
        time.sleep(1.2)
        dot_upstream.state.misbehaviour = Misbehaviour.CLOSE
        assert ask(daemon.port, "nostale.example.").rcode() == dns.rcode.SERVFAIL


def test_failed_question_is_held_then_retried(dot_upstream: LocalUpstream, ca_file: str) -> None:
    dot_upstream.state.misbehaviour = Misbehaviour.CLOSE
    config = config_for(dot_upstream, ca_file, timeout=1.0, attempt_timeout=1.0)
    with running_daemon(config) as daemon:
        first = ask(daemon.port, "broken.example.", use_edns=0)
        assert first.rcode() == dns.rcode.SERVFAIL
        asked = len(dot_upstream.state.queries)
        assert asked >= 1
        held = ask(daemon.port, "broken.example.", use_edns=0)
        assert held.rcode() == dns.rcode.SERVFAIL
        assert ede_codes(held) == [EDECode.CACHED_ERROR]
        assert len(dot_upstream.state.queries) == asked  # no retry storm
        dot_upstream.state.misbehaviour = Misbehaviour.NONE
        time.sleep(1.05)  # the first hold is 1 s
        assert ask(daemon.port, "broken.example.").rcode() == dns.rcode.NOERROR


def test_popular_answer_is_prefetched_before_it_expires(
    dot_upstream: LocalUpstream, ca_file: str
) -> None:
    with running_daemon(config_for(dot_upstream, ca_file, cache_max_ttl=4)) as daemon:
        ask(daemon.port, "popular.example.")
        stored = time.monotonic()
        time.sleep(1.0)
        ask(daemon.port, "popular.example.")
        time.sleep(max(0.0, stored + 3.7 - time.monotonic()))  # in the last tenth of 4 s
        assert ask(daemon.port, "popular.example.").answer[0].ttl == 1
        time.sleep(0.2)
        assert len(dot_upstream.state.queries) == 2  # refreshed in the background
        time.sleep(max(0.0, stored + 4.3 - time.monotonic()))  # the first answer has expired
        reply = ask(daemon.port, "popular.example.")
        assert reply.answer[0].ttl >= 3
        assert len(dot_upstream.state.queries) == 2  # the next client did not wait
        assert daemon.resolver.counters["prefetches"] == 1


def test_cache_survives_a_restart(
    dot_upstream: LocalUpstream, ca_file: str, tmp_path: Path
) -> None:
    path = tmp_path / "cache.bin"
    config = config_for(dot_upstream, ca_file, cache_file=str(path))
    with running_daemon(config) as daemon:
        ask(daemon.port, "kept.example.")
    assert path.stat().st_size > 0
    time.sleep(1.1)
    with running_daemon(config) as daemon:
        reply = ask(daemon.port, "kept.example.")
        assert reply.answer[0][0].address == "192.0.2.1"
        assert reply.answer[0].ttl <= 299
    assert len(dot_upstream.state.queries) == 1


def test_flush_makes_the_next_query_go_upstream(dot_upstream: LocalUpstream, ca_file: str) -> None:
    with running_daemon(config_for(dot_upstream, ca_file)) as daemon:
        ask(daemon.port, "a.example.")
        ask(daemon.port, "b.example.")
        assert daemon.call(daemon.resolver.cache.flush, "A.example.") == 1
        ask(daemon.port, "a.example.")
        ask(daemon.port, "b.example.")
        assert len(dot_upstream.state.queries) == 3
        assert daemon.call(daemon.resolver.cache.flush, None) == 2
        ask(daemon.port, "b.example.")
        assert len(dot_upstream.state.queries) == 4


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
        tcp.bind(("127.0.0.1", 0))
        return int(tcp.getsockname()[1])


def _start_process(upstream: LocalUpstream, ca_file: str, state: Path) -> tuple[Popen[str], int]:
    """The daemon as systemd runs it with StateDirectory=: $STATE_DIRECTORY set."""
    port = _free_port()
    command = [
        sys.executable, "-m", "stubby_py", "--upstream", dot_uri(upstream), "--dnssec", "off",
        "--ca-file", ca_file, "--listen", f"127.0.0.1:{port}",
    ]  # fmt: skip
    env = dict(os.environ, STATE_DIRECTORY=str(state))
    process = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return process, port
        except OSError:
            assert process.poll() is None, process.communicate()[1]
            time.sleep(0.05)
    process.kill()
    raise AssertionError(process.communicate()[1])


def _stop_process(process: Popen[str]) -> str:
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=10)
    assert process.returncode == 0, stderr
    return stderr


def test_state_directory_persistence_and_sigusr2_flush(
    dot_upstream: LocalUpstream, ca_file: str, tmp_path: Path
) -> None:
    process, port = _start_process(dot_upstream, ca_file, tmp_path)
    try:
        ask(port, "persist.example.")
        ask(port, "persist.example.")
        assert len(dot_upstream.state.queries) == 1
        process.send_signal(signal.SIGUSR2)
        time.sleep(0.2)
        ask(port, "persist.example.")
        assert len(dot_upstream.state.queries) == 2  # flushed: asked upstream again
    finally:
        stderr = _stop_process(process)
    assert "cache flushed, 1 answers dropped" in stderr
    assert (tmp_path / "cache.bin").stat().st_size > 0
    dot_upstream.state.misbehaviour = Misbehaviour.STALL  # only the reloaded cache can answer now
    process, port = _start_process(dot_upstream, ca_file, tmp_path)
    try:
        reply = ask(port, "persist.example.")
        assert reply.answer[0][0].address == "192.0.2.1"
        assert len(dot_upstream.state.queries) == 2
    finally:
        stderr = _stop_process(process)
    assert "1 answers loaded" in stderr
