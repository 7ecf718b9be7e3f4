"""Resolver.reconfigure: unchanged upstreams keep connection and health; removed ones close."""

from __future__ import annotations

from pathlib import Path

import dns.name
import trustme

from stubby_py.core.config import parse_upstream_uri
from tests.clients import ask_many, rcodes
from tests.conftest import dot_uri, server_context
from tests.daemon_thread import make_config, running_daemon
from tests.servers import local_upstream


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
            new = config.with_options(
                upstreams=(parse_upstream_uri(dot_uri(kept)),), rules=(("x.", "default"),)
            )
            daemon.call(daemon.runtime.reconfigure, new)
            assert daemon.resolver.transports == [before]
            assert (
                rcodes(ask_many([f"b{i}.example." for i in range(10)], daemon.port))
                == ["NOERROR"] * 10
            )
            retired = daemon.call(lambda: list(daemon.runtime._retired))
            assert len(retired) == 1 and retired[0].spec.port == removed.port
    assert kept.state.connections == 1
    assert len(kept.state.queries) == 15


def test_reload_keeps_the_warm_validator_unless_its_anchors_change(
    ca: trustme.CA, ca_file: str, tmp_path: Path
) -> None:
    anchors = tmp_path / "anchors.txt"
    ds = ". IN DS 20326 8 2 E06D44B80B8F1D39A95C0B0D7C65D08458E880409BBC683457104237C7F8EC8D\n"
    anchors.write_text(ds)
    with local_upstream(server_context(ca)) as upstream:
        config = make_config([dot_uri(upstream)], ca_file, dnssec="validate",
                             trust_anchors=str(anchors))  # fmt: skip
        with running_daemon(config) as daemon:
            first = daemon.resolver.validator
            assert first is not None
            daemon.call(daemon.runtime.reconfigure, config.with_options(timeout=1.5))
            assert daemon.resolver.validator is first  # same anchors: the key cache stays warm
            anchors.write_text(ds.replace("20326", "20327"))  # the file changed under the path
            daemon.call(daemon.runtime.reconfigure, config.with_options(timeout=1.6))
            second = daemon.resolver.validator
            assert second is not None and second is not first
            assert [d.key_tag for d in second.chain.anchors.get(dns.name.root).ds] == [20327]
            daemon.call(daemon.runtime.reconfigure, config.with_options(dnssec="off"))
            assert daemon.resolver.validator is None
