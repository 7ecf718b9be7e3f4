"""TLS client settings shared by DoT, DoH and DoQ: verification, authentication name, SPKI pins.

RFC 8310 strict privacy profile: the certificate must verify against the trust store (system or
a CA file) for the authentication name (or the IP address), and, when pins are configured, one of
them must match the leaf certificate's SubjectPublicKeyInfo; when a DNS stamp gave certificate
hashes, one of them must be the SHA-256 of the TBS part of a certificate in the chain
(dnscrypt-proxy's check). Both come on top of the verification, never instead of it. No fall-back
to cleartext exists.

Sessions are resumed (`ResumingContext`): a new connection offers the session of the latest
connection of the same upstream whose certificate and pins were checked, each session once (RFC
8446 §C.4), so a reconnect skips the certificate (and, under TLS 1.2, a round trip); a resumed
handshake shows no certificate to check again, as with QUIC (quic.py), since its session only
ever came from a checked one. Not where the Python leaks every session read
(`SESSION_READ_LEAKS`), unless `tls_resumption: on` says so.

A CA file is read again when it changes (`ClientContexts`, checked at each new connection), so a
renewed bundle is taken up without a restart; one that cannot be read or parsed makes that
upstream fail with TLSConfigError (`tls-config`) and leaves the others alone.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import os
import ssl
import sys
from collections.abc import Sequence

from stubby_py.core.config import Config, TlsResumption, UpstreamSpec
from stubby_py.core.errors import PinMismatchError, TLSConfigError

#: what identifies one version of a file: device, inode, size, modification time
FileVersion = tuple[int, int, int, int]

#: CPython's ssl copies the session at each read of SSLObject.session and never frees the copy
#: (gh-116810: 3.10, 3.11, 3.12 before 3.12.8, 3.13.0). Resuming reads one per new connection:
#: 6 to 12 KB of C heap for the life of the process, so a daemon whose connections are cut all
#: day grows without end (bench/soak.py: 7 KB per DoT reconnect, 8 MiB a minute at 500 q/s).
SESSION_READ_LEAKS = sys.version_info < (3, 12, 8) or ((3, 13) <= sys.version_info < (3, 13, 1))


def resumes_sessions(config: Config) -> bool:
    """Whether DoT/DoH connections resume TLS sessions (`tls_resumption`)."""
    setting = config.transport.tls_resumption
    return setting == TlsResumption.ON or (setting == TlsResumption.AUTO and not SESSION_READ_LEAKS)


def ca_file_problem(path: str) -> str | None:
    """What keeps OpenSSL from loading a CA file, or None if it loads."""
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=path)
    except ssl.SSLError as exc:
        return _ca_error_text(exc)
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"
    return None


def _ca_error_text(exc: ssl.SSLError) -> str:
    if exc.reason == "NO_CERTIFICATE_OR_CRL_FOUND":
        return "holds no PEM certificate"
    return f"does not parse as PEM certificates (OpenSSL: {exc.reason or exc})"


class ClientContexts:
    """One upstream's TLS client context, built at its first connection and again whenever its
    CA file has changed since (the file's identity is checked at each new connection)."""

    def __init__(self, spec: UpstreamSpec, config: Config, alpn: list[str] | None = None) -> None:
        self._spec = spec
        self._config = config
        self._alpn = alpn
        self.ca_file = spec.ca_file or config.transport.ca_file
        self._context: ResumingContext | None = None
        self._version: FileVersion | None = None

    def get(self) -> ResumingContext:
        """The context for a new connection; TLSConfigError if it cannot be built."""
        version = self._file_version()
        if self._context is None or version != self._version:
            self._context = None
            try:
                context = client_context(self._spec, self._config, self._alpn)
            except ssl.SSLError as exc:
                raise self._error(_ca_error_text(exc)) from None
            except OSError as exc:
                raise self._error(f"cannot be read ({exc.strerror or exc})") from None
            self._context, self._version = context, version
        return self._context

    def check_ca_file(self) -> None:
        """For QUIC, where aioquic reads the CA file itself during the handshake (and an error
        there would escape its event handling): TLSConfigError if the file would not load."""
        if self.ca_file is not None:
            self.get()

    def _file_version(self) -> FileVersion | None:
        if self.ca_file is None:
            return None
        try:
            st = os.stat(self.ca_file)
        except OSError as exc:
            raise self._error(f"cannot be read ({exc.strerror or exc})") from None
        return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns

    def _error(self, problem: str) -> TLSConfigError:
        return TLSConfigError(f"{self._spec.label}: CA file {self.ca_file} {problem}")


class ResumingContext(ssl.SSLContext):
    """A client context whose next connection resumes the session of the latest one handed to
    `remember` (a connection that passed every check), and each such session only once; one
    whose `resumes` is false remembers nothing (its session is never read: SESSION_READ_LEAKS)."""

    _resume_from: ssl.SSLObject | None = None
    resumes = True

    def remember(self, ssl_object: ssl.SSLObject | None) -> None:
        self._resume_from = ssl_object if self.resumes else None

    def wrap_bio(
        self,
        incoming: ssl.MemoryBIO,
        outgoing: ssl.MemoryBIO,
        server_side: bool = False,
        server_hostname: str | bytes | None = None,
        session: ssl.SSLSession | None = None,
    ) -> ssl.SSLObject:
        source, self._resume_from = self._resume_from, None
        if session is None and not server_side and source is not None and source.context is self:
            session = source.session  # None, or not resumable: a full handshake
        return super().wrap_bio(incoming, outgoing, server_side, server_hostname, session)


@functools.cache
def _default_verify_flags() -> ssl.VerifyFlags:
    """What ssl.create_default_context sets on this Python (3.13 adds strict X.509 checks)."""
    return ssl.create_default_context().verify_flags


def client_context(
    spec: UpstreamSpec, config: Config, alpn: list[str] | None = None
) -> ResumingContext:
    """Raises ssl.SSLError or OSError if the CA file cannot be loaded (ClientContexts maps it)."""
    ca_file = spec.ca_file or config.transport.ca_file
    context = ResumingContext(ssl.PROTOCOL_TLS_CLIENT)
    context.resumes = resumes_sessions(config)
    context.verify_flags = _default_verify_flags()
    if ca_file:
        context.load_verify_locations(cafile=ca_file)
    else:
        context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    context.minimum_version = (
        ssl.TLSVersion.TLSv1_3
        if config.transport.tls_min_version == "1.3"
        else ssl.TLSVersion.TLSv1_2
    )
    context.check_hostname = True
    context.verify_mode = ssl.CERT_REQUIRED
    if alpn:
        context.set_alpn_protocols(alpn)
    return context


def server_hostname(spec: UpstreamSpec) -> str:
    """SNI and verification name: the auth name, or the IP (checked against the IP SANs)."""
    return spec.auth_name or spec.address


def spki_pin(der_certificate: bytes) -> str:
    """base64(SHA-256(SubjectPublicKeyInfo)), the form of Stubby's tls_pubkey_pinset."""
    # imported here: cryptography costs ~8 MB that a daemon without pins never needs
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    cert = x509.load_der_x509_certificate(der_certificate)
    spki = cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(spki).digest()).decode("ascii")


#: _ssl.ENCODING_DER (not exported by ssl)
_ENCODING_DER = 2


def verified_chain(ssl_object: ssl.SSLObject | None) -> list[bytes]:
    """The verified chain, leaf first: public from Python 3.13, private (`_sslobj`) before."""
    getter = getattr(ssl_object, "get_verified_chain", None)
    if getter is None:
        getter = getattr(getattr(ssl_object, "_sslobj", None), "get_verified_chain", None)
    if getter is None:
        return []
    try:
        chain = getter()
    except (ValueError, ssl.SSLError):
        return []
    # Python 3.13 returns DER bytes; 3.10-3.12's private one returns _ssl.Certificate objects
    return [c if isinstance(c, bytes) else c.public_bytes(_ENCODING_DER) for c in chain]


def tbs_hash(der_certificate: bytes) -> str:
    """hex SHA-256 of the certificate's TBS (to-be-signed) part: the DNS stamp hash form."""
    from cryptography import x509

    cert = x509.load_der_x509_certificate(der_certificate)
    return hashlib.sha256(cert.tbs_certificate_bytes).hexdigest()


def check_pins(
    spec: UpstreamSpec, der_certificate: bytes | None, chain: Sequence[bytes] = ()
) -> None:
    """The SPKI pins against the leaf, the stamp's certificate hashes against the chain
    (leaf first; the leaf alone when the chain is not known)."""
    if spec.spki_pins:
        if der_certificate is None:
            raise PinMismatchError(f"{spec.label}: no certificate to check the pins against")
        pin = spki_pin(der_certificate)
        if pin not in spec.spki_pins:
            raise PinMismatchError(f"{spec.label}: certificate key {pin} is not in the pin set")
    if spec.cert_hashes:
        certificates = list(chain) or ([der_certificate] if der_certificate else [])
        if not certificates:
            raise PinMismatchError(f"{spec.label}: no certificate to check the stamp's hashes")
        if not any(tbs_hash(der) in spec.cert_hashes for der in certificates):
            raise PinMismatchError(
                f"{spec.label}: no certificate in the chain ({len(certificates)}) has a TBS"
                " hash the DNS stamp names"
            )


SessionDetails = tuple[bool, str, str | None, str | None]


def check_session(
    spec: UpstreamSpec, ssl_object: ssl.SSLObject, context: ResumingContext
) -> SessionDetails:
    """The pins of a new TLS connection checked (a resumed one carries a session that was), its
    session kept for the next connection; returns (resumed, version, ALPN, cipher)."""
    resumed = bool(ssl_object.session_reused)
    if not resumed:
        chain = verified_chain(ssl_object) if spec.cert_hashes else []
        check_pins(spec, ssl_object.getpeercert(binary_form=True), chain)
    context.remember(ssl_object)
    cipher = ssl_object.cipher()
    version = ssl_object.version() or "TLS"
    return resumed, version, ssl_object.selected_alpn_protocol(), cipher[0] if cipher else None
