"""Resolver.reconfigure: unchanged upstreams keep connection and health; removed ones close."""

from __future__ import annotations

from dataclasses import replace

import trustme

from stubby_py.config import parse_upstream_uri
from tests.clients import ask_many, rcodes
from tests.conftest import dot_uri, server_context
from tests.daemon_thread import make_config, running_daemon
from tests.upstream_server import local_upstream


def test_reload_keeps_unchanged_upstreams_and_drops_removed_ones(
    ca: trustme.CA, ca_file: str
) -> None:
    with local_upstream(server_context(ca)) as kept, local_upstream(server_context(ca)) as removed:
        config = make_config([dot_uri(kept), dot_uri(removed)], ca_file, strategy="round_robin",
                             hedge=False, timeout=0.5)  # fmt: skip
        with running_daemon(config) as daemon:
            assert (
                rcodes(ask_many([f"a{i}.example." for i in range(10)], daemon.port))
                == ["NOERROR"] * 10
            )
            before = daemon.resolver.transports[0]
            new = replace(
                config, upstreams=(parse_upstream_uri(dot_uri(kept)),), rules=(("x.", "default"),)
            )
            daemon.call(daemon.resolver.reconfigure, new)
            assert daemon.resolver.transports == [before]
            assert (
                rcodes(ask_many([f"b{i}.example." for i in range(10)], daemon.port))
                == ["NOERROR"] * 10
            )
            retired = daemon.call(lambda: list(daemon.resolver._retired))
            assert len(retired) == 1 and retired[0].spec.port == removed.port
    assert kept.state.connections == 1
    assert len(kept.state.queries) == 15
