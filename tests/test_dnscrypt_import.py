"""`stubby-py import-dnscrypt-proxy`: a dnscrypt-proxy.toml (written here: Debian's archive on
this machine has no dnscrypt-proxy package to take its example from) with [static] stamps and a
cached source list, converted, loaded, and a daemon on the result answering through a stamp."""

from __future__ import annotations

from pathlib import Path

import dns.rcode
import pytest
import trustme
import yaml

from stubby_py.commands import cli, dnscrypt_import
from stubby_py.core.config import load_config
from stubby_py.transports.tls import tbs_hash
from tests.conftest import server_context
from tests.daemon_thread import running_daemon
from tests.servers import local_upstream
from tests.servers.client_side import answer_address, ask
from tests.test_stamps import _der, make_stamp

NO_LOG_DNSSEC = 0b111  # dnssec, no-log, no-filter

SOURCE_LIST = f"""\
# public-resolvers

This list is what dnscrypt-proxy caches after checking its signature.

## doh-ip

An IPv4 DoH server that claims everything.

{make_stamp(0x02, "192.0.2.10", "doh.example", [bytes(32)], "/dns-query", NO_LOG_DNSSEC)}

## doh-logs

{make_stamp(0x02, "192.0.2.11", "logs.example", [], "/dns-query", 0b001)}

## doh-v6

{make_stamp(0x02, "[2001:db8::53]", "v6.example", [], "/dns-query", NO_LOG_DNSSEC)}

## doh-name-only

{make_stamp(0x02, "", "name.example", [], "/dns-query", NO_LOG_DNSSEC)}

## crypt

sdns://AQcAAAAAAAAACTEyNy4wLjAuMSDDhGvyS56TymQnTA7GfB7MXgJP_KzS10AZNQ6B_lRq5BkyLmRuc2NyeXB0LWNlcnQubG9jYWxob3N0

## two-stamps

{make_stamp(0x02, "192.0.2.20", "two.example", [], "/q", NO_LOG_DNSSEC)}
{make_stamp(0x02, "192.0.2.21", "two.example", [], "/q", NO_LOG_DNSSEC)}
"""


def write_toml(tmp_path: Path, body: str) -> Path:
    (tmp_path / "lists").mkdir(exist_ok=True)
    (tmp_path / "lists" / "public-resolvers.md").write_text(SOURCE_LIST)
    path = tmp_path / "dnscrypt-proxy.toml"
    path.write_text(body)
    return path


TOML_ALL = """\
listen_addresses = ['127.0.0.1:5353', '[::1]:5353']
require_dnssec = true
timeout = 40000
lb_strategy = 'random'
cache = false
fallback_resolvers = ['9.9.9.9:53']
block_ipv6 = false
disabled_server_names = ['pr-two-stamps-2']

[sources]
  [sources.'public-resolvers']
  urls = ['https://download.example/public-resolvers.md']
  cache_file = 'lists/public-resolvers.md'
  minisign_key = 'RWQf6LRCGA9i53mlYecO4IzT51TGPpvWucNSCh1CBM0QTaLn73Y7GFO3'
  prefix = 'pr-'
  [sources.'not-cached']
  urls = ['https://download.example/other.md']
  cache_file = 'other.md'

[static]
  [static.'static-dot']
  stamp = '{dot}'
  [static.'static-crypt']
  stamp = 'sdns://AQcAAAAAAAAACTEyNy4wLjAuMSDDhGvyS56TymQnTA7GfB7MXgJP_KzS10AZNQ6B_lRq5BkyLmRuc2NyeXB0LWNlcnQubG9jYWxob3N0'
"""


def test_every_server_is_taken_or_left_out_with_the_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dot = make_stamp(0x03, "192.0.2.53", "dot.example", [bytes(32)])
    path = write_toml(tmp_path, TOML_ALL.format(dot=dot))
    out = tmp_path / "config.yaml"
    assert cli.main(["import-dnscrypt-proxy", str(path), "-o", str(out)]) == 0
    err = capsys.readouterr().err
    data = yaml.safe_load(out.read_text())
    assert data["listen"] == ["127.0.0.1:5353", "[::1]:5353"]
    assert [u["name"] for u in data["upstreams"]] == ["static-dot", "pr-doh-ip", "pr-two-stamps"]
    assert data["upstreams"][0]["url"] == dot  # kept as a stamp: its hash still checked
    assert (data["timeout"], data["strategy"], data["cache_size"]) == (30.0, "round_robin", 0)
    config = load_config(str(out))
    assert [s.cert_hashes for s in config.forwarding.upstreams][:2] == [(bytes(32).hex(),)] * 2
    for expected in (
        "static.static-crypt: DNSCrypt stamps are not supported",
        "pr-doh-logs: require_nolog: the list does not say it is no-log",
        "pr-doh-v6: ipv6_servers = false",
        "pr-doh-name-only: this DNS-over-HTTPS stamp gives no address for 'name.example'",
        "pr-crypt: DNSCrypt stamps are not supported",
        "pr-two-stamps-2: in disabled_server_names",
        "other.md: No such file or directory: lists are never downloaded here",
        "7 stamps (signature not checked here)",
        "fallback_resolvers: the old name of bootstrap_resolvers",
        "block_ipv6: no equivalent",
        "require_dnssec: stubby-py validates DNSSEC itself",
    ):
        assert expected in err, expected


def test_bootstrap_resolvers_and_proxy_are_converted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """bootstrap_resolvers become `bootstrap:`, so a stamp with only a host name is taken (and
    resolved through them, never through stubby-py); `proxy` becomes the global proxy."""
    body = (
        "server_names = ['pr-doh-name-only']\n"
        "bootstrap_resolvers = ['192.0.2.1:53', '[2001:db8::1]:53']\n"
        "proxy = 'socks5h://127.0.0.1:9050'\n"
        "require_nolog = false\nrequire_nofilter = false\n"
        + TOML_ALL[TOML_ALL.index("[sources]") :]
    )
    path = write_toml(tmp_path, body.format(dot=make_stamp(0x03, "192.0.2.53", "dot.example", [])))
    out = tmp_path / "config.yaml"
    assert cli.main(["import-dnscrypt-proxy", str(path), "-o", str(out)]) == 0
    err = capsys.readouterr().err
    data = yaml.safe_load(out.read_text())
    # behind the proxy, over TCP: UDP cannot go through it
    assert data["bootstrap"] == ["tcp://192.0.2.1:53", "tcp://[2001:db8::1]:53"]
    assert data["proxy"] == "socks5h://127.0.0.1:9050"
    assert [u["name"] for u in data["upstreams"]] == ["pr-doh-name-only"], err
    config = load_config(str(out))
    assert (
        config.forwarding.upstreams[0].needs_bootstrap
        and config.forwarding.upstreams[0].address == "name.example"
    )
    assert [b.label for b in config.bootstrap.resolvers] == [
        "tcp://192.0.2.1:53",
        "tcp://[2001:db8::1]:53",
    ]


def test_server_names_pick_and_order(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    servers = TOML_ALL[TOML_ALL.index("[sources]") :]
    body = (
        "server_names = ['pr-two-stamps-2', 'static-dot', 'missing', 'pr-doh-logs']\n"
        "require_nolog = false\nrequire_nofilter = false\n" + servers
    )
    path = write_toml(tmp_path, body.format(dot=make_stamp(0x03, "192.0.2.53", "dot.example")))
    assert cli.main(["import-dnscrypt-proxy", str(path)]) == 0
    out, err = capsys.readouterr()
    names = [u["name"] for u in yaml.safe_load(out)["upstreams"]]
    assert names == ["pr-two-stamps-2", "static-dot", "pr-doh-logs"]
    assert "server_names: missing: in no [static] entry nor any cached source list" in err


def test_nothing_convertible_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "d.toml"
    path.write_text("server_names = ['x']\n[static.'x']\nstamp = 'sdns://BQcAAAAAAAAAEG9kb2g'\n")
    assert cli.main(["import-dnscrypt-proxy", str(path)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert "static.x: Oblivious DoH target stamps are not supported" in err
    assert "no server could be converted" in err


@pytest.mark.parametrize(
    ("body", "said"),
    [
        ("listen_addresses = 'x'\n", "listen_addresses: expected a list"),
        ("listen_addresses = ['nowhere:53']\n", "listen_addresses[0]: expected IP:PORT"),
        ("timeout = 'soon'\n", "timeout: expected milliseconds"),
        ("[static.'a']\nurl = 'x'\n", "static.a: expected stamp = 'sdns://…'"),
        ("server_names = 'a'\n", "server_names: expected a list of server names"),
        ("this is = not toml [\n", "not a TOML file"),
    ],
)
def test_a_broken_file_names_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], body: str, said: str
) -> None:
    path = tmp_path / "d.toml"
    path.write_text(body)
    assert cli.main(["import-dnscrypt-proxy", str(path)]) == 2
    assert f"{path}: {said}" in capsys.readouterr().err


def test_source_list_reader() -> None:
    entries = dnscrypt_import.read_source_list(SOURCE_LIST, "p-")
    assert [name for name, _ in entries] == [
        "p-doh-ip", "p-doh-logs", "p-doh-v6", "p-doh-name-only", "p-crypt", "p-two-stamps",
        "p-two-stamps-2",
    ]  # fmt: skip


def test_daemon_runs_on_the_imported_file(
    tmp_path: Path, ca: trustme.CA, ca_file: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with local_upstream(server_context(ca)) as server:
        ca_hash = bytes.fromhex(tbs_hash(_der(ca.cert_pem.bytes())))
        dot = make_stamp(0x03, f"127.0.0.1:{server.port}", "dns.test", [ca_hash])
        path = write_toml(
            tmp_path,
            f"server_names = ['mine']\nlisten_addresses = ['127.0.0.1:0']\n"
            f"[static.'mine']\nstamp = '{dot}'\n",
        )
        out = tmp_path / "config.yaml"
        assert cli.main(["import-dnscrypt-proxy", str(path), "-o", str(out)]) == 0
        config = load_config(str(out))
        config = config.with_options(ca_file=ca_file, control_socket=None, dnssec="off")
        with running_daemon(config) as daemon:
            reply = ask(daemon.port)
        assert reply.rcode() == dns.rcode.NOERROR
        assert answer_address(reply) == "192.0.2.1"
        assert server.state.connections == 1
