"""Real clients (BIND's dig, Knot's kdig) through stubby-py to a real Unbound over DoT.

The tools' text output is parsed: header status, answer records, and the transport they report,
so a silent fallback (UDP→TCP on TC, or the other way) is visible.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import pytest

from tests.peers import (
    LOOPBACK,
    Daemon,
    TLSFiles,
    Unbound,
    forwarder,
    large_txt_strings,
    require_tool,
    write_tls_files,
)

pytestmark = [pytest.mark.interop, pytest.mark.timeout(30)]

AUTH_NAME = "dns.test"
BIG_NAME = "big.test."
TOOLS = ("dig", "kdig")
TRANSPORTS = ("udp", "tcp")


@dataclass(frozen=True)
class ToolResult:
    status: str
    answer: list[tuple[str, str, str]]  # (owner, type, rdata), TTL and class left out
    transport: str  # "UDP" or "TCP", as the tool reports the server it got the answer from
    output: str


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TLSFiles:
    return write_tls_files(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def unbound(tmp_path_factory: pytest.TempPathFactory, tls_files: TLSFiles) -> Iterator[Unbound]:
    with Unbound(
        tls_files,
        directory=tmp_path_factory.mktemp("unbound"),
        large_txt_name=BIG_NAME,
        doh=True,
    ) as server:
        yield server


@pytest.fixture(scope="module")
def daemon(
    tmp_path_factory: pytest.TempPathFactory, unbound: Unbound, tls_files: TLSFiles
) -> Iterator[Daemon]:
    directory = tmp_path_factory.mktemp("daemon")
    with forwarder(unbound, AUTH_NAME, tls_files.ca_pem, directory=directory) as running:
        yield running


def parse_output(output: str) -> ToolResult:
    """Parse dig or kdig presentation output (both mark sections with ``;; NAME SECTION:``)."""
    status = re.search(r"status: ([A-Z]+)", output)
    transport = re.search(r"(?:SERVER: \S+ \(|From \S+\()(UDP|TCP)\)", output)
    assert status is not None, f"no status in:\n{output}"
    assert transport is not None, f"no server transport in:\n{output}"
    answer: list[tuple[str, str, str]] = []
    in_answer = False
    for line in output.splitlines():
        if line.startswith(";; ANSWER SECTION:"):
            in_answer = True
        elif in_answer and (not line.strip() or line.startswith(";")):
            in_answer = False
        elif in_answer:
            owner, _ttl, _class, rdtype, rdata = line.split(None, 4)
            answer.append((owner.lower(), rdtype, rdata.strip()))
    return ToolResult(status.group(1), answer, transport.group(1), output)


def run_tool(tool: str, port: int, args: Sequence[str], tcp: bool = False) -> ToolResult:
    path = require_tool(tool)
    options = ["+time=3", "+tries=1"] if tool == "dig" else ["+time=3", "+retry=0"]
    if tcp:
        options.append("+tcp")
    command = [path, f"@{LOOPBACK}", "-p", str(port), *options, *args]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=15, check=False)
    output = completed.stdout + completed.stderr
    assert completed.returncode == 0, (
        f"{' '.join(command)} exited {completed.returncode}:\n{output}"
    )
    return parse_output(output)


@pytest.mark.parametrize("tool", TOOLS)
@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize(
    ("qname", "rdtype", "expected"),
    [
        ("www.test.", "A", "192.0.2.1"),
        ("www.test.", "AAAA", "2001:db8::1"),
        ("www.test.", "TXT", '"hello from unbound"'),
    ],
)
def test_tool_gets_answer_through_daemon(
    daemon: Daemon, tool: str, transport: str, qname: str, rdtype: str, expected: str
) -> None:
    result = run_tool(tool, daemon.port, [qname, rdtype], tcp=transport == "tcp")

    assert result.status == "NOERROR", result.output + daemon.stderr_text()
    assert result.answer == [(qname, rdtype, expected)], result.output
    assert result.transport == transport.upper(), result.output


@pytest.mark.parametrize("tool", TOOLS)
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_tool_sees_nxdomain(daemon: Daemon, tool: str, transport: str) -> None:
    result = run_tool(tool, daemon.port, [f"absent-{tool}.test.", "A"], tcp=transport == "tcp")

    assert result.status == "NXDOMAIN", result.output
    assert result.answer == []


@pytest.mark.parametrize("tool", TOOLS)
def test_tool_without_edns_retries_truncated_answer_over_tcp(daemon: Daemon, tool: str) -> None:
    result = run_tool(tool, daemon.port, ["+noedns", BIG_NAME, "TXT"])

    assert re.search(r"[Tt]runcated", result.output), "no TC over UDP:\n" + result.output
    assert result.transport == "TCP", result.output
    assert result.status == "NOERROR", result.output
    assert sorted(result.answer) == sorted(
        (BIG_NAME, "TXT", f'"{s}"') for s in large_txt_strings()
    ), result.output


@pytest.mark.parametrize("protocol", ["dot", "doh"])
def test_unbound_peer_serves_encrypted_for_its_certificate_name(
    unbound: Unbound, tls_files: TLSFiles, protocol: str
) -> None:
    """Harness check, no daemon: kdig reaches the peer over DoT / DoH and verifies it."""
    kdig = require_tool("kdig")
    if protocol == "dot":
        port, transport_options = unbound.dot_port, ["+tls"]
    else:
        assert unbound.doh_port is not None
        port, transport_options = unbound.doh_port, ["+https=/dns-query"]

    def kdig_tls(hostname: str) -> subprocess.CompletedProcess[str]:
        command = [
            kdig,
            f"@{LOOPBACK}",
            "-p",
            str(port),
            *transport_options,
            f"+tls-ca={tls_files.ca_pem}",
            f"+tls-hostname={hostname}",
            "+time=3",
            "+retry=0",
            "www.test.",
            "A",
        ]
        return subprocess.run(command, capture_output=True, text=True, timeout=15, check=False)

    good = kdig_tls(AUTH_NAME)
    assert good.returncode == 0, good.stdout + good.stderr
    result = parse_output(good.stdout)
    assert result.status == "NOERROR"
    assert result.answer == [("www.test.", "A", "192.0.2.1")]
    assert result.transport == "TCP"
    if protocol == "doh":
        assert "HTTP/2-POST" in good.stdout and "status: 200" in good.stdout, good.stdout

    bad = kdig_tls("wrong.example")
    assert bad.returncode != 0
    assert "status:" not in bad.stdout, bad.stdout
