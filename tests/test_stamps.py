"""DNS stamps (`sdns://`): the specification's and the reference implementation's vectors,
malformed and refused stamps, and daemons reaching local DoT, DoH and DoQ servers by stamp,
the stamp's certificate hashes checked against the chain."""

from __future__ import annotations

import asyncio
import base64
import ssl
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import dns.rcode
import pytest
import trustme
from hypothesis import given, settings
from hypothesis import strategies as st

from stubby_py.commands import check
from stubby_py.core import stamps
from stubby_py.core.config import parse_config, parse_upstream_uri
from stubby_py.core.errors import ConfigError
from stubby_py.transports.tls import tbs_hash
from tests.servers import LocalUpstream, doq_server, h2_server, local_upstream, write_cert_files
from tests.servers.client_side import answer_address, ask, daemon_config

# go-dnsstamps' test vectors (its hash is a certificate fingerprint: any 32 bytes do)
GO_HASH = "c3846bf24b9e93ca64274c0ec67c1ecc5e024ffcacd2d74019350e81fe546ae4"
VECTORS = [
    # (stamp, transport, address, port, auth_name, path, hashes, props)
    (
        "sdns://AgcAAAAAAAAACTEyNy4wLjAuMSDDhGvyS56TymQnTA7GfB7MXgJP_KzS10AZNQ6B_lRq5Atle"
        "GFtcGxlLmNvbQovZG5zLXF1ZXJ5",
        "https", "127.0.0.1", 443, "example.com", "/dns-query", (GO_HASH,),
        ("dnssec", "no-log", "no-filter"),
    ),
    (
        "sdns://AgYAAAAAAAAACDkuOS45LjEwABJkbnM5LnF1YWQ5Lm5ldDo0NDMKL2Rucy1xdWVyeQ",
        "https", "9.9.9.10", 443, "dns9.quad9.net", "/dns-query", (), ("no-log", "no-filter"),
    ),
    (
        "sdns://AwcAAAAAAAAACTEyNy4wLjAuMSDDhGvyS56TymQnTA7GfB7MXgJP_KzS10AZNQ6B_lRq5A9kb"
        "nMuZXhhbXBsZS5jb20",
        "tls", "127.0.0.1", 853, "dns.example.com", "/dns-query", (GO_HASH,),
        ("dnssec", "no-log", "no-filter"),
    ),
    (
        "sdns://AwcAAAAAAAAADDEuMS4xLjE6ODg1MyDDhGvyS56TymQnTA7GfB7MXgJP_KzS10AZNQ6B_lRq5BJj"
        "bG91ZGZsYXJlLWRucy5jb20",
        "tls", "1.1.1.1", 8853, "cloudflare-dns.com", "/dns-query", (GO_HASH,),
        ("dnssec", "no-log", "no-filter"),
    ),
    (
        "sdns://BAcAAAAAAAAACTEyNy4wLjAuMSDDhGvyS56TymQnTA7GfB7MXgJP_KzS10AZNQ6B_lRq5A9kb"
        "nMuZXhhbXBsZS5jb20",
        "quic", "127.0.0.1", 853, "dns.example.com", "/dns-query", (GO_HASH,),
        ("dnssec", "no-log", "no-filter"),
    ),
    (
        "sdns://BAcAAAAAAAAADDEuMS4xLjE6ODg1MyDDhGvyS56TymQnTA7GfB7MXgJP_KzS10AZNQ6B_lRq5BJj"
        "bG91ZGZsYXJlLWRucy5jb20",
        "quic", "1.1.1.1", 8853, "cloudflare-dns.com", "/dns-query", (GO_HASH,),
        ("dnssec", "no-log", "no-filter"),
    ),
]  # fmt: skip


def lp(data: bytes | str) -> bytes:
    raw = data.encode() if isinstance(data, str) else data
    return bytes([len(raw)]) + raw


def vlp(items: list[bytes]) -> bytes:
    if not items:
        return b"\x00"
    out = b""
    for index, item in enumerate(items):
        more = 0x80 if index < len(items) - 1 else 0
        out += bytes([len(item) | more]) + item
    return out


def encode(raw: bytes) -> str:
    return "sdns://" + base64.urlsafe_b64encode(raw).decode().rstrip("=")


def make_stamp(
    protocol: int,
    addr: str,
    hostname: str = "",
    hashes: list[bytes] | None = None,
    path: str | None = None,
    props: int = 0,
    bootstrap: list[bytes] | None = None,
) -> str:
    raw = bytes([protocol]) + props.to_bytes(8, "little") + lp(addr)
    if protocol != 0x00:
        raw += vlp(hashes or []) + lp(hostname)
        if path is not None:
            raw += lp(path)
        if bootstrap is not None:
            raw += vlp(bootstrap)
    return encode(raw)


# --- decoding ---------------------------------------------------------------------------------


@pytest.mark.parametrize("vector", VECTORS, ids=lambda v: v[0][7:20])
def test_reference_vectors(vector: tuple) -> None:  # type: ignore[type-arg]
    text, transport, address, port, auth_name, path, hashes, props = vector
    spec = parse_upstream_uri(text)
    assert (spec.transport, spec.address, spec.port, spec.auth_name, spec.path) == (
        transport, address, port, auth_name, path,
    )  # fmt: skip
    assert spec.cert_hashes == hashes
    assert spec.stamp_props == props
    assert spec.spki_pins == ()  # stamp hashes are not SPKI pins


def test_ipv6_in_brackets_with_port_and_bootstrap() -> None:
    digest = bytes(range(32))
    text = make_stamp(
        0x03, "[2620:fe::fe]:8853", "dns.quad9.net", [digest, bytes(32)],
        bootstrap=[b"9.9.9.9", b"149.112.112.112"],
    )  # fmt: skip
    stamp = stamps.decode(text)
    assert stamp.bootstraps == ("9.9.9.9", "149.112.112.112")
    assert len(stamp.hashes) == 2
    spec = stamps.parse(text)
    assert (spec.transport, spec.address, spec.port) == ("tls", "2620:fe::fe", 8853)
    assert spec.cert_hashes == (digest.hex(), bytes(32).hex())
    assert spec.url == "tls://[2620:fe::fe]:8853#dns.quad9.net"


def test_doh_with_port_in_hostname_path_and_bootstrap() -> None:
    text = make_stamp(
        0x02, "[2001:db8::1]", "doh.example:8443", path="/q/token", bootstrap=[b"192.0.2.53"]
    )
    spec = stamps.parse(text)
    assert (spec.transport, spec.address, spec.port) == ("https", "2001:db8::1", 8443)
    assert (spec.auth_name, spec.path, spec.cert_hashes) == ("doh.example", "/q/token", ())


def test_doh_path_template_and_token_kept_out_of_errors() -> None:
    assert stamps.parse(make_stamp(0x02, "192.0.2.1", "d.test", path="/q{?dns}")).path == "/q"
    with pytest.raises(ValueError) as error:
        stamps.parse(make_stamp(0x02, "192.0.2.1", "d.test", path="/q?token=SECRET"))
    assert "SECRET" not in str(error.value)


def test_doq_without_hostname_verifies_the_address() -> None:
    spec = stamps.parse(make_stamp(0x04, "192.0.2.7"))
    assert (spec.transport, spec.address, spec.port, spec.auth_name) == (
        "quic", "192.0.2.7", 853, None,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        (
            "sdns://AQcAAAAAAAAACTEyNy4wLjAuMSDDhGvyS56TymQnTA7GfB7MXgJP_KzS10AZNQ6B_lRq5Bky"
            "LmRuc2NyeXB0LWNlcnQubG9jYWxob3N0",
            "DNSCrypt",
        ),
        ("sdns://BQcAAAAAAAAAEG9kb2guZXhhbXBsZS5jb20HL3RhcmdldA", "Oblivious DoH target"),
        (
            "sdns://hQcAAAAAAAAAB1s6OjFdOjEgw4Rr8kuek8pkJ0wOxnwezF4CT_ys0tdAGTUOgf5UauQPZG9o"
            "LmV4YW1wbGUuY29tBi9yZWxheQ",
            "Oblivious DoH relay",
        ),
        (encode(b"\x81" + bytes(8) + lp("192.0.2.1")), "anonymized DNSCrypt relay"),
        (encode(b"\x42" + bytes(8)), "unknown kind 0x42"),
    ],
)
def test_unsupported_kinds_are_named(text: str, kind: str) -> None:
    with pytest.raises(ValueError, match=f"^{kind} stamps are not supported"):
        stamps.parse(text)


GOOD = make_stamp(0x03, "192.0.2.1", "dns.test", [bytes(32)])
GOOD_RAW = base64.urlsafe_b64decode(GOOD[7:] + "==")


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("sdns://", "empty"),
        ("sdns://A*B$", "not valid base64url"),
        ("sdns://AgcAAAAAAAAAC", "not valid base64url"),
        (encode(GOOD_RAW[:5]), "truncated in its properties"),
        (encode(GOOD_RAW[:12]), "truncated in its address"),
        (encode(GOOD_RAW[:30]), "truncated in its certificate hashes"),
        (encode(GOOD_RAW[:-3]), "truncated in its hostname"),
        (encode(GOOD_RAW + b"\x01"), "truncated in its bootstrap addresses"),
        (encode(GOOD_RAW + b"\x00xy"), "2 bytes after its last field"),
        (make_stamp(0x03, "192.0.2.1", "dns.test", [b"short"]), "5 bytes, not 32"),
        (make_stamp(0x03, "192.0.2.1:99999", "dns.test"), "bad port"),
        (make_stamp(0x03, "[2001:db8::1", "dns.test"), "malformed"),
        (make_stamp(0x03, "192.0.2.1:853", "dns.test:854"), "disagree"),
        (make_stamp(0x03, "192.0.2.1", "192.0.2.2"), "an IP other than its address"),
        (make_stamp(0x02, "192.0.2.1", "d.test", path="dns-query"), "not an absolute path"),
        (make_stamp(0x03, "192.0.2.1:\u00b2", "dns.test"), "bad port"),
        (encode(b"\x03" + bytes(8) + b"\x02\xff\xfe" + b"\x00\x00"), "not UTF-8"),
        (GOOD + "/" + GOOD[7:], "relay-and-server"),
        (GOOD[:20] + "+" + GOOD[21:], r"A-Z a-z 0-9 - _ only"),
        (GOOD[:20] + "*" + GOOD[20:], r"A-Z a-z 0-9 - _ only"),  # not silently skipped
        ("sdns://AAAAA", "its length is impossible"),
        (make_stamp(0x03, "192.0.2.1", "dns test"), "is not a host name"),
        (make_stamp(0x02, "192.0.2.1", "a.test/x", path="/q"), "is not a host name"),
    ],
)
def test_malformed_stamps_say_why(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_upstream_uri(text)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=120), st.data())
def test_any_bytes_decode_or_say_why(raw: bytes, data: st.DataObject) -> None:
    """Random stamps, and valid ones cut or altered at one byte: a spec or a ValueError."""
    assert parse_upstream_uri(GOOD).transport == "tls"
    cut = data.draw(st.integers(0, len(GOOD_RAW)))
    flipped = bytearray(GOOD_RAW)
    flipped[data.draw(st.integers(0, len(GOOD_RAW) - 1))] = data.draw(st.integers(0, 255))
    for candidate in (raw, bytes([0x03]) + raw, GOOD_RAW[:cut], bytes(flipped)):
        try:
            spec = parse_upstream_uri(encode(candidate))
        except ValueError as exc:
            assert str(exc)
        else:
            assert spec.transport in ("https", "tls", "quic", "udp")


@pytest.mark.parametrize(
    ("addr", "hostname"),
    [("", "dns.google"), (":443", "dns.google"), ("dns.google:443", "dns.google")],
)
def test_stamp_without_an_ip_is_an_upstream_by_hostname(addr: str, hostname: str) -> None:
    spec = stamps.parse(make_stamp(0x02, addr, hostname, path="/dns-query"))
    assert (spec.address, spec.auth_name, spec.port) == ("dns.google", "dns.google", 443)
    assert spec.needs_bootstrap


def test_stamp_by_hostname_needs_a_bootstrap() -> None:
    stamp = make_stamp(0x03, "", "dot.test")
    with pytest.raises(ConfigError, match=r"t.yaml:2: upstreams\[0\]: .*needs `bootstrap:`"):
        parse_config(f"upstreams:\n  - {stamp}\n", "t.yaml")
    config = parse_config(f"upstreams:\n  - {stamp}\nbootstrap: [udp://192.0.2.53]\n", "t.yaml")
    assert config.forwarding.upstreams[0].url == "tls://dot.test:853"


def test_stamp_without_any_name_or_address_is_refused() -> None:
    with pytest.raises(ValueError, match=r"gives no address for '\?'.*needs the server's IP"):
        stamps.parse(make_stamp(0x02, "", "", path="/dns-query"))


def test_plain_stamp_only_for_private_addresses() -> None:
    with pytest.raises(ValueError, match="cleartext across the internet"):
        stamps.parse("sdns://AAcAAAAAAAAABzguOC44Ljg")  # 8.8.8.8 (go-dnsstamps)
    with pytest.raises(ValueError, match="cleartext"):
        stamps.parse("sdns://AAcAAAAAAAAADDguOC44Ljg6ODA1Mw")  # 8.8.8.8:8053
    spec = stamps.parse(make_stamp(0x00, "192.168.1.1:5353"))
    assert (spec.transport, spec.address, spec.port) == ("udp", "192.168.1.1", 5353)
    assert stamps.parse(make_stamp(0x00, "[::1]")).url == "udp://[::1]:53"


# --- configuration ----------------------------------------------------------------------------


def test_stamps_in_every_upstream_place() -> None:
    dot = make_stamp(0x03, "192.0.2.1", "dns.test")
    doh = make_stamp(0x02, "192.0.2.2", "doh.test", path="/dns-query")
    text = (
        f"upstreams:\n  - {dot}\n  - url: {doh}\n    name: doh\n"
        f"upstream_groups:\n  corp:\n    - {make_stamp(0x04, '192.0.2.3', 'doq.test')}\n"
    )
    config = parse_config(text, "s.yaml")
    assert [s.transport for s in config.forwarding.upstreams] == ["tls", "https"]
    assert config.forwarding.upstreams[1].name == "doh"
    assert config.forwarding.groups[0][1][0].auth_name == "doq.test"


def test_bad_stamp_in_config_names_file_line_and_key() -> None:
    truncated = encode(GOOD_RAW[:12])
    text = f"upstreams:\n  - tls://192.0.2.9#dns.test\n  - url: {truncated}\n"
    with pytest.raises(ConfigError, match=r"^s.yaml:3: upstreams\[1\].url: the stamp is trunc"):
        parse_config(text, "s.yaml")
    odoh = "sdns://BQcAAAAAAAAAEG9kb2guZXhhbXBsZS5jb20HL3RhcmdldA"
    text = f"upstream_groups:\n  corp:\n    - {odoh}\n"
    with pytest.raises(ConfigError, match=r"s.yaml:3: upstream_groups.corp\[0\]: Oblivious DoH"):
        parse_config(text, "s.yaml")


def test_stamps_on_the_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from stubby_py.commands.cli import main

    config = tmp_path / "c.yaml"
    config.write_text("upstreams: [tls://192.0.2.9#dns.test]\n")
    assert main(["check", "-c", str(config), "--upstream", "sdns://Aw"]) != 0
    assert "command line: the stamp is truncated in its properties" in capsys.readouterr().err
    assert main(["check", "-c", str(config), "--upstream", GOOD]) == 0


# --- end to end: the stamps' hashes on top of normal verification -----------------------------


@pytest.fixture(scope="module")
def intermediate(ca: trustme.CA) -> trustme.CA:
    """Stamps usually hash the CA that signed the server's certificate: an intermediate."""
    return ca.create_child_ca()


def _der(pem: bytes) -> bytes:
    return ssl.PEM_cert_to_DER_cert(pem.decode())


@pytest.fixture(scope="module")
def intermediate_hash(intermediate: trustme.CA) -> bytes:
    return bytes.fromhex(tbs_hash(_der(intermediate.cert_pem.bytes())))


def _context(issuer: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    issuer.issue_cert("dns.test", "127.0.0.1").configure_cert(context)
    return context


@pytest.fixture
def dot_server(intermediate: trustme.CA) -> Iterator[LocalUpstream]:
    with local_upstream(_context(intermediate)) as server:
        yield server


def test_tbs_hash_is_of_the_tbs_part(ca: trustme.CA) -> None:
    from cryptography import x509

    der = _der(ca.cert_pem.bytes())
    cert = x509.load_der_x509_certificate(der)
    # the TBS is the first element inside the outer SEQUENCE, not the whole certificate
    assert cert.tbs_certificate_bytes in der and len(cert.tbs_certificate_bytes) < len(der)
    assert tbs_hash(der) != tbs_hash(_der(trustme.CA().cert_pem.bytes()))


def test_dot_stamp_answers_with_matching_hash(
    dot_server: LocalUpstream, ca_file: str, intermediate_hash: bytes
) -> None:
    stamp = make_stamp(0x03, f"127.0.0.1:{dot_server.port}", "dns.test", [intermediate_hash])
    with _daemon(stamp, ca_file) as daemon:
        reply = ask(daemon.port)
    assert reply.rcode() == dns.rcode.NOERROR
    assert answer_address(reply) == "192.0.2.1"
    assert dot_server.state.connections == 1


def test_dot_stamp_with_foreign_hash_is_refused(dot_server: LocalUpstream, ca_file: str) -> None:
    stamp = make_stamp(0x03, f"127.0.0.1:{dot_server.port}", "dns.test", [bytes(32)])
    with _daemon(stamp, ca_file) as daemon:
        reply = ask(daemon.port)
    assert reply.rcode() == dns.rcode.SERVFAIL
    assert not dot_server.state.queries  # the hash failed before any query was sent


def test_hash_never_replaces_verification(
    dot_server: LocalUpstream, intermediate_hash: bytes, tmp_path: Path
) -> None:
    """A matching hash with a CA file that does not vouch for the server: still refused."""
    other = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other))
    stamp = make_stamp(0x03, f"127.0.0.1:{dot_server.port}", "dns.test", [intermediate_hash])
    with _daemon(stamp, str(other)) as daemon:
        assert ask(daemon.port).rcode() == dns.rcode.SERVFAIL
    assert not dot_server.state.queries


def test_doh_stamp_answers_through_h2(
    intermediate: trustme.CA, ca_file: str, intermediate_hash: bytes
) -> None:
    with h2_server(_context(intermediate)) as server:
        stamp = make_stamp(
            0x02, "127.0.0.1", f"dns.test:{server.port}", [intermediate_hash], "/dns-query"
        )
        with _daemon(stamp, ca_file) as daemon:
            reply = ask(daemon.port)
        assert answer_address(reply) == "192.0.2.1"
        assert len(server.state.queries) == 1
        bad = make_stamp(0x02, "127.0.0.1", f"dns.test:{server.port}", [bytes(32)], "/dns-query")
        with _daemon(bad, ca_file) as daemon:
            assert ask(daemon.port, "other.example.").rcode() == dns.rcode.SERVFAIL
        assert len(server.state.queries) == 1


def test_doq_stamp_checks_the_sent_chain(
    intermediate: trustme.CA, ca_file: str, intermediate_hash: bytes, tmp_path: Path
) -> None:
    cert, key = write_cert_files(intermediate, str(tmp_path), "dns.test", "127.0.0.1")
    with doq_server(cert, key) as server:
        good = make_stamp(0x04, f"127.0.0.1:{server.port}", "dns.test", [intermediate_hash])
        with _daemon(good, ca_file) as daemon:
            assert answer_address(ask(daemon.port)) == "192.0.2.1"
        bad = make_stamp(0x04, f"127.0.0.1:{server.port}", "dns.test", [bytes(32)])
        with _daemon(bad, ca_file) as daemon:
            assert ask(daemon.port, "other.example.").rcode() == dns.rcode.SERVFAIL


def test_doq_stamp_ignores_a_sent_certificate_off_the_issuing_path(
    ca: trustme.CA, ca_file: str, tmp_path: Path
) -> None:
    """Any CA's certificate is public: a server may send the one a stamp pins beside its own
    chain, and verification ignores the extra. The hash must match a certificate that issued
    the leaf, so this is refused (aioquic shows what was sent, not the verified chain)."""
    pinned = ca.create_child_ca()  # what the stamp pins; it issued nothing for this server
    cert, key = write_cert_files(ca.create_child_ca(), str(tmp_path), "dns.test", "127.0.0.1")
    with open(cert, "ab") as chain:
        chain.write(pinned.cert_pem.bytes())
    pinned_hash = bytes.fromhex(tbs_hash(_der(pinned.cert_pem.bytes())))
    with doq_server(cert, key) as server:
        stamp = make_stamp(0x04, f"127.0.0.1:{server.port}", "dns.test", [pinned_hash])
        with _daemon(stamp, ca_file) as daemon:
            reply = ask(daemon.port)
        assert reply.rcode() == dns.rcode.SERVFAIL and not reply.answer
        assert not server.state.queries


def test_check_shows_props_and_hashes(
    dot_server: LocalUpstream, ca_file: str, intermediate_hash: bytes
) -> None:
    good = make_stamp(
        0x03, f"127.0.0.1:{dot_server.port}", "dns.test", [intermediate_hash], props=5
    )
    bad = make_stamp(0x03, f"127.0.0.1:{dot_server.port}", "dns.test", [bytes(32)])
    config = daemon_config(good, ca_file)
    upstreams = (*config.forwarding.upstreams, replace(stamps.parse(bad), name="b"))
    config = config.with_options(upstreams=upstreams)
    reports = asyncio.run(check.check_all(config, 3.0))
    text = check.format_table(reports)
    assert "stamp says   dnssec, no-filter (informal, not checked)" in text
    assert "stamp hashes 1 (SHA-256 of a TBS certificate), one in the chain" in text
    assert "NONE in the chain" in text
    assert [r.usable for r in reports] == [True, False]
    assert reports[1].kind == "pin-mismatch"


def _daemon(stamp: str, ca_file: str):  # type: ignore[no-untyped-def]
    from tests.daemon_thread import running_daemon

    return running_daemon(daemon_config(stamp, ca_file))
