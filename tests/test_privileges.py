"""Started as root without systemd, the daemon binds, then runs as `user`: sockets kept, the
cache directory handed over (only if it is dedicated), and only if the user can read what the
daemon still needs (else it stays root and says why)."""

from __future__ import annotations

import json
import logging
import os
import pwd
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import dns.rcode
import pytest

from stubby_py import privileges
from stubby_py.privileges import Handover
from tests.conftest import dot_uri
from tests.peers import ROOT, Daemon, free_port
from tests.service import ask, write_config
from tests.upstream_server import LocalUpstream

NOBODY = pwd.getpwnam("nobody")
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    """A directory everyone may enter (pytest's own tmp_path is private to its owner)."""
    with tempfile.TemporaryDirectory(prefix="stubby-py-priv-") as name:
        os.chmod(name, 0o755)
        yield Path(name)


def test_unreadable_paths_are_found(tmp_path: Path, shared_tmp: Path) -> None:
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    (private / "ca.pem").write_text("x")
    public = shared_tmp / "ca.pem"
    public.write_text("x")
    public.chmod(0o644)
    groups = {NOBODY.pw_gid}
    paths = [str(private / "ca.pem"), str(public), str(shared_tmp / "missing")]
    assert privileges.unreadable(paths, NOBODY.pw_uid, groups) == [str(private / "ca.pem")]
    public.chmod(0o600)
    assert privileges.unreadable([str(public)], NOBODY.pw_uid, groups) == [str(public)]


@as_root
def test_only_dedicated_directories_are_handed_over(
    shared_tmp: Path, caplog: pytest.LogCaptureFixture
) -> None:
    uid, gid = NOBODY.pw_uid, NOBODY.pw_gid
    missing = shared_tmp / "new" / "cache.bin"
    dedicated = shared_tmp / "dedicated"
    dedicated.mkdir(mode=0o755)
    (dedicated / "cache.bin").write_bytes(b"x")
    (dedicated / ".cache-tmp1").write_bytes(b"")
    shared = shared_tmp / "shared"
    shared.mkdir(mode=0o755)
    (shared / "someone-else").write_text("x")
    with caplog.at_level(logging.WARNING, "stubby_py.privileges"):
        for path in (missing, dedicated / "cache.bin", shared / "cache.bin"):
            privileges._hand_over(Handover(str(path), prefix=".cache-"), uid, gid)
    owner = {p: os.stat(p).st_uid for p in (missing.parent, dedicated, shared)}
    assert owner == {missing.parent: uid, dedicated: uid, shared: 0}
    assert os.stat(dedicated / "cache.bin").st_uid == uid
    assert "holds other files, so it is left alone" in caplog.text


CHILD = """
import json, os, sys
from stubby_py import privileges
privileges.module_directories = set  # this interpreter may live where nobody can read
cache = sys.argv[1]
changed = privileges.drop_privileges("nobody", [privileges.Handover(cache)], [])
with open(cache, "wb") as handle:
    handle.write(b"saved")
try:
    os.setuid(0)
    regained = True
except PermissionError:
    regained = False
print(json.dumps([changed, os.getuid(), os.getgid(), os.getgroups(), regained]))
"""


@as_root
def test_the_switch_is_complete_and_final(shared_tmp: Path) -> None:
    cache = shared_tmp / "state" / "cache.bin"
    result = subprocess.run(
        [sys.executable, "-c", CHILD, str(cache)], capture_output=True, text=True, timeout=30,
        check=False, cwd=str(ROOT), env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    changed, uid, gid, groups, regained = json.loads(result.stdout)
    assert changed and (uid, gid) == (NOBODY.pw_uid, NOBODY.pw_gid)
    assert 0 not in groups and not regained
    assert cache.read_bytes() == b"saved"


@as_root
def test_a_root_daemon_switches_user_or_says_why_not(
    dot_upstream: LocalUpstream, ca_file: str, shared_tmp: Path
) -> None:
    shared_ca = shared_tmp / "ca.pem"
    shared_ca.write_bytes(Path(ca_file).read_bytes())
    shared_ca.chmod(0o644)
    port = free_port()
    config = shared_tmp / "config.yaml"
    write_config(
        config, port, [dot_uri(dot_upstream)], str(shared_ca), user="nobody",
        cache_file=str(shared_tmp / "state" / "cache.bin"),
    )  # fmt: skip
    config.chmod(0o644)
    python_readable = not privileges.unreadable(
        privileges.module_directories(), NOBODY.pw_uid, {NOBODY.pw_gid}
    )
    with Daemon(["-c", str(config)], port=port) as daemon:
        assert daemon.process is not None
        uid = _uid(daemon.process.pid)
        assert ask(port, "after-switch.example.").rcode() == dns.rcode.NOERROR
        if python_readable:
            assert uid == NOBODY.pw_uid
            assert "running as user nobody" in daemon.stderr_text()
        else:  # e.g. Python installed under /root: the daemon would break after the switch
            assert uid == 0
            assert "staying root: user nobody could not read" in daemon.stderr_text()
        assert daemon.stop() == 0
    assert (shared_tmp / "state" / "cache.bin").stat().st_size > 0


def _uid(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[2])  # effective
    raise AssertionError("no Uid line")
