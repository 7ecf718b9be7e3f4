"""Socket activation for the encrypted listeners: the optional units systemd/stubby-py-dot.socket
and stubby-py-doh.socket verify, and a daemon started as systemd starts it (LISTEN_FDS,
LISTEN_FDNAMES) serves DoT and DoQ on the sockets it inherited, binds its own for a listener
with none, and closes an encrypted unit's socket that no listener takes."""

from __future__ import annotations

import asyncio
import fcntl
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import dns.asyncquery
import dns.message
import dns.query
import dns.rcode
import pytest
import trustme

from stubby_py.core.config import EncryptedListen
from stubby_py.daemon.service import Inherited, match_inherited
from tests.peers import ROOT, require_tool
from tests.servers import LocalUpstream
from tests.service import wait_for, write_config
from tests.test_listeners_encrypted import NAME, write_pair

UNITS = ("stubby-py-dot.socket", "stubby-py-doh.socket")


def test_encrypted_socket_units_verify(tmp_path: Path) -> None:
    analyze = require_tool("systemd-analyze")
    service = (ROOT / "systemd/stubby-py.service").read_text()
    (tmp_path / "stubby-py.service").write_text(
        service.replace("/usr/local/bin/stubby-py", shutil.which("true") or "/bin/true")
    )
    for unit in ("stubby-py.socket", *UNITS):
        shutil.copy(ROOT / "systemd" / unit, tmp_path / unit)
    result = subprocess.run(
        [analyze, "verify", "--man=no", *(str(tmp_path / u) for u in UNITS)],
        capture_output=True, text=True, timeout=60, check=False,
        env=dict(os.environ, SYSTEMD_UNIT_PATH=f"{tmp_path}:"),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert not [line for line in result.stderr.splitlines() if "stubby-py" in line]
    for unit, name, port in zip(UNITS, ("dot", "doh"), (853, 443), strict=True):
        text = (ROOT / "systemd" / unit).read_text()
        lines = set(text.splitlines())
        assert {f"ListenStream=[::]:{port}", f"ListenDatagram=[::]:{port}"} <= lines, unit
        assert f"FileDescriptorName={name}" in lines
        assert "Service=stubby-py.service" in lines


# -- matching inherited sockets to the configured listeners --------------------------------------
@pytest.fixture
def sockets() -> Iterator[list[socket.socket]]:
    made: list[socket.socket] = []
    yield made
    for sock in made:
        sock.close()


def _tcp(made: list[socket.socket], address: str = "127.0.0.1", port: int = 0) -> socket.socket:
    sock = socket.create_server((address, port), family=_family(address))
    made.append(sock)
    return sock


def _udp(made: list[socket.socket], address: str = "127.0.0.1", port: int = 0) -> socket.socket:
    sock = socket.socket(_family(address), socket.SOCK_DGRAM)
    sock.bind((address, port))
    made.append(sock)
    return sock


def _family(address: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in address else socket.AF_INET


def test_sockets_are_matched_by_address_port_and_type(sockets: list[socket.socket]) -> None:
    tcp = _tcp(sockets)
    port = tcp.getsockname()[1]
    udp = _udp(sockets, port=port)
    plain = _udp(sockets)
    stray = _udp(sockets)
    other_port = _tcp(sockets)
    unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sockets.append(unix)
    dot = EncryptedListen("tls", "127.0.0.1", port)
    doq = EncryptedListen("quic", "127.0.0.1", port)
    doh = EncryptedListen("https", "127.0.0.1", port + 1 if port < 65535 else port - 1, "/q")
    inherited = [Inherited(udp, "dot"), Inherited(plain, "stubby-py.socket"),
                 Inherited(tcp, "dot"), Inherited(stray, "doh"),
                 Inherited(other_port, ""), Inherited(unix, "")]  # fmt: skip
    for_plain, for_encrypted = match_inherited(inherited, (dot, doq, doh))
    assert for_encrypted == {dot: tcp, doq: udp}  # the TCP one for DoT, the UDP one for DoQ
    assert doh not in for_encrypted  # no socket on its port: it binds its own
    assert for_plain == [plain, other_port, unix]  # not from an encrypted unit: plain DNS
    assert stray.fileno() == -1  # an encrypted unit's socket no listener takes: closed


def test_dual_stack_socket_serves_a_listener_on_0_0_0_0(sockets: list[socket.socket]) -> None:
    sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    sockets.append(sock)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    try:
        sock.bind(("::", 0))
    except OSError as exc:  # IPv6 turned off on this machine
        pytest.skip(f"no IPv6: {exc}")
    port = sock.getsockname()[1]
    v4 = EncryptedListen("tls", "0.0.0.0", port)
    v6 = EncryptedListen("tls", "::", port)
    assert match_inherited([Inherited(sock, "dot")], (v4,))[1] == {v4: sock}
    assert match_inherited([Inherited(sock, "dot")], (v6,))[1] == {v6: sock}
    only6 = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    sockets.append(only6)
    only6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    only6.bind(("::", 0))
    v4 = EncryptedListen("tls", "0.0.0.0", only6.getsockname()[1])
    assert match_inherited([Inherited(only6, "")], (v4,)) == ([only6], {})  # not for 0.0.0.0


# -- the daemon, started as systemd starts it ----------------------------------------------------
def _alpn_and_port(svcb_text: str) -> tuple[str, int]:
    found = re.search(r'alpn="([^"]+)" port="(\d+)"', svcb_text)
    assert found, svcb_text
    return found[1], int(found[2])


def test_daemon_serves_dot_and_doq_on_inherited_sockets(
    plain_upstream: LocalUpstream, tmp_path: Path, sockets: list[socket.socket]
) -> None:
    ca = trustme.CA()
    ca_file = str(tmp_path / "ca.pem")
    ca.cert_pem.write_to_path(ca_file)
    cert, key = write_pair(ca, tmp_path)
    plain_udp = _udp(sockets)
    plain_port = plain_udp.getsockname()[1]
    plain_tcp = _tcp(sockets, port=plain_port)
    dot_tcp = _tcp(sockets)
    port = dot_tcp.getsockname()[1]
    doq_udp = _udp(sockets, port=port)
    stray = _udp(sockets)  # as from stubby-py-doh.socket, with no h3:// listener for it
    passed = [plain_udp, plain_tcp, dot_tcp, doq_udp, stray]
    names = "stubby-py.socket:stubby-py.socket:dot:dot:doh"
    config = write_config(
        tmp_path / "config.yaml", 1, [f"udp://127.0.0.1:{plain_upstream.port}"], ca_file,
        listen=["127.0.0.1:1", f"tls://127.0.0.1:{port}", f"quic://127.0.0.1:{port}",
                "h3://127.0.0.1:0/dns-query"],  # the h3 one binds its own socket
        tls_cert=cert, tls_key=key, control_socket=False,
    )  # fmt: skip

    def place_fds() -> None:  # runs in the child: the sockets become fds 3 to 7
        high = [fcntl.fcntl(sock.fileno(), fcntl.F_DUPFD, 100) for sock in passed]
        for number, fd in enumerate(high, start=3):
            os.dup2(fd, number)

    env = dict(os.environ, LISTEN_FDS=str(len(passed)), LISTEN_FDNAMES=names)
    env.pop("NOTIFY_SOCKET", None)
    process = subprocess.Popen(
        ["/bin/sh", "-c", f'LISTEN_PID=$$ exec "{sys.executable}" -m stubby_py run -c "{config}"'],
        env=env,
        preexec_fn=place_fds,
        pass_fds=(3, 4, 5, 6, 7, *(s.fileno() for s in passed)),
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        svcb = dns.message.make_query("_dns.resolver.arpa", "SVCB")

        def ddr() -> dns.message.Message | None:
            """The SVCB records, once every listener is up (the plain one answers first)."""
            try:
                reply = dns.query.udp(svcb, "127.0.0.1", port=plain_port, timeout=0.5)
            except (OSError, dns.exception.Timeout):
                return None
            return reply if reply.answer else None

        if not wait_for(lambda: ddr() is not None, 15):
            process.kill()
            assert process.stderr is not None
            raise AssertionError(process.stderr.read())
        reply = ddr()
        assert reply is not None
        ports = dict(_alpn_and_port(r.to_text()) for r in reply.answer[0])
        assert ports["dot"] == port and ports["doq"] == port
        h3_port = ports["h3"]
        assert h3_port not in (0, port)
        query = dns.message.make_query("activated.example.", "A")
        context = ssl.create_default_context(cafile=ca_file)
        context.set_alpn_protocols(["dot"])
        over_dot = dns.query.tls(query, "127.0.0.1", port=port, timeout=5,
                                 ssl_context=context, server_hostname=NAME)  # fmt: skip
        assert over_dot.rcode() == dns.rcode.NOERROR
        over_doq = asyncio.run(dns.asyncquery.quic(
            query, "127.0.0.1", port=port, timeout=5, verify=ca_file, server_hostname=NAME
        ))  # fmt: skip
        assert over_doq.rcode() == dns.rcode.NOERROR
        over_h3 = asyncio.run(dns.asyncquery.https(
            query, "127.0.0.1", port=h3_port, timeout=5, verify=ca_file,
            http_version=dns.asyncquery.HTTPVersion.H3,
        ))  # fmt: skip
        assert over_h3.rcode() == dns.rcode.NOERROR
        process.send_signal(signal.SIGTERM)
        assert process.wait(15) == 0
        assert process.stderr is not None
        log = process.stderr.read()
        assert "(doh) matches no encrypted listener" in log, log
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stderr is not None:
            process.stderr.close()
