"""The named ways a test server answers a query: correctly (NONE) or one misbehaviour."""

from __future__ import annotations

import enum


class Misbehaviour(enum.StrEnum):
    """What a server does with a query; the value is the name tests are reported under."""

    NONE = "answer"  # a correct answer
    STALL = "stall"  # never answer
    CLOSE = "close"  # drop the whole connection (stream transports, HTTP, QUIC)
    RESET = "reset"  # reset the query's stream (HTTP/2, HTTP/3, DoQ)
    SERVFAIL = "servfail"  # an honest SERVFAIL with no answer
    WRONG_ID = "wrong_id"  # the answer with message ID + 1
    WRONG_QUESTION = "wrong_question"  # the answer to another question
    GARBAGE = "garbage"  # random octets after the query's ID
    REVERSE = "reverse"  # hold each answer back and send pairs in reverse order (TCP, DoT)
    SHORT_DNS = "short_dns"  # a DNS message cut in half, honestly framed
    OVERSIZED = "oversized"  # a body larger than any DNS message (HTTP, DoQ)
    HTTP500 = "http500"  # HTTP status 500 (HTTP only)
    CONTENT_TYPE = "content_type"  # text/plain instead of application/dns-message (HTTP only)
    TRUNCATED = "truncated"  # body shorter than its content-length (HTTP only)
    GOAWAY = "goaway"  # GOAWAY before this stream, then close (HTTP/2; HTTP/3 closes)
    SHORT_FRAME = "short_frame"  # a length prefix 10 octets longer than the message (DoQ only)
    TWO_MESSAGES = "two_messages"  # the framed answer twice on one stream (DoQ only)
    EXCESSIVE_LOAD = "excessive_load"  # reset the stream with DOQ_EXCESSIVE_LOAD (DoQ only)


#: misbehaviours that send no reply to the query at all
SILENT = frozenset(
    {
        Misbehaviour.STALL,
        Misbehaviour.CLOSE,
        Misbehaviour.RESET,
        Misbehaviour.GOAWAY,
        Misbehaviour.EXCESSIVE_LOAD,
    }
)
