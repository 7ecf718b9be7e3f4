"""Coming from Stubby: read a stubby.yml (getdns's option names) as a stubby-py configuration.

`convert` maps each Stubby option to ours, or says why it is ignored; `to_yaml` writes the result
as a stubby-py configuration file (`stubby-py import-stubby FILE`); `load` reads either format,
telling them apart by their keys, so `stubby-py run -c /etc/stubby/stubby.yml` works as it is.

Stubby options and what becomes of them:
  listen_addresses (IP or IP@PORT)        listen
  upstream_recursive_servers              upstreams: tls://ADDRESS:TLS_PORT#TLS_AUTH_NAME, with
    address_data, tls_auth_name,            spki_pins from the sha256 tls_pubkey_pinset
    tls_port, tls_pubkey_pinset, port
  dns_transport_list                      TLS → tls:// upstreams; UDP/TCP after TLS is a
                                          cleartext fallback, never made; UDP/TCP alone → udp://
  tls_authentication                      always REQUIRED here
  tls_query_padding_blocksize             padding_block_size (1, "a sensible default", → 128)
  edns_client_subnet_private              always: client ECS is stripped, none is sent
  round_robin_upstreams                   strategy: round_robin (1) or failover (0)
  idle_timeout (ms)                       upstream_idle_timeout (s)
  timeout (ms)                            timeout (s)
  tls_connection_retries                  failures_to_down
  tls_backoff_time (s)                    backoff_max
  tls_ca_file                             ca_file
  tls_min_version                         tls_min_version
  dnssec, dnssec_return_status            dnssec: validate when either is TRUE (Stubby validates
                                          then), off when every one given is FALSE
  dnssec_trust_anchors                    trust_anchors, when the file holds DS/DNSKEY records in
                                          zone-file form (not IANA's root-anchors.xml: ignored,
                                          the root KSKs are built in)
  appdata_dir, trust_anchors_*            ignored: the root KSKs are built in (no fetching)
  tls_max_version, tls_cipher_list,       ignored, with the reason
    tls_ciphersuites, tls_ca_path,
    limit_outstanding_queries, resolution_type
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from stubby_py.core.config import Config, load_config, parse_config
from stubby_py.core.errors import ConfigError

#: keys only a Stubby file has; any of them makes a file a Stubby configuration
STUBBY_KEYS = frozenset(
    {
        "upstream_recursive_servers", "listen_addresses", "resolution_type",
        "dns_transport_list", "tls_authentication", "tls_query_padding_blocksize",
        "edns_client_subnet_private", "round_robin_upstreams", "idle_timeout",
        "tls_connection_retries", "tls_backoff_time", "dnssec_return_status",
        "dnssec_trust_anchors", "appdata_dir",
    }
)  # fmt: skip
# `dnssec` is an option of both formats: it does not make a file Stubby's
TRUST_ANCHOR_FETCH_KEYS = frozenset(
    {
        "appdata_dir", "trust_anchors_backoff_time", "trust_anchors_url",
        "trust_anchors_verify_CA", "trust_anchors_verify_email",
    }
)  # fmt: skip
IGNORED_WHY = {
    "resolution_type": "stubby-py is a stub resolver: GETDNS_RESOLUTION_STUB is all it does",
    "tls_max_version": "stubby-py always accepts TLS up to 1.3",
    "tls_cipher_list": "stubby-py uses Python's TLS defaults (AEAD suites only for TLS 1.2)",
    "tls_ciphersuites": "stubby-py uses Python's TLS 1.3 defaults",
    "tls_ca_path": "stubby-py takes one CA file (ca_file), not a directory; without one it "
    "uses the system trust store",
    "limit_outstanding_queries": "stubby-py joins identical queries in flight and bounds them "
    "per TCP connection; it has no global limit",
    "command_line_arguments": "not a configuration option in stubby-py",
}
DNSSEC_KEYS = ("dnssec", "dnssec_return_status")
TLS_VERSIONS = {"GETDNS_TLS1_2": "1.2", "GETDNS_TLS1_3": "1.3"}
DEFAULT_PORT = 53
DEFAULT_TLS_PORT = 853


@dataclass
class Note:
    #: "mapped" or "ignored"
    kind: str
    key: str
    text: str

    def __str__(self) -> str:
        return f"{self.kind:8} {self.key}: {self.text}"


@dataclass
class Conversion:
    #: our options, as plain YAML data
    options: dict[str, Any] = field(default_factory=dict)
    #: which Stubby option came from where, for comments in the written file
    origins: dict[str, str] = field(default_factory=dict)
    notes: list[Note] = field(default_factory=list)

    def mapped(self, key: str, option: str, value: Any, text: str) -> None:
        self.options[option] = value
        self.origins[option] = key
        self.notes.append(Note("mapped", key, f"→ {option}: {text}"))

    def ignored(self, key: str, text: str) -> None:
        self.notes.append(Note("ignored", key, text))


def is_stubby_config(data: object) -> bool:
    return isinstance(data, Mapping) and any(str(k).strip() in STUBBY_KEYS for k in data)


def _fail(source: str, key: str, expected: str) -> ConfigError:
    return ConfigError(f"{source}: {key}: {expected} (a Stubby configuration)")


def _milliseconds(
    source: str, key: str, value: object, low: float, high: float
) -> tuple[float, str]:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise _fail(source, key, f"expected milliseconds, got {value!r}")
    seconds = min(high, max(low, value / 1000))
    clamped = "" if seconds == value / 1000 else f" (clamped to {low:g}-{high:g} s)"
    return seconds, f"{value} ms = {seconds:g} s{clamped}"


def _whole(source: str, key: str, value: object, low: int, high: int) -> tuple[int, str]:
    if not isinstance(value, int) or isinstance(value, bool):
        raise _fail(source, key, f"expected a whole number, got {value!r}")
    clamped = min(high, max(low, value))
    return clamped, str(clamped) + ("" if clamped == value else f" (clamped from {value})")


def _listen(source: str, index: int, value: object) -> str:
    text = str(value).strip()
    address, _, port = text.partition("@")
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        raise _fail(
            source, f"listen_addresses[{index}]", f"expected IP or IP@PORT, got {text!r}"
        ) from None
    number = int(port) if port.isdigit() else DEFAULT_PORT
    return f"[{ip}]:{number}" if ip.version == 6 else f"{ip}:{number}"


class _Converter:
    def __init__(self, data: Mapping[str, Any], source: str) -> None:
        self.data = {str(k).strip(): v for k, v in data.items()}
        self.source = source
        self.out = Conversion()
        transports = self.data.get("dns_transport_list") or ["GETDNS_TRANSPORT_TLS"]
        if not isinstance(transports, list):
            raise _fail(source, "dns_transport_list", "expected a list")
        self.transports = [str(t).removeprefix("GETDNS_TRANSPORT_") for t in transports]

    def run(self) -> Conversion:
        handlers = {
            "listen_addresses": self._listen_addresses,
            "upstream_recursive_servers": self._upstream_recursive_servers,
            "dns_transport_list": self._dns_transport_list,
            "tls_authentication": self._tls_authentication,
            "tls_query_padding_blocksize": self._tls_query_padding_blocksize,
            "edns_client_subnet_private": self._edns_client_subnet_private,
            "round_robin_upstreams": self._round_robin_upstreams,
            "idle_timeout": self._idle_timeout,
            "timeout": self._timeout,
            "tls_connection_retries": self._tls_connection_retries,
            "tls_backoff_time": self._tls_backoff_time,
            "tls_ca_file": self._tls_ca_file,
            "tls_min_version": self._tls_min_version,
            "dnssec": self._dnssec,
            "dnssec_return_status": self._dnssec,
            "dnssec_trust_anchors": self._dnssec_trust_anchors,
        }
        for key, value in self.data.items():
            handler = handlers.get(key)
            if handler is not None:
                handler(key, value)
            elif key in TRUST_ANCHOR_FETCH_KEYS:
                self.out.ignored(
                    key, "stubby-py has the root KSKs built in and fetches no trust anchors "
                    "(trust_anchors: FILE replaces them)",
                )  # fmt: skip
            elif key in IGNORED_WHY:
                self.out.ignored(key, IGNORED_WHY[key])
            else:
                self.out.ignored(key, "not an option stubby-py knows")
        return self.out

    # one method per Stubby option
    def _listen_addresses(self, key: str, value: object) -> None:
        if not isinstance(value, list) or not value:
            raise _fail(self.source, key, "expected a list of addresses")
        listen = [_listen(self.source, i, item) for i, item in enumerate(value)]
        self.out.mapped(key, "listen", listen, ", ".join(listen))
        self.out.notes.append(
            Note(
                "note", key, "Stubby answers whoever reaches these addresses; stubby-py only "
                "the networks in `allow` (loopback by default): add your LAN for a LAN address",
            )
        )  # fmt: skip

    def _upstream_recursive_servers(self, key: str, value: object) -> None:
        if not isinstance(value, list) or not value:
            raise _fail(self.source, key, "expected a list of upstreams")
        upstreams = [self._upstream(f"{key}[{i}]", item) for i, item in enumerate(value)]
        pinned = sum(1 for u in upstreams if isinstance(u, dict))
        kind = "DoT" if "TLS" in self.transports else "plain (cleartext!)"
        self.out.mapped(
            key, "upstreams", upstreams, f"{len(upstreams)} {kind} upstreams, {pinned} with pins"
        )

    def _upstream(self, key: str, item: object) -> str | dict[str, Any]:
        if not isinstance(item, Mapping) or "address_data" not in item:
            raise _fail(self.source, key, "expected a mapping with address_data")
        try:
            ip = ipaddress.ip_address(str(item["address_data"]).strip())
        except ValueError:
            raise _fail(self.source, f"{key}.address_data", "expected an IP address") from None
        host = f"[{ip}]" if ip.version == 6 else str(ip)
        for option in ("tls_cipher_list", "tls_ciphersuites", "tls_min_version", "tls_max_version"):
            if option in item:
                self.out.ignored(f"{key}.{option}", "per-upstream TLS settings are not supported")
        if "TLS" not in self.transports:
            scheme = "udp" if "UDP" in self.transports else "tcp"
            return f"{scheme}://{host}:{self._port(key, item, 'port', DEFAULT_PORT)}"
        url = f"tls://{host}:{self._port(key, item, 'tls_port', DEFAULT_TLS_PORT)}"
        if item.get("tls_auth_name"):
            url += f"#{item['tls_auth_name']}"
        else:
            self.out.ignored(
                f"{key}.tls_auth_name",
                "missing: stubby-py still authenticates, so the certificate must carry the IP "
                "address (few public resolvers' do): add the server's name",
            )
        pins = self._pins(key, item.get("tls_pubkey_pinset") or [])
        return {"url": url, "spki_pins": pins} if pins else url

    def _port(self, key: str, item: Mapping[str, Any], option: str, default: int) -> int:
        value = item.get(option, default)
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 65535:
            raise _fail(self.source, f"{key}.{option}", f"expected a port, got {value!r}")
        return value

    def _pins(self, key: str, pinset: object) -> list[str]:
        if not isinstance(pinset, list):
            raise _fail(self.source, f"{key}.tls_pubkey_pinset", "expected a list")
        pins = []
        for i, pin in enumerate(pinset):
            if not isinstance(pin, Mapping) or "value" not in pin:
                raise _fail(self.source, f"{key}.tls_pubkey_pinset[{i}]", "expected a value")
            if str(pin.get("digest", "sha256")).lower() != "sha256":
                self.out.ignored(f"{key}.tls_pubkey_pinset[{i}]", "only sha256 pins exist")
                continue
            pins.append(str(pin["value"]).strip())
        return pins

    def _dns_transport_list(self, key: str, _value: object) -> None:
        if self.transports[:1] == ["TLS"] and len(self.transports) > 1:
            self.out.ignored(
                key, f"{', '.join(self.transports[1:])} after TLS is a fallback to cleartext, "
                "which stubby-py never makes (strict privacy profile, RFC 8310)",
            )  # fmt: skip
        elif "TLS" in self.transports:
            self.out.notes.append(Note("mapped", key, "TLS: upstreams are tls://"))
        else:
            self.out.notes.append(
                Note("mapped", key, "no TLS: upstreams become plain udp:// (cleartext!)")
            )

    def _tls_authentication(self, key: str, value: object) -> None:
        if str(value).strip() == "GETDNS_AUTHENTICATION_REQUIRED":
            self.out.notes.append(Note("mapped", key, "always required in stubby-py"))
            return
        self.out.ignored(
            key, "stubby-py always verifies upstream certificates (no opportunistic mode)"
        )

    def _tls_query_padding_blocksize(self, key: str, value: object) -> None:
        size, text = _whole(self.source, key, value, 0, 512)
        if size == 1:
            size, text = 128, "1 (a sensible default) = 128 (RFC 8467)"
        self.out.mapped(key, "padding_block_size", size, text)

    def _edns_client_subnet_private(self, key: str, _value: object) -> None:
        self.out.notes.append(
            Note("mapped", key, "always: client ECS options are stripped and none is sent")
        )

    def _round_robin_upstreams(self, key: str, value: object) -> None:
        strategy = "round_robin" if value in (1, True) else "failover"
        self.out.mapped(key, "strategy", strategy, strategy)

    def _idle_timeout(self, key: str, value: object) -> None:
        seconds, text = _milliseconds(self.source, key, value, 0.1, 3600)
        self.out.mapped(key, "upstream_idle_timeout", seconds, text)

    def _timeout(self, key: str, value: object) -> None:
        seconds, text = _milliseconds(self.source, key, value, 0.1, 30)
        self.out.mapped(key, "timeout", seconds, text)

    def _tls_connection_retries(self, key: str, value: object) -> None:
        retries, text = _whole(self.source, key, value, 1, 100)
        self.out.mapped(key, "failures_to_down", retries, text)

    def _tls_backoff_time(self, key: str, value: object) -> None:
        seconds, text = _whole(self.source, key, value, 1, 3600)
        self.out.mapped(key, "backoff_max", seconds, f"{text} s")

    def _tls_ca_file(self, key: str, value: object) -> None:
        self.out.mapped(key, "ca_file", str(value), str(value))

    def _dnssec(self, key: str, _value: object) -> None:
        # Stubby validates when either option is GETDNS_EXTENSION_TRUE (dnssec_return_status
        # only adds the status to its replies): both are weighed together, once
        if "dnssec" in self.out.options:
            return
        given = {k: str(self.data[k]).strip() for k in DNSSEC_KEYS if k in self.data}
        keys = " and ".join(given)
        if all(value == "GETDNS_EXTENSION_FALSE" for value in given.values()):
            self.out.mapped(keys, "dnssec", "off", "off (as in the Stubby file)")
        else:
            self.out.mapped(
                keys, "dnssec", "validate", "validate (AD on secure, SERVFAIL on bogus)"
            )

    def _dnssec_trust_anchors(self, key: str, value: object) -> None:
        from stubby_py.dnssec import anchors  # imports cryptography: only when needed

        path = str(value)
        if not os.path.isfile(path):
            self.out.ignored(key, f"{path} does not exist: the built-in root KSKs are used")
            return
        try:
            anchors.load(path)
        except ConfigError as exc:
            # Stubby's usual file is IANA's root-anchors.xml, which trust_anchors cannot read
            self.out.ignored(
                key, f"{path}: not DS/DNSKEY records in zone-file form (an XML trust anchor "
                f"file?): the built-in root KSKs are used ({exc})",
            )  # fmt: skip
            return
        self.out.mapped(key, "trust_anchors", path, path)

    def _tls_min_version(self, key: str, value: object) -> None:
        version = TLS_VERSIONS.get(str(value).strip())
        if version is None:
            self.out.ignored(key, f"{value}: stubby-py accepts TLS 1.2 at the lowest")
            return
        self.out.mapped(key, "tls_min_version", version, version)


def convert(data: Mapping[str, Any], source: str) -> Conversion:
    return _Converter(data, source).run()


def to_yaml(conversion: Conversion, source: str) -> str:
    lines = [
        f"# stubby-py configuration converted from {source} (stubby-py import-stubby).",
        "# Options not given here keep their defaults: see config.example.yaml.",
    ]
    first = ("listen", "upstreams")
    options = sorted(
        conversion.options.items(), key=lambda kv: (kv[0] not in first, kv[0] != "listen")
    )
    for option, value in options:
        lines.append(f"\n# from Stubby's {conversion.origins[option]}")
        dumped = yaml.safe_dump({option: value}, sort_keys=False, default_flow_style=False)
        lines.append(dumped.rstrip("\n"))
    return "\n".join(lines) + "\n"


def read_stubby(path: str) -> Conversion | None:
    """The conversion of a Stubby file, or None if the file is in stubby-py's own format."""
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the configuration: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        return None  # parse_config says where and why
    if not is_stubby_config(data):
        return None
    return convert(data, path)


def load(path: str | None) -> tuple[Config, Conversion | None]:
    """A configuration file in either format: the Config, and the conversion if it was Stubby's."""
    if path is None:
        return load_config(None), None
    conversion = read_stubby(path)
    if conversion is None:
        return load_config(path), None
    source = f"{path} (Stubby's format)"
    return parse_config(to_yaml(conversion, path), source), conversion
