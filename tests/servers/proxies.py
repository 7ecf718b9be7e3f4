"""Real proxies for tests: microsocks (SOCKS5), Dante (SOCKS5 with UDP ASSOCIATE) and tinyproxy
(HTTP CONNECT) from Debian, each on a free loopback port, and a fake "proxy" that answers
garbage.

Each real proxy binds its outgoing connections to an address of its own (microsocks -b
127.0.0.2, tinyproxy Bind 127.0.0.3, Dante external 127.0.0.4): the test servers record each
connection's peer address, so a connection that came through the proxy is told apart from one
that went around it (the daemon connects from 127.0.0.1).
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from tests.peers import PeerError, free_ports, require_tool

SOCKS_OUT = "127.0.0.2"
HTTP_OUT = "127.0.0.3"
DANTE_OUT = "127.0.0.4"


def _wait_listening(port: int, process: subprocess.Popen[bytes], name: str) -> None:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise PeerError(f"{name} exited with {process.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.02)
    raise PeerError(f"{name} did not listen on 127.0.0.1:{port}")


@contextlib.contextmanager
def _running(command: list[str], port: int, name: str, log: Path) -> Iterator[int]:
    with log.open("wb") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
    try:
        _wait_listening(port, process, name)
        yield port
    finally:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


@contextlib.contextmanager
def microsocks(
    directory: Path, user: str | None = None, password: str | None = None
) -> Iterator[int]:
    """A SOCKS5 proxy on 127.0.0.1:PORT (yielded), with username/password auth when given."""
    binary = require_tool("microsocks")
    port = free_ports(1)[0]
    command = [binary, "-i", "127.0.0.1", "-p", str(port), "-b", SOCKS_OUT]
    if user is not None:
        command += ["-u", user, "-P", password or ""]
    with _running(command, port, "microsocks", directory / f"microsocks-{port}.log") as p:
        yield p


@contextlib.contextmanager
def tinyproxy(
    directory: Path, connect_ports: list[int], basic_auth: tuple[str, str] | None = None
) -> Iterator[int]:
    """An HTTP CONNECT proxy on 127.0.0.1:PORT (yielded) allowing CONNECT to `connect_ports`."""
    binary = require_tool("tinyproxy")
    port = free_ports(1)[0]
    lines = [
        f"Port {port}", "Listen 127.0.0.1", f"Bind {HTTP_OUT}", "Timeout 30",
        "Allow 127.0.0.1", "MaxClients 50", "LogLevel Info",
        *(f"ConnectPort {p}" for p in connect_ports),
    ]  # fmt: skip
    if basic_auth is not None:
        lines.append(f"BasicAuth {basic_auth[0]} {basic_auth[1]}")
    conf = directory / f"tinyproxy-{port}.conf"
    conf.write_text("\n".join(lines) + "\n")
    log = directory / f"tinyproxy-{port}.log"
    with _running([binary, "-d", "-c", str(conf)], port, "tinyproxy", log) as p:
        yield p


@contextlib.contextmanager
def dante(directory: Path) -> Iterator[int]:
    """Dante's SOCKS5 server on 127.0.0.1:PORT (yielded), CONNECT and UDP ASSOCIATE, no auth
    (Dante's username method checks system accounts; microsocks covers credentials)."""
    binary = require_tool("danted", "/usr/sbin/danted")
    port = free_ports(1)[0]
    conf = directory / f"danted-{port}.conf"
    conf.write_text(
        f"""logoutput: {directory}/danted-{port}.log
internal: 127.0.0.1 port = {port}
external: {DANTE_OUT}
clientmethod: none
socksmethod: none
user.privileged: root
user.unprivileged: root
client pass {{
  from: 127.0.0.0/8 to: 0.0.0.0/0
}}
socks pass {{
  from: 127.0.0.0/8 to: 0.0.0.0/0
  command: connect udpassociate udpreply
}}
"""
    )
    with _running([binary, "-f", str(conf), "-N", "1"], port, "danted", directory / "d.out") as p:
        yield p


@contextlib.contextmanager
def garbage_proxy(reply: bytes | None) -> Iterator[int]:
    """A TCP listener that answers whatever it is sent with `reply` and closes: not a proxy.
    `reply` None: it never answers and holds the connection until stopped."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.1)
    port = listener.getsockname()[1]
    stop = threading.Event()
    held: list[socket.socket] = []

    def serve() -> None:
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if reply is None:
                held.append(connection)
                continue
            with connection:
                connection.settimeout(1)
                with contextlib.suppress(OSError):
                    connection.recv(512)
                    connection.sendall(reply)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield port
    finally:
        stop.set()
        thread.join(5)
        listener.close()
        for connection in held:
            connection.close()
