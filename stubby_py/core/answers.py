"""Every outcome of a query as the client's reply, with its rcode and Extended DNS Error
(RFC 8914). The one place that turns errors into answers; the query path picks the outcome.

    outcome                          rcode                        EDE
    answer                           as it came                   the note kept with it (why
                                                                  it is insecure), else none
    client error (not admitted)      FORMERR, NOTIMP, BADVERS,    18 Prohibited for REFUSED
                                     REFUSED
    upstream error                   SERVFAIL                     22 No Reachable Authority,
                                                                  23 Network Error, ...: text
                                                                  names what failed
    DNSSEC failure                   SERVFAIL                     6-12, as the validator chose
    held failure (RFC 9520)          SERVFAIL (or the upstream's  the held one's, else 13
                                     SERVFAIL replayed)           Cached Error
    stale answer (RFC 8767)          as cached                    3 Stale Answer, 19 Stale
                                                                  NXDOMAIN Answer
    internal error                   SERVFAIL                     0 Other
"""

from __future__ import annotations

from dns.edns import EDECode
from dns.rcode import Rcode

from stubby_py.core import response, wire
from stubby_py.core.cache import FailureEntry
from stubby_py.core.errors import ClientError, InternalError, UpstreamError


def rejection(data: bytes, query: wire.ClientQuery | None, error: type[ClientError]) -> bytes:
    """A request we will not forward: FORMERR, NOTIMP, REFUSED or BADVERS; with the question
    when the message reads as a query, a bare header when not."""
    if query is None:
        flags = wire.U16.unpack_from(data, 2)[0]
        return wire.header_only_reply(None, wire.header_id(data), flags, error.rcode)
    ede = (error.ede, "") if error.ede is not None else None
    return response.error_reply(query, error.rcode, ede)


def error_answer(
    query: wire.ClientQuery, error: UpstreamError | InternalError, limit: int | None
) -> bytes:
    """An upstream failure (DNSSEC failures included) or an internal error, with its own rcode
    and EDE, the error's text as the EDE's."""
    code = error.ede if error.ede is not None else EDECode.OTHER
    text = str(error.args[0]) if error.args else error.kind
    return _error_reply(query, error.rcode, (code, text), limit)


def stale_answer(query: wire.ClientQuery, stale: bytes, limit: int | None) -> bytes:
    """RFC 8914 §4.4 and §4.20: EDE 3 Stale Answer, or 19 for a stale NXDOMAIN."""
    if response.rcode_of(stale) == Rcode.NXDOMAIN:
        ede = (EDECode.STALE_NXDOMAIN_ANSWER, "")
    else:
        ede = (EDECode.STALE_ANSWER, "")
    return response.client_reply(stale, query, limit=limit, ede=ede)


def held_failure_answer(
    query: wire.ClientQuery, held: FailureEntry, now: float, limit: int | None
) -> bytes:
    """RFC 9520 §3: the upstream's SERVFAIL as it came, the DNSSEC verdict's EDE, or EDE 13
    Cached Error saying what failed and when it is asked again."""
    if held.reply is not None:
        return response.client_reply(held.reply, query, limit=limit)
    if held.ede is not None:
        return _error_reply(query, Rcode.SERVFAIL, held.ede, limit)
    text = f"cached failure ({held.reason}), retry in {held.until - now:.0f} s"
    return _error_reply(query, Rcode.SERVFAIL, (EDECode.CACHED_ERROR, text), limit)


def _error_reply(
    query: wire.ClientQuery, rcode: int, ede: tuple[int, str], limit: int | None
) -> bytes:
    """An error reply whose Extended DNS Error text (which names every upstream that failed)
    is cut to fit the client's UDP size rather than have the reply truncated."""
    reply = response.error_reply(query, rcode, ede)
    if limit is None or len(reply) <= limit:
        return reply
    code, text = ede
    room = len(text.encode()) - (len(reply) - limit) - len("…".encode())
    cut = text.encode()[: max(0, room)].decode(errors="ignore")
    return response.error_reply(query, rcode, (code, cut + "…" if cut else ""))
