"""One place that turns what ssl, the socket layer and aioquic raise into our UpstreamError kinds.

Used by every transport's connect step (DoT, DoH over h2, DoQ and DoH over h3) and by
`stubby-py check --connect`, so the kind a user sees in `check`, in the stats
(`failure_kinds`) and in the SERVFAIL's Extended DNS Error text is the same word:
connection-refused, no-route, timeout, tls-handshake, cert-name-mismatch, cert-expired,
cert-untrusted, cert-rejected, alpn-mismatch, pin-mismatch, connect-failed.
"""

from __future__ import annotations

import errno
import ssl

from stubby_py.core.errors import (
    CertExpiredError,
    CertificateError,
    CertNameMismatchError,
    CertUntrustedError,
    ConnectionRefusedUpstreamError,
    NoRouteError,
    TLSHandshakeError,
    UpstreamConnectError,
    UpstreamError,
    UpstreamTimeoutError,
)

#: OpenSSL X509_V_ERR_* codes (x509_vfy.h) → our class
_VERIFY_CODES: dict[int, type[CertificateError]] = {
    2: CertUntrustedError,  # UNABLE_TO_GET_ISSUER_CERT
    9: CertExpiredError,  # CERT_NOT_YET_VALID
    10: CertExpiredError,  # CERT_HAS_EXPIRED
    18: CertUntrustedError,  # DEPTH_ZERO_SELF_SIGNED_CERT
    19: CertUntrustedError,  # SELF_SIGNED_CERT_IN_CHAIN
    20: CertUntrustedError,  # UNABLE_TO_GET_ISSUER_CERT_LOCALLY
    21: CertUntrustedError,  # UNABLE_TO_VERIFY_LEAF_SIGNATURE
    27: CertUntrustedError,  # CERT_UNTRUSTED
    28: CertUntrustedError,  # CERT_REJECTED
    62: CertNameMismatchError,  # HOSTNAME_MISMATCH
    64: CertNameMismatchError,  # IP_ADDRESS_MISMATCH
}

_NO_ROUTE = frozenset(
    {errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ENETDOWN, errno.EHOSTDOWN, errno.EADDRNOTAVAIL}
)

#: TLS alerts (RFC 8446 §6) as aioquic sends them inside a QUIC CRYPTO_ERROR (RFC 9001 §4.8)
ALERT_BAD_CERTIFICATE = 42
ALERT_CERTIFICATE_EXPIRED = 45
ALERT_UNKNOWN_CA = 48


def connect_error(label: str, exc: BaseException) -> UpstreamError:
    """What a failed TCP connect or TLS handshake (asyncio create_connection) means."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        error_class = _VERIFY_CODES.get(exc.verify_code, CertificateError)
        return error_class(f"{label}: certificate rejected: {exc.verify_message}")
    if isinstance(exc, ssl.SSLError):
        reason = getattr(exc, "reason", None) or exc  # set by OpenSSL, absent on a bare SSLError
        return TLSHandshakeError(f"{label}: TLS handshake failed: {reason}")
    if isinstance(exc, TimeoutError):
        return UpstreamTimeoutError(f"{label}: connect timed out")
    if isinstance(exc, ConnectionAbortedError) and "longer" in str(exc):
        # asyncio's ssl_handshake_timeout: the TCP connection is up, TLS never finished
        return UpstreamTimeoutError(f"{label}: TLS handshake timed out")
    if isinstance(exc, ConnectionRefusedError):
        return ConnectionRefusedUpstreamError(f"{label}: connection refused")
    if isinstance(exc, ConnectionResetError | ConnectionAbortedError):
        return TLSHandshakeError(f"{label}: TLS handshake failed: the server closed the connection")
    if isinstance(exc, OSError) and exc.errno in _NO_ROUTE:
        return NoRouteError(f"{label}: {exc.strerror or exc}")
    if isinstance(exc, OSError):
        return UpstreamConnectError(f"{label}: connect failed: {exc.strerror or exc}")
    return UpstreamConnectError(f"{label}: connect failed: {exc}")


def socket_error(label: str, exc: OSError) -> UpstreamError:
    """A datagram socket's error (QUIC: create_datagram_endpoint, ICMP errors)."""
    if isinstance(exc, ConnectionRefusedError):
        return ConnectionRefusedUpstreamError(f"{label}: connection refused (port unreachable)")
    if exc.errno in _NO_ROUTE:
        return NoRouteError(f"{label}: {exc.strerror or exc}")
    return UpstreamConnectError(f"{label}: {exc.strerror or exc}")


def tls_alert_error(label: str, alert: int, reason: str) -> UpstreamConnectError:
    """A QUIC handshake that ended with TLS alert `alert` (ours or the server's)."""
    text = f"{label}: TLS handshake failed (alert {alert})" + (f": {reason}" if reason else "")
    if alert == ALERT_CERTIFICATE_EXPIRED:
        return CertExpiredError(text)
    if alert == ALERT_UNKNOWN_CA:
        return CertUntrustedError(text)
    if alert == ALERT_BAD_CERTIFICATE:
        # aioquic's own verification says which check failed only in the reason text
        if "doesn't match" in reason:
            return CertNameMismatchError(text)
        if "issuer" in reason or "self-signed" in reason or "self signed" in reason:
            return CertUntrustedError(text)
        return CertificateError(text)
    return TLSHandshakeError(text)
