"""Captive portals without a downgrade: which names may go to the network's own resolver, and
when. Decisions only, no I/O (daemon/road.py awaits).

A portal is *suspected* when, after a network change (start-up counts), none of the encrypted
upstreams can be reached while the network's resolver (core/network_resolver.py) answers. Then,
and for SUSPECT_BOUND seconds at most, the operating systems' connectivity-check names
(CHECK_NAMES) and the portal's own host, when the network announced one (RFC 8910), are resolved
through the network resolver, so that the system's "sign in to the network" page appears. Every
other name fails (SERVFAIL, with an Extended DNS Error saying a portal is suspected) and is never
sent to the network resolver. The suspicion ends when an upstream answers again.

For portals whose login page lives on some other host, the user may open a *window* (`stubby-py
portal open`): for WINDOW_DEFAULT seconds (at most WINDOW_MAX), ALL names go to the network
resolver. It closes when asked, when its time is up, or when an upstream answers again.

Answers through the network resolver never carry AD, are never cached here (and reach clients
with TTLs of at most PORTAL_TTL seconds), and are logged and counted.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from dns.edns import EDECode

from stubby_py.core.errors import UpstreamError

#: the connectivity-check names of NetworkManager (Ubuntu, GNOME, Debian, Arch, Fedora's
#: fedoraproject.org is left out: a whole project's name), Android/ChromeOS, Apple, Windows and
#: Firefox; lower case, absolute
CHECK_NAMES = frozenset(
    {
        "connectivity-check.ubuntu.com.",  # Ubuntu's NetworkManager
        "nmcheck.gnome.org.",  # GNOME's NetworkManager default
        "network-test.debian.org.",  # Debian's NetworkManager
        "ping.archlinux.org.",  # Arch's NetworkManager
        "connectivitycheck.gstatic.com.",  # Android, ChromeOS
        "connectivitycheck.android.com.",
        "clients3.google.com.",
        "captive.apple.com.",  # macOS, iOS
        "www.msftconnecttest.com.",  # Windows (NCSI)
        "ipv6.msftconnecttest.com.",
        "dns.msftncsi.com.",
        "www.msftncsi.com.",
        "detectportal.firefox.com.",  # Firefox
    }
)

#: how long a suspicion lets the check names through, seconds, without an upstream answering
SUSPECT_BOUND = 15 * 60.0
WINDOW_DEFAULT = 5 * 60.0
WINDOW_MAX = 30 * 60.0
#: the most TTL an answer through the network resolver reaches a client with, seconds
PORTAL_TTL = 10


class Route(enum.Enum):
    """Where a client's question goes."""

    UPSTREAM = "upstream"  # the normal path
    NETWORK = "network"  # the network's resolver (a check name, or the window is open)
    BLOCKED = "blocked"  # SERVFAIL: a portal is suspected, this name waits for the sign-in


@dataclass
class PortalState:
    enabled: bool = True
    #: loop time the suspicion began; None: no portal suspected
    suspected_since: float | None = None
    #: the portal's own host (RFC 8910 URI), resolved like a check name
    portal_host: str | None = None
    #: loop time the window closes; None: closed
    window_until: float | None = None
    #: names answered through the network resolver (this suspicion or window), with counts
    answered: dict[str, int] = field(default_factory=dict)
    #: for stats
    suspicions: int = 0
    windows: int = 0

    @property
    def suspected(self) -> bool:
        return self.suspected_since is not None

    @property
    def engaged(self) -> bool:
        """Anything other than the normal path may happen (the query path's cheap test)."""
        return self.suspected_since is not None or self.window_until is not None

    def suspect(self, now: float, portal_host: str | None = None) -> bool:
        """The upstreams cannot be reached and the network resolver answers. True when this
        starts a suspicion."""
        if not self.enabled or self.suspected_since is not None:
            return False
        self.portal_host = portal_host
        self.suspected_since = now
        self.answered = {}
        self.suspicions += 1
        return True

    def open_window(self, now: float, seconds: float) -> float:
        """The user's explicit window: all names to the network resolver until the time
        returned (seconds bounded by WINDOW_MAX)."""
        seconds = max(1.0, min(WINDOW_MAX, seconds))
        self.window_until = now + seconds
        self.windows += 1
        return self.window_until

    def close_window(self) -> bool:
        was_open = self.window_until is not None
        self.window_until = None
        return was_open

    def clear(self) -> bool:
        """An upstream answers again (or the network changed): back to the normal path. True
        when a suspicion or a window ended."""
        ended = self.engaged
        self.suspected_since = None
        self.window_until = None
        return ended

    def expire(self, now: float) -> list[str]:
        """End what has run out of time; what ended ("window", "suspicion")."""
        ended = []
        if self.window_until is not None and now >= self.window_until:
            self.window_until = None
            ended.append("window")
        if self.suspected_since is not None and now >= self.suspected_since + SUSPECT_BOUND:
            self.suspected_since = None
            ended.append("suspicion")
        return ended

    def route(self, qname: str, now: float) -> Route:
        """Where the question for `qname` (lower case, absolute) goes now."""
        if self.window_until is not None or self.suspected_since is not None:
            self.expire(now)
        if self.window_until is not None:
            return Route.NETWORK
        if self.suspected_since is None:
            return Route.UPSTREAM
        if qname in CHECK_NAMES or (self.portal_host is not None and qname == self.portal_host):
            return Route.NETWORK
        return Route.BLOCKED

    def note_answered(self, qname: str) -> bool:
        """A name answered through the network resolver; True the first time (to log it)."""
        count = self.answered.get(qname, 0)
        self.answered[qname] = count + 1
        return count == 0


BLOCKED_TEXT = (
    "captive portal suspected: the encrypted upstreams cannot be reached and the network's"
    " resolver answers; only the connectivity-check names resolve through it until you sign in"
    " (or `stubby-py portal open`)"
)


def cap_ttls(body: bytes, ttl_offsets: list[int], high: int = PORTAL_TTL) -> bytes:
    """Every TTL at most `high`: a client's own cache keeps a portal's answer no longer."""
    buf = bytearray(body)
    for offset in ttl_offsets:
        if int.from_bytes(buf[offset : offset + 4], "big") > high:
            buf[offset : offset + 4] = high.to_bytes(4, "big")
    return bytes(buf)


class PortalSuspectedError(UpstreamError):
    """What a name other than a check name gets while a portal is suspected."""

    kind = "captive-portal"
    ede = EDECode.NETWORK_ERROR
