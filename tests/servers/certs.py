"""Certificate files for the test servers (trustme), and the SPKI pin of one."""

from __future__ import annotations

import ssl

import trustme

from stubby_py.transports.tls import spki_pin


def write_cert_files(ca: trustme.CA, directory: str, *names: str) -> tuple[str, str]:
    """(certificate chain file, key file) for a server certificate naming `names`."""
    cert = ca.issue_cert(*names)
    cert_path = f"{directory}/cert-{'-'.join(names)}.pem"
    key_path = f"{directory}/key-{'-'.join(names)}.pem"
    with open(cert_path, "wb") as handle:
        handle.write(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    cert.private_key_pem.write_to_path(key_path)
    return cert_path, key_path


def server_pin(cert_file: str) -> str:
    """The SPKI pin of the first certificate in a PEM file."""
    with open(cert_file, encoding="ascii") as handle:
        pem = handle.read()
    end = pem.index("-----END CERTIFICATE-----") + len("-----END CERTIFICATE-----")
    return spki_pin(ssl.PEM_cert_to_DER_cert(pem[:end]))
