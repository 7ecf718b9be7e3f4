"""Where memory goes, for whoever hunts a leak: tracemalloc snapshot diffs on SIGUSR1.

Off unless STUBBY_PY_TRACEMALLOC names a file: then tracing starts with the daemon (keeping
STUBBY_PY_TRACEMALLOC_FRAMES frames per allocation, 1 by default: tracing slows every allocation,
more frames slow it more) and each SIGUSR1 appends to that file the allocations that grew most
since the first SIGUSR1 (the baseline: send one after warm-up) and since the previous one. The
query path is untouched: nothing here runs unless the variable is set.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import tracemalloc

log = logging.getLogger(__name__)

ENV_FILE = "STUBBY_PY_TRACEMALLOC"
ENV_FRAMES = "STUBBY_PY_TRACEMALLOC_FRAMES"
if os.environ.get(ENV_FILE):
    # only when asked for (with pickle it is ~0.5 MiB resident), and at import, before the
    # daemon drops privileges: the new user may not be able to read the standard library
    import tracemalloc

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


def start_if_asked(loop: asyncio.AbstractEventLoop, env: Mapping[str, str] = os.environ) -> bool:
    path = env.get(ENV_FILE)
    if not path:
        return False
    import tracemalloc

    frames = int(env.get(ENV_FRAMES, "1"))
    tracemalloc.start(frames)
    diffs = SnapshotDiffs(path, frames)
    loop.add_signal_handler(signal.SIGUSR1, diffs.dump)
    log.warning("tracemalloc on (%d frames): SIGUSR1 appends snapshot diffs to %s", frames, path)
    return True
