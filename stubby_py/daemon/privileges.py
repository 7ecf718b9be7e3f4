"""Run as an unprivileged user of our own once the sockets are bound (started as root without
systemd).

Whoever shares the daemon's user can signal it (SIGUSR2 flushes, SIGHUP reloads), use its control
socket, read its query log and replace its cache file. So the daemon runs as a user no other
program runs as: `user: auto` (the default) is the system user `stubby-py`, created like a
package would create it (useradd --system) when it is missing. A configured user must work or the
daemon does not start: one that does not exist, `nobody` (shared by unrelated daemons by design),
or one that could not read what the daemon needs later is an error. Root is kept only when asked
for (`user: root`, or null: stay whoever started it), with one exception for `auto`: when no
unprivileged user could read the Python installation (a virtual environment under /root, as
`pip install .` on Debian 12 makes), the daemon stays root and says what is in the way, so the
first command of the README keeps working.

The listening sockets, the control socket and the query log are opened while still root and stay
open; what the daemon must still write as the new user — the directory the cache file is saved
into (atomically, by rename), the control socket's own directory — is handed over first, but only
when it is missing (then created) or plainly dedicated to us (it holds nothing but our files):
a shared directory such as /tmp or /var/cache is never chowned, and a warning says what will not
work. Then supplementary groups, group and user change, the change is checked to be
irreversible, and the process is made non-dumpable (no ptrace, no /proc/PID/fd or mem for
anyone but root).

Before any of that, the files the daemon reads again later — CA files (TLS contexts are made at
connect time), the configuration (reload), and the Python modules themselves (some are imported on
first use) — must be readable by the user.
"""

from __future__ import annotations

import ctypes
import logging
import os
import pwd
import shutil
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass

from stubby_py.core.errors import StubbyError

log = logging.getLogger(__name__)

#: `user: auto`: the system user of our own (also the name systemd's DynamicUser= gives the unit)
AUTO_USER = "stubby-py"
#: users that unrelated programs run as, by design: never ours to run as
SHARED_USERS = frozenset({"nobody", "nfsnobody"})
SHARED_UIDS = frozenset({65534})
#: a uid no file belongs to: what any unprivileged user may read (checked before creating one)
_ANYONE = -1
#: prctl(2) option
_PR_SET_DUMPABLE = 4


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
    reads again later, which the user must be able to read. PrivilegeError when a configured
    user cannot be switched to (see the module's docstring)."""
    if os.geteuid() != 0:
        return False
    if user is None or user == "root":
        log.info("running as root, as configured (user: %s)", user or "null")
        return False
    needed = [*needs, *module_directories()]
    entry = _auto_user(needed) if user == "auto" else _configured_user(user, needed)
    if entry is None:
        return False
    name, uid, gid = entry.pw_name, entry.pw_uid, entry.pw_gid
    for handover in handovers:
        _hand_over(handover, uid, gid)
    os.initgroups(name, gid)
    os.setgid(gid)
    os.setuid(uid)
    try:
        os.setuid(0)
    except PermissionError:
        pass
    else:  # pragma: no cover - the kernel would have to ignore setuid()
        raise PrivilegeError("could not give up root: setuid(0) still works")
    _make_undumpable()
    log.info("running as user %s (uid %d, gid %d)", name, uid, gid)
    return True


def _configured_user(user: str, needed: list[str]) -> pwd.struct_passwd | None:
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise PrivilegeError(
            f"user {user!r} does not exist: create it (useradd --system --no-create-home {user}), "
            "or leave `user:` out (auto: a user of its own, stubby-py)"
        ) from None
    if entry.pw_uid == 0:
        log.info("running as root, as configured (user: %s)", user)
        return None
    if user in SHARED_USERS or entry.pw_uid in SHARED_UIDS:
        raise PrivilegeError(
            f"user {user!r} is shared with other programs, any of which could then flush or "
            "reload this daemon, read its query log or plant a cache file: leave `user:` out "
            "(auto: a user of its own, stubby-py) or name a user that only this daemon uses"
        )
    groups = set(os.getgrouplist(user, entry.pw_gid))
    blocked = unreadable(needed, entry.pw_uid, groups)
    if blocked:
        raise PrivilegeError(
            f"user {user!r} could not read {blocked[0]}, which the daemon needs after the "
            "switch: make it readable, or set `user:` to another user (root: stay root)"
        )
    return entry


def _auto_user(needed: list[str]) -> pwd.struct_passwd | None:
    """The user of our own, created if missing; None (staying root, with a warning) when no
    unprivileged user could run the daemon or the user cannot be created."""
    try:
        entry: pwd.struct_passwd | None = pwd.getpwnam(AUTO_USER)
    except KeyError:
        entry = None
    if entry is not None and (entry.pw_uid == 0 or entry.pw_uid in SHARED_UIDS):
        raise PrivilegeError(
            f"user {AUTO_USER!r} has uid {entry.pw_uid}: it must be a user of its own"
        )
    uid, groups = _ANYONE, set()
    if entry is not None:
        uid, groups = entry.pw_uid, set(os.getgrouplist(AUTO_USER, entry.pw_gid))
    blocked = unreadable(needed, uid, groups)
    if blocked:
        log.warning(
            "staying root: an unprivileged user could not read %s, which is needed after the "
            "switch; install stubby-py where others may read it (not under /root), or set "
            "`user: root` to run as root without this warning",
            blocked[0],
        )
        return None
    return entry if entry is not None else _create_user(AUTO_USER)


def _create_user(name: str) -> pwd.struct_passwd | None:
    """useradd --system, as a package's installation would; None (and a warning) on failure."""
    search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    useradd = shutil.which("useradd", path=search)
    shell = shutil.which("nologin", path=search) or "/bin/false"
    why = "useradd not found"
    if useradd is not None:
        command = [
            useradd, "--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent",
            "--shell", shell, "--comment", "stubby-py DNS forwarder", name,
        ]  # fmt: skip
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=30)
            why = result.stderr.strip() or f"useradd exited with {result.returncode}"
        except (OSError, subprocess.SubprocessError) as exc:
            why = str(exc)
    try:
        entry = pwd.getpwnam(name)  # made now, or by another instance meanwhile
    except KeyError:
        log.warning(
            "staying root: there is no user %s and it could not be created (%s); create it "
            "(useradd --system --no-create-home %s), or set `user:` to a user of its own "
            "(root: stay root without this warning)",
            name,
            why,
            name,
        )
        return None
    log.info("created the system user %s (uid %d) to run as", name, entry.pw_uid)
    return entry


def _make_undumpable() -> None:
    """No core dumps, no ptrace and no /proc/PID/{fd,mem,environ} for other processes of the
    same user (the kernel usually does this on setuid already; fs.suid_dumpable may not)."""
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        log.warning("prctl(PR_SET_DUMPABLE, 0) failed: %s", os.strerror(ctypes.get_errno()))


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
