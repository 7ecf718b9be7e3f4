"""Prometheus metrics: the figures of `stubby-py stats` in the text exposition format (0.0.4),
served at GET /metrics by a small asyncio HTTP/1.x handler. Off by default (`metrics_listen`).

One request per connection; anything but GET or HEAD of /metrics (or /) is answered 404 or 405.
No dependency: the format is a few lines of text.

The endpoint must never cost DNS its file descriptors or its memory, whoever connects: a source
outside `metrics_allow` (default loopback) and a connection over `metrics_max_connections` are
closed at accept without a byte; the request head is at most MAX_HEAD octets and must arrive
within HEAD_SECONDS of the connection, the answer must be taken within WRITE_SECONDS, or the
connection is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from stubby_py.core.access import AccessList
from stubby_py.core.logthrottle import LogThrottle

log = logging.getLogger(__name__)

MAX_HEAD = 8192
#: the request head must arrive within this many seconds of the connection
HEAD_SECONDS = 5.0
#: the answer must be taken within this many seconds
WRITE_SECONDS = 10.0
LOOPBACK = ("127.0.0.0/8", "::1/128")
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: resolver counters exported as stubby_py_<name>_total, with their help text
COUNTER_HELP = {
    "queries": "Client queries received (UDP and TCP)",
    "answered": "Queries answered from an upstream",
    "cache_hits": "Queries answered from the cache",
    "cache_misses": "Queries that were not in the cache",
    "joined": "Queries joined to an identical one already in flight",
    "local": "Queries answered locally (localhost, private reverse zones, home.arpa)",
    "stale": "Queries answered stale because every upstream failed (RFC 8767)",
    "cached_failures": "Queries answered SERVFAIL from a held failure (RFC 9520)",
    "prefetches": "Answers refreshed in the background before they expired",
    "servfail": "Queries answered SERVFAIL",
    "refused": "Queries answered REFUSED (outside the allow list, or rate limited with refuse)",
    "rate_limited": "Queries over a client's rate limit",
    "dropped": "Queries dropped without an answer",
    "formerr": "Queries answered FORMERR",
    "notimp": "Queries answered NOTIMP",
    "network_changes": "Network changes and resumes that renewed upstream connections",
    "dnssec_secure": "Upstream answers validated secure (AD set for clients that ask)",
    "dnssec_insecure": "Upstream answers validated insecure (unsigned zones)",
    "dnssec_bogus": "Upstream answers that failed validation (SERVFAIL with an EDE)",
    "dnssec_indeterminate": "Answers whose chain of trust could not be fetched (SERVFAIL)",
    "dnssec_unchecked": "Answers passed through unchecked because the client set CD",
    "dnssec_retries": "Bogus answers asked again of another upstream",
    "dnssec_synthesized": "NXDOMAIN/NODATA answers proven from held NSEC/NSEC3 (RFC 8198)",
    "portal_answers": "Names answered through the network resolver (captive portal check names,"
    " or the user's window)",
    "portal_blocked": "Names answered SERVFAIL because a captive portal is suspected",
    "dns64_synthesized": "AAAA answers synthesized from A records (DNS64, RFC 6147)",
}


def _escape(value: object) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(labels: Mapping[str, object]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items()) + "}"


def _number(value: float) -> str:
    return repr(float(value)) if isinstance(value, float) else str(value)


class _Family:
    def __init__(self, name: str, kind: str, help_text: str) -> None:
        self.name = name
        self.kind = kind
        self.help = help_text
        self.samples: list[tuple[dict[str, object], float]] = []

    def add(self, value: float | None, **labels: object) -> None:
        if value is not None:
            self.samples.append((labels, value))

    def lines(self) -> Iterator[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} {self.kind}"
        for labels, value in self.samples:
            yield f"{self.name}{_labels(labels)} {_number(value)}"


class _HistogramFamily(_Family):
    """A histogram (latency.Histogram.as_dict, in ms) exported in seconds: cumulative
    `_bucket{le=...}` lines ending in +Inf, `_sum` and `_count`."""

    def __init__(self, name: str, help_text: str) -> None:
        super().__init__(name, "histogram", help_text)
        self.histograms: list[tuple[dict[str, object], Mapping[str, Any]]] = []

    def add_histogram(self, histogram: Mapping[str, Any] | None, **labels: object) -> None:
        if histogram is not None:
            self.histograms.append((labels, histogram))

    def lines(self) -> Iterator[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} {self.kind}"
        for labels, histogram in self.histograms:
            cumulative = 0
            bounds = [f"{bound / 1000:g}" for bound in histogram["bounds_ms"]] + ["+Inf"]
            for le, count in zip(bounds, histogram["counts"], strict=True):
                cumulative += count
                yield f"{self.name}_bucket{_labels({**labels, 'le': le})} {cumulative}"
            yield f"{self.name}_sum{_labels(labels)} {_number(histogram['sum_ms'] / 1000)}"
            yield f"{self.name}_count{_labels(labels)} {histogram['count']}"


def render(stats: Mapping[str, Any]) -> str:
    """The exposition text for one `stats.collect` mapping."""
    families: list[_Family] = []

    def family(name: str, kind: str, help_text: str) -> _Family:
        if kind == "histogram":
            families.append(_HistogramFamily(f"stubby_py_{name}", help_text))
        else:
            families.append(_Family(f"stubby_py_{name}", kind, help_text))
        return families[-1]

    family("uptime_seconds", "gauge", "Seconds since the daemon started").add(
        stats["uptime_seconds"]
    )
    for name, value in sorted(stats["counters"].items()):
        help_text = COUNTER_HELP.get(name, f"Resolver counter {name}")
        family(f"{name}_total", "counter", help_text).add(value)
    _cache(stats["cache"], family)
    _tcp(stats["tcp"], family)
    if "doq" in stats:
        _doq(stats["doq"], family)
    if "doh3" in stats:
        _doh3(stats["doh3"], family)
    _upstreams(stats["upstreams"], family)
    if "portal" in stats:
        portal = stats["portal"]
        family(
            "portal_suspected", "gauge", "1 while a captive portal is suspected (check names"
            " resolve through the network resolver)",
        ).add(1 if portal["suspected"] else 0)  # fmt: skip
        family(
            "portal_window_open", "gauge", "1 while the user's window sends every name to the"
            " network resolver",
        ).add(1 if portal["window_open"] else 0)  # fmt: skip
        if portal.get("dns64_prefix"):
            family(
                "dns64_prefix_info", "gauge", "1, labelled with the NAT64 prefix DNS64 uses and"
                " where it came from (configured, ra-pref64, rfc7050)",
            ).add(1, prefix=portal["dns64_prefix"], source=portal.get("dns64_source") or "")
    return "".join(line + "\n" for f in families for line in f.lines())


Factory = Callable[[str, str, str], _Family]


def _cache(cache: Mapping[str, Any], family: Factory) -> None:
    family("cache_entries", "gauge", "Answers in the cache").add(cache["entries"])
    family("cache_bytes", "gauge", "Memory the cached answers take, bytes").add(cache["bytes"])
    family("cache_evictions_total", "counter", "Answers evicted from a full cache").add(
        cache["evictions"]
    )
    family("cache_hit_ratio", "gauge", "Cache hits / (hits + misses) since start").add(
        cache["hit_ratio"]
    )


def _doq(doq: Mapping[str, int], family: Factory) -> None:
    family("doq_connections", "gauge", "Client DoQ connections open").add(doq["open"])
    family("doq_queries_total", "counter", "Queries taken on DoQ listeners").add(doq["queries"])
    rejected = family(
        "doq_rejected_total", "counter", "New DoQ connections dropped, over a cap"
    )
    rejected.add(doq["rejected_total_cap"], cap="total")
    rejected.add(doq["rejected_per_client_cap"], cap="per_client")
    family(
        "doq_denied_datagrams_total", "counter", "DoQ datagrams from outside allow, dropped"
    ).add(doq["denied_datagrams"])
    family(
        "doq_protocol_errors_total", "counter", "DoQ connections closed with DOQ_PROTOCOL_ERROR"
    ).add(doq["protocol_errors"])


def _doh3(doh3: Mapping[str, int], family: Factory) -> None:
    family("doh3_connections", "gauge", "Client DoH over HTTP/3 connections open").add(
        doh3["open"]
    )
    family("doh3_queries_total", "counter", "Queries taken on DoH over HTTP/3 listeners").add(
        doh3["queries"]
    )
    rejected = family(
        "doh3_rejected_total", "counter", "New DoH over HTTP/3 connections dropped, over a cap"
    )
    rejected.add(doh3["rejected_total_cap"], cap="total")
    rejected.add(doh3["rejected_per_client_cap"], cap="per_client")
    family(
        "doh3_denied_datagrams_total", "counter", "DoH over HTTP/3 datagrams from outside allow"
    ).add(doh3["denied_datagrams"])
    family(
        "doh3_protocol_errors_total", "counter", "DoH over HTTP/3 connections closed on an error"
    ).add(doh3["protocol_errors"])
    family(
        "doh3_http_errors_total", "counter", "DoH over HTTP/3 requests answered with 4xx or 503"
    ).add(doh3["http_errors"])
    family(
        "doh3_request_timeouts_total", "counter", "DoH over HTTP/3 connections closed for a "
        "request that did not arrive whole in time"
    ).add(doh3["request_timeouts"])  # fmt: skip


def _tcp(tcp: Mapping[str, int], family: Factory) -> None:
    family("tcp_connections", "gauge", "Client TCP connections open").add(tcp["open"])
    rejected = family(
        "tcp_rejected_total", "counter", "Client TCP connections closed at once, over a cap"
    )
    rejected.add(tcp["rejected_total_cap"], cap="total")
    rejected.add(tcp["rejected_per_client_cap"], cap="per_client")
    family(
        "tcp_denied_total", "counter", "Client TCP connections from outside allow, closed at once"
    ).add(tcp["denied"])
    closed = family("tcp_closed_total", "counter", "Client TCP connections closed by the daemon")
    closed.add(tcp["closed_idle"], reason="idle")
    closed.add(tcp["closed_unread"], reason="replies_unread")
    family("tcp_unsent_bytes", "gauge", "Reply octets waiting for clients to read them").add(
        tcp["unsent_bytes"]
    )
    family(
        "tls_handshake_failures_total", "counter", "DoT/DoH client TLS handshakes failed"
    ).add(tcp["tls_handshake_failures"])


def _upstreams(upstreams: list[Mapping[str, Any]], family: Factory) -> None:
    queries = family("upstream_queries_total", "counter", "Queries sent to the upstream")
    failures = family("upstream_failures_total", "counter", "Failed exchanges with the upstream")
    handshakes = family("upstream_handshakes_total", "counter", "Connections set up")
    up = family("upstream_up", "gauge", "1 if the upstream takes queries, 0 if down or probing")
    latency = family("upstream_latency_seconds", "gauge", "Latency percentile over recent answers")
    fallback = family(
        "upstream_fallback_answers_total", "counter",
        "Answers from the upstream's fallback while it could not be connected to",
    )  # fmt: skip
    by_kind = family(
        "upstream_failures_by_kind_total", "counter", "Failed exchanges with the upstream, by kind"
    )
    hedged = family(
        "upstream_hedged_total", "counter", "Attempts started as a hedge (the one before was slow)"
    )
    hedge_wins = family(
        "upstream_hedge_wins_total", "counter", "Hedged attempts whose answer was taken"
    )
    answers = family(
        "upstream_answers_total", "counter", "Client queries answered by the upstream's answer"
    )
    resumptions = family(
        "upstream_resumptions_total", "counter", "Connections that resumed a TLS or QUIC session"
    )
    durations = family(
        "upstream_query_duration_seconds", "histogram",
        "Exchange latency with the upstream (client queries and probes), answers only",
    )  # fmt: skip
    connects = family(
        "upstream_handshake_duration_seconds", "histogram",
        "Connection set-up time (TCP+TLS, or QUIC); resumed=true: a resumed session",
    )  # fmt: skip
    assert isinstance(durations, _HistogramFamily) and isinstance(connects, _HistogramFamily)
    for u in upstreams:
        labels = {"group": u.get("group", "default"), "upstream": u["name"]}
        if "fallback" in u:
            fallback.add(u["fallback"]["answers"], **labels)
        queries.add(u["queries"], **labels)
        failures.add(u["failures"], **labels)
        handshakes.add(u.get("handshakes"), **labels)
        up.add(1 if u.get("state", "up") == "up" else 0, **labels)
        for key, value in u["latency_ms"].items():
            if key.startswith("p") and value is not None:
                latency.add(value / 1000, **labels, quantile=int(key[1:]) / 100)
        for kind, count in sorted((u.get("failure_kinds") or {}).items()):
            by_kind.add(count, **labels, kind=kind)
        hedged.add(u.get("hedged"), **labels)
        hedge_wins.add(u.get("hedge_wins"), **labels)
        answers.add(u.get("answers"), **labels)
        resumptions.add(u.get("resumptions"), **labels)
        histograms = u.get("histograms") or {}
        with_transport = {**labels, "transport": u.get("transport", "")}
        durations.add_histogram(histograms.get("latency"), **with_transport)
        connects.add_histogram(histograms.get("handshake"), **with_transport, resumed="false")
        connects.add_histogram(
            histograms.get("resumed_handshake"), **with_transport, resumed="true"
        )


class MetricsServer:
    """GET /metrics → `render(collect())`, to the networks in `allow`, `max_connections` at once."""

    def __init__(
        self,
        host: str,
        port: int,
        collect: Callable[[], Mapping[str, Any]],
        *,
        allow: Sequence[str] = LOOPBACK,
        max_connections: int = 16,
    ) -> None:
        self.host = host
        self.port = port
        self._collect = collect
        self._server: asyncio.AbstractServer | None = None
        self.configure(allow, max_connections)
        self.head_timeout = HEAD_SECONDS
        self.write_timeout = WRITE_SECONDS
        #: connections being served now
        self.open = 0
        #: connections closed at accept: from outside `allow`, over `max_connections`
        self.denied = 0
        self.rejected = 0
        self._log_throttle = LogThrottle()

    def configure(self, allow: Sequence[str], max_connections: int) -> None:
        """Set the access list and the cap (at start, and at a reload for connections to come)."""
        self._allow = tuple(allow)
        self.access = AccessList(allow)
        self.max_connections = max_connections

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self.port, limit=MAX_HEAD)
        self.port = self._server.sockets[0].getsockname()[1]
        where = f"[{self.host}]" if ":" in self.host else self.host
        log.info("metrics on http://%s:%d/metrics", where, self.port)
        if not _is_loopback(self.host) and all(_is_loopback(n) for n in self._allow):
            log.warning(
                "metrics on %s, but metrics_allow admits loopback only: add your Prometheus "
                "server's address to it",
                where,
            )

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def _admit(self, peer: str) -> bool:
        """Count a new connection from `peer` in, or say why not (logged, at most once a minute)."""
        if not self.access.allows(peer):
            self.denied += 1
            why = "not in metrics_allow"
        elif self.open >= self.max_connections:
            self.rejected += 1
            why = f"over metrics_max_connections ({self.max_connections})"
        else:
            self.open += 1
            return True
        held_back = self._log_throttle.allow(why, time.monotonic())
        if held_back is not None:
            more = f" (and {held_back} more since the last such line)" if held_back else ""
            log.warning("metrics: connection from %s closed: %s%s", peer, why, more)
        return False

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        if not self._admit(peer[0] if peer else ""):
            writer.transport.abort()  # no answer, no lingering: the descriptor is free at once
            return
        try:
            async with asyncio.timeout(self.head_timeout):
                head = await reader.readuntil(b"\r\n\r\n")
            writer.write(self._response(head))
            writer.close()  # once the answer is out: a client that does not take it is cut below
            async with asyncio.timeout(self.write_timeout):
                await writer.wait_closed()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass  # too slow, too long or cut short: closed without an answer
        except ConnectionError:
            pass
        finally:
            writer.transport.abort()  # no-op once closed
            self.open -= 1
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    def _response(self, head: bytes) -> bytes:
        method, _, rest = head.partition(b" ")
        path = rest.partition(b" ")[0].partition(b"?")[0]
        if method not in (b"GET", b"HEAD"):
            return _http(405, "method not allowed\n", "text/plain", allow="GET, HEAD")
        if path not in (b"/metrics", b"/"):
            return _http(404, "not found: try /metrics\n", "text/plain")
        body = render(self._collect())
        return _http(200, body, CONTENT_TYPE, head_only=method == b"HEAD")


def _is_loopback(address_or_network: str) -> bool:
    try:
        return ipaddress.ip_network(address_or_network, strict=False).is_loopback
    except ValueError:
        return False


def _http(
    status: int, body: str, content_type: str, *, head_only: bool = False, allow: str = ""
) -> bytes:
    reason = {200: "OK", 404: "Not Found", 405: "Method Not Allowed"}[status]
    data = body.encode()
    headers = [
        f"HTTP/1.1 {status} {reason}",
        f"Content-Type: {content_type}",
        f"Content-Length: {len(data)}",
        "Connection: close",
    ]
    if allow:
        headers.append(f"Allow: {allow}")
    return ("\r\n".join(headers) + "\r\n\r\n").encode() + (b"" if head_only else data)
