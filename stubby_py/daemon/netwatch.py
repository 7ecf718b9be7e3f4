"""Network changes and resume from suspend: renew upstream connections, re-probe upstreams at once.

Every trigger calls `network_changed(resolver, reason)`: each transport retires its connections
(idle ones close at once, busy ones take no new query and close when their queries in flight are
answered or time out, so no later query travels on a connection opened before the change), each
pool forgets its backoff, and the cache stays: the daemon keeps answering from it meanwhile.

Triggers, on Linux:
- rtnetlink (rtnetlink(7)): link, IPv4/IPv6 address and route notifications on an AF_NETLINK
  socket read through the event loop. `RouteMonitor` (sans-IO) first dumps the links, addresses
  and routes there are, so that a notification repeating what it knows is no change: IPv6 Router
  Advertisements refresh address lifetimes (an RTM_NEWADDR each time), DHCP renewals re-add the
  same address, Wi-Fi scans send RTM_NEWLINK with unchanged flags. What cannot move the path to an
  upstream is ignored too: the loopback interface, host- and link-scope addresses (127/8, ::1,
  fe80::/10, 169.254/16), the local routing table, broadcast/multicast/local route types, cached
  (cloned) routes and IPv6 link-local routes. `Debouncer` (sans-IO) coalesces a burst (a Wi-Fi
  change sends dozens of messages) into one reset, DEBOUNCE_QUIET seconds after its last
  message and never more than DEBOUNCE_MAX seconds after its first.
- resume: `ResumeDetector` (sans-IO) compares how far CLOCK_BOOTTIME and CLOCK_MONOTONIC moved
  between two checks, every RESUME_CHECK_SECONDS; only BOOTTIME advances while suspended.

The same socket hears the Router Advertisement options the kernel passes on (RTM_NEWNDUSEROPT,
core/ra_options.py): they are no network change, and go to the road (daemon/road.py: the RA's
NAT64 prefix, RFC 8781, and captive-portal URI, RFC 8910), as does a link going down (what its
routers offered goes with it).

Elsewhere, or where netlink is not allowed, the triggers that cannot run are logged at debug level
and the daemon carries on without them.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import struct
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from stubby_py.core import ra_options
from stubby_py.core.ra_options import RouterOption

if TYPE_CHECKING:
    from stubby_py.core.config import Config
    from stubby_py.daemon.runtime import Runtime

log = logging.getLogger(__name__)

#: a burst ends after this long without a relevant message, seconds
DEBOUNCE_QUIET = 1.0
#: ... or this long after its first one, whatever keeps coming
DEBOUNCE_MAX = 5.0
#: how often the two clocks are compared, seconds of CLOCK_MONOTONIC
RESUME_CHECK_SECONDS = 3.0
#: BOOTTIME ahead of MONOTONIC by more than this since the last check: the machine slept
RESUME_THRESHOLD = 1.0
#: netlink datagrams read per wake-up before the event loop gets a turn again
MAX_READS = 64
RECEIVE_BUFFER = 1 << 20
#: distinct reasons named in one log line
MAX_REASONS = 4


def network_changed(resolver: Runtime, reason: str) -> None:
    """The one entry point of every trigger (netlink, resume, tests)."""
    resolver.network_changed(reason)
    road = getattr(resolver.resolver, "road", None)
    if road is not None:
        road.network_changed(reason)  # another network: its resolver, maybe a captive portal


def router_option(resolver: Runtime, option: RouterOption) -> None:
    road = getattr(resolver.resolver, "road", None)
    if road is not None:
        road.router_option(option)


def link_down(resolver: Runtime, ifindex: int) -> None:
    road = getattr(resolver.resolver, "road", None)
    if road is not None:
        road.link_down(ifindex)


# --- rtnetlink, sans I/O -------------------------------------------------------------------------

#: rtnetlink(7), netlink(7): message types and flags
NLMSG_NOOP, NLMSG_ERROR, NLMSG_DONE, NLMSG_OVERRUN = 1, 2, 3, 4
RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK = 16, 17, 18
RTM_NEWADDR, RTM_DELADDR, RTM_GETADDR = 20, 21, 22
RTM_NEWROUTE, RTM_DELROUTE, RTM_GETROUTE = 24, 25, 26
NLM_F_REQUEST, NLM_F_MULTI, NLM_F_DUMP = 0x1, 0x2, 0x300
RTMGRP_LINK = 0x1
RTMGRP_IPV4_IFADDR = 0x10
RTMGRP_IPV4_ROUTE = 0x40
RTMGRP_IPV6_IFADDR = 0x100
RTMGRP_IPV6_ROUTE = 0x400
RTMGRP_ND_USEROPT = 1 << (ra_options.RTNLGRP_ND_USEROPT - 1)
GROUPS = (
    RTMGRP_LINK
    | RTMGRP_IPV4_IFADDR
    | RTMGRP_IPV6_IFADDR
    | RTMGRP_IPV4_ROUTE
    | RTMGRP_IPV6_ROUTE
    | RTMGRP_ND_USEROPT
)
#: linux/if.h, linux/if_arp.h
IFF_UP, IFF_LOOPBACK, IFF_RUNNING = 0x1, 0x8, 0x40
ARPHRD_LOOPBACK = 772
#: linux/if_addr.h
IFA_ADDRESS, IFA_LOCAL, IFA_FLAGS = 1, 2, 8
IFA_F_DADFAILED, IFA_F_TENTATIVE = 0x08, 0x40
#: linux/if_link.h
IFLA_IFNAME = 3
#: linux/rtnetlink.h
RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_PRIORITY, RTA_MULTIPATH, RTA_TABLE = 1, 4, 5, 6, 9, 15
RT_SCOPE_LINK, RT_SCOPE_HOST = 253, 254
RT_TABLE_LOCAL = 255
RTN_UNICAST, RTN_BLACKHOLE, RTN_UNREACHABLE, RTN_PROHIBIT, RTN_THROW = 1, 6, 7, 8, 9
#: route types that say where packets to a destination go (not local, broadcast, multicast...)
PATH_ROUTE_TYPES = frozenset((RTN_UNICAST, RTN_BLACKHOLE, RTN_UNREACHABLE, RTN_PROHIBIT, RTN_THROW))
RTM_F_CLONED = 0x200
NLA_TYPE_MASK = 0x3FFF

NLMSGHDR = struct.Struct("=IHHII")  # length, type, flags, sequence, port ID
RTATTR = struct.Struct("=HH")  # length, type
IFINFOMSG = struct.Struct("=BxHiII")  # family, device type, index, flags, change mask
IFADDRMSG = struct.Struct("=BBBBI")  # family, prefix length, flags, scope, index
#: family, destination and source prefix lengths, TOS, table, protocol, scope, type, flags
RTMSG = struct.Struct("=BBBBBBBBI")
#: the family header each dump request carries (zeroed: every family, every interface)
DUMP_REQUESTS = (
    (RTM_GETLINK, IFINFOMSG.size),
    (RTM_GETADDR, IFADDRMSG.size),
    (RTM_GETROUTE, RTMSG.size),
)


def _align(length: int) -> int:
    return (length + 3) & ~3


@dataclass(frozen=True, slots=True)
class NetlinkMessage:
    type: int
    flags: int
    seq: int
    pid: int
    payload: bytes


def parse_messages(data: bytes) -> Iterator[NetlinkMessage]:
    """The messages of one netlink datagram (netlink(7)); stops at a truncated one."""
    offset = 0
    while offset + NLMSGHDR.size <= len(data):
        length, msg_type, flags, seq, pid = NLMSGHDR.unpack_from(data, offset)
        if length < NLMSGHDR.size or offset + length > len(data):
            return
        yield NetlinkMessage(
            msg_type, flags, seq, pid, data[offset + NLMSGHDR.size : offset + length]
        )
        offset += _align(length)


def parse_attributes(data: bytes, offset: int) -> dict[int, bytes]:
    """The route attributes (rtattr, TLV, 4-octet aligned) from `offset` on; the last of a type
    wins; stops at a truncated one."""
    attributes: dict[int, bytes] = {}
    while offset + RTATTR.size <= len(data):
        length, attr_type = RTATTR.unpack_from(data, offset)
        if length < RTATTR.size or offset + length > len(data):
            break
        attributes[attr_type & NLA_TYPE_MASK] = data[offset + RTATTR.size : offset + length]
        offset += _align(length)
    return attributes


def message(msg_type: int, body: bytes, flags: int = 0, seq: int = 0, pid: int = 0) -> bytes:
    """One netlink message, padded so that another may follow (for requests, and for tests)."""
    length = NLMSGHDR.size + len(body)
    return NLMSGHDR.pack(length, msg_type, flags, seq, pid) + body + bytes(_align(length) - length)


def attribute(attr_type: int, value: bytes) -> bytes:
    data = RTATTR.pack(RTATTR.size + len(value), attr_type) + value
    return data + bytes(_align(len(data)) - len(data))


def _u32(value: bytes | None) -> int:
    return int.from_bytes(value[:4], "little") if value is not None and len(value) >= 4 else 0


class RouteMonitor:
    """What the rtnetlink messages mean for the paths to upstreams: bytes in, changes out.

    `start()` (or `resync()` after lost messages) queues dump requests for links, addresses and
    routes, one at a time (a netlink socket runs one dump at once); send `data_to_send()` after
    each `receive()`. Replies to our dumps (our port ID and sequence number) teach the present
    state and are no change; every other message is compared against it. `receive()` returns a
    short reason per relevant change; Router Advertisement options and the interfaces that went
    down collect in `router_options` and `links_down` for the caller to take.
    """

    def __init__(self, portid: int = 0) -> None:
        #: our socket's netlink port ID: the kernel addresses dump replies to it
        self.portid = portid
        self._seq = 0
        self._dump_seq: int | None = None
        self._dumps: list[tuple[int, int]] = []
        self._outgoing = bytearray()
        self._names: dict[int, str] = {}
        self._loopbacks: set[int] = set()
        #: interface index → up and running
        self._links: dict[int, bool] = {}
        #: (index, family, prefix length, local, address) → usable (not tentative, DAD passed)
        self._addresses: dict[tuple[int, int, int, bytes, bytes], bool] = {}
        self._routes: set[tuple[Any, ...]] = set()
        self.router_options: list[RouterOption] = []
        self.links_down: list[int] = []

    @property
    def is_synced(self) -> bool:
        """Every dump is in: from here on, only real changes count."""
        return self._dump_seq is None and not self._dumps

    def start(self) -> None:
        self.resync()

    def resync(self) -> None:
        """Forget what is known and dump it all again (the socket lost messages: ENOBUFS).
        Interface names and loopback indexes stay: an index is not reused for another device."""
        self._links.clear()
        self._addresses.clear()
        self._routes.clear()
        self._dumps = list(DUMP_REQUESTS)
        self._dump_seq = None
        self._next_dump()

    def data_to_send(self) -> bytes:
        data = bytes(self._outgoing)
        self._outgoing.clear()
        return data

    def receive(self, data: bytes) -> list[str]:
        changes: list[str] = []
        for msg in parse_messages(data):
            if self._dump_seq is not None and msg.seq == self._dump_seq and msg.pid == self.portid:
                self._handle_dump_reply(msg)
            elif msg.type == NLMSG_OVERRUN:
                self.resync()
                changes.append("netlink messages lost")
            else:
                change = self._handle(msg)
                if change is not None:
                    changes.append(change)
        return changes

    def _next_dump(self) -> None:
        if not self._dumps:
            self._dump_seq = None
            return
        msg_type, header_size = self._dumps.pop(0)
        self._seq += 1
        self._dump_seq = self._seq
        flags = NLM_F_REQUEST | NLM_F_DUMP
        self._outgoing += message(msg_type, bytes(header_size), flags, self._seq, self.portid)

    def _handle_dump_reply(self, msg: NetlinkMessage) -> None:
        if msg.type in (NLMSG_DONE, NLMSG_ERROR):
            self._next_dump()  # an error leaves that part unknown: its messages all count
        else:
            self._handle(msg)

    def _handle(self, msg: NetlinkMessage) -> str | None:
        if msg.type in (RTM_NEWLINK, RTM_DELLINK):
            return self._handle_link(msg.type, msg.payload)
        if msg.type in (RTM_NEWADDR, RTM_DELADDR):
            return self._handle_address(msg.type, msg.payload)
        if msg.type in (RTM_NEWROUTE, RTM_DELROUTE):
            return self._handle_route(msg.type, msg.payload)
        if msg.type == ra_options.RTM_NEWNDUSEROPT:
            option = ra_options.parse_user_option(msg.payload)
            if option is not None:
                self.router_options.append(option)
        return None

    def _name(self, index: int) -> str:
        return self._names.get(index, f"interface {index}")

    def _handle_link(self, msg_type: int, payload: bytes) -> str | None:
        if len(payload) < IFINFOMSG.size:
            return None
        _family, device_type, index, flags, _change = IFINFOMSG.unpack_from(payload)
        name = parse_attributes(payload, IFINFOMSG.size).get(IFLA_IFNAME)
        if name is not None:
            self._names[index] = name.rstrip(b"\0").decode(errors="replace")
        if device_type == ARPHRD_LOOPBACK or flags & IFF_LOOPBACK:
            self._loopbacks.add(index)
            return None
        # only a link going up or down counts: its address and route messages say the rest
        was_running = self._links.pop(index, False)
        running = msg_type == RTM_NEWLINK and flags & (IFF_UP | IFF_RUNNING) == IFF_UP | IFF_RUNNING
        if msg_type == RTM_NEWLINK:
            self._links[index] = running
        if running == was_running:
            return None
        if not running:
            self.links_down.append(index)
        return f"{self._name(index)} {'up' if running else 'down'}"

    def _handle_address(self, msg_type: int, payload: bytes) -> str | None:
        if len(payload) < IFADDRMSG.size:
            return None
        family, prefix, flags, scope, index = IFADDRMSG.unpack_from(payload)
        # host and link scope (127/8, ::1, fe80::/10, 169.254/16) and the loopback interface
        # carry no path to an upstream
        if scope in (RT_SCOPE_HOST, RT_SCOPE_LINK) or index in self._loopbacks:
            return None
        attributes = parse_attributes(payload, IFADDRMSG.size)
        flags |= _u32(attributes.get(IFA_FLAGS))
        local, address = attributes.get(IFA_LOCAL, b""), attributes.get(IFA_ADDRESS, b"")
        key = (index, family, prefix, local, address)
        if msg_type == RTM_DELADDR:
            # one we never saw may have come while messages were lost: it counts
            counts = self._addresses.pop(key, True)
            return f"address removed on {self._name(index)}" if counts else None
        usable = not flags & (IFA_F_TENTATIVE | IFA_F_DADFAILED)
        was_usable = self._addresses.get(key)
        self._addresses[key] = usable
        if was_usable == usable or (was_usable is None and not usable):
            return None  # a lifetime refresh, or an address still in duplicate detection
        return f"address {'added' if usable else 'unusable'} on {self._name(index)}"

    def _handle_route(self, msg_type: int, payload: bytes) -> str | None:
        if len(payload) < RTMSG.size:
            return None
        family, dst_len, _src_len, tos, table, _proto, _scope, route_type, flags = (
            RTMSG.unpack_from(payload)
        )
        attributes = parse_attributes(payload, RTMSG.size)
        table = _u32(attributes.get(RTA_TABLE)) or table
        dst = attributes.get(RTA_DST, b"")
        oif = _u32(attributes.get(RTA_OIF))
        if (
            table == RT_TABLE_LOCAL
            or route_type not in PATH_ROUTE_TYPES
            or flags & RTM_F_CLONED
            or (family == socket.AF_INET6 and dst_len >= 10 and dst[:2] in _LINK_LOCAL_PREFIXES)
            or (route_type == RTN_UNICAST and oif in self._loopbacks)
        ):
            return None
        via = (
            attributes.get(RTA_GATEWAY),
            attributes.get(RTA_PRIORITY),
            attributes.get(RTA_MULTIPATH),
        )
        key = (family, table, dst_len, dst, tos, route_type, oif, via)
        if msg_type == RTM_DELROUTE:
            self._routes.discard(key)
            return "route removed"
        if key in self._routes:
            return None
        self._routes.add(key)
        return "route added"


#: the first two octets of fe80::/10
_LINK_LOCAL_PREFIXES = frozenset(bytes((0xFE, second)) for second in range(0x80, 0xC0))


class Debouncer:
    """Coalesces a burst of events into one action: due `quiet` seconds after the latest event,
    and no later than `max_delay` after the first, however long the burst goes on."""

    def __init__(self, quiet: float = DEBOUNCE_QUIET, max_delay: float = DEBOUNCE_MAX) -> None:
        self.quiet = quiet
        self.max_delay = max_delay
        self._first: float | None = None
        self._latest = 0.0
        self._reasons: dict[str, int] = {}

    @property
    def deadline(self) -> float | None:
        """When the action is due (None: no event waiting)."""
        if self._first is None:
            return None
        return min(self._latest + self.quiet, self._first + self.max_delay)

    def add(self, reasons: Iterable[str], now: float) -> float | None:
        """Note events (reasons empty: nothing happened); returns the new deadline."""
        for reason in reasons:
            if self._first is None:
                self._first = now
            self._latest = now
            self._reasons[reason] = self._reasons.get(reason, 0) + 1
        return self.deadline

    def take(self, now: float) -> str | None:
        """The burst's reasons in a line, once it is due; None before that (or without one)."""
        deadline = self.deadline
        if deadline is None or now < deadline:
            return None
        reasons = [f"{r} (x{n})" if n > 1 else r for r, n in self._reasons.items()]
        if len(reasons) > MAX_REASONS:
            reasons[MAX_REASONS:] = [f"{len(reasons) - MAX_REASONS} more"]
        self._first = None
        self._reasons = {}
        return ", ".join(reasons)


class ResumeDetector:
    """Tells a resume from suspend: CLOCK_BOOTTIME runs on while the machine sleeps,
    CLOCK_MONOTONIC stops. Both are slewed alike by NTP and neither can be set, so between two
    checks their advances differ by the time asleep and nothing else."""

    def __init__(self, threshold: float = RESUME_THRESHOLD) -> None:
        self.threshold = threshold
        self._last: tuple[float, float] | None = None

    def check(self, boottime: float, monotonic: float) -> float | None:
        """Seconds asleep since the previous check, if more than the threshold; else None."""
        last, self._last = self._last, (boottime, monotonic)
        if last is None:
            return None
        asleep = (boottime - last[0]) - (monotonic - last[1])
        return asleep if asleep > self.threshold else None


# --- the asyncio edge ----------------------------------------------------------------------------


class NetlinkWatcher:
    """An rtnetlink socket on the event loop: `on_change(reason)` once per burst of changes."""

    def __init__(
        self,
        on_change: Callable[[str], None],
        quiet: float = DEBOUNCE_QUIET,
        max_delay: float = DEBOUNCE_MAX,
        on_router_option: Callable[[RouterOption], None] | None = None,
        on_link_down: Callable[[int], None] | None = None,
    ) -> None:
        self._on_change = on_change
        self._on_router_option = on_router_option
        self._on_link_down = on_link_down
        self._loop = asyncio.get_running_loop()
        self._debouncer = Debouncer(quiet, max_delay)
        self._monitor = RouteMonitor()
        self._sock: socket.socket | None = None
        self._timer: asyncio.TimerHandle | None = None
        #: set once the first dumps are in (tests wait for it before changing the network)
        self.synced = asyncio.Event()

    def start(self) -> bool:
        """Subscribe; False (logged at debug level) where rtnetlink is unavailable."""
        try:
            sock = socket.socket(
                socket.AF_NETLINK,
                socket.SOCK_RAW | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC,
                socket.NETLINK_ROUTE,
            )
        except (AttributeError, OSError) as exc:  # AttributeError: not Linux
            log.debug("network changes not watched: no rtnetlink socket (%s)", exc)
            return False
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
            sock.bind((0, GROUPS))
            self._monitor.portid = sock.getsockname()[0]
            self._loop.add_reader(sock.fileno(), self._handle_readable)
        except (OSError, NotImplementedError) as exc:
            sock.close()
            log.debug("network changes not watched: rtnetlink (%s)", exc)
            return False
        self._sock = sock
        self._monitor.start()
        self._send()
        return True

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._sock is not None:
            self._loop.remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None

    def _send(self) -> None:
        data = self._monitor.data_to_send()
        if data and self._sock is not None:
            try:
                self._sock.sendto(data, (0, 0))
            except OSError as exc:
                # the dump is lost: what it would have taught stays unknown, and counts as news
                log.debug("rtnetlink dump request: %s", exc)

    def _handle_readable(self) -> None:
        for _ in range(MAX_READS):
            if self._sock is None:
                return
            try:
                data = self._sock.recv(65536)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    log.debug("rtnetlink: %s", exc)
                    break
                # the kernel dropped messages for us: learn the state again, assume a change
                self._monitor.resync()
                self._note(["netlink messages lost"])
            else:
                self._note(self._monitor.receive(data))
                self._pass_on()
            self._send()
        if self._monitor.is_synced:
            self.synced.set()

    def _pass_on(self) -> None:
        monitor = self._monitor
        options, monitor.router_options = monitor.router_options, []
        links, monitor.links_down = monitor.links_down, []
        if self._on_link_down is not None:
            for index in links:
                self._on_link_down(index)
        if self._on_router_option is not None:
            for option in options:
                self._on_router_option(option)

    def _note(self, reasons: list[str]) -> None:
        deadline = self._debouncer.add(reasons, self._loop.time())
        if reasons and deadline is not None:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = self._loop.call_at(deadline, self._fire)

    def _fire(self) -> None:
        self._timer = None
        now = self._loop.time()
        reasons = self._debouncer.take(now)
        if reasons is not None:
            self._on_change(reasons)
            return
        deadline = self._debouncer.deadline
        if deadline is not None:  # woken a little early (timer granularity): wait the rest
            self._timer = self._loop.call_later(max(0.001, deadline - now), self._fire)


class ResumeWatcher:
    """Checks the clocks every few seconds: `on_resume(reason)` after a suspend."""

    def __init__(
        self, on_resume: Callable[[str], None], interval: float = RESUME_CHECK_SECONDS
    ) -> None:
        self._on_resume = on_resume
        self._interval = interval
        self._loop = asyncio.get_running_loop()
        self._detector = ResumeDetector()
        self._timer: asyncio.TimerHandle | None = None

    def start(self) -> bool:
        """False (logged at debug level) where there is no CLOCK_BOOTTIME (not Linux)."""
        if not hasattr(time, "CLOCK_BOOTTIME"):
            log.debug("resume from suspend not watched: no CLOCK_BOOTTIME here")
            return False
        self._check()
        return True

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _check(self) -> None:
        asleep = self._detector.check(
            time.clock_gettime(time.CLOCK_BOOTTIME), time.clock_gettime(time.CLOCK_MONOTONIC)
        )
        self._timer = self._loop.call_later(self._interval, self._check)
        if asleep is not None:
            self._on_resume(f"resumed after about {asleep:.0f} s of suspend")


class NetworkWatch:
    """Both triggers, wired to `network_changed` for one resolver (the daemon's)."""

    def __init__(self, resolver: Runtime) -> None:
        self._resolver = resolver
        self.netlink = NetlinkWatcher(
            self._changed, on_router_option=self._router_option, on_link_down=self._link_down
        )
        self.resume = ResumeWatcher(self._changed)

    def start(self) -> None:
        self.netlink.start()
        self.resume.start()

    def close(self) -> None:
        self.netlink.close()
        self.resume.close()

    def _changed(self, reason: str) -> None:
        try:
            network_changed(self._resolver, reason)
        except Exception:  # a bug here must not stop the watching
            log.exception("network change (%s) not handled", reason)

    def _router_option(self, option: RouterOption) -> None:
        try:
            router_option(self._resolver, option)
        except Exception:
            log.exception("router advertisement option %d not handled", option.type)

    def _link_down(self, ifindex: int) -> None:
        try:
            link_down(self._resolver, ifindex)
        except Exception:
            log.exception("interface %d down: not handled", ifindex)


def start_watching(resolver: Runtime, config: Config) -> NetworkWatch | None:
    """The daemon's hook: watch unless the configuration says `watch_network: false`."""
    if not config.service.watch_network:
        log.debug("network changes not watched: watch_network is off")
        return None
    watch = NetworkWatch(resolver)
    watch.start()
    return watch
