"""Upstreams by hostname: their addresses, from the `bootstrap` resolvers, kept fresh.

An upstream given by hostname (`tls://dns.quad9.net`) is resolved through the configured
bootstrap resolvers, which are given by IP address and asked directly over the same transports
the pool uses (plain UDP/TCP or DoT/DoH/DoQ), never through stubby-py itself (config.py refuses a
bootstrap that is one of our listen addresses). A and AAAA are asked; a reply counts only if it
answers that question with address records for that name, or for the end of a CNAME chain that
starts at it (`parse_addresses`); anything else is the `bootstrap` failure of the upstream, with
the reason. A lying resolver that returns well-formed but wrong addresses is caught by the
certificate check, which is always made for the hostname (cert-name-mismatch, cert-untrusted).

The addresses live as long as their TTL (clamped to bootstrap_min_ttl..bootstrap_max_ttl) and are
asked again in the background once 80 % of it has passed; meanwhile, and after a failed refresh
(retried with backoff), the last good addresses are used: a connection to a wrong address fails
its certificate check anyway. Only an upstream with no address at all waits for the bootstrap.
The last good addresses are saved to the state directory (bootstrap_file), so that a start while
the bootstrap resolvers are unreachable still reaches the upstreams.

Transports hold an `Endpoint` and ask it, each time they open a connection, for the addresses to
try (`candidates()`: the one that worked last first, then the rest in order); multiplex.py races
them as RFC 8305 says (Happy Eyeballs v2) and tells the endpoint which one won (`succeeded()`) and
which failed (`failed()`). An address this host has no route to (`routed()`: a connected UDP
socket, which sends nothing) is not tried at all; the answer is kept until the network changes.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import os
import socket
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype

from stubby_py.core.config import Config, UpstreamSpec, _check_hostname, resolved_by_proxy
from stubby_py.core.errors import BootstrapError, UpstreamError
from stubby_py.state_files import StateFileError, read_state, state_path, write_state

log = logging.getLogger(__name__)

#: share of the TTL after which the addresses are asked again in the background
REFRESH_AT = 0.8
#: first and longest wait before a failed refresh is tried again, seconds
RETRY_MIN = 1.0
RETRY_MAX = 300.0
#: addresses kept per name (in the answer's order, IPv6 and IPv4 interleaved)
MAX_ADDRESSES = 16
#: the largest state file read, bytes, and the most names it may hold
MAX_FILE_BYTES = 64 * 1024
MAX_FILE_NAMES = 256
IN = dns.rdataclass.IN
#: CNAME links followed in one answer
MAX_CHAIN = 8


class Endpoint(Protocol):
    """Where a transport connects: asked each time a connection is opened."""

    async def address(self) -> str:
        """The address to connect to now; raises BootstrapError when none is known."""
        ...

    async def candidates(self) -> list[str]:
        """Every address to try now, the preferred first; raises BootstrapError when none."""
        ...

    def failed(self, address: str) -> None:
        """A connection to `address` failed: the next connect tries the next address."""
        ...

    def succeeded(self, address: str) -> None:
        """A connection to `address` was made: the next connect tries it first."""
        ...

    def routed(self, address: str) -> bool:
        """Whether this host has a route to `address` now (cached until network_changed)."""
        ...

    def count(self) -> int:
        """How many addresses there are to try (at least 1: the first try finds out)."""
        ...

    def network_changed(self) -> None:
        """The network changed (netwatch.py): the addresses are worth asking again."""
        ...


class FixedEndpoint:
    """An upstream given by IP address."""

    __slots__ = ("_address", "_routes")

    def __init__(self, address: str) -> None:
        self._address = address
        self._routes = RouteCache()

    async def address(self) -> str:
        return self._address

    async def candidates(self) -> list[str]:
        return [self._address]

    def failed(self, address: str) -> None:
        pass

    def succeeded(self, address: str) -> None:
        pass

    def routed(self, address: str) -> bool:
        return self._routes.routed(address)

    def count(self) -> int:
        return 1

    def network_changed(self) -> None:
        self._routes.clear()


class RouteCache:
    """Whether this host has a route to each address, asked once per network (a routing
    lookup is cheap but not free, and a background probe every minute need not repeat it)."""

    __slots__ = ("_known",)

    def __init__(self) -> None:
        self._known: dict[str, bool] = {}

    def routed(self, address: str) -> bool:
        known = self._known.get(address)
        if known is None:
            known = self._known[address] = _has_route(address)
        return known

    def clear(self) -> None:
        self._known.clear()


# --- the answer (sans-IO) -----------------------------------------------------------------------


def address_query(hostname: str, rdtype: dns.rdatatype.RdataType) -> bytes:
    """The question for the bootstrap resolver (ID 0: each transport sets its own)."""
    query = dns.message.make_query(hostname, rdtype, use_edns=0, payload=1232)
    query.id = 0
    return query.to_wire()


def parse_addresses(
    reply: bytes, hostname: str, rdtype: dns.rdatatype.RdataType
) -> tuple[list[str], int]:
    """The addresses and the smallest TTL in a bootstrap resolver's reply to `address_query`.

    Raises ValueError saying what is wrong: not a reply to that question (the ID is checked by
    the transport, which matched the reply to its query), an error rcode, or a record that is
    neither an address of the name nor a link of the CNAME chain from it. NOERROR with no
    address (the name has none of this type) is an empty list."""
    message = _reply_to(reply, hostname, rdtype)
    owner = dns.name.from_text(hostname)
    addresses: list[str] = []
    ttl: int | None = None
    chain = 0
    for rrset in message.answer:
        if rrset.rdtype == dns.rdatatype.CNAME and rrset.name == owner and not addresses:
            chain += 1
            if chain > MAX_CHAIN or len(rrset) != 1:
                raise ValueError("a CNAME chain too long or forked")
            owner = next(iter(rrset)).target
        elif rrset.rdtype == rdtype and rrset.name == owner and rrset.rdclass == IN:
            addresses += [_usable(rdata.address) for rdata in rrset]
        else:
            raise ValueError(
                f"an answer record {rrset.name} {dns.rdatatype.to_text(rrset.rdtype)} that is"
                f" not an address of {hostname}"
            )
        ttl = rrset.ttl if ttl is None else min(ttl, rrset.ttl)
    if chain and not addresses:
        raise ValueError(f"a CNAME chain from {hostname} that ends without an address")
    return addresses[:MAX_ADDRESSES], ttl or 0


def _reply_to(reply: bytes, hostname: str, rdtype: dns.rdatatype.RdataType) -> dns.message.Message:
    """The reply parsed, if it is a NOERROR reply to the question IN `rdtype` `hostname`."""
    try:
        message = dns.message.from_wire(reply)
    except dns.exception.DNSException as exc:
        raise ValueError(f"malformed reply ({type(exc).__name__})") from None
    if not message.flags & dns.flags.QR:
        raise ValueError("not a reply (QR clear)")
    question = message.question
    if (
        len(question) != 1
        or question[0].name != dns.name.from_text(hostname)
        or question[0].rdtype != rdtype
        or question[0].rdclass != IN
    ):
        raise ValueError("the reply answers another question")
    rcode = message.rcode()
    if rcode != dns.rcode.NOERROR:
        raise ValueError(f"{dns.rcode.to_text(rcode)} for {hostname}")
    return message


def _usable(text: str) -> str:
    """An address one may connect to: not the unspecified address, multicast or broadcast.
    Private and loopback addresses pass: a resolver on the LAN is a real case, and a lie is
    caught by the certificate check."""
    address = ipaddress.ip_address(text)
    if address.is_unspecified or address.is_multicast or str(address) == "255.255.255.255":
        raise ValueError(f"the address {text} is not one to connect to")
    return str(address)


def ordered(ipv6: Sequence[str], ipv4: Sequence[str]) -> list[str]:
    """IPv6 and IPv4 interleaved, IPv6 first (RFC 8305 §4), then those this host has no route
    to moved to the end (a host without IPv6 should not spend its attempts on it)."""
    mixed: list[str] = []
    for index in range(max(len(ipv6), len(ipv4))):
        mixed += [*ipv6[index : index + 1], *ipv4[index : index + 1]]
    routed = [a for a in mixed if _has_route(a)]
    return routed + [a for a in mixed if a not in routed]


def _has_route(address: str) -> bool:
    """Whether the kernel has a route to `address` (a UDP connect sends nothing). A name (one
    a proxy resolves) is not looked up here: the proxy finds out."""
    try:
        ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return True
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.connect((address, 9))
    except OSError:
        return False
    return True


# --- the state file -----------------------------------------------------------------------------


def default_file(setting: str | None, environ: Mapping[str, str]) -> str | None:
    """`auto`: $STATE_DIRECTORY/bootstrap.json under systemd's StateDirectory= (the first of a
    colon-separated list), else nowhere; a path as it is; None: nowhere (as the cache's)."""
    return state_path(setting, "bootstrap.json", environ)


def read_saved(path: str) -> dict[str, list[str]]:
    """The addresses saved by an earlier run, by hostname. The file is untrusted: read as
    state_files.read_state reads (at most MAX_FILE_BYTES), and only well-formed host names with
    IP addresses are taken; anything else is skipped (a damaged or refused file: nothing)."""
    try:
        data = read_state(path, MAX_FILE_BYTES)
    except StateFileError as exc:
        log.warning("%s: %s: ignored", path, exc)
        return {}
    except OSError as exc:
        log.warning("%s: not read: %s", path, exc.strerror or exc)
        return {}
    if data is None:
        return {}
    try:
        document = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        log.warning("%s: not the JSON we write: ignored", path)
        return {}
    hosts = document.get("hosts") if isinstance(document, dict) else None
    if not isinstance(hosts, dict):
        return {}
    entries = list(hosts.items())[:MAX_FILE_NAMES]
    saved = {name: _saved_addresses(name, value) for name, value in entries}
    return {name: addresses for name, addresses in saved.items() if addresses}


def _saved_addresses(hostname: object, addresses: object) -> list[str]:
    """One name's entry in the state file, if it is a host name with a list of addresses."""
    if not isinstance(hostname, str) or not isinstance(addresses, list):
        return []
    try:
        _check_hostname(hostname)
        return [_usable(a) for a in addresses[:MAX_ADDRESSES] if isinstance(a, str)]
    except ValueError:
        return []


def write_saved(path: str, saved: Mapping[str, Sequence[str]]) -> None:
    """Atomically, mode 0600, never through a symbolic link (state_files.write_state)."""
    document = {"version": 1, "hosts": {name: list(addrs) for name, addrs in saved.items()}}
    data = json.dumps(document, indent=1, sort_keys=True).encode()
    try:
        write_state(path, data)
    except StateFileError as exc:
        log.warning("%s: the upstreams' addresses not saved: %s", path, exc)
    except OSError as exc:
        log.warning("%s: the upstreams' addresses not saved: %s", path, exc.strerror or exc)


class _Store:
    """One state file, shared by every name resolved in this process."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        self.saved = read_saved(path) if path else {}

    def save(self, hostname: str, addresses: list[str]) -> None:
        if self.path is None or self.saved.get(hostname) == addresses:
            return
        self.saved[hostname] = addresses
        write_saved(self.path, self.saved)


# --- the addresses of one name ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Settings:
    resolvers: tuple[UpstreamSpec, ...]
    min_ttl: int
    max_ttl: int
    #: how long one resolution may take in all, seconds
    timeout: float


class AddressBook:
    """The addresses of one upstream hostname, shared by every transport that goes there."""

    def __init__(self, hostname: str, settings: Settings, config: Config, store: _Store) -> None:
        self.hostname = hostname
        self._settings = settings
        self.config = config
        self._store = store
        self._addresses: list[str] = list(store.saved.get(hostname, ()))
        self._index = 0
        self._routes = RouteCache()
        #: when to ask again (the event loop's clock; 0: at the first use)
        self._refresh_at = 0.0
        self._failures = 0
        self._last_error: BootstrapError | None = None
        self._refreshing: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        #: resolutions made and failed (for tests and the logs)
        self.resolutions = 0
        self.refresh_failures = 0

    def addresses(self) -> list[str]:
        return list(self._addresses)

    async def address(self) -> str:
        now = asyncio.get_running_loop().time()
        if self._addresses:
            if now >= self._refresh_at:
                self._start_refresh()
            return self._addresses[self._index % len(self._addresses)]
        if now < self._refresh_at and self._last_error is not None:
            raise BootstrapError(f"{self._last_error} (backing off)")
        await asyncio.shield(self._start_refresh())
        if not self._addresses:
            raise self._last_error or BootstrapError(f"{self.hostname}: bootstrap: no address")
        return self._addresses[self._index % len(self._addresses)]

    async def candidates(self) -> list[str]:
        await self.address()  # resolves when there is no address yet
        start = self._index % len(self._addresses)
        return self._addresses[start:] + self._addresses[:start]

    def count(self) -> int:
        return max(1, len(self._addresses))

    def routed(self, address: str) -> bool:
        return self._routes.routed(address)

    def succeeded(self, address: str) -> None:
        if address in self._addresses:
            self._index = self._addresses.index(address)

    def network_changed(self) -> None:
        """Ask again at the next use (a LAN bootstrap may answer otherwise on the new network),
        and put the addresses this host has no route to any more last meanwhile."""
        self._routes.clear()
        self._refresh_at = 0.0
        self._failures = 0
        if self._addresses:
            ipv6 = [a for a in self._addresses if ":" in a]
            ipv4 = [a for a in self._addresses if ":" not in a]
            self._addresses = ordered(ipv6, ipv4)
            self._index = 0

    def failed(self, address: str) -> None:
        if self._addresses and self._addresses[self._index % len(self._addresses)] == address:
            self._index += 1

    def _start_refresh(self) -> asyncio.Task[None]:
        loop = asyncio.get_running_loop()
        task = self._refreshing
        if task is None or task.done() or task.get_loop() is not loop:
            task = self._refreshing = loop.create_task(self._refresh())
        return task

    async def _refresh(self) -> None:
        try:
            await self._resolve_and_keep()
        finally:
            self._schedule_refresh()

    def _schedule_refresh(self) -> None:
        """The next refresh, in the background, on the loop of the last one (its timer goes
        with that loop; the next use on another loop starts again if one is due)."""
        loop = asyncio.get_running_loop()
        if self._timer is not None:
            self._timer.cancel()
        delay = max(0.0, self._refresh_at - loop.time())
        # by weak reference: a book no upstream uses any more (gone with a reload) is collected
        # and stops asking, instead of refreshing its name for the life of the process
        self._timer = loop.call_later(delay, _refresh_if_kept, weakref.ref(self))

    async def _resolve_and_keep(self) -> None:
        try:
            addresses, ttl = await self._resolve()
        except BootstrapError as exc:
            self._failures += 1
            self.refresh_failures += 1
            self._last_error = exc
            retry = min(RETRY_MAX, RETRY_MIN * 2 ** (self._failures - 1))
            self._refresh_at = asyncio.get_running_loop().time() + retry
            kept = f"; keeping {', '.join(self._addresses)}" if self._addresses else ""
            log.warning("%s%s (next try in %.0f s)", exc, kept, retry)
            return
        self.resolutions += 1
        self._failures = 0
        self._last_error = None
        ttl = max(self._settings.min_ttl, min(self._settings.max_ttl, ttl))
        self._refresh_at = asyncio.get_running_loop().time() + ttl * REFRESH_AT
        if addresses != self._addresses:
            log.info("%s is at %s (bootstrap, TTL %d s)", self.hostname, ", ".join(addresses), ttl)
            self._addresses = addresses
            self._index = 0
        self._store.save(self.hostname, addresses)

    async def _resolve(self) -> tuple[list[str], int]:
        """Each bootstrap resolver in turn until one gives an answer; BootstrapError if none."""
        from stubby_py.transports import make_transport  # they import this module

        loop = asyncio.get_running_loop()
        resolvers = self._settings.resolvers
        deadline = loop.time() + self._settings.timeout
        problems: list[str] = []
        for position, spec in enumerate(resolvers):
            share = (deadline - loop.time()) / (len(resolvers) - position)
            transport = make_transport(spec, self.config)
            try:
                return await self._ask(transport, loop.time() + share)
            except (UpstreamError, ValueError) as exc:
                problems.append(f"{spec.label}: {_reason(exc, transport.name)}")
            except Exception as exc:  # a fault of ours stays this upstream's bootstrap failure
                log.error("bootstrap %s: internal error", spec.label, exc_info=exc)
                problems.append(f"{spec.label}: internal error ({type(exc).__name__})")
            finally:
                await transport.aclose()
        raise BootstrapError(f"{self.hostname}: bootstrap failed: {'; '.join(problems)}")

    async def _ask(self, transport: Any, deadline: float) -> tuple[list[str], int]:
        kinds = (dns.rdatatype.AAAA, dns.rdatatype.A)
        replies = await asyncio.gather(
            *(transport.exchange(address_query(self.hostname, kind), deadline) for kind in kinds),
            return_exceptions=True,
        )
        found: list[list[str]] = []
        ttls: list[int] = []
        unanswered: list[BaseException] = []
        for kind, reply in zip(kinds, replies, strict=True):
            if isinstance(reply, BaseException):
                # (a resolver or middlebox that drops AAAA questions: the A answer still counts)
                unanswered.append(reply)
                found.append([])
                continue
            addresses, ttl = parse_addresses(reply, self.hostname, kind)  # a lie: all refused
            found.append(addresses)
            if addresses:
                ttls.append(ttl)
        if not found[0] and not found[1]:
            if unanswered:
                raise unanswered[0]
            raise ValueError(f"no A or AAAA record for {self.hostname}")
        return ordered(found[0], found[1]), min(ttls)


def _refresh_if_kept(book: weakref.ref[AddressBook]) -> None:
    kept = book()
    if kept is not None:
        kept._start_refresh()


def _reason(exc: Exception, transport_name: str) -> str:
    text = str(exc).removeprefix(f"{transport_name}: ")
    kind = getattr(exc, "kind", "bad-answer")
    return text if text.startswith(kind) else f"{kind}: {text}"


# --- which endpoint a transport gets ------------------------------------------------------------

#: the address books of this process, by name and bootstrap settings: shared across reloads and
#: by every upstream (and `check`) that goes to the same name, and held by those upstreams'
#: transports only, so a name no upstream has any more goes with the last transport to it
_books: weakref.WeakValueDictionary[tuple[str, Settings, str | None], AddressBook] = (
    weakref.WeakValueDictionary()
)
_stores: dict[str | None, _Store] = {}


def settings_of(config: Config) -> Settings:
    return Settings(
        resolvers=config.bootstrap.resolvers,
        min_ttl=config.bootstrap.min_ttl,
        max_ttl=config.bootstrap.max_ttl,
        # within one query attempt, so that its failure is told as `bootstrap`
        timeout=max(0.5, config.transport.attempt_timeout * 0.6),
    )


def endpoint_for(spec: UpstreamSpec, config: Config) -> Endpoint:
    """A fixed address, or the shared address book of the upstream's hostname."""
    if not spec.needs_bootstrap or resolved_by_proxy(spec, config):
        return FixedEndpoint(spec.address)
    settings = settings_of(config)
    path = default_file(config.bootstrap.file, os.environ)
    key = (spec.address, settings, path)
    book = _books.get(key)
    if book is None:
        store = _stores.get(path)
        if store is None:
            store = _stores[path] = _Store(path)
        book = _books[key] = AddressBook(spec.address, settings, config, store)
    # the latest configuration's TLS settings (ca_file, tls_min_version) for encrypted bootstraps
    book.config = config
    return book


def forget() -> None:
    """Drop every address book and the state files read (what a new process starts without)."""
    _books.clear()
    _stores.clear()


def books() -> list[AddressBook]:
    return list(_books.values())
