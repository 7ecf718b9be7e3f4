"""Helpers for tests of the daemon as a service: configuration files, polling, raw queries."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
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
