"""The one reader and writer of state files (stubby_py/state_files.py), on real files: a write is
atomic (a failure at any step leaves the old file, and no temporary), private (0600) and made
durable (the directory is synced); a read refuses a link, a device, a FIFO, a file others may
write and one larger than its bound, each with its reason."""

from __future__ import annotations

import errno
import os
import pwd
import stat
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from stubby_py import state_files
from stubby_py.state_files import StateFileError, read_state, state_path, write_state

as_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (to chown to another user)")

OLD = b"the old state\n"


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    path = tmp_path / "state.bin"
    write_state(str(path), OLD)
    return path


def test_a_write_is_read_back_private_and_alone(tmp_path: Path) -> None:
    path = tmp_path / "state.bin"
    write_state(str(path), b"x" * 3_000_000)  # more than one write(2) may take
    assert read_state(str(path), 3_000_000) == b"x" * 3_000_000
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.stat().st_uid == os.geteuid()
    assert os.listdir(tmp_path) == ["state.bin"]


def test_a_write_replaces_a_readable_file_with_a_private_one(saved: Path) -> None:
    saved.chmod(0o644)
    write_state(str(saved), b"new")
    assert saved.read_bytes() == b"new"
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600


def test_the_file_is_private_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        write_state(str(tmp_path / "state.bin"), b"new")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "state.bin").stat().st_mode) == 0o600


def _fail_on(monkeypatch: pytest.MonkeyPatch, name: str, exc: BaseException) -> None:
    """Make os.`name` fail (for the writer only) as a full disk or a kill would."""
    real: Callable[..., Any] = getattr(os, name)

    def failing(*args: Any) -> Any:
        if name == "write":  # a part is written first: the temporary is half full
            real(args[0], bytes(args[1][:3]))
        elif name == "fsync" and stat.S_ISDIR(os.fstat(args[0]).st_mode):
            return real(*args)  # the directory's: the replace is done by then
        raise exc

    monkeypatch.setattr(state_files.os, name, failing)


@pytest.mark.parametrize("step", ["write", "fsync", "replace"])
def test_a_failed_write_leaves_the_old_file_and_no_temporary(
    saved: Path, monkeypatch: pytest.MonkeyPatch, step: str
) -> None:
    _fail_on(monkeypatch, step, OSError(errno.ENOSPC, "No space left on device"))
    with pytest.raises(OSError, match="No space left"):
        write_state(str(saved), b"the new state, never complete\n")
    monkeypatch.undo()
    assert saved.read_bytes() == OLD
    assert os.listdir(saved.parent) == [saved.name]


def test_a_write_cut_short_by_anything_leaves_the_old_file(
    saved: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fail_on(monkeypatch, "write", KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        write_state(str(saved), b"the new state, never complete\n")
    monkeypatch.undo()
    assert saved.read_bytes() == OLD
    assert os.listdir(saved.parent) == [saved.name]


def test_the_rename_is_made_durable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[str] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        synced.append("directory" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        real(fd)

    monkeypatch.setattr(state_files.os, "fsync", fsync)
    write_state(str(tmp_path / "state.bin"), b"new")
    assert synced == ["file", "directory"]


def test_temporaries_are_named_as_asked(saved: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    names: list[str] = []
    real = os.replace

    def replace(source: str, target: str) -> None:
        names.append(os.path.basename(source))
        real(source, target)

    monkeypatch.setattr(state_files.os, "replace", replace)
    write_state(str(saved), b"new", temporary_prefix=".cache-")
    write_state(str(saved), b"new")
    assert names[0].startswith(".cache-")
    assert names[1].startswith(".state.bin.")
    assert os.listdir(saved.parent) == [saved.name]


def test_nothing_is_left_where_the_directory_is_missing(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        write_state(str(tmp_path / "no" / "such" / "state.bin"), b"new")
    assert os.listdir(tmp_path) == []


def test_a_missing_file_reads_as_none(tmp_path: Path) -> None:
    assert read_state(str(tmp_path / "none.bin"), 100) is None


def test_a_symbolic_link_is_neither_read_nor_replaced(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_bytes(OLD)
    link = tmp_path / "state.bin"
    link.symlink_to(target)
    with pytest.raises(StateFileError, match=r"a symbolic link \(not followed\)"):
        read_state(str(link), 100)
    with pytest.raises(StateFileError, match=r"not a regular file \(left as it is\)"):
        write_state(str(link), b"new")
    assert link.is_symlink() and target.read_bytes() == OLD
    assert sorted(os.listdir(tmp_path)) == ["elsewhere", "state.bin"]


def test_a_fifo_is_refused_at_once_and_left_alone(tmp_path: Path) -> None:
    fifo = tmp_path / "state.bin"
    os.mkfifo(fifo)
    outcome: list[BaseException | bytes | None] = []

    def read() -> None:
        try:
            outcome.append(read_state(str(fifo), 100))
        except StateFileError as exc:
            outcome.append(exc)

    worker = threading.Thread(target=read, daemon=True)
    worker.start()
    worker.join(5.0)
    if worker.is_alive():  # unblock the reader before failing
        with open(fifo, "wb"):
            pass
        worker.join(5.0)
        pytest.fail("opening the FIFO waited for a writer")
    assert len(outcome) == 1 and "not a regular file" in str(outcome[0])
    with pytest.raises(StateFileError, match="not a regular file"):
        write_state(str(fifo), b"new")
    assert stat.S_ISFIFO(fifo.lstat().st_mode)


def test_a_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "state.bin").mkdir()
    with pytest.raises(StateFileError, match="not a regular file"):
        read_state(str(tmp_path / "state.bin"), 100)
    with pytest.raises(StateFileError, match="not a regular file"):
        write_state(str(tmp_path / "state.bin"), b"new")


def test_a_file_larger_than_its_bound_is_refused(saved: Path) -> None:
    assert read_state(str(saved), len(OLD)) == OLD
    with pytest.raises(StateFileError, match=f"{len(OLD)} octets, more than the {len(OLD) - 1}"):
        read_state(str(saved), len(OLD) - 1)


@pytest.mark.parametrize("mode", [0o666, 0o620, 0o602, 0o660])
def test_a_file_others_may_write_is_refused(saved: Path, mode: int) -> None:
    saved.chmod(mode)
    with pytest.raises(StateFileError, match="writable by other users than its owner"):
        read_state(str(saved), 100)


@pytest.mark.parametrize("mode", [0o600, 0o644, 0o400])
def test_a_file_only_its_owner_may_write_is_read(saved: Path, mode: int) -> None:
    saved.chmod(mode)
    assert read_state(str(saved), 100) == OLD


@as_root
def test_a_file_of_another_user_is_read_only_if_others_may_not_write_it(saved: Path) -> None:
    """After a start as root, the daemon hands its state over to its own user (privileges.py):
    at the next start, as root again, that user's file is its own state, not a foreign one. A
    file that anyone but its owner may have written is."""
    nobody = pwd.getpwnam("nobody")
    os.chown(saved, nobody.pw_uid, nobody.pw_gid)
    assert read_state(str(saved), 100) == OLD
    saved.chmod(0o622)
    with pytest.raises(StateFileError, match="writable by other users"):
        read_state(str(saved), 100)


def test_state_paths_follow_systemd_state_directory() -> None:
    assert state_path("auto", "x.bin", {}) is None
    assert state_path("auto", "x.bin", {"STATE_DIRECTORY": ""}) is None
    assert state_path("auto", "x.bin", {"STATE_DIRECTORY": "/var/lib/a:/var/lib/b"}) == (
        "/var/lib/a/x.bin"
    )
    assert state_path("/tmp/c.bin", "x.bin", {"STATE_DIRECTORY": "/x"}) == "/tmp/c.bin"
    assert state_path(None, "x.bin", {"STATE_DIRECTORY": "/x"}) is None
    assert state_path("", "x.bin", {"STATE_DIRECTORY": "/x"}) is None
