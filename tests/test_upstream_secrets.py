"""Clients never see an upstream's secrets. DoH providers put account tokens in the URL path;
what clients are shown (Extended DNS Error text, `stubby-py stats`, `explain`, the Prometheus
labels) names an upstream by its configured `name` or its scheme, host and port, and so do the
logs. The token still goes to the server: it is the upstream's own business."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from pathlib import Path

import dns.edns
import dns.message
import dns.query
import dns.rcode
import pytest
import trustme

from stubby_py.commands import cli
from stubby_py.core.config import Overrides, apply_overrides, parse_config, parse_upstream_uri
from stubby_py.core.errors import ConfigError
from stubby_py.daemon.explain import explain
from tests.conftest import AUTH_NAME, server_context
from tests.daemon_thread import make_config, running_daemon
from tests.peers import LOOPBACK, free_ports
from tests.servers import Misbehaviour, h2_server
from tests.test_stats_and_metrics import scrape

SECRET = "ACCOUNT-TOKEN-7f3a9c"


def ede_of(reply: dns.message.Message) -> tuple[int, str]:
    (ede,) = [o for o in reply.options if isinstance(o, dns.edns.EDEOption)]
    return int(ede.code), ede.text or ""


def test_a_failing_doh_upstream_is_named_without_its_path(
    ca: trustme.CA,
    ca_file: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    dead = free_ports(1)[0]
    with h2_server(server_context(ca)) as server:
        server.state.misbehaviour = Misbehaviour.HTTP500
        origin = f"https://{AUTH_NAME}:{server.port}"
        host = f"{origin}#127.0.0.1"  # as shown: its path never is
        socket_path = str(tmp_path / "run" / "control.sock")
        config = make_config(
            [
                f"{origin}/dns-query/{SECRET}#127.0.0.1",
                f"https://{LOOPBACK}:{dead}/{SECRET}-2/dns-query",
            ],
            ca_file, strategy="failover", hedge=False, timeout=2.0, attempt_timeout=1.0,
            control_socket=socket_path, metrics_listen=(LOOPBACK, 0),
        )  # fmt: skip
        named = replace(config.forwarding.upstreams[1], name="refusing-provider")
        config = config.with_options(upstreams=(config.forwarding.upstreams[0], named))
        with caplog.at_level("DEBUG", logger="stubby_py"), running_daemon(config) as daemon:
            query = dns.message.make_query("www.example.", "A", use_edns=0)
            first = dns.query.udp(query, LOOPBACK, port=daemon.port, timeout=5)
            held = dns.query.udp(query, LOOPBACK, port=daemon.port, timeout=5)
            trace = asyncio.run_coroutine_threadsafe(
                explain(daemon.resolver, "other.example.", 1), daemon.loop
            ).result(10)
            _status, _type, metrics_text = scrape(daemon.daemon.metrics.port)
            assert cli.main(["stats", "--json", "--socket", socket_path]) == 0
            stats_text = capsys.readouterr().out
            assert cli.main(["stats", "--socket", socket_path]) == 0
            stats_table = capsys.readouterr().out
        # the token did go where it belongs
        assert any(SECRET in path for path in server.state.paths), server.state.paths

    assert first.rcode() == dns.rcode.SERVFAIL
    code, text = ede_of(first)
    assert code == 22, text  # No Reachable Authority
    assert text.startswith(f"all upstreams failed: {host}: bad-response (HTTP status 500)"), text
    assert "refusing-provider: connection-refused" in text, text
    held_text = ede_of(held)[1]
    explained = json.dumps(trace.to_dict())
    assert f'"upstream": "{host}"' in explained and "HTTP status 500" in explained, explained
    assert f'upstream="{host}"' in metrics_text, metrics_text
    assert 'upstream="refusing-provider"' in metrics_text, metrics_text
    stats = json.loads(stats_text)
    assert [u["name"] for u in stats["upstreams"]] == [host, "refusing-provider"]
    logs = "\n".join(record.getMessage() for record in caplog.records)
    assert f"{host}: HTTP status 500" in logs, logs
    shown = {
        "EDE text": text, "held EDE text": held_text, "explain": explained,
        "metrics": metrics_text, "stats --json": stats_text, "stats": stats_table, "logs": logs,
    }  # fmt: skip
    for where, seen in shown.items():
        assert SECRET not in seen and "dns-query" not in seen, f"{where}:\n{seen}"


@pytest.mark.parametrize(
    "uri",
    [
        f"https://dns_example/dns-query/{SECRET}",
        f"https://dns.example/{SECRET}#not-an-ip",
        f"https://dns.example:99999/{SECRET}#192.0.2.1",
    ],
)
def test_a_bad_doh_url_is_refused_without_repeating_its_path(uri: str) -> None:
    with pytest.raises(ValueError) as refused:
        parse_upstream_uri(uri)
    assert SECRET not in str(refused.value)


def test_a_doh_url_by_hostname_without_bootstrap_is_refused_without_its_path() -> None:
    url = f"https://dns.example/dns-query/{SECRET}"
    with pytest.raises(ConfigError) as refused:
        parse_config(f"upstreams:\n  - {url}\n", "c.yaml")
    assert "needs `bootstrap:`" in str(refused.value) and SECRET not in str(refused.value)
    with pytest.raises(ConfigError) as refused:
        apply_overrides(parse_config("", "c.yaml"), Overrides(upstreams=(url,)))
    assert "needs --bootstrap" in str(refused.value) and SECRET not in str(refused.value)


def test_upstreams_that_would_be_shown_alike_are_refused() -> None:
    """Two DoH upstreams that differ only in their path would be one name in every EDE text,
    stats row and metrics series (duplicate series break the exposition): refused, with a way
    out; named, they pass."""
    one, two = (f"https://dns.example/{SECRET}-{n}#192.0.2.1" for n in (1, 2))
    text = f"upstreams:\n  - {one}\n  - {two}\n"
    with pytest.raises(ConfigError, match=r"upstreams\[1\]: shown as .* give each a `name`") as err:
        parse_config(text, "pool.yaml")
    assert SECRET not in str(err.value) and "pool.yaml:3" in str(err.value)
    with pytest.raises(ConfigError, match=r"upstreams\[1\]: the same upstream as upstreams\[0\]"):
        parse_config(f"upstreams:\n  - {one}\n  - {one}\n", "pool.yaml")
    grouped = f"upstream_groups:\n  work:\n    - {one}\n    - url: {two}\n      name: second\n"
    config = parse_config(grouped, "pool.yaml")
    assert [s.label for s in config.forwarding.groups[0][1]] == [
        "https://dns.example:443#192.0.2.1",
        "second",
    ]
    # two addresses of one provider are two upstreams, shown apart
    pair = "upstreams:\n  - https://dns.example/q#192.0.2.1\n  - https://dns.example/q#192.0.2.2\n"
    labels = [s.label for s in parse_config(pair, "pool.yaml").forwarding.upstreams]
    assert labels == ["https://dns.example:443#192.0.2.1", "https://dns.example:443#192.0.2.2"]
