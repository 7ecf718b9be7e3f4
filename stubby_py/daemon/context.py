"""One query on its way through the query path: built once per query, passed down.

It carries the query, how to answer the client, the client, where the answer came from, when the
query arrived and, for `stubby-py explain`, a trace. Whoever watches answers (the query log,
explain) is its observer, told once the client is answered.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from stubby_py.listeners.handler import Respond

if TYPE_CHECKING:
    from stubby_py.core.wire import ClientQuery
    from stubby_py.daemon.explain import Trace



class Observer(Protocol):
    """Told of every answered query (the query log, explain)."""

    def answered(self, context: QueryContext, reply: bytes) -> None: ...


class QueryContext:
    """One admitted query on its way: built once in `handle`, passed down the path."""

    __slots__ = (
        "client_ip", "limit", "observer", "query", "received", "respond", "source", "trace",
    )  # fmt: skip

    def __init__(
        self,
        query: ClientQuery,
        respond: Respond,
        client_ip: str,
        limit: int | None,
        received: float,
        observer: Observer | None,
        trace: Trace | None = None,
    ) -> None:
        self.query = query
        self.respond = respond
        self.client_ip = client_ip
        #: the largest reply the client takes over UDP; None over a stream
        self.limit = limit
        #: loop time at arrival
        self.received = received
        self.observer = observer
        #: `stubby-py explain`: what the path looked at and asked on the way
        self.trace = trace
        #: where the answer came from ("cache", "upstream", "synthesized", "joined", "stale",
        #: "held-failure", "local", "any-minimal")
        self.source = "upstream"

    def answer(self, reply: bytes) -> None:
        self.respond(reply)
        if self.observer is not None:
            self.observer.answered(self, reply)
