"""Helpers for tests of the daemon as a service: configuration files, polling, raw queries."""

from __future__ import annotations

import contextlib
import resource
import select
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dns.message
import dns.query
import yaml


def write_config(path: Path, port: int, upstreams: list[str], ca_file: str, **extra: Any) -> str:
    """A stubby-py configuration file for a daemon on 127.0.0.1:port (no privilege drop, no
    saved cache, the control socket next to the file unless given)."""
    options: dict[str, Any] = {
        "listen": [f"127.0.0.1:{port}"],
        "upstreams": upstreams,
        "ca_file": ca_file,
        "user": None,
        "cache_file": False,
        "control_socket": str(path.parent / "control.sock"),
        "dnssec": "off",  # the upstreams in tests serve unsigned local data
        # never this machine's own resolver for the captive-portal check (README: On the road)
        "network_resolver": "off",
        # no background probes: tests count the queries upstreams get (test_upstream_figures
        # turns them on)
        "probe_interval": 0,
    }
    options.update(extra)
    path.write_text(yaml.safe_dump(options, sort_keys=False))
    return str(path)


def wait_for(condition: Callable[[], bool], timeout: float = 5.0, pause: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(pause)
    return condition()


def ask(
    port: int, name: str, rdtype: str = "A", *, source: str = "", timeout: float = 3.0
) -> dns.message.Message:
    query = dns.message.make_query(name, rdtype)
    return dns.query.udp(query, "127.0.0.1", port=port, timeout=timeout, source=source or None)


def udp_burst(port: int, names: list[str], source: str, wait: float) -> int:
    """Send every query at once from `source`, then count the replies that come within `wait`
    (returning as soon as every query is answered)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((source, 0))
        for name in names:
            sock.sendto(dns.message.make_query(name, "A").to_wire(), ("127.0.0.1", port))
        replies = 0
        deadline = time.monotonic() + wait
        while replies < len(names) and (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            try:
                sock.recv(4096)
            except TimeoutError:
                break
            replies += 1
    return replies


@contextlib.contextmanager
def daemon_process(
    config_path: str, log_path: Path, *, open_files: int | None = None, ready: str = "listening on"
) -> Iterator[subprocess.Popen[bytes]]:
    """`stubby-py run -c config_path` in a process of its own, stderr to `log_path`, with
    RLIMIT_NOFILE set to `open_files` (soft and hard: it cannot raise it); yields once the log
    says `ready`, stops it (SIGTERM, then SIGKILL) at the end."""

    def limit_open_files() -> None:
        if open_files is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (open_files, open_files))

    command = [sys.executable, "-m", "stubby_py", "run", "-c", config_path]
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, stderr=log, preexec_fn=limit_open_files)
    try:
        started = wait_for(
            lambda: process.poll() is not None or ready in log_path.read_text(), 15
        )
        assert started and process.poll() is None, log_path.read_text()
        yield process
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def closed_by_peer(sock: socket.socket) -> bool:
    """True if the other end closed `sock` (FIN or RST), without waiting and reading nothing."""
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    if not poller.poll(0):
        return False
    try:
        return sock.recv(1, socket.MSG_PEEK) == b""
    except ConnectionError:
        return True
