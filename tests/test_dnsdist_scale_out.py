"""Scaling out: Debian's dnsdist in front of two stubby-py daemons (README "When one box is not
enough: dnsdist in front").

The dnsdist configuration is the README's, taken from it and given loopback ports, a test
certificate and a console key: what the README shows is what runs here. Behind it, two daemons
forward to one local DoT upstream. dnsdist must answer over UDP, TCP, DoT and DoH, spread the
queries over both daemons, mark a daemon that got SIGTERM down and send everything to the other,
and take it back when it is started again. Loopback only; every wait is bounded.
"""

from __future__ import annotations

import base64
import json
import os
import re
import socket
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Self

import dns.exception
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest
import trustme

from tests.conftest import dot_uri, server_context
from tests.peers import (
    LOOPBACK,
    ROOT,
    Daemon,
    PeerError,
    free_ports,
    require_tool,
    write_tls_files,
)
from tests.servers.stream import LocalUpstream, local_upstream
from tests.service import write_config

pytestmark = pytest.mark.interop

README_HEADING = "#### When one box is not enough: dnsdist in front"
#: the README's checks: an interval of 1 s, 2 failures to go down, 2 successes to come back
MARKED_DOWN_WITHIN = 8.0
MARKED_UP_WITHIN = 10.0
UPSTREAM_ADDRESS = "192.0.2.1"  # what the local upstream answers for any name


def readme_recipe() -> str:
    """The ```lua block of the README's dnsdist recipe."""
    text = (ROOT / "README.md").read_text()
    start = text.index(README_HEADING)
    match = re.compile(r"^```lua\n(.*?)^```$", re.MULTILINE | re.DOTALL).search(text, start)
    assert match is not None, "no ```lua block after the dnsdist heading in README.md"
    return match.group(1)


@dataclass(frozen=True)
class DnsdistPorts:
    dns: int
    dot: int
    doh: int
    console: int


def render_recipe(
    recipe: str, ports: DnsdistPorts, backends: list[int], cert: Path, key: Path, console_key: str
) -> str:
    """The README's configuration with this test's addresses, files and key.

    Every value replaced must be in the recipe exactly as often as expected, so a README edit
    that this test would no longer run fails here rather than being silently left out.
    """
    literal = {
        '"192.168.1.2:53"': (f'"{LOOPBACK}:{ports.dns}"', 1),
        '"192.168.1.2:853"': (f'"{LOOPBACK}:{ports.dot}"', 1),
        '"192.168.1.2:443"': (f'"{LOOPBACK}:{ports.doh}"', 1),
        '"127.0.0.1:5301"': (f'"{LOOPBACK}:{backends[0]}"', 1),
        '"127.0.0.1:5302"': (f'"{LOOPBACK}:{backends[1]}"', 1),
        '"127.0.0.1:5199"': (f'"{LOOPBACK}:{ports.console}"', 1),
        '"/etc/dnsdist/tls/fullchain.pem"': (f'"{cert}"', 2),
        '"/etc/dnsdist/tls/privkey.pem"': (f'"{key}"', 2),
    }
    for old, (new, count) in literal.items():
        assert recipe.count(old) == count, f"README recipe: {old} expected {count} time(s)"
        recipe = recipe.replace(old, new)
    recipe, keys = re.subn(r'setKey\("[^"]*"\)', f'setKey("{console_key}")', recipe)
    assert keys == 1, "README recipe: one setKey(...) expected"
    return recipe


class Dnsdist:
    """``dnsdist --supervised -C FILE`` in the foreground, its console asked with ``-c -e``."""

    def __init__(self, binary: str, config: str, directory: Path, ports: DnsdistPorts) -> None:
        self.binary = binary
        self.ports = ports
        self.config_path = directory / "dnsdist.conf"
        self.config_path.write_text(config)
        self.log_path = directory / "dnsdist.log"
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def __enter__(self) -> Self:
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [self.binary, "--supervised", "--disable-syslog", "-C", str(self.config_path)],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        try:
            if not wait_until(lambda: self.backends_up() == [True, True], 15.0, self.exited):
                raise PeerError(f"dnsdist: backends not both up within 15 s\n{self.log_text()}")
        except BaseException:
            self._shutdown()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._shutdown()

    def _shutdown(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        if self._log is not None:
            self._log.close()
            self._log = None

    def exited(self) -> bool:
        return self.process is None or self.process.poll() is not None

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]

    def console(self, lua: str) -> str:
        """What ``dnsdist -c -e LUA`` prints (the console of the instance started here)."""
        result = subprocess.run(
            [self.binary, "-C", str(self.config_path), "-c", "-e", lua],
            capture_output=True, text=True, timeout=10, check=False, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        return result.stdout.strip()

    def state(self) -> str:
        """dnsdist's view, for failure messages: its backends and its drop counters."""
        servers = self.console("showServers()")
        drops = self.console(
            "local s = getStatisticsCounters() return 'rule-drop ' .. s['rule-drop']"
            " .. ', downstream-timeouts ' .. s['downstream-timeouts']"
            " .. ', no-policy ' .. s['no-policy'] .. ', servfail ' .. s['servfail-responses']"
        )
        return f"{servers}\n{drops}"

    def backends_up(self) -> list[bool]:
        """The health-check state of each backend, in configuration order ([] if unreachable)."""
        text = self.console(
            "local up = {} for _, s in ipairs(getServers()) do"
            " up[#up + 1] = tostring(s:isUp()) end return table.concat(up, ' ')"
        )
        words = text.split()
        if not words or any(w not in ("true", "false") for w in words):
            return []
        return [w == "true" for w in words]


def wait_until(
    ready: Callable[[], bool], timeout: float, failed: Callable[[], bool] = lambda: False
) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if failed():
            return False
        if ready():
            return True
        time.sleep(0.1)
    return False


def unique_name() -> str:
    """A name no cache has seen (dnsdist's packet cache would otherwise answer it)."""
    return f"q-{uuid.uuid4().hex[:16]}.scale.test."


def answered(reply: dns.message.Message) -> bool:
    return reply.rcode() == dns.rcode.NOERROR and any(
        rr.rdtype == dns.rdatatype.A and rr[0].address == UPSTREAM_ADDRESS for rr in reply.answer
    )


def udp_query(port: int, *, timeout: float = 2.0) -> dns.message.Message | None:
    try:
        query = dns.message.make_query(unique_name(), "A")
        return dns.query.udp(query, LOOPBACK, port=port, timeout=timeout)
    except (TimeoutError, dns.exception.Timeout, OSError):
        return None


def udp_burst(port: int, count: int, wait: float = 5.0) -> int:
    """Send ``count`` queries for new names at once from one socket; count the answered ones.

    Many queries in flight are what makes ``leastOutstanding`` use both backends: asked one at a
    time, every backend has none outstanding and the fastest gets them all.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((LOOPBACK, 0))
        ids: set[int] = set()
        for query_id in range(count):  # distinct IDs: random ones collide now and then
            query = dns.message.make_query(unique_name(), "A", id=query_id)
            ids.add(query.id)
            sock.sendto(query.to_wire(), (LOOPBACK, port))
        good = 0
        deadline = time.monotonic() + wait
        while ids and (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            try:
                reply = dns.message.from_wire(sock.recv(4096))
            except TimeoutError:
                break
            if reply.id in ids and answered(reply):
                ids.discard(reply.id)
                good += 1
    return good


@dataclass
class Instance:
    """One stubby-py daemon behind dnsdist, restartable on the same port and configuration."""

    port: int
    config: str
    control_socket: Path
    directory: Path
    daemon: Daemon | None = None

    def start(self) -> None:
        daemon = Daemon(["-c", self.config], port=self.port, directory=self.directory)
        daemon.__enter__()
        self.daemon = daemon

    def stop(self) -> None:
        if self.daemon is not None:
            self.daemon.stop()
            self.daemon = None

    def client_queries(self) -> int:
        """Queries this daemon was asked, less the health checks (answered locally)."""
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        result = subprocess.run(
            [sys.executable, "-m", "stubby_py", "stats", "--json",
             "--socket", str(self.control_socket)],
            capture_output=True, text=True, timeout=20, check=True, env=env,
        )  # fmt: skip
        stats = json.loads(result.stdout)
        return int(stats["queries"]) - int(stats["counters"].get("local", 0))


@dataclass
class Stack:
    dnsdist: Dnsdist
    instances: list[Instance]
    upstream: LocalUpstream
    ca_pem: Path
    curl: str


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    binary = require_tool("dnsdist", "/usr/bin/dnsdist", "/usr/sbin/dnsdist")
    curl = require_tool("curl")
    base = tmp_path_factory.mktemp("dnsdist-scale-out")
    ca = trustme.CA()
    ca_file = base / "upstream-ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    frontend_tls = write_tls_files(base / "frontend-tls", ("dns.test", LOOPBACK), prefix="front-")
    with local_upstream(server_context(ca)) as upstream:
        *backend_ports, dns_port, dot_port, doh_port, console_port = free_ports(6)
        instances = []
        for name, port in zip(("one", "two"), backend_ports, strict=True):
            directory = base / name
            directory.mkdir()
            config = write_config(
                directory / f"{name}.yaml", port, [dot_uri(upstream)], str(ca_file)
            )
            instances.append(Instance(port, config, directory / "control.sock", directory))
        ports = DnsdistPorts(dns_port, dot_port, doh_port, console_port)
        console_key = base64.b64encode(os.urandom(32)).decode()
        config = render_recipe(
            readme_recipe(), ports, backend_ports, frontend_tls.cert_pem, frontend_tls.key_pem,
            console_key,
        )  # fmt: skip
        try:
            for instance in instances:
                instance.start()
            with Dnsdist(binary, config, base, ports) as dnsdist:
                yield Stack(dnsdist, instances, upstream, frontend_tls.ca_pem, curl)
        finally:
            for instance in instances:
                instance.stop()


def test_answers_over_udp_tcp_dot_and_doh(stack: Stack, tmp_path: Path) -> None:
    ports = stack.dnsdist.ports
    assert answered(dns.query.udp(dns.message.make_query(unique_name(), "A"), LOOPBACK,
                                  port=ports.dns, timeout=3))  # fmt: skip
    assert answered(dns.query.tcp(dns.message.make_query(unique_name(), "A"), LOOPBACK,
                                  port=ports.dns, timeout=3))  # fmt: skip
    context = ssl.create_default_context(cafile=str(stack.ca_pem))
    dot_reply = dns.query.tls(
        dns.message.make_query(unique_name(), "A"), LOOPBACK, port=ports.dot, timeout=5,
        ssl_context=context, server_hostname="dns.test",
    )  # fmt: skip
    assert answered(dot_reply)
    # DoH (RFC 8484 POST) with curl: dnspython's DoH client needs httpx, not installed here
    query = dns.message.make_query(unique_name(), "A")
    query.id = 0
    body = tmp_path / "query.bin"
    body.write_bytes(query.to_wire())
    result = subprocess.run(
        [stack.curl, "--silent", "--show-error", "--http2", "--max-time", "5",
         "--cacert", str(stack.ca_pem), "--resolve", f"dns.test:{ports.doh}:{LOOPBACK}",
         "-H", "content-type: application/dns-message", "--data-binary", f"@{body}",
         f"https://dns.test:{ports.doh}/dns-query"],
        capture_output=True, timeout=15, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    assert answered(dns.message.from_wire(result.stdout))
    # DDR goes through to an instance, which has no encrypted listener: NODATA (README)
    ddr = dns.query.udp(dns.message.make_query("_dns.resolver.arpa.", "SVCB"), LOOPBACK,
                        port=ports.dns, timeout=3)  # fmt: skip
    assert ddr.rcode() == dns.rcode.NOERROR and not ddr.answer


def test_spreads_fails_over_and_takes_back(stack: Stack) -> None:
    one, two = stack.instances
    port = stack.dnsdist.ports.dns
    before = [one.client_queries(), two.client_queries()]
    assert udp_burst(port, 100) == 100, stack.dnsdist.state()
    after = [one.client_queries(), two.client_queries()]
    assert after[0] > before[0] and after[1] > before[1], (before, after)

    # one stops: the health checks mark it down, then the other answers every query
    stopped = time.monotonic()
    one.stop()  # SIGTERM, and waits for it to exit
    assert wait_until(lambda: stack.dnsdist.backends_up() == [False, True], MARKED_DOWN_WITHIN), (
        f"dnsdist did not mark the stopped instance down within {MARKED_DOWN_WITHIN} s:\n"
        f"{stack.dnsdist.log_text()}"
    )
    marked_down = time.monotonic() - stopped
    print(f"stopped instance marked down after {marked_down:.1f} s")
    two_before = two.client_queries()
    replies = [udp_query(port) for _ in range(50)]
    assert all(r is not None and answered(r) for r in replies), (
        f"{sum(r is None for r in replies)} of 50 unanswered "
        f"{marked_down:.1f} s after SIGTERM, once marked down"
    )
    assert two.client_queries() - two_before >= 50
    assert udp_burst(port, 100) == 100, stack.dnsdist.state()

    # started again on the same port: marked up, and it gets queries again
    one.start()
    restarted = time.monotonic()
    assert wait_until(lambda: stack.dnsdist.backends_up() == [True, True], MARKED_UP_WITHIN), (
        stack.dnsdist.log_text()
    )
    print(f"started instance marked up after {time.monotonic() - restarted:.1f} s")
    one_before = one.client_queries()  # a new process: its counters start again
    for _ in range(5):  # a second apart: dnsdist's per-client limit is 200 queries/s
        assert udp_burst(port, 100) == 100, stack.dnsdist.state()
        if one.client_queries() > one_before:
            break
        time.sleep(1)
    assert one.client_queries() > one_before, "the instance started again got no queries"
