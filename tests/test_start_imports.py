"""A daemon imports what its configuration uses and no more: the modules of listeners, transports
and commands it does not run (h2, aioquic with pyOpenSSL and service_identity, tracemalloc,
`monitor` and `bench`, dnspython's DNSSEC algorithms) hold several MiB of resident memory that
would count against the memory target (README "Memory"). Checked on a real daemon: Python's
import log (PYTHONPROFILEIMPORTTIME) lists every module it imported while starting and answering
a query."""

from __future__ import annotations

from pathlib import Path

import dns.flags
import dns.message
import dns.query
import pytest

from tests.conftest import dot_uri
from tests.peers import free_port
from tests.servers import LocalUpstream
from tests.service import daemon_process, write_config

#: top-level packages or modules a DoT-only daemon on plain listeners, with no proxy, never needs
NOT_NEEDED = (
    "h2",
    "hpack",
    "aioquic",
    "pylsqpack",
    "OpenSSL",
    "service_identity",
    "tracemalloc",
    "python_socks",
    "statistics",
    # dnssec/primitives.py verifies with cryptography itself: dnspython's DNSSEC modules load
    # every algorithm it knows, and cryptography's serialization, cipher and SSH modules
    "dns.dnssec",
    "dns.dnssecalgs",
    "cryptography.hazmat.primitives.serialization",
    "cryptography.hazmat.primitives.ciphers",
    "cryptography.hazmat.decrepit",
    "stubby_py.listeners.doh",
    "stubby_py.listeners.doh3",
    "stubby_py.listeners.doq",
    "stubby_py.commands.monitor",
    "stubby_py.commands.bench",
)


def imported(log: str) -> set[str]:
    """The module names in a PYTHONPROFILEIMPORTTIME log ("import time: self | cumulative |
    name")."""
    names = set()
    for line in log.splitlines():
        if line.startswith("import time:") and line.count("|") == 2:
            names.add(line.rsplit("|", 1)[1].strip())
    return names


@pytest.mark.parametrize("dnssec", ["off", "validate"])
def test_a_dot_daemon_imports_no_other_transport_listener_or_command(
    dnssec: str,
    dot_upstream: LocalUpstream,
    ca_file: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    port = free_port()
    config = write_config(
        tmp_path / "config.yaml", port, [dot_uri(dot_upstream)], ca_file, dnssec=dnssec
    )
    log = tmp_path / "daemon.log"
    monkeypatch.setenv("PYTHONPROFILEIMPORTTIME", "1")
    with daemon_process(config, log):
        # CD: the local upstream's data is unsigned; the query still goes through the validator
        query = dns.message.make_query("start.example.", "A")
        query.flags |= dns.flags.CD
        reply = dns.query.udp(query, "127.0.0.1", port=port, timeout=5)
        assert reply.answer, log.read_text()[-2000:]
    names = imported(log.read_text())
    assert "stubby_py.daemon.service" in names and "uvloop" in names  # the log is complete
    assert ("cryptography" in names) == (dnssec == "validate")
    unneeded = sorted(
        name for name in names if any(name == n or name.startswith(n + ".") for n in NOT_NEEDED)
    )
    assert unneeded == []
