"""The exception tree; each class knows the rcode and Extended DNS Error (RFC 8914) it becomes.

StubbyError
├── ConfigError                    bad configuration (never reaches a client)
├── ClientError                    the client's query is the problem
│   ├── MalformedQueryError        FORMERR
│   ├── NotImplementedOpcodeError  NOTIMP
│   ├── BadVersionError            BADVERS (EDNS version > 0)
│   └── RefusedError               REFUSED, EDE 18 Prohibited
├── InternalError                  a bug of ours while answering: SERVFAIL, EDE 0 Other
└── UpstreamError                  an upstream failed: SERVFAIL, EDE 22/23
    ├── UpstreamConnectError       connect failed (any other reason)
    │   ├── ConnectionRefusedUpstreamError  the port is closed (RST, ICMP port unreachable)
    │   ├── NoRouteError           no route to the host or network, address not available
    │   ├── TLSHandshakeError      the TLS handshake failed (an alert, no common version)
    │   ├── ALPNMismatchError      the server negotiated no (or the wrong) application protocol
    │   ├── CertificateError       the certificate was rejected (any other verify error)
    │   │   ├── CertNameMismatchError  it does not name the auth name (or the IP address)
    │   │   ├── CertExpiredError   it has expired (or is not valid yet)
    │   │   └── CertUntrustedError no path to a trusted CA (self-signed, unknown issuer)
    │   ├── PinMismatchError       certificate SPKI not in the configured pin set
    │   ├── TLSConfigError         our side: the TLS settings cannot be built (a CA file that
    │   │                          is unreadable or does not parse)
    │   └── ProxyError             the upstream's proxy refused the tunnel or answered garbage
    │       ├── ProxyRefusedError  the proxy itself cannot be reached
    │       └── ProxyAuthError     the proxy wants other credentials
    ├── UpstreamTimeoutError       no answer within the attempt or the deadline
    ├── UpstreamClosedError        connection lost with the query in flight (`after_answers`:
    │                              one that had answered before it died, not a sign of an outage)
    ├── UpstreamProtocolError      garbage, wrong ID or question, HTTP error
    ├── NoUpstreamAvailableError   every upstream asked failed (`cause`: the failure that tells
    │                              most, see below), or all are down or backing off
    └── DnssecFailureError         the answer is bogus, or its chain of trust could not be built:
                                   SERVFAIL with the EDE the validator chose (6-12)

When the attempts for one query fail in different ways, the client is told the failure that
says most about why there is no answer (`UpstreamError.rank`, highest first; the others follow
in the text). From most to least telling:

  60  dnssec-bogus           an answer came and was proven wrong: the verdict is the news
  50  dnssec-indeterminate   an answer came but its chain of trust could not be built
  (an upstream's own SERVFAIL or REFUSED answer ranks here: it is passed on as it came)
  40  bad-response           the upstream was reached and answered, but with garbage, the wrong
                             question or an HTTP error: its fault, not the network's
  30  TLS, certificate, pin, ALPN, proxy-refused, proxy-auth, proxy-error
                             the upstream was reached but could not be trusted, or its proxy
                             would not carry us there: a setting to fix, or someone in the path
  20  timeout, connection-closed, upstream-error
                             maybe reached, nothing usable came back
  10  connect-failed, connection-refused, no-route
                             nothing there to talk to (an IPv6 upstream on an IPv4-only network)
   0  no-upstream-available  nobody was asked (every upstream down or backing off)
Between failures of one rank, the first in the pool's order is named.
"""

from __future__ import annotations

from dns.edns import EDECode
from dns.rcode import Rcode


class StubbyError(Exception):
    rcode: Rcode = Rcode.SERVFAIL
    ede: EDECode | None = None


class ConfigError(StubbyError):
    """A configuration problem, with where it is (file, line, key) in the message."""


class ClientError(StubbyError):
    pass


class MalformedQueryError(ClientError):
    rcode = Rcode.FORMERR


class NotImplementedOpcodeError(ClientError):
    rcode = Rcode.NOTIMP


class BadVersionError(ClientError):
    rcode = Rcode.BADVERS


class RefusedError(ClientError):
    rcode = Rcode.REFUSED
    ede = EDECode.PROHIBITED


class InternalError(StubbyError):
    """Answering failed on our side (an unexpected exception, a task cancelled at shutdown):
    the client still hears SERVFAIL, with EDE 0 and no detail (the log has the traceback)."""

    ede = EDECode.OTHER
    kind = "internal-error"

    def __init__(self, text: str = "internal error") -> None:
        super().__init__(text)


class UpstreamError(StubbyError):
    rcode = Rcode.SERVFAIL
    ede = EDECode.NETWORK_ERROR
    #: short stable class name, used in logs, stats and EDE extra text
    kind = "upstream-error"
    #: how much this failure tells (the module docstring): the highest-ranked failure is named
    rank = 20
    #: no connection to the upstream could be made (a transport's connect failed): the pool
    #: holds further connects off for a while (pool.Pool.record_unreachable)
    no_connection = False

    @property
    def reason(self) -> str:
        """What failed, in a word, as a held failure (RFC 9520) repeats it."""
        return self.kind


class UpstreamConnectError(UpstreamError):
    kind = "connect-failed"
    rank = 10


class ConnectionRefusedUpstreamError(UpstreamConnectError):
    kind = "connection-refused"


class NoRouteError(UpstreamConnectError):
    kind = "no-route"


class TLSHandshakeError(UpstreamConnectError):
    kind = "tls-handshake"
    rank = 30


class ALPNMismatchError(UpstreamConnectError):
    kind = "alpn-mismatch"
    rank = 30


class CertificateError(UpstreamConnectError):
    kind = "cert-rejected"
    rank = 30


class CertNameMismatchError(CertificateError):
    kind = "cert-name-mismatch"


class CertExpiredError(CertificateError):
    kind = "cert-expired"


class CertUntrustedError(CertificateError):
    kind = "cert-untrusted"


class PinMismatchError(UpstreamConnectError):
    kind = "pin-mismatch"
    rank = 30


class TLSConfigError(UpstreamConnectError):
    """No connection could be tried: our TLS settings for the upstream cannot be built."""

    kind = "tls-config"


class BootstrapError(UpstreamConnectError):
    """No address for an upstream given by hostname: its bootstrap resolvers did not answer,
    or answered something that is not the addresses of that name (bootstrap.py)."""

    kind = "bootstrap"


class ProxyError(UpstreamConnectError):
    """The proxy configured for the upstream would not open the tunnel: it refused the CONNECT,
    closed the connection or answered something that is not its protocol. Never followed by a
    direct connection."""

    kind = "proxy-error"
    rank = 30


class ProxyRefusedError(ProxyError):
    kind = "proxy-refused"


class ProxyAuthError(ProxyError):
    kind = "proxy-auth"


class UpstreamTimeoutError(UpstreamError):
    kind = "timeout"


class UpstreamClosedError(UpstreamError):
    kind = "connection-closed"
    #: the connection had delivered answers before it died (a middlebox or the server cut it):
    #: the upstream is reachable, and its pool health is not to suffer for it
    after_answers = False


class UpstreamProtocolError(UpstreamError):
    kind = "bad-response"
    rank = 40


class NoUpstreamAvailableError(UpstreamError):
    """Every upstream asked failed, or none could be asked; `cause` is the failure that tells
    most (None: nobody was asked, or nothing came back before the deadline)."""

    ede = EDECode.NO_REACHABLE_AUTHORITY
    kind = "no-upstream-available"
    rank = 0

    def __init__(self, summary: str, cause: UpstreamError | None = None) -> None:
        super().__init__(f"all upstreams failed: {summary}")
        #: what the attempts came to, the most telling first ("NAME: KIND (detail), NAME: KIND")
        self.summary = summary
        self.cause = cause

    @property
    def reason(self) -> str:
        return self.cause.reason if self.cause is not None else self.kind


class DnssecFailureError(UpstreamError):
    """Validation failed; `ede` and the message come from the validator's verdict."""

    kind = "dnssec-bogus"
    rank = 60

    def __init__(self, ede: int, reason: str, zone: str, *, indeterminate: bool = False) -> None:
        super().__init__(reason)
        self.ede = EDECode(ede)
        self.zone = zone
        #: the chain could not be fetched (rather than an answer proven wrong)
        self.indeterminate = indeterminate
        if indeterminate:
            self.kind = "dnssec-indeterminate"
            self.rank = 50

    def followed_by(self, others: str) -> DnssecFailureError:
        """This verdict, with what other upstreams asked afterwards came to after its text."""
        text = f"{self.args[0]}; then {others}" if others else str(self.args[0])
        return DnssecFailureError(self.ede, text, self.zone, indeterminate=self.indeterminate)
