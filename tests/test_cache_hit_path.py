"""The hit path: answered inside `Resolver.handle`, synchronously, without dnspython.

``python -m tests.test_cache_hit_path`` prints the cost of each step per hit (best of 7 runs of
200,000 hits): parsing the client's query, the cache lookup (same second, and a new second, which
patches the TTLs), building the client's reply, and the whole of `Resolver.handle`.
"""

from __future__ import annotations

import asyncio
import timeit
from collections.abc import Callable

import dns.message
import dns.rrset

from stubby_py.core import response, wire
from stubby_py.core.config import Config
from stubby_py.daemon.query_path import Resolver
from stubby_py.daemon.runtime import Runtime


def _stored_answer(resolver: Resolver, name: str = "www.example.com.") -> bytes:
    query = dns.message.make_query(name, "A", use_edns=0)
    reply = dns.message.make_response(query)
    reply.answer.append(dns.rrset.from_text(name, 300, "IN", "A", "192.0.2.1"))
    data = reply.to_wire()
    layout = wire.scan_reply(data)
    body, offsets = wire.without_opt(data, layout)
    key = wire.parse_query(query.to_wire()).key
    resolver.cache.store(key, body, offsets, layout, asyncio.get_running_loop().time())
    return query.to_wire()


def _resolver() -> Resolver:
    return Runtime(Config.from_options(cache_file=None), {}, []).resolver


def test_a_hit_is_answered_at_once_without_a_task() -> None:
    async def main() -> None:
        resolver = _resolver()
        query = _stored_answer(resolver)
        replies: list[bytes] = []
        resolver.handle(b"\x12\x34" + query[2:], "127.0.0.1", replies.append, udp=True)
        assert len(replies) == 1 and not resolver._tasks and not resolver._inflight
        reply = dns.message.from_wire(replies[0])
        assert reply.id == 0x1234 and reply.answer[0][0].address == "192.0.2.1"
        assert resolver.counters["cache_hits"] == 1

    asyncio.run(main())


def test_a_hit_costs_microseconds_not_a_message_parse() -> None:
    """A loose guard (a dnspython parse and render alone is ~100 us here; a hit is ~3 us)."""

    async def main() -> float:
        resolver = _resolver()
        query = _stored_answer(resolver)
        replies: list[bytes] = []
        hit = lambda: resolver.handle(query, "127.0.0.1", replies.append, udp=True)  # noqa: E731
        return min(timeit.repeat(hit, number=2000, repeat=5)) / 2000

    assert asyncio.run(main()) < 40e-6


def measure() -> dict[str, float]:
    """Microseconds per hit for each step."""

    async def main() -> dict[str, float]:
        resolver = _resolver()
        data = _stored_answer(resolver)
        query = wire.parse_query(data)
        cache = resolver.cache
        now = asyncio.get_running_loop().time()
        body = cache.fresh(query.key, now)
        assert body is not None
        clock = [now]

        def new_second() -> bytes | None:
            clock[0] += 1.0
            if clock[0] > now + 290:
                clock[0] = now
                cache.store_body(query.key, body, wire.scan_reply(body).ttl_offsets, 300, now)
            return cache.fresh(query.key, clock[0])

        replies: list[bytes] = []
        steps: dict[str, Callable[[], object]] = {
            "parse the query (wire.parse_query)": lambda: wire.parse_query(data),
            "lookup, same second (Cache.fresh)": lambda: cache.fresh(query.key, now),
            "lookup, new second: TTLs patched": new_second,
            "client reply (response.client_reply)": lambda: response.client_reply(
                body, query, limit=1232
            ),
            "lookup + reply": lambda: response.client_reply(
                cache.fresh(query.key, now) or b"", query, limit=1232
            ),
            "whole Resolver.handle": lambda: resolver.handle(
                data, "127.0.0.1", replies.append, udp=True
            ),
        }
        return {
            label: min(timeit.repeat(step, number=200_000, repeat=7)) / 200_000 * 1e6
            for label, step in steps.items()
        }

    return asyncio.run(main())


if __name__ == "__main__":
    for label, micros in measure().items():
        print(f"{label:40} {micros:6.2f} us")
