"""File descriptors, budgeted at start: what the daemon itself needs always fits under
RLIMIT_NOFILE, and the caps on what clients can open (TCP connections, metrics connections) take
only what is left.

Sans-IO apart from `raise_open_files_limit`: `plan` takes the daemon's needs, the configured caps
and the limit, and returns the caps to use, lowered (with the reason) where the configured ones do
not fit, or raises `FdBudgetError` when not even the daemon's own needs and a minimal TCP service
fit. Lowering rather than refusing, as Unbound does with its ports and TCP buffers: a DNS service
that starts with fewer TCP slots is better than none, and the log says what was lowered and why.

Without the budget a flood of connections (to the metrics endpoint, or TCP to port 53 with caps
above the limit) took the last descriptors, and the next upstream connection failed with EMFILE:
every query then answered SERVFAIL.
"""

from __future__ import annotations

import resource
from dataclasses import dataclass

from stubby_py.core.config import Config
from stubby_py.core.errors import StubbyError
from stubby_py.transports.plain import MAX_UDP_SOCKETS

#: the process itself: stdio, the event loop (epoll, wake-up pipes, eventfd), logging; measured
#: at 12 on Linux with uvloop. The rest is room for what is opened briefly: CA files when a
#: connection's TLS context is made, the configuration and trust anchors at reload, the cache
#: file at start and stop, modules imported late, and the connection over a cap that is
#: accepted only to be closed.
PROCESS_FDS = 32
#: each stream or QUIC upstream: its connection, one retiring (after a reset or a network change)
#: and the one opening to replace them
PER_UPSTREAM_FDS = 3
#: each plain udp:// upstream: a socket per query in flight, besides its TCP fallback connection
#: (PER_UPSTREAM_FDS)
PLAIN_UDP_SOCKETS = MAX_UDP_SOCKETS
#: the control socket: the listening socket and a few `stubby-py` commands at once
CONTROL_FDS = 1 + 8
#: fewer TCP slots for clients than this is no service: refuse to start
MIN_TCP_CONNECTIONS = 8


class FdBudgetError(StubbyError):
    pass


@dataclass(frozen=True, slots=True)
class Needs:
    """What the daemon holds open besides clients' connections."""

    listening_sockets: int
    #: stream and QUIC upstreams, across every group (plain udp:// ones count here too, for TCP)
    upstreams: int
    plain_udp_upstreams: int = 0
    control_socket: bool = False
    metrics: bool = False
    query_log: bool = False
    network_watch: bool = False

    @classmethod
    def of(cls, config: Config, listening_sockets: int) -> Needs:
        specs = [
            *config.forwarding.upstreams,
            *(s for _, group in config.forwarding.groups for s in group),
        ]
        return cls(
            listening_sockets=listening_sockets,
            upstreams=len(specs),
            plain_udp_upstreams=sum(1 for s in specs if s.transport == "udp"),
            control_socket=config.service.control_socket is not None,
            metrics=config.service.metrics_listen is not None,
            query_log=config.service.query_log is not None,
            network_watch=config.service.watch_network,
        )

    def reserved(self) -> dict[str, int]:
        """The descriptors held back for the daemon itself, by what they are for."""
        parts = {
            "process": PROCESS_FDS,
            "listeners": self.listening_sockets,
            "upstreams": self.upstreams * PER_UPSTREAM_FDS
            + self.plain_udp_upstreams * PLAIN_UDP_SOCKETS,
            "control": CONTROL_FDS if self.control_socket else 0,
            "metrics listener": 1 if self.metrics else 0,
            # two while a reload replaces it with another file
            "query log": 2 if self.query_log else 0,
            "netlink": 1 if self.network_watch else 0,
        }
        return {what: count for what, count in parts.items() if count}


@dataclass(frozen=True, slots=True)
class Caps:
    tcp_max_connections: int
    tcp_max_connections_per_client: int
    #: 0 when there is no metrics endpoint
    metrics_max_connections: int = 0

    @classmethod
    def of(cls, config: Config) -> Caps:
        return cls(
            config.listeners.tcp_max_connections,
            min(
                config.listeners.tcp_max_connections_per_client,
                config.listeners.tcp_max_connections,
            ),
            config.service.metrics_max_connections
            if config.service.metrics_listen is not None
            else 0,
        )

    def total(self) -> int:
        return self.tcp_max_connections + self.metrics_max_connections


@dataclass(frozen=True, slots=True)
class Plan:
    limit: int
    reserved: dict[str, int]
    caps: Caps
    #: one sentence per cap lowered, saying from what, to what and why
    lowered: tuple[str, ...] = ()

    @property
    def spare(self) -> int:
        return self.limit - sum(self.reserved.values()) - self.caps.total()

    def describe(self) -> str:
        reserved = ", ".join(f"{what} {count}" for what, count in self.reserved.items())
        caps = self.caps
        metrics = (
            f", {caps.metrics_max_connections} metrics connections"
            if caps.metrics_max_connections
            else ""
        )
        return (
            f"file descriptors: limit {self.limit}; {sum(self.reserved.values())} for the daemon "
            f"({reserved}), {caps.tcp_max_connections} client TCP connections "
            f"({caps.tcp_max_connections_per_client} per client){metrics}; {self.spare} spare"
        )


def plan(needs: Needs, wanted: Caps, limit: int) -> Plan:
    """The caps to use under `limit` open files: `wanted` if they fit; else metrics connections
    lowered first (to 1 at least), then client TCP connections (the per-client cap keeping its
    share of the total); FdBudgetError if fewer than MIN_TCP_CONNECTIONS would be left."""
    reserved = needs.reserved()
    room = limit - sum(reserved.values())
    why = f"RLIMIT_NOFILE is {limit} and the daemon keeps {sum(reserved.values())} for itself"
    metrics_floor = 1 if wanted.metrics_max_connections else 0
    if room - metrics_floor < MIN_TCP_CONNECTIONS:
        raise FdBudgetError(
            f"the open files limit ({limit}) is too low: the daemon needs "
            f"{sum(reserved.values())} descriptors for itself "
            f"({', '.join(f'{w} {c}' for w, c in reserved.items())}) and at least "
            f"{MIN_TCP_CONNECTIONS + metrics_floor} for clients; raise it "
            "(ulimit -n, or LimitNOFILE= in the service unit)"
        )
    lowered: list[str] = []
    metrics = min(wanted.metrics_max_connections, max(metrics_floor, room - MIN_TCP_CONNECTIONS))
    if metrics < wanted.metrics_max_connections:
        lowered.append(
            f"metrics_max_connections lowered from {wanted.metrics_max_connections} to "
            f"{metrics}: {why}"
        )
    tcp = min(wanted.tcp_max_connections, room - metrics)
    per_client = wanted.tcp_max_connections_per_client
    if tcp < wanted.tcp_max_connections:
        per_client = max(1, min(per_client, per_client * tcp // wanted.tcp_max_connections))
        lowered.append(
            f"tcp_max_connections lowered from {wanted.tcp_max_connections} to {tcp}: {why}"
        )
        if per_client < wanted.tcp_max_connections_per_client:
            lowered.append(
                "tcp_max_connections_per_client lowered from "
                f"{wanted.tcp_max_connections_per_client} to {per_client}, its share of the total"
            )
    return Plan(limit, reserved, Caps(tcp, per_client, metrics), tuple(lowered))


#: what the kernel allows at most without fs.nr_open raised: "unlimited" means this
NR_OPEN = 1 << 20


def raise_open_files_limit() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit, as servers do; return (before, after).
    The event loop uses epoll, so a high descriptor number costs nothing."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    before = NR_OPEN if soft == resource.RLIM_INFINITY else soft
    target = NR_OPEN if hard == resource.RLIM_INFINITY else hard
    if before >= target:
        return before, before
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError):
        return before, before
    return before, target
