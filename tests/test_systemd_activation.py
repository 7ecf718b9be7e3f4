"""Started exactly as systemd starts it: inherited sockets (LISTEN_FDS), sd_notify, watchdog."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import dns.message
import dns.query
import dns.rcode

from tests.conftest import dot_uri
from tests.servers import LocalUpstream


def _bound_pair() -> tuple[socket.socket, socket.socket, int]:
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    tcp.bind(("127.0.0.1", 0))
    tcp.listen()
    port = tcp.getsockname()[1]
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", port))
    return udp, tcp, port


def _read_notifications(sock: socket.socket, wanted: str, seconds: float) -> list[str]:
    seen: list[str] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end and not any(wanted in m for m in seen):
        sock.settimeout(max(0.01, end - time.monotonic()))
        try:
            seen.append(sock.recv(4096).decode())
        except TimeoutError:
            break
    return seen


def test_inherited_sockets_notify_and_watchdog(
    dot_upstream: LocalUpstream, ca_file: str, tmp_path: Path
) -> None:
    udp, tcp, port = _bound_pair()
    notify_path = str(tmp_path / "notify.sock")
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(notify_path)

    def place_fds() -> None:  # runs in the child: the sockets become fds 3 and 4
        os.dup2(udp.fileno(), 3)
        os.dup2(tcp.fileno(), 4)

    env = dict(os.environ, NOTIFY_SOCKET=notify_path, LISTEN_FDS="2", WATCHDOG_USEC="400000")
    env["LISTEN_FDNAMES"] = "dns-udp:dns-tcp"
    command = (
        f'LISTEN_PID=$$ exec "{sys.executable}" -m stubby_py --upstream {dot_uri(dot_upstream)} '
        f'--ca-file "{ca_file}" --dnssec off --listen 127.0.0.1:1'  # ignored: sockets inherited
    )
    process = subprocess.Popen(
        ["/bin/sh", "-c", command],
        env=env,
        preexec_fn=place_fds,
        pass_fds=(3, 4, udp.fileno(), tcp.fileno()),  # preexec runs before fds are closed
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        messages = _read_notifications(notify, "READY=1", 15)
        assert any("READY=1" in m for m in messages), (messages, process.poll())
        query = dns.message.make_query("activated.example.", "A")
        assert dns.query.udp(query, "127.0.0.1", port=port, timeout=3).rcode() == dns.rcode.NOERROR
        assert dns.query.tcp(query, "127.0.0.1", port=port, timeout=3).rcode() == dns.rcode.NOERROR
        assert any("WATCHDOG=1" in m for m in _read_notifications(notify, "WATCHDOG=1", 2))
        process.send_signal(signal.SIGTERM)
        assert any("STOPPING=1" in m for m in _read_notifications(notify, "STOPPING=1", 5))
        assert process.wait(10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        assert process.stderr is not None
        process.stderr.close()
        for sock in (udp, tcp, notify):
            sock.close()
