"""Configuration: one YAML file read into frozen dataclasses; every option has a default.

Errors name the file, the line, the key path and what was expected, e.g.
``config.yaml:7: upstreams[1].url: expected tls://, https://, h3://, quic://, udp:// or tcp://``.
"""

from __future__ import annotations

import base64
import ipaddress
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar
from urllib.parse import SplitResult, unquote, urlsplit

import dns.exception
import dns.name
import yaml

from stubby_py.core.errors import ConfigError

TRANSPORT_PORTS = {"tls": 853, "https": 443, "h3": 443, "quic": 853, "udp": 53, "tcp": 53}
ENCRYPTED = frozenset({"tls", "https", "h3", "quic"})
LOG_LEVELS = ("debug", "info", "warning", "error")
STRATEGIES = ("failover", "round_robin", "fastest", "parallel")
DNSSEC_MODES = ("validate", "off")
#: the group of the main pool (`upstreams`), which forwarding rules may also name
DEFAULT_GROUP = "default"
#: RFC 2181 §8: a TTL is at most 2^31 - 1
MAX_TTL = 2**31 - 1


PROXY_KINDS = ("socks5", "socks5h", "http")
#: what a proxy can carry: TCP streams (SOCKS5 CONNECT, HTTP CONNECT), and QUIC through SOCKS5
#: UDP ASSOCIATE; plain udp:// is refused with a proxy, never sent around it
PROXIED_TRANSPORTS = frozenset({"tls", "https", "tcp"})
QUIC_TRANSPORTS = frozenset({"quic", "h3"})


@dataclass(frozen=True, slots=True)
class ProxySpec:
    """A proxy to reach upstreams through: `socks5` (the proxy is given the upstream's address),
    `socks5h` (given its authentication name, for Tor; the address when it has none) or `http`
    (HTTP CONNECT). `none` (per upstream): connect directly even when a global proxy is set.
    The credentials are never shown: not in `label`, not in repr."""

    kind: str
    host: str = ""
    port: int = 0
    username: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)

    @property
    def label(self) -> str:
        """As logs, errors and `check` show it: `socks5 127.0.0.1:1080`, never with credentials."""
        if self.kind == "none":
            return "none"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.kind} {host}:{self.port}"


#: an upstream's `proxy: none`: direct, whatever the global `proxy` says
NO_PROXY = ProxySpec("none")


@dataclass(frozen=True, slots=True)
class UpstreamSpec:
    """One upstream resolver: where it is, how to reach it and how to authenticate it."""

    transport: str
    address: str
    port: int
    #: the name the certificate must carry (SNI too); None: verify the IP address instead
    auth_name: str | None = None
    #: DoH only: the URL path (with a `{?dns}` template removed) and the HTTP method
    path: str = "/dns-query"
    method: str = "post"
    #: base64 SHA-256 digests of SubjectPublicKeyInfo; any match passes (RFC 7469 form)
    spki_pins: tuple[str, ...] = ()
    ca_file: str | None = None
    name: str = ""
    #: from a DNS stamp: hex SHA-256 digests of a TBS certificate; one must be in the chain
    cert_hashes: tuple[str, ...] = ()
    #: from a DNS stamp: its informal properties (dnssec, no-log, no-filter), shown only
    stamp_props: tuple[str, ...] = ()
    #: the upstream's own `proxy` (NO_PROXY: direct); None: the global `proxy` applies
    proxy: ProxySpec | None = None

    @property
    def is_encrypted(self) -> bool:
        return self.transport in ENCRYPTED

    @property
    def needs_bootstrap(self) -> bool:
        """Given by hostname: its addresses come from the `bootstrap` resolvers (bootstrap.py)."""
        return not is_ip(self.address)

    @property
    def label(self) -> str:
        """The upstream as clients (EDE text, stats, explain, metrics) and the logs see it: its
        `name`, or its URL without the DoH path, where providers put account tokens."""
        return self.name or self._url(with_path=False)

    @property
    def url(self) -> str:
        """The upstream as configured, the DoH path included: for `check` on the command line."""
        return self._url(with_path=True)

    def _url(self, *, with_path: bool) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        if self.transport in ("https", "h3"):
            path = self.path if with_path else ""
            if self.auth_name and self.auth_name != self.address:
                # two addresses of one provider (`https://NAME/PATH#IP`) stay apart
                return f"{self.transport}://{self.auth_name}:{self.port}{path}#{host}"
            return f"{self.transport}://{host}:{self.port}{path}"
        suffix = f"#{self.auth_name}" if self.auth_name and self.auth_name != self.address else ""
        return f"{self.transport}://{host}:{self.port}{suffix}"


@dataclass(frozen=True, slots=True)
class EncryptedListen:
    """A listener for clients that speak DoT (`tls://IP:PORT`), DoH over HTTP/2
    (`https://IP:PORT/PATH`) or DoQ (`quic://IP:PORT`, UDP)."""

    scheme: str
    address: str
    port: int
    #: the DoH path (`https` only)
    path: str = ""

    @property
    def label(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{self.scheme}://{host}:{self.port}{self.path}"


@dataclass(frozen=True, slots=True)
class Config:
    #: addresses to listen on, UDP and TCP each
    listen: tuple[tuple[str, int], ...] = (("127.0.0.1", 53), ("::1", 53))
    #: DoT, DoH and DoQ listeners (`listen:` entries written as tls://, https:// or quic:// URIs)
    encrypted_listen: tuple[EncryptedListen, ...] = ()
    #: the certificate chain and private key (PEM) the encrypted listeners present
    tls_cert: str | None = None
    tls_key: str | None = None
    #: replies on encrypted listeners to queries that carry EDNS Padding are padded to a
    #: multiple of this (RFC 8467 §4.1); 0 = never
    listen_padding_block: int = 468
    #: client networks that get answers; everyone else gets REFUSED
    allow: tuple[str, ...] = ("127.0.0.0/8", "::1/128")
    upstreams: tuple[UpstreamSpec, ...] = ()
    #: overall deadline for one client query, seconds (glibc gives up after 5)
    timeout: float = 2.5
    #: longest wait for one upstream before the next is tried, seconds
    attempt_timeout: float = 1.5
    #: close an idle upstream connection after this many seconds (or the server's keepalive)
    upstream_idle_timeout: float = 30.0
    #: EDNS padding block for encrypted queries (RFC 8467 §4.1); 0 turns padding off
    padding_block_size: int = 128
    tls_min_version: str = "1.2"
    #: CA bundle for every upstream that does not name its own; None = system trust store
    ca_file: str | None = None
    #: reach every upstream through this proxy unless it names its own (or `none`); None: direct
    proxy: ProxySpec | None = None
    tcp_idle_timeout: float = 10.0
    #: clients' TCP connections open at once, in total and from one client address
    tcp_max_connections: int = 512
    tcp_max_connections_per_client: int = 64
    #: an IPv6 client is the network of this many leading bits of its address, for the per-client
    #: TCP cap and the rate limit (one host commonly has a whole /64 to pick addresses from)
    ipv6_client_prefix: int = 64
    log_level: str = "info"
    #: most answers cached; 0 turns the answer cache off (identical queries are still joined)
    cache_size: int = 100_000
    #: most memory the cached answers may take, MiB (wire octets plus per-entry overhead)
    cache_max_memory: int = 32
    #: TTL clamps for cached positive answers, seconds (as Unbound: no minimum, one day)
    cache_min_ttl: int = 0
    cache_max_ttl: int = 86_400
    #: ceiling for a cached negative answer's TTL, seconds (RFC 2308 §5)
    cache_negative_max_ttl: int = 3_600
    #: answer from an expired entry (TTL 30, EDE 3) when every upstream fails (RFC 8767)
    serve_stale: bool = True
    #: how long after expiry an answer may still be served stale, seconds
    stale_window: int = 86_400
    #: refresh a popular answer asked for in the last tenth of its TTL, in the background
    prefetch: bool = True
    #: where the cache is saved at shutdown and reloaded at start: a path; "auto" =
    #: $STATE_DIRECTORY/cache.bin under systemd's StateDirectory=, else nowhere; None = nowhere
    cache_file: str | None = "auto"
    #: how the pool picks upstreams: failover | round_robin | fastest | parallel
    strategy: str = "failover"
    #: parallel: how many upstreams are asked at once
    parallel_fanout: int = 2
    #: fastest: share of queries sent to another upstream to keep latency estimates fresh
    fastest_explore: float = 0.05
    #: ask the next upstream too when the first is slower than its own usual (hedging)
    hedge: bool = True
    #: the percentile of an upstream's recent latencies after which the hedge goes out
    hedge_percentile: float = 90.0
    #: bounds of the hedge delay, seconds
    hedge_min: float = 0.05
    hedge_max: float = 1.0
    #: consecutive failures that mark an upstream down
    failures_to_down: int = 3
    #: first and longest backoff of an upstream marked down, seconds (doubling, with jitter)
    backoff_min: float = 0.5
    backoff_max: float = 60.0
    #: ask another upstream when one answers SERVFAIL or REFUSED
    retry_servfail: bool = True
    #: named upstream groups for forwarding rules: (name, upstreams)
    upstream_groups: tuple[tuple[str, tuple[UpstreamSpec, ...]], ...] = ()
    #: forwarding rules: (domain suffix, group name); the most specific suffix wins
    rules: tuple[tuple[str, str], ...] = ()
    #: clients outside `allow`: "refuse" (REFUSED, EDE 18) or "drop" (no answer)
    deny_action: str = "refuse"
    #: per-client queries per second (token bucket); 0 turns rate limiting off
    rate_limit: float = 200.0
    rate_limit_burst: int = 400
    #: over the limit: "drop" (no answer) or "refuse" (REFUSED)
    rate_limit_action: str = "drop"
    #: client networks never rate limited (the machine's own programs)
    rate_limit_exempt: tuple[str, ...] = ("127.0.0.0/8", "::1/128")
    #: started as root (and not by socket activation into a sandbox): after binding, run as this
    #: user; "auto" = the system user stubby-py (created if missing); "root" or None = stay root
    user: str | None = "auto"
    #: the local control socket (stats, flush, reload): a path; "auto" = control.default_path();
    #: None = no control socket
    control_socket: str | None = "auto"
    #: Prometheus metrics over HTTP on this (address, port); None = off
    metrics_listen: tuple[str, int] | None = None
    #: networks that may connect to the metrics endpoint; others are closed at accept
    metrics_allow: tuple[str, ...] = ("127.0.0.0/8", "::1/128")
    #: metrics connections open at once; more are closed at accept
    metrics_max_connections: int = 16
    #: append one line per answered query to this file (a privacy choice); None = no query log
    query_log: str | None = None
    #: DNSSEC: "validate" answers (AD for secure, SERVFAIL for bogus) or "off" (pass through)
    dnssec: str = "validate"
    #: a file of DS/DNSKEY records in zone-file form replacing the built-in root anchors
    trust_anchors: str | None = None
    #: seconds a signature may be past its expiry or before its inception (clock error allowance)
    dnssec_clock_skew: int = 3600
    #: NSEC3 with more hash iterations than this is treated as insecure (RFC 9276)
    nsec3_max_iterations: int = 150
    #: follow the trust anchors' key rollovers (RFC 5011), state kept in the state directory
    trust_anchor_updates: bool = True
    #: answer NXDOMAIN/NODATA proven by validated NSEC/NSEC3 records already held (RFC 8198)
    aggressive_nsec: bool = True
    #: renew upstream connections after network changes and resume from suspend (Linux)
    watch_network: bool = True
    #: resolvers, given by IP address, that find the addresses of upstreams given by hostname
    bootstrap: tuple[UpstreamSpec, ...] = ()
    #: TTL clamps for the addresses the bootstrap resolvers give, seconds
    bootstrap_min_ttl: int = 60
    bootstrap_max_ttl: int = 86_400
    #: where the last good addresses are kept: a path; "auto" = $STATE_DIRECTORY/bootstrap.json
    #: under systemd's StateDirectory=, else nowhere; None = nowhere
    bootstrap_file: str | None = "auto"
    #: where the configuration came from (for messages)
    source: str = "<built-in defaults>"


DEFAULT_UPSTREAMS = (
    "tls://9.9.9.9#dns.quad9.net",
    "tls://149.112.112.112#dns.quad9.net",
    "tls://1.1.1.1#cloudflare-dns.com",
    "tls://1.0.0.1#cloudflare-dns.com",
    "tls://[2620:fe::fe]#dns.quad9.net",
    "tls://[2606:4700:4700::1111]#cloudflare-dns.com",
)


def parse_upstream_uri(text: str) -> UpstreamSpec:
    """Parse `tls://IP[:PORT]#NAME`, `https://HOST[:PORT]/PATH[#IP]`, `h3://…`, `quic://IP#NAME`,
    `udp://IP[:PORT]`, `tcp://IP[:PORT]` or a DNS stamp `sdns://…`. An encrypted upstream may be
    given by hostname alone (`tls://NAME`, `https://NAME/PATH`): `needs_bootstrap`, which the
    configuration checks. Raises ValueError with what was expected."""
    scheme, sep, _rest = text.partition("://")
    if sep and scheme == "sdns":
        from stubby_py.core import stamps  # it builds on this module

        return stamps.parse(text)
    if not sep or scheme not in TRANSPORT_PORTS:
        raise ValueError(
            "expected a URI starting tls://, https://, h3://, quic://, udp://, tcp://"
            " or a DNS stamp sdns://"
        )
    parts = urlsplit(text.replace("{?dns}", ""))  # RFC 8484 URI template: we add ?dns= per query
    try:
        port = parts.port or TRANSPORT_PORTS[scheme]
    except ValueError as exc:
        # (not the URL itself: a DoH path may hold an account token)
        raise ValueError(f"bad port in the {scheme}:// URL: expected 1-65535") from exc
    host = parts.hostname or ""
    fragment = parts.fragment or None
    if scheme in ("https", "h3"):
        return _doh_spec(scheme, host, port, parts.path, parts.query, fragment, text)
    if parts.path not in ("", "/") or parts.query:
        raise ValueError(f"{scheme}:// takes no path: expected {scheme}://IP[:PORT]")
    if scheme in ("udp", "tcp"):
        _check_ip(host, text)
        if fragment:
            raise ValueError(f"{scheme}:// is cleartext and takes no #AUTH-NAME")
    elif not is_ip(host):
        # by hostname: resolved through `bootstrap`; the certificate is checked for that name
        _check_hostname(host)
        return UpstreamSpec(scheme, host, port, auth_name=fragment or host)
    return UpstreamSpec(scheme, host, port, auth_name=fragment)


def _doh_spec(
    scheme: str, host: str, port: int, path: str, query: str, fragment: str | None, text: str
) -> UpstreamSpec:
    path = path or "/dns-query"
    if query:
        raise ValueError("a DoH URL takes no query string (the ?dns= part is added per query)")
    if is_ip(host):
        if fragment:
            raise ValueError("an IP-literal DoH URL takes no #IP")
        return UpstreamSpec(scheme, host, port, auth_name=None, path=path)
    if not fragment:
        # by hostname: resolved through `bootstrap` (never through ourselves)
        _check_hostname(host)
        return UpstreamSpec(scheme, host, port, auth_name=host, path=path)
    _check_ip(fragment, f"{scheme}://{host}#{fragment}")  # not the path: it may hold a token
    return UpstreamSpec(scheme, fragment, port, auth_name=host, path=path)


def is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


_HOSTNAME_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)\Z")


def _check_hostname(text: str) -> None:
    """A host name of letters, digits and hyphens (what certificates name)."""
    labels = text.rstrip(".").split(".")
    if (
        len(text) > 253
        or len(labels) < 2
        or not all(_HOSTNAME_LABEL.match(label) for label in labels)
    ):
        raise ValueError(f"expected an IP address or a host name such as dns.example, got {text!r}")


def _check_ip(text: str, uri: str) -> None:
    if not is_ip(text):
        raise ValueError(f"expected an IP address in {uri!r}, got {text!r}")


def upstream_proxy(spec: UpstreamSpec, config: Config) -> ProxySpec | None:
    """The proxy the upstream's connections go through, or None for a direct connection."""
    proxy = spec.proxy if spec.proxy is not None else config.proxy
    return None if proxy is None or proxy.kind == "none" else proxy


def resolved_by_proxy(spec: UpstreamSpec, config: Config) -> bool:
    """An upstream by hostname whose proxy resolves the name (socks5h, Tor): no bootstrap is
    asked, so the name is never looked up outside the proxy."""
    proxy = upstream_proxy(spec, config)
    return proxy is not None and proxy.kind == "socks5h" and spec.needs_bootstrap


def parse_proxy_uri(text: str, credentials: tuple[str, str] | None = None) -> ProxySpec:
    """`socks5://[USER:PASS@]HOST:PORT`, `socks5h://…`, `http://…` or `none`; HOST an IP
    address or localhost. `credentials` (from a file) replace any in the URI."""
    if text == "none":
        if credentials is not None:
            raise ValueError("`none` takes no credentials")
        return NO_PROXY
    expected = "expected socks5://HOST:PORT, socks5h://HOST:PORT, http://HOST:PORT or none"
    parts = urlsplit(text)
    if parts.scheme not in PROXY_KINDS:
        raise ValueError(f"{expected}, got a URI of scheme {parts.scheme or '(none)'!r}")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"{expected}: a proxy URI has no path, query or fragment")
    host, port = _proxy_address(parts, expected)
    username, password = parts.username, parts.password
    if credentials is not None:
        if username is not None:
            raise ValueError("credentials given both in the URI and in credentials_file")
        username, password = credentials
    elif username is not None:
        username, password = unquote(username), unquote(password or "")
    return ProxySpec(parts.scheme, host, port, username, password)


def _proxy_address(parts: SplitResult, expected: str) -> tuple[str, int]:
    try:
        port = parts.port
    except ValueError:
        port = None
    host = parts.hostname
    if not host or not port:
        raise ValueError(f"{expected}: the proxy's address and port, e.g. socks5://127.0.0.1:1080")
    if host != "localhost" and not is_ip(host):
        raise ValueError(
            f"expected the proxy as an IP address or localhost (no name lookup happens before"
            f" the proxy), got {host!r}"
        )
    return ("127.0.0.1" if host == "localhost" else host), port


def read_proxy_credentials(path: str) -> tuple[str, str]:
    """`USER:PASSWORD` on the file's first line. A file that others may read is used, with a
    warning in the log (the daemon may run as a user that only a group-readable file suits)."""
    try:
        with open(path, encoding="utf-8") as handle:
            line = handle.readline().rstrip("\r\n")
            mode = os.fstat(handle.fileno()).st_mode
    except OSError as exc:
        raise ValueError(
            f"expected a readable file of USER:PASSWORD, {path!r}: {exc.strerror}"
        ) from None
    user, colon, password = line.partition(":")
    if not colon or not user:
        raise ValueError(f"expected USER:PASSWORD on the first line of {path!r}")
    if mode & 0o004:
        import logging

        logging.getLogger("stubby_py.core.config").warning(
            "%s: the proxy credentials file is readable by every user (chmod o-r)", path
        )
    return user, password


def parse_listen(text: str, default_port: int = 53) -> tuple[str, int]:
    """`127.0.0.1:53`, `[::1]:5353` or a bare address (port 53)."""
    if text.startswith("["):
        host, sep, port_text = text[1:].partition("]")
        port_text = port_text.removeprefix(":") if sep else ""
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    else:
        host, port_text = text, ""
    if not is_ip(host):
        raise ValueError(f"expected IP:PORT (IPv6 as [ADDR]:PORT), got {text!r}")
    port = _port(port_text) if port_text else default_port
    return host, port


DEFAULT_DOT_PORT = 853
DEFAULT_DOH_PORT = 443
DEFAULT_DOH_PATH = "/dns-query"


def parse_listen_uri(text: str) -> tuple[str, int] | EncryptedListen:
    """A plain `IP:PORT` (UDP and TCP), `tls://IP[:PORT]` (DoT, port 853),
    `https://IP[:PORT][/PATH]` (DoH over HTTP/2, port 443, path /dns-query) or
    `quic://IP[:PORT]` (DoQ, UDP port 853)."""
    scheme, sep, rest = text.partition("://")
    if not sep:
        return parse_listen(text)
    if scheme not in ("tls", "https", "quic"):
        raise ValueError(
            f"expected IP:PORT, tls://IP:PORT, https://IP:PORT/PATH or quic://IP:PORT, got {text!r}"
        )
    address, slash, path = rest.partition("/")
    path = slash + path
    if scheme in ("tls", "quic") and path:
        raise ValueError(f"expected {scheme}://IP:PORT (no path), got {text!r}")
    if "?" in path or "#" in path or " " in path:
        raise ValueError(f"expected a plain path in {text!r}")
    default_port = DEFAULT_DOH_PORT if scheme == "https" else DEFAULT_DOT_PORT
    try:
        host, port = parse_listen(address, default_port)
    except ValueError:
        raise ValueError(
            f"expected {scheme}://IP:PORT{'/PATH' if scheme == 'https' else ''}"
            f" (IPv6 as [ADDR]:PORT), got {text!r}"
        ) from None
    if scheme == "https" and path in ("", "/"):
        path = DEFAULT_DOH_PATH
    return EncryptedListen(scheme, host, port, path if scheme == "https" else "")


def split_listen(entries: tuple[tuple[str, int] | EncryptedListen, ...]) -> dict[str, Any]:
    """`listen` entries as the Config fields `listen` (plain) and `encrypted_listen`."""
    return {
        "listen": tuple(e for e in entries if not isinstance(e, EncryptedListen)),
        "encrypted_listen": tuple(e for e in entries if isinstance(e, EncryptedListen)),
    }


def tls_files_problem(cert: str, key: str) -> str | None:
    """Why OpenSSL would not serve with this certificate chain and key, or None."""
    import ssl

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(cert, key)
    except ssl.SSLError as exc:
        return f"not a PEM certificate chain and its private key ({exc.reason or exc})"
    except OSError as exc:
        return f"cannot read them: {exc.strerror or exc}"
    return None


def _port(text: str) -> int:
    if not text.isdigit() or not 0 <= int(text) <= 65535:
        raise ValueError(f"expected a port number 0-65535, got {text!r}")
    return int(text)


# --- reading YAML with positions ---------------------------------------------------------

T = TypeVar("T")


class _Reader:
    """Turns composed YAML nodes into values, raising ConfigError with file:line: key."""

    def __init__(self, source: str) -> None:
        self.source = source
        #: upstreams given by hostname (node, key): they need `bootstrap`
        self.by_hostname: list[tuple[yaml.Node, str, UpstreamSpec]] = []

    def fail(self, node: yaml.Node | None, key: str, expected: str) -> ConfigError:
        line = node.start_mark.line + 1 if node is not None else 0
        where = f"{self.source}:{line}" if line else self.source
        return ConfigError(f"{where}: {key}: {expected}")

    def scalar(self, node: yaml.Node, key: str) -> Any:
        if not isinstance(node, yaml.ScalarNode):
            raise self.fail(node, key, "expected a single value, not a list or mapping")
        return yaml.SafeLoader(" ").construct_object(node)  # type: ignore[no-untyped-call,unused-ignore]

    def typed(self, node: yaml.Node, key: str, kind: type[T], what: str) -> T:
        value = self.scalar(node, key)
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise self.fail(node, key, f"expected {what}, got {value!r}")
        return value

    def number(self, node: yaml.Node, key: str, low: float, high: float) -> float:
        value = self.typed(node, key, float, "a number")
        if not low <= value <= high:
            raise self.fail(node, key, f"expected a number from {low:g} to {high:g}, got {value!r}")
        return value

    def integer(self, node: yaml.Node, key: str, low: int, high: int) -> int:
        value = self.typed(node, key, int, "a whole number")
        if not low <= value <= high:
            raise self.fail(node, key, f"expected a whole number from {low} to {high}, got {value}")
        return value

    def boolean(self, node: yaml.Node, key: str) -> bool:
        return self.typed(node, key, bool, "true or false")

    def text(self, node: yaml.Node, key: str) -> str:
        return self.typed(node, key, str, "a string")

    def optional_text(self, node: yaml.Node, key: str) -> str | None:
        if isinstance(node, yaml.ScalarNode) and node.tag.endswith(":null"):
            return None
        return self.text(node, key)

    def choice(self, node: yaml.Node, key: str, options: tuple[str, ...]) -> str:
        value = self.text(node, key)
        if value not in options:
            raise self.fail(node, key, f"expected one of {', '.join(options)}, got {value!r}")
        return value

    def items(self, node: yaml.Node, key: str) -> list[yaml.Node]:
        if not isinstance(node, yaml.SequenceNode):
            raise self.fail(node, key, "expected a list")
        return list(node.value)

    def mapping(self, node: yaml.Node, key: str, known: set[str] | None) -> dict[str, yaml.Node]:
        """Key → value node; `known` None takes any string keys."""
        if not isinstance(node, yaml.MappingNode):
            raise self.fail(node, key, "expected a mapping of keys to values")
        result: dict[str, yaml.Node] = {}
        for key_node, value_node in node.value:
            name = self.scalar(key_node, key or "(top level)")
            path = f"{key}.{name}" if key else str(name)
            if known is None and not isinstance(name, str):
                raise self.fail(key_node, path, "expected a name")
            if known is not None and name not in known:
                raise self.fail(
                    key_node, path, f"unknown key; expected one of {', '.join(sorted(known))}"
                )
            if name in result:
                raise self.fail(key_node, path, "given twice")
            result[name] = value_node
        return result

    def converted(self, node: yaml.Node, key: str, convert: Callable[[str], T]) -> T:
        text = self.text(node, key)
        try:
            return convert(text)
        except ValueError as exc:
            raise self.fail(node, key, str(exc)) from None


def _network(text: str) -> str:
    try:
        return str(ipaddress.ip_network(text, strict=False))
    except ValueError:
        raise ValueError(f"expected a network such as 192.168.1.0/24, got {text!r}") from None


def _pin(text: str) -> str:
    try:
        raw = base64.b64decode(text, validate=True)
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise ValueError(
            "expected a base64 SHA-256 digest (44 characters, as `check --connect` prints)"
        )
    return text


def _file(text: str) -> str:
    if not os.path.isfile(text):
        raise ValueError(f"expected a readable file, {text!r} does not exist")
    return text


def _ca_file(text: str) -> str:
    """A CA file OpenSSL loads: read now, so that a broken one fails check-config, not queries."""
    from stubby_py.transports.tls import ca_file_problem

    _file(text)
    problem = ca_file_problem(text)
    if problem is not None:
        raise ValueError(f"expected a PEM file of CA certificates, {text!r} {problem}")
    return text


def _trust_anchor_file(text: str) -> str:
    """A readable file of trust anchors: read now, so that a bad one fails check-config too."""
    from stubby_py.dnssec import anchors

    try:
        anchors.load(text)
    except ConfigError as exc:
        raise ValueError(str(exc)) from None
    return text


_UPSTREAM_KEYS = {"url", "name", "spki_pins", "ca_file", "method", "proxy"}
_PROXY_KEYS = {"url", "credentials_file"}


def _proxy(reader: _Reader, node: yaml.Node, key: str) -> ProxySpec:
    """A proxy URI, or a mapping of `url` and `credentials_file` (USER:PASSWORD, kept out of
    the configuration file)."""
    if isinstance(node, yaml.ScalarNode):
        return reader.converted(node, key, parse_proxy_uri)
    fields = reader.mapping(node, key, _PROXY_KEYS)
    if "url" not in fields:
        raise reader.fail(node, key, "expected a url, e.g. socks5://127.0.0.1:1080")
    credentials = None
    if "credentials_file" in fields:
        credentials = reader.converted(
            fields["credentials_file"], f"{key}.credentials_file", read_proxy_credentials
        )
    return reader.converted(
        fields["url"], f"{key}.url", lambda text: parse_proxy_uri(text, credentials)
    )


def proxy_problem(spec: UpstreamSpec, proxy: ProxySpec) -> str | None:
    """Why the upstream cannot go through the proxy, or None."""
    if spec.transport in QUIC_TRANSPORTS:
        if proxy.kind != "http":
            return None
        return (
            "DoQ/HTTP/3 through a proxy needs SOCKS5 UDP ASSOCIATE; an HTTP proxy carries TCP"
            f" only ({spec.label}: use a socks5:// proxy, tls:// or https://, or `proxy: none`)"
        )
    if spec.transport not in PROXIED_TRANSPORTS:
        return (
            f"plain DNS over UDP cannot go through a proxy ({spec.label}: use tcp://, or give"
            " it `proxy: none`)"
        )
    return None


def _upstream(reader: _Reader, node: yaml.Node, key: str) -> UpstreamSpec:
    if isinstance(node, yaml.ScalarNode):
        return reader.converted(node, key, parse_upstream_uri)
    fields = reader.mapping(node, key, _UPSTREAM_KEYS)
    if "url" not in fields:
        raise reader.fail(node, key, "an upstream needs a url, e.g. tls://9.9.9.9#dns.quad9.net")
    spec = reader.converted(fields["url"], f"{key}.url", parse_upstream_uri)
    changes: dict[str, Any] = {}
    if "name" in fields:
        changes["name"] = reader.text(fields["name"], f"{key}.name")
    if "spki_pins" in fields:
        pins = reader.items(fields["spki_pins"], f"{key}.spki_pins")
        changes["spki_pins"] = tuple(
            reader.converted(p, f"{key}.spki_pins[{i}]", _pin) for i, p in enumerate(pins)
        )
    if "ca_file" in fields:
        changes["ca_file"] = reader.converted(fields["ca_file"], f"{key}.ca_file", _ca_file)
    if "method" in fields:
        changes["method"] = reader.choice(fields["method"], f"{key}.method", ("post", "get"))
    if "proxy" in fields:
        changes["proxy"] = _proxy(reader, fields["proxy"], f"{key}.proxy")
        problem = (
            proxy_problem(spec, changes["proxy"]) if changes["proxy"] is not NO_PROXY else None
        )
        if problem is not None:
            raise reader.fail(fields["proxy"], f"{key}.proxy", problem)
    if changes and not spec.is_encrypted and ({"spki_pins", "ca_file"} & changes.keys()):
        raise reader.fail(node, key, "spki_pins and ca_file apply to encrypted upstreams only")
    return replace(spec, **changes)


def _upstreams(reader: _Reader, node: yaml.Node, key: str) -> tuple[UpstreamSpec, ...]:
    """A pool's upstreams, each told apart from the others where it is shown (EDE texts, stats,
    metrics labels, logs), which a DoH path is not: two that would look alike are refused."""
    specs: list[UpstreamSpec] = []
    for index, item in enumerate(reader.items(node, key)):
        spec = _upstream(reader, item, f"{key}[{index}]")
        if spec.needs_bootstrap:
            reader.by_hostname.append((item, f"{key}[{index}]", spec))
        twin = next((i for i, other in enumerate(specs) if other.label == spec.label), None)
        if twin is not None:
            expected = (
                f"the same upstream as {key}[{twin}]"
                if replace(spec, name="") == replace(specs[twin], name="")
                else f"shown as {spec.label!r} like {key}[{twin}] (a DoH path is never shown):"
                " give each a `name`"
            )
            raise reader.fail(item, f"{key}[{index}]", expected)
        specs.append(spec)
    return tuple(specs)


def _list(
    reader: _Reader, node: yaml.Node, key: str, convert: Callable[[yaml.Node, str], T]
) -> tuple[T, ...]:
    return tuple(convert(item, f"{key}[{i}]") for i, item in enumerate(reader.items(node, key)))


def _converters(r: _Reader) -> dict[str, Callable[[yaml.Node], Any]]:
    """One converter per top-level key: the keys are exactly the options a file may set."""
    return {
        "listen": lambda n: _list(
            r, n, "listen", lambda m, k: r.converted(m, k, parse_listen_uri)
        ),
        "tls_cert": lambda n: r.converted(n, "tls_cert", _file),
        "tls_key": lambda n: r.converted(n, "tls_key", _file),
        "listen_padding_block": lambda n: r.integer(n, "listen_padding_block", 0, 4096),
        "allow": lambda n: _list(r, n, "allow", lambda m, k: r.converted(m, k, _network)),
        "upstreams": lambda n: _upstreams(r, n, "upstreams"),
        "timeout": lambda n: r.number(n, "timeout", 0.1, 30),
        "attempt_timeout": lambda n: r.number(n, "attempt_timeout", 0.05, 30),
        "upstream_idle_timeout": lambda n: r.number(n, "upstream_idle_timeout", 0.1, 3600),
        "padding_block_size": lambda n: r.integer(n, "padding_block_size", 0, 512),
        "tls_min_version": lambda n: r.choice(n, "tls_min_version", ("1.2", "1.3")),
        "ca_file": lambda n: r.converted(n, "ca_file", _ca_file),
        "proxy": lambda n: _proxy(r, n, "proxy"),
        "tcp_idle_timeout": lambda n: r.number(n, "tcp_idle_timeout", 0.1, 3600),
        "tcp_max_connections": lambda n: r.integer(n, "tcp_max_connections", 1, 100_000),
        "tcp_max_connections_per_client": lambda n: r.integer(
            n, "tcp_max_connections_per_client", 1, 100_000
        ),
        "ipv6_client_prefix": lambda n: r.integer(n, "ipv6_client_prefix", 16, 128),
        "log_level": lambda n: r.choice(n, "log_level", LOG_LEVELS),
        "cache_size": lambda n: r.integer(n, "cache_size", 0, 10_000_000),
        "cache_max_memory": lambda n: r.integer(n, "cache_max_memory", 1, 65_536),
        "cache_min_ttl": lambda n: r.integer(n, "cache_min_ttl", 0, 86_400),
        "cache_max_ttl": lambda n: r.integer(n, "cache_max_ttl", 1, MAX_TTL),
        "cache_negative_max_ttl": lambda n: r.integer(n, "cache_negative_max_ttl", 0, MAX_TTL),
        "serve_stale": lambda n: r.boolean(n, "serve_stale"),
        "stale_window": lambda n: r.integer(n, "stale_window", 0, 30 * 86_400),
        "prefetch": lambda n: r.boolean(n, "prefetch"),
        "cache_file": lambda n: _path_auto_or_off(r, n, "cache_file"),
        "strategy": lambda n: r.choice(n, "strategy", STRATEGIES),
        "parallel_fanout": lambda n: r.integer(n, "parallel_fanout", 2, 8),
        "fastest_explore": lambda n: r.number(n, "fastest_explore", 0.0, 0.5),
        "hedge": lambda n: r.boolean(n, "hedge"),
        "hedge_percentile": lambda n: r.number(n, "hedge_percentile", 50, 99.9),
        "hedge_min": lambda n: r.number(n, "hedge_min", 0.001, 10),
        "hedge_max": lambda n: r.number(n, "hedge_max", 0.001, 10),
        "failures_to_down": lambda n: r.integer(n, "failures_to_down", 1, 100),
        "backoff_min": lambda n: r.number(n, "backoff_min", 0.01, 60),
        "backoff_max": lambda n: r.number(n, "backoff_max", 0.01, 3600),
        "retry_servfail": lambda n: r.boolean(n, "retry_servfail"),
        "upstream_groups": lambda n: _groups(r, n),
        "rules": lambda n: _rules(r, n),
        "deny_action": lambda n: r.choice(n, "deny_action", ("refuse", "drop")),
        "rate_limit": lambda n: r.number(n, "rate_limit", 0, 1_000_000),
        "rate_limit_burst": lambda n: r.integer(n, "rate_limit_burst", 1, 1_000_000),
        "rate_limit_action": lambda n: r.choice(n, "rate_limit_action", ("drop", "refuse")),
        "rate_limit_exempt": lambda n: _list(
            r, n, "rate_limit_exempt", lambda m, k: r.converted(m, k, _network)
        ),
        "user": lambda n: _optional_user(r, n),
        "control_socket": lambda n: _path_auto_or_off(r, n, "control_socket"),
        "metrics_listen": lambda n: _metrics_listen(r, n),
        "metrics_allow": lambda n: _list(
            r, n, "metrics_allow", lambda m, k: r.converted(m, k, _network)
        ),
        "metrics_max_connections": lambda n: r.integer(n, "metrics_max_connections", 1, 1024),
        "query_log": lambda n: r.text(n, "query_log"),
        "dnssec": lambda n: r.choice(n, "dnssec", DNSSEC_MODES),
        "trust_anchors": lambda n: r.converted(n, "trust_anchors", _trust_anchor_file),
        "dnssec_clock_skew": lambda n: r.integer(n, "dnssec_clock_skew", 0, 86_400),
        "nsec3_max_iterations": lambda n: r.integer(n, "nsec3_max_iterations", 0, 65_535),
        "watch_network": lambda n: r.boolean(n, "watch_network"),
        "trust_anchor_updates": lambda n: r.boolean(n, "trust_anchor_updates"),
        "aggressive_nsec": lambda n: r.boolean(n, "aggressive_nsec"),
        "bootstrap": lambda n: _list(
            r, n, "bootstrap", lambda m, k: r.converted(m, k, bootstrap_resolver)
        ),
        "bootstrap_min_ttl": lambda n: r.integer(n, "bootstrap_min_ttl", 1, 86_400),
        "bootstrap_max_ttl": lambda n: r.integer(n, "bootstrap_max_ttl", 1, 7 * 86_400),
        "bootstrap_file": lambda n: _path_auto_or_off(r, n, "bootstrap_file"),
    }


def bootstrap_resolver(text: str) -> UpstreamSpec:
    """A bootstrap resolver: any upstream URI, but given by IP address (nothing resolves it)."""
    spec = parse_upstream_uri(text)
    if spec.needs_bootstrap:
        raise ValueError(
            f"a bootstrap resolver must be given by IP address (nothing could resolve"
            f" {spec.address!r}), e.g. udp://9.9.9.9 or tls://9.9.9.9#dns.quad9.net"
        )
    return spec


def own_listener(spec: UpstreamSpec, listen: tuple[tuple[str, int], ...]) -> str | None:
    """Which of our listen addresses the bootstrap resolver `spec` may be (then it would ask
    us, and we would wait on ourselves): the same address and port; or the same port where we
    listen on a wildcard address and it is loopback or a wildcard; or the same port where both
    are loopback (127.0.0.53 on :53 may be a local forwarder that comes back to us when we
    listen on 127.0.0.1:53). None when it is none of them."""
    address = ipaddress.ip_address(spec.address)
    for host, port in listen:
        if port != spec.port:
            continue
        ours = ipaddress.ip_address(host)
        if (
            ours == address
            or (ours.is_unspecified and (address.is_loopback or address.is_unspecified))
            or (ours.is_loopback and address.is_loopback)
        ):
            return f"{host}:{port}" if ours.version == 4 else f"[{host}]:{port}"
    return None


def _check_bootstrap(r: _Reader, fields: dict[str, yaml.Node], config: Config) -> None:
    unresolved = [h for h in r.by_hostname if not resolved_by_proxy(h[2], config)]
    if unresolved and not config.bootstrap:
        node, key, _spec = unresolved[0]
        raise r.fail(
            node,
            key,
            "an upstream given by hostname needs `bootstrap:` (resolvers given by IP address,"
            " e.g. [udp://9.9.9.9]) to find its address, or its address written as #IP"
            " (https://NAME/PATH#IP, tls://IP#NAME)",
        )
    items = r.items(fields["bootstrap"], "bootstrap") if "bootstrap" in fields else []
    for index, spec in enumerate(config.bootstrap):
        ours = own_listener(spec, config.listen)
        if ours is not None:
            raise r.fail(
                items[index],
                f"bootstrap[{index}]",
                f"expected a resolver other than stubby-py itself ({ours} is where it listens):"
                " upstreams are never resolved through ourselves",
            )
    if config.bootstrap_min_ttl > config.bootstrap_max_ttl:
        raise r.fail(
            fields["bootstrap_min_ttl"], "bootstrap_min_ttl", "expected at most bootstrap_max_ttl"
        )


def _groups(r: _Reader, node: yaml.Node) -> tuple[tuple[str, tuple[UpstreamSpec, ...]], ...]:
    groups = []
    for name, value in r.mapping(node, "upstream_groups", None).items():
        key = f"upstream_groups.{name}"
        if name == DEFAULT_GROUP:
            raise r.fail(value, key, f"{DEFAULT_GROUP!r} is the main pool (`upstreams`)")
        members = _upstreams(r, value, key)
        if not members:
            raise r.fail(value, key, "expected at least one upstream")
        groups.append((name, members))
    return tuple(groups)


def _rules(r: _Reader, node: yaml.Node) -> tuple[tuple[str, str], ...]:
    rules = []
    for domain, value in r.mapping(node, "rules", None).items():
        key = f"rules.{domain}"
        try:
            dns.name.from_text(domain)
        except dns.exception.DNSException:
            raise r.fail(value, key, "expected a domain name such as corp.example") from None
        rules.append((domain, r.text(value, key)))
    return tuple(rules)


def _check_rules(r: _Reader, fields: dict[str, yaml.Node], config: Config) -> None:
    known = {name for name, _ in config.upstream_groups} | {DEFAULT_GROUP}
    nodes = r.mapping(fields["rules"], "rules", None) if "rules" in fields else {}
    for domain, group in config.rules:
        if group not in known:
            raise r.fail(
                nodes[domain],
                f"rules.{domain}",
                f"unknown upstream group {group!r}; expected one of {', '.join(sorted(known))}",
            )


def _path_auto_or_off(reader: _Reader, node: yaml.Node, key: str) -> str | None:
    """A path, `auto`, or false (off)."""
    value = reader.scalar(node, key)
    if value is False:
        return None
    if not isinstance(value, str) or not value:
        raise reader.fail(node, key, f"expected a path, auto or false, got {value!r}")
    return value


def _optional_user(reader: _Reader, node: yaml.Node) -> str | None:
    """A user name, auto (a user of our own), root, or null/false: never change user."""
    value = reader.scalar(node, "user")
    if value is None or value is False:
        return None
    if not isinstance(value, str) or not value or ":" in value or "/" in value:
        raise reader.fail(node, "user", f"expected a user name or null, got {value!r}")
    return value


def _metrics_listen(reader: _Reader, node: yaml.Node) -> tuple[str, int] | None:
    """`IP:PORT`, or a bare port on 127.0.0.1; null or false: off."""
    value = reader.scalar(node, "metrics_listen")
    if value is None or value is False:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        value = f"127.0.0.1:{value}"
    if not isinstance(value, str):
        raise reader.fail(node, "metrics_listen", f"expected IP:PORT or a port, got {value!r}")
    has_port = "]:" in value if value.startswith("[") else value.count(":") == 1
    try:
        if not has_port:
            raise ValueError(f"expected IP:PORT (IPv6 as [ADDR]:PORT), got {value!r}")
        return parse_listen(value)
    except ValueError as exc:
        raise reader.fail(node, "metrics_listen", str(exc)) from None


def _is_null(node: yaml.Node) -> bool:
    return isinstance(node, yaml.ScalarNode) and node.tag.endswith(":null")


def parse_config(text: str, source: str) -> Config:
    reader = _Reader(source)
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise ConfigError(
            f"{source}{line}: not valid YAML: {getattr(exc, 'problem', exc)}"
        ) from None
    if root is None or _is_null(root):
        return with_defaults(Config(source=source))
    converters = _converters(reader)
    fields = reader.mapping(root, "", set(converters))
    for nullable in (
        "ca_file", "cache_file", "query_log", "trust_anchors", "bootstrap_file", "proxy",
        "tls_cert", "tls_key",
    ):  # fmt: skip
        if nullable in fields and _is_null(fields[nullable]):
            del fields[nullable]
    values = {name: converters[name](node) for name, node in fields.items()}
    values.update(split_listen(values["listen"]) if "listen" in values else {})
    config = Config(source=source, **values)
    _check_tls_files(reader, fields, config)
    _check_rules(reader, fields, config)
    _check_bootstrap(reader, fields, config)
    if config.proxy is not None:
        problem = _global_proxy_problem(config)
        if problem is not None:
            raise reader.fail(fields["proxy"], "proxy", problem)
    if "upstreams" in fields and not config.upstreams:
        raise reader.fail(fields["upstreams"], "upstreams", "expected at least one upstream")
    if config.cache_min_ttl > config.cache_max_ttl:
        raise reader.fail(
            fields["cache_min_ttl"], "cache_min_ttl", "expected at most cache_max_ttl"
        )
    if config.attempt_timeout > config.timeout:
        config = replace(config, attempt_timeout=config.timeout)
    return with_defaults(config)


def _check_tls_files(reader: _Reader, fields: dict[str, yaml.Node], config: Config) -> None:
    """An encrypted listener needs tls_cert and tls_key, and they must load together."""
    if not config.encrypted_listen:
        return
    for key in ("tls_cert", "tls_key"):
        if getattr(config, key) is None:
            index = next(
                i
                for i, item in enumerate(reader.items(fields["listen"], "listen"))
                if isinstance(parse_listen_uri(reader.scalar(item, "listen")), EncryptedListen)
            )
            item = reader.items(fields["listen"], "listen")[index]
            raise reader.fail(
                item,
                f"listen[{index}]",
                f"an encrypted listener needs `{key}` (a PEM file): set tls_cert and tls_key",
            )
    assert config.tls_cert is not None and config.tls_key is not None
    problem = tls_files_problem(config.tls_cert, config.tls_key)
    if problem is not None:
        raise reader.fail(fields["tls_cert"], "tls_cert", f"{config.tls_cert!r}: {problem}")


def _global_proxy_problem(config: Config) -> str | None:
    """An upstream the global proxy would apply to but that cannot go through it."""
    if config.proxy is None:
        return None
    if config.proxy.kind == "none":
        return "expected socks5://, socks5h:// or http:// (`none` is for one upstream)"
    pools = [("upstreams", config.upstreams)] + [
        (f"upstream_groups.{name}", members) for name, members in config.upstream_groups
    ]
    # the bootstrap resolvers go through the global proxy too: nothing is sent around it
    pools.append(("bootstrap", config.bootstrap))
    for key, specs in pools:
        for index, spec in enumerate(specs):
            problem = proxy_problem(spec, config.proxy) if spec.proxy is None else None
            if problem is not None and key == "bootstrap":
                problem = problem.replace(", or give it `proxy: none`", " or an encrypted one")
            if problem is not None:
                return f"{key}[{index}]: {problem}"
    return None


def with_defaults(config: Config) -> Config:
    if config.upstreams:
        return config
    return replace(config, upstreams=tuple(parse_upstream_uri(u) for u in DEFAULT_UPSTREAMS))


def load_config(path: str | None) -> Config:
    if path is None:
        return with_defaults(Config())
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the configuration: {exc.strerror}") from None
    return parse_config(text, path)


@dataclass(frozen=True, slots=True)
class Overrides:
    """Command-line options that replace parts of the configuration."""

    listen: tuple[str, ...] = ()
    upstreams: tuple[str, ...] = ()
    ca_file: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    trust_anchors: str | None = None
    dnssec: str | None = None
    bootstrap: tuple[str, ...] = ()
    #: --proxy: the global `proxy`
    proxy: str | None = None
    verbose: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


def apply_overrides(config: Config, overrides: Overrides) -> Config:
    changes: dict[str, Any] = {}
    try:
        changes.update(_listen_overrides(overrides))
        if overrides.upstreams:
            changes["upstreams"] = tuple(parse_upstream_uri(u) for u in overrides.upstreams)
        if overrides.ca_file:
            changes["ca_file"] = _ca_file(overrides.ca_file)
        if overrides.trust_anchors:
            changes["trust_anchors"] = _trust_anchor_file(overrides.trust_anchors)
        if overrides.dnssec:
            changes["dnssec"] = overrides.dnssec
        if overrides.bootstrap:
            changes["bootstrap"] = tuple(bootstrap_resolver(u) for u in overrides.bootstrap)
    except ValueError as exc:
        raise ConfigError(f"command line: {exc}") from None
    config = replace(config, **changes)
    changes = {}
    _check_tls_overrides(config)
    _check_bootstrap_overrides(config)
    if overrides.verbose:
        changes["log_level"] = "debug"
    return _override_proxy(replace(config, **changes), overrides.proxy)


def _listen_overrides(overrides: Overrides) -> dict[str, Any]:
    changes: dict[str, Any] = {}
    if overrides.listen:
        entries = tuple(parse_listen_uri(x) for x in overrides.listen)
        changes.update(split_listen(entries))
    if overrides.tls_cert:
        changes["tls_cert"] = _file(overrides.tls_cert)
    if overrides.tls_key:
        changes["tls_key"] = _file(overrides.tls_key)
    return changes


def _override_proxy(config: Config, uri: str | None) -> Config:
    """--proxy: the global proxy, checked against the upstreams it applies to."""
    if not uri:
        return config
    try:
        config = replace(config, proxy=parse_proxy_uri(uri))
    except ValueError as exc:
        raise ConfigError(f"command line: --proxy: {exc}") from None
    problem = _global_proxy_problem(config)
    if problem is not None:
        raise ConfigError(f"command line: --proxy: {problem}")
    return config


def _check_tls_overrides(config: Config) -> None:
    if not config.encrypted_listen:
        return
    if config.tls_cert is None or config.tls_key is None:
        raise ConfigError(
            f"command line: {config.encrypted_listen[0].label}: an encrypted listener needs"
            " --tls-cert FILE and --tls-key FILE (PEM)"
        )
    problem = tls_files_problem(config.tls_cert, config.tls_key)
    if problem is not None:
        raise ConfigError(f"command line: --tls-cert {config.tls_cert!r}: {problem}")


def _check_bootstrap_overrides(config: Config) -> None:
    """The rules of `_check_bootstrap` for what the command line changed."""
    specs = list(config.upstreams) + [s for _, group in config.upstream_groups for s in group]
    by_name = next(
        (s for s in specs if s.needs_bootstrap and not resolved_by_proxy(s, config)), None
    )
    if by_name is not None and not config.bootstrap:
        raise ConfigError(
            f"command line: {by_name.label}: an upstream given by hostname needs --bootstrap URI"
            " (a resolver given by IP address) or its address written as #IP"
        )
    for spec in config.bootstrap:
        ours = own_listener(spec, config.listen)
        if ours is not None:
            raise ConfigError(
                f"command line: bootstrap {spec.label}: expected a resolver other than stubby-py"
                f" itself ({ours} is where it listens)"
            )
    problem = _global_proxy_problem(config)
    if problem is not None:
        raise ConfigError(f"command line: proxy: {problem}")
