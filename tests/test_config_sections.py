"""The configuration's sections: each flat option of the file sets one field of the section its
consumer reads, `with_options` sets them by the same names, and choices are enums that still
compare and print as the file's strings."""

from __future__ import annotations

import dataclasses
import json

import pytest

from stubby_py.core.cache import CacheLimits
from stubby_py.core.config import (
    OPTIONS,
    Config,
    DnssecMode,
    LogLevel,
    Rejection,
    TlsVersion,
    parse_config,
)
from stubby_py.core.pool import PoolSettings, PoolStrategy

#: a value other than the default for options of every section, as the file writes it
NOT_DEFAULTS = """
listen: ["127.0.0.1:5353"]
listen_padding_block: 128
tcp_idle_timeout: 5
tcp_max_connections: 100
allow: [10.0.0.0/8]
deny_action: drop
rate_limit: 50
rate_limit_action: refuse
ipv6_client_prefix: 56
upstreams: [udp://127.0.0.1:5300]
timeout: 2
retry_servfail: false
attempt_timeout: 1
upstream_idle_timeout: 10
padding_block_size: 0
tls_min_version: "1.3"
strategy: parallel
parallel_fanout: 3
hedge_min: 0.1
backoff_max: 30
cache_size: 5000
cache_max_memory: 8
stale_window: 600
dnssec: "off"
dnssec_clock_skew: 60
aggressive_nsec: false
bootstrap_min_ttl: 30
bootstrap_file: false
user: root
log_level: debug
control_socket: false
metrics_max_connections: 4
query_log: /tmp/q.log
cache_file: false
watch_network: false
"""


def test_every_option_sets_a_field_of_its_section() -> None:
    sections = {f.name: f.default_factory for f in dataclasses.fields(Config) if f.name != "source"}
    for name, option in OPTIONS.items():
        section = sections[option.section]
        assert option.field in {f.name for f in dataclasses.fields(section)}, name


def test_option_reads_a_value_by_its_name_in_the_file() -> None:
    config = parse_config(NOT_DEFAULTS, "c.yaml")
    assert config.option("cache_max_memory") == 8  # MiB, as the file says, not octets
    assert config.option("strategy") == "parallel" and config.option("listen_padding_block") == 128
    assert config.option("encrypted_listen") == ()


def test_the_file_and_with_options_set_the_same_fields() -> None:
    parsed = parse_config(NOT_DEFAULTS, "c.yaml")
    built = Config.from_options(
        source="c.yaml",
        listen=(("127.0.0.1", 5353),), listen_padding_block=128, tcp_idle_timeout=5.0,
        tcp_max_connections=100, allow=("10.0.0.0/8",), deny_action="drop", rate_limit=50.0,
        rate_limit_action="refuse", ipv6_client_prefix=56,
        upstreams=parsed.forwarding.upstreams, timeout=2.0, retry_servfail=False,
        attempt_timeout=1.0, upstream_idle_timeout=10.0, padding_block_size=0,
        tls_min_version="1.3", strategy="parallel", parallel_fanout=3, hedge_min=0.1,
        backoff_max=30.0, cache_size=5000, cache_max_memory=8, stale_window=600,
        dnssec="off", dnssec_clock_skew=60, aggressive_nsec=False, bootstrap_min_ttl=30,
        bootstrap_file=None, user="root", log_level="debug", control_socket=None,
        metrics_max_connections=4, query_log="/tmp/q.log", cache_file=None, watch_network=False,
    )  # fmt: skip
    assert built == parsed
    assert parsed.cache.max_bytes == 8 << 20  # the file's MiB, the cache's octets
    assert parsed.pool.fanout == 3 and parsed.transport.idle_timeout == 10.0


def test_choices_are_enums_that_compare_and_print_as_the_files_strings() -> None:
    config = parse_config(NOT_DEFAULTS, "c.yaml")
    chosen = {
        config.pool.strategy: (PoolStrategy, "parallel"),
        config.dnssec.mode: (DnssecMode, "off"),
        config.access.deny_action: (Rejection, "drop"),
        config.access.rate_limit_action: (Rejection, "refuse"),
        config.transport.tls_min_version: (TlsVersion, "1.3"),
        config.service.log_level: (LogLevel, "debug"),
    }
    for value, (kind, text) in chosen.items():
        assert isinstance(value, kind)
        assert value == text and f"{value}" == text and str(value) == text
        assert json.dumps(value) == json.dumps(text)


def test_with_options_makes_enums_of_strings() -> None:
    config = Config.from_options(strategy="fastest", dnssec="validate", deny_action="refuse")
    assert config.pool.strategy is PoolStrategy.FASTEST
    assert config.dnssec.mode is DnssecMode.VALIDATE
    assert config.access.deny_action is Rejection.REFUSE
    with pytest.raises(ValueError, match="'best' is not a valid PoolStrategy"):
        Config.from_options(strategy="best")


def test_with_options_changes_only_what_it_names() -> None:
    base = parse_config(NOT_DEFAULTS, "c.yaml")
    changed = base.with_options(cache_size=10, hedge=False)
    assert changed.cache == CacheLimits(
        max_entries=10, max_bytes=8 << 20, stale_window=600
    )  # fmt: skip
    assert changed.pool.hedge is False and changed.pool.fanout == 3
    assert (changed.forwarding, changed.source) == (base.forwarding, base.source)


def test_an_unknown_option_is_refused() -> None:
    with pytest.raises(TypeError, match="unknown configuration option 'cache_sise'"):
        Config().with_options(cache_sise=1)


def test_the_cache_and_pool_sections_are_their_consumers_settings() -> None:
    """One definition: the defaults of the file are the cache's and the pool's own."""
    config = Config()
    assert config.cache == CacheLimits() and config.pool == PoolSettings()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("strategy: best", "c.yaml:1: strategy: expected one of failover, round_robin,"
         " fastest, parallel, got 'best'"),
        ("dnssec: on", "c.yaml:1: dnssec: expected a string, got True"),
        ("deny_action: ignore", "c.yaml:1: deny_action: expected one of refuse, drop"),
        ("rate_limit_action: x", "c.yaml:1: rate_limit_action: expected one of drop, refuse"),
        ("log_level: loud", "c.yaml:1: log_level: expected one of debug, info, warning, error"),
        ("tls_min_version: 1.1", "c.yaml:1: tls_min_version: expected a string, got 1.1"),
    ],
)  # fmt: skip
def test_choice_errors_name_the_choices_as_before(text: str, message: str) -> None:
    with pytest.raises(Exception, match="^" + message.replace(".", r"\.")):
        parse_config(text, "c.yaml")
