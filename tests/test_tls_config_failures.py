"""An upstream whose TLS settings cannot be built fails alone (`tls-config`); the pool serves.

Issue #14 item 7: a garbage or unreadable CA file, or one replaced by garbage while the daemon
runs, used to raise outside the error handling, so that every query was answered SERVFAIL
"internal error" and the healthy upstream beside it was never asked. `check-config` and `check`
refuse such a file with the file, line and key.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import dns.edns
import dns.message
import dns.query
import dns.rcode
import pytest
import trustme

from stubby_py.core.config import parse_config
from stubby_py.core.errors import ConfigError
from tests.clients import ask_many, rcodes
from tests.conftest import AUTH_NAME, dot_uri, server_context
from tests.daemon_thread import DaemonThread, make_config, running_daemon
from tests.servers import LocalUpstream, doq_server, h2_server, local_upstream, write_cert_files

GARBAGE = "this is not a certificate\n"
BROKEN_ADDRESS = "192.0.2.66"
HEALTHY_ADDRESS = "192.0.2.1"


def upstream_stats(daemon: DaemonThread) -> dict[str, dict[str, Any]]:
    figures = daemon.call(daemon.daemon.collect_stats)
    return {u["name"]: u for u in figures["upstreams"]}


def addresses(results: list[tuple[Any, float]]) -> set[str]:
    return {reply.answer[0][0].address for reply, _ in results if reply is not None}


@pytest.fixture
def healthy(ca: trustme.CA) -> Iterator[LocalUpstream]:
    with local_upstream(server_context(ca)) as server:
        server.state.address = HEALTHY_ADDRESS
        yield server


@pytest.fixture
def cert_files(ca: trustme.CA, tmp_path: Path) -> tuple[str, str]:
    return write_cert_files(ca, str(tmp_path), AUTH_NAME, "127.0.0.1")


@pytest.fixture
def broken_uri(
    request: pytest.FixtureRequest, ca: trustme.CA, cert_files: tuple[str, str]
) -> Iterator[str]:
    """An upstream of the given transport, listed first: its CA file will be garbage."""
    transport = request.param
    if transport == "tls":
        with local_upstream(server_context(ca)) as server:
            yield dot_uri(server)
    elif transport == "https":
        with h2_server(server_context(ca)) as h2:
            yield f"https://{AUTH_NAME}:{h2.port}/dns-query#127.0.0.1"
    else:
        with doq_server(*cert_files) as doq:
            yield f"quic://127.0.0.1:{doq.port}#{AUTH_NAME}"


@pytest.mark.parametrize("broken_uri", ["tls", "https", "quic"], indirect=True)
def test_garbage_ca_file_fails_only_its_own_upstream(
    broken_uri: str, healthy: LocalUpstream, ca_file: str, tmp_file: Any
) -> None:
    garbage = tmp_file("garbage.pem", GARBAGE)
    config = make_config([broken_uri, dot_uri(healthy)], ca_file, cache_size=0)
    broken_spec = replace(config.forwarding.upstreams[0], ca_file=garbage)
    config = config.with_options(upstreams=(broken_spec, config.forwarding.upstreams[1]))
    with running_daemon(config) as daemon:
        results = ask_many([f"g{i}.example." for i in range(30)], daemon.port, concurrency=5)
        stats = upstream_stats(daemon)
    assert rcodes(results) == ["NOERROR"] * 30
    broken = stats[broken_spec.label]
    assert set(broken["failure_kinds"]) == {"tls-config"}
    assert broken["state"] in ("down", "probing")  # taken out of the order, probed later
    assert stats[config.forwarding.upstreams[1].label]["state"] == "up"


def test_ca_file_turned_garbage_mid_run_is_noticed_and_recovered_from(
    ca: trustme.CA, healthy: LocalUpstream, ca_file: str, tmp_path: Path
) -> None:
    """The CA file is read again for a new connection when it changed: broken, then mended."""
    own_ca = tmp_path / "own-ca.pem"
    shutil.copyfile(ca_file, own_ca)
    with local_upstream(server_context(ca)) as first:
        first.state.address = BROKEN_ADDRESS
        config = make_config([dot_uri(first), dot_uri(healthy)], ca_file, cache_size=0, hedge=False)
        first_spec = replace(config.forwarding.upstreams[0], ca_file=str(own_ca))
        config = config.with_options(upstreams=(first_spec, config.forwarding.upstreams[1]))
        with running_daemon(config) as daemon:
            before = ask_many([f"a{i}.example." for i in range(5)], daemon.port)
            assert addresses(before) == {BROKEN_ADDRESS}  # the first upstream answers

            own_ca.write_text(GARBAGE)
            daemon.call(daemon.runtime.network_changed, "test")  # a new connection is due
            during = ask_many([f"b{i}.example." for i in range(20)], daemon.port, concurrency=5)
            assert rcodes(during) == ["NOERROR"] * 20
            assert addresses(during) == {HEALTHY_ADDRESS}
            kinds = upstream_stats(daemon)[first_spec.label]["failure_kinds"]
            assert set(kinds) == {"tls-config"}

            shutil.copyfile(ca_file, own_ca)
            daemon.call(daemon.runtime.network_changed, "test")  # forget the backoff
            after = ask_many([f"c{i}.example." for i in range(5)], daemon.port)
            assert addresses(after) == {BROKEN_ADDRESS}


def test_unreadable_ca_file_is_a_tls_config_failure(
    healthy: LocalUpstream, ca_file: str, tmp_path: Path
) -> None:
    missing = tmp_path / "gone.pem"  # removed after the configuration was read
    config = make_config([dot_uri(healthy), dot_uri(healthy)], ca_file, cache_size=0)
    first = replace(config.forwarding.upstreams[0], ca_file=str(missing), name="gone")
    config = config.with_options(upstreams=(first, config.forwarding.upstreams[1]))
    with running_daemon(config) as daemon:
        results = ask_many([f"u{i}.example." for i in range(10)], daemon.port, concurrency=2)
        stats = upstream_stats(daemon)
    assert rcodes(results) == ["NOERROR"] * 10
    assert set(stats[first.label]["failure_kinds"]) == {"tls-config"}


# --- check-config and check -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (GARBAGE, "holds no PEM certificate"),
        ("", "holds no PEM certificate"),
        (
            "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
            "does not parse as PEM certificates",
        ),
    ],
)
def test_config_refuses_a_ca_file_that_does_not_parse(
    tmp_file: Any, content: str, problem: str
) -> None:
    bad = tmp_file("bad.pem", content)
    texts = {
        "ca_file": f"ca_file: {bad}\n",
        "upstreams[0].ca_file": (
            f"upstreams:\n  - url: tls://192.0.2.1#dns.test\n    ca_file: {bad}\n"
        ),
    }
    for key, text in texts.items():
        with pytest.raises(ConfigError) as info:
            parse_config(text, "c.yaml")
        line = text.count("\n")
        assert f"c.yaml:{line}: {key}: expected a PEM file of CA certificates" in str(info.value)
        assert bad in str(info.value) and problem in str(info.value)


def test_a_ca_file_with_good_certificates_is_accepted(ca_file: str) -> None:
    config = parse_config(f"ca_file: {ca_file}\n", "c.yaml")
    assert config.transport.ca_file == ca_file


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "stubby_py", *args],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip


def test_check_config_and_check_refuse_a_garbage_ca_file(tmp_file: Any) -> None:
    bad = tmp_file("bad.pem", GARBAGE)
    conf = tmp_file(
        "c.yaml", f"upstreams:\n  - url: tls://127.0.0.1:9#dns.test\n    ca_file: {bad}\n"
    )
    for args in (["check-config", conf], ["check", "-c", conf, "--connect", "--timeout", "1"]):
        result = _cli(*args)
        assert result.returncode == 2, result
        assert f"{conf}:3: upstreams[0].ca_file:" in result.stderr and bad in result.stderr
    result = _cli("check", "--upstream", "tls://127.0.0.1:9#dns.test", "--ca-file", bad)
    assert result.returncode == 2 and "command line:" in result.stderr and bad in result.stderr


def test_rcode_of_a_lone_broken_upstream_is_servfail_not_internal_error(
    healthy: LocalUpstream, ca_file: str, tmp_file: Any
) -> None:
    """With no healthy upstream beside it the answer is an upstream failure naming tls-config,
    in time, not an internal error."""
    garbage = tmp_file("garbage.pem", GARBAGE)
    config = make_config([dot_uri(healthy)], garbage, cache_size=0, timeout=1.0)
    with running_daemon(config) as daemon:
        started = time.monotonic()
        query = dns.message.make_query("x.example.", "A", use_edns=0)
        reply = dns.query.udp(query, "127.0.0.1", port=daemon.port, timeout=5)
    assert time.monotonic() - started < 1.5
    assert reply.rcode() == dns.rcode.SERVFAIL
    texts = [o.text or "" for o in reply.options if isinstance(o, dns.edns.EDEOption)]
    assert any("tls-config" in t for t in texts) and not any("internal" in t for t in texts)
