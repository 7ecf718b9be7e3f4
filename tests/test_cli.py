"""The command line as a user meets it: help, version, check-config, clear start-up failures."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from stubby_py import __version__


def run_cli(*args: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "stubby_py", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_help_explains_the_options_and_examples() -> None:
    result = run_cli("run", "--help")
    assert result.returncode == 0
    for word in ("--listen", "--upstream", "--ca-file", "--config", "tls://", "5353"):
        assert word in result.stdout


def test_version() -> None:
    result = run_cli("--version")
    assert result.returncode == 0 and __version__ in result.stdout


def test_check_config_accepts_a_good_file(tmp_file) -> None:  # type: ignore[no-untyped-def]
    path = tmp_file(
        "good.yaml", "listen: ['127.0.0.1:5353']\nupstreams: [tls://9.9.9.9#dns.quad9.net]\n"
    )
    result = run_cli("check-config", path)
    assert result.returncode == 0 and "OK" in result.stdout


def test_check_config_refuses_a_bad_file_with_line_and_key(tmp_file) -> None:  # type: ignore[no-untyped-def]
    path = tmp_file(
        "bad.yaml", "listen: ['127.0.0.1:5353']\nupstreams:\n  - tls://9.9.9.9:99999#x\n"
    )
    result = run_cli("check-config", path)
    assert result.returncode == 2
    assert f"{path}:3: upstreams[0]:" in result.stderr and "port" in result.stderr


def test_bad_command_line_upstream_is_refused() -> None:
    result = run_cli("--listen", "127.0.0.1:0", "--upstream", "tls://not-an-ip#x")
    assert result.returncode == 2 and "expected an IP address" in result.stderr


def test_address_in_use_says_what_to_do() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli("--listen", f"127.0.0.1:{port}", "--upstream", "tls://127.0.0.1#x")
    assert result.returncode == 1
    assert "already in use" in result.stderr and "--listen 127.0.0.1:5353" in result.stderr


@pytest.mark.parametrize("args", [["--listen", "127.0.0.1:0", "--ca-file", "/no/such.pem"]])
def test_missing_ca_file_is_refused(args: list[str]) -> None:
    result = run_cli(*args)
    assert result.returncode == 2 and "/no/such.pem" in result.stderr
