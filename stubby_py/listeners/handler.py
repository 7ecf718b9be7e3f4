"""What every listener hands its queries to, seen from the client side.

The daemon's query path implements this; listeners depend on the shape only, so they never
import the daemon that drives them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from stubby_py.core.access import AccessList

#: how a listener answers its client: called once, with the reply's bytes
Respond = Callable[[bytes], None]


class QueryHandler(Protocol):
    #: checked before a connection or QUIC packet is taken on, ahead of any cap or handshake
    @property
    def acl(self) -> AccessList: ...

    def handle(self, data: bytes, client_ip: str, respond: Respond, *, udp: bool) -> bool:
        """Take one query; True when an answer will come through `respond`, False when it is
        dropped (so a stream listener frees its pipelining slot at once)."""
        ...

    def handle_denied(self, data: bytes, client_ip: str, respond: Respond) -> bool:
        """A message from a client the listener's own `allow` leaves out: turned away as the
        global access list turns away its outsiders (True when a refusal will come)."""
        ...
