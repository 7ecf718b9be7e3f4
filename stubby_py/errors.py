"""The exception tree; each class knows the rcode and Extended DNS Error (RFC 8914) it becomes.

StubbyError
├── ConfigError                    bad configuration (never reaches a client)
├── ClientError                    the client's query is the problem
│   ├── MalformedQueryError        FORMERR
│   ├── NotImplementedOpcodeError  NOTIMP
│   ├── BadVersionError            BADVERS (EDNS version > 0)
│   └── RefusedError               REFUSED, EDE 18 Prohibited
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
    │   └── TLSConfigError         our side: the TLS settings cannot be built (a CA file that
    │                              is unreadable or does not parse)
    ├── UpstreamTimeoutError       no answer within the attempt or the deadline
    ├── UpstreamClosedError        connection lost with the query in flight (`after_answers`:
    │                              one that had answered before it died, not a sign of an outage)
    ├── UpstreamProtocolError      garbage, wrong ID or question, HTTP error
    ├── NoUpstreamAvailableError   every upstream is down or backing off
    └── DnssecFailureError         the answer is bogus, or its chain of trust could not be built:
                                   SERVFAIL with the EDE the validator chose (6-12)
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


class UpstreamError(StubbyError):
    rcode = Rcode.SERVFAIL
    ede = EDECode.NETWORK_ERROR
    #: short stable class name, used in logs, stats and EDE extra text
    kind = "upstream-error"


class UpstreamConnectError(UpstreamError):
    kind = "connect-failed"


class ConnectionRefusedUpstreamError(UpstreamConnectError):
    kind = "connection-refused"


class NoRouteError(UpstreamConnectError):
    kind = "no-route"


class TLSHandshakeError(UpstreamConnectError):
    kind = "tls-handshake"


class ALPNMismatchError(UpstreamConnectError):
    kind = "alpn-mismatch"


class CertificateError(UpstreamConnectError):
    kind = "cert-rejected"


class CertNameMismatchError(CertificateError):
    kind = "cert-name-mismatch"


class CertExpiredError(CertificateError):
    kind = "cert-expired"


class CertUntrustedError(CertificateError):
    kind = "cert-untrusted"


class PinMismatchError(UpstreamConnectError):
    kind = "pin-mismatch"


class TLSConfigError(UpstreamConnectError):
    """No connection could be tried: our TLS settings for the upstream cannot be built."""

    kind = "tls-config"


class UpstreamTimeoutError(UpstreamError):
    kind = "timeout"


class UpstreamClosedError(UpstreamError):
    kind = "connection-closed"
    #: the connection had delivered answers before it died (a middlebox or the server cut it):
    #: the upstream is reachable, and its pool health is not to suffer for it
    after_answers = False


class UpstreamProtocolError(UpstreamError):
    kind = "bad-response"


class NoUpstreamAvailableError(UpstreamError):
    ede = EDECode.NO_REACHABLE_AUTHORITY
    kind = "no-upstream-available"


class DnssecFailureError(UpstreamError):
    """Validation failed; `ede` and the message come from the validator's verdict."""

    kind = "dnssec-bogus"

    def __init__(self, ede: int, reason: str, zone: str, *, indeterminate: bool = False) -> None:
        super().__init__(reason)
        self.ede = EDECode(ede)
        self.zone = zone
        #: the chain could not be fetched (rather than an answer proven wrong)
        self.indeterminate = indeterminate
        if indeterminate:
            self.kind = "dnssec-indeterminate"
