"""Measured upstream figures (issue #18): transports' connect(), session resumption, and the
rolling figures, probes and hedging accounts the daemon keeps from them.

Every upstream is a local server from tests.servers (DoT, DoH over HTTP/2 and HTTP/3, DoQ)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import dns.message
import pytest
import trustme

from stubby_py.core import edns, wire
from stubby_py.core.config import Config, parse_upstream_uri
from stubby_py.transports import make_transport
from tests.conftest import server_context
from tests.servers import (
    ServerThread,
    doq_server,
    h2_server,
    h3_server,
    local_upstream,
    write_cert_files,
)

SCHEMES = ("tls", "https", "h3", "quic")


@dataclass
class Upstream:
    scheme: str
    server: ServerThread

    @property
    def uri(self) -> str:
        if self.scheme in ("https", "h3"):
            return f"{self.scheme}://dns.test:{self.server.port}/dns-query#127.0.0.1"
        return f"{self.scheme}://127.0.0.1:{self.server.port}#dns.test"


@pytest.fixture(scope="module")
def cert_files(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    return write_cert_files(ca, str(tmp_path_factory.mktemp("fig")), "dns.test", "127.0.0.1")


@contextlib.contextmanager
def serving(scheme: str, ca: trustme.CA, cert_files: tuple[str, str]) -> Iterator[Upstream]:
    if scheme == "tls":
        opened = local_upstream(server_context(ca))
    elif scheme == "https":
        opened = h2_server(server_context(ca))
    elif scheme == "h3":
        opened = h3_server(*cert_files)
    else:
        opened = doq_server(*cert_files)
    with opened as server:
        yield Upstream(scheme, server)


@pytest.fixture(params=SCHEMES)
def upstream(
    request: pytest.FixtureRequest, ca: trustme.CA, cert_files: tuple[str, str]
) -> Iterator[Upstream]:
    with serving(request.param, ca, cert_files) as served:
        yield served


def padded_query(name: str) -> bytes:
    client = wire.parse_query(dns.message.make_query(name, "A").to_wire())
    return edns.upstream_query(client, pad_block=128, do=False, keepalive=True)


def test_connect_measures_the_full_and_the_resumed_handshake(
    upstream: Upstream, ca_file: str
) -> None:
    """connect() opens the connection and says what it took; connect(fresh=True) opens a new
    one that resumes the session (the server side counts it as resumed)."""
    config = Config.from_options(upstreams=(parse_upstream_uri(upstream.uri),), ca_file=ca_file)

    async def run() -> list[object]:
        transport = make_transport(config.forwarding.upstreams[0], config)
        loop = asyncio.get_running_loop()
        try:
            first = await transport.connect(loop.time() + 5)
            again = await transport.connect(loop.time() + 5)
            # the reply brings the session ticket in (TLS 1.3 sends it after the handshake)
            await transport.exchange(padded_query("www.example."), loop.time() + 5)
            resumed = await transport.connect(loop.time() + 5, fresh=True)
            await transport.exchange(padded_query("www.example."), loop.time() + 5)
            return [first, again, resumed, transport.stats]
        finally:
            await transport.aclose()
            await asyncio.sleep(0.05)

    first, again, resumed, stats = asyncio.run(run())
    assert not first.resumed and not first.reused and first.handshake_s > 0  # type: ignore[attr-defined]
    assert again.reused  # type: ignore[attr-defined]
    assert resumed.resumed and not resumed.reused  # type: ignore[attr-defined]
    assert resumed.protocol in ("TLSv1.3", "TLSv1.2", "QUIC")  # type: ignore[attr-defined]
    assert stats.handshakes == 2 and stats.resumptions == 1  # type: ignore[attr-defined]
    assert stats.last_full_s is not None and stats.last_resumed_s is not None  # type: ignore[attr-defined]
    assert upstream.server.state.handshakes == 2
    assert upstream.server.state.resumptions == 1
