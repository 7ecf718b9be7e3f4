"""Connect failures get precise kinds (stubby_py/transports/failures.py), and the daemon shows them.

The mapping is tested on the exceptions ssl, the socket layer and aioquic give; then each fault
is injected into a real daemon's upstream (DoT, DoH over h2, DoQ) and its kind must appear both
in the upstream's stats (failure_kinds, kept by the pool) and in the SERVFAIL's Extended DNS
Error text.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import errno
import socket
import ssl
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import dns.edns
import dns.message
import dns.query
import dns.rcode
import pytest
import trustme

from stubby_py.core import errors
from stubby_py.core.config import Config
from stubby_py.transports.failures import connect_error, socket_error, tls_alert_error
from tests.conftest import AUTH_NAME, dot_uri
from tests.daemon_thread import make_config, running_daemon
from tests.servers import doq_server, h2_server, local_upstream, write_cert_files

pytestmark = pytest.mark.timeout(60)

TIMEOUT = 1.5
OTHER_PIN = base64.b64encode(bytes(32)).decode()


# --- the mapping --------------------------------------------------------------------------------


def _verify_error(code: int, message: str) -> ssl.SSLCertVerificationError:
    exc = ssl.SSLCertVerificationError(1, message)
    exc.verify_code = code
    exc.verify_message = message
    return exc


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (_verify_error(62, "Hostname mismatch"), "cert-name-mismatch"),
        (_verify_error(64, "IP address mismatch"), "cert-name-mismatch"),
        (_verify_error(10, "certificate has expired"), "cert-expired"),
        (_verify_error(9, "certificate is not yet valid"), "cert-expired"),
        (_verify_error(20, "unable to get local issuer certificate"), "cert-untrusted"),
        (_verify_error(18, "self-signed certificate"), "cert-untrusted"),
        (_verify_error(7, "certificate signature failure"), "cert-rejected"),
        (ssl.SSLError(1, "[SSL: TLSV1_ALERT_PROTOCOL_VERSION]"), "tls-handshake"),
        (ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"), "connection-refused"),
        (OSError(errno.EHOSTUNREACH, "No route to host"), "no-route"),
        (OSError(errno.ENETUNREACH, "Network is unreachable"), "no-route"),
        (TimeoutError(errno.ETIMEDOUT, "Connection timed out"), "timeout"),
        (ConnectionAbortedError("SSL handshake is taking longer than 1.0 seconds"), "timeout"),
        (ConnectionResetError(errno.ECONNRESET, "Connection reset"), "tls-handshake"),
        (OSError(errno.EACCES, "Permission denied"), "connect-failed"),
    ],
)
def test_connect_error_kinds(exc: BaseException, kind: str) -> None:
    error = connect_error("up", exc)
    assert error.kind == kind
    assert isinstance(error, errors.UpstreamError)
    assert str(error).startswith("up: ")


def test_connect_kinds_stay_connect_errors() -> None:
    """Code catching UpstreamConnectError (or reading PinMismatchError's kind) still works."""
    for cls in (
        errors.ConnectionRefusedUpstreamError, errors.NoRouteError, errors.TLSHandshakeError,
        errors.ALPNMismatchError, errors.CertificateError, errors.CertNameMismatchError,
        errors.CertExpiredError, errors.CertUntrustedError, errors.PinMismatchError,
    ):  # fmt: skip
        assert issubclass(cls, errors.UpstreamConnectError)
    assert errors.PinMismatchError.kind == "pin-mismatch"
    assert errors.UpstreamConnectError.kind == "connect-failed"


def test_socket_and_alert_kinds() -> None:
    assert socket_error("up", ConnectionRefusedError(errno.ECONNREFUSED, "x")).kind == (
        "connection-refused"
    )
    assert socket_error("up", OSError(errno.ENETUNREACH, "x")).kind == "no-route"
    assert tls_alert_error("up", 45, "Certificate is no longer valid").kind == "cert-expired"
    mismatch = tls_alert_error("up", 42, "hostname 'a.test' doesn't match 'b.test'")
    assert mismatch.kind == "cert-name-mismatch"
    assert "alert 42" in str(mismatch)
    untrusted = tls_alert_error("up", 42, "unable to get local issuer certificate")
    assert untrusted.kind == "cert-untrusted"
    assert tls_alert_error("up", 40, "").kind == "tls-handshake"


# --- through the daemon -------------------------------------------------------------------------


def _context(leaf: trustme.LeafCert) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    leaf.configure_cert(context)
    return context


def _config(uri: str, ca_file: str, **spec_changes: object) -> Config:
    config = make_config([uri], ca_file, timeout=TIMEOUT, attempt_timeout=TIMEOUT)
    return config.with_options(upstreams=(replace(config.forwarding.upstreams[0], **spec_changes),))


def _servfail_kind(config: Config, kind: str) -> None:
    """One query: SERVFAIL whose EDE text names the upstream and the kind; the stats count it."""
    with running_daemon(config) as daemon:
        query = dns.message.make_query("a.example.", "A", use_edns=0)
        reply = dns.query.udp(query, "127.0.0.1", port=daemon.port, timeout=5)
        kinds = daemon.call(lambda: dict(daemon.resolver.pool.health[0].failure_kinds))
    assert reply.rcode() == dns.rcode.SERVFAIL
    texts = [o.text or "" for o in reply.options if isinstance(o, dns.edns.EDEOption)]
    name = config.forwarding.upstreams[0].label
    assert any(f"{name}: {kind}" in text for text in texts), texts
    assert kinds == {kind: 1}


@pytest.fixture(scope="module")
def leaf(ca: trustme.CA) -> trustme.LeafCert:
    return ca.issue_cert(AUTH_NAME, "127.0.0.1")


@contextlib.contextmanager
def _dot(leaf: trustme.LeafCert) -> Iterator[str]:
    with local_upstream(_context(leaf)) as server:
        yield dot_uri(server)


def test_dot_name_mismatch(leaf: trustme.LeafCert, ca_file: str) -> None:
    with local_upstream(_context(leaf)) as server:
        _servfail_kind(_config(dot_uri(server, "other.test"), ca_file), "cert-name-mismatch")


def test_dot_expired(ca: trustme.CA, ca_file: str) -> None:
    old = ca.issue_cert(
        AUTH_NAME, not_before=datetime.datetime(2020, 1, 1), not_after=datetime.datetime(2021, 1, 1)
    )
    with _dot(old) as uri:
        _servfail_kind(_config(uri, ca_file), "cert-expired")


def test_dot_untrusted(leaf: trustme.LeafCert, tmp_path: Path) -> None:
    other = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other))
    with _dot(leaf) as uri:
        _servfail_kind(_config(uri, str(other)), "cert-untrusted")


def test_dot_pin_mismatch(leaf: trustme.LeafCert, ca_file: str) -> None:
    with _dot(leaf) as uri:
        _servfail_kind(_config(uri, ca_file, spki_pins=(OTHER_PIN,)), "pin-mismatch")


def test_dot_tls_handshake_failure(leaf: trustme.LeafCert, ca_file: str) -> None:
    """A TLS 1.2-only server, a client asking for 1.3 at least: a protocol-version alert."""
    context = _context(leaf)
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    with local_upstream(context) as server:
        config = _config(dot_uri(server), ca_file).with_options(tls_min_version="1.3")
        _servfail_kind(config, "tls-handshake")


def test_dot_connection_refused(ca_file: str) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    _servfail_kind(_config(f"tls://127.0.0.1:{port}#{AUTH_NAME}", ca_file), "connection-refused")


def test_dot_black_hole_times_out(ca_file: str) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        uri = f"tls://127.0.0.1:{listener.getsockname()[1]}#{AUTH_NAME}"
        _servfail_kind(_config(uri, ca_file), "timeout")


def test_doh_name_mismatch(leaf: trustme.LeafCert, ca_file: str) -> None:
    with h2_server(_context(leaf)) as server:
        uri = f"https://other.test:{server.port}/dns-query#127.0.0.1"
        _servfail_kind(_config(uri, ca_file), "cert-name-mismatch")


def test_doq_name_mismatch_and_pins(ca: trustme.CA, ca_file: str, tmp_path: Path) -> None:
    cert_file, key_file = write_cert_files(ca, str(tmp_path), AUTH_NAME, "127.0.0.1")
    with doq_server(cert_file, key_file) as server:
        uri = f"quic://127.0.0.1:{server.port}"
        _servfail_kind(_config(f"{uri}#other.test", ca_file), "cert-name-mismatch")
        _servfail_kind(
            _config(f"{uri}#{AUTH_NAME}", ca_file, spki_pins=(OTHER_PIN,)), "pin-mismatch"
        )


def test_doq_expired(ca: trustme.CA, ca_file: str, tmp_path: Path) -> None:
    old = ca.issue_cert(
        AUTH_NAME, not_before=datetime.datetime(2020, 1, 1), not_after=datetime.datetime(2021, 1, 1)
    )
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(b"".join(blob.bytes() for blob in old.cert_chain_pems))
    old.private_key_pem.write_to_path(str(key_file))
    with doq_server(str(cert_file), str(key_file)) as server:
        uri = f"quic://127.0.0.1:{server.port}#{AUTH_NAME}"
        _servfail_kind(_config(uri, ca_file), "cert-expired")


def test_doq_port_unreachable(ca_file: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    _servfail_kind(_config(f"quic://127.0.0.1:{port}#{AUTH_NAME}", ca_file), "connection-refused")
