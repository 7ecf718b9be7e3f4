"""A listener's own `allow` (issue #17): it narrows the global `allow` on that listener.

One daemon per module, global `allow` 127.0.0.0/8, read from a file (so the mapping form of
`listen` is read as users write it): a plain listener on 127.0.0.1 for 127.0.0.2 only, DoT and
DoQ listeners for 127.0.0.3 only, and a plain listener on 127.0.0.4 with no `allow` of its own.
Clients bind their sockets to the source address (127.0.0.0/8 is all local on Linux).
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dns.asyncquery
import dns.edns
import dns.exception
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest
import trustme

from stubby_py.core.config import Config, ConfigError, parse_config
from stubby_py.core.wire import frame
from stubby_py.listeners.plain import UDPListener
from tests.daemon_thread import DaemonThread, running_daemon
from tests.servers import LocalUpstream, local_upstream
from tests.test_listeners_encrypted import NAME, query, write_pair

PLAIN_ONLY = "127.0.0.2"  # the plain listener's own allow
ENCRYPTED_ONLY = "127.0.0.3"  # the DoT and DoQ listeners' own allow
OPEN_ADDRESS = "127.0.0.4"  # a plain listener with no allow of its own


@dataclass
class Served:
    daemon: DaemonThread
    upstream: LocalUpstream
    ca_file: str
    config_file: Path
    text: str
    plain: int
    open_plain: int
    dot: int
    doq: int

    @property
    def counters(self) -> dict[str, int]:
        counters: dict[str, int] = self.daemon.resolver.counters
        return dict(counters)

    def reload(self, text: str) -> None:
        self.config_file.write_text(text)
        daemon = self.daemon.daemon
        daemon.loader = lambda: parse_config(text, str(self.config_file))
        assert self.daemon.call(daemon.reload) is None


def config_text(upstream_port: int, cert: str, key: str, plain_allow: str = PLAIN_ONLY) -> str:
    return f"""\
allow: [127.0.0.0/8]
listen:
  - url: 127.0.0.1:0
    allow: [{plain_allow}/32]
  - {{url: "tls://127.0.0.1:0", allow: ["{ENCRYPTED_ONLY}/32"]}}
  - url: quic://127.0.0.1:0
    allow:
      - {ENCRYPTED_ONLY}/32
  - {OPEN_ADDRESS}:0
tls_cert: {cert}
tls_key: {key}
upstreams: [udp://127.0.0.1:{upstream_port}]
dnssec: "off"
control_socket: false
"""


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    directory = tmp_path_factory.mktemp("listener_allow")
    ca = trustme.CA()
    ca_file = str(directory / "ca.pem")
    ca.cert_pem.write_to_path(ca_file)
    cert, key = write_pair(ca, directory)
    with local_upstream(None) as upstream:
        path = directory / "stubby-py.yaml"
        text = config_text(upstream.port, cert, key)
        path.write_text(text)
        config = parse_config(text, str(path))
        with running_daemon(config) as daemon:
            (_, plain), (_, open_plain) = daemon.daemon.bound
            dot, doq = (bound.port for bound in daemon.daemon.encrypted_bound)
            yield Served(daemon, upstream, ca_file, path, text, plain, open_plain, dot, doq)


def udp(served: Served, source: str, port: int | None = None, *, where: str = "127.0.0.1",
        message: dns.message.Message | None = None) -> dns.message.Message:  # fmt: skip
    return dns.query.udp(
        message or query(), where, port=port or served.plain, source=source, timeout=5
    )


def tls_context(served: Served) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=served.ca_file)
    context.set_alpn_protocols(["dot"])
    return context


def dot(served: Served, source: str) -> dns.message.Message:
    return dns.query.tls(
        query(), "127.0.0.1", port=served.dot, source=source, timeout=5,
        ssl_context=tls_context(served), server_hostname=NAME,
    )  # fmt: skip


def doq(served: Served, source: str, timeout: float = 5.0) -> dns.message.Message:
    reply: dns.message.Message = asyncio.run(
        dns.asyncquery.quic(query(), "127.0.0.1", port=served.doq, timeout=timeout,
                            verify=served.ca_file, server_hostname=NAME, source=source)
    )  # fmt: skip
    return reply


def tcp_closed_at_accept(port: int, source: str) -> bool:
    """Connect from `source`, send a query: True when the connection is closed with no reply."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.bind((source, 0))
        sock.connect(("127.0.0.1", port))
        try:
            sock.sendall(frame(query().to_wire()))
            return sock.recv(4096) == b""
        except (ConnectionResetError, BrokenPipeError):
            return True


def stats(served: Served) -> dict[str, Any]:
    figures: dict[str, Any] = served.daemon.daemon.collect_stats()
    return figures


# -- plain UDP and TCP ----------------------------------------------------------------------------
def test_plain_udp_answers_its_own_allow_and_refuses_others(served: Served) -> None:
    assert udp(served, PLAIN_ONLY).rcode() == dns.rcode.NOERROR
    refused_before = served.counters["refused"]
    reply = udp(served, ENCRYPTED_ONLY)
    assert reply.rcode() == dns.rcode.REFUSED  # deny_action: refuse, as a global deny
    assert any(
        isinstance(o, dns.edns.EDEOption) and o.code == dns.edns.EDECode.PROHIBITED
        for o in reply.options
    )
    assert served.counters["refused"] == refused_before + 1
    assert not reply.answer


def test_plain_tcp_closes_others_at_accept(served: Served) -> None:
    reply = dns.query.tcp(query(), "127.0.0.1", port=served.plain, source=PLAIN_ONLY, timeout=5)
    assert reply.rcode() == dns.rcode.NOERROR
    denied_before = served.daemon.daemon.tcp.denied
    assert tcp_closed_at_accept(served.plain, ENCRYPTED_ONLY)
    assert served.daemon.daemon.tcp.denied == denied_before + 1


def test_listener_without_allow_answers_every_globally_allowed_source(served: Served) -> None:
    for source in (PLAIN_ONLY, ENCRYPTED_ONLY, "127.0.0.9"):
        reply = udp(served, source, served.open_plain, where=OPEN_ADDRESS)
        assert reply.rcode() == dns.rcode.NOERROR, source
        reply = dns.query.tcp(query(), OPEN_ADDRESS, port=served.open_plain, source=source,
                              timeout=5)  # fmt: skip
        assert reply.rcode() == dns.rcode.NOERROR, source


def test_udp_listener_without_allow_hands_queries_straight_on(served: Served) -> None:
    """No check per datagram is added where a listener has no `allow` of its own."""
    udp_listeners = served.daemon.daemon._udp
    assert len(udp_listeners) == 2
    narrowed, open_listener = udp_listeners
    resolver = served.daemon.resolver
    assert open_listener._handler is resolver
    assert narrowed._handler is not resolver
    assert isinstance(open_listener, UDPListener)


# -- DoT and DoQ ----------------------------------------------------------------------------------
def test_dot_answers_its_own_allow_and_closes_others_before_the_handshake(
    served: Served,
) -> None:
    assert dot(served, ENCRYPTED_ONLY).rcode() == dns.rcode.NOERROR
    tcp = served.daemon.daemon.tcp
    denied, failed = tcp.denied, tcp.tls_handshake_failures
    with pytest.raises((ssl.SSLError, ConnectionError, EOFError, OSError)):
        dot(served, PLAIN_ONLY)
    assert tcp.denied == denied + 1
    assert tcp.tls_handshake_failures == failed  # closed before any handshake began


def test_doq_denied_source_gets_nothing_at_all(served: Served) -> None:
    assert doq(served, ENCRYPTED_ONLY).rcode() == dns.rcode.NOERROR
    before = stats(served)["doq"]["denied_datagrams"]
    with pytest.raises(dns.exception.Timeout):
        doq(served, PLAIN_ONLY, timeout=1.5)
    assert stats(served)["doq"]["denied_datagrams"] > before
    # an Initial of an unsupported version: not even a Version Negotiation for the outsider
    packet = b"\xc0\x1a\x2a\x3a\x4a\x08" + b"D" * 8 + b"\x08" + b"S" * 8
    packet += b"\0" * (1200 - len(packet))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((PLAIN_ONLY, 0))
        sock.settimeout(1.0)
        sock.sendto(packet, ("127.0.0.1", served.doq))
        with pytest.raises(TimeoutError):
            sock.recvfrom(2048)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:  # the control
        sock.bind((ENCRYPTED_ONLY, 0))
        sock.settimeout(5.0)
        sock.sendto(packet, ("127.0.0.1", served.doq))
        data, _ = sock.recvfrom(2048)
        assert data[1:5] == b"\0\0\0\0"  # Version Negotiation


# -- DDR ------------------------------------------------------------------------------------------
def ddr(served: Served, source: str) -> list[str]:
    message = dns.message.make_query("_dns.resolver.arpa", "SVCB")
    reply = udp(served, source, served.open_plain, where=OPEN_ADDRESS, message=message)
    assert reply.rcode() == dns.rcode.NOERROR
    return [rdata.to_text() for rrset in reply.answer for rdata in rrset]


def test_ddr_names_only_the_encrypted_listeners_the_client_may_use(served: Served) -> None:
    allowed = ddr(served, ENCRYPTED_ONLY)
    assert sorted(r.split("alpn=")[1].split()[0] for r in allowed) == ['"doq"', '"dot"']
    assert ddr(served, PLAIN_ONLY) == []  # NODATA: neither would take it


# -- reload ---------------------------------------------------------------------------------------
def test_reload_changes_a_listeners_allow_and_deny_action(served: Served) -> None:
    swapped = served.text.replace(f"allow: [{PLAIN_ONLY}/32]", f"allow: [{ENCRYPTED_ONLY}/32]")
    assert swapped != served.text
    served.reload(swapped)
    assert udp(served, ENCRYPTED_ONLY).rcode() == dns.rcode.NOERROR
    assert udp(served, PLAIN_ONLY).rcode() == dns.rcode.REFUSED
    assert tcp_closed_at_accept(served.plain, PLAIN_ONLY)
    served.reload(swapped + "deny_action: drop\n")
    with pytest.raises(dns.exception.Timeout):
        dns.query.udp(query(), "127.0.0.1", port=served.plain, source=PLAIN_ONLY, timeout=1.0)
    # the global `allow` narrowed below the listener's own: the global one still decides
    served.reload(swapped.replace("allow: [127.0.0.0/8]", "allow: [127.0.0.0/30]"))
    assert udp(served, ENCRYPTED_ONLY).rcode() == dns.rcode.NOERROR
    served.reload(swapped.replace("allow: [127.0.0.0/8]", "allow: [127.0.0.0/31, 127.0.0.2/31]")
                  .replace(f"[{ENCRYPTED_ONLY}/32]", f"[{ENCRYPTED_ONLY}/32, {PLAIN_ONLY}/32]", 1))
    assert udp(served, PLAIN_ONLY).rcode() == dns.rcode.NOERROR
    served.reload(served.text)
    assert udp(served, PLAIN_ONLY).rcode() == dns.rcode.NOERROR


# -- the configuration ----------------------------------------------------------------------------
def parse(text: str) -> Config:
    return parse_config(text, "stubby-py.yaml")


def test_mapping_form_is_read_for_plain_and_encrypted_listeners(tmp_path: Path) -> None:
    cert, key = write_pair(trustme.CA(), tmp_path)
    config = parse(config_text(5353, cert, key))
    listeners = config.listeners
    assert listeners.addresses == (("127.0.0.1", 0), (OPEN_ADDRESS, 0))
    assert [e.scheme for e in listeners.encrypted] == ["tls", "quic"]
    assert listeners.allow_of("127.0.0.1:0") == (f"{PLAIN_ONLY}/32",)
    assert listeners.allow_of("tls://127.0.0.1:0") == (f"{ENCRYPTED_ONLY}/32",)
    assert listeners.allow_of("quic://127.0.0.1:0") == (f"{ENCRYPTED_ONLY}/32",)
    assert listeners.allow_of(f"{OPEN_ADDRESS}:0") is None
    # a string entry and a mapping without allow: no list of its own
    plain = parse("listen: [127.0.0.1:53, {url: '[::1]:53'}]").listeners
    assert plain.addresses == (("127.0.0.1", 53), ("::1", 53)) and plain.own_allow == ()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("listen:\n  - 127.0.0.1:53\n  - {url: 127.0.0.2:53, allow: [lan]}\n",
         "stubby-py.yaml:3: listen[1].allow[0]: expected a network such as 192.168.1.0/24"),
        ("listen:\n  - url: 127.0.0.1:53\n    allow: [127.0.0.1/32, 10.0.0.0/8]\n",
         "stubby-py.yaml:3: listen[0].allow[1]: a network inside the global `allow`"),
        ("listen:\n  - {url: 127.0.0.1:53, allow: []}\n",
         "stubby-py.yaml:2: listen[0].allow: expected at least one network"),
        ("listen:\n  - {allow: [127.0.0.1/32]}\n",
         "stubby-py.yaml:2: listen[0]: expected a url"),
        ("listen:\n  - {url: 127.0.0.1:53, alow: [127.0.0.1/32]}\n",
         "stubby-py.yaml:2: listen[0].alow: unknown key; expected one of allow, url"),
        ("listen:\n  - {url: 'tls:/127.0.0.1', allow: [127.0.0.1/32]}\n",
         "stubby-py.yaml:2: listen[0].url: expected IP:PORT"),
        ("listen:\n  - {url: 127.0.0.1:53, allow: 127.0.0.1/32}\n",
         "stubby-py.yaml:2: listen[0].allow: expected a list"),
        ("listen:\n  - 127.0.0.1:53\n  - {url: 127.0.0.1:53, allow: [127.0.0.1/32]}\n",
         "stubby-py.yaml:3: listen[1]: the same listener as listen[0] (127.0.0.1:53)"),
    ],
)  # fmt: skip
def test_bad_entries_name_file_line_key_and_what_was_expected(text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse(text)
    assert str(caught.value).startswith(expected), str(caught.value)


def test_encrypted_listener_in_mapping_form_still_needs_the_certificate() -> None:
    with pytest.raises(ConfigError) as caught:
        parse("listen:\n  - {url: 'tls://127.0.0.1:853', allow: [127.0.0.1/32]}\n")
    assert str(caught.value).startswith(
        "stubby-py.yaml:2: listen[0]: an encrypted listener needs `tls_cert`"
    )


def test_command_line_listen_replaces_the_files_listeners_and_their_allow() -> None:
    from stubby_py.core.config import Overrides, apply_overrides

    config = parse("listen:\n  - {url: 127.0.0.1:5300, allow: [127.0.0.2/32]}\n")
    assert config.listeners.own_allow
    replaced = apply_overrides(config, Overrides(listen=("127.0.0.1:5300",)))
    assert replaced.listeners.own_allow == ()
