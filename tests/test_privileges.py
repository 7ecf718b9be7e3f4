"""Started as root without systemd, the daemon binds, then runs as a user of its own: sockets
kept, the cache directory handed over (only if it is dedicated), and only if the user can read
what the daemon still needs. Its state is out of reach of other programs (nobody's, say); a
configured user that cannot be switched to is an error; root only when asked for."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pwd
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import dns.exception
import dns.rcode
import pytest

from stubby_py.daemon import privileges
from stubby_py.daemon.privileges import Handover
from tests.conftest import dot_uri
from tests.peers import ROOT, free_port
from tests.servers import LocalUpstream
from tests.service import ask, wait_for, write_config

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
    with caplog.at_level(logging.WARNING, "stubby_py.daemon.privileges"):
        for path in (missing, dedicated / "cache.bin", shared / "cache.bin"):
            privileges._hand_over(Handover(str(path), prefix=".cache-"), uid, gid)
    owner = {p: os.stat(p).st_uid for p in (missing.parent, dedicated, shared)}
    assert owner == {missing.parent: uid, dedicated: uid, shared: 0}
    assert os.stat(dedicated / "cache.bin").st_uid == uid
    assert "holds other files, so it is left alone" in caplog.text


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def _remove_user(name: str) -> None:
    if _user_exists(name):
        subprocess.run(["userdel", name], check=False, capture_output=True, timeout=30)


@pytest.fixture
def user_name() -> Iterator[str]:
    """A fresh name for a user of the daemon's own (not created yet); removed afterwards."""
    name = f"stubby-py-t{os.getpid() % 100000}"
    _remove_user(name)
    yield name
    _remove_user(name)


@pytest.fixture
def own_user(user_name: str) -> pwd.struct_passwd:
    """A system user of the daemon's own, created for the test."""
    subprocess.run(
        ["useradd", "--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent",
         user_name], check=True, capture_output=True, timeout=30,
    )  # fmt: skip
    return pwd.getpwnam(user_name)


CHILD = """
import json, os, sys
from stubby_py.daemon import privileges
privileges.module_directories = set  # this interpreter may live where nobody can read
cache = sys.argv[1]
changed = privileges.drop_privileges(sys.argv[2], [privileges.Handover(cache)], [])
with open(cache, "wb") as handle:
    handle.write(b"saved")
try:
    os.setuid(0)
    regained = True
except PermissionError:
    regained = False
import ctypes
dumpable = ctypes.CDLL(None).prctl(3, 0, 0, 0, 0)  # PR_GET_DUMPABLE
print(json.dumps([changed, os.getuid(), os.getgid(), os.getgroups(), regained, dumpable]))
"""


@as_root
def test_the_switch_is_complete_and_final(shared_tmp: Path, own_user: pwd.struct_passwd) -> None:
    cache = shared_tmp / "state" / "cache.bin"
    result = subprocess.run(
        [sys.executable, "-c", CHILD, str(cache), own_user.pw_name], capture_output=True,
        text=True, timeout=30, check=False, cwd=str(ROOT),
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    changed, uid, gid, groups, regained, dumpable = json.loads(result.stdout)
    assert changed and (uid, gid) == (own_user.pw_uid, own_user.pw_gid)
    assert 0 not in groups and not regained
    assert dumpable == 0  # no ptrace, no /proc/PID/fd for other processes of the user
    assert cache.read_bytes() == b"saved"


# the daemon, with the Python installation taken as readable by any user (this interpreter may
# live under /root; the modules it needs are imported before the switch) and `user: auto` meaning
# a user whose name the test chooses (so the machine's own stubby-py user is left alone)
DAEMON = """
import sys
from stubby_py.daemon import privileges
privileges.module_directories = set
privileges.AUTO_USER = sys.argv[1]
from stubby_py.commands.cli import main
raise SystemExit(main(sys.argv[2:]))
"""


@contextlib.contextmanager
def root_daemon(config: Path, port: int, auto_user: str) -> Iterator[subprocess.Popen[bytes]]:
    """The daemon started as root on `config`, answering on 127.0.0.1:port."""
    log = config.parent / "daemon.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-c", DAEMON, auto_user, "run", "-c", str(config), "--dnssec", "off"],
            cwd=str(ROOT), env=dict(os.environ, PYTHONPATH=str(ROOT)), stdout=output,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        if not wait_for(lambda: _answers(port) or process.poll() is not None, timeout=15):
            raise AssertionError(log.read_text())
        assert process.poll() is None, log.read_text()
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)


def _answers(port: int) -> bool:
    try:
        ask(port, "ready.example.", timeout=0.5)
    except (OSError, dns.exception.Timeout):
        return False
    return True


def _run_as_nobody(code: str) -> str:
    """Run Python code as another program running as nobody would; its output."""

    def become_nobody() -> None:
        os.setgroups([])
        os.setgid(NOBODY.pw_gid)
        os.setuid(NOBODY.pw_uid)

    result = subprocess.run(
        ["/usr/bin/env", "-i", "/usr/bin/python3", "-c", code], capture_output=True, text=True,
        timeout=30, preexec_fn=become_nobody, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


#: what another process of the same user could do to the daemon: each line one attempt
ATTEMPTS = """
import json, os, signal, socket, sys
control, query_log, state, pid = sys.argv[1:5]
def attempt(action):
    try:
        action()
    except PermissionError:
        return "denied"
    except OSError as exc:
        return "error: " + str(exc)
    return "done"
def flush():
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(5)
        sock.connect(control)
        sock.sendall(b'{"command": "flush"}\\n')
        sock.recv(4096)
def plant():
    with open(os.path.join(state, "cache.bin.planted"), "wb") as handle:
        handle.write(b"x")
print(json.dumps({
    "flush": attempt(flush),
    "read query log": attempt(lambda: open(query_log).read()),
    "plant a cache file": attempt(plant),
    "signal": attempt(lambda: os.kill(int(pid), signal.SIGUSR2)),
}))
"""


@as_root
def test_other_processes_of_a_shared_user_reach_none_of_the_daemons_state(
    dot_upstream: LocalUpstream, ca_file: str, shared_tmp: Path, user_name: str
) -> None:
    """Started as root with the default `user:` the daemon runs as a user of its own (created
    when missing): a process running as nobody can neither flush it (control socket, signal),
    nor read its query log, nor plant a cache file."""
    shared_ca = shared_tmp / "ca.pem"
    shared_ca.write_bytes(Path(ca_file).read_bytes())
    shared_ca.chmod(0o644)
    port = free_port()
    config = shared_tmp / "config.yaml"
    write_config(
        config, port, [dot_uri(dot_upstream)], str(shared_ca),
        cache_file=str(shared_tmp / "state" / "cache.bin"),
        control_socket=str(shared_tmp / "run" / "control.sock"),
        query_log=str(shared_tmp / "queries.log"),
    )  # fmt: skip
    text = config.read_text().replace("user: null\n", "")  # the default
    config.write_text(text)
    config.chmod(0o644)
    with root_daemon(config, port, user_name) as process:
        assert ask(port, "after-switch.example.").rcode() == dns.rcode.NOERROR
        outcome = json.loads(_attempts(shared_tmp, process.pid))
        assert outcome == {
            "flush": "denied", "read query log": "denied", "plant a cache file": "denied",
            "signal": "denied",
        }  # fmt: skip
        assert _uid(process.pid) == pwd.getpwnam(user_name).pw_uid
        assert ask(port, "after-switch.example.").rcode() == dns.rcode.NOERROR
    log = (shared_tmp / "daemon.log").read_text()
    assert f"created the system user {user_name}" in log
    assert f"running as user {user_name}" in log
    assert (shared_tmp / "state" / "cache.bin").stat().st_size > 0


def _attempts(directory: Path, pid: int) -> str:
    arguments = [
        str(directory / "run" / "control.sock"), str(directory / "queries.log"),
        str(directory / "state"), str(pid),
    ]  # fmt: skip
    code = f"import sys; sys.argv[1:] = {arguments!r}\n" + ATTEMPTS
    return _run_as_nobody(code)


def _config_as_root(
    directory: Path, port: int, upstream: LocalUpstream, ca_file: str, user: str
) -> Path:
    config = directory / "config.yaml"
    write_config(config, port, [dot_uri(upstream)], ca_file, user=user)
    config.chmod(0o644)
    return config


def _start_fails(config: Path, auto_user: str = "stubby-py-unused") -> str:
    result = subprocess.run(
        [sys.executable, "-c", DAEMON, auto_user, "run", "-c", str(config), "--dnssec", "off"],
        cwd=str(ROOT), env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True,
        text=True, timeout=15, check=False,
    )  # fmt: skip
    assert result.returncode != 0, result.stderr
    return result.stderr


@as_root
def test_a_shared_user_is_refused(
    dot_upstream: LocalUpstream, ca_file: str, shared_tmp: Path
) -> None:
    shared_ca = shared_tmp / "ca.pem"
    shared_ca.write_bytes(Path(ca_file).read_bytes())
    shared_ca.chmod(0o644)
    config = _config_as_root(shared_tmp, free_port(), dot_upstream, str(shared_ca), "nobody")
    assert "user 'nobody' is shared with other programs" in _start_fails(config)


@as_root
def test_a_configured_user_that_cannot_be_switched_to_is_an_error(
    dot_upstream: LocalUpstream, ca_file: str, shared_tmp: Path, own_user: pwd.struct_passwd
) -> None:
    # the CA file lies in pytest's private directory: the user could not read it after the switch
    config = _config_as_root(shared_tmp, free_port(), dot_upstream, ca_file, own_user.pw_name)
    stderr = _start_fails(config)
    assert f"user {own_user.pw_name!r} could not read {ca_file}" in stderr
    config = _config_as_root(shared_tmp, free_port(), dot_upstream, ca_file, "no-such-user-x")
    assert "user 'no-such-user-x' does not exist" in _start_fails(config)


@as_root
def test_auto_stays_root_only_when_no_user_could_run_it_and_says_so(
    dot_upstream: LocalUpstream, ca_file: str, shared_tmp: Path, user_name: str
) -> None:
    port = free_port()
    config = _config_as_root(shared_tmp, port, dot_upstream, ca_file, "auto")
    with root_daemon(config, port, user_name) as process:
        assert _uid(process.pid) == 0
        assert ask(port, "as-root.example.").rcode() == dns.rcode.NOERROR
    log = (shared_tmp / "daemon.log").read_text()
    assert f"staying root: an unprivileged user could not read {ca_file}" in log
    assert not _user_exists(user_name)  # not created for nothing


@as_root
def test_root_is_kept_when_asked_for(
    dot_upstream: LocalUpstream, ca_file: str, shared_tmp: Path
) -> None:
    port = free_port()
    config = _config_as_root(shared_tmp, port, dot_upstream, ca_file, "root")
    with root_daemon(config, port, "stubby-py-unused") as process:
        assert _uid(process.pid) == 0
    log = (shared_tmp / "daemon.log").read_text()
    assert "running as root, as configured (user: root)" in log
    assert "WARNING" not in log


def _uid(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[2])  # effective
    raise AssertionError("no Uid line")
