"""Coming from Stubby: `import-stubby` converts the stubby.yml Debian ships, saying what it maps
and what it ignores; `run -c stubby.yml` and `check-config` take a Stubby file as it is."""

from __future__ import annotations

import base64
import hashlib
import os
import ssl
from pathlib import Path

import dns.rcode
import pytest
import trustme
import yaml
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from stubby_py.commands import cli
from stubby_py.commands.stubby_import import convert, load
from stubby_py.core.config import parse_config
from tests.conftest import AUTH_NAME
from tests.peers import Daemon, free_port
from tests.servers import local_upstream
from tests.service import ask

DEBIAN_STUBBY_YML = Path("/etc/stubby/stubby.yml")


@pytest.fixture
def debian_file() -> Path:
    """The stubby.yml of Debian's stubby package (skip without it; fail under CI=true)."""
    if not DEBIAN_STUBBY_YML.is_file():
        message = f"{DEBIAN_STUBBY_YML} missing: apt-get install stubby"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{message} (CI=true: interop files must be present)", pytrace=False)
        pytest.skip(message)
    return DEBIAN_STUBBY_YML


def test_import_debian_stubby_yml(debian_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["import-stubby", str(debian_file)]) == 0
    out, err = capsys.readouterr()
    config = parse_config(out, "converted.yaml")
    assert config.listeners.addresses == (("127.0.0.1", 53), ("::1", 53))
    assert len(config.forwarding.upstreams) == 6
    assert all(
        u.transport == "tls" and u.port == 853 and u.auth_name for u in config.forwarding.upstreams
    )
    assert all(len(u.spki_pins) == 1 for u in config.forwarding.upstreams)
    first = config.forwarding.upstreams[0]
    assert (first.address, first.auth_name) == ("145.100.185.15", "dnsovertls.sinodun.com")
    assert first.spki_pins == ("62lKu9HsDVbyiPenApnc4sfmSYTHOVfFgL3pyB+cBL4=",)
    assert config.pool.strategy == "round_robin"  # round_robin_upstreams: 1
    assert config.transport.padding_block == 128 and config.transport.idle_timeout == 10.0
    for line in (
        "mapped   listen_addresses:",
        "mapped   upstream_recursive_servers: → upstreams: 6 DoT upstreams, 6 with pins",
        "mapped   round_robin_upstreams: → strategy: round_robin",
        "mapped   idle_timeout: → upstream_idle_timeout: 10000 ms = 10 s",
        "mapped   edns_client_subnet_private:",
        "ignored  resolution_type:",
    ):
        assert line in err, (line, err)


def test_check_config_and_import_to_a_file(
    debian_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["check-config", str(debian_file)]) == 0
    assert "(Stubby's format): OK (6 upstreams, 2 listen addresses)" in capsys.readouterr().out
    out = tmp_path / "config.yaml"
    assert cli.main(["import-stubby", str(debian_file), "-o", str(out)]) == 0
    assert cli.main(["check-config", str(out)]) == 0
    assert load(str(out))[0].forwarding.upstreams == load(str(debian_file))[0].forwarding.upstreams


def test_every_option_is_mapped_or_ignored_with_a_reason() -> None:
    conversion = convert(
        {
            "resolution_type": "GETDNS_RESOLUTION_STUB",
            "dns_transport_list": ["GETDNS_TRANSPORT_TLS", "GETDNS_TRANSPORT_UDP"],
            "tls_authentication": "GETDNS_AUTHENTICATION_NONE",
            "tls_query_padding_blocksize": 1,
            "round_robin_upstreams": 0,
            "timeout": 60000,
            "tls_connection_retries": 2,
            "tls_backoff_time": 300,
            "tls_min_version": "GETDNS_TLS1_3",
            "tls_max_version": "GETDNS_TLS1_3",
            "tls_cipher_list": "EECDH+AESGCM",
            "dnssec": "GETDNS_EXTENSION_TRUE",
            "dnssec_trust_anchors": "/etc/unbound/getdns-root.key",
            "appdata_dir": "/var/cache/stubby",
            "listen_addresses": ["127.0.0.1@5353", "0::1@5353"],
            "upstream_recursive_servers": [
                {"address_data": "9.9.9.9", "tls_auth_name": "dns.quad9.net"},
                {"address_data": "2620:fe::fe", "tls_port": 8853},
            ],
            "made_up_option": 1,
        },
        "stubby.yml",
    )
    options = conversion.options
    assert options["listen"] == ["127.0.0.1:5353", "[::1]:5353"]
    assert options["upstreams"] == ["tls://9.9.9.9:853#dns.quad9.net", "tls://[2620:fe::fe]:8853"]
    assert options["padding_block_size"] == 128 and options["strategy"] == "failover"
    assert options["timeout"] == 30  # clamped to our range
    assert options["failures_to_down"] == 2 and options["backoff_max"] == 300
    assert options["tls_min_version"] == "1.3"
    notes = {(n.kind, n.key): n.text for n in conversion.notes}
    assert "never makes" in notes[("ignored", "dns_transport_list")]  # no cleartext fallback
    assert "always verifies" in notes[("ignored", "tls_authentication")]
    assert options["dnssec"] == "validate"
    assert "does not exist" in notes[("ignored", "dnssec_trust_anchors")]
    assert "built in" in notes[("ignored", "appdata_dir")]
    assert "up to 1.3" in notes[("ignored", "tls_max_version")]
    assert ("ignored", "tls_cipher_list") in notes
    assert (
        "certificate must carry the IP"
        in notes[("ignored", "upstream_recursive_servers[1].tls_auth_name")]
    )
    assert notes[("ignored", "made_up_option")] == "not an option stubby-py knows"
    assert ("mapped", "timeout") in notes


def test_a_broken_stubby_file_names_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "stubby.yml"
    path.write_text("upstream_recursive_servers:\n  - address_data: dns.quad9.net\n")
    assert cli.main(["check-config", str(path)]) == 2
    expected = "upstream_recursive_servers[0].address_data: expected an IP address"
    assert f"{path}: {expected}" in capsys.readouterr().err


def spki_pin(cert_pem: bytes) -> str:
    key = x509.load_pem_x509_certificate(cert_pem).public_key()
    der = key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(der).digest()).decode()


def test_run_on_a_stubby_file(
    debian_file: Path, ca: trustme.CA, ca_file: str, tmp_path: Path
) -> None:
    """Debian's file with its listen address and upstreams pointed at this test's: the daemon
    reads it as it is, pins included (tls_pubkey_pinset → spki_pins, checked on connect)."""
    leaf = ca.issue_cert(AUTH_NAME, "127.0.0.1")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    leaf.configure_cert(context)
    with local_upstream(context) as upstream:
        port = free_port()
        data = yaml.safe_load(debian_file.read_text())
        data["listen_addresses"] = [f"127.0.0.1@{port}"]
        data["tls_ca_file"] = ca_file
        pin = spki_pin(leaf.cert_chain_pems[0].bytes())
        data["upstream_recursive_servers"] = [
            {"address_data": "127.0.0.1", "tls_port": upstream.port, "tls_auth_name": AUTH_NAME,
             "tls_pubkey_pinset": [{"digest": "sha256", "value": pin}]},
        ]  # fmt: skip
        path = tmp_path / "stubby.yml"
        path.write_text(yaml.safe_dump(data))
        with Daemon(["-c", str(path)], port=port) as daemon:
            assert ask(port, "from-stubby.example.").rcode() == dns.rcode.NOERROR
            assert "a Stubby configuration, converted" in daemon.stderr_text()
        assert upstream.state.queries


# IANA's https://data.iana.org/root-anchors/root-anchors.xml, abridged: the file getdns fetches
# into appdata_dir and Stubby users often name in dnssec_trust_anchors
ROOT_ANCHORS_XML = """<?xml version="1.0" encoding="UTF-8"?>
<TrustAnchor id="380DC50D-484E-40D0-A3AE-68F2B18F61C7" source="http://data.iana.org/root-anchors/root-anchors.xml">
<Zone>.</Zone>
<KeyDigest id="Kmyv6jo" validFrom="2024-07-18T00:00:00+00:00">
<KeyTag>38696</KeyTag>
<Algorithm>8</Algorithm>
<DigestType>2</DigestType>
<Digest>683D2D0ACB8C9B712A1948B27F741219298D0A450D612C483AF444A4C0FB2B16</Digest>
</KeyDigest>
</TrustAnchor>
"""


def test_an_xml_trust_anchor_file_is_ignored_and_the_rest_converts(tmp_path: Path) -> None:
    xml = tmp_path / "root-anchors.xml"
    xml.write_text(ROOT_ANCHORS_XML)
    stubby = tmp_path / "stubby.yml"
    stubby.write_text(
        "listen_addresses: [127.0.0.1@5353]\n"
        "upstream_recursive_servers:\n  - address_data: 9.9.9.9\n    tls_auth_name: dns.quad9.net\n"
        f"dnssec: GETDNS_EXTENSION_TRUE\ndnssec_trust_anchors: {xml}\n"
    )
    config, conversion = load(str(stubby))
    assert (
        config.dnssec.mode == "validate"
        and config.forwarding.upstreams[0].auth_name == "dns.quad9.net"
    )
    assert conversion is not None and "trust_anchors" not in conversion.options
    notes = {(n.kind, n.key): n.text for n in conversion.notes}
    text = notes[("ignored", "dnssec_trust_anchors")]
    assert "not DS/DNSKEY records in zone-file form (an XML trust anchor file?)" in text
    assert "the built-in root KSKs are used" in text


def test_a_zone_file_trust_anchor_file_is_mapped(tmp_path: Path) -> None:
    zone = tmp_path / "root.ds"
    zone.write_text(
        ". IN DS 38696 8 2 683D2D0ACB8C9B712A1948B27F741219298D0A450D612C483AF444A4C0FB2B16\n"
    )
    stubby = tmp_path / "stubby.yml"
    stubby.write_text(
        "upstream_recursive_servers:\n  - address_data: 9.9.9.9\n    tls_auth_name: dns.quad9.net\n"
        f"dnssec_trust_anchors: {zone}\n"
    )
    config, conversion = load(str(stubby))
    assert conversion is not None and conversion.options["trust_anchors"] == str(zone)
    assert config.dnssec.trust_anchors is not None
    assert ("mapped", "dnssec_trust_anchors") in {(n.kind, n.key) for n in conversion.notes}


@pytest.mark.parametrize(
    ("dnssec", "return_status", "expected"),
    [
        ("GETDNS_EXTENSION_TRUE", "GETDNS_EXTENSION_FALSE", "validate"),
        ("GETDNS_EXTENSION_FALSE", "GETDNS_EXTENSION_TRUE", "validate"),
        ("GETDNS_EXTENSION_FALSE", "GETDNS_EXTENSION_FALSE", "off"),
        ("GETDNS_EXTENSION_TRUE", None, "validate"),
        (None, "GETDNS_EXTENSION_FALSE", "off"),
    ],
)
def test_dnssec_validates_when_either_option_is_true(
    dnssec: str | None, return_status: str | None, expected: str
) -> None:
    data: dict[str, str] = {"resolution_type": "GETDNS_RESOLUTION_STUB"}
    # both orders: the later key must not override the earlier
    for first, second in (("dnssec", "dnssec_return_status"), ("dnssec_return_status", "dnssec")):
        values = {"dnssec": dnssec, "dnssec_return_status": return_status}
        ordered = dict(data)
        for key in (first, second):
            if values[key] is not None:
                ordered[key] = str(values[key])
        conversion = convert(ordered, "stubby.yml")
        assert conversion.options["dnssec"] == expected, ordered
        mapped = [n for n in conversion.notes if "dnssec" in n.key]
        assert len(mapped) == 1 and mapped[0].kind == "mapped"
