"""The client side of tests against the test servers: a daemon config for one server, queries
to the daemon, and checks on what the server saw (shared by test_doh.py, test_doq.py and others).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import dns.asyncquery
import dns.message
import dns.query

from stubby_py.core.config import Config
from tests.daemon_thread import make_config
from tests.servers.answers import ServerState

#: the daemon's whole deadline for a query in these tests (the issue asks for about 1.5 s)
TIMEOUT = 1.5


def daemon_config(uri: str, ca_file: str, **spec_changes: Any) -> Config:
    """A daemon config forwarding to one upstream, deadline TIMEOUT, spec fields replaced."""
    config = make_config([uri], ca_file, timeout=TIMEOUT, attempt_timeout=TIMEOUT)
    spec = replace(config.forwarding.upstreams[0], **spec_changes)
    return config.with_options(upstreams=(spec,))


def ask(port: int, name: str = "www.example.", rdtype: str = "A") -> dns.message.Message:
    query = dns.message.make_query(name, rdtype)
    reply = dns.query.udp(query, "127.0.0.1", port=port, timeout=5)
    assert reply.id == query.id
    return reply


def ask_many(port: int, names: list[str]) -> list[dns.message.Message]:
    """All the queries at once, from one client loop."""

    async def run() -> list[dns.message.Message]:
        queries = [dns.message.make_query(name, "A") for name in names]
        return list(
            await asyncio.gather(
                *(dns.asyncquery.udp(q, "127.0.0.1", port=port, timeout=5) for q in queries)
            )
        )

    return asyncio.run(run())


def answer_address(reply: dns.message.Message) -> str | None:
    return reply.answer[0][0].address if reply.answer else None  # type: ignore[no-any-return]


def wire_queries_ok(state: ServerState) -> bool:
    """Every query the server saw: message ID 0, padded to a multiple of 128 octets."""
    return bool(state.queries) and all(
        q[:2] == b"\x00\x00" and len(q) % 128 == 0 for q in state.queries
    )


def wait_for(predicate: Callable[[], bool], timeout: float = 2.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()
