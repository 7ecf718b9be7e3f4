"""DNS over TLS for clients (RFC 7858): the TCP listener of listener.py over TLS, so every
connection rule it has (pipelining, out-of-order answers, back-pressure, idle timeout, caps)
holds for DoT too; replies padded (RFC 8467) when the query asked for it."""

from __future__ import annotations

from stubby_py.listener import TCPConnections, TCPListener
from stubby_py.listeners.padding import asks_padding, pad_reply
from stubby_py.resolver import Respond

ALPN = "dot"


class DoTListener(TCPListener):
    def __init__(self, shared: TCPConnections, padding_block: int) -> None:
        super().__init__(shared)
        self._padding_block = padding_block

    def _handle(self, message: bytes, respond: Respond) -> bool:
        if self._padding_block and asks_padding(message):
            block = self._padding_block

            def padded(reply: bytes) -> None:
                respond(pad_reply(reply, block))

            return super()._handle(message, padded)
        return super()._handle(message, respond)
