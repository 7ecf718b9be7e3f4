"""Test clients: many dnspython queries at once over UDP or TCP, each with its own timeout."""

from __future__ import annotations

import asyncio
import time

import dns.asyncquery
import dns.message
import dns.rcode


async def _ask(
    name: str, port: int, timeout: float, tcp: bool, limiter: asyncio.Semaphore
) -> tuple[dns.message.Message | None, float]:
    query = dns.message.make_query(name, "A")
    send = dns.asyncquery.tcp if tcp else dns.asyncquery.udp
    async with limiter:
        start = time.monotonic()
        try:
            reply = await send(query, "127.0.0.1", port=port, timeout=timeout)
        except dns.exception.Timeout:
            return None, time.monotonic() - start
        assert reply.id == query.id
        return reply, time.monotonic() - start


def ask_many(
    names: list[str], port: int, *, timeout: float = 5.0, tcp: bool = False, concurrency: int = 50
) -> list[tuple[dns.message.Message | None, float]]:
    """Send every name once; return (reply or None on timeout, seconds) per name, in order."""

    async def main() -> list[tuple[dns.message.Message | None, float]]:
        limiter = asyncio.Semaphore(concurrency)
        return await asyncio.gather(*(_ask(n, port, timeout, tcp, limiter) for n in names))

    return asyncio.run(main())


def rcodes(results: list[tuple[dns.message.Message | None, float]]) -> list[str]:
    return ["TIMEOUT" if r is None else dns.rcode.to_text(r.rcode()) for r, _ in results]
