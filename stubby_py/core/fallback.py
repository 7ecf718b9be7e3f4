"""When an upstream's fallback stands in for it (config `fallback`): decisions only, no I/O.

A fallback is another encrypted, verified door to the same resolver (a DoT upstream's DoH on
port 443, for networks that block port 853). It is used only while the primary *cannot be
connected to*: refused, no route, or no answer to the connect. An upstream that was reached and
could not be trusted (TLS handshake, certificate, pin, ALPN) is never routed around: that is
what an attacker in the path would provoke, and it stays a hard error the user sees. Nor is a
SERVFAIL, a timeout on a working connection or garbage a reason: the primary answered.

While on a fallback the primary is tried again aside (a probe with a client's query, nobody
waiting on it) when its backoff ends: FIRST_BACKOFF seconds, doubling to MAX_BACKOFF. A network
change (`reset`) forgets all of it: the next query tries the primary first.
"""

from __future__ import annotations

from stubby_py.core.errors import (
    ALPNMismatchError,
    BootstrapError,
    CertificateError,
    PinMismatchError,
    ProxyError,
    TLSConfigError,
    TLSHandshakeError,
    UpstreamConnectError,
    UpstreamError,
    UpstreamTimeoutError,
)

FIRST_BACKOFF = 5.0
MAX_BACKOFF = 60.0

#: connect failures where a server was reached (or our own settings failed): never a reason
#: to take another door
_HARD = (
    TLSHandshakeError, ALPNMismatchError, CertificateError, PinMismatchError, TLSConfigError,
    ProxyError, BootstrapError,
)  # fmt: skip


def cannot_connect(error: UpstreamError) -> bool:
    """The primary could not be connected to for a reason of the network's path (refused, no
    route, the connect timed out): the one case a fallback is for."""
    if isinstance(error, _HARD):
        return False
    if isinstance(error, UpstreamConnectError):
        return True
    return isinstance(error, UpstreamTimeoutError) and error.no_connection


class FallbackPolicy:
    """One upstream's state: on its primary, or on fallback `active` until the primary connects."""

    def __init__(self) -> None:
        #: index of the fallback in use; None: the primary
        self.active: int | None = None
        #: when the primary may be probed again
        self.probe_at = 0.0
        self.probing = False
        self._failures = 0
        #: figures for stats and metrics
        self.switches = 0
        self.answers = 0

    def primary_unreachable(self, now: float) -> bool:
        """The primary could not be connected to (a query's or a probe's attempt): fall back,
        and probe it again after the backoff. True when this switched away from the primary."""
        self.probing = False
        self._failures += 1
        backoff = min(MAX_BACKOFF, FIRST_BACKOFF * 2 ** (self._failures - 1))
        self.probe_at = now + backoff
        if self.active is None:
            self.active = 0
            self.switches += 1
            return True
        return False

    def primary_connected(self) -> bool:
        """The primary answered (or was reached: a hard error is its own to report): back to it.
        True when this ended a time on a fallback."""
        self.probing = False
        self._failures = 0
        switched_back = self.active is not None
        self.active = None
        return switched_back

    def take_probe(self, now: float) -> bool:
        """On a fallback with the primary's backoff over: True once, for one probe."""
        if self.active is None or self.probing or now < self.probe_at:
            return False
        self.probing = True
        return True

    def fallback_failed(self, index: int, count: int) -> None:
        """Fallback `index` could not be connected to either: the next one is tried first."""
        if self.active == index:
            self.active = (index + 1) % count

    def reset(self) -> None:
        """A network change: what was blocked on the old network may not be on the new one."""
        self.active = None
        self.probing = False
        self.probe_at = 0.0
        self._failures = 0
