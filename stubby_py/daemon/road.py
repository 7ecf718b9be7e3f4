"""On the road, the daemon's side: the network's own resolver (learned, refreshed on network
changes) and the captive-portal check that uses it (core/portal.py decides).

`Road` hangs on the query path (`Resolver.road`): while a portal is suspected or the user's
window is open, `intercept` takes the questions that do not go upstream: a check name (or, in
the window, any name) is asked of the network resolver over plain UDP and answered without AD,
with short TTLs, never cached; any other name is answered SERVFAIL with an Extended DNS Error
saying a portal is suspected, and is sent nowhere. A cached answer is always served first, so
nothing validated is replaced by the network's.

The check runs after start-up and after every network change (netwatch.py calls
`network_changed`): when no upstream of the main pool answers a probe but the network resolver
answers, a portal is suspected; the upstreams are probed again every few seconds, and the first
answer ends the suspicion and any window.

DNS64 (`dns64: auto`): the NAT64 prefix comes from the routers' advertisements when they carry
one (RFC 8781 PREF64, passed on by netwatch.py; kept for its lifetime, gone when withdrawn or
when its interface goes down); RFC 8781 §5 says to use one source only and to prefer the RA's
(RFC 9872 recommends it again). Without one, it is asked of the network resolver alone (RFC
7050: `ipv4only.arpa AAAA`; the upstreams are elsewhere and cannot know this network's NAT64) at
start, after every network change and reload, and when the RA's prefix goes; no prefix found,
DNS64 is off. The kernel keeps no RA options: after a start, the RA's prefix is known from the
next advertisement on (RFC 7050's until then). A configured prefix is used as it is. While a
prefix is in use `Resolver.dns64` synthesizes (daemon/dns64.py). A captive-portal URI in the RAs
(RFC 8910) is used when systemd-networkd's link files name none.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Sequence
from ipaddress import IPv6Network
from typing import TYPE_CHECKING, Any

import dns.exception
import dns.message
import dns.name

from stubby_py.core import answers, dns64, edns, network_resolver, response, wire
from stubby_py.core.config import DEFAULT_GROUP, parse_upstream_uri
from stubby_py.core.errors import UpstreamError
from stubby_py.core.network_resolver import NetworkResolver, portal_host
from stubby_py.core.portal import (
    BLOCKED_TEXT,
    CHECK_NAMES,
    WINDOW_DEFAULT,
    PortalState,
    PortalSuspectedError,
    Route,
    cap_ttls,
)
from stubby_py.core.ra_options import RouterOffers, RouterOption
from stubby_py.daemon.dns64 import Dns64
from stubby_py.daemon.upstreams import scan
from stubby_py.transports import make_transport

if TYPE_CHECKING:
    from stubby_py.daemon.context import QueryContext
    from stubby_py.daemon.query_path import Resolver
    from stubby_py.transports.base import Transport

log = logging.getLogger(__name__)

#: after a network change, let routes and addresses settle before the first check, seconds
SETTLE = 1.0
#: while a portal is suspected (or a window is open), the upstreams are probed this often,
#: growing to the most
FIRST_INTERVAL = 2.0
MAX_INTERVAL = 15.0
#: a probe of the network resolver asks this name (a check name: it may see it anyway)
PROBE_NAME = "connectivity-check.ubuntu.com."
#: RFC 7050 discovery: asked this many times before DNS64 is left off
DISCOVERY_TRIES = 3
STATE_ROOT_VARIABLE = "STUBBY_PY_NETWORK_STATE_ROOT"
#: where the NAT64 prefix in use came from (stats, metrics, `stubby-py portal`)
SOURCE_RA = "ra-pref64"
SOURCE_RFC7050 = "rfc7050"
SOURCE_CONFIGURED = "configured"


def read_sources(root: str = "") -> tuple[list[tuple[str, list[str]]], str | None]:
    """The files network_resolver.SOURCES names, as (path, servers) in order, and the first
    captive-portal URI a link records. `root` prefixes every path (tests)."""
    sources: list[tuple[str, list[str]]] = []
    portal_uri: str | None = None
    for path in network_resolver.SOURCES:
        if path == network_resolver.NETWORKD_LINKS:
            try:
                names = sorted(os.listdir(root + path))
            except OSError:
                continue
            for name in names:
                text = _read(f"{root}{path}/{name}")
                if text is None:
                    continue
                sources.append((f"{path}/{name}", network_resolver.link_servers(text)))
                portal_uri = portal_uri or network_resolver.link_portal(text)
            continue
        text = _read(root + path)
        if text is not None:
            sources.append((path, network_resolver.resolv_conf_servers(text)))
    return sources, portal_uri


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read(65_536)
    except OSError:
        return None


class Road:
    """The network resolver and the portal state of one daemon."""

    def __init__(
        self, resolver: Resolver, own_listen: Sequence[tuple[str, int]], root: str = ""
    ) -> None:
        self._resolver = resolver
        self._own = list(own_listen)
        #: where the network's state files are read: "" is /; STATE_ROOT_VARIABLE may move it
        #: (a container with the host's /run mounted elsewhere; the tests, which must never
        #: learn the machine's real resolver)
        self._root = root or os.environ.get(STATE_ROOT_VARIABLE, "")
        self._loop = asyncio.get_running_loop()
        self.network: NetworkResolver | None = None
        self.portal_uri: str | None = None
        self.state = PortalState()
        self._transport: Transport | None = None
        self._watch: asyncio.Task[None] | None = None
        self._discovery: asyncio.Task[None] | None = None
        #: why DNS64 is off or where its prefix came from
        self.dns64_note = "not yet looked for"
        #: what the routers' advertisements offered (netwatch.py passes their options on)
        self.offers = RouterOffers()
        self._portal_from_links: str | None = None
        self._offer_timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    # -- the network resolver ----------------------------------------------------------------
    def learn(self) -> None:
        """Read what the system says the network offered (or the configured one)."""
        setting = self._resolver.config.road.network_resolver
        portal_uri = None
        if setting == "off":
            found = None
        elif setting == "auto":
            sources, portal_uri = read_sources(self._root)
            found = network_resolver.choose(sources, self._own)
        else:
            found = network_resolver.configured(setting)
        self._portal_from_links = portal_uri
        self.portal_uri = portal_uri or self.offers.portal_uri()
        if found == self.network:
            return
        self.network = found
        if self._transport is not None:
            old, self._transport = self._transport, None
            self._spawn(old.aclose())
        if found is None:
            log.info("network resolver: none known (%s)", setting)
            return
        self._transport = make_transport(parse_upstream_uri(found.label), self._resolver.config)
        log.info("network resolver: %s (from %s)", found.label, found.source)

    # -- triggers ----------------------------------------------------------------------------
    def start(self) -> None:
        self.learn()
        self._discover_dns64(settle=0.0)
        self._check()

    def network_changed(self, reason: str) -> None:
        """netwatch.py: a new network may have another resolver, and a portal of its own."""
        self.learn()
        self._discover_dns64(settle=SETTLE)
        if self.state.clear():
            log.info("captive portal: suspicion and window ended by the network change")
        self._check()

    def reconfigured(self) -> None:
        """A reload changed `network_resolver`, `captive_portal` or `dns64`."""
        self.learn()
        self._discover_dns64(settle=0.0)
        if self._resolver.config.road.captive_portal == "off" and self.state.suspected:
            self.state.suspected_since = None
            log.info("captive portal: check turned off by the reload")
        self._check()

    def _check(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
        self.state.enabled = self._resolver.config.road.captive_portal == "auto"
        if not self.state.enabled:
            self.state.close_window()
        if self._transport is None or not self.state.enabled:
            self._watch = None  # nothing to check with, or nothing to check
            return
        self._watch = self._loop.create_task(self._watching())

    async def _watching(self) -> None:
        await asyncio.sleep(SETTLE)
        interval = FIRST_INTERVAL
        state = self.state
        while True:
            if await self._upstreams_answer():
                if state.clear():
                    log.warning("captive portal: the upstreams answer again; back to them only")
                return
            now = self._loop.time()
            for ended in state.expire(now):
                log.warning("captive portal: the %s ran out of time", ended)
            if not state.suspected and state.enabled and self._transport is not None:
                if not await self._network_answers():
                    if state.window_until is None:
                        return  # nothing answers: no network at all, not a portal
                elif state.suspect(now, portal_host(self.portal_uri)):
                    log.warning(
                        "captive portal suspected: no upstream answers, the network resolver"
                        " %s does; resolving only the connectivity-check names%s through it",
                        self.network.label if self.network else "?",
                        f" and {state.portal_host}" if state.portal_host else "",
                    )  # fmt: skip
            if not state.engaged:
                return
            await asyncio.sleep(interval)
            interval = min(MAX_INTERVAL, interval * 1.5)

    async def _upstreams_answer(self) -> bool:
        """Does any upstream of the main pool (or its fallback) answer a probe now?"""
        config = self._resolver.config
        probe = edns.probe_query(config.transport.padding_block)
        deadline = self._loop.time() + config.transport.attempt_timeout

        async def one(transport: Transport) -> bool:
            try:
                await transport.exchange(probe, deadline)
            except UpstreamError:
                return False
            return True

        transports = self._resolver.groups[DEFAULT_GROUP].transports
        results = await asyncio.gather(*(one(t) for t in transports))
        return any(results)

    async def _network_answers(self) -> bool:
        transport = self._transport
        if transport is None:
            return False
        message = dns.message.make_query(PROBE_NAME, "A")
        message.id = 0
        deadline = self._loop.time() + self._resolver.config.transport.attempt_timeout
        try:
            wire.scan_reply(await transport.exchange(message.to_wire(), deadline))
        except (UpstreamError, wire.WireError):
            return False
        return True

    # -- DNS64: the NAT64 prefix -------------------------------------------------------------
    def router_option(self, option: RouterOption) -> None:
        """netwatch.py: an option of a Router Advertisement (PREF64, captive portal...)."""
        if self.offers.note(option, self._loop.time()):
            self._offers_changed()

    def link_down(self, ifindex: int) -> None:
        if self.offers.forget_interface(ifindex):
            self._offers_changed()

    def _offers_changed(self) -> None:
        self.portal_uri = self._portal_from_links or self.offers.portal_uri()
        if self._resolver.config.road.dns64 != "auto":
            return
        if self._ra_prefix():
            if self._discovery is not None:  # RFC 8781 §5: one source, the RA's preferred
                self._discovery.cancel()
                self._discovery = None
        elif self._resolver_dns64_source() == SOURCE_RA:
            note = "the routers' PREF64 ran out, was withdrawn, or its interface went down"
            self._use_prefix(None, "", note)
            self._discover_dns64(settle=0.0)

    def _ra_prefix(self) -> bool:
        """Use the RAs' NAT64 prefix if they offer one (and watch its lifetime): True if so."""
        if self._offer_timer is not None:
            self._offer_timer.cancel()
            self._offer_timer = None
        offer = self.offers.pref64(self._loop.time())
        if offer is None:
            return False
        try:
            interface = socket.if_indextoname(offer.ifindex)
        except OSError:
            interface = f"interface {offer.ifindex}"
        router = f" from {offer.router}" if offer.router is not None else ""
        self._use_prefix(offer.prefix, SOURCE_RA, f"PREF64 in router advertisements{router}"
                         f" on {interface}")  # fmt: skip
        expiry = self.offers.next_expiry()
        if expiry is not None:
            self._offer_timer = self._loop.call_at(expiry, self._offers_changed)
        return True

    def _resolver_dns64_source(self) -> str | None:
        current = self._resolver.dns64
        return current.source if current is not None else None

    def _discover_dns64(self, settle: float) -> None:
        if self._discovery is not None:
            self._discovery.cancel()
            self._discovery = None
        setting = self._resolver.config.road.dns64
        if setting == "off":
            self._use_prefix(None, "", "off in the configuration")
        elif setting != "auto":
            self._use_prefix(IPv6Network(setting), SOURCE_CONFIGURED, "configured")
        elif self._ra_prefix():
            pass  # RFC 8781 §5: one source, the RA's preferred
        elif self._transport is None:
            self._use_prefix(None, "", "no network resolver to ask")
        else:
            self._discovery = self._loop.create_task(self._discovering(self._transport, settle))

    async def _discovering(self, transport: Transport, settle: float) -> None:
        """RFC 7050 §3: ask `ipv4only.arpa AAAA`; a few tries, as a new network settles."""
        label = self.network.label if self.network else "?"
        await asyncio.sleep(settle)
        query = dns64.discovery_query()
        for _attempt in range(DISCOVERY_TRIES):
            deadline = self._loop.time() + self._resolver.config.transport.attempt_timeout
            try:
                reply = await transport.exchange(query, deadline)
            except UpstreamError:
                continue
            prefixes = dns64.discovered_prefixes(reply)
            if prefixes:
                note = f"{dns64.DISCOVERY_NAME} through {label}"
                self._use_prefix(prefixes[0], SOURCE_RFC7050, note)
            else:
                note = f"no NAT64 prefix in {dns64.DISCOVERY_NAME} ({label})"
                self._use_prefix(None, "", note)
            return
        self._use_prefix(None, "", f"the network resolver {label} did not answer")

    def _use_prefix(self, prefix: IPv6Network | None, source: str, note: str) -> None:
        resolver = self._resolver
        current = resolver.dns64
        self.dns64_note = note
        if prefix is None:
            if current is not None:
                log.info("dns64: off (%s)", note)
            resolver.dns64 = None
            return
        if current is not None and current.prefix == prefix:
            current.source = source
            return
        log.info("dns64: synthesizing AAAA under %s (%s: %s)", prefix, source, note)
        resolver.dns64 = Dns64(resolver, prefix, source)

    # -- the query path's hook ---------------------------------------------------------------
    def intercept(self, context: QueryContext) -> bool:
        """Take the question if it does not go upstream now (the state is engaged)."""
        query = context.query
        resolver = self._resolver
        if resolver.router and resolver.router.group_for(query.key[:-5]) not in (
            None, DEFAULT_GROUP,
        ):  # fmt: skip
            return False  # a rule's group (a LAN resolver) is not the upstreams' business
        try:
            qname = dns.name.from_wire(query.question, 0)[0].to_text().lower()
        except dns.exception.DNSException:
            return False
        route = self.state.route(qname, self._loop.time())
        if route is Route.UPSTREAM:
            return False
        if route is Route.BLOCKED or self._transport is None:
            resolver.counters["portal_blocked"] += 1
            context.source = "portal-blocked"
            error = PortalSuspectedError(BLOCKED_TEXT)
            context.answer(answers.error_answer(query, error, context.limit))
            return True
        self._spawn(self._through_network(context, qname, self._transport))
        return True

    async def _through_network(
        self, context: QueryContext, qname: str, transport: Transport
    ) -> None:
        query = context.query
        resolver = self._resolver
        deadline = self._loop.time() + resolver.config.forwarding.timeout
        context.source = "network-resolver"
        try:
            data = edns.upstream_query(query, pad_block=0, do=query.do, cd=query.cd)
            body, ttl_offsets, _layout = scan(await transport.exchange(data, deadline), transport)
        except UpstreamError as exc:
            context.answer(answers.error_answer(query, exc, context.limit))
            return
        body = cap_ttls(wire.with_flag(body, wire.AD, False), ttl_offsets)
        resolver.counters["portal_answers"] += 1
        first = self.state.note_answered(qname)
        if first and (qname in CHECK_NAMES or qname == self.state.portal_host):
            # built-in names and the network's own: the names of the user's queries are never
            # logged (the window's are counted here, and shown by `stubby-py portal`)
            log.warning("captive portal: %s answered through the network resolver", qname)
        context.answer(response.client_reply(body, query, limit=context.limit))

    # -- the control socket ------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        state = self.state
        now = self._loop.time()
        state.expire(now)
        return {
            "captive_portal": self._resolver.config.road.captive_portal,
            "network_resolver": self.network.label if self.network else None,
            "network_resolver_source": self.network.source if self.network else None,
            "portal_uri": self.portal_uri,
            "suspected": state.suspected,
            "suspected_since": _wall(state.suspected_since, now),
            "window_until": _wall(state.window_until, now),
            "answered": dict(state.answered),
            "suspicions": state.suspicions,
            "windows": state.windows,
            "dns64_prefix": self._dns64_prefix(),
            "dns64_source": self._resolver_dns64_source(),
            "dns64": self.dns64_note,
        }

    def summary(self) -> dict[str, Any]:
        """For stats and metrics: no names."""
        self.state.expire(self._loop.time())
        return {
            "suspected": self.state.suspected,
            "window_open": self.state.window_until is not None,
            "network_resolver": self.network.label if self.network else None,
            "dns64_prefix": self._dns64_prefix(),
            "dns64_source": self._resolver_dns64_source(),
        }

    def _dns64_prefix(self) -> str | None:
        dns64 = self._resolver.dns64
        return str(dns64.prefix) if dns64 is not None else None

    def open_window(self, seconds: float = WINDOW_DEFAULT) -> dict[str, Any]:
        if self._resolver.config.road.captive_portal == "off":
            return {"ok": False, "error": "captive_portal is off in the configuration"}
        if self._transport is None:
            return {"ok": False, "error": "no network resolver is known (network_resolver)"}
        until = self.state.open_window(self._loop.time(), seconds)
        self.state.answered = {}
        log.warning(
            "captive portal: window opened by the user for %d s: ALL names go to the network"
            " resolver %s, in cleartext, without validation", until - self._loop.time(),
            self.network.label if self.network else "?",
        )  # fmt: skip
        if self._watch is None or self._watch.done():
            self._watch = self._loop.create_task(self._watching())
        return {"ok": True, **self.status()}

    def close_window(self) -> dict[str, Any]:
        if self.state.close_window():
            log.warning("captive portal: window closed by the user")
        return {"ok": True, **self.status()}

    # -- the rest ----------------------------------------------------------------------------
    def _spawn(self, coroutine: Any) -> None:
        task = self._loop.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def aclose(self) -> None:
        if self._offer_timer is not None:
            self._offer_timer.cancel()
        tasks = [*self._tasks, *(t for t in (self._watch, self._discovery) if t is not None)]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._transport is not None:
            await self._transport.aclose()
        if self._resolver.dns64 is not None:
            await self._resolver.dns64.aclose()


def _wall(loop_time: float | None, now: float) -> str | None:
    if loop_time is None:
        return None
    when = time.time() - (now - loop_time)
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(when))
