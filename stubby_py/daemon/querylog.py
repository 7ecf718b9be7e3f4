"""The optional query log: one line per answered query, appended to a file; off by default.

A privacy choice, made by whoever sets `query_log`: it records which client asked for which name,
which stubby-py otherwise never writes anywhere. The file is created mode 0600, and opened
only if it is a regular file reached without a symbolic link at its own name.

Recording is cheap (a tuple appended to a list, on the query path); formatting and writing happen
in batches, at most `FLUSH_SECONDS` after a query or once `FLUSH_LINES` are waiting. If the file
cannot be written, lines are dropped (and counted), never queued without bound. One line:

    2026-11-24T05:11:34.123Z 192.168.1.20 www.example.com. A NOERROR upstream:quad9
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import stat
import time
from typing import TYPE_CHECKING

import dns.exception
import dns.name
from dns.rcode import Rcode
from dns.rdatatype import RdataType

from stubby_py.core import response, wire
from stubby_py.core.logthrottle import LogThrottle

if TYPE_CHECKING:
    from stubby_py.daemon.context import QueryContext

log = logging.getLogger(__name__)

FLUSH_SECONDS = 1.0
FLUSH_LINES = 512
#: lines waiting beyond this (the file unwritable) are dropped
MAX_PENDING = 65536

#: wall-clock time, client address, question (wire form), rcode, where the answer came from
_Entry = tuple[float, str, bytes, int, str]


def _open(path: str) -> int:
    """Open for appending, never through a symbolic link (ELOOP) and only a regular file: a link
    planted at the path would have the daemon write query names wherever it points, a FIFO
    would hand them to whoever reads it (O_NONBLOCK: opening one never waits for a reader)."""
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK
    try:
        fd = os.open(path, flags, 0o600)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise OSError(errno.ELOOP, "a symbolic link (not followed)", path) from None
        raise
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", path)
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


class QueryLog:
    def __init__(self, path: str) -> None:
        self.path = path
        self._fd = _open(path)
        self._pending: list[_Entry] = []
        self._timer: asyncio.TimerHandle | None = None
        self.written = 0
        self.dropped = 0
        self._failing = False
        #: dropped queries: a line per client and reason a second, not one per packet (a flood)
        self._drops = LogThrottle(interval=1.0)

    def answered(self, context: QueryContext, reply: bytes) -> None:
        """The query path's observer: a query was answered (query_path.QueryContext)."""
        self.record(context.client_ip, context.query, response.rcode_of(reply), context.source)

    def record(self, client_ip: str, query: wire.ClientQuery, rcode: int, source: str) -> None:
        """Note one query; source says where the answer came from ("cache", "upstream",
        "joined", "local", "stale", "held-failure", "rejected", ...); rcode -1 and source
        "dropped:WHY": dropped unanswered (see record_drop)."""
        pending = self._pending
        if len(pending) >= MAX_PENDING:
            self.dropped += 1
            return
        pending.append((time.time(), client_ip, query.question, rcode, source))
        if len(pending) >= FLUSH_LINES:
            self.flush()
        elif self._timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return  # no loop (tests, shutdown): the next flush() or close() writes it
            self._timer = loop.call_later(FLUSH_SECONDS, self.flush)

    def record_drop(self, client_ip: str, query: wire.ClientQuery, why: str) -> None:
        """A query dropped unanswered (the access list, the rate limit): one line per client
        and reason a second at most, saying how many were dropped since the last one."""
        held_back = self._drops.allow((client_ip, why), time.monotonic())
        if held_back is not None:
            more = f"(+{held_back})" if held_back else ""
            self.record(client_ip, query, -1, f"dropped:{why}{more}")

    def flush(self) -> None:
        """Write every waiting line now."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._pending or self._fd < 0:
            return
        entries, self._pending = self._pending, []
        data = "".join(format_line(*entry) for entry in entries).encode()
        try:
            while data:
                data = data[os.write(self._fd, data) :]
        except OSError as exc:
            self.dropped += len(entries)
            if not self._failing:
                log.warning("query log %s: lines dropped: %s", self.path, exc.strerror or exc)
            self._failing = True
            return
        self._failing = False
        self.written += len(entries)

    def reopen(self) -> None:
        """Start a new file at the same path (after logrotate moved the old one away). If that
        fails the old file stays in use."""
        self.flush()
        try:
            fd = _open(self.path)
        except OSError as exc:
            log.error("query log %s not reopened: %s", self.path, exc.strerror or exc)
            return
        os.close(self._fd)
        self._fd = fd

    def close(self) -> None:
        self.flush()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def format_line(when: float, client_ip: str, question: bytes, rcode: int, source: str) -> str:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(when))
    millis = int(when * 1000) % 1000
    qtype = int.from_bytes(question[-4:-2], "big")
    return (
        f"{stamp}.{millis:03d}Z {client_ip} {_name_text(question[:-4])} "
        f"{RdataType.to_text(qtype)} {Rcode.to_text(rcode) if rcode >= 0 else '-'} {source}\n"
    )


def _name_text(qname: bytes) -> str:
    """The question name as presentation text (escaped, so a name cannot forge a line)."""
    labels: list[bytes] = []
    pos = 0
    while pos < len(qname) and qname[pos]:
        size = qname[pos]
        if size > 63:
            return "<unreadable name>"
        labels.append(qname[pos + 1 : pos + 1 + size])
        pos += 1 + size
    try:
        return dns.name.Name([*labels, b""]).to_text()
    except dns.exception.DNSException:
        return "<unreadable name>"
