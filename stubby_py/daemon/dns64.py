"""DNS64 on the query path: an AAAA question answered NODATA, once validated, is answered with
AAAA records made from the name's A records under the NAT64 prefix (core/dns64.py decides and
builds; daemon/road.py learns the prefix and sets `Resolver.dns64` while one is in use).

The A question is asked through the normal path, the cache first, so it is validated like any
other. The synthesized reply is not cached: the AAAA NODATA and the A answer are, each under its
own key, and a later AAAA question is synthesized again from them (no upstream asked).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import struct
from ipaddress import IPv6Network
from typing import TYPE_CHECKING, Any

import dns.exception
import dns.name

from stubby_py.core import dns64, response

if TYPE_CHECKING:
    from stubby_py.core.wire import ClientQuery
    from stubby_py.daemon.context import QueryContext
    from stubby_py.daemon.query_path import Resolver

log = logging.getLogger(__name__)

TYPE_A = 1
#: the source the query log and explain show for a synthesized answer
SOURCE = "synthesized-dns64"


def a_question(query: ClientQuery) -> ClientQuery:
    """The A question for the name of an AAAA query, with its DO bit (and never CD)."""
    qname = query.qname_wire
    tail = struct.pack("!HH", TYPE_A, query.qclass)
    return dataclasses.replace(
        query, id=0, flags=query.flags & 0x0100, question=qname + tail, qtype=TYPE_A,
        key=qname.lower() + tail + bytes((query.do << 1,)),
    )  # fmt: skip


class Dns64:
    """Synthesis with one NAT64 prefix."""

    def __init__(self, resolver: Resolver, prefix: IPv6Network, source: str) -> None:
        self._resolver = resolver
        self._loop = asyncio.get_running_loop()
        self.prefix = prefix
        #: where the prefix came from: "configured", "ra-pref64" or "rfc7050" (daemon/road.py)
        self.source = source
        self._tasks: set[asyncio.Task[None]] = set()

    def takes(self, context: QueryContext, aaaa_reply: bytes) -> bool:
        """Take an AAAA question whose (validated) reply is NODATA: True when it will be
        answered from here (synthesized, or with that reply if nothing can be)."""
        query = context.query
        try:
            qname = dns.name.from_wire(query.question, 0)[0]
        except dns.exception.DNSException:
            return False
        if not dns64.wants_synthesis(query.flags, qname, aaaa_reply):
            return False
        task = self._loop.create_task(self._answer(context, aaaa_reply))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    async def _answer(self, context: QueryContext, aaaa_reply: bytes) -> None:
        query = context.query
        made = None
        try:
            a_reply = await self._resolver.ask(a_question(query), context.trace)
            if a_reply is not None:
                made = dns64.synthesize(query.question, aaaa_reply, a_reply, self.prefix)
        except Exception:  # the client is answered whatever happens
            log.exception("dns64: internal error while synthesizing")
        if made is None:
            context.answer(response.client_reply(aaaa_reply, query, limit=context.limit))
            return
        self._resolver.counters["dns64_synthesized"] += 1
        context.source = SOURCE
        context.answer(response.client_reply(made, query, limit=context.limit, authentic=False))

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def summary(self) -> dict[str, Any]:
        return {"prefix": str(self.prefix), "source": self.source}
