"""The interface every upstream transport offers, and the counters each keeps.

Attempts and failures are not counted here: the upstream group's pool keeps them with the
upstream's health (core/pool.py), the one record of how each attempt ended."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from stubby_py.core.config import UpstreamSpec


@dataclass(slots=True)
class TransportStats:
    handshakes: int = 0
    #: replies dropped because their ID or question matched no query in flight
    mismatched: int = 0
    #: queries sent again because the connection they were on died under them
    resent: int = 0


class Transport(Protocol):
    """One upstream over one transport.

    exchange() takes a query with message ID 0, already padded if the transport is encrypted,
    and returns the reply to that question (ID and question checked), or raises UpstreamError.
    `deadline` is absolute, on the event loop's clock.
    """

    spec: UpstreamSpec
    stats: TransportStats

    @property
    def name(self) -> str: ...

    @property
    def is_encrypted(self) -> bool: ...

    async def exchange(self, query: bytes, deadline: float) -> bytes: ...

    def reset(self) -> None:
        """A network change or a resume (netwatch.py): take no later query over a connection
        opened before this call. Idle connections close at once;
        busy ones when their queries in flight are answered or time out."""
        ...

    async def aclose(self) -> None: ...
