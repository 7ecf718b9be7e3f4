"""One QueryContext per admitted query: the query log hears of each answer through it (its
observer), with where the answer came from; no sockets, no upstreams."""

from __future__ import annotations

import asyncio
from typing import Any

import dns.message
import dns.rcode

from stubby_py.core.config import Config
from stubby_py.daemon.context import QueryContext
from stubby_py.daemon.runtime import Runtime
from tests.test_cache_hit_path import _stored_answer


class _Log:
    """Stands in for querylog.QueryLog."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str, int | str]] = []

    def answered(self, context: QueryContext, reply: bytes) -> None:
        rcode = dns.rcode.to_text(dns.message.from_wire(reply).rcode())
        self.lines.append((context.client_ip, context.source, rcode))

    def record(self, client_ip: str, query: Any, rcode: int, source: str) -> None:
        self.lines.append((client_ip, source, dns.rcode.Rcode(rcode).name))

    def record_drop(self, client_ip: str, query: Any, why: str) -> None:
        self.lines.append((client_ip, f"dropped:{why}", "-"))


def test_the_query_log_hears_where_each_answer_came_from() -> None:
    async def main() -> list[tuple[str, str, int | str]]:
        config = Config.from_options(cache_file=None, allow=("127.0.0.0/8",), deny_action="refuse")
        resolver = Runtime(config, {}, []).resolver
        log = _Log()
        resolver.query_log = log  # type: ignore[assignment]
        hit = _stored_answer(resolver)
        replies: list[bytes] = []

        def ask(data: bytes, ip: str = "127.0.0.1") -> None:
            resolver.handle(data, ip, replies.append, udp=True)

        ask(hit)
        ask(dns.message.make_query("localhost.", "A").to_wire())
        ask(dns.message.make_query("example.com.", "ANY").to_wire())
        ask(hit, "192.0.2.7")
        assert len(replies) == 4
        return log.lines

    assert asyncio.run(main()) == [
        ("127.0.0.1", "cache", "NOERROR"),
        ("127.0.0.1", "local", "NOERROR"),
        ("127.0.0.1", "any-minimal", "NOERROR"),
        ("192.0.2.7", "rejected", "REFUSED"),
    ]


def test_a_dropped_query_is_logged_as_dropped() -> None:
    async def main() -> list[tuple[str, str, int | str]]:
        config = Config.from_options(cache_file=None, allow=("127.0.0.0/8",), deny_action="drop")
        resolver = Runtime(config, {}, []).resolver
        log = _Log()
        resolver.query_log = log  # type: ignore[assignment]
        query = dns.message.make_query("example.com.", "A").to_wire()
        assert not resolver.handle(query, "192.0.2.7", lambda reply: None, udp=True)
        return log.lines

    assert asyncio.run(main()) == [("192.0.2.7", "dropped:denied", "-")]
