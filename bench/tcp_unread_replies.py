#!/usr/bin/env python3
"""A TCP client that never reads its replies (issue #14, item 1): the daemon's memory and the
connection's fate.

Starts stubby-py as a subprocess (tcp_idle_timeout 2 s) forwarding to a local plain-TCP upstream
(tests/servers/stream.py) that answers ``big.example TXT`` with ~11.6 KB; caches that answer;
then one client sends 10,000 pipelined queries for it on one connection and reads nothing. Prints
the daemon's RSS before and one second after, whether another client is still answered, and when
the daemon closed the connection (polled with ``ss``).

    PYTHONPATH=$PWD python -m bench.tcp_unread_replies
"""

from __future__ import annotations

import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import dns.message
import dns.query

from tests.servers import local_upstream
from tests.service import write_config

BIG = "big.example."
QUERIES = 10_000
IDLE_TIMEOUT = 2


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def established(port: int) -> bool:
    command = ["ss", "-tnH", "state", "established", f"( sport = :{port} )"]
    return bool(subprocess.run(command, capture_output=True, text=True).stdout.strip())


def main() -> None:
    with local_upstream(None) as upstream, tempfile.TemporaryDirectory() as tmp:
        upstream.state.records[BIG] = [("TXT", f'"{i:03} ' + "x" * 246 + '"') for i in range(44)]
        port = free_port()
        path = Path(tmp) / "config.yaml"
        uri = f"tcp://127.0.0.1:{upstream.port}"
        write_config(path, port, [uri], "", tcp_idle_timeout=IDLE_TIMEOUT)
        path.write_text(path.read_text().replace("ca_file: ''\n", ""))
        command = [sys.executable, "-m", "stubby_py", "run", "--config", str(path)]
        daemon = subprocess.Popen(command, stderr=subprocess.DEVNULL)
        try:
            for _ in range(200):
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                    break
                except OSError:
                    time.sleep(0.05)
            query = dns.message.make_query(BIG, "TXT")
            size = len(dns.query.tcp(query, "127.0.0.1", port=port, timeout=3).to_wire())
            before = rss_mb(daemon.pid)
            wire = query.to_wire()
            data = (struct.pack("!H", len(wire)) + wire) * QUERIES
            with socket.create_connection(("127.0.0.1", port)) as hog:
                hog.setblocking(False)
                sent, started = 0, time.monotonic()
                while sent < len(data) and time.monotonic() - started < 2:
                    try:
                        sent += hog.send(data[sent:])
                    except BlockingIOError:
                        time.sleep(0.01)
                time.sleep(1)
                after = rss_mb(daemon.pid)
                other = dns.message.make_query("other.example.", "A")
                answered = bool(dns.query.udp(other, "127.0.0.1", port=port, timeout=3).answer)
                closed_after = None
                while time.monotonic() - started < 15:
                    if not established(port):
                        closed_after = round(time.monotonic() - started, 1)
                        break
                    time.sleep(0.1)
            print(
                f"answer {size} B; {QUERIES} pipelined queries ({sent} B taken by the kernel);"
                f" daemon RSS {before:.0f} MB before, {after:.0f} MB one second after;"
                f" another client answered: {answered}; the connection closed after"
                f" {closed_after} s (tcp_idle_timeout {IDLE_TIMEOUT} s, None: not within 15 s)"
            )
        finally:
            daemon.terminate()
            daemon.wait(10)


if __name__ == "__main__":
    main()
