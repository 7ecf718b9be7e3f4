"""DNS over TLS for clients (RFC 7858): the TCP listener of listener.py over TLS, so every
connection rule it has (pipelining, out-of-order answers, back-pressure, idle timeout, caps)
holds for DoT too; replies padded (RFC 8467) when the query asked for it, and carrying
edns-tcp-keepalive (RFC 7828) when the query did."""

from __future__ import annotations

from stubby_py.core.edns import OPTION_KEEPALIVE, OPTION_PADDING
from stubby_py.listeners.handler import Respond
from stubby_py.listeners.padding import keepalive_option, option_codes, with_options
from stubby_py.listeners.plain import TCPConnections, TCPListener

ALPN = "dot"


class DoTListener(TCPListener):
    def __init__(self, shared: TCPConnections, padding_block: int) -> None:
        super().__init__(shared)
        self._padding_block = padding_block

    def _handle(self, message: bytes, respond: Respond) -> bool:
        has_additional = message[10:12] not in (b"", b"\0\0")  # ARCOUNT: an OPT record?
        codes = option_codes(message) if has_additional else set()
        block = self._padding_block if OPTION_PADDING in codes else 0
        keepalive = OPTION_KEEPALIVE in codes
        if not block and not keepalive:
            return super()._handle(message, respond)
        extra = keepalive_option(self._shared.idle_timeout) if keepalive else b""

        def rewritten(reply: bytes) -> None:
            respond(with_options(reply, extra, block))

        return super()._handle(message, rewritten)
