"""A capture on loopback (tshark) shows DoT records of one size for short and long names."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import dns.message
import dns.query
import pytest

from tests.conftest import dot_uri
from tests.daemon_thread import make_config, running_daemon
from tests.servers import LocalUpstream

pytestmark = pytest.mark.interop


def require_tshark() -> str:
    path = shutil.which("tshark")
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail("tshark is required in CI but not installed")
        pytest.skip("tshark not installed")
    return path


def _wait_for_capture_start(stderr_path: Path) -> None:
    end = time.monotonic() + 10
    while time.monotonic() < end:
        if "Capturing on" in stderr_path.read_text(errors="replace"):
            return
        time.sleep(0.05)
    raise AssertionError(f"tshark did not start: {stderr_path.read_text()}")


def test_dot_record_lengths_do_not_depend_on_the_name(
    dot_upstream: LocalUpstream, ca_file: str, tmp_path: Path
) -> None:
    tshark = require_tshark()
    capture = tmp_path / "dot.pcap"
    stderr_path = tmp_path / "tshark.err"
    with stderr_path.open("w") as err:
        sniffer = subprocess.Popen(
            [tshark, "-i", "lo", "-f", f"tcp port {dot_upstream.port}", "-w", str(capture),
             "-a", "duration:20"],
            stdout=subprocess.DEVNULL, stderr=err,
        )  # fmt: skip
    try:
        _wait_for_capture_start(stderr_path)
        with running_daemon(make_config([dot_uri(dot_upstream)], ca_file)) as daemon:
            # the first query also opens the connection; the capture may start a moment late
            names = ("warm-up.example.", "a.example.", "a-much-longer-name.with.labels.example.")
            for name in names:
                query = dns.message.make_query(name, "A")
                dns.query.udp(query, "127.0.0.1", port=daemon.port, timeout=3)
                time.sleep(0.2)
        time.sleep(0.5)
    finally:
        sniffer.terminate()
        sniffer.wait(10)
    command = [
        tshark, "-r", str(capture), "-d", f"tcp.port=={dot_upstream.port},tls",
        "-Y", f"tls.app_data && tcp.dstport=={dot_upstream.port}",
        "-T", "fields", "-e", "tls.record.length",
    ]  # fmt: skip
    output = subprocess.run(command, capture_output=True, text=True, timeout=60, check=True)
    lengths = [int(x) for field in output.stdout.split() for x in field.split(",")]
    # handshake and close_notify records are small; a padded query is at least 128 + 2 octets
    queries = [n for n in lengths if n >= 130]
    assert len(queries) >= 2, lengths
    assert queries[-1] == queries[-2], lengths  # the short name's record and the long one's
