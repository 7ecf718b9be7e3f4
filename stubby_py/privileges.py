"""Run as an unprivileged user once the sockets are bound (started as root without systemd).

The listening sockets, the control socket and the query log are opened while still root and stay
open; what the daemon must still write as the new user — the directory the cache file is saved
into (atomically, by rename), the control socket's own directory — is handed over first, but only
when it is missing (then created) or plainly dedicated to us (it holds nothing but our files):
a shared directory such as /tmp or /var/cache is never chowned, and a warning says what will not
work. Then supplementary groups, group and user change, and the change is checked to be
irreversible.

Before any of that, the files the daemon reads again later — CA files (TLS contexts are made at
connect time), the configuration (reload), and the Python modules themselves (some are imported on
first use) — must be readable by the user. If one is not (Python installed under /root, a CA file
in a private directory), the daemon stays root and says which path is in the way: a daemon that
cannot connect to its upstreams after the switch would be worse.
"""

from __future__ import annotations

import logging
import os
import pwd
import sys
from collections.abc import Iterable
from dataclasses import dataclass

from stubby_py.errors import StubbyError

log = logging.getLogger(__name__)


class PrivilegeError(StubbyError):
    pass


@dataclass(frozen=True, slots=True)
class Handover:
    """A file the new user must be able to write (it is chowned when it exists) and, with
    `directory`, to replace or remove: its directory is handed over when it is missing or holds
    nothing but the file, `also` and temporary files starting `prefix`."""

    path: str
    directory: bool = True
    #: names other than the file's own that may be in a dedicated directory
    also: tuple[str, ...] = ()
    prefix: str = ""


def drop_privileges(
    user: str | None, handovers: Iterable[Handover] = (), needs: Iterable[str] = ()
) -> bool:
    """Become `user` if running as root; True if the user changed. `needs`: files the daemon
    reads again later, which the user must be able to read."""
    if user is None or os.geteuid() != 0:
        return False
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise PrivilegeError(
            f"user {user!r} does not exist: create it (useradd --system --no-create-home {user}) "
            "or set `user:` in the configuration (null: keep running as root)"
        ) from None
    uid, gid = entry.pw_uid, entry.pw_gid
    if uid == 0:
        return False
    groups = set(os.getgrouplist(user, gid))
    blocked = unreadable([*needs, *module_directories()], uid, groups)
    if blocked:
        log.warning(
            "staying root: user %s could not read %s, which is needed after the switch; make it "
            "readable, or set `user:` to another user (null: run as root without this warning)",
            user,
            blocked[0],
        )
        return False
    for handover in handovers:
        _hand_over(handover, uid, gid)
    os.initgroups(user, gid)
    os.setgid(gid)
    os.setuid(uid)
    try:
        os.setuid(0)
    except PermissionError:
        pass
    else:  # pragma: no cover - the kernel would have to ignore setuid()
        raise PrivilegeError("could not give up root: setuid(0) still works")
    log.info("running as user %s (uid %d, gid %d)", user, uid, gid)
    return True


def _hand_over(handover: Handover, uid: int, gid: int) -> None:
    if handover.directory:
        _hand_over_directory(handover, uid, gid)
    if os.path.lexists(handover.path):
        os.chown(handover.path, uid, gid, follow_symlinks=False)


def _hand_over_directory(handover: Handover, uid: int, gid: int) -> None:
    directory = os.path.dirname(os.path.abspath(handover.path))
    name = os.path.basename(handover.path)
    if not os.path.exists(directory):
        os.makedirs(directory, mode=0o700)
        os.chown(directory, uid, gid)
        return
    if _writable_by(os.stat(directory), uid, gid):
        return
    if _is_dedicated(directory, {name, *handover.also}, handover.prefix):
        os.chown(directory, uid, gid)
        return
    log.warning(
        "%s is not writable by the service user and holds other files, so it is left alone "
        "and %s cannot be replaced there: give the user a directory of its own",
        directory,
        name,
    )


def _permits(info: os.stat_result, uid: int, groups: set[int], bits: int) -> bool:
    """Whether the mode grants `bits` (4 read, 2 write, 1 search) to uid with these groups."""
    if info.st_uid == uid:
        mode = info.st_mode >> 6
    elif info.st_gid in groups:
        mode = info.st_mode >> 3
    else:
        mode = info.st_mode
    return mode & bits == bits


def _writable_by(info: os.stat_result, uid: int, gid: int) -> bool:
    return _permits(info, uid, {gid}, 2 | 1)


def module_directories() -> set[str]:
    """Directories Python loaded modules from (more may be imported from them later)."""
    found = set()
    for module in list(sys.modules.values()):
        path = getattr(module, "__file__", None)
        if isinstance(path, str):
            directory = os.path.dirname(path)
            if os.path.isdir(directory):
                found.add(directory)
    return found


def unreadable(paths: Iterable[str], uid: int, groups: set[int]) -> list[str]:
    """Those of `paths` that uid cannot reach and read (every directory above it searchable)."""
    verdicts: dict[str, bool] = {}

    def reachable(path: str, bits: int) -> bool:
        key = f"{bits}:{path}"
        if key not in verdicts:
            parent = os.path.dirname(path)
            try:
                info = os.stat(path)
            except OSError:
                verdicts[key] = True  # missing: nothing to read (the daemon reports that itself)
            else:
                up = parent == path or reachable(parent, 1)
                verdicts[key] = up and _permits(info, uid, groups, bits)
        return verdicts[key]

    blocked = []
    for path in sorted({os.path.abspath(p) for p in paths}):
        bits = 4 | 1 if os.path.isdir(path) else 4
        if not reachable(path, bits):
            blocked.append(path)
    return blocked


def _is_dedicated(directory: str, names: set[str], prefix: str) -> bool:
    try:
        present = os.listdir(directory)
    except OSError:
        return False
    return all(n in names or (prefix and n.startswith(prefix)) for n in present)
