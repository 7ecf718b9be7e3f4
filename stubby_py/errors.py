"""The exception tree; each class knows the rcode and Extended DNS Error (RFC 8914) it becomes.

StubbyError
├── ConfigError                    bad configuration (never reaches a client)
├── ClientError                    the client's query is the problem
│   ├── MalformedQueryError        FORMERR
│   ├── NotImplementedOpcodeError  NOTIMP
│   ├── BadVersionError            BADVERS (EDNS version > 0)
│   └── RefusedError               REFUSED, EDE 18 Prohibited
└── UpstreamError                  an upstream failed: SERVFAIL, EDE 22/23
    ├── UpstreamConnectError       connect refused, unreachable, TLS handshake failed
    │   └── PinMismatchError       certificate SPKI not in the configured pin set
    ├── UpstreamTimeoutError       no answer within the attempt or the deadline
    ├── UpstreamClosedError        connection lost with the query in flight
    ├── UpstreamProtocolError      garbage, wrong ID or question, HTTP error
    └── NoUpstreamAvailableError   every upstream is down or backing off
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


class PinMismatchError(UpstreamConnectError):
    kind = "pin-mismatch"


class UpstreamTimeoutError(UpstreamError):
    kind = "timeout"


class UpstreamClosedError(UpstreamError):
    kind = "connection-closed"


class UpstreamProtocolError(UpstreamError):
    kind = "bad-response"


class NoUpstreamAvailableError(UpstreamError):
    ede = EDECode.NO_REACHABLE_AUTHORITY
    kind = "no-upstream-available"
