"""Per-upstream `fallback` (a DoT upstream's DoH, for networks that block port 853), on loopback.

The primary's port has nothing listening (connection refused, as a firewall's RST): its DoH
fallback answers, the query log, stats and `explain` say so, and once the primary listens again
queries go back to it. A primary that is reached but cannot be trusted (a certificate for
another name) or that answers SERVFAIL is never routed around: the fallback gets no query.
The netns test (test_road_netns.py) does the same with nftables dropping port 853.
"""

from __future__ import annotations

import contextlib
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

from stubby_py.core import fallback
from stubby_py.core.config import (
    Config,
    default_upstreams,
    parse_config,
    parse_upstream_uri,
    with_fallback,
)
from stubby_py.core.errors import (
    CertNameMismatchError,
    ConfigError,
    ConnectionRefusedUpstreamError,
    NoRouteError,
    PinMismatchError,
    TLSHandshakeError,
    UpstreamConnectError,
    UpstreamTimeoutError,
)
from tests.conftest import AUTH_NAME, server_context
from tests.daemon_thread import make_config, running_daemon
from tests.peers import free_port
from tests.servers import H2DoHServer, LocalUpstream, Misbehaviour, h2_server
from tests.servers.client_side import answer_address, ask, wait_for
from tests.test_explain import explain_json, explained_daemon

pytestmark = pytest.mark.timeout(60)

DOT_ADDRESS = "192.0.2.53"
DOH_ADDRESS = "192.0.2.43"


# --- the policy -----------------------------------------------------------------------------


def test_only_a_connection_that_cannot_be_made_is_a_reason() -> None:
    connect_timeout = UpstreamTimeoutError("x: connecting took too long")
    connect_timeout.no_connection = True
    assert fallback.cannot_connect(ConnectionRefusedUpstreamError("refused"))
    assert fallback.cannot_connect(NoRouteError("no route"))
    assert fallback.cannot_connect(UpstreamConnectError("connect failed"))
    assert fallback.cannot_connect(connect_timeout)
    # reached, and could not be trusted: a hard error, never routed around
    assert not fallback.cannot_connect(CertNameMismatchError("name"))
    assert not fallback.cannot_connect(TLSHandshakeError("alert"))
    assert not fallback.cannot_connect(PinMismatchError("pin"))
    # a timeout on a working connection: the primary is there, only slow
    assert not fallback.cannot_connect(UpstreamTimeoutError("no answer"))


def test_policy_backs_off_and_probes_once() -> None:
    policy = fallback.FallbackPolicy()
    assert policy.primary_unreachable(100.0)
    assert policy.active == 0
    assert not policy.take_probe(100.0 + fallback.FIRST_BACKOFF - 0.1)
    assert policy.take_probe(100.0 + fallback.FIRST_BACKOFF)
    assert not policy.take_probe(100.0 + fallback.FIRST_BACKOFF)  # one probe at a time
    assert not policy.primary_unreachable(110.0)  # still on the fallback: no new switch
    assert policy.probe_at == 110.0 + 2 * fallback.FIRST_BACKOFF
    assert policy.primary_connected()
    assert policy.active is None and policy.switches == 1
    policy.primary_unreachable(200.0)
    policy.reset()  # a network change: the primary first again
    assert policy.active is None


# --- configuration --------------------------------------------------------------------------


def test_config_fallback_is_parsed_and_authenticated_as_its_primary(tmp_path: Path) -> None:
    pin = "/SlsviBkb05Y/8XiKF9+CZsgCtrqPQk5bh47o0R3/Cg="
    config = parse_config(
        "upstreams:\n"
        "  - url: tls://9.9.9.9#dns.quad9.net\n"
        f"    spki_pins: ['{pin}']\n"
        "    fallback: [https://dns.quad9.net/dns-query#9.9.9.9]\n",
        "road.yaml",
    )
    spec = config.forwarding.upstreams[0]
    assert [f.label for f in spec.fallback] == ["https://dns.quad9.net:443#9.9.9.9"]
    assert spec.fallback[0].spki_pins == (pin,)
    assert spec.fallback[0].auth_name == "dns.quad9.net"


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ("udp://9.9.9.9", r"road.yaml:3: upstreams\[0\]\.fallback\[0\]: a fallback must be"),
        ("tls://9.9.9.10#dns.quad9.net", "same transport and port"),
    ],
)
def test_config_refuses_a_fallback_that_gives_something_up(entry: str, expected: str) -> None:
    text = f"upstreams:\n  - url: tls://9.9.9.9#dns.quad9.net\n    fallback: [{entry}]\n"
    with pytest.raises(ConfigError, match=expected):
        parse_config(text, "road.yaml")


def test_the_built_in_pool_falls_back_to_each_providers_doh() -> None:
    for spec in default_upstreams():
        assert spec.transport == "tls"
        (doh,) = spec.fallback
        assert (doh.transport, doh.port) == ("https", 443)
        assert (doh.address, doh.auth_name) == (spec.address, spec.auth_name)


# --- on loopback ----------------------------------------------------------------------------


class _FixedPortDoT(LocalUpstream):
    """A DoT server on a port chosen before it starts (the primary coming back)."""

    def __init__(self, context: ssl.SSLContext, port: int) -> None:
        super().__init__(context)
        self.port = port


@contextlib.contextmanager
def _doh(ca: trustme.CA) -> Iterator[H2DoHServer]:
    with h2_server(server_context(ca)) as server:
        server.state.address = DOH_ADDRESS
        yield server


def _config(primary_port: int, doh: H2DoHServer, ca_file: str, **options: object) -> Config:
    config = make_config([f"tls://127.0.0.1:{primary_port}#{AUTH_NAME}"], ca_file, **options)
    spec = with_fallback(
        config.forwarding.upstreams[0],
        (parse_upstream_uri(f"https://{AUTH_NAME}:{doh.port}/dns-query#127.0.0.1"),),
    )
    return config.with_options(upstreams=(spec,), cache_size=0)


def test_refused_primary_is_answered_by_its_fallback_then_comes_back(
    ca: trustme.CA, ca_file: str, tmp_path: Path
) -> None:
    primary_port = free_port()
    query_log = tmp_path / "queries.log"
    with _doh(ca) as doh:
        config = _config(primary_port, doh, ca_file, query_log=str(query_log))
        with explained_daemon(config, tmp_path) as (daemon, sock):
            reply = ask(daemon.port, "a.example.")
            assert answer_address(reply) == DOH_ADDRESS, reply
            report = explain_json(sock, "b.example")
            assert "through its fallback https://dns.test" in report["answered_by"]
            figures = daemon.daemon.collect_stats()["upstreams"][0]["fallback"]
            assert figures["active"] == f"https://{AUTH_NAME}:{doh.port}#127.0.0.1"
            assert figures["answers"] >= 2 and figures["switches"] == 1
            daemon.resolver.query_log.flush()
            assert "upstream-fallback:https://dns.test" in query_log.read_text()

            dot = _FixedPortDoT(server_context(ca), primary_port)
            dot.state.address = DOT_ADDRESS
            dot.start()
            try:
                names = iter(f"n{i}.example." for i in range(400))
                back = wait_for(
                    lambda: answer_address(ask(daemon.port, next(names))) == DOT_ADDRESS,
                    timeout=3 * fallback.FIRST_BACKOFF,
                )
                assert back, "the primary was not asked again once it listened"
                assert daemon.daemon.collect_stats()["upstreams"][0]["fallback"]["active"] is None
            finally:
                dot.stop()


def test_a_certificate_failure_is_not_routed_around(
    ca: trustme.CA, ca_file: str, tmp_path: Path
) -> None:
    """The primary is reached and presents a certificate for another name: a hard error."""
    with _doh(ca) as doh:
        wrong = LocalUpstream(server_context(ca, "other.test")).start()
        try:
            config = _config(wrong.port, doh, ca_file)
            with running_daemon(config) as daemon:
                query = dns.message.make_query("a.example.", "A", use_edns=0)
                reply = dns.query.udp(query, "127.0.0.1", port=daemon.port, timeout=5)
                assert reply.rcode() == dns.rcode.SERVFAIL
                (ede,) = [o for o in reply.options if o.otype == dns.edns.EDE]
                assert "cert-name-mismatch" in str(ede.text), ede  # type: ignore[attr-defined]
        finally:
            wrong.stop()
        assert doh.state.queries == []


def test_a_servfail_is_not_routed_around(
    dot_upstream: LocalUpstream, ca: trustme.CA, ca_file: str
) -> None:
    dot_upstream.state.misbehaviour = Misbehaviour.SERVFAIL
    with _doh(ca) as doh:
        config = _config(dot_upstream.port, doh, ca_file)
        config = config.with_options(
            upstreams=(replace(config.forwarding.upstreams[0]),), retry_servfail=False
        )
        with running_daemon(config) as daemon:
            assert ask(daemon.port, "a.example.").rcode() == dns.rcode.SERVFAIL
        assert doh.state.queries == []
