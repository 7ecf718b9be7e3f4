"""EDNS options in our replies on encrypted listeners.

RFC 8467 §4.1: a query that carried an EDNS Padding option gets its reply padded to a multiple
of the block size (468 octets by default). RFC 7828: a DoT query that carried edns-tcp-keepalive
gets one back, with the idle timeout the connection has."""

from __future__ import annotations

from stubby_py.core import wire
from stubby_py.core.edns import OPTION_KEEPALIVE, OPTION_PADDING, padding_option


def option_codes(query: bytes) -> set[int]:
    """The EDNS option codes in the query's OPT record (none without one)."""
    try:
        parsed = wire.parse_query(query)
    except (wire.WireError, IndexError):
        return set()
    if not parsed.has_edns:
        return set()
    return {code for code, _ in _options(query, len(query))}


def asks_padding(query: bytes) -> bool:
    """Whether the query's OPT record holds a Padding option."""
    return OPTION_PADDING in option_codes(query)


def keepalive_option(idle_timeout: float) -> bytes:
    """edns-tcp-keepalive with TIMEOUT in units of 100 ms (RFC 7828 §3.1)."""
    units = max(0, min(0xFFFF, round(idle_timeout * 10)))
    return wire.U16.pack(OPTION_KEEPALIVE) + wire.U16.pack(2) + wire.U16.pack(units)


def _options(data: bytes, opt_end: int) -> list[tuple[int, bytes]]:
    question_end = wire.question_end(data)
    return wire.opt_options(data, (question_end, opt_end))


def pad_reply(reply: bytes, block: int) -> bytes:
    """The reply with its OPT record's Padding option (re)made so that the whole message is a
    multiple of `block`; unchanged without an OPT record or when it would pass 65535 octets."""
    if block <= 1:
        return reply
    return with_options(reply, b"", block)


def with_options(reply: bytes, extra: bytes, block: int) -> bytes:
    """The reply with `extra` options (whole, with their headers) added to its OPT record, in
    place of any of the same codes, then padded to `block` (0: not padded)."""
    try:
        layout = wire.scan_reply(reply)
    except wire.WireError:
        return reply
    if layout.opt_span is None:
        return reply
    start, end = layout.opt_span
    replaced = {OPTION_PADDING}
    pos = 0
    while pos + 4 <= len(extra):
        replaced.add(wire.U16.unpack_from(extra, pos)[0])
        pos += 4 + wire.U16.unpack_from(extra, pos + 2)[0]
    kept = (
        b"".join(
            wire.U16.pack(code) + wire.U16.pack(len(value)) + value
            for code, value in wire.opt_options(reply, layout.opt_span)
            if code not in replaced
        )
        + extra
    )
    fixed = reply[start : start + 9]  # owner, type, class, ttl: everything up to RDLENGTH
    unpadded = start + 11 + len(kept) + (len(reply) - end)
    options = kept + (padding_option(unpadded, block) if block > 1 else b"")
    padded = reply[:start] + fixed + wire.U16.pack(len(options)) + options + reply[end:]
    if len(padded) > wire.MAX_MESSAGE_LEN:
        return reply
    return padded
