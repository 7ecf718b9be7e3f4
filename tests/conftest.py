"""Shared fixtures: a test CA (trustme), local DoT/TCP/UDP upstreams, the daemon on loopback."""

from __future__ import annotations

import logging
import os
import ssl
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from tests.servers import LocalUpstream, local_upstream

AUTH_NAME = "dns.test"

# no daemon a test starts (in this process or as a child) may learn this machine's own network
# resolver (`network_resolver: auto` reads /run and /etc) and ask it the captive-portal check
# names: they read an empty tree instead (tests of the portal give their own)
os.environ.setdefault(
    "STUBBY_PY_NETWORK_STATE_ROOT", tempfile.mkdtemp(prefix="stubby-py-netstate-")
)


@pytest.fixture(autouse=True)
def _root_log_level() -> Iterator[None]:
    """A daemon reloaded in-process sets the root logger's level (daemon/service.py): put it
    back after each test, so no test sees the level another left (a test that asserts nothing
    is logged at INFO would see aioquic's client lines)."""
    level = logging.getLogger().level
    yield
    logging.getLogger().setLevel(level)


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="session")
def ca_file(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


def server_context(ca: trustme.CA, *names: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*(names or (AUTH_NAME, "127.0.0.1"))).configure_cert(context)
    return context


@pytest.fixture
def dot_upstream(ca: trustme.CA) -> Iterator[LocalUpstream]:
    with local_upstream(server_context(ca)) as server:
        yield server


@pytest.fixture
def plain_upstream() -> Iterator[LocalUpstream]:
    with local_upstream(None) as server:
        yield server


def dot_uri(server: LocalUpstream, name: str = AUTH_NAME) -> str:
    return f"tls://127.0.0.1:{server.port}#{name}"


@pytest.fixture
def tmp_file(tmp_path: Path):  # type: ignore[no-untyped-def]
    def write(name: str, text: str) -> str:
        path = tmp_path / name
        path.write_text(text)
        return str(path)

    return write


@pytest.fixture(scope="module")
def padded_daemon(ca: trustme.CA, ca_file: str):  # type: ignore[no-untyped-def]
    """One daemon and DoT upstream shared by a module's tests (hypothesis runs many examples)."""
    from tests.daemon_thread import make_config, running_daemon

    with local_upstream(server_context(ca)) as upstream:
        # no answer cache: these tests look at the upstream query each client query causes
        config = make_config([dot_uri(upstream)], ca_file, cache_size=0)
        with running_daemon(config) as daemon:
            yield daemon, upstream


@pytest.fixture(scope="session")
def dnssec_hierarchy(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """The private signed hierarchy (tests/dnssec_hierarchy.py): NSD + a recursive Unbound."""
    from tests.dnssec_hierarchy import signed_hierarchy

    with signed_hierarchy(tmp_path_factory.mktemp("dnssec-hierarchy")) as hierarchy:
        yield hierarchy
