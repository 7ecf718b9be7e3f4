"""The interface every upstream transport offers, and the counters each keeps.

Attempts and failures are not counted here: the upstream group's pool keeps them with the
upstream's health (core/pool.py), the one record of how each attempt ended."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from stubby_py.core.config import UpstreamSpec
from stubby_py.core.latency import Histogram


@dataclass(frozen=True, slots=True)
class ConnectInfo:
    """What one connect() measured. `reused`: a connection was open already, nothing was
    measured (handshake_s is then that connection's own handshake time)."""

    #: seconds from the first packet to a connection ready for queries (TCP+TLS, or QUIC); 0 for
    #: a transport with no connection (udp://)
    handshake_s: float
    #: TLS session ticket / QUIC resumption used for this handshake
    resumed: bool = False
    reused: bool = False
    #: "TLSv1.3", "QUIC", "TCP", "UDP"
    protocol: str = ""
    alpn: str | None = None
    cipher: str | None = None


@dataclass(slots=True)
class TransportStats:
    handshakes: int = 0
    #: handshakes that resumed an earlier session (a subset of `handshakes`)
    resumptions: int = 0
    #: the latest connection's set-up, and the latest full and resumed handshake times
    last_connect: ConnectInfo | None = None
    last_full_s: float | None = None
    last_resumed_s: float | None = None
    #: every handshake's time, full and resumed apart (Prometheus exports them)
    full_handshakes: Histogram = field(default_factory=Histogram)
    resumed_handshakes: Histogram = field(default_factory=Histogram)
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

    async def connect(self, deadline: float, *, fresh: bool = False) -> ConnectInfo:
        """Open the connection queries would use (or take the open one), and say what the
        set-up took. fresh: retire the open connection first (as reset() does), so a new one is
        opened, resuming the previous session where the transport keeps one."""
        ...

    def reset(self) -> None:
        """A network change or a resume (netwatch.py): take no later query over a connection
        opened before this call. Idle connections close at once;
        busy ones when their queries in flight are answered or time out."""
        ...

    async def aclose(self) -> None: ...
