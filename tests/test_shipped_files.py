"""The files we ship: the example configuration is the defaults, the unit files verify."""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from stubby_py.core.config import OPTIONS, load_config

ROOT = Path(__file__).resolve().parent.parent


def require_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{name} is required in CI but not installed")
        pytest.skip(f"{name} not installed")
    return path


def test_example_config_documents_exactly_the_defaults() -> None:
    example = load_config(str(ROOT / "config.example.yaml"))
    defaults = load_config(None)
    assert dataclasses.replace(example, source="") == dataclasses.replace(defaults, source="")


def test_example_config_mentions_every_option() -> None:
    text = (ROOT / "config.example.yaml").read_text()
    keys = set(re.findall(r"^([a-z0-9_]+):", text, flags=re.MULTILINE))
    options = {name for name, option in OPTIONS.items() if option.read is not None}
    assert options <= keys, options - keys


def test_unit_files_verify_and_carry_the_hardening(tmp_path: Path) -> None:
    analyze = require_tool("systemd-analyze")
    service = (ROOT / "systemd/stubby-py.service").read_text()
    for directive in (
        "Type=notify", "WatchdogSec=", "Restart=on-failure", "StateDirectory=", "DynamicUser=yes",
        "NoNewPrivileges=yes", "ProtectSystem=strict", "ProtectHome=yes", "PrivateTmp=yes",
        "PrivateDevices=yes", "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX AF_NETLINK",
        "SystemCallFilter=@system-service", "MemoryDenyWriteExecute=yes", "LockPersonality=yes",
    ):  # fmt: skip
        assert directive in service, directive
    # systemd-analyze wants the ExecStart binary to exist: point it at one that does
    unit_dir = tmp_path / "units"
    unit_dir.mkdir()
    (unit_dir / "stubby-py.service").write_text(
        service.replace("/usr/local/bin/stubby-py", shutil.which("true") or "/bin/true")
    )
    shutil.copy(ROOT / "systemd/stubby-py.socket", unit_dir / "stubby-py.socket")
    result = subprocess.run(
        [analyze, "verify", "--man=no", str(unit_dir / "stubby-py.socket"),
         str(unit_dir / "stubby-py.service")],
        capture_output=True, text=True, timeout=60, check=False,
        env=dict(os.environ, SYSTEMD_UNIT_PATH=f"{unit_dir}:"),
    )  # fmt: skip
    problems = [line for line in result.stderr.splitlines() if "stubby-py" in line]
    assert result.returncode == 0, result.stderr
    assert not problems, problems
