"""Configuration: one YAML file read into frozen dataclasses; every option has a default.

The file's keys are flat (`cache_size`, `hedge_min`, `tls_cert`); `Config` holds them in one
section per component that reads them (`config.cache`, `config.pool`, `config.listeners`, …), so
a component is handed its section whole, never a copy made field by field: the cache's
CacheLimits and the pool's PoolSettings are those sections. OPTIONS is the one table from a key
to its section field and its reader; choices are StrEnums, equal to the file's strings.

Errors name the file, the line, the key path and what was expected, e.g.
``config.yaml:7: upstreams[1].url: expected tls://, https://, h3://, quic://, udp:// or tcp://``.
"""

from __future__ import annotations

import base64
import enum
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

from stubby_py.core import dns64
from stubby_py.core.cache import CacheLimits
from stubby_py.core.errors import ConfigError
from stubby_py.core.pool import PoolSettings, PoolStrategy

TRANSPORT_PORTS = {"tls": 853, "https": 443, "h3": 443, "quic": 853, "udp": 53, "tcp": 53}
ENCRYPTED = frozenset({"tls", "https", "h3", "quic"})
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
    #: encrypted upstreams asked instead while this one cannot be connected to (port 853
    #: blocked, 443 open); authenticated as this one is (its ca_file, spki_pins and proxy)
    fallback: tuple[UpstreamSpec, ...] = ()

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
    (`https://IP:PORT/PATH`), DoH over HTTP/3 (`h3://IP:PORT/PATH`, UDP) or DoQ
    (`quic://IP:PORT`, UDP)."""

    scheme: str
    address: str
    port: int
    #: the DoH path (`https` and `h3` only)
    path: str = ""

    @property
    def label(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{self.scheme}://{host}:{self.port}{self.path}"


class DnssecMode(enum.StrEnum):
    """`dnssec`: validate answers (AD for secure, SERVFAIL for bogus) or pass them through."""

    VALIDATE = "validate"
    OFF = "off"


class Rejection(enum.StrEnum):
    """What a query that is not served gets: REFUSE answers REFUSED, DROP sends nothing."""

    REFUSE = "refuse"
    DROP = "drop"


class LogLevel(enum.StrEnum):
    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


class TlsVersion(enum.StrEnum):
    """The oldest TLS version spoken to upstreams."""

    TLS_1_2 = "1.2"
    TLS_1_3 = "1.3"


class TlsResumption(enum.StrEnum):
    """Whether DoT and DoH connections resume TLS sessions (transports/tls.py)."""

    #: on, unless this Python leaks each session it hands out (CPython gh-116810)
    AUTO = "auto"
    ON = "on"
    OFF = "off"


LOG_LEVELS = tuple(level.value for level in LogLevel)
STRATEGIES = tuple(strategy.value for strategy in PoolStrategy)
DNSSEC_MODES = tuple(mode.value for mode in DnssecMode)


@dataclass(frozen=True, slots=True)
class ListenerSettings:
    """Where clients reach us and what their connections may take (the listeners)."""

    #: addresses to listen on, UDP and TCP each (`listen` entries written as IP:PORT)
    addresses: tuple[tuple[str, int], ...] = (("127.0.0.1", 53), ("::1", 53))
    #: DoT, DoH and DoQ listeners (`listen` entries written as tls://, https:// or quic:// URIs)
    encrypted: tuple[EncryptedListen, ...] = ()
    #: the certificate chain and private key (PEM) the encrypted listeners present
    tls_cert: str | None = None
    tls_key: str | None = None
    #: replies on encrypted listeners to queries that carry EDNS Padding are padded to a
    #: multiple of this (RFC 8467 §4.1); 0 = never
    padding_block: int = 468
    tcp_idle_timeout: float = 10.0
    #: clients' TCP connections open at once, in total and from one client address
    tcp_max_connections: int = 512
    tcp_max_connections_per_client: int = 64
    #: listeners' own `allow` lists, by listener label (`listener_label`): each narrows the
    #: global `allow` on that listener; a listener not named here has none of its own
    own_allow: tuple[tuple[str, tuple[str, ...]], ...] = ()

    def allow_of(self, label: str) -> tuple[str, ...] | None:
        """The listener's own `allow` (None: only the global one applies)."""
        return next((networks for name, networks in self.own_allow if name == label), None)


@dataclass(frozen=True, slots=True)
class AccessSettings:
    """Which clients get answers, and how many (request admission)."""

    #: client networks that get answers; everyone else gets `deny_action`
    allow: tuple[str, ...] = ("127.0.0.0/8", "::1/128")
    #: clients outside `allow`: REFUSE (REFUSED, EDE 18) or DROP (no answer)
    deny_action: Rejection = Rejection.REFUSE
    #: per-client queries per second (token bucket); 0 turns rate limiting off
    rate_limit: float = 200.0
    rate_limit_burst: int = 400
    #: over the limit: DROP (no answer) or REFUSE (REFUSED)
    rate_limit_action: Rejection = Rejection.DROP
    #: client networks never rate limited (the machine's own programs)
    rate_limit_exempt: tuple[str, ...] = ("127.0.0.0/8", "::1/128")
    #: an IPv6 client is the network of this many leading bits of its address, for the per-client
    #: TCP cap and the rate limit (one host commonly has a whole /64 to pick addresses from)
    ipv6_client_prefix: int = 64


@dataclass(frozen=True, slots=True)
class ForwardingSettings:
    """Where queries go (the query path and its upstream groups)."""

    #: the main pool, the group DEFAULT_GROUP
    upstreams: tuple[UpstreamSpec, ...] = ()
    #: named upstream groups for forwarding rules: (name, upstreams)
    groups: tuple[tuple[str, tuple[UpstreamSpec, ...]], ...] = ()
    #: forwarding rules: (domain suffix, group name); the most specific suffix wins
    rules: tuple[tuple[str, str], ...] = ()
    #: overall deadline for one client query, seconds (glibc gives up after 5)
    timeout: float = 2.5
    #: ask another upstream when one answers SERVFAIL or REFUSED
    retry_servfail: bool = True


@dataclass(frozen=True, slots=True)
class TransportSettings:
    """How upstream connections are made: what every transport is built with."""

    #: longest wait for one upstream before the next is tried, seconds
    attempt_timeout: float = 1.5
    #: close an idle upstream connection after this many seconds (or the server's keepalive)
    idle_timeout: float = 30.0
    #: EDNS padding block for encrypted queries (RFC 8467 §4.1); 0 turns padding off
    padding_block: int = 128
    tls_min_version: TlsVersion = TlsVersion.TLS_1_2
    #: resume TLS sessions over TCP (DoT, DoH); QUIC's tickets are always used
    tls_resumption: TlsResumption = TlsResumption.AUTO
    #: CA bundle for every upstream that does not name its own; None = system trust store
    ca_file: str | None = None
    #: reach every upstream through this proxy unless it names its own (or `none`); None: direct
    proxy: ProxySpec | None = None


@dataclass(frozen=True, slots=True)
class DnssecSettings:
    """The validator and its trust anchors."""

    mode: DnssecMode = DnssecMode.VALIDATE
    #: a file of DS/DNSKEY records in zone-file form replacing the built-in root anchors
    trust_anchors: str | None = None
    #: seconds a signature may be past its expiry or before its inception (clock error allowance)
    clock_skew: int = 3600
    #: NSEC3 with more hash iterations than this is treated as insecure (RFC 9276)
    nsec3_max_iterations: int = 150
    #: follow the trust anchors' key rollovers (RFC 5011), state kept in the state directory
    trust_anchor_updates: bool = True
    #: answer NXDOMAIN/NODATA proven by validated NSEC/NSEC3 records already held (RFC 8198)
    aggressive_nsec: bool = True


@dataclass(frozen=True, slots=True)
class BootstrapSettings:
    """How the addresses of upstreams given by hostname are found."""

    #: resolvers, given by IP address, that find the addresses of upstreams given by hostname
    resolvers: tuple[UpstreamSpec, ...] = ()
    #: TTL clamps for the addresses the bootstrap resolvers give, seconds
    min_ttl: int = 60
    max_ttl: int = 86_400
    #: where the last good addresses are kept: a path; "auto" = $STATE_DIRECTORY/bootstrap.json
    #: under systemd's StateDirectory=, else nowhere; None = nowhere
    file: str | None = "auto"


@dataclass(frozen=True, slots=True)
class ServiceSettings:
    """The running daemon: its user, logs, control and metrics endpoints, state."""

    #: started as root (and not by socket activation into a sandbox): after binding, run as this
    #: user; "auto" = the system user stubby-py (created if missing); "root" or None = stay root
    user: str | None = "auto"
    log_level: LogLevel = LogLevel.INFO
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
    #: where the cache is saved at shutdown and reloaded at start: a path; "auto" =
    #: $STATE_DIRECTORY/cache.bin under systemd's StateDirectory=, else nowhere; None = nowhere
    cache_file: str | None = "auto"
    #: renew upstream connections after network changes and resume from suspend (Linux)
    watch_network: bool = True


@dataclass(frozen=True, slots=True)
class RoadSettings:
    """A laptop on other people's networks (README: "On the road")."""

    #: the resolver the network offers, known for the captive-portal check only (never an
    #: upstream): "auto" (learned from NetworkManager, systemd, resolv.conf), "off", or
    #: "udp://IP[:PORT]"
    network_resolver: str = "auto"
    #: suspect a captive portal when the upstreams cannot be reached but the network resolver
    #: answers: "auto" or "off"
    captive_portal: str = "auto"
    #: DNS64 (RFC 6147) on IPv6-only networks: "auto" (the NAT64 prefix from the routers'
    #: advertisements, RFC 8781, else learned through the network resolver, RFC 7050), "off",
    #: or a prefix such as "64:ff9b::/96"
    dns64: str = "auto"
    #: DNS64's exclusions beyond the built-in ones: IPv4 ranges whose A records are not mapped,
    #: IPv6 ranges whose AAAA records count as none (RFC 6147 §5.1.4)
    dns64_exclude: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Config:
    """The whole configuration, one section per component that reads it. The file's keys are
    flat (`cache_size`, `hedge_min`); OPTIONS says which section field each one sets, and
    `with_options` sets them by those names."""

    listeners: ListenerSettings = field(default_factory=ListenerSettings)
    access: AccessSettings = field(default_factory=AccessSettings)
    forwarding: ForwardingSettings = field(default_factory=ForwardingSettings)
    transport: TransportSettings = field(default_factory=TransportSettings)
    pool: PoolSettings = field(default_factory=PoolSettings)
    cache: CacheLimits = field(default_factory=CacheLimits)
    dnssec: DnssecSettings = field(default_factory=DnssecSettings)
    bootstrap: BootstrapSettings = field(default_factory=BootstrapSettings)
    service: ServiceSettings = field(default_factory=ServiceSettings)
    road: RoadSettings = field(default_factory=RoadSettings)
    #: where the configuration came from (for messages)
    source: str = "<built-in defaults>"

    @classmethod
    def from_options(cls, **options: Any) -> Config:
        """The defaults with `options` (named as in `with_options`) set."""
        return cls().with_options(**options)

    def with_options(self, **options: Any) -> Config:
        """This configuration with options set by their names in the file (`cache_size=0`,
        `strategy="fastest"`), plus `encrypted_listen` (the `listen` entries that are URIs) and
        `source`. Values are as the file's reader makes them: `listen` a tuple of (address,
        port), `upstreams` of UpstreamSpec, choices as their strings."""
        changes: dict[str, dict[str, Any]] = {}
        top: dict[str, Any] = {}
        for name, value in options.items():
            if name == "source":
                top["source"] = value
                continue
            option = OPTIONS.get(name)
            if option is None:
                raise TypeError(f"unknown configuration option {name!r}")
            converted = value if option.convert is None else option.convert(value)
            changes.setdefault(option.section, {})[option.field] = converted
        for section, fields in changes.items():
            top[section] = replace(getattr(self, section), **fields)
        return replace(self, **top)

    def option(self, name: str) -> Any:
        """The value of the option `name` (a key of the file, or `encrypted_listen`), in the
        form `with_options` takes it."""
        option = OPTIONS[name]
        value = getattr(getattr(self, option.section), option.field)
        return value if option.revert is None else option.revert(value)


DEFAULT_UPSTREAMS = (
    "tls://9.9.9.9#dns.quad9.net",
    "tls://149.112.112.112#dns.quad9.net",
    "tls://1.1.1.1#cloudflare-dns.com",
    "tls://1.0.0.1#cloudflare-dns.com",
    "tls://[2620:fe::fe]#dns.quad9.net",
    "tls://[2606:4700:4700::1111]#cloudflare-dns.com",
)
#: the built-in pool's fallbacks: each provider's DoH on port 443, same address and name, for
#: networks that block port 853 (README: "On the road")
DEFAULT_FALLBACKS = {
    "tls://9.9.9.9#dns.quad9.net": "https://dns.quad9.net/dns-query#9.9.9.9",
    "tls://149.112.112.112#dns.quad9.net": "https://dns.quad9.net/dns-query#149.112.112.112",
    "tls://1.1.1.1#cloudflare-dns.com": "https://cloudflare-dns.com/dns-query#1.1.1.1",
    "tls://1.0.0.1#cloudflare-dns.com": "https://cloudflare-dns.com/dns-query#1.0.0.1",
    "tls://[2620:fe::fe]#dns.quad9.net": "https://dns.quad9.net/dns-query#2620:fe::fe",
    "tls://[2606:4700:4700::1111]#cloudflare-dns.com":
        "https://cloudflare-dns.com/dns-query#2606:4700:4700::1111",
}  # fmt: skip


def default_upstreams() -> tuple[UpstreamSpec, ...]:
    """The built-in pool, each upstream with its DoH fallback."""
    return tuple(
        with_fallback(parse_upstream_uri(uri), (parse_upstream_uri(DEFAULT_FALLBACKS[uri]),))
        for uri in DEFAULT_UPSTREAMS
    )


def with_fallback(spec: UpstreamSpec, fallback: tuple[UpstreamSpec, ...]) -> UpstreamSpec:
    """`spec` with these fallbacks, each authenticated as `spec` is (its CA file, pins, proxy):
    a fallback is another door to the same resolver, never a weaker one."""
    for other in fallback:
        problem = fallback_problem(spec, other)
        if problem is not None:
            raise ValueError(problem)
    inherited = tuple(
        replace(
            other,
            ca_file=spec.ca_file,
            spki_pins=spec.spki_pins,
            cert_hashes=spec.cert_hashes,
            proxy=spec.proxy,
        )
        for other in fallback
    )
    return replace(spec, fallback=inherited)


def fallback_problem(spec: UpstreamSpec, fallback: UpstreamSpec) -> str | None:
    """Why `fallback` cannot stand in for `spec`, or None."""
    if not spec.is_encrypted:
        return "a fallback is for an encrypted upstream (a plain one has nothing to protect)"
    if not fallback.is_encrypted:
        return (
            f"a fallback must be encrypted (tls://, https://, h3://, quic://), not"
            f" {fallback.transport}://: it never gives up encryption"
        )
    if fallback.transport == spec.transport and fallback.port == spec.port:
        return "a fallback on the same transport and port is blocked where its primary is"
    return None


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
    proxy = spec.proxy if spec.proxy is not None else config.transport.proxy
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
    `https://IP[:PORT][/PATH]` (DoH over HTTP/2, port 443, path /dns-query),
    `h3://IP[:PORT][/PATH]` (DoH over HTTP/3, UDP, the same defaults) or
    `quic://IP[:PORT]` (DoQ, UDP port 853)."""
    scheme, sep, rest = text.partition("://")
    if not sep:
        return parse_listen(text)
    if scheme not in ("tls", "https", "h3", "quic"):
        raise ValueError(
            "expected IP:PORT, tls://IP:PORT, https://IP:PORT/PATH, h3://IP:PORT/PATH or "
            f"quic://IP:PORT, got {text!r}"
        )
    address, slash, path = rest.partition("/")
    path = slash + path
    if scheme in ("tls", "quic") and path:
        raise ValueError(f"expected {scheme}://IP:PORT (no path), got {text!r}")
    if "?" in path or "#" in path or " " in path:
        raise ValueError(f"expected a plain path in {text!r}")
    doh = scheme in ("https", "h3")
    default_port = DEFAULT_DOH_PORT if doh else DEFAULT_DOT_PORT
    try:
        host, port = parse_listen(address, default_port)
    except ValueError:
        raise ValueError(
            f"expected {scheme}://IP:PORT{'/PATH' if doh else ''}"
            f" (IPv6 as [ADDR]:PORT), got {text!r}"
        ) from None
    if doh and path in ("", "/"):
        path = DEFAULT_DOH_PATH
    return EncryptedListen(scheme, host, port, path if doh else "")


@dataclass(frozen=True, slots=True)
class NarrowedListen:
    """A `listen` entry written as a mapping: the listener and its own `allow`."""

    listener: tuple[str, int] | EncryptedListen
    allow: tuple[str, ...]


def listener_label(listener: tuple[str, int] | EncryptedListen) -> str:
    """`127.0.0.1:53`, `[::1]:53` or the URI: what names a listener (`own_allow`)."""
    if isinstance(listener, EncryptedListen):
        return listener.label
    host, port = listener
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def split_listen(
    entries: tuple[tuple[str, int] | EncryptedListen | NarrowedListen, ...],
) -> dict[str, Any]:
    """`listen` entries as the Config fields `listen` (plain), `encrypted_listen` and
    `listen_allow` (the listeners' own `allow` lists)."""
    listeners = [e.listener if isinstance(e, NarrowedListen) else e for e in entries]
    return {
        "listen": tuple(e for e in listeners if not isinstance(e, EncryptedListen)),
        "encrypted_listen": tuple(e for e in listeners if isinstance(e, EncryptedListen)),
        "listen_allow": tuple(
            (listener_label(e.listener), e.allow) for e in entries if isinstance(e, NarrowedListen)
        ),
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


_UPSTREAM_KEYS = {"url", "name", "spki_pins", "ca_file", "method", "proxy", "fallback"}
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
    return _fallback(reader, fields, f"{key}.fallback", replace(spec, **changes))


def _fallback(
    reader: _Reader, fields: dict[str, yaml.Node], key: str, spec: UpstreamSpec
) -> UpstreamSpec:
    """An upstream's `fallback`: a list of encrypted upstream URIs."""
    node = fields.get("fallback")
    if node is None:
        return spec
    others = []
    for index, item in enumerate(reader.items(node, key)):
        other = reader.converted(item, f"{key}[{index}]", parse_upstream_uri)
        problem = fallback_problem(spec, other)
        if problem is not None:
            raise reader.fail(item, f"{key}[{index}]", problem)
        if other.needs_bootstrap:
            reader.by_hostname.append((item, f"{key}[{index}]", other))
        others.append(other)
    return with_fallback(spec, tuple(others))


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


_LISTEN_KEYS = {"url", "allow"}


def _listen(
    r: _Reader, node: yaml.Node, key: str
) -> tuple[tuple[str, int] | EncryptedListen | NarrowedListen, ...]:
    """`listen`: each entry IP:PORT or a URI, or a mapping of `url` and the listener's own
    `allow` (it narrows the global `allow` on that listener)."""
    entries: list[tuple[str, int] | EncryptedListen | NarrowedListen] = []
    labels: dict[str, int] = {}
    for index, item in enumerate(r.items(node, key)):
        item_key = f"{key}[{index}]"
        listener: tuple[str, int] | EncryptedListen
        entry: tuple[str, int] | EncryptedListen | NarrowedListen
        if isinstance(item, yaml.ScalarNode):
            listener = entry = r.converted(item, item_key, parse_listen_uri)
        else:
            fields = r.mapping(item, item_key, _LISTEN_KEYS)
            if "url" not in fields:
                raise r.fail(item, item_key, "expected a url, e.g. tls://192.168.1.2:853")
            listener = r.converted(fields["url"], f"{item_key}.url", parse_listen_uri)
            entry = listener
            if "allow" in fields:
                allow = _list(
                    r, fields["allow"], f"{item_key}.allow",
                    lambda m, k: r.converted(m, k, _network),
                )  # fmt: skip
                if not allow:
                    raise r.fail(
                        fields["allow"], f"{item_key}.allow",
                        "expected at least one network such as 192.168.1.0/24",
                    )  # fmt: skip
                entry = NarrowedListen(listener, allow)
        label = listener_label(listener)
        twin = labels.setdefault(label, index)
        if twin != index and NarrowedListen in (type(entry), type(entries[twin])):
            raise r.fail(item, item_key, f"the same listener as {key}[{twin}] ({label})")
        entries.append(entry)
    return tuple(entries)


def _listen_url(r: _Reader, item: yaml.Node) -> str:
    """The URI of a `listen` entry already read by `_listen` (a string or a mapping's url)."""
    if isinstance(item, yaml.MappingNode):
        item = r.mapping(item, "listen", _LISTEN_KEYS)["url"]
    return r.text(item, "listen")


def _check_listen_allow(r: _Reader, fields: dict[str, yaml.Node], config: Config) -> None:
    """A listener's own `allow` only narrows the global one: a network in it that no global
    network overlaps would admit no one, so it is taken for a mistake."""
    if not config.listeners.own_allow:
        return
    overall = [ipaddress.ip_network(n) for n in config.access.allow]
    for index, item in enumerate(r.items(fields["listen"], "listen")):
        if not isinstance(item, yaml.MappingNode):
            continue
        own = r.mapping(item, f"listen[{index}]", _LISTEN_KEYS).get("allow")
        if own is None:
            continue
        for at, network_node in enumerate(r.items(own, f"listen[{index}].allow")):
            network = ipaddress.ip_network(_network(r.text(network_node, "allow")))
            if not any(
                network.version == other.version and network.overlaps(other)
                for other in overall
            ):
                raise r.fail(
                    network_node,
                    f"listen[{index}].allow[{at}]",
                    f"a network inside the global `allow` ({', '.join(config.access.allow)}):"
                    f" a listener's own `allow` only narrows it, and {network} is outside it;"
                    " add it to `allow` too",
                )


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


def _check_network_resolver(r: _Reader, fields: dict[str, yaml.Node], config: Config) -> None:
    """A named network resolver must not be ourselves: a check name would come back to us."""
    setting = config.road.network_resolver
    if not setting.startswith("udp://"):
        return
    ours = own_listener(parse_upstream_uri(setting), config.listeners.addresses)
    if ours is not None:
        raise r.fail(
            fields["network_resolver"],
            "network_resolver",
            f"expected the network's resolver, not stubby-py itself ({ours} is where it listens)",
        )


def _check_bootstrap(r: _Reader, fields: dict[str, yaml.Node], config: Config) -> None:
    unresolved = [h for h in r.by_hostname if not resolved_by_proxy(h[2], config)]
    if unresolved and not config.bootstrap.resolvers:
        node, key, _spec = unresolved[0]
        raise r.fail(
            node,
            key,
            "an upstream given by hostname needs `bootstrap:` (resolvers given by IP address,"
            " e.g. [udp://9.9.9.9]) to find its address, or its address written as #IP"
            " (https://NAME/PATH#IP, tls://IP#NAME)",
        )
    items = r.items(fields["bootstrap"], "bootstrap") if "bootstrap" in fields else []
    for index, spec in enumerate(config.bootstrap.resolvers):
        ours = own_listener(spec, config.listeners.addresses)
        if ours is not None:
            raise r.fail(
                items[index],
                f"bootstrap[{index}]",
                f"expected a resolver other than stubby-py itself ({ours} is where it listens):"
                " upstreams are never resolved through ourselves",
            )
    if config.bootstrap.min_ttl > config.bootstrap.max_ttl:
        raise r.fail(
            fields["bootstrap_min_ttl"], "bootstrap_min_ttl", "expected at most bootstrap_max_ttl"
        )


def _groups(
    r: _Reader, node: yaml.Node, key: str
) -> tuple[tuple[str, tuple[UpstreamSpec, ...]], ...]:
    groups = []
    for name, value in r.mapping(node, key, None).items():
        member_key = f"{key}.{name}"
        if name == DEFAULT_GROUP:
            raise r.fail(value, member_key, f"{DEFAULT_GROUP!r} is the main pool (`upstreams`)")
        members = _upstreams(r, value, member_key)
        if not members:
            raise r.fail(value, member_key, "expected at least one upstream")
        groups.append((name, members))
    return tuple(groups)


def _rules(r: _Reader, node: yaml.Node, key: str) -> tuple[tuple[str, str], ...]:
    rules = []
    for domain, value in r.mapping(node, key, None).items():
        rule_key = f"{key}.{domain}"
        try:
            dns.name.from_text(domain)
        except dns.exception.DNSException:
            raise r.fail(value, rule_key, "expected a domain name such as corp.example") from None
        rules.append((domain, r.text(value, rule_key)))
    return tuple(rules)


def _check_rules(r: _Reader, fields: dict[str, yaml.Node], config: Config) -> None:
    known = {name for name, _ in config.forwarding.groups} | {DEFAULT_GROUP}
    nodes = r.mapping(fields["rules"], "rules", None) if "rules" in fields else {}
    for domain, group in config.forwarding.rules:
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


def network_resolver_setting(text: str) -> str:
    """`network_resolver`: auto, off or udp://IP[:PORT] (plain DNS: it is the network's own)."""
    if text in ("auto", "off"):
        return text
    spec = parse_upstream_uri(text) if text.startswith("udp://") else None
    if spec is None or spec.needs_bootstrap:
        raise ValueError(f"expected auto, off or udp://IP[:PORT], got {text!r}")
    return text


def _auto_or_off(convert: Callable[[str], str]) -> Read:
    """A choice that may be `off`, which YAML reads as false."""

    def read(reader: _Reader, node: yaml.Node, key: str) -> str:
        value = reader.scalar(node, key)
        if value is False:
            return "off"
        if not isinstance(value, str):
            raise reader.fail(node, key, f"expected auto or off, got {value!r}")
        try:
            return convert(value)
        except ValueError as exc:
            raise reader.fail(node, key, str(exc)) from None

    return read


def _portal_setting(text: str) -> str:
    if text not in ("auto", "off"):
        raise ValueError(f"expected auto or off, got {text!r}")
    return text


def _optional_user(reader: _Reader, node: yaml.Node, key: str) -> str | None:
    """A user name, auto (a user of our own), root, or null/false: never change user."""
    value = reader.scalar(node, key)
    if value is None or value is False:
        return None
    if not isinstance(value, str) or not value or ":" in value or "/" in value:
        raise reader.fail(node, key, f"expected a user name or null, got {value!r}")
    return value


def _metrics_listen(reader: _Reader, node: yaml.Node, key: str) -> tuple[str, int] | None:
    """`IP:PORT`, or a bare port on 127.0.0.1; null or false: off."""
    value = reader.scalar(node, key)
    if value is None or value is False:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        value = f"127.0.0.1:{value}"
    if not isinstance(value, str):
        raise reader.fail(node, key, f"expected IP:PORT or a port, got {value!r}")
    has_port = "]:" in value if value.startswith("[") else value.count(":") == 1
    try:
        if not has_port:
            raise ValueError(f"expected IP:PORT (IPv6 as [ADDR]:PORT), got {value!r}")
        return parse_listen(value)
    except ValueError as exc:
        raise reader.fail(node, key, str(exc)) from None


# --- the file's options: where each one lives in Config, and how it is read -------------------

#: reads one option's value node; the key is the option's name, for errors
Read = Callable[[_Reader, yaml.Node, str], Any]


@dataclass(frozen=True, slots=True)
class Option:
    """One flat option of the file: the Config section and field it sets, how the file's value
    is read, and how a value in the reader's form becomes the field's."""

    section: str
    field: str
    #: None: not a key of the file (`encrypted_listen` comes from `listen`)
    read: Read | None = None
    convert: Callable[[Any], Any] | None = None
    #: the field's value in the reader's form again, where `convert` is more than a type
    revert: Callable[[Any], Any] | None = None
    #: `null` in the file leaves the default
    nullable: bool = False


def _whole(low: int, high: int) -> Read:
    return lambda r, node, key: r.integer(node, key, low, high)


def _number(low: float, high: float) -> Read:
    return lambda r, node, key: r.number(node, key, low, high)


def _choice(*options: str) -> Read:
    return lambda r, node, key: r.choice(node, key, options)


def _each(convert: Callable[[str], Any]) -> Read:
    return lambda r, node, key: _list(r, node, key, lambda m, k: r.converted(m, k, convert))


def _converted(convert: Callable[[str], Any]) -> Read:
    return lambda r, node, key: r.converted(node, key, convert)


def _boolean(r: _Reader, node: yaml.Node, key: str) -> bool:
    return r.boolean(node, key)


def _text(r: _Reader, node: yaml.Node, key: str) -> str:
    return r.text(node, key)


def _mebibytes(value: int) -> int:
    return value << 20


def _in_mebibytes(value: int) -> int:
    return value >> 20


#: every option, by its name in the file; the keys a file may set are those with `read`
OPTIONS: dict[str, Option] = {
    "listen": Option("listeners", "addresses", _listen),
    "encrypted_listen": Option("listeners", "encrypted"),
    "listen_allow": Option("listeners", "own_allow"),
    "tls_cert": Option("listeners", "tls_cert", _converted(_file), nullable=True),
    "tls_key": Option("listeners", "tls_key", _converted(_file), nullable=True),
    "listen_padding_block": Option("listeners", "padding_block", _whole(0, 4096)),
    "tcp_idle_timeout": Option("listeners", "tcp_idle_timeout", _number(0.1, 3600)),
    "tcp_max_connections": Option("listeners", "tcp_max_connections", _whole(1, 100_000)),
    "tcp_max_connections_per_client": Option(
        "listeners", "tcp_max_connections_per_client", _whole(1, 100_000)
    ),
    "allow": Option("access", "allow", _each(_network)),
    "deny_action": Option(
        "access", "deny_action", _choice("refuse", "drop"), convert=Rejection
    ),
    "rate_limit": Option("access", "rate_limit", _number(0, 1_000_000)),
    "rate_limit_burst": Option("access", "rate_limit_burst", _whole(1, 1_000_000)),
    "rate_limit_action": Option(
        "access", "rate_limit_action", _choice("drop", "refuse"), convert=Rejection
    ),
    "rate_limit_exempt": Option("access", "rate_limit_exempt", _each(_network)),
    "ipv6_client_prefix": Option("access", "ipv6_client_prefix", _whole(16, 128)),
    "upstreams": Option("forwarding", "upstreams", _upstreams),
    "upstream_groups": Option("forwarding", "groups", _groups),
    "rules": Option("forwarding", "rules", _rules),
    "timeout": Option("forwarding", "timeout", _number(0.1, 30)),
    "retry_servfail": Option("forwarding", "retry_servfail", _boolean),
    "attempt_timeout": Option("transport", "attempt_timeout", _number(0.05, 30)),
    "upstream_idle_timeout": Option("transport", "idle_timeout", _number(0.1, 3600)),
    "padding_block_size": Option("transport", "padding_block", _whole(0, 512)),
    "tls_min_version": Option(
        "transport", "tls_min_version", _choice("1.2", "1.3"), convert=TlsVersion
    ),
    "tls_resumption": Option(
        "transport", "tls_resumption", _choice("auto", "on", "off"), convert=TlsResumption
    ),
    "ca_file": Option("transport", "ca_file", _converted(_ca_file), nullable=True),
    "proxy": Option("transport", "proxy", _proxy, nullable=True),
    "strategy": Option("pool", "strategy", _choice(*STRATEGIES), convert=PoolStrategy),
    "parallel_fanout": Option("pool", "fanout", _whole(2, 8)),
    "fastest_explore": Option("pool", "explore", _number(0.0, 0.5)),
    "hedge": Option("pool", "hedge", _boolean),
    "hedge_percentile": Option("pool", "hedge_percentile", _number(50, 99.9)),
    "hedge_min": Option("pool", "hedge_min", _number(0.001, 10)),
    "hedge_max": Option("pool", "hedge_max", _number(0.001, 10)),
    "failures_to_down": Option("pool", "failures_to_down", _whole(1, 100)),
    "backoff_min": Option("pool", "backoff_min", _number(0.01, 60)),
    "backoff_max": Option("pool", "backoff_max", _number(0.01, 3600)),
    "probe_interval": Option("pool", "probe_interval", _number(0, 86_400)),
    "cache_size": Option("cache", "max_entries", _whole(0, 10_000_000)),
    "cache_max_memory": Option(
        "cache", "max_bytes", _whole(1, 65_536), convert=_mebibytes, revert=_in_mebibytes
    ),
    "cache_min_ttl": Option("cache", "min_ttl", _whole(0, 86_400)),
    "cache_max_ttl": Option("cache", "max_ttl", _whole(1, MAX_TTL)),
    "cache_negative_max_ttl": Option("cache", "negative_max_ttl", _whole(0, MAX_TTL)),
    "serve_stale": Option("cache", "serve_stale", _boolean),
    "stale_window": Option("cache", "stale_window", _whole(0, 30 * 86_400)),
    "prefetch": Option("cache", "prefetch", _boolean),
    "dnssec": Option("dnssec", "mode", _choice(*DNSSEC_MODES), convert=DnssecMode),
    "trust_anchors": Option(
        "dnssec", "trust_anchors", _converted(_trust_anchor_file), nullable=True
    ),
    "dnssec_clock_skew": Option("dnssec", "clock_skew", _whole(0, 86_400)),
    "nsec3_max_iterations": Option("dnssec", "nsec3_max_iterations", _whole(0, 65_535)),
    "trust_anchor_updates": Option("dnssec", "trust_anchor_updates", _boolean),
    "aggressive_nsec": Option("dnssec", "aggressive_nsec", _boolean),
    "bootstrap": Option("bootstrap", "resolvers", _each(bootstrap_resolver)),
    "bootstrap_min_ttl": Option("bootstrap", "min_ttl", _whole(1, 86_400)),
    "bootstrap_max_ttl": Option("bootstrap", "max_ttl", _whole(1, 7 * 86_400)),
    "bootstrap_file": Option("bootstrap", "file", _path_auto_or_off, nullable=True),
    "user": Option("service", "user", _optional_user),
    "log_level": Option("service", "log_level", _choice(*LOG_LEVELS), convert=LogLevel),
    "control_socket": Option("service", "control_socket", _path_auto_or_off),
    "metrics_listen": Option("service", "metrics_listen", _metrics_listen),
    "metrics_allow": Option("service", "metrics_allow", _each(_network)),
    "metrics_max_connections": Option("service", "metrics_max_connections", _whole(1, 1024)),
    "query_log": Option("service", "query_log", _text, nullable=True),
    "cache_file": Option("service", "cache_file", _path_auto_or_off, nullable=True),
    "watch_network": Option("service", "watch_network", _boolean),
    "network_resolver": Option(
        "road", "network_resolver", _auto_or_off(network_resolver_setting)
    ),
    "captive_portal": Option("road", "captive_portal", _auto_or_off(_portal_setting)),
    "dns64": Option("road", "dns64", _auto_or_off(dns64.parse_prefix_setting)),
    "dns64_exclude": Option("road", "dns64_exclude", _each(_network)),
}
#: how each key the file may set is read
_READERS: dict[str, Read] = {name: o.read for name, o in OPTIONS.items() if o.read is not None}


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
    fields = {
        name: node
        for name, node in reader.mapping(root, "", set(_READERS)).items()
        if not (OPTIONS[name].nullable and _is_null(node))
    }
    values = {name: _READERS[name](reader, node, name) for name, node in fields.items()}
    values.update(split_listen(values["listen"]) if "listen" in values else {})
    config = Config.from_options(source=source, **values)
    _check_tls_files(reader, fields, config)
    _check_listen_allow(reader, fields, config)
    _check_rules(reader, fields, config)
    _check_bootstrap(reader, fields, config)
    _check_network_resolver(reader, fields, config)
    if config.transport.proxy is not None:
        problem = _global_proxy_problem(config)
        if problem is not None:
            raise reader.fail(fields["proxy"], "proxy", problem)
    if "upstreams" in fields and not config.forwarding.upstreams:
        raise reader.fail(fields["upstreams"], "upstreams", "expected at least one upstream")
    if config.cache.min_ttl > config.cache.max_ttl:
        raise reader.fail(
            fields["cache_min_ttl"], "cache_min_ttl", "expected at most cache_max_ttl"
        )
    if config.transport.attempt_timeout > config.forwarding.timeout:
        config = config.with_options(attempt_timeout=config.forwarding.timeout)
    return with_defaults(config)


def _check_tls_files(reader: _Reader, fields: dict[str, yaml.Node], config: Config) -> None:
    """An encrypted listener needs tls_cert and tls_key, and they must load together."""
    listeners = config.listeners
    if not listeners.encrypted:
        return
    for key, path in (("tls_cert", listeners.tls_cert), ("tls_key", listeners.tls_key)):
        if path is None:
            index = next(
                i
                for i, item in enumerate(reader.items(fields["listen"], "listen"))
                if isinstance(parse_listen_uri(_listen_url(reader, item)), EncryptedListen)
            )
            item = reader.items(fields["listen"], "listen")[index]
            raise reader.fail(
                item,
                f"listen[{index}]",
                f"an encrypted listener needs `{key}` (a PEM file): set tls_cert and tls_key",
            )
    assert listeners.tls_cert is not None and listeners.tls_key is not None
    problem = tls_files_problem(listeners.tls_cert, listeners.tls_key)
    if problem is not None:
        raise reader.fail(fields["tls_cert"], "tls_cert", f"{listeners.tls_cert!r}: {problem}")


def _global_proxy_problem(config: Config) -> str | None:
    """An upstream the global proxy would apply to but that cannot go through it."""
    if config.transport.proxy is None:
        return None
    if config.transport.proxy.kind == "none":
        return "expected socks5://, socks5h:// or http:// (`none` is for one upstream)"
    pools = [("upstreams", config.forwarding.upstreams)] + [
        (f"upstream_groups.{name}", members) for name, members in config.forwarding.groups
    ]
    # the bootstrap resolvers go through the global proxy too: nothing is sent around it
    pools.append(("bootstrap", config.bootstrap.resolvers))
    for key, specs in pools:
        for index, spec in enumerate(specs):
            problem = proxy_problem(spec, config.transport.proxy) if spec.proxy is None else None
            if problem is not None and key == "bootstrap":
                problem = problem.replace(", or give it `proxy: none`", " or an encrypted one")
            if problem is not None:
                return f"{key}[{index}]: {problem}"
    return None


def with_defaults(config: Config) -> Config:
    if config.forwarding.upstreams:
        return config
    return config.with_options(upstreams=default_upstreams())


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
    config = config.with_options(**changes)
    _check_tls_overrides(config)
    _check_bootstrap_overrides(config)
    if overrides.verbose:
        config = config.with_options(log_level="debug")
    return _override_proxy(config, overrides.proxy)


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
        config = config.with_options(proxy=parse_proxy_uri(uri))
    except ValueError as exc:
        raise ConfigError(f"command line: --proxy: {exc}") from None
    problem = _global_proxy_problem(config)
    if problem is not None:
        raise ConfigError(f"command line: --proxy: {problem}")
    return config


def _check_tls_overrides(config: Config) -> None:
    listeners = config.listeners
    if not listeners.encrypted:
        return
    if listeners.tls_cert is None or listeners.tls_key is None:
        raise ConfigError(
            f"command line: {listeners.encrypted[0].label}: an encrypted listener needs"
            " --tls-cert FILE and --tls-key FILE (PEM)"
        )
    problem = tls_files_problem(listeners.tls_cert, listeners.tls_key)
    if problem is not None:
        raise ConfigError(f"command line: --tls-cert {listeners.tls_cert!r}: {problem}")


def _check_bootstrap_overrides(config: Config) -> None:
    """The rules of `_check_bootstrap` for what the command line changed."""
    forwarding = config.forwarding
    specs = list(forwarding.upstreams) + [s for _, group in forwarding.groups for s in group]
    by_name = next(
        (s for s in specs if s.needs_bootstrap and not resolved_by_proxy(s, config)), None
    )
    if by_name is not None and not config.bootstrap.resolvers:
        raise ConfigError(
            f"command line: {by_name.label}: an upstream given by hostname needs --bootstrap URI"
            " (a resolver given by IP address) or its address written as #IP"
        )
    for spec in config.bootstrap.resolvers:
        ours = own_listener(spec, config.listeners.addresses)
        if ours is not None:
            raise ConfigError(
                f"command line: bootstrap {spec.label}: expected a resolver other than stubby-py"
                f" itself ({ours} is where it listens)"
            )
    problem = _global_proxy_problem(config)
    if problem is not None:
        raise ConfigError(f"command line: proxy: {problem}")
