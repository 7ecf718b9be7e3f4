"""`stubby-py explain NAME [TYPE]` against a running daemon: the CLI for real, over the control
socket. A miss names the upstream, transport and timings; a hit says "cache (fresh, N s left)"
and that no upstream was asked; a stale serve, an upstream failure's class, and the DNSSEC
outcome (secure / insecure / bogus with its chain and Extended DNS Error) show up as they are."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dns.edns import EDECode

from stubby_py.commands import explain
from stubby_py.core import cache
from stubby_py.core.config import Config
from stubby_py.daemon import control
from stubby_py.daemon import explain as daemon_explain
from tests.conftest import dot_uri
from tests.daemon_thread import DaemonThread, make_config, running_daemon
from tests.servers import LocalUpstream, Misbehaviour


def run_explain(sock: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "stubby_py", "explain", "--socket", sock, *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def explain_json(sock: str, name: str, rdtype: str = "A") -> dict[str, Any]:
    result = run_explain(sock, name, rdtype, "--json")
    assert result.returncode == 0, result.stderr
    report: dict[str, Any] = json.loads(result.stdout)
    return report


@contextlib.contextmanager
def explained_daemon(config: Config, tmp_path: Path) -> Iterator[tuple[DaemonThread, str]]:
    """The daemon with its control socket in tmp_path (where `explain` is one of its commands)."""
    sock = str(tmp_path / "run" / "control.sock")
    with running_daemon(config.with_options(control_socket=sock)) as daemon:
        server = daemon.daemon.control
        assert server is not None and "explain" in server.commands
        yield daemon, sock


def test_miss_then_hit(dot_upstream: LocalUpstream, ca_file: str, tmp_path: Path) -> None:
    config = make_config([dot_uri(dot_upstream)], ca_file)
    with explained_daemon(config, tmp_path) as (_daemon, sock):
        miss = explain_json(sock, "www.example.org")
        assert miss["source"] == "upstream"
        assert miss["cache"]["state"] == "absent"
        assert miss["group"] == "default" and miss["rule"] is None
        [attempt] = miss["attempts"]
        assert attempt["transport"] == "DoT" and attempt["outcome"] == "answer"
        assert attempt["upstream"] in miss["answered_by"] and "DoT" in miss["answered_by"]
        assert 0 < attempt["ms"] <= miss["upstream_ms"] <= miss["total_ms"]
        assert miss["rcode"] == "NOERROR" and not miss["ad"]
        asked = len(dot_upstream.state.queries)

        hit = explain_json(sock, "www.example.org")
        assert hit["source"] == "cache" and hit["attempts"] == []
        assert hit["cache"]["state"] == "fresh"
        assert 0 < hit["cache"]["ttl_left"] <= 300
        assert hit["answered_by"] is None and hit["rcode"] == "NOERROR"
        assert len(dot_upstream.state.queries) == asked

        table = run_explain(sock, "www.example.org")
        assert table.returncode == 0, table.stderr
        assert "cache (fresh, " in table.stdout and "s left" in table.stdout
        assert "no upstream asked" in table.stdout
        assert len(dot_upstream.state.queries) == asked


def test_forwarding_rule_is_named(
    dot_upstream: LocalUpstream, plain_upstream: LocalUpstream, ca_file: str, tmp_path: Path
) -> None:
    config = make_config(
        [dot_uri(dot_upstream)],
        ca_file,
        upstream_groups=(("lan", (_spec(f"udp://127.0.0.1:{plain_upstream.port}"),)),),
        rules=(("corp.example", "lan"),),
    )
    with explained_daemon(config, tmp_path) as (_daemon, sock):
        report = explain_json(sock, "host.corp.example")
        assert report["rule"] == "corp.example" and report["group"] == "lan"
        assert [a["transport"] for a in report["attempts"]] == ["plain UDP"]
        assert report["attempts"][0]["group"] == "lan"
        assert not dot_upstream.state.queries


def _spec(uri: str) -> Any:
    from stubby_py.core.config import parse_upstream_uri

    return parse_upstream_uri(uri)


@pytest.fixture
def long_failure_hold(monkeypatch: pytest.MonkeyPatch) -> float:
    """RFC 9520's failure hold at 30 s instead of 1 s (the daemon runs in this process, and the
    cache reads the global at each failure): a held failure is still held when the next
    `python -m stubby_py explain` process, slow to start on a loaded machine, asks."""
    hold = 30.0
    monkeypatch.setattr(cache, "FAILURE_MIN_HOLD", hold)
    return hold


def test_stale_serve(
    dot_upstream: LocalUpstream, ca_file: str, tmp_path: Path, long_failure_hold: float
) -> None:
    config = make_config(
        [dot_uri(dot_upstream)], ca_file, cache_max_ttl=1, timeout=0.6, attempt_timeout=0.5
    )
    with explained_daemon(config, tmp_path) as (_daemon, sock):
        assert explain_json(sock, "stale.example.")["source"] == "upstream"
        time.sleep(1.2)
        dot_upstream.state.misbehaviour = Misbehaviour.STALL
        stale = explain_json(sock, "stale.example.")
        assert stale["cache"]["state"] == "stale" and stale["cache"]["ttl_left"] < 0
        assert stale["source"] == "stale"
        assert stale["rcode"] == "NOERROR"
        assert [code for code, _ in stale["ede"]] == [EDECode.STALE_ANSWER]
        assert [a["outcome"] for a in stale["attempts"]] == ["timeout"]
        assert stale["failure"].startswith("no-upstream-available")
        # the failure is now held (RFC 9520): the next explain says so, and asks nobody
        held = explain_json(sock, "stale.example.")
        assert held["cache"]["held_failure"] == "timeout"  # what failed, not that it did
        assert 0 < held["cache"]["retry_in"] <= long_failure_hold
        assert held["source"] == "stale" and held["attempts"] == []


def test_upstream_failure_shows_its_class(
    dot_upstream: LocalUpstream, ca_file: str, tmp_path: Path, long_failure_hold: float
) -> None:
    config = make_config([dot_uri(dot_upstream, "other.test")], ca_file)
    with explained_daemon(config, tmp_path) as (_daemon, sock):
        table = run_explain(sock, "www.example.org")
        assert table.returncode == 0, table.stderr
        assert "cert-name-mismatch" in table.stdout and "SERVFAIL" in table.stdout
        # held (RFC 9520): explain says so and asks nobody
        held = explain_json(sock, "www.example.org")
        assert held["source"] == "held-failure" and held["attempts"] == []
        assert held["cache"]["held_failure"] == "cert-name-mismatch"
        assert 0 < held["cache"]["retry_in"] <= long_failure_hold
        assert [code for code, _ in held["ede"]] == [EDECode.CACHED_ERROR]
        # ending the hold (a flush of the name drops it; its running out is test_cache.py's):
        # the upstream is asked again, and fails the same way
        assert control.request(sock, "flush", name="www.example.org")["ok"]
        report = explain_json(sock, "www.example.org")
        assert report["rcode"] == "SERVFAIL" and report["answered_by"] is None
        assert [a["outcome"] for a in report["attempts"]] == ["cert-name-mismatch"]
        assert "cert-name-mismatch" in report["failure"]
        assert any("cert-name-mismatch" in text for _, text in report["ede"])


def test_no_daemon_is_an_error(tmp_path: Path) -> None:
    result = run_explain(str(tmp_path / "nothing.sock"), "example.org")
    assert result.returncode != 0
    assert "no daemon answers" in result.stderr and not result.stdout


def test_table_renders_a_validated_miss() -> None:
    trace = daemon_explain.Trace(
        "www.ecdsap256.test.", "A", source="upstream", rcode="NOERROR", ad=True
    )
    trace.attempt(
        daemon_explain.Attempt("default", "tls://127.0.0.1:853#dns.test", "DoT", "answer", 4.2)
    )
    trace.answered_by = "tls://127.0.0.1:853#dns.test over DoT"
    trace.validation = daemon_explain.ValidationView(
        "secure", None, "", "", [daemon_explain.ChainLink(".", "secure", "trust anchor")], 1.5, 4
    )
    table = explain.format_table(trace.to_dict())
    assert "answered by  upstream tls://127.0.0.1:853#dns.test over DoT" in table
    assert "4 DS/DNSKEY questions asked" in table
    assert "NOERROR, AD" in table and "validation 1.5 ms" in table


# --- DNSSEC, against the private signed hierarchy ----------------------------------------------


@pytest.fixture(scope="module")
def validating(dnssec_hierarchy: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    config = make_config(
        [dnssec_hierarchy.resolver_upstream],
        dnssec="validate",
        trust_anchors=str(dnssec_hierarchy.anchor_ds_file),
    )
    with explained_daemon(config, tmp_path_factory.mktemp("explain")) as (_daemon, sock):
        yield sock


def _zones(links: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {link["zone"]: link for link in links}


@pytest.mark.interop
@pytest.mark.timeout(60)
def test_secure_answer_shows_the_chain(validating: str) -> None:
    report = explain_json(validating, "www.ecdsap256.test.")
    assert report["rcode"] == "NOERROR" and report["ad"]
    validation = report["validation"]
    assert validation["security"] == "secure" and validation["questions"] > 0
    zones = _zones(validation["chain"])
    assert {".", "test.", "ecdsap256.test."} <= zones.keys(), validation["chain"]
    assert all(link["security"] == "secure" for link in zones.values())
    assert "13" in zones["ecdsap256.test."]["detail"], zones["ecdsap256.test."]
    # warm: from the cache, and the key cache still shows the chain
    warm = explain_json(validating, "www.ecdsap256.test.")
    assert warm["source"] == "cache" and warm["cache"]["validation"] == "secure" and warm["ad"]
    assert {".", "test.", "ecdsap256.test."} <= _zones(warm["key_chain"]).keys()


@pytest.mark.interop
@pytest.mark.timeout(60)
def test_insecure_answer_names_the_delegation(validating: str) -> None:
    report = explain_json(validating, "www.insecure.test.")
    assert report["rcode"] == "NOERROR" and not report["ad"]
    validation = report["validation"]
    assert validation["security"] == "insecure"
    insecure = [link for link in validation["chain"] if link["security"] == "insecure"]
    assert insecure and insecure[0]["zone"] == "insecure.test.", validation["chain"]


@pytest.mark.interop
@pytest.mark.timeout(60)
def test_bogus_answer_says_why(validating: str) -> None:
    report = explain_json(validating, "www.expired.test.")
    assert report["rcode"] == "SERVFAIL"
    validation = report["validation"]
    assert validation["security"] == "bogus" and validation["ede"] == EDECode.SIGNATURE_EXPIRED
    assert "expir" in validation["reason"].lower()
    assert EDECode.SIGNATURE_EXPIRED in [code for code, _ in report["ede"]]
    table = run_explain(validating, "www.expired.test.")
    assert "bogus" in table.stdout and "Signature Expired" in table.stdout
