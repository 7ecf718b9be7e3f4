"""The service unit as systemd sees it: its exposure score stays at 2.0 or below, and it gives the
daemon the directories its defaults expect (state for the cache, runtime for the control socket,
logs for a query log)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from tests.peers import ROOT, require_tool

MAX_EXPOSURE = 2.0


def unit_copy(tmp_path: Path) -> Path:
    """The unit with ExecStart= pointing at a binary that exists (systemd-analyze checks it)."""
    service = (ROOT / "systemd/stubby-py.service").read_text()
    unit = tmp_path / "stubby-py.service"
    unit.write_text(
        service.replace("/usr/local/bin/stubby-py", shutil.which("true") or "/bin/true")
    )
    shutil.copy(ROOT / "systemd/stubby-py.socket", tmp_path / "stubby-py.socket")
    return unit


def test_exposure_is_at_most_2(tmp_path: Path) -> None:
    analyze = require_tool("systemd-analyze")
    unit = unit_copy(tmp_path)
    result = subprocess.run(
        [analyze, "security", "--offline=yes", "--no-pager", str(unit)],
        capture_output=True, text=True, timeout=60, check=False, cwd=tmp_path,
    )  # fmt: skip
    found = re.search(r"Overall exposure level for stubby-py\.service: (\d+\.\d)", result.stdout)
    assert found, result.stdout + result.stderr
    exposure = float(found.group(1))
    assert exposure <= MAX_EXPOSURE, result.stdout


def test_directories_notify_and_reload() -> None:
    service = (ROOT / "systemd/stubby-py.service").read_text()
    for directive in (
        "StateDirectory=stubby-py", "RuntimeDirectory=stubby-py", "LogsDirectory=stubby-py",
        "ExecReload=/bin/kill -HUP $MAINPID", "NotifyAccess=main", "Restart=on-failure",
        "WatchdogSec=", "PrivateMounts=yes",
    ):  # fmt: skip
        assert directive in service, directive
    families = re.search(r"^RestrictAddressFamilies=(.*)$", service, re.MULTILINE)
    # AF_NETLINK: the network-change watch (rtnetlink), nothing else
    assert families and families.group(1).split() == [
        "AF_INET",
        "AF_INET6",
        "AF_UNIX",
        "AF_NETLINK",
    ]
