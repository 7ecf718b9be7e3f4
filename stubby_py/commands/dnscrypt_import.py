"""Coming from dnscrypt-proxy: a dnscrypt-proxy.toml converted to a stubby-py configuration
(`stubby-py import-dnscrypt-proxy FILE`), with a note for every option on what became of it.

dnscrypt-proxy options and what becomes of them:
  [static.NAME] stamp                   upstreams: {url: STAMP, name: NAME} (the stamp kept as it
                                        is: its certificate hashes are checked at each connect)
  [sources.NAME] cache_file, prefix     the list dnscrypt-proxy cached on disk (`## name`
                                        headings, `sdns://` lines), relative to the file's
                                        directory; never downloaded; its minisign signature is
                                        not checked here (dnscrypt-proxy checked it before
                                        caching): review what it gives
  server_names                          which servers become upstreams, in that order; without
                                        it every static server, then at most MAX_FROM_SOURCES
                                        of the sources' (dnscrypt-proxy picks among all of them)
  disabled_server_names                 left out
  require_dnssec, require_nolog,        the sources' servers must claim it (their stamps'
    require_nofilter                      informal properties, as dnscrypt-proxy filters them)
  ipv4_servers, ipv6_servers,           the sources' servers by address family and protocol
    doh_servers
  listen_addresses                      listen
  timeout (ms)                          timeout (s)
  lb_strategy                           first → failover, random → round_robin, p2/ph/wp2/
                                        fastest → fastest
  cache, cache_size, cache_min_ttl,     cache_size (0 when cache = false), cache_min_ttl,
    cache_max_ttl                         cache_max_ttl
  bootstrap_resolvers                   bootstrap (udp://IP:PORT, tcp:// behind a proxy): stamps
                                        with only a host name are resolved through them
  proxy                                 proxy (the global one)
  anything else                         ignored, with the reason

DoH, DoT and DoQ stamps can be used (those with only a host name when bootstrap_resolvers
are given): DNSCrypt, ODoH and relays are left out, each with the reason.
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import yaml

from stubby_py.commands.stubby_import import Conversion, Note
from stubby_py.core import stamps
from stubby_py.core.config import UpstreamSpec, parse_listen, parse_proxy_uri
from stubby_py.core.errors import ConfigError

#: without server_names, how many of the sources' servers become upstreams
MAX_FROM_SOURCES = 8
#: dnscrypt-proxy's defaults for its source filters
FILTER_DEFAULTS = {
    "require_dnssec": False, "require_nolog": True, "require_nofilter": True,
    "ipv4_servers": True, "ipv6_servers": False, "doh_servers": True,
}  # fmt: skip
FILTER_PROPS = {
    "require_dnssec": "dnssec", "require_nolog": "no-log", "require_nofilter": "no-filter",
}  # fmt: skip
STRATEGIES = {
    "first": "failover", "random": "round_robin",
    "p2": "fastest", "ph": "fastest", "wp2": "fastest", "fastest": "fastest",
}  # fmt: skip
HANDLED = frozenset(
    {
        "server_names", "disabled_server_names", "listen_addresses", "timeout", "lb_strategy",
        "cache", "cache_size", "cache_min_ttl", "cache_max_ttl", "static", "sources",
        "bootstrap_resolvers", "proxy", *FILTER_DEFAULTS,
    }
)  # fmt: skip
IGNORED_WHY = {
    "fallback_resolvers": "the old name of bootstrap_resolvers: name them there",
    "fallback_resolver": "the old name of bootstrap_resolvers: name them there",
    "ignore_system_dns": "stubby-py never resolves through the system's DNS",
    "http_proxy": "dnscrypt-proxy's proxy for DoH and list downloads only: stubby-py takes one"
    " `proxy:` for every upstream (set it from `proxy`, or by hand)",
    "force_tcp": "stubby-py speaks DoH, DoT and DoQ to encrypted upstreams only",
    "max_clients": "stubby-py bounds clients by tcp_max_connections and the rate limit",
    "block_ipv6": "no equivalent (stubby-py answers AAAA queries as the upstream does)",
    "forwarding_rules": "stubby-py's forwarding rules are in its YAML (rules:): convert by hand",
    "cloaking_rules": "stubby-py's local names are in its YAML (local:): convert by hand",
    "anonymized_dns": "anonymized DNS relays are DNSCrypt/ODoH only: not supported",
    "query_log": "stubby-py's query log is configured in its YAML: convert by hand",
    "dnscrypt_servers": "DNSCrypt is not supported: DNSCrypt servers are left out",
    "odoh_servers": "Oblivious DoH is not supported: ODoH servers are left out",
}


@dataclass
class _Candidate:
    name: str
    stamp: str
    origin: str
    static: bool


@dataclass
class _State:
    conversion: Conversion = field(default_factory=Conversion)
    upstreams: list[dict[str, str]] = field(default_factory=list)
    specs: list[UpstreamSpec] = field(default_factory=list)
    #: bootstrap resolvers converted from bootstrap_resolvers (udp:// URIs)
    bootstrap: list[str] = field(default_factory=list)
    from_sources: int = 0


def _fail(source: str, key: str, expected: str) -> ConfigError:
    return ConfigError(f"{source}: {key}: {expected} (a dnscrypt-proxy configuration)")


def read_source_list(text: str, prefix: str = "") -> list[tuple[str, str]]:
    """(name, stamp) of a dnscrypt-proxy v2 list: `## name` then the entry's `sdns://` lines
    (an entry with several stamps gives NAME, NAME-2, …)."""
    entries: list[tuple[str, str]] = []
    name: str | None = None
    count = 0
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("## "):
            name, count = prefix + line[3:].strip(), 0
        elif line.startswith(stamps.PREFIX) and name:
            count += 1
            entries.append((name if count == 1 else f"{name}-{count}", line))
    return entries


class _Converter:
    def __init__(self, data: Mapping[str, Any], source: str) -> None:
        self.data = data
        self.source = source
        self.base = os.path.dirname(os.path.abspath(source))
        self.state = _State()
        self.out = self.state.conversion

    def run(self) -> Conversion:
        for key in self.data:
            if key in IGNORED_WHY:
                self.out.ignored(key, IGNORED_WHY[key])
            elif key not in HANDLED:
                self.out.ignored(key, "no stubby-py equivalent")
        for key in FILTER_DEFAULTS:
            if key in self.data:
                self.out.notes.append(
                    Note("filter", key, f"= {self._flag(key)}: applied to the lists' servers")
                )
        if self.data.get("require_dnssec"):
            text = "stubby-py validates DNSSEC itself (dnssec: validate, the default)"
            self.out.notes.append(Note("note", "require_dnssec", text))
        self._listen()
        self._simple()
        self._bootstrap()
        self._proxy()
        self._servers()
        if self.state.upstreams:
            self.out.options["upstreams"] = self.state.upstreams
            self.out.origins["upstreams"] = "server_names, [static] and [sources]"
        return self.out

    # --- plain options ------------------------------------------------------------------------

    def _listen(self) -> None:
        value = self.data.get("listen_addresses")
        if value is None:
            return
        if not isinstance(value, list):
            raise _fail(self.source, "listen_addresses", "expected a list")
        listen = []
        for index, item in enumerate(value):
            try:
                parse_listen(str(item))
            except ValueError as exc:
                raise _fail(self.source, f"listen_addresses[{index}]", str(exc)) from None
            listen.append(str(item))
        if listen:
            self.out.mapped("listen_addresses", "listen", listen, ", ".join(listen))
        else:
            self.out.ignored(
                "listen_addresses", "empty (socket activation): stubby-py takes systemd's "
                "sockets when started by them, keeping its listen addresses otherwise",
            )  # fmt: skip

    def _simple(self) -> None:
        if "timeout" in self.data:
            value = self.data["timeout"]
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise _fail(self.source, "timeout", f"expected milliseconds, got {value!r}")
            seconds = min(30.0, max(0.1, value / 1000))
            self.out.mapped("timeout", "timeout", seconds, f"{value} ms = {seconds:g} s")
        if "lb_strategy" in self.data:
            value = str(self.data["lb_strategy"])
            if value in STRATEGIES:
                self.out.mapped("lb_strategy", "strategy", STRATEGIES[value], STRATEGIES[value])
            else:
                self.out.ignored("lb_strategy", f"{value!r}: unknown, the default (failover) kept")
        if self.data.get("cache") is False:
            self.out.mapped("cache", "cache_size", 0, "0 (the answer cache off)")
        elif "cache_size" in self.data:
            size = self._whole("cache_size", 1, 10_000_000)
            self.out.mapped("cache_size", "cache_size", size, str(size))
        for key in ("cache_min_ttl", "cache_max_ttl"):
            if key in self.data:
                ttl = self._whole(key, 0, 2**31 - 1)
                self.out.mapped(key, key, ttl, f"{ttl} s")

    def _bootstrap(self) -> None:
        """bootstrap_resolvers (plain IP:PORT) → bootstrap: [udp://IP:PORT], so that stamps with
        only a host name can be used (never resolved through stubby-py itself)."""
        value = self.data.get("bootstrap_resolvers")
        if value is None:
            return
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise _fail(self.source, "bootstrap_resolvers", "expected a list of 'IP:PORT'")
        resolvers = []
        for item in value:
            try:
                address, port = parse_listen(item)
            except ValueError as exc:
                self.out.ignored(f"bootstrap_resolvers: {item}", str(exc))
                continue
            host = f"[{address}]" if ":" in address else address
            # behind a proxy (converted below) plain DNS must go over TCP: UDP cannot be proxied
            scheme = "tcp" if self.data.get("proxy") is not None else "udp"
            resolvers.append(f"{scheme}://{host}:{port}")
        if resolvers:
            self.state.bootstrap = resolvers
            self.out.mapped("bootstrap_resolvers", "bootstrap", resolvers, ", ".join(resolvers))

    def _proxy(self) -> None:
        value = self.data.get("proxy")
        if value is None:
            return
        try:
            parse_proxy_uri(str(value))
        except ValueError as exc:
            self.out.ignored("proxy", f"{exc}: configure the proxy in stubby-py by hand")
            return
        # the URI may hold credentials: the note names the proxy without them
        self.out.mapped("proxy", "proxy", str(value), "the global proxy")

    def _whole(self, key: str, low: int, high: int) -> int:
        value = self.data[key]
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise _fail(self.source, key, f"expected a whole number {low}-{high}, got {value!r}")
        return value

    def _flag(self, key: str) -> bool:
        value = self.data.get(key, FILTER_DEFAULTS[key])
        if not isinstance(value, bool):
            raise _fail(self.source, key, f"expected true or false, got {value!r}")
        return value

    def _names(self, key: str) -> list[str] | None:
        value = self.data.get(key)
        if value is None:
            return None
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise _fail(self.source, key, "expected a list of server names")
        return list(value)

    # --- servers ------------------------------------------------------------------------------

    def _servers(self) -> None:
        wanted = self._names("server_names")
        disabled = set(self._names("disabled_server_names") or [])
        candidates = self._static() + self._sources()
        by_name: dict[str, _Candidate] = {}
        for candidate in candidates:
            by_name.setdefault(candidate.name, candidate)
        if wanted is not None:
            for name in wanted:
                if name in disabled:
                    self.out.ignored(f"server_names: {name}", "also in disabled_server_names")
                elif name not in by_name:
                    self.out.ignored(
                        f"server_names: {name}",
                        "in no [static] entry nor any cached source list on disk",
                    )
                else:
                    self._take(by_name[name])
            return
        not_looked_at = 0
        for candidate in by_name.values():
            if candidate.name in disabled:
                self.out.ignored(candidate.origin, "in disabled_server_names")
            elif candidate.static or self.state.from_sources < MAX_FROM_SOURCES:
                self._take(candidate)
            else:
                not_looked_at += 1
        if not_looked_at:
            self.out.ignored(
                "sources", f"the first {MAX_FROM_SOURCES} usable servers of the lists taken, "
                f"{not_looked_at} others not looked at: name the ones you want in server_names",
            )  # fmt: skip

    def _static(self) -> list[_Candidate]:
        static = self.data.get("static", {})
        if not isinstance(static, Mapping):
            raise _fail(self.source, "static", "expected a table of [static.'NAME'] servers")
        candidates = []
        for name, entry in static.items():
            if not isinstance(entry, Mapping) or not isinstance(entry.get("stamp"), str):
                raise _fail(self.source, f"static.{name}", "expected stamp = 'sdns://…'")
            candidates.append(_Candidate(name, entry["stamp"].strip(), f"static.{name}", True))
        return candidates

    def _sources(self) -> list[_Candidate]:
        sources = self.data.get("sources", {})
        if not isinstance(sources, Mapping):
            raise _fail(self.source, "sources", "expected a table of [sources.'NAME'] lists")
        candidates = []
        for name, entry in sources.items():
            key = f"sources.{name}"
            if not isinstance(entry, Mapping) or not isinstance(entry.get("cache_file"), str):
                self.out.ignored(key, "no cache_file: lists are never downloaded here")
                continue
            path = os.path.join(self.base, entry["cache_file"])
            try:
                with open(path, encoding="utf-8") as handle:
                    text = handle.read()
            except OSError as exc:
                self.out.ignored(
                    key, f"{path}: {exc.strerror}: lists are never downloaded here (run"
                    " dnscrypt-proxy once, or fetch and verify the list yourself)",
                )  # fmt: skip
                continue
            entries = read_source_list(text, str(entry.get("prefix", "")))
            self.out.notes.append(
                Note("read", key, f"{path}: {len(entries)} stamps (signature not checked here)")
            )
            candidates += [_Candidate(n, s, f"{key}: {n}", False) for n, s in entries]
        return candidates

    def _take(self, candidate: _Candidate) -> None:
        try:
            stamp = stamps.decode(candidate.stamp)
            spec = stamps.to_upstream(stamp)
        except ValueError as exc:
            self.out.ignored(candidate.origin, str(exc))
            return
        if spec.needs_bootstrap and not self.state.bootstrap:
            kind = stamps.KIND_NAMES[stamp.protocol]
            self.out.ignored(
                candidate.origin,
                f"this {kind} stamp gives no address for {spec.address!r}: it needs"
                " bootstrap_resolvers (none here) to be resolved, or a stamp with an IP address",
            )
            return
        if not candidate.static:
            reason = self._filtered_out(stamp, spec)
            if reason:
                self.out.ignored(candidate.origin, reason)
                return
        if any(replace(spec, name="") == other for other in self.state.specs):
            self.out.ignored(candidate.origin, "the same server as an upstream already taken")
            return
        self.state.specs.append(spec)
        self.state.upstreams.append({"url": candidate.stamp, "name": candidate.name})
        self.state.from_sources += not candidate.static
        self.out.notes.append(Note("mapped", candidate.origin, f"→ upstreams: {spec.url}"))

    def _filtered_out(self, stamp: stamps.Stamp, spec: UpstreamSpec) -> str | None:
        for key, prop in FILTER_PROPS.items():
            if self._flag(key) and prop not in stamp.property_names:
                return f"{key}: the list does not say it is {prop}"
        version = ipaddress.ip_address(spec.address).version if not spec.needs_bootstrap else 0
        if version == 4 and not self._flag("ipv4_servers"):
            return "ipv4_servers = false"
        if version == 6 and not self._flag("ipv6_servers"):
            return "ipv6_servers = false"
        if spec.transport == "https" and not self._flag("doh_servers"):
            return "doh_servers = false"
        return None


def convert(data: Mapping[str, Any], source: str) -> Conversion:
    return _Converter(data, source).run()


def read(path: str) -> Conversion:
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the configuration: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not a TOML file: {exc}") from None
    return convert(data, path)


def to_yaml(conversion: Conversion, source: str) -> str:
    lines = [
        f"# stubby-py configuration converted from {source} (stubby-py import-dnscrypt-proxy).",
        "# Options not given here keep their defaults: see config.example.yaml.",
    ]
    first = ("listen", "upstreams")
    options = sorted(conversion.options.items(), key=lambda kv: (kv[0] not in first, kv[0]))
    for option, value in options:
        lines.append(f"\n# from dnscrypt-proxy's {conversion.origins[option]}")
        dumped = yaml.safe_dump({option: value}, sort_keys=False, default_flow_style=False)
        lines.append(dumped.rstrip("\n"))
    return "\n".join(lines) + "\n"
