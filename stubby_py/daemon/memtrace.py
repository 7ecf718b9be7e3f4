"""Where memory goes, for whoever hunts a leak: tracemalloc snapshot diffs on SIGUSR1.

Off unless STUBBY_PY_TRACEMALLOC names a file: then tracing starts with the daemon (keeping
STUBBY_PY_TRACEMALLOC_FRAMES frames per allocation, 1 by default: tracing slows every allocation,
more frames slow it more) and each SIGUSR1 appends to that file the allocations that grew most
since the first SIGUSR1 (the baseline: send one after warm-up) and since the previous one. The
query path is untouched: nothing here runs unless the variable is set.

STUBBY_PY_MALLINFO names another file (with or without tracemalloc): each SIGUSR1 appends one
JSON line of glibc's mallinfo2 (the C heap: main arena from brk, mmapped blocks, bytes in use and
free in chunks, the releasable top), to tell growth in use from fragmentation.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import signal
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

from stubby_py.daemon.heap import mallinfo

if TYPE_CHECKING:
    import tracemalloc

log = logging.getLogger(__name__)

ENV_FILE = "STUBBY_PY_TRACEMALLOC"
ENV_FRAMES = "STUBBY_PY_TRACEMALLOC_FRAMES"
if os.environ.get(ENV_FILE):
    # only when asked for (with pickle it is ~0.5 MiB resident), and at import, before the
    # daemon drops privileges: the new user may not be able to read the standard library
    import tracemalloc
ENV_MALLINFO = "STUBBY_PY_MALLINFO"
TOP = 25
#: allocations of the tracer itself (tracemalloc.py) and of the import machinery are noise
IGNORED = (
    "tracemalloc.py",
    "<frozen importlib._bootstrap>",
    "<frozen importlib._bootstrap_external>",
)


class SnapshotDiffs:
    def __init__(self, path: str, frames: int) -> None:
        self.path = path
        self.frames = frames
        self._baseline: tracemalloc.Snapshot | None = None
        self._previous: tracemalloc.Snapshot | None = None

    def dump(self) -> None:
        import tracemalloc

        gc.collect()
        snapshot = tracemalloc.take_snapshot().filter_traces(
            [tracemalloc.Filter(False, f"*{name}") for name in IGNORED]
        )
        key = "traceback" if self.frames > 1 else "lineno"
        lines = [f"=== {time.strftime('%H:%M:%S')} traced {tracemalloc.get_traced_memory()[0]} B"]
        bases = (("since the baseline", self._baseline), ("since the last", self._previous))
        for label, base in bases:
            if base is None:
                continue
            lines.append(f"--- top {TOP} growth {label}")
            for stat in snapshot.compare_to(base, key)[:TOP]:
                lines.append(str(stat))
                if self.frames > 1:
                    lines += [f"      {line}" for line in stat.traceback.format()]
        if self._baseline is None:
            self._baseline = snapshot
            lines.append("(baseline taken)")
        self._previous = snapshot
        with open(self.path, "a", encoding="utf-8") as out:
            out.write("\n".join(lines) + "\n")


def _rss_bytes() -> int:
    with open("/proc/self/statm", encoding="ascii") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class MallinfoLines:
    def __init__(self, path: str) -> None:
        self.path = path

    def dump(self) -> None:
        record: dict[str, object] = {"time": time.time(), "rss": _rss_bytes()}
        record["mallinfo2"] = mallinfo()
        with open(self.path, "a", encoding="utf-8") as out:
            out.write(json.dumps(record) + "\n")


def start_if_asked(loop: asyncio.AbstractEventLoop, env: Mapping[str, str] = os.environ) -> bool:
    dumps = []
    if path := env.get(ENV_MALLINFO):
        dumps.append(MallinfoLines(path).dump)
        log.warning("SIGUSR1 appends mallinfo2 lines to %s", path)
    if path := env.get(ENV_FILE):
        import tracemalloc

        frames = int(env.get(ENV_FRAMES, "1"))
        tracemalloc.start(frames)
        dumps.append(SnapshotDiffs(path, frames).dump)
        log.warning(
            "tracemalloc on (%d frames): SIGUSR1 appends snapshot diffs to %s", frames, path
        )
    if not dumps:
        return False

    def dump_all() -> None:
        for dump in dumps:
            dump()

    loop.add_signal_handler(signal.SIGUSR1, dump_all)
    return True
