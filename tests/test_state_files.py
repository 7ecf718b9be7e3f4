"""Files and directories the daemon writes in places others can reach: the query log is never
opened through a symbolic link nor unless it is a regular file, and the control socket's
directory in a shared place (/tmp) is used only if it is ours (owner, mode, not a link)."""

from __future__ import annotations

import asyncio
import logging
import os
import pwd
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import dns.rcode
import pytest

from stubby_py.core.errors import StubbyError
from stubby_py.daemon import control
from stubby_py.daemon.querylog import QueryLog
from tests.conftest import dot_uri
from tests.daemon_thread import DaemonThread, make_config, running_daemon
from tests.servers import LocalUpstream
from tests.service import ask

NOBODY = pwd.getpwnam("nobody")
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (to act as another user)")


@pytest.fixture
def sticky_tmp() -> Iterator[Path]:
    """A directory like /tmp: anyone may create entries in it (mode 1777)."""
    with tempfile.TemporaryDirectory(prefix="stubby-py-sticky-") as name:
        os.chmod(name, 0o1777)
        yield Path(name)


def as_nobody(*command: str) -> None:
    """Run a command as another process of another user (nobody) would."""

    def become_nobody() -> None:
        os.setgroups([])
        os.setgid(NOBODY.pw_gid)
        os.setuid(NOBODY.pw_uid)

    subprocess.run(command, check=True, timeout=10, preexec_fn=become_nobody)


def test_a_symbolic_link_at_the_query_log_is_refused_at_start(
    dot_upstream: LocalUpstream, ca_file: str, tmp_path: Path
) -> None:
    target = tmp_path / "somewhere-else"
    target.write_text("")
    planted = tmp_path / "queries.log"
    planted.symlink_to(target)
    config = make_config([dot_uri(dot_upstream)], ca_file, query_log=str(planted))
    thread = DaemonThread(config)
    with pytest.raises(StubbyError, match="a symbolic link"):
        thread.start()
    thread.stop()
    assert target.read_text() == ""


def test_a_fifo_at_the_query_log_is_refused_without_waiting(tmp_path: Path) -> None:
    fifo = tmp_path / "queries.log"
    os.mkfifo(fifo)
    outcome: list[BaseException | None] = []

    def open_log() -> None:
        try:
            QueryLog(str(fifo)).close()
            outcome.append(None)
        except OSError as exc:
            outcome.append(exc)

    worker = threading.Thread(target=open_log, daemon=True)
    worker.start()
    worker.join(5.0)
    if worker.is_alive():  # let the blocked open go before failing
        os.close(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))
        worker.join(5.0)
        pytest.fail("opening the query log waited for a reader of the FIFO")
    assert outcome and isinstance(outcome[0], OSError)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        with pytest.raises(OSError, match="not a regular file"):
            QueryLog(str(fifo))  # a reader is there: it still gets nothing
    finally:
        os.close(reader)


def test_a_link_planted_after_rotation_is_not_followed_on_reopen(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "queries.log"
    target = tmp_path / "target"
    target.write_text("")
    query_log = QueryLog(str(path))
    path.rename(tmp_path / "queries.log.1")  # logrotate moved it away
    path.symlink_to(target)  # and someone planted a link in its place
    with caplog.at_level(logging.ERROR, "stubby_py.daemon.querylog"):
        query_log.reopen()
    query_log.close()
    assert "not reopened: a symbolic link (not followed)" in caplog.text
    assert target.read_text() == ""


def test_the_query_log_is_appended_to_and_created_private(tmp_path: Path) -> None:
    path = tmp_path / "queries.log"
    path.write_text("earlier line\n")
    QueryLog(str(path)).close()
    assert path.read_text() == "earlier line\n"
    fresh = tmp_path / "new.log"
    QueryLog(str(fresh)).close()
    assert fresh.stat().st_mode & 0o777 == 0o600


def _start_control(path: Path) -> control.ControlServer:
    server = control.ControlServer(str(path), {})

    async def start() -> None:
        await server.start()
        await server.aclose()

    asyncio.run(start())
    return server


@as_root
def test_a_control_directory_made_by_another_user_in_tmp_is_not_used(sticky_tmp: Path) -> None:
    directory = sticky_tmp / f"stubby-py-{os.getuid()}"
    as_nobody("mkdir", "-m", "700", str(directory))
    with pytest.raises(OSError, match="not ours"):
        _start_control(directory / "control.sock")
    assert os.listdir(directory) == []


def test_a_control_directory_open_to_others_is_not_used(sticky_tmp: Path) -> None:
    directory = sticky_tmp / "stubby-py-0"
    directory.mkdir()
    directory.chmod(0o777)
    with pytest.raises(OSError, match="not ours"):
        _start_control(directory / "control.sock")
    directory.chmod(0o755)  # the same directory, once only we may write in it, is ours
    _start_control(directory / "control.sock")


def test_a_link_in_place_of_the_control_directory_is_not_followed(sticky_tmp: Path) -> None:
    elsewhere = sticky_tmp / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    (sticky_tmp / "stubby-py-0").symlink_to(elsewhere)
    with pytest.raises(OSError, match="not a directory"):
        _start_control(sticky_tmp / "stubby-py-0" / "control.sock")
    assert os.listdir(elsewhere) == []


def test_a_control_directory_of_our_own_in_tmp_is_made_private(sticky_tmp: Path) -> None:
    path = sticky_tmp / "stubby-py-0" / "control.sock"
    _start_control(path)
    info = path.parent.stat()
    assert (info.st_uid, info.st_mode & 0o777) == (os.geteuid(), 0o700)


@as_root
def test_the_daemon_starts_without_a_control_socket_it_cannot_trust(
    dot_upstream: LocalUpstream,
    ca_file: str,
    sticky_tmp: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    directory = sticky_tmp / "stubby-py-0"
    as_nobody("mkdir", "-m", "777", str(directory))
    path = directory / "control.sock"
    config = make_config([dot_uri(dot_upstream)], ca_file, control_socket=str(path))
    with caplog.at_level(logging.WARNING), running_daemon(config) as daemon:
        assert ask(daemon.port, "still.answers.example.").rcode() == dns.rcode.NOERROR
        assert daemon.daemon.control is None
    assert not path.exists()
    assert "no control socket at" in caplog.text and "not ours" in caplog.text


def test_the_control_socket_client_and_server_agree_on_a_user_runtime_directory(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("RUNTIME_DIRECTORY", raising=False)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    monkeypatch.setattr(control.os, "access", lambda path, mode: False)  # /run not writable
    assert control.default_path() == str(tmp_path / "stubby-py" / "control.sock")
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    assert control.default_path() == f"/tmp/stubby-py-{os.getuid()}/control.sock"
