"""DNS64 on the query path: an AAAA question answered NODATA, once validated, is answered with
AAAA records made from the name's A records under the NAT64 prefix (core/dns64.py decides and
builds; daemon/road.py learns the prefix and sets `Resolver.dns64` while one is in use).

The A question is asked through the normal path, the cache first, so it is validated like any
other; when it fails, the client gets SERVFAIL (RFC 6147 §5.1.6: the error is the answer's
basis), not a NODATA it would cache and that would hide the name. The synthesized reply is not
cached: the AAAA NODATA and the A answer are, each under its own key, and a later AAAA question
is synthesized again from them (no upstream asked). An AAAA answer with some records in the
exclusion set (::ffff:0:0/96, `dns64_exclude`) is passed on without them.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import struct
from ipaddress import IPv4Network, IPv6Network, ip_network
from typing import TYPE_CHECKING, Any

import dns.exception
import dns.name
from dns.edns import EDECode

from stubby_py.core import answers, dns64, response
from stubby_py.core.errors import UpstreamError

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


class SynthesisError(UpstreamError):
    """The A records an AAAA answer was to be made from could not be had."""

    ede = EDECode.OTHER
    kind = "dns64-no-a"


class Dns64:
    """Synthesis with one NAT64 prefix."""

    def __init__(self, resolver: Resolver, prefix: IPv6Network, source: str) -> None:
        self._resolver = resolver
        self._loop = asyncio.get_running_loop()
        self.prefix = prefix
        #: where the prefix came from: "configured", "ra-pref64" or "rfc7050" (daemon/road.py)
        self.source = source
        self._tasks: set[asyncio.Task[None]] = set()
        self._exclude_texts: Any = None
        self._excluded_a: list[IPv4Network] = []
        self._excluded_aaaa: list[IPv6Network] = list(dns64.EXCLUDED_AAAA)

    def _exclusions(self) -> tuple[list[IPv4Network], list[IPv6Network]]:
        """The configured `dns64_exclude` (read again after a reload) with the built-in ones."""
        texts = self._resolver.config.road.dns64_exclude
        if texts is not self._exclude_texts:
            networks = [ip_network(text) for text in texts]
            self._excluded_a = [n for n in networks if isinstance(n, IPv4Network)]
            self._excluded_aaaa = [*dns64.EXCLUDED_AAAA]
            self._excluded_aaaa += [n for n in networks if isinstance(n, IPv6Network)]
            self._exclude_texts = texts
        return self._excluded_a, self._excluded_aaaa

    def takes(self, context: QueryContext, aaaa_reply: bytes) -> bool:
        """Take an AAAA question whose (validated) reply has no usable AAAA record: True when it
        will be answered from here (synthesized, or with that reply if nothing can be; or,
        with some records excluded, without them)."""
        query = context.query
        try:
            qname = dns.name.from_wire(query.question, 0)[0]
        except dns.exception.DNSException:
            return False
        _excluded_a, excluded_aaaa = self._exclusions()
        plan = dns64.plan(query.flags, qname, aaaa_reply, query.qclass, excluded_aaaa)
        if plan is dns64.Plan.PASS:
            return False
        if plan is dns64.Plan.FILTER:
            kept = dns64.without_excluded(query.question, aaaa_reply, excluded_aaaa)
            if kept is None:
                return False
            context.answer(response.client_reply(kept, query, limit=context.limit, authentic=False))
            return True
        task = self._loop.create_task(self._answer(context, aaaa_reply))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    async def _answer(self, context: QueryContext, aaaa_reply: bytes) -> None:
        query = context.query
        made = None
        try:
            a_reply = await self._resolver.ask(a_question(query), context.trace)
            if a_reply is None:
                error = SynthesisError("DNS64: the A records to synthesize from could not be had")
                context.answer(answers.error_answer(query, error, context.limit))
                return
            excluded_a, excluded_aaaa = self._exclusions()
            made = dns64.synthesize(
                query.question, aaaa_reply, a_reply, self.prefix, excluded_a, excluded_aaaa
            )
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
