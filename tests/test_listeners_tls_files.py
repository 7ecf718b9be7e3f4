"""Encrypted listeners: configuration (URIs, tls_cert/tls_key), the access list before the
handshake, certificate renewal and reload, session resumption, the DoH request timeout."""

from __future__ import annotations

import contextlib
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dns.message
import dns.query
import h2.config
import h2.connection
import h2.events
import pytest
import trustme

from stubby_py.core.config import (
    Config,
    EncryptedListen,
    Overrides,
    apply_overrides,
    parse_config,
    parse_listen_uri,
)
from stubby_py.core.errors import ConfigError
from stubby_py.listeners import doh, tls_files
from tests.daemon_thread import DaemonThread, make_config, running_daemon
from tests.servers import LocalUpstream, local_upstream
from tests.service import wait_for

NAME = "dns.home.test"


def write_pair(ca: trustme.CA, directory: Path, *names: str) -> tuple[str, str]:
    issued = ca.issue_cert(*(names or (NAME, "127.0.0.1")))
    cert, key = directory / "cert.pem", directory / "key.pem"
    # a new file moved into place, as certbot and acme.sh do
    issued.cert_chain_pems[0].write_to_path(str(cert) + ".new")
    for extra in issued.cert_chain_pems[1:]:
        extra.write_to_path(str(cert) + ".new", append=True)
    issued.private_key_pem.write_to_path(str(key) + ".new")
    Path(str(cert) + ".new").replace(cert)
    Path(str(key) + ".new").replace(key)
    return str(cert), str(key)


# -- configuration ---------------------------------------------------------------------------------
def test_listen_uris() -> None:
    assert parse_listen_uri("127.0.0.1:5353") == ("127.0.0.1", 5353)
    assert parse_listen_uri("tls://192.168.1.2") == EncryptedListen("tls", "192.168.1.2", 853)
    assert parse_listen_uri("tls://[::1]:8853") == EncryptedListen("tls", "::1", 8853)
    assert parse_listen_uri("https://10.0.0.1") == EncryptedListen(
        "https", "10.0.0.1", 443, "/dns-query"
    )
    assert parse_listen_uri("https://[::]:8443/q") == EncryptedListen("https", "::", 8443, "/q")
    assert parse_listen_uri("quic://127.0.0.1") == EncryptedListen("quic", "127.0.0.1", 853)
    assert parse_listen_uri("quic://[::1]:8853") == EncryptedListen("quic", "::1", 8853)
    assert parse_listen_uri("h3://10.0.0.1") == EncryptedListen("h3", "10.0.0.1", 443, "/dns-query")
    assert parse_listen_uri("h3://[::1]:8443/q") == EncryptedListen("h3", "::1", 8443, "/q")
    for bad in (
        "tls://router.lan",
        "quic://127.0.0.1/dns-query",
        "h3://router.lan",
        "h3://127.0.0.1/?x",
        "tls://127.0.0.1:853/x",
        "https://1.2.3.4/?a",
    ):
        with pytest.raises(ValueError):
            parse_listen_uri(bad)


def test_encrypted_listener_without_certificate_names_file_line_key(tmp_path: Path) -> None:
    text = "listen:\n  - 127.0.0.1:53\n  - tls://127.0.0.1:853\n"
    with pytest.raises(ConfigError) as error:
        parse_config(text, "home.yaml")
    assert str(error.value).startswith("home.yaml:3: listen[1]:")
    assert "tls_cert" in str(error.value)


def test_certificate_and_key_that_do_not_match_are_refused(tmp_path: Path) -> None:
    ca = trustme.CA()
    cert, _ = write_pair(ca, tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    _, wrong_key = write_pair(ca, other)
    text = f"listen:\n  - https://127.0.0.1:8443\ntls_cert: {cert}\ntls_key: {wrong_key}\n"
    with pytest.raises(ConfigError) as error:
        parse_config(text, "home.yaml")
    assert str(error.value).startswith("home.yaml:3: tls_cert:")
    missing = f"listen:\n  - tls://127.0.0.1\ntls_cert: /no/such.pem\ntls_key: {wrong_key}\n"
    with pytest.raises(ConfigError, match=r"home\.yaml:3: tls_cert: expected a readable file"):
        parse_config(missing, "home.yaml")


def test_good_config_splits_plain_and_encrypted(tmp_path: Path) -> None:
    cert, key = write_pair(trustme.CA(), tmp_path)
    text = (
        "listen:\n  - 127.0.0.1:53\n  - tls://127.0.0.1:853\n  - https://127.0.0.1:443/dns-query\n"
        f"tls_cert: {cert}\ntls_key: {key}\nlisten_padding_block: 128\n"
    )
    config = parse_config(text, "home.yaml")
    assert config.listeners.addresses == (("127.0.0.1", 53),)
    assert [e.scheme for e in config.listeners.encrypted] == ["tls", "https"]
    assert config.listeners.padding_block == 128


def test_command_line_needs_tls_cert_and_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="tls-cert FILE and --tls-key FILE"):
        apply_overrides(Config(), Overrides(listen=("tls://127.0.0.1:8853",)))
    cert, key = write_pair(trustme.CA(), tmp_path)
    config = apply_overrides(
        Config(), Overrides(listen=("tls://127.0.0.1:8853",), tls_cert=cert, tls_key=key)
    )
    assert config.listeners.encrypted[0].port == 8853 and config.listeners.addresses == ()
    result = subprocess.run(
        [sys.executable, "-m", "stubby_py", "run", "--listen", "https://127.0.0.1:0/q",
         "--upstream", "udp://127.0.0.1:9"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 2 and "--tls-cert" in result.stderr, result.stderr


# -- a running daemon ------------------------------------------------------------------------------
@contextlib.contextmanager
def encrypted_daemon(
    tmp_path: Path, ca: trustme.CA, **changes: Any
) -> Iterator[tuple[DaemonThread, LocalUpstream, str]]:
    cert, key = write_pair(ca, tmp_path)
    ca_file = str(tmp_path / "ca.pem")
    ca.cert_pem.write_to_path(ca_file)
    with local_upstream(None) as upstream:
        config = make_config(
            [f"udp://127.0.0.1:{upstream.port}"],
            encrypted_listen=(
                EncryptedListen("tls", "127.0.0.1", 0),
                EncryptedListen("https", "127.0.0.1", 0, "/dns-query"),
            ),
            tls_cert=cert,
            tls_key=key,
            **changes,
        )
        with running_daemon(config) as daemon:
            yield daemon, upstream, ca_file


def ports(daemon: DaemonThread) -> tuple[int, int]:
    dot, https = (bound.port for bound in daemon.daemon.encrypted_bound)
    return dot, https


def client_context(ca_file: str) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=ca_file)
    context.set_alpn_protocols(["dot"])
    return context


def peer_certificate(
    port: int,
    ca_file: str,
    session: ssl.SSLSession | None = None,
    context: ssl.SSLContext | None = None,
) -> tuple[bytes, ssl.SSLSession | None, bool]:
    """The server certificate (DER), the session to resume with, whether this one resumed."""
    context = context or client_context(ca_file)
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname=NAME, session=session) as tls,
    ):
        reply = dns.query.tls(dns.message.make_query("a.test", "A"), "127.0.0.1", sock=tls)
        assert reply.answer
        der = tls.getpeercert(binary_form=True)
        assert der is not None
        return der, tls.session, bool(tls.session_reused)


def test_client_outside_allow_is_closed_before_the_handshake(
    tmp_path: Path, ca: trustme.CA
) -> None:
    with encrypted_daemon(tmp_path, ca, allow=("192.0.2.0/24",)) as (daemon, _, _):
        for port in ports(daemon):
            with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
                raw.sendall(b"\x16\x03\x01\x00\x05hello")  # the start of a ClientHello
                # closed without a byte of TLS (no ServerHello, no alert): FIN, or RST since
                # the ClientHello was left unread
                with contextlib.suppress(ConnectionResetError):
                    assert raw.recv(4096) == b""
        assert daemon.daemon.tcp is not None and daemon.daemon.tcp.denied == 2
        assert all(s.failed_handshakes == 0 for s in daemon.daemon._tls_servers)


def test_unfinished_handshakes_count_against_the_per_client_cap(
    tmp_path: Path, ca: trustme.CA
) -> None:
    """A client that opens connections and never finishes the TLS handshake holds at most its
    per-client share: past it, its connections are closed at accept, while another client
    (here 127.0.0.2) still gets a handshake and an answer."""
    capped = encrypted_daemon(tmp_path, ca, tcp_max_connections_per_client=2)
    with capped as (daemon, _, ca_file):
        dot, _ = ports(daemon)
        held = [socket.create_connection(("127.0.0.1", dot), timeout=5) for _ in range(2)]
        try:
            assert daemon.daemon.tcp is not None
            servers = daemon.daemon._tls_servers
            assert wait_for(lambda: sum(len(s._handshakes) for s in servers) == 2)
            with (
                socket.create_connection(("127.0.0.1", dot), timeout=5) as third,
                contextlib.suppress(ConnectionResetError),
            ):
                assert third.recv(16) == b""  # closed at accept
            assert daemon.daemon.tcp.rejected_per_client == 1
            context = client_context(ca_file)
            other = ("127.0.0.2", 0)
            with (
                socket.create_connection(("127.0.0.1", dot), 5, source_address=other) as raw,
                context.wrap_socket(raw, server_hostname=NAME) as tls,
            ):
                reply = dns.query.tls(dns.message.make_query("a.test", "A"), "127.0.0.1", sock=tls)
            assert reply.rcode() == dns.rcode.NOERROR
        finally:
            for sock in held:
                sock.close()


def test_renewed_certificate_is_served_to_new_connections_and_sessions_resume(
    tmp_path: Path, ca: trustme.CA, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tls_files, "CHECK_INTERVAL", 0.0)
    with encrypted_daemon(tmp_path, ca) as (daemon, _, ca_file):
        dot, _ = ports(daemon)
        context = client_context(ca_file)
        first, session, _ = peer_certificate(dot, ca_file, None, context)
        again, _, resumed = peer_certificate(dot, ca_file, session, context)
        assert resumed and again == first  # session tickets on
        write_pair(ca, tmp_path)  # renewed: same paths, new files
        renewed, _, _ = peer_certificate(dot, ca_file)
        assert renewed != first
        assert daemon.daemon.certificate is not None
        assert daemon.daemon.certificate.reloaded == 1


def test_half_written_certificate_keeps_the_previous_one(
    tmp_path: Path, ca: trustme.CA, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tls_files, "CHECK_INTERVAL", 0.0)
    with encrypted_daemon(tmp_path, ca) as (daemon, _, ca_file):
        dot, _ = ports(daemon)
        first, _, _ = peer_certificate(dot, ca_file)
        (tmp_path / "cert.pem").write_text("-----BEGIN CERTIFICATE-----\nMIIB")
        assert peer_certificate(dot, ca_file)[0] == first
        assert daemon.daemon.certificate is not None
        assert daemon.daemon.certificate.refused == 1


def test_reload_takes_new_certificate_files(tmp_path: Path, ca: trustme.CA) -> None:
    with encrypted_daemon(tmp_path, ca) as (daemon, _, ca_file):
        dot, _ = ports(daemon)
        first, _, _ = peer_certificate(dot, ca_file)
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        cert, key = write_pair(ca, elsewhere)
        new = daemon.config.with_options(tls_cert=cert, tls_key=key)
        daemon.daemon.loader = lambda: new
        assert daemon.call(daemon.daemon.reload) is None
        assert peer_certificate(dot, ca_file)[0] != first


def test_doh_request_that_never_completes_is_cut(
    tmp_path: Path, ca: trustme.CA, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(doh, "REQUEST_TIMEOUT", 0.5)
    monkeypatch.setattr(doh, "TICK", 0.1)
    with encrypted_daemon(tmp_path, ca) as (daemon, _, ca_file):
        _, https = ports(daemon)
        context = ssl.create_default_context(cafile=ca_file)
        context.set_alpn_protocols(["h2"])
        with (
            socket.create_connection(("127.0.0.1", https), timeout=5) as raw,
            context.wrap_socket(raw, server_hostname=NAME) as tls,
        ):
            conn = h2.connection.H2Connection(h2.config.H2Configuration(header_encoding=None))
            conn.initiate_connection()
            headers = [
                (b":method", b"POST"),
                (b":scheme", b"https"),
                (b":authority", b"x"),
                (b":path", b"/dns-query"),
                (b"content-type", b"application/dns-message"),
            ]
            conn.send_headers(1, headers)
            conn.send_data(1, b"\x00\x01")  # two octets of the query, then nothing
            tls.sendall(conn.data_to_send())
            started = time.monotonic()
            closed = False
            for _ in range(50):  # bounded: SETTINGS, ACK, GOAWAY, then the close
                if tls.recv(65536) == b"":
                    closed = True
                    break
            assert closed and time.monotonic() - started < 4
        tcp = daemon.daemon.tcp
        assert tcp is not None and wait_for(lambda: not tcp.open)
        reply = dns.query.udp(dns.message.make_query("a.test", "A"), "127.0.0.1", port=daemon.port)
        assert reply.answer


@contextlib.contextmanager
def h2_connection(
    port: int, ca_file: str
) -> Iterator[tuple[ssl.SSLSocket, h2.connection.H2Connection]]:
    context = ssl.create_default_context(cafile=ca_file)
    context.set_alpn_protocols(["h2"])
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname=NAME) as tls,
    ):
        conn = h2.connection.H2Connection(h2.config.H2Configuration(header_encoding=None))
        conn.initiate_connection()
        tls.sendall(conn.data_to_send())
        conn.receive_data(tls.recv(65536))  # the server's SETTINGS (acknowledged below)
        yield tls, conn


def post_headers(*extra: tuple[bytes, bytes]) -> list[tuple[bytes, bytes]]:
    return [
        (b":method", b"POST"),
        (b":scheme", b"https"),
        (b":authority", NAME.encode()),
        (b":path", b"/dns-query"),
        (b"content-type", b"application/dns-message"),
        *extra,
    ]


def events_until(
    tls: ssl.SSLSocket, conn: h2.connection.H2Connection, kinds: tuple[type, ...]
) -> list[h2.events.Event]:
    """Read (bounded) until an event of one of `kinds` or the close; every event seen."""
    seen: list[h2.events.Event] = []
    for _ in range(50):
        tls.sendall(conn.data_to_send())
        try:
            data = tls.recv(65536)
        except ConnectionResetError:
            data = b""
        if not data:
            return seen
        seen += conn.receive_data(data)
        if any(isinstance(e, kinds) for e in seen):
            return seen
    return seen


def test_doh_header_list_over_the_limit_ends_the_connection(tmp_path: Path, ca: trustme.CA) -> None:
    with encrypted_daemon(tmp_path, ca) as (daemon, _, ca_file):
        _, https = ports(daemon)
        with h2_connection(https, ca_file) as (tls, conn):
            conn.send_headers(1, post_headers((b"x-filler", b"a" * (doh.MAX_HEADER_LIST + 1))))
            seen = events_until(tls, conn, (h2.events.ConnectionTerminated,))
            assert any(isinstance(e, h2.events.ConnectionTerminated) for e in seen)
            assert not any(isinstance(e, h2.events.ResponseReceived) for e in seen)
        reply = dns.query.udp(dns.message.make_query("a.test", "A"), "127.0.0.1", port=daemon.port)
        assert reply.answer


def test_doh_body_over_65535_octets_without_a_length_is_413(tmp_path: Path, ca: trustme.CA) -> None:
    with encrypted_daemon(tmp_path, ca) as (daemon, _, ca_file):
        _, https = ports(daemon)
        with h2_connection(https, ca_file) as (tls, conn):
            conn.send_headers(1, post_headers())
            status = None
            sent = 0
            for _ in range(20):  # bounded: the window opens as the server takes the body
                while sent <= 70_000:  # all the window allows
                    room = min(conn.local_flow_control_window(1), conn.max_outbound_frame_size)
                    if not room:
                        break
                    conn.send_data(1, b"\0" * room)
                    sent += room
                seen = events_until(
                    tls, conn, (h2.events.ResponseReceived, h2.events.WindowUpdated)
                )
                response = [e for e in seen if isinstance(e, h2.events.ResponseReceived)]
                if response:
                    status = dict(response[0].headers or [])[b":status"]
                    break
            assert status == b"413" and sent > 65_535


def test_shutdown_with_doh_and_dot_connections_open(tmp_path: Path, ca: trustme.CA) -> None:
    with encrypted_daemon(tmp_path, ca) as (daemon, _, ca_file):
        dot, https = ports(daemon)
        with (
            h2_connection(https, ca_file) as (tls, conn),
            socket.create_connection(("127.0.0.1", dot), timeout=5) as raw,
            client_context(ca_file).wrap_socket(raw, server_hostname=NAME) as dot_tls,
        ):
            dns.query.tls(dns.message.make_query("a.test", "A"), "127.0.0.1", sock=dot_tls)
            tcp = daemon.daemon.tcp
            assert tcp is not None and wait_for(lambda: len(tcp.open) == 2)
            started = time.monotonic()
            daemon.stop()
            assert time.monotonic() - started < 5
            seen = events_until(tls, conn, (h2.events.ConnectionTerminated,))
            assert any(isinstance(e, h2.events.ConnectionTerminated) for e in seen)  # GOAWAY
            daemon.stop = lambda: None  # type: ignore[method-assign]  # stopped already
