"""The local control socket: one JSON request per line in, one JSON reply per line out.

A unix stream socket, created with mode 0600 (only its owner — root or the service user — may
use it). Commands are registered by the daemon: `stats`, `flush` (all, or one name), `reload`,
`explain` (one question through the query path, traced: `explain_handler`).
The client side (`request`) is what `stubby-py stats|flush|reload|explain` use.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import socket
import stat
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from stubby_py.daemon.query_path import Resolver

log = logging.getLogger(__name__)

Handler = Callable[[Mapping[str, Any]], Awaitable[dict[str, Any]]]
MAX_REQUEST = 64 * 1024
#: how long the client waits for a reply (seconds)
REQUEST_TIMEOUT = 10.0
#: `explain` runs a question through the query path: the daemon may take up to its `timeout`
#: (at most 30 s) and 2 s more before it replies
EXPLAIN_TIMEOUT = 40.0


def default_path() -> str:
    """$RUNTIME_DIRECTORY under systemd, else /run/stubby-py when writable, else the user's
    $XDG_RUNTIME_DIR, else a directory of our own under /tmp (see `private_directory`)."""
    runtime = os.environ.get("RUNTIME_DIRECTORY")
    if runtime:
        return os.path.join(runtime.split(":")[0], "control.sock")
    if os.access("/run", os.W_OK):
        return "/run/stubby-py/control.sock"
    user_runtime = os.environ.get("XDG_RUNTIME_DIR")
    if user_runtime and os.path.isabs(user_runtime):
        return os.path.join(user_runtime, "stubby-py", "control.sock")
    return f"/tmp/stubby-py-{os.getuid()}/control.sock"


def private_directory(directory: str) -> None:
    """Make the socket's directory (mode 0700), or check that the one there may be used.

    Where others may create entries (/tmp), a directory of that name may be anyone's: one owned
    by another user, writable by others, or a symbolic link to elsewhere is never used (OSError
    EPERM): its owner (or anyone who may write in it) could replace our socket or listen in its
    place."""
    parent = os.path.dirname(os.path.abspath(directory))
    os.makedirs(parent, mode=0o700, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        os.mkdir(directory, 0o700)
    parent_info = os.stat(parent)
    shared = parent_info.st_mode & 0o022 or parent_info.st_uid not in (0, os.geteuid())
    info = os.lstat(directory)
    if not stat.S_ISDIR(info.st_mode):
        raise OSError(errno.ENOTDIR, "not a directory (a link or a file is never followed)")
    if shared and (info.st_uid != os.geteuid() or info.st_mode & 0o022):
        raise OSError(
            errno.EPERM,
            f"not ours (owner uid {info.st_uid}, mode {stat.S_IMODE(info.st_mode):o}; "
            f"this daemon is uid {os.geteuid()} and only it may write there): remove it, or "
            "set control_socket",
        )


class ControlServer:
    def __init__(self, path: str, handlers: Mapping[str, Handler]) -> None:
        self.path = path
        self._handlers = dict(handlers)
        self._server: asyncio.AbstractServer | None = None
        self._inode: tuple[int, int] | None = None

    @property
    def commands(self) -> list[str]:
        return sorted(self._handlers)

    async def start(self) -> None:
        """Listen on the path; a stale socket there is replaced, a live one (another daemon's)
        is left alone and OSError(EADDRINUSE) raised."""
        private_directory(os.path.dirname(os.path.abspath(self.path)))
        if _answers(self.path):
            raise OSError(errno.EADDRINUSE, "another daemon is answering on it", self.path)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        old_umask = os.umask(0o177)
        try:
            self._server = await asyncio.start_unix_server(self._serve, self.path)
        finally:
            os.umask(old_umask)
        info = os.stat(self.path)
        self._inode = (info.st_dev, info.st_ino)

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        # remove the socket only if it is still ours (not one a later daemon put there)
        with contextlib.suppress(OSError):
            info = os.stat(self.path)
            if (info.st_dev, info.st_ino) == self._inode:
                os.unlink(self.path)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await reader.readline()
            reply = await self._dispatch(line)
            writer.write(json.dumps(reply).encode() + b"\n")
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def _dispatch(self, line: bytes) -> dict[str, Any]:
        if len(line) > MAX_REQUEST:
            return {"ok": False, "error": "request too large"}
        try:
            request = json.loads(line)
            command = request["command"]
        except (ValueError, KeyError, TypeError):
            return {"ok": False, "error": 'expected a JSON object with a "command"'}
        handler = self._handlers.get(command)
        if handler is None:
            known = ", ".join(sorted(self._handlers))
            return {"ok": False, "error": f"unknown command {command!r}; known: {known}"}
        try:
            return {"ok": True, **await handler(request)}
        except Exception as exc:  # a failing command must not take the daemon down
            log.exception("control command %s failed", command)
            # str() of some (TimeoutError) is empty: the class still says what happened
            return {"ok": False, "error": str(exc) or type(exc).__name__}


def explain_handler(resolver: Resolver) -> Handler:
    """`explain`: {"name": NAME, "type": "A", "do": false} → {"explain": the trace as a dict}."""

    async def explain(request: Mapping[str, Any]) -> dict[str, Any]:
        import dns.exception
        import dns.rdatatype

        name, rdtype = request.get("name"), request.get("type", "A")
        if not isinstance(name, str) or not isinstance(rdtype, str):
            return {"ok": False, "error": "name and type: expected strings"}
        from stubby_py.daemon.explain import explain as trace_question

        try:
            qtype = dns.rdatatype.from_text(rdtype)
            trace = await trace_question(resolver, name, qtype, do=bool(request.get("do")))
        except dns.exception.DNSException as exc:
            return {"ok": False, "error": f"{name} {rdtype}: {exc}"}
        return {"explain": trace.to_dict()}

    return explain


def _answers(path: str) -> bool:
    """True if something accepts connections on the unix socket at path."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        try:
            sock.connect(path)
        except OSError:
            return False
    return True


def portal_handler(resolver: Resolver) -> Handler:
    """`portal`: {"action": "status" | "open" | "close", "minutes": N} → the portal state
    (daemon/road.py)."""

    async def portal(request: Mapping[str, Any]) -> dict[str, Any]:
        road = resolver.road
        if road is None:
            return {"ok": False, "error": "the daemon keeps no portal state"}
        action = request.get("action", "status")
        if action == "open":
            minutes = request.get("minutes", 5)
            if not isinstance(minutes, int | float) or isinstance(minutes, bool) or minutes <= 0:
                return {"ok": False, "error": "minutes: expected a positive number"}
            return road.open_window(float(minutes) * 60)
        if action == "close":
            return road.close_window()
        if action == "status":
            return {"ok": True, **road.status()}
        return {"ok": False, "error": "action: expected status, open or close"}

    return portal


def timeout_for(command: str) -> float:
    """How long a client waits for the daemon's reply to command."""
    return EXPLAIN_TIMEOUT if command == "explain" else REQUEST_TIMEOUT


def request(
    path: str, command: str, timeout: float | None = None, **arguments: Any
) -> dict[str, Any]:
    """Send one command to a running daemon and return its reply (timeout: timeout_for).

    Raises TimeoutError when no reply comes in time, ConnectionError when the daemon closes
    the connection without one, other OSError (FileNotFoundError...) and ValueError (not JSON).
    """
    if timeout is None:
        timeout = timeout_for(command)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(path)
        sock.sendall(json.dumps({"command": command, **arguments}).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    if not data:
        raise ConnectionError("the daemon closed the connection without a reply")
    reply: dict[str, Any] = json.loads(data)
    return reply
