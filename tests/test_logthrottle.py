"""Failure log lines are rate-limited: one per upstream and failure class a minute, with a count
of what was held back; the class is in the line."""

from __future__ import annotations

import logging

import dns.message
import dns.query
import dns.rcode
import pytest

from stubby_py.core.logthrottle import MAX_KEYS, LogThrottle
from tests.conftest import dot_uri
from tests.daemon_thread import make_config, running_daemon
from tests.servers import LocalUpstream, Misbehaviour


def test_one_line_per_key_and_interval_with_the_count_held_back() -> None:
    throttle = LogThrottle(interval=60.0)
    assert throttle.allow("a", 0.0) == 0
    assert throttle.allow("a", 1.0) is None
    assert throttle.allow("a", 59.9) is None
    assert throttle.allow("b", 2.0) == 0  # keys are independent
    assert throttle.allow("a", 60.0) == 2  # two held back since the last line
    assert throttle.allow("a", 61.0) is None


def test_a_key_that_logs_again_is_not_the_first_forgotten() -> None:
    throttle = LogThrottle(interval=10.0)
    for i in range(MAX_KEYS):
        throttle.allow(i, 0.0)
    assert throttle.allow(0, 20.0) == 0  # key 0 logs again: now the newest
    throttle.allow("new", 21.0)  # one over the bound: the oldest (key 1) goes, not key 0
    assert throttle.allow(0, 22.0) is None
    assert throttle.allow(1, 22.0) == 0


def test_keys_are_bounded() -> None:
    throttle = LogThrottle()
    for i in range(MAX_KEYS + 10):
        throttle.allow(i, 0.0)
    assert len(throttle._keys) == MAX_KEYS
    assert throttle.allow(MAX_KEYS + 9, 1.0) is None  # the newest are kept


@pytest.mark.timeout(30)
def test_upstream_failures_are_logged_with_their_class_once(
    dot_upstream: LocalUpstream, ca_file: str, caplog: pytest.LogCaptureFixture
) -> None:
    dot_upstream.state.misbehaviour = Misbehaviour.GARBAGE
    config = make_config([dot_uri(dot_upstream)], ca_file, timeout=1.0, attempt_timeout=1.0)
    with caplog.at_level(logging.WARNING, logger="stubby_py"), running_daemon(config) as daemon:
        for i in range(5):
            query = dns.message.make_query(f"n{i}.example.", "A")
            reply = dns.query.udp(query, "127.0.0.1", port=daemon.port, timeout=3)
            assert reply.rcode() == dns.rcode.SERVFAIL
    lines = [r.getMessage() for r in caplog.records if "upstream" in r.getMessage()]
    assert len(lines) == 1, lines
    assert "bad-response" in lines[0] and dot_upstream_name(dot_upstream) in lines[0]


def dot_upstream_name(upstream: LocalUpstream) -> str:
    return f"127.0.0.1:{upstream.port}"
