"""Real peers for interop tests: a local Unbound (plain, DoT, DoH) and the stubby-py daemon.

Plain functions and context managers, no pytest fixtures, so any test module can build its own.
Everything is on loopback and bounded in time: a peer that does not come up in time is stopped
and the error carries its log. Unbound answers only from local data (no recursion, no internet).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Self

import dns.message
import dns.query
import dns.rdatatype
import pytest
import trustme

LOOPBACK = "127.0.0.1"
ROOT = Path(__file__).resolve().parent.parent
UNBOUND_PATHS = ("/usr/sbin/unbound", "/sbin/unbound")

#: Zone data every test Unbound serves unless told otherwise (Unbound ``local-data`` syntax).
TEST_SOA = "test. 3600 IN SOA ns.test. hostmaster.test. 1 3600 600 86400 300"
DEFAULT_LOCAL_DATA: tuple[str, ...] = (
    TEST_SOA,
    "www.test. 300 IN A 192.0.2.1",
    "www.test. 300 IN AAAA 2001:db8::1",
    'www.test. 300 IN TXT "hello from unbound"',
    "dns.test. 300 IN A 127.0.0.1",
    # A redirect zone: every name under bulk.test. gets this A record, owner = the query name.
    "bulk.test. 300 IN A 192.0.2.99",
)
#: (zone, type) pairs; "." refuse keeps Unbound from ever recursing to the internet.
DEFAULT_LOCAL_ZONES: tuple[tuple[str, str], ...] = (
    (".", "refuse"),
    ("test.", "static"),
    ("bulk.test.", "redirect"),
)


class PeerError(RuntimeError):
    """A peer process failed to start, answer or stop in time."""


def require_tool(name: str, *extra_paths: str) -> str:
    """Return the path of an external tool; skip the test if it is missing (fail under CI=true)."""
    found = shutil.which(name)
    if found is None:
        found = next((p for p in extra_paths if os.access(p, os.X_OK)), None)
    if found is not None:
        return found
    message = f"{name} not installed"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{message} (CI=true: interop tools must be present)", pytrace=False)
    pytest.skip(message)


def free_ports(count: int) -> list[int]:
    """Return ``count`` distinct ports free for both TCP and UDP on 127.0.0.1."""
    held: list[socket.socket] = []
    ports: list[int] = []
    try:
        for _ in range(count * 50):
            if len(ports) == count:
                return ports
            tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            held.append(tcp)
            tcp.bind((LOOPBACK, 0))
            port = int(tcp.getsockname()[1])
            udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            held.append(udp)
            try:
                udp.bind((LOOPBACK, port))
            except OSError:
                continue
            ports.append(port)
    finally:
        for sock in held:
            sock.close()
    if len(ports) == count:
        return ports
    raise PeerError(f"could not find {count} free TCP+UDP ports")


def free_port() -> int:
    """Return one port free for both TCP and UDP on 127.0.0.1."""
    return free_ports(1)[0]


# --- certificates -------------------------------------------------------------------------------


@dataclass(frozen=True)
class TLSFiles:
    """PEM files of a trustme CA and one server certificate it issued."""

    ca: trustme.CA
    ca_pem: Path
    cert_pem: Path  # server certificate followed by its chain
    key_pem: Path
    names: tuple[str, ...]


def write_tls_files(
    directory: Path,
    names: Sequence[str] = ("dns.test", LOOPBACK),
    *,
    ca: trustme.CA | None = None,
    prefix: str = "",
) -> TLSFiles:
    """Write a CA and a server certificate for ``names`` (DNS names or IPs) into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = ca if ca is not None else trustme.CA()
    server = ca.issue_cert(*names)
    ca_pem = directory / f"{prefix}ca.pem"
    cert_pem = directory / f"{prefix}server.pem"
    key_pem = directory / f"{prefix}server.key"
    ca.cert_pem.write_to_path(str(ca_pem))
    cert_pem.write_bytes(b"".join(blob.bytes() for blob in server.cert_chain_pems))
    server.private_key_pem.write_to_path(str(key_pem))
    key_pem.chmod(0o600)
    return TLSFiles(ca=ca, ca_pem=ca_pem, cert_pem=cert_pem, key_pem=key_pem, names=tuple(names))


# --- DNS exchanges on raw sockets ---------------------------------------------------------------


def _refuse_self_connection(sock: socket.socket) -> None:
    """A socket the kernel bound to the very port it connects to talks to itself, not a server.

    Polling a loopback port before its server binds it hits this now and then (the client's
    ephemeral port is picked at random, and may be the free target port).
    """
    if sock.getsockname() == sock.getpeername():
        raise ConnectionRefusedError(errno.ECONNREFUSED, "socket connected to itself")


def udp_exchange(wire: bytes, port: int, *, host: str = LOOPBACK, timeout: float = 2.0) -> bytes:
    """Send one datagram and return the first reply datagram (raises TimeoutError)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.connect((host, port))
        _refuse_self_connection(sock)
        sock.send(wire)
        return sock.recv(65535)


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise EOFError(f"connection closed after {len(data)} of {size} octets")
        data += chunk
    return bytes(data)


def tcp_exchange(wire: bytes, port: int, *, host: str = LOOPBACK, timeout: float = 2.0) -> bytes:
    """Send one length-prefixed message over a new TCP connection and return the reply."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        _refuse_self_connection(sock)
        sock.sendall(struct.pack("!H", len(wire)) + wire)
        (length,) = struct.unpack("!H", _recv_exactly(sock, 2))
        return _recv_exactly(sock, length)


async def tcp_pipeline(
    port: int,
    queries: Sequence[bytes],
    *,
    host: str = LOOPBACK,
    timeout: float = 10.0,
    chunk: int | None = None,
    pause: float = 0.001,
) -> list[bytes]:
    """Pipeline queries on one TCP connection (RFC 7766 §6.2.1) while reading replies.

    Queries go out all in one write, or ``chunk`` at a time with ``pause`` s between writes, so
    that new queries meet replies to earlier ones. Returns the replies in arrival order (any order
    is allowed, RFC 7766 §6.2.1.1): all of them, or those that came within ``timeout`` s, so a
    caller can name the ones that never did.
    """
    frames = [struct.pack("!H", len(q)) + q for q in queries]
    step = chunk or len(frames) or 1
    replies: list[bytes] = []

    async def write(writer: asyncio.StreamWriter) -> None:
        for start in range(0, len(frames), step):
            writer.write(b"".join(frames[start : start + step]))
            await writer.drain()
            if start + step < len(frames):
                await asyncio.sleep(pause)

    async def read(reader: asyncio.StreamReader) -> None:
        for _ in frames:
            (length,) = struct.unpack("!H", await reader.readexactly(2))
            replies.append(await reader.readexactly(length))

    async def run() -> None:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            await asyncio.gather(write(writer), read(reader))
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    with contextlib.suppress(TimeoutError, asyncio.IncompleteReadError):
        await asyncio.wait_for(run(), timeout)
    return replies


def answers_on_udp(port: int, qname: str, *, host: str = LOOPBACK, timeout: float = 0.25) -> bool:
    """True if a DNS response (QR set, our ID) to a query comes back from host:port over UDP.

    Any rcode counts, and the rest of the reply is not checked: readiness is not correctness,
    and the tests that follow say precisely what is wrong with a reply.
    """
    wire = dns.message.make_query(qname, dns.rdatatype.A).to_wire()
    try:
        reply = udp_exchange(wire, port, host=host, timeout=timeout)
    except OSError:
        return False
    return len(reply) >= 12 and reply[:2] == wire[:2] and bool(reply[2] & 0x80)


def _wait_until(
    ready: Callable[[], bool], failed: Callable[[], bool], timeout: float, pause: float = 0.02
) -> bool:
    """Poll ``ready`` until it is true (True), ``failed`` is true or time runs out (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if failed():
            return False
        if ready():
            return True
        time.sleep(pause)
    return False


# --- processes ----------------------------------------------------------------------------------


def _stop(process: subprocess.Popen[bytes], timeout: float) -> bool:
    """SIGTERM, wait up to ``timeout``, then SIGKILL. Return True if it had to be killed."""
    if process.poll() is not None:
        return False
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout)
        return True
    return False


def _tail(path: Path, limit: int = 8000) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"<no log: {exc}>"
    return text if len(text) <= limit else "...\n" + text[-limit:]


class _TempDir:
    """A directory given by the caller, or a temporary one removed on close."""

    def __init__(self, directory: Path | None, prefix: str) -> None:
        self._owned: tempfile.TemporaryDirectory[str] | None = None
        if directory is None:
            self._owned = tempfile.TemporaryDirectory(prefix=prefix)
            directory = Path(self._owned.name)
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory

    def close(self) -> None:
        if self._owned is not None:
            self._owned.cleanup()


def _quote(value: str) -> str:
    if "'" in value or "\n" in value:
        raise ValueError(f"unsupported character in Unbound config value: {value!r}")
    return f"'{value}'"


def large_txt_strings(count: int = 8, size: int = 100) -> list[str]:
    """Distinct TXT strings whose RRset makes a reply well over 512 octets (about 900 here)."""
    return [f"{i:02d}-" + "x" * (size - 3) for i in range(count)]


class Unbound:
    """``/usr/sbin/unbound -d`` serving only local data on plain UDP/TCP, DoT and optionally DoH.

    Ports are picked free unless given. ``with Unbound(...) as ub:`` returns once the plain port
    answers; on exit Unbound gets SIGTERM (SIGKILL after ``stop_timeout``).
    """

    def __init__(
        self,
        tls: TLSFiles,
        *,
        directory: Path | None = None,
        local_data: Sequence[str] = DEFAULT_LOCAL_DATA,
        local_zones: Sequence[tuple[str, str]] = DEFAULT_LOCAL_ZONES,
        large_txt_name: str | None = None,
        doh: bool = False,
        start_timeout: float = 10.0,
        stop_timeout: float = 5.0,
        verbosity: int = 1,
    ) -> None:
        self.tls = tls
        self.local_data = list(local_data)
        if large_txt_name is not None:
            self.local_data += [f'{large_txt_name} 300 IN TXT "{s}"' for s in large_txt_strings()]
        self.local_zones = list(local_zones)
        self.doh = doh
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.verbosity = verbosity
        self._dir = _TempDir(directory, "unbound-")
        self.directory = self._dir.path
        self.config_path = self.directory / "unbound.conf"
        self.log_path = self.directory / "unbound.log"
        self.plain_port = 0
        self.dot_port = 0
        self.doh_port: int | None = None
        self.process: subprocess.Popen[bytes] | None = None
        self._console: IO[bytes] | None = None
        self.binary = require_tool("unbound", *UNBOUND_PATHS)

    @property
    def dot_upstream(self) -> str:
        """Upstream spec for the daemon: ``tls://127.0.0.1:PORT`` (append ``#AUTHNAME``)."""
        return f"tls://{LOOPBACK}:{self.dot_port}"

    @property
    def doh_url(self) -> str:
        """DoH endpoint (RFC 8484) when started with ``doh=True``."""
        if self.doh_port is None:
            raise PeerError("this Unbound was started without DoH")
        return f"https://{LOOPBACK}:{self.doh_port}/dns-query"

    def config_text(self) -> str:
        d = self.directory
        lines = [
            "server:",
            f"  verbosity: {self.verbosity}",
            '  chroot: ""',
            '  username: ""',
            f"  directory: {_quote(str(d))}",
            f"  pidfile: {_quote(str(d / 'unbound.pid'))}",
            f"  logfile: {_quote(str(self.log_path))}",
            "  use-syslog: no",
            "  log-time-ascii: yes",
            "  num-threads: 1",
            "  so-reuseport: no",
            "  do-ip6: no",
            "  interface-automatic: no",
            f"  interface: {LOOPBACK}@{self.plain_port}",
            f"  interface: {LOOPBACK}@{self.dot_port}",
            f"  tls-port: {self.dot_port}",
            f"  tls-service-key: {_quote(str(self.tls.key_pem))}",
            f"  tls-service-pem: {_quote(str(self.tls.cert_pem))}",
            "  incoming-num-tcp: 100",
            "  access-control: 127.0.0.0/8 allow",
            '  module-config: "iterator"',
            "  qname-minimisation: no",
        ]
        if self.doh_port is not None:
            lines += [
                f"  interface: {LOOPBACK}@{self.doh_port}",
                f"  https-port: {self.doh_port}",
                "  http-endpoint: /dns-query",
                "  http-notls-downstream: no",
            ]
        lines += [f"  local-zone: {_quote(zone)} {kind}" for zone, kind in self.local_zones]
        lines += [f"  local-data: {_quote(rr)}" for rr in self.local_data]
        lines += ["remote-control:", "  control-enable: no", ""]
        return "\n".join(lines)

    def _start_once(self) -> bool:
        """Start Unbound on fresh ports; False if it lost a port race (caller retries)."""
        ports = free_ports(3 if self.doh else 2)
        self.plain_port, self.dot_port = ports[0], ports[1]
        self.doh_port = ports[2] if self.doh else None
        self.config_path.write_text(self.config_text())
        self.log_path.write_bytes(b"")
        console_path = self.directory / "unbound.console"
        self._console = console_path.open("wb")
        self.process = subprocess.Popen(
            [self.binary, "-d", "-c", str(self.config_path)],
            stdin=subprocess.DEVNULL,
            stdout=self._console,
            stderr=subprocess.STDOUT,
            cwd=self.directory,
        )
        process = self.process
        if _wait_until(
            lambda: answers_on_udp(self.plain_port, "ready.unbound.test."),
            lambda: process.poll() is not None,
            self.start_timeout,
        ):
            return True
        if process.poll() is not None:
            log = self.log_text() + _tail(console_path)
            self._close_console()
            if "already in use" in log:
                return False
            raise PeerError(f"unbound exited with {process.returncode}:\n{log}")
        self._shutdown()
        raise PeerError(f"unbound did not answer within {self.start_timeout} s:\n{self.log_text()}")

    def __enter__(self) -> Self:
        try:
            for _ in range(3):
                if self._start_once():
                    return self
        except BaseException:
            self._shutdown()
            self._dir.close()
            raise
        self._dir.close()
        raise PeerError("unbound lost the race for free ports three times")

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._shutdown()
        self._dir.close()

    def _close_console(self) -> None:
        if self._console is not None:
            self._console.close()
            self._console = None

    def _shutdown(self) -> None:
        if self.process is not None:
            _stop(self.process, self.stop_timeout)
        self._close_console()

    def log_text(self) -> str:
        return _tail(self.log_path)

    def query(
        self, qname: str, rdtype: str, *, timeout: float = 2.0, use_edns: bool = True
    ) -> dns.message.Message:
        """Unbound's own answer, asked over plain TCP: the reference the forwarder must match."""
        query = dns.message.make_query(qname, rdtype, use_edns=use_edns)
        return dns.query.tcp(query, LOOPBACK, port=self.plain_port, timeout=timeout)


def forward_args(
    listen_port: int,
    upstream: str,
    auth_name: str,
    ca_file: Path,
    *,
    verbose: bool = True,
    listen_host: str = LOOPBACK,
) -> list[str]:
    """Arguments after ``run`` for forwarding to one DoT upstream."""
    args = [
        "--listen",
        f"{listen_host}:{listen_port}",
        "--upstream",
        f"{upstream}#{auth_name}",
        "--ca-file",
        str(ca_file),
    ]
    return [*args, "-v"] if verbose else args


class Daemon:
    """``python -m stubby_py run ARGS`` as a subprocess, stderr captured to a file.

    ``with Daemon(args, port=...) as d:`` returns once the daemon answers a UDP query on
    127.0.0.1:port (any rcode, SERVFAIL included); otherwise it raises with the daemon's stderr.
    On exit it sends SIGTERM and waits ``stop_timeout`` s, then SIGKILLs; ``killed`` and
    ``returncode`` tell how it went.
    """

    def __init__(
        self,
        args: Sequence[str],
        *,
        port: int,
        host: str = LOOPBACK,
        directory: Path | None = None,
        start_timeout: float = 10.0,
        stop_timeout: float = 5.0,
        probe_name: str = "ready.probe.test.",
    ) -> None:
        if "--dnssec" not in args and "--trust-anchors" not in args:
            # upstreams in tests serve unsigned local data: DNSSEC tests turn validation on
            args = [*args, "--dnssec", "off"]
        self.args = [sys.executable, "-m", "stubby_py", "run", *args]
        self.port = port
        self.host = host
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.probe_name = probe_name
        self._dir = _TempDir(directory, "stubby-py-")
        self.stderr_path = self._dir.path / f"stubby-py-{port}.stderr"
        self.process: subprocess.Popen[bytes] | None = None
        self.killed = False
        self._stderr: IO[bytes] | None = None

    @property
    def returncode(self) -> int | None:
        return None if self.process is None else self.process.returncode

    def stderr_text(self) -> str:
        return _tail(self.stderr_path)

    def __enter__(self) -> Self:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        env["PYTHONUNBUFFERED"] = "1"
        self._stderr = self.stderr_path.open("wb")
        self.process = subprocess.Popen(
            self.args,
            stdin=subprocess.DEVNULL,
            stdout=self._stderr,
            stderr=subprocess.STDOUT,
            cwd=self._dir.path,
            env=env,
        )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            self._dir.close()
            raise
        return self

    def _wait_ready(self) -> None:
        process = self.process
        assert process is not None
        if _wait_until(
            lambda: answers_on_udp(self.port, self.probe_name, host=self.host, timeout=0.5),
            lambda: process.poll() is not None,
            self.start_timeout,
        ):
            return
        command = " ".join(self.args)
        if process.poll() is not None:
            raise PeerError(f"{command}\nexited with {process.returncode}:\n{self.stderr_text()}")
        raise PeerError(
            f"{command}\ngave no DNS response on UDP {self.host}:{self.port} within "
            f"{self.start_timeout} s; stderr:\n{self.stderr_text()}"
        )

    def stop(self) -> int | None:
        """SIGTERM (then SIGKILL); return the exit status. Safe to call twice."""
        if self.process is not None:
            self.killed = _stop(self.process, self.stop_timeout) or self.killed
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None
        return self.returncode

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
        self._dir.close()


@contextlib.contextmanager
def forwarder(
    unbound: Unbound, auth_name: str, ca_file: Path, *, directory: Path | None = None
) -> Iterator[Daemon]:
    """A daemon on a free port forwarding over DoT to ``unbound``, verifying ``auth_name``."""
    port = free_port()
    args = forward_args(port, unbound.dot_upstream, auth_name, ca_file)
    with Daemon(args, port=port, directory=directory) as daemon:
        yield daemon
