"""TLS client settings shared by DoT, DoH and DoQ: verification, authentication name, SPKI pins.

RFC 8310 strict privacy profile: the certificate must verify against the trust store (system or
a CA file) for the authentication name (or the IP address), and, when pins are configured, one of
them must match the leaf certificate's SubjectPublicKeyInfo; when a DNS stamp gave certificate
hashes, one of them must be the SHA-256 of the TBS part of a certificate in the chain
(dnscrypt-proxy's check). Both come on top of the verification, never instead of it. No fall-back
to cleartext exists.
"""

from __future__ import annotations

import base64
import hashlib
import ssl
from collections.abc import Sequence

from stubby_py.config import Config, UpstreamSpec
from stubby_py.errors import PinMismatchError


def client_context(
    spec: UpstreamSpec, config: Config, alpn: list[str] | None = None
) -> ssl.SSLContext:
    ca_file = spec.ca_file or config.ca_file
    context = ssl.create_default_context(cafile=ca_file)
    context.minimum_version = (
        ssl.TLSVersion.TLSv1_3 if config.tls_min_version == "1.3" else ssl.TLSVersion.TLSv1_2
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
