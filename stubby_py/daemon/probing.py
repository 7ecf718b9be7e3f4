"""Background probing: every upstream of every group asked a popular name now and then, so the
figures of those that client queries do not reach (under `failover`, all but the first) stay
fresh. The policy (when, which name, how many at once) is core/probing.py; what a probe's
outcome does to health is core/pool.py's; this module only wakes up and starts them.

Probes are tasks of their own, at most core.probing.MAX_IN_FLIGHT at once, and no client query
waits on one. They go through the upstream group's transports as client queries do (padding,
proxy, bootstrap addresses). `probe_interval: 0` stops them (a reload may turn them on or off).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Hashable
from typing import TYPE_CHECKING

import dns.message

from stubby_py.core import wire
from stubby_py.core.probing import MAX_IN_FLIGHT, ProbeSchedule

if TYPE_CHECKING:
    from stubby_py.daemon.runtime import Runtime
    from stubby_py.daemon.upstreams import UpstreamGroup

log = logging.getLogger(__name__)

#: the longest sleep between two looks at the schedule (a reload is also told at once)
MAX_SLEEP = 60.0


class Prober:
    """Runs the schedule over the runtime's current upstream groups."""

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime
        self._schedule = ProbeSchedule(runtime.config.pool.probe_interval)
        self._loop = asyncio.get_running_loop()
        self._task: asyncio.Task[None] | None = None
        self._running: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()

    def start(self) -> None:
        self._task = self._loop.create_task(self._run())

    def reconfigured(self) -> None:
        """The configuration was reloaded: new groups, maybe a new interval."""
        self._schedule.configure(self._runtime.config.pool.probe_interval)
        self._wake.set()

    async def aclose(self) -> None:
        tasks = [t for t in (self._task, *self._running) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            self._start_due()
            next_at = self._schedule.next_at()
            sleep = MAX_SLEEP if next_at is None else next_at - self._loop.time()
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(MAX_SLEEP, max(0.0, sleep))):
                    await self._wake.wait()

    def _upstreams(self) -> dict[Hashable, tuple[UpstreamGroup, int]]:
        return {
            (name, index, transport.spec): (group, index)
            for name, group in self._runtime.resolver.groups.items()
            for index, transport in enumerate(group.transports)
        }

    def _start_due(self) -> None:
        upstreams = self._upstreams()
        now = self._loop.time()
        room = MAX_IN_FLIGHT - len(self._running)
        for key in self._schedule.due(upstreams, now, room):
            group, index = upstreams[key]
            self._schedule.started(key, now)
            query = wire.parse_query(dns.message.make_query(self._schedule.name(), "A").to_wire())
            task = self._loop.create_task(group.probe(index, query))
            self._running.add(task)
            task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("probe failed unexpectedly", exc_info=task.exception())
        self._wake.set()  # room for a probe that had to wait
