"""EDNS(0) records we write: the padded OPT of every upstream query and the OPT of every reply.

RFC 6891 (EDNS(0)), RFC 7830 + RFC 8467 §4.1 (padding to a block length), RFC 7828 (keepalive),
RFC 8914 (Extended DNS Errors), RFC 7871 §11.1 (client subnet never forwarded).
A client's own EDNS options are never copied upstream: we build a fresh OPT for every query.
"""

from __future__ import annotations

import struct

from stubby_py.core.wire import CD, EDNS_DO, HEADER, OPT_FIXED, RD, TYPE_OPT, ClientQuery

#: the payload size we advertise and ask for (DNS Flag Day 2020)
OUR_UDP_PAYLOAD = 1232
OPTION_KEEPALIVE = 11
OPTION_PADDING = 12
OPTION_EDE = 15
_OPTION_HEADER = struct.Struct("!HH")
_KEEPALIVE = _OPTION_HEADER.pack(OPTION_KEEPALIVE, 0)
_OPT_LEN = 11


def opt_record(payload: int, ext_rcode_high: int, do: bool, options: bytes) -> bytes:
    flags = EDNS_DO if do else 0
    return (
        b"\x00"
        + OPT_FIXED.pack(TYPE_OPT, payload, ext_rcode_high, 0, flags, len(options))
        + options
    )


def padding_option(unpadded_len: int, block: int) -> bytes:
    """RFC 8467 §4.1: pad the whole message, option header included, to a multiple of block."""
    if block <= 1:
        return b""
    pad = -(unpadded_len + 4) % block
    return _OPTION_HEADER.pack(OPTION_PADDING, pad) + bytes(pad)


def upstream_query(
    query: ClientQuery, *, pad_block: int, do: bool, keepalive: bool = False, cd: bool = False
) -> bytes:
    """The query we send upstream for a client's query, with message ID 0.

    RD always (we are a stub); CD as the client asked, or always when we validate (cd=True,
    RFC 6840 §5.9); our own OPT with DO as required, keepalive on stream transports and padding
    for encrypted ones (pad_block 0 = none).
    """
    header = HEADER.pack(0, RD | (CD if cd else query.flags & CD), 1, 0, 0, 1)
    options = _KEEPALIVE if keepalive else b""
    unpadded = len(header) + len(query.question) + _OPT_LEN + len(options)
    options += padding_option(unpadded, pad_block)
    return header + query.question + opt_record(OUR_UDP_PAYLOAD, 0, do, options)


def probe_query(pad_block: int) -> bytes:
    """The root's NS with RD, ID 0, padded like any upstream query: the question every resolver
    has cached, asked to learn whether a silent connection is still there (transports/dot.py)."""
    question = b"\x00" + struct.pack("!HH", 2, 1)  # the root, NS, IN
    header = HEADER.pack(0, RD, 1, 0, 0, 1)
    options = _KEEPALIVE
    options += padding_option(len(header) + len(question) + _OPT_LEN + len(options), pad_block)
    return header + question + opt_record(OUR_UDP_PAYLOAD, 0, False, options)


def ede_option(code: int, text: str = "") -> bytes:
    data = struct.pack("!H", code) + text.encode("utf-8")
    return _OPTION_HEADER.pack(OPTION_EDE, len(data)) + data


def client_opt(query: ClientQuery, ede: tuple[int, str] | None = None, rcode: int = 0) -> bytes:
    """Our OPT toward a client: 1232 advertised, DO echoed, an EDE if given, high RCODE bits."""
    options = ede_option(*ede) if ede is not None else b""
    return opt_record(OUR_UDP_PAYLOAD, rcode >> 4, query.do, options)


def keepalive_timeout(options: list[tuple[int, bytes]]) -> float | None:
    """RFC 7828 §3.1: the server's idle timeout, in seconds, if its reply offered one."""
    for code, data in options:
        if code == OPTION_KEEPALIVE and len(data) == 2:
            tenths: int = struct.unpack("!H", data)[0]
            return tenths / 10.0
    return None
