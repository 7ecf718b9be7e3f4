"""The daemon's state files (the cache, RFC 5011 trust-anchor state, the upstreams' bootstrap
addresses): where they live, how they are read and how they are written. File I/O only; what a
file holds is its owner's business (core/cache.py, dnssec/rfc5011.py, transports/bootstrap.py
turn it into bytes and back).

A state file is untrusted when read: a symbolic link is not followed, only a regular file is
read (a device or a FIFO is refused without blocking), one that others than its owner may write
is refused, and at most `limit` octets are read. It is written atomically: a private (0600)
temporary file in the same directory, fsync, rename over the old file, fsync of the directory;
a crash at any point leaves the old file or the new one, never a mix. Only a regular file (or
nothing) is replaced: a device, a FIFO or a symbolic link at the path is left as it is. The new
file belongs to whoever writes it, as any file made by the process.

This module stands outside the rings on purpose: the daemon and the transports (bootstrap) both
use it, and transports/ may not import daemon/. The pure rings (core/, dnssec/) never do.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import tempfile
from collections.abc import Mapping

#: what a state file's mode may not have: write permission for the group or others
_WRITABLE_BY_OTHERS = 0o022
_CHUNK = 1 << 20


class StateFileError(ValueError):
    """A state file refused as it is (a link, not a regular file, open to others, too large);
    the message says why. An OSError, by contrast, is a file that could not be read or written."""


def state_path(setting: str | None, name: str, environ: Mapping[str, str]) -> str | None:
    """Where a state file lives: `auto` means `name` in systemd's StateDirectory= when the daemon
    runs under it ($STATE_DIRECTORY, the first of a colon-separated list), else nowhere; a path
    is taken as it is; None (or empty): nowhere."""
    if setting != "auto":
        return setting or None
    state = environ.get("STATE_DIRECTORY", "").split(":")[0]
    return os.path.join(state, name) if state else None


def read_state(path: str, limit: int) -> bytes | None:
    """The file's content, or None when there is no file. StateFileError when the file is
    refused (see the module's docstring), OSError when it cannot be read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise StateFileError("a symbolic link (not followed)") from None
        raise
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise StateFileError("not a regular file")
        if info.st_mode & _WRITABLE_BY_OTHERS:
            raise StateFileError("writable by other users than its owner")
        if info.st_size > limit:
            raise StateFileError(f"{info.st_size} octets, more than the {limit} it may hold")
        chunks = []
        size = 0
        while chunk := os.read(fd, min(_CHUNK, limit + 1 - size)):
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:  # it grew while being read
                raise StateFileError(f"more than the {limit} octets it may hold")
        return b"".join(chunks)
    finally:
        os.close(fd)


def write_state(path: str, data: bytes, *, temporary_prefix: str | None = None) -> None:
    """Replace the file at `path` with `data` atomically (see the module's docstring).
    StateFileError when something other than a regular file is at `path` (it stays), OSError
    when the file cannot be written (the old one stays). Temporary files are named
    `temporary_prefix` + random (default: "." + the file's name + "."), in `path`'s directory."""
    directory = os.path.dirname(os.path.abspath(path))
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode):
            raise StateFileError("not a regular file (left as it is)")
    except FileNotFoundError:
        pass
    prefix = temporary_prefix or f".{os.path.basename(path)}."
    fd, temporary = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=directory)
    try:
        try:
            os.fchmod(fd, 0o600)  # mkstemp makes it so; said here, not assumed
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    _sync_directory(directory)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _sync_directory(directory: str) -> None:
    """Make the rename itself durable where the file system allows (the file is in place
    either way)."""
    with contextlib.suppress(OSError):
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
