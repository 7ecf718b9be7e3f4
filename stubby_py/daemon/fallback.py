"""An upstream with fallbacks (config `fallback`) as one transport the upstream group asks.

The group (upstreams.py) sees one upstream: its pool, health and stats are the primary's name.
Inside, each exchange goes to the primary, or, while the primary cannot be connected to, to its
fallbacks (core/fallback.py decides when). The fallbacks' transports are built at first need, so
a daemon whose primaries connect never loads h2 for a DoH fallback.

Which queries a fallback answered is told to whoever asks: the query path puts a list in
ANSWERED_VIA for the question it resolves, and each exchange a fallback answers adds its label
there (the tasks the group starts share the list: a context copies the reference). The query
log and `explain` read it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from contextvars import ContextVar
from typing import Any

from stubby_py.core.config import Config, UpstreamSpec
from stubby_py.core.errors import UpstreamError
from stubby_py.core.fallback import FallbackPolicy, cannot_connect
from stubby_py.transports import make_transport
from stubby_py.transports.base import ConnectInfo, Transport, TransportStats

log = logging.getLogger(__name__)

#: the labels of the fallbacks that answered for the question being resolved (query_path.py)
ANSWERED_VIA: ContextVar[list[str] | None] = ContextVar("answered_via", default=None)


def make_upstream(spec: UpstreamSpec, config: Config) -> Transport:
    """The transport the group asks for one configured upstream."""
    primary = make_transport(spec, config)
    return FallbackTransport(primary, config) if spec.fallback else primary


class FallbackTransport:
    """The primary's transport, with its fallbacks standing in while it cannot be connected to."""

    def __init__(self, primary: Transport, config: Config) -> None:
        self.spec = primary.spec
        self.primary = primary
        #: the primary's: handshakes, resends (the fallbacks' own stay with them)
        self.stats: TransportStats = primary.stats
        self._config = config
        self._fallbacks: list[Transport | None] = [None] * len(primary.spec.fallback)
        self.policy = FallbackPolicy()
        self._probes: set[asyncio.Task[None]] = set()

    @property
    def name(self) -> str:
        return self.primary.name

    @property
    def is_encrypted(self) -> bool:
        return True

    @property
    def active(self) -> str | None:
        """The label of the fallback in use, None on the primary."""
        index = self.policy.active
        return None if index is None else self.spec.fallback[index].label

    def figures(self) -> dict[str, Any]:
        """For stats and metrics."""
        policy = self.policy
        return {"active": self.active, "switches": policy.switches, "answers": policy.answers}

    async def connect(self, deadline: float, *, fresh: bool = False) -> ConnectInfo:
        """The connection queries would take now: the primary's, or the fallback's in use."""
        index = self.policy.active
        transport = self.primary if index is None else self._fallback(index)
        return await transport.connect(deadline, fresh=fresh)

    async def exchange(self, query: bytes, deadline: float) -> bytes:
        loop = asyncio.get_running_loop()
        policy = self.policy
        if policy.active is None:
            try:
                reply = await self.primary.exchange(query, deadline)
            except UpstreamError as exc:
                if not cannot_connect(exc):
                    raise
                self._primary_unreachable(exc)
                if loop.time() >= deadline:
                    raise
            else:
                return reply
        elif policy.take_probe(loop.time()):
            self._probe(query, deadline)
        return await self._through_fallback(query, deadline)

    async def _through_fallback(self, query: bytes, deadline: float) -> bytes:
        policy = self.policy
        count = len(self._fallbacks)
        error: UpstreamError | None = None
        for _ in range(count):
            index = policy.active if policy.active is not None else 0
            transport = self._fallback(index)
            try:
                reply = await transport.exchange(query, deadline)
            except UpstreamError as exc:
                if not cannot_connect(exc) or asyncio.get_running_loop().time() >= deadline:
                    raise
                policy.fallback_failed(index, count)
                error = exc
                continue
            policy.answers += 1
            via = ANSWERED_VIA.get()
            if via is not None:
                via.append(transport.name)
            return reply
        assert error is not None
        raise error

    def _fallback(self, index: int) -> Transport:
        transport = self._fallbacks[index]
        if transport is None:
            transport = make_transport(self.spec.fallback[index], self._config)
            self._fallbacks[index] = transport
        return transport

    def _primary_unreachable(self, error: UpstreamError) -> None:
        now = asyncio.get_running_loop().time()
        if self.policy.primary_unreachable(now):
            log.warning(
                "upstream %s cannot be connected to (%s): asking its fallback %s until it can",
                self.name, error.kind, self.active,
            )  # fmt: skip

    def _probe(self, query: bytes, deadline: float) -> None:
        """Ask the primary this query aside: if it connects, queries go back to it."""

        async def probe() -> None:
            try:
                await self.primary.exchange(query, deadline)
            except UpstreamError as exc:
                if cannot_connect(exc):
                    self._primary_unreachable(exc)
                    return
                # reached: whatever else failed (a certificate, say) is the primary's to report
            if self.policy.primary_connected():
                log.warning("upstream %s can be connected to again: back to it", self.name)

        task = asyncio.get_running_loop().create_task(probe())
        self._probes.add(task)
        task.add_done_callback(self._probes.discard)

    def reset(self) -> None:
        self.policy.reset()
        self.primary.reset()
        for transport in self._fallbacks:
            if transport is not None:
                transport.reset()

    async def aclose(self) -> None:
        for task in list(self._probes):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, UpstreamError):
                await task
        await self.primary.aclose()
        for transport in self._fallbacks:
            if transport is not None:
                await transport.aclose()


def fallback_figures(transport: Transport) -> dict[str, Any]:
    """An upstream's fallback figures for the stats snapshot ({} without fallbacks)."""
    if isinstance(transport, FallbackTransport):
        return {"fallback": transport.figures()}
    return {}


_: type[Transport] = FallbackTransport
