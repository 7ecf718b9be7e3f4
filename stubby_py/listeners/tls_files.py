"""The certificate chain and key the encrypted listeners present, read again when they change.

One SSL context per ALPN protocol (`dot`, `h2`): TLS 1.2 at least, session tickets on (OpenSSL's
default for a server context, kept). The files are looked at (mtime, inode, size) when a TLS
connection comes, at most once a second; a renewed certificate (certbot, acme.sh: a new file
moved into place, or the same one rewritten) is loaded into the same contexts, so connections
from then on get it and those open keep theirs. A pair that does not load (written half-way, key
and certificate not matching) is logged and the previous one stays.
"""

from __future__ import annotations

import logging
import os
import ssl
import time

log = logging.getLogger(__name__)

#: the files are looked at no more often than this, seconds
CHECK_INTERVAL = 1.0

Signature = tuple[tuple[int, int, int, int], ...]


def _signature(*paths: str) -> Signature:
    stats = []
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            stats.append((0, 0, 0, 0))
            continue
        stats.append((st.st_ino, st.st_dev, st.st_mtime_ns, st.st_size))
    return tuple(stats)


def certificate_hostname(path: str) -> str | None:
    """The first DNS name (not a wildcard) the leaf certificate in `path` is for, if any."""
    from cryptography import x509

    try:
        with open(path, "rb") as handle:
            leaf = x509.load_pem_x509_certificates(handle.read())[0]
        names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (OSError, ValueError, IndexError, x509.ExtensionNotFound):
        return None
    return next((n for n in names.get_values_for_type(x509.DNSName) if "*" not in n), None)


class ServerCertificate:
    def __init__(self, cert: str, key: str) -> None:
        self.cert = cert
        self.key = key
        self._contexts: dict[str, ssl.SSLContext] = {}
        self._signature = _signature(cert, key)
        self._checked = time.monotonic()
        #: the name DDR gives as the listeners' (the certificate's first DNS name)
        self.hostname = certificate_hostname(cert)
        #: times a changed pair was loaded, and changed pairs refused
        self.reloaded = 0
        self.refused = 0

    def context(self, alpn: str) -> ssl.SSLContext:
        """The context for new connections that speak `alpn`, with the files' current pair."""
        self.refresh()
        context = self._contexts.get(alpn)
        if context is None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            context.set_alpn_protocols([alpn])
            context.load_cert_chain(self.cert, self.key)
            self._contexts[alpn] = context
        return context

    def configure(self, cert: str, key: str) -> None:
        """A reload: these files from now on (loaded now, even if unchanged on disk)."""
        self.cert, self.key = cert, key
        self._load(_signature(cert, key))

    def refresh(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        if now - self._checked < CHECK_INTERVAL:
            return
        self._checked = now
        signature = _signature(self.cert, self.key)
        if signature != self._signature:
            self._load(signature)

    def _load(self, signature: Signature) -> None:
        self._signature = signature  # a pair that fails is tried again when it changes again
        trial = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            trial.load_cert_chain(self.cert, self.key)
        except (OSError, ssl.SSLError) as exc:
            self.refused += 1
            log.warning(
                "TLS certificate %s / key %s not loaded, the previous pair stays: %s",
                self.cert, self.key, exc,
            )  # fmt: skip
            return
        for context in self._contexts.values():
            context.load_cert_chain(self.cert, self.key)
        self.reloaded += 1
        self.hostname = certificate_hostname(self.cert)
        log.info("TLS certificate %s loaded for new connections", self.cert)
