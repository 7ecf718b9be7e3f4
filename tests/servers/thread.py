"""`ServerThread`: an asyncio loop in a daemon thread, the base of every test server."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from typing import Any

from tests.servers.answers import ServerState


class ServerThread:
    """Subclasses start their servers in `_start` and stop them in `_stop`, on the loop."""

    def __init__(self) -> None:
        self.state = ServerState()
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def run(self, coroutine: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(5)

    def call(self, func: Callable[[], Any]) -> Any:
        async def _call() -> Any:
            return func()

        return self.run(_call())

    def start(self) -> Any:
        """Start serving; returns the server itself (typed Any so subclasses keep their type)."""
        self._thread.start()
        self.run(self._start())
        return self

    def stop(self) -> None:
        self.run(self._stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    async def _start(self) -> None:
        raise NotImplementedError

    async def _stop(self) -> None:
        raise NotImplementedError
