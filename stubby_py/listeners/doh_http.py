"""What a DoH request means over any HTTP version (RFC 8484), sans-IO: the h2 listener (doh.py)
and the h3 one (doh3.py) feed it a request's headers, body and end, and send what it says.

One path (default /dns-query): GET with `?dns=` (base64url, no padding) or POST with an
`application/dns-message` body. Errors as HTTP statuses: 404 another path, 405 another method,
415 a POST of another content type, 413 a message over 65535 octets, 431 a header list over
MAX_HEADER_LIST octets, 400 a request without a DNS query in it, 503 while shutting down.
Answers carry `Cache-Control: max-age=` the smallest TTL in them (RFC 8484 §5.1); the message ID
is the client's (0, usually), echoed as it came.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import parse_qs

from stubby_py.core import wire

CONTENT_TYPE = b"application/dns-message"
MAX_HEADER_LIST = 16 * 1024

Headers = list[tuple[bytes, bytes]]


@dataclass(frozen=True, slots=True)
class HttpError:
    """A request answered with an error status: its headers and body."""

    status: int
    text: bytes
    extra: tuple[tuple[bytes, bytes], ...] = ()

    def response(self) -> tuple[Headers, bytes]:
        body = self.text + b"\n"
        headers = [
            (b":status", str(self.status).encode()),
            (b"content-type", b"text/plain"),
            (b"content-length", str(len(body)).encode()),
            *self.extra,
        ]
        return headers, body


TOO_BIG = HttpError(413, b"a DNS message is at most 65535 octets")
SHUTTING_DOWN = HttpError(503, b"shutting down")


@dataclass(slots=True)
class DoHRequest:
    """One request: fed its headers, then its body, then its end; each step may end it with an
    HttpError (then `done` is set and the rest of the request is not wanted)."""

    path: bytes
    started: float
    method: bytes = b""
    body: bytearray = field(default_factory=bytearray)
    #: the query from a GET's `dns=` parameter
    query: bytes | None = None
    #: answered with an error, or its query taken: no longer subject to a request timeout
    done: bool = False

    def headers(self, headers: Iterable[tuple[bytes, bytes]]) -> HttpError | None:
        fields: dict[bytes, bytes] = {}
        size = 0
        for name, value in headers:
            size += len(name) + len(value) + 32  # RFC 9113 §6.5.2's accounting
            fields.setdefault(bytes(name).lower(), bytes(value))
        if size > MAX_HEADER_LIST:
            return self._end(HttpError(431, b"request header fields too large"))
        path, _, query_string = fields.get(b":path", b"").partition(b"?")
        method = self.method = fields.get(b":method", b"")
        if path != self.path:
            return self._end(HttpError(404, b"not found: DNS queries go to " + self.path))
        if method == b"GET":
            return self._end(self._get(query_string))
        if method == b"POST":
            return self._end(_post(fields))
        return self._end(HttpError(405, b"expected GET or POST", ((b"allow", b"GET, POST"),)))

    def _get(self, query_string: bytes) -> HttpError | None:
        values = parse_qs(query_string.decode("latin-1")).get("dns")
        if not values:
            return HttpError(400, b"expected ?dns=BASE64URL")
        try:
            text = values[0]
            self.query = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        except (binascii.Error, ValueError):
            return HttpError(400, b"the dns parameter is not base64url")
        if len(self.query) > wire.MAX_MESSAGE_LEN:
            return TOO_BIG
        return None

    def data(self, chunk: bytes) -> HttpError | None:
        if self.method != b"POST":
            return self._end(HttpError(400, b"a GET has no body"))
        self.body += chunk
        if len(self.body) > wire.MAX_MESSAGE_LEN:
            return self._end(TOO_BIG)
        return None

    def end(self) -> bytes | HttpError:
        """The whole request came: its DNS query, or the error it gets."""
        self.done = True
        query = self.query if self.method == b"GET" else bytes(self.body)
        if query is None or len(query) < wire.HEADER_LEN or query[2] & 0x80:
            return HttpError(400, b"expected a DNS query")
        return query

    def overdue(self, now: float, timeout: float) -> bool:
        """Still coming `timeout` seconds after its headers (a slowloris client)."""
        return not self.done and now - self.started > timeout

    def _end(self, error: HttpError | None) -> HttpError | None:
        if error is not None:
            self.done = True
        return error


def _post(fields: dict[bytes, bytes]) -> HttpError | None:
    content_type = fields.get(b"content-type", b"").split(b";")[0].strip().lower()
    if content_type != CONTENT_TYPE:
        return HttpError(415, b"expected Content-Type: application/dns-message")
    length = fields.get(b"content-length")
    if length is not None and length.isdigit() and int(length) > wire.MAX_MESSAGE_LEN:
        return TOO_BIG
    return None


def answer_headers(reply: bytes, extra: Iterable[tuple[bytes, bytes]] = ()) -> Headers:
    """A 200 for `reply`, cacheable for as long as its smallest TTL."""
    try:
        min_ttl = wire.scan_reply(reply).min_ttl
    except wire.WireError:
        min_ttl = None
    return [
        (b":status", b"200"),
        (b"content-type", CONTENT_TYPE),
        (b"content-length", str(len(reply)).encode()),
        (b"cache-control", b"max-age=%d" % (min_ttl or 0)),
        *extra,
    ]
