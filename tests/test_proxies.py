"""Upstreams through proxies: DoT and DoH (HTTP/2) through microsocks (SOCKS5) and tinyproxy
(HTTP CONNECT), the daemon and `check --connect` alike.

Each proxy binds its outgoing connections to an address of its own (tests/servers/proxies.py); the
test servers record each connection's peer address, so every connection is seen to come from the
proxy, and in the bad cases (proxy down, wrong credentials, garbage, CONNECT refused) none
reaches the server at all: a failing proxy is that upstream's failure, never a reason to go
around it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dns.edns
import dns.message
import dns.query
import dns.rcode
import pytest
import trustme

from stubby_py.core.config import (
    NO_PROXY,
    Config,
    Overrides,
    ProxySpec,
    apply_overrides,
    parse_config,
    parse_proxy_uri,
    upstream_proxy,
)
from stubby_py.core.errors import ConfigError
from stubby_py.transports.bootstrap import FixedEndpoint, endpoint_for
from stubby_py.transports.proxy import tunnel_destination
from tests.conftest import AUTH_NAME, server_context
from tests.daemon_thread import make_config, running_daemon
from tests.peers import free_ports
from tests.servers import (
    ServerState,
    doq_server,
    h2_server,
    h3_server,
    local_upstream,
    write_cert_files,
)
from tests.servers.proxies import (
    DANTE_OUT,
    HTTP_OUT,
    SOCKS_OUT,
    dante,
    garbage_proxy,
    microsocks,
    tinyproxy,
)

pytestmark = pytest.mark.timeout(60)

TIMEOUT = 1.5


@contextlib.contextmanager
def dot_server(ca: trustme.CA, *names: str) -> Iterator[tuple[str, int, ServerState]]:
    with local_upstream(server_context(ca, *names)) as server:
        yield "tls", server.port, server.state


@contextlib.contextmanager
def doh_server(ca: trustme.CA, *names: str) -> Iterator[tuple[str, int, ServerState]]:
    with h2_server(server_context(ca, *names)) as server:
        yield "https", server.port, server.state


SERVERS = {"dot": dot_server, "doh": doh_server}


def upstream_uri(transport: str, port: int, address: str = "127.0.0.1") -> str:
    if transport == "tls":
        return f"tls://{address}:{port}#{AUTH_NAME}"
    return f"https://{AUTH_NAME}:{port}/dns-query#{address}"


def proxied_config(uri: str, ca_file: str, proxy: str) -> Config:
    config = make_config(
        [uri], ca_file, timeout=TIMEOUT, attempt_timeout=TIMEOUT, proxy=parse_proxy_uri(proxy)
    )
    return config


def ask(port: int, name: str = "a.example.") -> dns.message.Message:
    query = dns.message.make_query(name, "A", use_edns=0)
    return dns.query.udp(query, "127.0.0.1", port=port, timeout=5)


def ede_texts(reply: dns.message.Message) -> list[str]:
    return [o.text or "" for o in reply.options if isinstance(o, dns.edns.EDEOption)]


# --- through the proxy ------------------------------------------------------------------------


@pytest.mark.parametrize("server_kind", ["dot", "doh"])
def test_through_socks5_with_credentials_file(
    server_kind: str, ca: trustme.CA, ca_file: str, tmp_path: Path
) -> None:
    """Credentials from a file; the answer comes, and the server's every connection came from
    the proxy's outgoing address (none from the daemon's own)."""
    secret = tmp_path / "proxy.cred"
    secret.write_text("alice:s3cret\n")
    secret.chmod(0o600)
    with (
        SERVERS[server_kind](ca) as (transport, port, state),
        microsocks(tmp_path, "alice", "s3cret") as proxy_port,
    ):
        text = f"""
upstreams:
  - url: {upstream_uri(transport, port)}
    proxy:
      url: socks5://127.0.0.1:{proxy_port}
      credentials_file: {secret}
"""
        parsed = parse_config(text, "proxy.yaml")
        config = make_config([], ca_file, timeout=TIMEOUT, attempt_timeout=TIMEOUT).with_options(
            upstreams=parsed.forwarding.upstreams,
        )
        with running_daemon(config) as daemon:
            replies = [ask(daemon.port, f"q{i}.example.") for i in range(3)]
    assert [r.rcode() for r in replies] == [dns.rcode.NOERROR] * 3
    assert all(r.answer for r in replies)
    assert state.peers and set(state.peers) == {SOCKS_OUT}, state.peers


@pytest.mark.parametrize("server_kind", ["dot", "doh"])
def test_through_http_connect(
    server_kind: str, ca: trustme.CA, ca_file: str, tmp_path: Path
) -> None:
    with (
        SERVERS[server_kind](ca) as (transport, port, state),
        tinyproxy(tmp_path, [port]) as proxy_port,
    ):
        config = proxied_config(
            upstream_uri(transport, port), ca_file, f"http://127.0.0.1:{proxy_port}"
        )
        with running_daemon(config) as daemon:
            replies = [ask(daemon.port, f"q{i}.example.") for i in range(3)]
    assert [r.rcode() for r in replies] == [dns.rcode.NOERROR] * 3
    assert state.peers and set(state.peers) == {HTTP_OUT}, state.peers


def test_socks5h_gives_the_proxy_the_name(ca: trustme.CA, ca_file: str, tmp_path: Path) -> None:
    """The upstream's address is one where nothing listens (127.0.0.9): with socks5h the proxy
    is given the authentication name (`localhost`, which it resolves to 127.0.0.1) and the
    query is answered; with socks5 the proxy is given the address, and it fails."""
    with (
        local_upstream(server_context(ca, "localhost")) as server,
        microsocks(tmp_path) as proxy_port,
    ):
        uri = f"tls://127.0.0.9:{server.port}#localhost"
        named = proxied_config(uri, ca_file, f"socks5h://127.0.0.1:{proxy_port}")
        with running_daemon(named) as daemon:
            good = ask(daemon.port)
        peers_named = list(server.state.peers)
        by_address = proxied_config(uri, ca_file, f"socks5://127.0.0.1:{proxy_port}")
        with running_daemon(by_address) as daemon:
            bad = ask(daemon.port, "b.example.")
    assert good.rcode() == dns.rcode.NOERROR and good.answer
    assert peers_named and set(peers_named) == {SOCKS_OUT}
    assert bad.rcode() == dns.rcode.SERVFAIL
    assert any("proxy-error" in t for t in ede_texts(bad)), ede_texts(bad)
    assert server.state.peers == peers_named


def test_socks5h_resolves_an_upstream_by_hostname_without_a_bootstrap() -> None:
    """An upstream given by hostname behind socks5h (Tor) needs no bootstrap: the proxy
    resolves the name (the tunnel is asked for it, as test_socks5h_gives_the_proxy_the_name
    shows), and no address book is made, so nothing is looked up outside the proxy. Behind
    plain socks5 the same configuration is refused for want of a bootstrap."""
    text = "proxy: socks5h://127.0.0.1:1080\nupstreams:\n  - tls://dot.test:8853\n"
    parsed = parse_config(text, "tor.yaml")
    spec = parsed.forwarding.upstreams[0]
    assert spec.needs_bootstrap and not parsed.bootstrap.resolvers
    endpoint = endpoint_for(spec, parsed)
    assert isinstance(endpoint, FixedEndpoint)
    assert tunnel_destination(spec, upstream_proxy(spec, parsed) or NO_PROXY, "x") == "dot.test"
    with pytest.raises(ConfigError, match=r"tor\.yaml:3: upstreams\[0\]: .*bootstrap"):
        parse_config(text.replace("socks5h", "socks5"), "tor.yaml")


def test_a_udp_bootstrap_under_a_global_proxy_is_refused() -> None:
    """The bootstrap resolvers go through the global proxy like the upstreams: plain UDP cannot,
    so it is refused rather than sent around the proxy; tcp:// is taken."""
    text = "proxy: socks5://127.0.0.1:1080\nupstreams:\n  - tls://dns.example\nbootstrap:\n"
    with pytest.raises(ConfigError, match=r"c\.yaml:1: proxy: bootstrap\[0\]: plain DNS over UDP"):
        parse_config(text + "  - udp://192.0.2.1\n", "c.yaml")
    config = parse_config(text + "  - tcp://192.0.2.1\n", "c.yaml")
    assert upstream_proxy(config.bootstrap.resolvers[0], config) == config.transport.proxy


def test_per_upstream_none_overrides_global(ca: trustme.CA, ca_file: str) -> None:
    """`proxy: none` on one upstream: it is reached directly although the global proxy (here
    one that is down) would fail it."""
    dead_port = free_ports(1)[0]
    with local_upstream(server_context(ca)) as server:
        text = f"""
proxy: socks5://127.0.0.1:{dead_port}
upstreams:
  - url: tls://127.0.0.1:{server.port}#{AUTH_NAME}
    proxy: none
"""
        parsed = parse_config(text, "proxy.yaml")
        assert upstream_proxy(parsed.forwarding.upstreams[0], parsed) is None
        config = make_config([], ca_file, timeout=TIMEOUT, attempt_timeout=TIMEOUT).with_options(
            upstreams=parsed.forwarding.upstreams,
            proxy=parsed.transport.proxy,
        )
        with running_daemon(config) as daemon:
            reply = ask(daemon.port)
    assert reply.rcode() == dns.rcode.NOERROR
    assert server.state.peers == ["127.0.0.1"]


# --- a proxy that fails: a failure of that upstream, never a way around -----------------------


def _fails_with(config: Config, kind: str, state: ServerState) -> None:
    with running_daemon(config) as daemon:
        reply = ask(daemon.port)
        kinds = daemon.call(lambda: dict(daemon.resolver.pool.health[0].failure_kinds))
    assert reply.rcode() == dns.rcode.SERVFAIL
    texts = ede_texts(reply)
    assert any(f"{config.forwarding.upstreams[0].label}: {kind}" in t for t in texts), texts
    assert kinds == {kind: 1}
    assert state.connections == 0 and state.peers == []


@pytest.mark.parametrize("server_kind", ["dot", "doh"])
def test_proxy_down(server_kind: str, ca: trustme.CA, ca_file: str) -> None:
    dead_port = free_ports(1)[0]
    with SERVERS[server_kind](ca) as (transport, port, state):
        config = proxied_config(
            upstream_uri(transport, port), ca_file, f"socks5://127.0.0.1:{dead_port}"
        )
        _fails_with(config, "proxy-refused", state)


def test_socks5_wrong_credentials(
    ca: trustme.CA, ca_file: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with (
        dot_server(ca) as (transport, port, state),
        microsocks(tmp_path, "alice", "s3cret") as proxy_port,
    ):
        config = proxied_config(
            upstream_uri(transport, port), ca_file, f"socks5://alice:Wr0ngPw@127.0.0.1:{proxy_port}"
        )
        with caplog.at_level(logging.DEBUG):
            _fails_with(config, "proxy-auth", state)
    logged = " ".join(r.getMessage() for r in caplog.records)
    assert "proxy-auth" in logged and "Wr0ngPw" not in logged and "alice" not in logged


def test_socks5_credentials_missing(ca: trustme.CA, ca_file: str, tmp_path: Path) -> None:
    with (
        dot_server(ca) as (transport, port, state),
        microsocks(tmp_path, "alice", "s3cret") as proxy_port,
    ):
        config = proxied_config(
            upstream_uri(transport, port), ca_file, f"socks5://127.0.0.1:{proxy_port}"
        )
        _fails_with(config, "proxy-auth", state)


def test_http_proxy_wrong_credentials(ca: trustme.CA, ca_file: str, tmp_path: Path) -> None:
    with (
        doh_server(ca) as (transport, port, state),
        tinyproxy(tmp_path, [port], basic_auth=("alice", "s3cret")) as proxy_port,
    ):
        config = proxied_config(
            upstream_uri(transport, port), ca_file, f"http://alice:wrong@127.0.0.1:{proxy_port}"
        )
        _fails_with(config, "proxy-auth", state)


def test_http_connect_refused(ca: trustme.CA, ca_file: str, tmp_path: Path) -> None:
    """tinyproxy allows CONNECT to another port only: it answers 403, a proxy-error."""
    with (
        dot_server(ca) as (transport, port, state),
        tinyproxy(tmp_path, [port + 1 if port < 65535 else port - 1]) as proxy_port,
    ):
        config = proxied_config(
            upstream_uri(transport, port), ca_file, f"http://127.0.0.1:{proxy_port}"
        )
        _fails_with(config, "proxy-error", state)


@pytest.mark.parametrize(
    ("scheme", "reply"),
    [
        ("socks5", b"HTTP/1.1 400 Bad Request\r\n\r\n"),
        ("socks5", b"\x05"),  # cut after one byte
        ("http", b"\x05\x00\x00\x01garbage\r\n\r\n"),
        ("http", b""),  # closed without a word
    ],
)
def test_garbage_proxy(scheme: str, reply: bytes, ca: trustme.CA, ca_file: str) -> None:
    with dot_server(ca) as (transport, port, state), garbage_proxy(reply) as proxy_port:
        config = proxied_config(
            upstream_uri(transport, port), ca_file, f"{scheme}://127.0.0.1:{proxy_port}"
        )
        _fails_with(config, "proxy-error", state)


def test_silent_proxy_times_out(ca: trustme.CA, ca_file: str) -> None:
    """A proxy that accepts and never answers: `timeout`, and nothing reaches the server."""
    with dot_server(ca) as (transport, port, state), garbage_proxy(None) as proxy_port:
        config = proxied_config(
            upstream_uri(transport, port), ca_file, f"socks5://127.0.0.1:{proxy_port}"
        )
        _fails_with(config, "timeout", state)


def test_reload_puts_the_proxy_in_the_path(ca: trustme.CA, ca_file: str, tmp_path: Path) -> None:
    """A reload that sets the global proxy (the upstreams unchanged) rebuilds their transports:
    the next connection goes through the proxy, not over the direct one kept from before."""
    with dot_server(ca) as (transport, port, state), microsocks(tmp_path) as proxy_port:
        direct = make_config(
            [upstream_uri(transport, port)], ca_file, timeout=TIMEOUT, attempt_timeout=TIMEOUT
        )
        with running_daemon(direct) as daemon:
            assert ask(daemon.port, "before.example.").rcode() == dns.rcode.NOERROR
            proxied = direct.with_options(proxy=parse_proxy_uri(f"socks5://127.0.0.1:{proxy_port}"))
            daemon.call(daemon.runtime.reconfigure, proxied)
            after = ask(daemon.port, "after.example.")
    assert after.rcode() == dns.rcode.NOERROR
    assert state.peers == ["127.0.0.1", SOCKS_OUT]


def test_proxy_failures_back_off_without_going_direct(ca: trustme.CA, ca_file: str) -> None:
    """Repeated queries with the proxy down: the upstream is marked down like any other failing
    one, and not one query reaches the server."""
    dead_port = free_ports(1)[0]
    with dot_server(ca) as (transport, port, state):
        config = proxied_config(
            upstream_uri(transport, port), ca_file, f"socks5://127.0.0.1:{dead_port}"
        ).with_options(
            failures_to_down=2,
        )
        with running_daemon(config) as daemon:
            replies = [ask(daemon.port, f"q{i}.example.") for i in range(5)]
            down = daemon.call(lambda: daemon.resolver.pool.health[0].is_down)
    assert all(r.rcode() == dns.rcode.SERVFAIL for r in replies)
    assert down
    assert state.connections == 0


# --- QUIC through SOCKS5 UDP ASSOCIATE ---------------------------------------------------------


@contextlib.contextmanager
def quic_server(kind: str, ca: trustme.CA, directory: Path) -> Iterator[tuple[str, ServerState]]:
    cert_file, key_file = write_cert_files(ca, str(directory), AUTH_NAME, "127.0.0.1")
    if kind == "doq":
        with doq_server(cert_file, key_file) as server:
            yield f"quic://127.0.0.1:{server.port}#{AUTH_NAME}", server.state
    else:
        with h3_server(cert_file, key_file) as server:
            yield f"h3://{AUTH_NAME}:{server.port}/dns-query#127.0.0.1", server.state


@pytest.mark.parametrize("kind", ["doq", "h3"])
def test_quic_through_socks5_udp_associate(
    kind: str, ca: trustme.CA, ca_file: str, tmp_path: Path
) -> None:
    """Dante relays the QUIC datagrams: answers come, and the server's every connection came
    from Dante's external address."""
    with quic_server(kind, ca, tmp_path) as (uri, state), dante(tmp_path) as proxy_port:
        config = proxied_config(uri, ca_file, f"socks5://127.0.0.1:{proxy_port}")
        with running_daemon(config) as daemon:
            replies = [ask(daemon.port, f"q{i}.example.") for i in range(3)]
    assert [r.rcode() for r in replies] == [dns.rcode.NOERROR] * 3
    assert all(r.answer for r in replies)
    assert state.peers and set(state.peers) == {DANTE_OUT}, state.peers


def test_quic_through_a_proxy_without_udp_associate(
    ca: trustme.CA, ca_file: str, tmp_path: Path
) -> None:
    """microsocks has no UDP ASSOCIATE: proxy-error, and no datagram reaches the server."""
    with quic_server("doq", ca, tmp_path) as (uri, state), microsocks(tmp_path) as proxy_port:
        config = proxied_config(uri, ca_file, f"socks5://127.0.0.1:{proxy_port}")
        _fails_with(config, "proxy-error", state)


def test_quic_proxy_down_and_garbage(ca: trustme.CA, ca_file: str, tmp_path: Path) -> None:
    dead_port = free_ports(1)[0]
    with quic_server("doq", ca, tmp_path) as (uri, state):
        _fails_with(
            proxied_config(uri, ca_file, f"socks5://127.0.0.1:{dead_port}"),
            "proxy-refused", state,
        )  # fmt: skip
        with garbage_proxy(b"HTTP/1.1 400 Bad Request\r\n\r\n") as proxy_port:
            _fails_with(
                proxied_config(uri, ca_file, f"socks5://127.0.0.1:{proxy_port}"),
                "proxy-error", state,
            )  # fmt: skip


def test_socks5_udp_header_and_payload() -> None:
    """RFC 1928 §7: RSV RSV FRAG ATYP DST.ADDR DST.PORT; the relay's replies lose theirs, and a
    fragment (FRAG != 0) or a cut header is dropped."""
    from stubby_py.transports.proxy import _payload_offset, _udp_header

    assert _udp_header("192.0.2.1", 853) == b"\0\0\0\x01\xc0\0\x02\x01\x03\x55"
    assert _udp_header("2001:db8::1", 443)[:4] == b"\0\0\0\x04"
    assert _udp_header("dns.test", 853) == b"\0\0\0\x03\x08dns.test\x03\x55"
    for header in (_udp_header("192.0.2.1", 853), _udp_header("dns.test", 853)):
        assert _payload_offset(header + b"quic") == len(header)
    assert _payload_offset(b"\0\0\x01\x01" + bytes(6) + b"quic") is None
    assert _payload_offset(b"\0\0\0\x01\x7f") is None
    assert _payload_offset(b"\0\0\0\x09" + bytes(10)) is None


# --- check --connect --------------------------------------------------------------------------


def run_check(*args: str) -> tuple[int, dict[str, Any]]:
    command = [sys.executable, "-m", "stubby_py", "check", "--connect", "--format", "json"]
    done = subprocess.run(
        [*command, "--timeout", "2", *args], capture_output=True, text=True, timeout=30
    )
    assert done.stdout, done.stderr
    return done.returncode, json.loads(done.stdout)


def test_check_connect_shows_the_path(ca: trustme.CA, ca_file: str, tmp_path: Path) -> None:
    dead_port = free_ports(1)[0]
    with dot_server(ca) as (transport, port, state), microsocks(tmp_path) as proxy_port:
        uri = upstream_uri(transport, port)
        status, good = run_check(
            "--upstream", uri, "--ca-file", ca_file, "--proxy", f"socks5://127.0.0.1:{proxy_port}"
        )
        peers_good = list(state.peers)
        bad_status, bad = run_check(
            "--upstream", uri, "--ca-file", ca_file, "--proxy", f"socks5://127.0.0.1:{dead_port}"
        )
    report = good["upstreams"][0]
    assert status == 0 and report["usable"], report
    assert report["path"] == f"via socks5 127.0.0.1:{proxy_port}"
    assert report["certificate_source"] == "verified"
    # the handshake probe and the test query, both through the proxy
    assert len(peers_good) >= 2 and set(peers_good) == {SOCKS_OUT}
    failed = bad["upstreams"][0]
    assert bad_status == 1 and failed["kind"] == "proxy-refused", failed
    assert state.peers == peers_good


def test_check_table_names_the_proxy_without_credentials(
    ca: trustme.CA, ca_file: str, tmp_path: Path
) -> None:
    dead_port = free_ports(1)[0]
    with dot_server(ca) as (transport, port, _state):
        done = subprocess.run(
            [sys.executable, "-m", "stubby_py", "check", "--connect", "--timeout", "2",
             "--upstream", upstream_uri(transport, port), "--ca-file", ca_file,
             "--proxy", f"socks5://bob:hunter2@127.0.0.1:{dead_port}"],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
    assert f"path         via socks5 127.0.0.1:{dead_port}" in done.stdout, done.stdout
    assert "proxy-refused" in done.stdout
    assert "hunter2" not in done.stdout + done.stderr
    assert "bob" not in done.stdout + done.stderr


# --- configuration ----------------------------------------------------------------------------


def test_proxy_uri_forms() -> None:
    spec = parse_proxy_uri("socks5://u%40x:p%3Aw@127.0.0.1:1080")
    assert (spec.kind, spec.host, spec.port, spec.username, spec.password) == (
        "socks5", "127.0.0.1", 1080, "u@x", "p:w",
    )  # fmt: skip
    assert "p:w" not in repr(spec) and "u@x" not in repr(spec)
    assert spec.label == "socks5 127.0.0.1:1080"
    assert parse_proxy_uri("socks5h://localhost:9050").host == "127.0.0.1"
    assert parse_proxy_uri("http://[::1]:3128").label == "http [::1]:3128"
    assert parse_proxy_uri("none") is NO_PROXY


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("socks4://127.0.0.1:1080", "scheme 'socks4'"),
        ("https://127.0.0.1:3128", "scheme 'https'"),
        ("socks5://proxy.example:1080", "IP address or localhost"),
        ("socks5://127.0.0.1", "address and port"),
        ("http://127.0.0.1:3128/path", "no path"),
    ],
)
def test_bad_proxy_uri(value: str, expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(f"upstreams:\n  - tls://127.0.0.1#a.test\nproxy: {value}\n", "c.yaml")
    assert str(caught.value).startswith("c.yaml:3: proxy: "), caught.value
    assert expected in str(caught.value)


@pytest.mark.parametrize("uri", ["quic://127.0.0.1#a.test", "h3://a.test/dns-query#127.0.0.1"])
def test_quic_with_an_http_proxy_is_refused(uri: str) -> None:
    text = f"upstreams:\n  - url: {uri}\n    proxy: http://127.0.0.1:3128\n"
    with pytest.raises(ConfigError, match=r"c.yaml:3: upstreams\[0\].proxy: .*UDP ASSOCIATE"):
        parse_config(text, "c.yaml")
    # the global proxy too, naming the upstream it cannot carry
    text = f"proxy: http://127.0.0.1:3128\nupstreams:\n  - {uri}\n"
    with pytest.raises(ConfigError, match=r"c.yaml:1: proxy: upstreams\[0\]: .*UDP ASSOCIATE"):
        parse_config(text, "c.yaml")
    # a SOCKS5 proxy carries it (UDP ASSOCIATE)
    parse_config(text.replace("http://", "socks5://"), "c.yaml")
    # and `proxy: none` takes it out of the HTTP proxy's way
    text = f"proxy: http://127.0.0.1:3128\nupstreams:\n  - url: {uri}\n    proxy: none\n"
    config = parse_config(text, "c.yaml")
    assert upstream_proxy(config.forwarding.upstreams[0], config) is None


def test_udp_with_a_proxy_is_refused_tcp_is_not() -> None:
    text = "proxy: http://127.0.0.1:3128\nupstreams:\n  - udp://192.168.1.1\n"
    with pytest.raises(ConfigError, match=r"proxy: upstreams\[0\]: plain DNS over UDP"):
        parse_config(text, "c.yaml")
    config = parse_config(text.replace("udp://", "tcp://"), "c.yaml")
    assert upstream_proxy(config.forwarding.upstreams[0], config) == ProxySpec(
        "http", "127.0.0.1", 3128, None, None
    )
    with pytest.raises(ConfigError, match=r"command line: --proxy: .*plain DNS over UDP"):
        apply_overrides(
            parse_config("upstreams:\n  - udp://192.168.1.1\n", "c.yaml"),
            Overrides(proxy="socks5://127.0.0.1:1080"),
        )


def test_credentials_file(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    secret = tmp_path / "cred"
    secret.write_text("carol:pa:ss word\n")
    secret.chmod(0o600)
    text = f"proxy:\n  url: http://127.0.0.1:3128\n  credentials_file: {secret}\n"
    with caplog.at_level(logging.WARNING):
        config = parse_config(text, "c.yaml")
    assert config.transport.proxy is not None
    assert (config.transport.proxy.username, config.transport.proxy.password) == (
        "carol",
        "pa:ss word",
    )
    assert not caplog.records
    secret.chmod(0o644)
    with caplog.at_level(logging.WARNING):
        parse_config(text, "c.yaml")
    assert any("readable by every user" in r.getMessage() for r in caplog.records)
    assert all("pa:ss" not in r.getMessage() for r in caplog.records)
    secret.write_text("no colon here\n")
    with pytest.raises(ConfigError, match=r"c.yaml:3: proxy.credentials_file: expected USER:PASS"):
        parse_config(text, "c.yaml")
    missing = text.replace(str(secret), str(tmp_path / "absent"))
    with pytest.raises(ConfigError, match=r"c.yaml:3: proxy.credentials_file: expected a readable"):
        parse_config(missing, "c.yaml")
    both = text.replace("http://", "http://u:p@")
    secret.write_text("carol:x\n")
    with pytest.raises(ConfigError, match="both in the URI and in credentials_file"):
        parse_config(both, "c.yaml")
    assert os.path.exists(secret)
