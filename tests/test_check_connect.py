"""`stubby-py check --connect`, run as a user runs it (a subprocess), against local upstreams.

Each case is one injected fault (wrong name, expired or untrusted certificate, pin mismatch,
closed port, a black hole that accepts TCP and never speaks TLS); the JSON report must name its
kind, carry the certificate facts that explain it, and the exit status must say unusable. The
good upstream's reported pin is compared with one computed here from the server's certificate.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import hashlib
import json
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from tests.conftest import AUTH_NAME, dot_uri
from tests.dnssec_hierarchy import Hierarchy
from tests.servers import doq_server, h2_server, h3_server, local_upstream, write_cert_files

pytestmark = pytest.mark.timeout(60)


def run_check(*args: str, timeout: float = 2.0) -> tuple[int, dict[str, Any], float]:
    command = [sys.executable, "-m", "stubby_py", "check", "--connect", "--format", "json"]
    started = time.monotonic()
    done = subprocess.run(
        [*command, "--timeout", str(timeout), *args], capture_output=True, text=True, timeout=30
    )
    elapsed = time.monotonic() - started
    assert done.stdout, done.stderr
    return done.returncode, json.loads(done.stdout), elapsed


def pin_of(leaf: trustme.LeafCert) -> str:
    """The SPKI pin, computed here with cryptography alone (not with stubby_py's spki_pin)."""
    cert = x509.load_pem_x509_certificate(leaf.cert_chain_pems[0].bytes())
    spki = cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


def context_for(leaf: trustme.LeafCert) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    leaf.configure_cert(context)
    return context


@pytest.fixture(scope="module")
def good_leaf(ca: trustme.CA) -> trustme.LeafCert:
    return ca.issue_cert(AUTH_NAME, "127.0.0.1")


@contextlib.contextmanager
def black_hole() -> Iterator[int]:
    """A TCP listener that completes the handshake (kernel backlog) and never says a word."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        yield listener.getsockname()[1]


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def only(report: dict[str, Any]) -> dict[str, Any]:
    assert len(report["upstreams"]) == 1
    upstream: dict[str, Any] = report["upstreams"][0]
    return upstream


def test_good_upstream_reports_everything(good_leaf: trustme.LeafCert, ca_file: str) -> None:
    with local_upstream(context_for(good_leaf)) as server:
        status, report, _ = run_check("--upstream", dot_uri(server), "--ca-file", ca_file)
    assert status == 0
    assert report["usable"] is True
    up = only(report)
    assert up["usable"] is True and up["kind"] is None and up["error"] is None
    assert up["tls_version"] in ("TLSv1.2", "TLSv1.3")
    assert up["handshake_ms"] > 0
    assert up["certificate_source"] == "verified"
    assert up["name_matched"] is True
    cert = up["certificate"]
    assert cert["spki_pin"] == pin_of(good_leaf)
    assert cert["san_dns"] == [AUTH_NAME] and cert["san_ip"] == ["127.0.0.1"]
    assert cert["not_after"].startswith("3000-") and cert["expired"] is False
    # the verified chain: the leaf, then the trustme CA
    assert up["chain"][0]["spki_pin"] == pin_of(good_leaf)
    assert len(up["chain"]) == 2
    assert up["query"]["rcode"] == "NOERROR" and up["query"]["ms"] > 0
    # this test upstream serves unsigned local data: the report says it strips DNSSEC
    assert up["query"]["dnssec"] is False
    assert up["pins_configured"] == [] and up["pins_matched"] is None


def test_an_upstream_that_returns_dnssec_data_is_told_apart(dnssec_hierarchy: Hierarchy) -> None:
    """The test query goes with DO and CD: the signed (private) root's NS come back with their
    RRSIG from a resolver that keeps DNSSEC data; the table says what that means."""
    status, report, _ = run_check("--upstream", dnssec_hierarchy.resolver_upstream)
    assert status == 0
    up = only(report)
    assert up["query"]["dnssec"] is True
    assert up["query"]["answers"] and all("RRSIG" not in a for a in up["query"]["answers"])
    table = subprocess.run(
        [sys.executable, "-m", "stubby_py", "check", "--connect",
         "--upstream", dnssec_hierarchy.resolver_upstream],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert "RRSIGs returned with DO" in table.stdout, table.stdout


def test_name_mismatch(good_leaf: trustme.LeafCert, ca_file: str) -> None:
    with local_upstream(context_for(good_leaf)) as server:
        status, report, _ = run_check(
            "--upstream", dot_uri(server, "other.test"), "--ca-file", ca_file
        )
        assert server.state.queries == []
    assert status == 1 and report["usable"] is False
    up = only(report)
    assert up["kind"] == "cert-name-mismatch"
    assert "other.test" in up["error"]
    # read by a second, unverified handshake, and labelled so
    assert up["certificate_source"] == "unverified"
    assert up["name_matched"] is False
    assert up["certificate"]["spki_pin"] == pin_of(good_leaf)
    assert up["query"] is None


def test_expired_certificate(ca: trustme.CA, ca_file: str) -> None:
    leaf = ca.issue_cert(
        AUTH_NAME,
        not_before=datetime.datetime(2020, 1, 1),
        not_after=datetime.datetime(2021, 1, 1),
    )
    with local_upstream(context_for(leaf)) as server:
        status, report, _ = run_check("--upstream", dot_uri(server), "--ca-file", ca_file)
    assert status == 1
    up = only(report)
    assert up["kind"] == "cert-expired"
    assert up["certificate"]["expired"] is True
    assert up["certificate"]["not_after"].startswith("2021-01-01")
    assert up["name_matched"] is True


def test_untrusted_certificate(good_leaf: trustme.LeafCert, tmp_path: Path) -> None:
    other_ca = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other_ca))
    with local_upstream(context_for(good_leaf)) as server:
        status, report, _ = run_check("--upstream", dot_uri(server), "--ca-file", str(other_ca))
    assert status == 1
    up = only(report)
    assert up["kind"] == "cert-untrusted"
    assert up["certificate"]["spki_pin"] == pin_of(good_leaf)


def test_pin_mismatch_and_match(good_leaf: trustme.LeafCert, ca_file: str, tmp_path: Path) -> None:
    wrong = base64.b64encode(bytes(32)).decode()
    with local_upstream(context_for(good_leaf)) as server:
        results = {}
        for label, pins in (("wrong", [wrong]), ("right", [wrong, pin_of(good_leaf)])):
            config = tmp_path / f"{label}.yaml"
            config.write_text(
                f"ca_file: {ca_file}\nupstreams:\n"
                f"  - url: {dot_uri(server)}\n    spki_pins: {json.dumps(pins)}\n"
            )
            results[label] = run_check("-c", str(config))
    status, report, _ = results["wrong"]
    assert status == 1
    up = only(report)
    assert up["kind"] == "pin-mismatch"
    assert up["pins_configured"] == [wrong] and up["pins_matched"] is False
    assert up["certificate"]["spki_pin"] == pin_of(good_leaf)
    status, report, _ = results["right"]
    assert status == 0 and only(report)["pins_matched"] is True


def test_closed_port(ca_file: str) -> None:
    status, report, _ = run_check(
        "--upstream", f"tls://127.0.0.1:{closed_port()}#{AUTH_NAME}", "--ca-file", ca_file
    )
    assert status == 1
    up = only(report)
    assert up["kind"] == "connection-refused"
    assert up["handshake_ms"] is None and up["certificate"] is None


def test_black_hole_is_bounded_by_the_timeout(ca_file: str) -> None:
    with black_hole() as port:
        status, report, elapsed = run_check(
            "--upstream", f"tls://127.0.0.1:{port}#{AUTH_NAME}", "--ca-file", ca_file, timeout=1.0
        )
    assert status == 1
    assert only(report)["kind"] == "timeout"
    assert elapsed < 1.0 + 3.0  # the timeout, plus interpreter start-up


def test_many_upstreams_one_bad_fails_the_whole(good_leaf: trustme.LeafCert, ca_file: str) -> None:
    with local_upstream(context_for(good_leaf)) as server:
        status, report, _ = run_check(
            "--upstream", dot_uri(server),
            "--upstream", f"tls://127.0.0.1:{closed_port()}#{AUTH_NAME}",
            "--upstream", f"tcp://127.0.0.1:{server.port}",
            "--ca-file", ca_file,
        )  # fmt: skip
    assert status == 1 and report["usable"] is False
    assert [u["usable"] for u in report["upstreams"]] == [True, False, False]
    # plain TCP to a TLS port: no TLS facts, the query fails
    assert report["upstreams"][2]["tls_version"] is None


def test_doh_h2_upstream(good_leaf: trustme.LeafCert, ca_file: str) -> None:
    with h2_server(context_for(good_leaf)) as server:
        status, report, _ = run_check(
            "--upstream", f"https://127.0.0.1:{server.port}/dns-query", "--ca-file", ca_file
        )
    assert status == 0
    up = only(report)
    assert up["alpn"] == "h2" and up["certificate"]["spki_pin"] == pin_of(good_leaf)
    assert up["query"]["rcode"] == "NOERROR"


def test_doq_and_h3_upstreams(ca: trustme.CA, ca_file: str, tmp_path: Path) -> None:
    cert_file, key_file = write_cert_files(ca, str(tmp_path), AUTH_NAME, "127.0.0.1")
    with doq_server(cert_file, key_file) as doq, h3_server(cert_file, key_file) as h3:
        status, report, _ = run_check(
            "--upstream", f"quic://127.0.0.1:{doq.port}#{AUTH_NAME}",
            "--upstream", f"h3://127.0.0.1:{h3.port}/dns-query",
            "--upstream", f"quic://127.0.0.1:{doq.port}#other.test",
            "--ca-file", ca_file,
        )  # fmt: skip
    assert status == 1
    good_doq, good_h3, wrong = report["upstreams"]
    with open(cert_file, "rb") as handle:
        leaf = x509.load_pem_x509_certificates(handle.read())[0]
    spki = leaf.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    pin = base64.b64encode(hashlib.sha256(spki).digest()).decode()
    assert good_doq["usable"] and good_doq["alpn"] == "doq"
    assert good_doq["certificate"]["spki_pin"] == pin and good_doq["query"]["rcode"] == "NOERROR"
    assert good_h3["usable"] and good_h3["alpn"] == "h3"
    assert wrong["kind"] == "cert-name-mismatch"


def test_table_output_and_check_without_connect(good_leaf: trustme.LeafCert, ca_file: str) -> None:
    with local_upstream(context_for(good_leaf)) as server:
        done = subprocess.run(
            [sys.executable, "-m", "stubby_py", "check", "--connect", "--ca-file", ca_file,
             "--upstream", dot_uri(server), "--upstream", dot_uri(server, "other.test")],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
    assert done.returncode == 1
    assert "  OK\n" in done.stdout
    assert "UNUSABLE  cert-name-mismatch" in done.stdout
    assert pin_of(good_leaf) in done.stdout
    assert "UNVERIFIED" in done.stdout
    assert "1 of 2 upstreams usable" in done.stdout
    plain = subprocess.run(
        [sys.executable, "-m", "stubby_py", "check", "--upstream", dot_uri(server)],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert plain.returncode == 0 and "OK (1 upstreams)" in plain.stdout


def test_bad_configuration_exits_2(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("upstreams:\n  - url: ftp://x\n")
    done = subprocess.run(
        [sys.executable, "-m", "stubby_py", "check", "--connect", "-c", str(config)],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert done.returncode == 2 and "upstreams[0].url" in done.stderr


def test_quic_closed_port_and_black_hole(ca_file: str) -> None:
    """UDP: ICMP port unreachable says refused at once; a silent socket runs into the timeout."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind(("127.0.0.1", 0))
            closed = probe.getsockname()[1]
        status, report, elapsed = run_check(
            "--upstream", f"quic://127.0.0.1:{closed}#{AUTH_NAME}",
            "--upstream", f"quic://127.0.0.1:{silent.getsockname()[1]}#{AUTH_NAME}",
            "--ca-file", ca_file, timeout=1.0,
        )  # fmt: skip
    assert status == 1
    assert [u["kind"] for u in report["upstreams"]] == ["connection-refused", "timeout"]
    assert elapsed < 1.0 + 3.0
