"""File descriptors are budgeted at start: the daemon's own needs always fit under RLIMIT_NOFILE,
caps that do not fit are lowered (and the log says so), and a limit too low to serve is refused."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from pathlib import Path

import dns.message
import dns.query
import dns.rcode
import pytest
from hypothesis import given
from hypothesis import strategies as st

from stubby_py.core.config import Config, parse_upstream_uri
from stubby_py.daemon.fdbudget import (
    MIN_TCP_CONNECTIONS,
    PER_UPSTREAM_FDS,
    PLAIN_UDP_SOCKETS,
    PROCESS_FDS,
    Caps,
    FdBudgetError,
    Needs,
    plan,
)
from tests.conftest import dot_uri
from tests.peers import free_port
from tests.servers import LocalUpstream
from tests.service import ask, closed_by_peer, daemon_process, wait_for, write_config

DEFAULT_CAPS = Caps(512, 64, 16)
NEEDS = Needs(listening_sockets=4, upstreams=6, control_socket=True, metrics=True)


# -- the plan, without I/O ------------------------------------------------------------------------
def test_caps_that_fit_are_kept() -> None:
    fd_plan = plan(NEEDS, DEFAULT_CAPS, 4096)
    assert fd_plan.caps == DEFAULT_CAPS and fd_plan.lowered == ()
    reserved = sum(fd_plan.reserved.values())
    assert reserved == PROCESS_FDS + 4 + 6 * PER_UPSTREAM_FDS + 9 + 1
    assert fd_plan.spare == 4096 - reserved - 512 - 16
    assert "limit 4096" in fd_plan.describe() and "512 client TCP connections" in fd_plan.describe()


def test_tcp_lowered_to_what_is_left_keeping_the_per_client_share() -> None:
    reserved = sum(NEEDS.reserved().values())
    tcp = 256 - reserved - 16
    fd_plan = plan(NEEDS, DEFAULT_CAPS, 256)
    assert fd_plan.caps == Caps(tcp, 64 * tcp // 512, 16)
    assert fd_plan.spare == 0
    assert fd_plan.lowered[0].startswith(f"tcp_max_connections lowered from 512 to {tcp}")
    assert "RLIMIT_NOFILE is 256" in fd_plan.lowered[0]
    assert fd_plan.lowered[1].startswith("tcp_max_connections_per_client lowered from 64")


def test_metrics_give_way_before_the_tcp_floor() -> None:
    reserved = sum(NEEDS.reserved().values())
    fd_plan = plan(NEEDS, DEFAULT_CAPS, reserved + MIN_TCP_CONNECTIONS + 3)
    assert fd_plan.caps == Caps(MIN_TCP_CONNECTIONS, 1, 3)
    assert fd_plan.lowered[0].startswith("metrics_max_connections lowered from 16 to 3")


def test_a_limit_below_the_daemons_own_needs_is_refused() -> None:
    reserved = sum(NEEDS.reserved().values())
    with pytest.raises(FdBudgetError, match=r"open files limit \(60\) is too low.*LimitNOFILE="):
        plan(NEEDS, DEFAULT_CAPS, 60)
    plan(NEEDS, DEFAULT_CAPS, reserved + MIN_TCP_CONNECTIONS + 1)  # the least that serves


def test_needs_count_every_upstream_group_and_plain_udp_sockets() -> None:
    config = Config.from_options(
        upstreams=(parse_upstream_uri("tls://192.0.2.1#a.example"),),
        upstream_groups=(("lan", (parse_upstream_uri("udp://192.168.1.1"),)),),
        control_socket=None, query_log="/tmp/q.log", metrics_listen=("127.0.0.1", 9153),
    )  # fmt: skip
    needs = Needs.of(config, listening_sockets=2)
    assert needs == Needs(2, 2, 1, control_socket=False, metrics=True, query_log=True,
                          network_watch=True)  # fmt: skip
    assert needs.reserved()["upstreams"] == 2 * PER_UPSTREAM_FDS + PLAIN_UDP_SOCKETS
    assert Caps.of(config) == Caps(512, 64, 16)
    smaller = config.with_options(metrics_listen=None, tcp_max_connections=10)
    assert Caps.of(smaller) == Caps(10, 10, 0)


@given(
    listening=st.integers(0, 64), upstreams=st.integers(0, 40), udp=st.integers(0, 3),
    tcp=st.integers(1, 100_000), per_client=st.integers(1, 100_000), metrics=st.integers(0, 1024),
    limit=st.integers(1, 200_000),
)  # fmt: skip
def test_a_plan_always_fits_and_never_raises_a_cap(
    listening: int, upstreams: int, udp: int, tcp: int, per_client: int, metrics: int, limit: int
) -> None:
    needs = Needs(listening, upstreams + udp, udp, control_socket=True, metrics=metrics > 0)
    wanted = Caps(tcp, min(per_client, tcp), metrics)
    try:
        fd_plan = plan(needs, wanted, limit)
    except FdBudgetError:
        assert limit - sum(needs.reserved().values()) < MIN_TCP_CONNECTIONS + (metrics > 0)
        return
    caps = fd_plan.caps
    assert sum(fd_plan.reserved.values()) + caps.total() <= limit
    floor = min(MIN_TCP_CONNECTIONS, wanted.tcp_max_connections)
    assert floor <= caps.tcp_max_connections <= wanted.tcp_max_connections
    assert (
        1
        <= caps.tcp_max_connections_per_client
        <= min(wanted.tcp_max_connections_per_client, caps.tcp_max_connections)
    )
    assert (metrics > 0) <= caps.metrics_max_connections <= metrics
    assert bool(fd_plan.lowered) == (caps != wanted)


# -- the daemon ------------------------------------------------------------------------------------
OPEN_FILES = 160
SOURCES = [f"127.0.0.{i}" for i in range(10, 20)]
PER_SOURCE = 20


def test_a_low_open_files_limit_lowers_the_tcp_caps_and_dns_still_answers(
    dot_upstream: LocalUpstream, ca_file: str, tmp_path: Path
) -> None:
    """Before: the TCP caps (512, 64 per client) were far above the limit (160); the held
    connections took every descriptor and the next upstream connection failed: SERVFAIL."""
    port = free_port()
    config = write_config(
        tmp_path / "config.yaml", port, [dot_uri(dot_upstream)], ca_file, control_socket=False
    )
    log = tmp_path / "daemon.log"
    held: list[socket.socket] = []
    with daemon_process(config, log, open_files=OPEN_FILES):
        text = log.read_text()
        lowered = re.search(r"tcp_max_connections lowered from 512 to (\d+)", text)
        assert lowered, text
        assert re.search(r"INFO .*file descriptors: limit 160; \d+ for the daemon", text), text
        cap = int(lowered.group(1))
        try:
            for source in SOURCES:  # 200 connections, 10 sources: past the total cap
                for _ in range(PER_SOURCE):
                    held.append(
                        socket.create_connection(("127.0.0.1", port), 5, source_address=(source, 0))
                    )
            assert wait_for(lambda: sum(not closed_by_peer(s) for s in held) <= cap)
            open_now = [s for s in held if not closed_by_peer(s)]
            assert cap // 2 < len(open_now) <= cap
            # the upstream connection is opened now, with the TCP slots full: it still fits
            reply = ask(port, "while-held.example.")
            assert reply.rcode() == dns.rcode.NOERROR and reply.answer, log.read_text()
            # a slot freed is a slot a TCP client gets
            open_now[0].close()
            query = dns.message.make_query("tcp.example.", "A")

            def tcp_answers() -> bool:
                try:
                    return dns.query.tcp(query, "127.0.0.1", port=port, timeout=2).answer != []
                except (OSError, EOFError):
                    return False

            assert wait_for(tcp_answers, 5)
        finally:
            for sock in held:
                sock.close()


def test_a_limit_too_low_to_serve_is_refused_at_start(tmp_path: Path, ca_file: str) -> None:
    port = free_port()
    config = write_config(
        tmp_path / "config.yaml", port, ["tls://127.0.0.1:853#dns.test"], ca_file,
        control_socket=False,
    )  # fmt: skip

    def limit() -> None:
        import resource

        resource.setrlimit(resource.RLIMIT_NOFILE, (40, 40))

    result = subprocess.run(
        [sys.executable, "-m", "stubby_py", "run", "-c", config],
        capture_output=True, text=True, timeout=30, preexec_fn=limit, check=False,
    )  # fmt: skip
    assert result.returncode != 0
    assert "the open files limit (40) is too low" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_the_service_units_limits_fit_the_default_caps() -> None:
    """LimitNOFILE= holds the defaults with everything on (metrics, query log) and the socket
    unit's listening sockets, lowering nothing; the memory and task limits are set."""
    root = Path(__file__).resolve().parent.parent
    service = (root / "systemd/stubby-py.service").read_text()
    sockets = (root / "systemd/stubby-py.socket").read_text()
    settings = dict(re.findall(r"^(LimitNOFILE|MemoryMax|TasksMax)=(\S+)$", service, re.M))
    assert settings.keys() == {"LimitNOFILE", "MemoryMax", "TasksMax"}, settings
    listening = len(re.findall(r"^Listen(Datagram|Stream)=", sockets, re.M))
    config = Config.from_options(metrics_listen=("127.0.0.1", 9153), query_log="/var/log/q.log")
    fd_plan = plan(Needs.of(config, listening), Caps.of(config), int(settings["LimitNOFILE"]))
    assert fd_plan.lowered == () and fd_plan.spare > 0
