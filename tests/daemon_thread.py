"""Run the real daemon (listeners, resolver, transports) on loopback in a background thread."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import uvloop

from stubby_py.core.config import Config, parse_upstream_uri
from stubby_py.daemon.service import Daemon
from stubby_py.transports.datagram import OPENING_TASK


class DaemonThread:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.loop = uvloop.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.daemon = Daemon(config)

    @property
    def port(self) -> int:
        return self.daemon.bound[0][1]

    @property
    def resolver(self) -> Any:
        return self.daemon.resolver

    @property
    def runtime(self) -> Any:
        return self.daemon.runtime

    def start(self) -> DaemonThread:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.daemon.start(), self.loop).result(10)
        return self

    def call(self, func: Any, *args: Any) -> Any:
        """Run a plain function on the daemon's loop and return its result."""

        async def _call() -> Any:
            return func(*args)

        return asyncio.run_coroutine_threadsafe(_call(), self.loop).result(10)

    def stop(self) -> None:
        async def _stop() -> None:
            await self.daemon.stop()
            # as asyncio.run() does at the end: cancel what is left (connects, probes, timers)
            current = asyncio.current_task()
            rest = [t for t in asyncio.all_tasks() if t is not current]
            for task in rest:
                if task.get_name() != OPENING_TASK:  # it closes what it opens by itself
                    task.cancel()
            await asyncio.gather(*rest, return_exceptions=True)
            await asyncio.sleep(0.05)  # let closed transports finish closing

        asyncio.run_coroutine_threadsafe(_stop(), self.loop).result(15)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        self.loop.close()


def make_config(upstreams: list[str], ca_file: str | None = None, **changes: Any) -> Config:
    return Config.from_options(
        listen=(("127.0.0.1", 0),),
        upstreams=tuple(parse_upstream_uri(u) for u in upstreams),
        ca_file=ca_file,
        # upstreams in tests serve unsigned local data: DNSSEC tests turn validation on; tests
        # count the queries upstreams get: test_upstream_figures turns background probes on
        **{"control_socket": None, "dnssec": "off", "probe_interval": 0, **changes},
    )


@contextlib.contextmanager
def running_daemon(config: Config) -> Iterator[DaemonThread]:
    daemon = DaemonThread(config).start()
    try:
        yield daemon
    finally:
        daemon.stop()
