"""Upstreams by hostname (transports/bootstrap.py): resolved through the bootstrap resolvers only.

A DoT upstream `tls://dot.test:PORT`, its certificate issued by the test CA for dot.test, whose
bootstrap is a local plain resolver (tests/servers/stream.py) that knows dot.test: the daemon
answers through it, the bootstrap saw the A and AAAA questions, stubby-py's own listener never
saw one for dot.test, and the addresses saved let a restart work with the bootstrap down. A
bootstrap that lies or is unreachable is that upstream's `bootstrap` (or certificate) failure,
and the rest of the pool serves.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dns.edns
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest
import trustme

from stubby_py.commands import check
from stubby_py.core.config import (
    Config,
    Overrides,
    apply_overrides,
    parse_config,
    parse_upstream_uri,
)
from stubby_py.core.errors import ConfigError
from stubby_py.transports import bootstrap
from tests.clients import ask_many, rcodes
from tests.conftest import server_context
from tests.daemon_thread import make_config, running_daemon
from tests.servers import (
    LocalUpstream,
    Misbehaviour,
    doq_server,
    h2_server,
    h3_server,
    local_upstream,
    write_cert_files,
)

pytestmark = pytest.mark.timeout(60)

HOST = "dot.test"


@pytest.fixture(autouse=True)
def _fresh_books() -> Iterator[None]:
    """Each test starts as a new process would: no address books, no state file read."""
    bootstrap.forget()
    yield
    bootstrap.forget()


@pytest.fixture
def dot_by_name(ca: trustme.CA) -> Iterator[LocalUpstream]:
    with local_upstream(server_context(ca, HOST)) as server:
        yield server


@pytest.fixture
def resolver() -> Iterator[LocalUpstream]:
    """The bootstrap: a plain resolver that knows dot.test (A 127.0.0.1, no AAAA)."""
    with local_upstream(None) as server:
        server.state.records[f"{HOST}."] = [("A", "127.0.0.1")]
        yield server


def questions(server: LocalUpstream) -> list[tuple[str, str]]:
    asked = [dns.message.from_wire(raw).question[0] for raw in server.state.queries]
    return [(q.name.to_text(), dns.rdatatype.to_text(q.rdtype)) for q in asked]


def config_for(
    upstream: LocalUpstream, boot: str, ca_file: str, state: Path, **changes: object
) -> Config:
    return make_config(
        [f"tls://{HOST}:{upstream.port}"], ca_file,
        bootstrap=(parse_upstream_uri(boot),), bootstrap_file=str(state / "bootstrap.json"),
        timeout=2.0, **changes,
    )  # fmt: skip


def kinds(daemon: object) -> dict[str, int]:
    return dict(daemon.resolver.pool.health[0].failure_kinds)  # type: ignore[attr-defined]


# --- through the daemon -------------------------------------------------------------------------


def test_hostname_upstream_answers_through_its_bootstrap(
    dot_by_name: LocalUpstream, resolver: LocalUpstream, ca_file: str, tmp_path: Path
) -> None:
    log_path = tmp_path / "queries.log"
    config = config_for(
        dot_by_name, f"udp://127.0.0.1:{resolver.port}", ca_file, tmp_path,
        query_log=str(log_path),
    )  # fmt: skip
    with running_daemon(config) as daemon:
        assert rcodes(ask_many(["a.example."], daemon.port)) == ["NOERROR"]
    # the bootstrap was asked for both families of the upstream's name, and nothing else
    assert sorted(questions(resolver)) == [(f"{HOST}.", "A"), (f"{HOST}.", "AAAA")]
    assert ("a.example.", "A") in questions(dot_by_name)
    # no query for the upstream's own name ever reached stubby-py's listener
    lines = log_path.read_text().splitlines()
    assert len(lines) == 1 and "a.example" in lines[0], lines
    assert not any(HOST in line for line in lines)
    # the good addresses are kept: a private file, addresses only
    saved = tmp_path / "bootstrap.json"
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600
    assert bootstrap.read_saved(str(saved)) == {HOST: ["127.0.0.1"]}


def test_restart_with_the_bootstrap_down_uses_the_saved_addresses(
    dot_by_name: LocalUpstream, ca_file: str, tmp_path: Path
) -> None:
    with local_upstream(None) as resolver:
        resolver.state.records[f"{HOST}."] = [("A", "127.0.0.1")]
        boot = f"udp://127.0.0.1:{resolver.port}"
        with running_daemon(config_for(dot_by_name, boot, ca_file, tmp_path)) as daemon:
            assert rcodes(ask_many(["a.example."], daemon.port)) == ["NOERROR"]
    bootstrap.forget()  # a new process: only the state file remains
    with running_daemon(config_for(dot_by_name, boot, ca_file, tmp_path)) as daemon:
        assert rcodes(ask_many(["b.example."], daemon.port)) == ["NOERROR"]
        assert kinds(daemon) == {}
    assert ("b.example.", "A") in questions(dot_by_name)


def test_unreachable_bootstrap_is_a_bootstrap_failure_and_the_pool_serves(
    dot_by_name: LocalUpstream, plain_upstream: LocalUpstream, ca_file: str, tmp_path: Path
) -> None:
    with local_upstream(None) as gone:
        closed_port = gone.port  # nothing listens there any more
    config = config_for(dot_by_name, f"udp://127.0.0.1:{closed_port}", ca_file, tmp_path)
    config = make_config(
        [f"tls://{HOST}:{dot_by_name.port}", f"tcp://127.0.0.1:{plain_upstream.port}"], ca_file,
        bootstrap=config.bootstrap.resolvers, bootstrap_file=None, timeout=2.0, strategy="failover",
        hedge=False,
    )  # fmt: skip
    with running_daemon(config) as daemon:
        assert rcodes(ask_many(["a.example."], daemon.port)) == ["NOERROR"]
        assert kinds(daemon) == {"bootstrap": 1}
        (book,) = bootstrap.books()
        assert book.addresses() == []
    assert dot_by_name.state.connections == 0
    assert ("a.example.", "A") in questions(plain_upstream)


@pytest.mark.parametrize(
    ("behaviour", "said"),
    [
        # well-formed DNS, but no address of dot.test in it
        (Misbehaviour.NONE, "no A or AAAA record for dot.test"),
        # random octets after the right ID: dropped as no reply at all (RFC 5452)
        (Misbehaviour.GARBAGE, "timed out"),
    ],
)
def test_bootstrap_reply_without_an_address_is_a_bootstrap_failure(
    behaviour: Misbehaviour, said: str,
    dot_by_name: LocalUpstream, resolver: LocalUpstream, ca_file: str, tmp_path: Path,
) -> None:  # fmt: skip
    resolver.state.records[f"{HOST}."] = [("CNAME", "elsewhere.test.")]
    resolver.state.misbehaviour = behaviour
    config = config_for(dot_by_name, f"udp://127.0.0.1:{resolver.port}", ca_file, tmp_path)
    with running_daemon(config) as daemon:
        query = dns.message.make_query("a.example.", "A", use_edns=0)
        reply = dns.query.udp(query, "127.0.0.1", port=daemon.port, timeout=5)
        assert daemon.call(lambda: kinds(daemon)) == {"bootstrap": 1}
    assert reply.rcode() == dns.rcode.SERVFAIL
    texts = " ".join(o.text or "" for o in reply.options if isinstance(o, dns.edns.EDEOption))
    assert f"tls://{HOST}:{dot_by_name.port}: bootstrap" in texts, texts
    assert said in texts, texts
    assert dot_by_name.state.connections == 0


def test_lying_bootstrap_address_fails_the_certificate_check(
    ca: trustme.CA, resolver: LocalUpstream, ca_file: str, tmp_path: Path
) -> None:
    """The bootstrap sends us to a server that is not dot.test (its certificate is for
    evil.test, from the same CA): the connection is refused on the name, nothing is asked."""
    with local_upstream(server_context(ca, "evil.test", "127.0.0.1")) as impostor:
        config = config_for(impostor, f"udp://127.0.0.1:{resolver.port}", ca_file, tmp_path)
        with running_daemon(config) as daemon:
            assert rcodes(ask_many(["a.example."], daemon.port)) == ["SERVFAIL"]
            assert kinds(daemon) == {"cert-name-mismatch": 1}
    assert impostor.state.queries == []


def test_addresses_are_asked_again_when_the_ttl_runs_out(
    dot_by_name: LocalUpstream, resolver: LocalUpstream, ca_file: str, tmp_path: Path
) -> None:
    resolver.state.ttl = 1
    config = config_for(
        dot_by_name, f"udp://127.0.0.1:{resolver.port}", ca_file, tmp_path,
        bootstrap_min_ttl=1, cache_size=0,
    )  # fmt: skip
    with running_daemon(config) as daemon:
        assert rcodes(ask_many(["a.example."], daemon.port)) == ["NOERROR"]
        first = len(resolver.state.queries)
        assert first == 2
        for attempt in range(40):  # ~4 s at most; the refresh is due after 0.8 s
            time.sleep(0.1)
            assert rcodes(ask_many([f"r{attempt}.example."], daemon.port)) == ["NOERROR"]
            if len(resolver.state.queries) >= 2 * first:
                break
        assert len(resolver.state.queries) >= 2 * first
        (book,) = bootstrap.books()
        assert book.resolutions >= 2


def test_a_name_dropped_by_a_reload_is_no_longer_asked_for(
    dot_by_name: LocalUpstream, resolver: LocalUpstream, ca_file: str, tmp_path: Path
) -> None:
    """The address book of an upstream a reload removed stops refreshing its name (it used to
    ask the bootstrap for it every TTL for the life of the process)."""
    resolver.state.ttl = 1
    config = config_for(
        dot_by_name, f"udp://127.0.0.1:{resolver.port}", ca_file, tmp_path,
        bootstrap_min_ttl=1, cache_size=0,
    )  # fmt: skip
    with running_daemon(config) as daemon:
        assert rcodes(ask_many(["a.example."], daemon.port)) == ["NOERROR"]
        assert len(bootstrap.books()) == 1
        by_address = config.with_options(upstreams=(parse_upstream_uri(f"tls://127.0.0.1:{dot_by_name.port}#{HOST}"),))
        daemon.call(daemon.runtime.reconfigure, by_address)
        assert rcodes(ask_many(["b.example."], daemon.port)) == ["NOERROR"]
        for _ in range(50):  # the retired transports close in the background
            daemon.call(gc.collect)
            if not bootstrap.books():
                break
            time.sleep(0.1)
        assert bootstrap.books() == []
        asked = len(resolver.state.queries)
        time.sleep(2.5)  # more than two refresh periods (0.8 s each) of the dropped name
        assert len(resolver.state.queries) == asked


def test_addresses_are_tried_in_order_within_one_connect(
    dot_by_name: LocalUpstream, resolver: LocalUpstream, ca_file: str, tmp_path: Path
) -> None:
    """The first address has nothing listening (the server binds 127.0.0.1 only): the same
    connect goes on to the second, and the query is answered."""
    resolver.state.records[f"{HOST}."] = [("A", "127.0.0.2"), ("A", "127.0.0.1")]
    config = config_for(dot_by_name, f"udp://127.0.0.1:{resolver.port}", ca_file, tmp_path)
    with running_daemon(config) as daemon:
        assert rcodes(ask_many(["a.example."], daemon.port)) == ["NOERROR"]
        assert kinds(daemon) == {}
        (book,) = bootstrap.books()
        assert book.addresses() == ["127.0.0.2", "127.0.0.1"]
    assert dot_by_name.state.connections == 1


def test_a_bootstrap_that_drops_aaaa_questions_still_gives_the_a_answer(
    dot_by_name: LocalUpstream, resolver: LocalUpstream, ca_file: str, tmp_path: Path
) -> None:
    resolver.state.chooser = lambda q: (
        Misbehaviour.STALL if q.question[0].rdtype == AAAA else Misbehaviour.NONE
    )
    config = config_for(dot_by_name, f"udp://127.0.0.1:{resolver.port}", ca_file, tmp_path)
    with running_daemon(config) as daemon:
        assert rcodes(ask_many(["a.example."], daemon.port)) == ["NOERROR"]
        assert kinds(daemon) == {}


def test_failed_refresh_keeps_the_last_good_addresses(
    dot_by_name: LocalUpstream, resolver: LocalUpstream, ca_file: str, tmp_path: Path
) -> None:
    resolver.state.ttl = 1
    config = config_for(
        dot_by_name, f"udp://127.0.0.1:{resolver.port}", ca_file, tmp_path,
        bootstrap_min_ttl=1, cache_size=0,
    )  # fmt: skip
    with running_daemon(config) as daemon:
        assert rcodes(ask_many(["a.example."], daemon.port)) == ["NOERROR"]
        resolver.state.misbehaviour = Misbehaviour.GARBAGE
        (book,) = bootstrap.books()
        for attempt in range(40):
            time.sleep(0.1)
            assert rcodes(ask_many([f"r{attempt}.example."], daemon.port)) == ["NOERROR"]
            if book.refresh_failures:
                break
        assert book.refresh_failures >= 1
        assert book.addresses() == ["127.0.0.1"]
        assert kinds(daemon) == {}


@pytest.mark.parametrize("scheme", ["quic", "https", "h3"])
def test_doq_and_doh_by_hostname_through_an_encrypted_bootstrap(
    scheme: str, ca: trustme.CA, dot_upstream: LocalUpstream, ca_file: str, tmp_path: Path
) -> None:
    """The bootstrap is itself a DoT resolver given by IP address (tls://127.0.0.1#dns.test)."""
    dot_upstream.state.records[f"{HOST}."] = [("A", "127.0.0.1")]
    boot = f"tls://127.0.0.1:{dot_upstream.port}#dns.test"
    with contextlib.ExitStack() as stack:
        if scheme in ("quic", "h3"):
            cert, key = write_cert_files(ca, str(tmp_path), HOST)
            serve = doq_server if scheme == "quic" else h3_server
            server: Any = stack.enter_context(serve(cert, key))
            url = f"{scheme}://{HOST}:{server.port}" + ("/dns-query" if scheme == "h3" else "")
        else:
            server = stack.enter_context(h2_server(server_context(ca, HOST)))
            url = f"https://{HOST}:{server.port}/dns-query"
        config = make_config(
            [url], ca_file, bootstrap=(parse_upstream_uri(boot),), bootstrap_file=None,
            timeout=2.0,
        )  # fmt: skip
        with running_daemon(config) as daemon:
            assert rcodes(ask_many(["a.example."], daemon.port)) == ["NOERROR"]
            assert kinds(daemon) == {}
    assert sorted(questions(dot_upstream)) == [(f"{HOST}.", "A"), (f"{HOST}.", "AAAA")]


def test_check_connect_resolves_through_the_bootstrap(
    dot_by_name: LocalUpstream, resolver: LocalUpstream, ca_file: str
) -> None:
    config = make_config(
        [f"tls://{HOST}:{dot_by_name.port}"], ca_file,
        bootstrap=(parse_upstream_uri(f"udp://127.0.0.1:{resolver.port}"),), bootstrap_file=None,
    )  # fmt: skip
    (report,) = asyncio.run(check.check_all(config, 3.0))
    assert report.usable, report
    assert (report.address, report.name_matched) == ("127.0.0.1", True)
    assert report.name == f"tls://{HOST}:{dot_by_name.port}"


def test_network_change_asks_for_the_addresses_again(resolver: LocalUpstream) -> None:
    config = make_config(
        [], None, bootstrap=(parse_upstream_uri(f"udp://127.0.0.1:{resolver.port}"),),
        bootstrap_file=None,
    )  # fmt: skip
    endpoint = bootstrap.endpoint_for(parse_upstream_uri(f"tls://{HOST}"), config)
    assert isinstance(endpoint, bootstrap.AddressBook)

    async def run() -> tuple[int, int, int]:
        assert await endpoint.address() == "127.0.0.1"
        first = len(resolver.state.queries)
        await endpoint.address()  # the TTL (300 s) has not run out: nothing asked
        same = len(resolver.state.queries)
        endpoint.network_changed()
        assert await endpoint.address() == "127.0.0.1"  # the known address meanwhile
        for _ in range(50):
            await asyncio.sleep(0.02)
            if endpoint.resolutions == 2:
                break
        await asyncio.sleep(0.02)  # the bootstrap's sockets finish closing
        return first, same, len(resolver.state.queries)

    assert asyncio.run(run()) == (2, 2, 4)


def test_check_connect_on_the_command_line_with_bootstrap(
    dot_by_name: LocalUpstream, resolver: LocalUpstream, ca_file: str
) -> None:
    url = f"tls://{HOST}:{dot_by_name.port}"
    command = [sys.executable, "-m", "stubby_py", "check", "--connect", "--format", "json"]
    done = subprocess.run(
        [*command, "--upstream", url, "--ca-file", ca_file, "--timeout", "3"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert done.returncode == 2 and "needs --bootstrap" in done.stderr, done.stderr
    boot = f"udp://127.0.0.1:{resolver.port}"
    done = subprocess.run(
        [*command, "--upstream", url, "--bootstrap", boot, "--ca-file", ca_file, "--timeout", "3"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    (upstream,) = json.loads(done.stdout)["upstreams"]
    assert (upstream["name"], upstream["address"], upstream["usable"]) == (url, "127.0.0.1", True)


# --- the bootstrap's answer (sans-IO) -----------------------------------------------------------


def _reply(rdtype: str, *records: tuple[str, str, str], qname: str = HOST) -> bytes:
    query = dns.message.make_query(qname, rdtype)
    reply = dns.message.make_response(query)
    for owner, kind, rdata in records:
        reply.answer.append(dns.rrset.from_text(owner + ".", 120, "IN", kind, rdata))
    return reply.to_wire()


A, AAAA = dns.rdatatype.A, dns.rdatatype.AAAA


def test_addresses_of_the_name_and_of_a_cname_chain() -> None:
    reply = _reply("A", (HOST, "A", "192.0.2.1"), (HOST, "A", "192.0.2.2"))
    assert bootstrap.parse_addresses(reply, HOST, A) == (["192.0.2.1", "192.0.2.2"], 120)
    chain = _reply("AAAA", (HOST, "CNAME", "cdn.test."), ("cdn.test", "AAAA", "2001:db8::1"))
    assert bootstrap.parse_addresses(chain, HOST, AAAA) == (["2001:db8::1"], 120)
    assert bootstrap.parse_addresses(_reply("AAAA"), HOST, AAAA) == ([], 0)


@pytest.mark.parametrize(
    ("reply", "said"),
    [
        (b"\x00\x00\x81\x80garbage", "malformed reply"),
        (_reply("A", qname="other.test"), "another question"),
        (_reply("AAAA"), "another question"),
        (_reply("A", ("other.test", "A", "192.0.2.1")), "not an address of dot.test"),
        (_reply("A", (HOST, "TXT", '"hi"')), "not an address of dot.test"),
        (_reply("A", (HOST, "CNAME", "x.test.")), "ends without an address"),
        (_reply("A", (HOST, "A", "0.0.0.0")), "not one to connect to"),
        (_reply("A", (HOST, "A", "224.0.0.1")), "not one to connect to"),
        (dns.message.make_query(HOST, "A").to_wire(), "not a reply"),
    ],
)
def test_answers_that_are_not_addresses_of_the_name_are_refused(reply: bytes, said: str) -> None:
    with pytest.raises(ValueError, match=said):
        bootstrap.parse_addresses(reply, HOST, A)


def test_nxdomain_is_refused() -> None:
    query = dns.message.make_query(HOST, "A")
    reply = dns.message.make_response(query)
    reply.set_rcode(dns.rcode.NXDOMAIN)
    with pytest.raises(ValueError, match="NXDOMAIN"):
        bootstrap.parse_addresses(reply.to_wire(), HOST, A)


def test_order_interleaves_families_ipv6_first() -> None:
    assert bootstrap.ordered(["::1", "::2"], ["127.0.0.1"]) == ["::1", "127.0.0.1", "::2"]


# --- the state file -----------------------------------------------------------------------------


def test_state_file_is_untrusted(tmp_path: Path) -> None:
    path = tmp_path / "bootstrap.json"
    path.write_text(
        '{"hosts": {"dot.test": ["127.0.0.1", "nonsense", 7], "bad name!": ["192.0.2.1"],'
        ' "zero.test": ["0.0.0.0"], "list.test": "192.0.2.1"}}'
    )
    assert bootstrap.read_saved(str(path)) == {}  # one bad address spoils the entry
    path.write_text('{"hosts": {"dot.test": ["127.0.0.1"], "bad name!": ["192.0.2.1"]}}')
    assert bootstrap.read_saved(str(path)) == {"dot.test": ["127.0.0.1"]}
    path.write_text("[1, 2")
    assert bootstrap.read_saved(str(path)) == {}
    path.write_bytes(b" " * (bootstrap.MAX_FILE_BYTES + 1))
    assert bootstrap.read_saved(str(path)) == {}
    real = tmp_path / "real.json"
    real.write_text('{"hosts": {"dot.test": ["127.0.0.1"]}}')
    path.unlink()
    path.symlink_to(real)
    assert bootstrap.read_saved(str(path)) == {}  # never followed
    assert bootstrap.read_saved(str(tmp_path / "missing.json")) == {}
    assert bootstrap.read_saved("/dev/zero") == {}
    real.chmod(0o666)  # another user may have put it there
    assert bootstrap.read_saved(str(real)) == {}
    real.chmod(0o644)
    assert bootstrap.read_saved(str(real)) == {"dot.test": ["127.0.0.1"]}


def test_state_file_written_atomically_and_privately(tmp_path: Path) -> None:
    path = tmp_path / "bootstrap.json"
    bootstrap.write_saved(str(path), {"dot.test": ["127.0.0.1", "::1"]})
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert bootstrap.read_saved(str(path)) == {"dot.test": ["127.0.0.1", "::1"]}
    assert os.listdir(tmp_path) == ["bootstrap.json"]
    link = tmp_path / "link.json"
    link.symlink_to(path)
    bootstrap.write_saved(str(link), {"dot.test": ["127.0.0.2"]})  # a warning, not a crash
    assert link.is_symlink()
    assert bootstrap.read_saved(str(path)) == {"dot.test": ["127.0.0.1", "::1"]}
    assert bootstrap.default_file("auto", {"STATE_DIRECTORY": "/var/lib/s:/x"}) == (
        "/var/lib/s/bootstrap.json"
    )
    assert bootstrap.default_file("auto", {}) is None


# --- configuration ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "tls://dns.quad9.net",
        "https://dns.google/dns-query",
        "quic://dns.adguard-dns.com",
        "h3://dns.google/dns-query",
    ],
)
def test_upstreams_by_hostname_with_a_bootstrap(url: str) -> None:
    config = parse_config(f"upstreams:\n  - {url}\nbootstrap: [udp://192.0.2.53]\n", "c.yaml")
    spec = config.forwarding.upstreams[0]
    assert spec.needs_bootstrap and spec.auth_name == spec.address
    assert config.bootstrap.resolvers[0].address == "192.0.2.53"
    with pytest.raises(ConfigError, match=r"c.yaml:2: upstreams\[0\]: .*needs `bootstrap:`"):
        parse_config(f"upstreams:\n  - {url}\n", "c.yaml")


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("bootstrap: [udp://dns.google]\n", r"c.yaml:1: bootstrap\[0\]: expected an IP address"),
        ("bootstrap: [tls://dns.quad9.net]\n", r"bootstrap\[0\]: a bootstrap resolver must be"),
        (
            "listen: [127.0.0.1:53]\nbootstrap: [udp://127.0.0.1]\n",
            r"c.yaml:2: bootstrap\[0\]: expected a resolver other than stubby-py itself",
        ),
        (
            "listen: [127.0.0.1:53]\nbootstrap: [udp://192.0.2.1, udp://127.0.0.53]\n",
            r"bootstrap\[1\]: .*127.0.0.1:53 is where it listens",
        ),
        ("listen: ['[::]:53']\nbootstrap: ['udp://[::1]']\n", r"bootstrap\[0\]: expected a"),
        ("bootstrap_min_ttl: 600\nbootstrap_max_ttl: 60\n", r"bootstrap_min_ttl: expected at"),
    ],
)
def test_bad_bootstraps(text: str, said: str) -> None:
    with pytest.raises(ConfigError, match=said):
        parse_config(text, "c.yaml")


def test_bootstrap_on_another_port_of_loopback_is_fine() -> None:
    config = parse_config("listen: [127.0.0.1:53]\nbootstrap: ['udp://127.0.0.1:5353']\n", "c")
    assert config.bootstrap.resolvers[0].port == 5353


def test_bootstrap_on_the_command_line() -> None:
    config = parse_config("listen: [127.0.0.1:53]\n", "c.yaml")
    with pytest.raises(ConfigError, match="needs --bootstrap"):
        apply_overrides(config, Overrides(upstreams=("tls://dns.quad9.net",)))
    both = Overrides(upstreams=("tls://dns.quad9.net",), bootstrap=("udp://9.9.9.9",))
    assert apply_overrides(config, both).bootstrap.resolvers[0].address == "9.9.9.9"
    ours = Overrides(bootstrap=("udp://127.0.0.1",))
    with pytest.raises(ConfigError, match="itself"):
        apply_overrides(config, ours)
