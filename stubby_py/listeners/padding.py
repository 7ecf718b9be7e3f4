"""RFC 8467 §4.1 for our own replies: a query that carried an EDNS Padding option over an
encrypted listener gets its reply padded to a multiple of the block size (468 octets by default)."""

from __future__ import annotations

from stubby_py import wire
from stubby_py.edns import OPTION_PADDING, padding_option


def asks_padding(query: bytes) -> bool:
    """Whether the query's OPT record holds a Padding option."""
    try:
        parsed = wire.parse_query(query)
    except (wire.WireError, IndexError):
        return False
    if not parsed.has_edns:
        return False
    return any(code == OPTION_PADDING for code, _ in _options(query, len(query)))


def _options(data: bytes, opt_end: int) -> list[tuple[int, bytes]]:
    question_end = wire.question_end(data)
    return wire.opt_options(data, (question_end, opt_end))


def pad_reply(reply: bytes, block: int) -> bytes:
    """The reply with its OPT record's Padding option (re)made so that the whole message is a
    multiple of `block`; unchanged without an OPT record or when it would pass 65535 octets."""
    if block <= 1:
        return reply
    try:
        layout = wire.scan_reply(reply)
    except wire.WireError:
        return reply
    if layout.opt_span is None:
        return reply
    start, end = layout.opt_span
    kept = b"".join(
        wire.U16.pack(code) + wire.U16.pack(len(value)) + value
        for code, value in wire.opt_options(reply, layout.opt_span)
        if code != OPTION_PADDING
    )
    fixed = reply[start : start + 9]  # owner, type, class, ttl: everything up to RDLENGTH
    unpadded = start + 11 + len(kept) + (len(reply) - end)
    options = kept + padding_option(unpadded, block)
    padded = reply[:start] + fixed + wire.U16.pack(len(options)) + options + reply[end:]
    if len(padded) > wire.MAX_MESSAGE_LEN:
        return reply
    return padded
