"""The cache's configuration options: defaults, values read, and errors that name the key."""

from __future__ import annotations

import pytest

from stubby_py.core.cache import CacheLimits
from stubby_py.core.config import load_config, parse_config
from stubby_py.core.errors import ConfigError


def test_defaults() -> None:
    config = load_config(None)
    assert config.cache.max_entries == 100_000
    assert (config.cache.max_bytes >> 20) == 32
    assert (config.cache.min_ttl, config.cache.max_ttl) == (0, 86_400)  # as Unbound
    assert config.cache.negative_max_ttl == 3_600
    assert config.cache.serve_stale and config.cache.stale_window == 86_400
    assert config.cache.prefetch
    assert config.service.cache_file == "auto"
    limits = config.cache
    assert limits.max_bytes == 32 << 20
    assert limits == CacheLimits(
        max_entries=100_000, max_bytes=32 << 20, stale_window=86_400
    )  # the cache's own defaults agree


def test_every_option_is_read() -> None:
    config = parse_config(
        """
cache_size: 5000
cache_max_memory: 8
cache_min_ttl: 30
cache_max_ttl: 3600
cache_negative_max_ttl: 60
serve_stale: false
stale_window: 600
prefetch: false
cache_file: /var/tmp/stubby.cache
""",
        "cache.yaml",
    )
    assert config.cache == CacheLimits(
        max_entries=5000, max_bytes=8 << 20, min_ttl=30, max_ttl=3600, negative_max_ttl=60,
        serve_stale=False, stale_window=600, prefetch=False,
    )  # fmt: skip
    assert config.service.cache_file == "/var/tmp/stubby.cache"


@pytest.mark.parametrize(
    ("text", "expected"),
    [("cache_file: false", None), ("cache_file: auto", "auto"), ("cache_file: null", "auto")],
)
def test_cache_file_can_be_off_automatic_or_a_path(text: str, expected: str | None) -> None:
    assert parse_config(text, "c.yaml").service.cache_file == expected


def test_size_zero_is_allowed() -> None:
    assert parse_config("cache_size: 0", "c.yaml").cache.max_entries == 0


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("cache_size: -1", "c.yaml:1: cache_size: expected a whole number from 0"),
        ("cache_size: many", "c.yaml:1: cache_size: expected a whole number"),
        ("cache_max_memory: 0", "cache_max_memory: expected a whole number from 1"),
        ("cache_max_ttl: 0", "cache_max_ttl: expected a whole number from 1"),
        ("serve_stale: maybe", "serve_stale: expected true or false"),
        ("prefetch: 1", "prefetch: expected true or false"),
        ("stale_window: 1.5", "stale_window: expected a whole number"),
        ("cache_file: 7", "cache_file: expected a path, auto or false"),
        ("cache_file: ''", "cache_file: expected a path, auto or false"),
        ("cache_min_ttl: 600\ncache_max_ttl: 300", "c.yaml:1: cache_min_ttl: expected at most"),
    ],
)
def test_bad_values_name_the_key(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "c.yaml")
    assert message in str(caught.value)
