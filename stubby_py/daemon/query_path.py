"""The query path, top to bottom: request checks, the cache, forwarding through the pool, response
shaping.

One place turns errors into answers (`_answer_error`). A listener hands `handle` the client's bytes
and a `respond` callback; every query that is at least a header is answered exactly once, from here,
before its deadline: with the answer, or with SERVFAIL and an Extended DNS Error (RFC 8914).

A cache hit is answered synchronously inside `handle`, with no task. A miss starts one task per
question; identical questions arriving meanwhile (same cache key) join it and are answered from
its outcome. When every upstream fails, an expired answer is served stale (RFC 8767) and the
failure is held (RFC 9520) so that the question is not asked again at once.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import dns.edns
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rdatatype
from dns.edns import EDECode
from dns.rcode import Rcode

from stubby_py.commands.explain import CacheView, ChainLink, Trace, chain_link, describe_reply
from stubby_py.core import cache, local, response, wire
from stubby_py.core.cache import (
    Cache,
    FailureEntry,
    ValidationStatus,
    default_cache_file,
)
from stubby_py.core.config import DEFAULT_GROUP, Config, UpstreamSpec
from stubby_py.core.errors import (
    BadVersionError,
    ClientError,
    DnssecFailureError,
    MalformedQueryError,
    NotImplementedOpcodeError,
    RefusedError,
    UpstreamError,
)
from stubby_py.core.pool import Pool, UpstreamHealth
from stubby_py.core.ratelimit import RateLimiter
from stubby_py.core.router import Router
from stubby_py.daemon.upstreams import UpstreamGroup, transport_settings
from stubby_py.transports.base import Transport

if TYPE_CHECKING:
    from stubby_py.daemon.validation import Validation
    from stubby_py.dnssec.validate import Validator

log = logging.getLogger(__name__)

Respond = Callable[[bytes], None]
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
ACL_CACHE_LIMIT = 4096
TYPE_ANY = 255
#: RFC 8482 §4.2: the minimal answer to ANY over UDP
_ANY_HINFO = ("RFC8482", "")
#: the QR bit in the header's third octet
_QR_OCTET = wire.QR >> 8
#: what the request checks on a query's source say (Resolver._admit)
ADMITTED, REFUSED, DROPPED = 0, 1, 2


class LoggedRespond:
    """A client's `respond` that also writes the query log line: where the answer came from
    ("cache", "upstream", "synthesized", "joined", "stale", "held-failure", "local",
    "any-minimal", "rejected", "rate-limited"), set on the way by `_mark`."""

    __slots__ = ("client_ip", "log", "query", "respond", "source")

    def __init__(
        self, respond: Respond, query_log: Any, client_ip: str, query: wire.ClientQuery
    ) -> None:
        self.respond = respond
        self.log = query_log
        self.client_ip = client_ip
        self.query = query
        self.source = "upstream"

    def __call__(self, reply: bytes) -> None:
        self.respond(reply)
        self.log.record(self.client_ip, self.query, response.rcode_of(reply), self.source)


def _mark(respond: Respond, source: str) -> None:
    if respond.__class__ is LoggedRespond:
        respond.source = source


class AccessList:
    """Client networks allowed to query; verdicts cached per address string."""

    def __init__(self, networks: Sequence[str]) -> None:
        self._networks: list[IPNetwork] = [ipaddress.ip_network(n) for n in networks]
        self._verdicts: dict[str, bool] = {}

    def allows(self, address: str) -> bool:
        verdict = self._verdicts.get(address)
        if verdict is None:
            verdict = self._judge(address)
            if len(self._verdicts) >= ACL_CACHE_LIMIT:
                self._verdicts.clear()
            self._verdicts[address] = verdict
        return verdict

    def _judge(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address.partition("%")[0])
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in net for net in self._networks)


def _parse(data: bytes) -> wire.ClientQuery | None:
    """`data` (at least a header, not a response) as a standard query, or None."""
    if wire.U16.unpack_from(data, 2)[0] & wire.OPCODE_MASK:
        return None
    try:
        return wire.parse_query(data)
    except wire.WireError:
        pass
    try:
        return wire.parse_unusual_query(data)
    except wire.WireError:
        return None


#: a query waiting for the answer to an identical one in flight: query, respond, over UDP
Waiter = tuple[wire.ClientQuery, Respond, bool]
#: what asking upstream came to: a reply body, an upstream failure, or None (an internal error)
Outcome = bytes | UpstreamError | None
#: answers whose informational Extended DNS Error is remembered (the oldest go first)
MAX_ANSWER_NOTES = 10_000


class Resolver:
    def __init__(self, config: Config, transports: Sequence[Transport] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        self.cache = Cache(config.cache)
        #: set by the daemon when a query log is configured (querylog.QueryLog)
        self.query_log: Any = None
        #: DDR (RFC 9462): SVCB records of our encrypted listeners, set by the daemon
        self.designated: tuple[str, ...] = ()
        self._retired: list[Transport] = []
        self._tasks_aside: set[asyncio.Task[None]] = set()
        #: DNSSEC validation at work (None: `dnssec: off`)
        self.validation: Validation | None = None
        #: Extended DNS Errors that go with a cached answer (why it is insecure), by cache key
        self._answer_notes: dict[bytes, tuple[int, str]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        #: questions being asked upstream (by cache key) → the identical queries waiting on them
        self._inflight: dict[bytes, list[Waiter]] = {}
        self.counters: dict[str, int] = {
            "queries": 0, "dropped": 0, "formerr": 0, "refused": 0, "notimp": 0,
            "servfail": 0, "answered": 0, "cache_hits": 0, "cache_misses": 0, "joined": 0,
            "stale": 0, "cached_failures": 0, "prefetches": 0, "rate_limited": 0, "local": 0,
            "any_minimal": 0, "dnssec_secure": 0, "dnssec_insecure": 0, "dnssec_bogus": 0,
            "dnssec_indeterminate": 0, "dnssec_unchecked": 0, "dnssec_retries": 0,
            "dnssec_synthesized": 0,
            "network_changes": 0,
        }  # fmt: skip
        self._apply(config, transports)
        self.cache_file = default_cache_file(config.service.cache_file, os.environ)
        if self.cache_file is not None and self.validation is not None:
            # a file cannot prove what it says (a non-DO answer is kept without its RRSIGs):
            # under validation only what this run validated is served
            log.info("cache: %s not loaded (dnssec: validate)", self.cache_file)
        elif self.cache_file is not None:
            loaded = cache.load(self.cache, self.cache_file, self._loop.time(), time.time())
            log.info("cache: %d answers loaded from %s", loaded, self.cache_file)

    def _apply(
        self,
        config: Config,
        transports: Sequence[Transport] | None,
        reuse: Mapping[UpstreamSpec, tuple[Transport, UpstreamHealth]] | None = None,
    ) -> None:
        """Take a configuration: upstream groups, rules, access list, rate limit, cache limits.
        Everything is built before anything is replaced, so a failure changes nothing (the
        validation first: reading the trust anchors is what most often fails)."""
        validation = self._validation_for(config)
        groups = {
            DEFAULT_GROUP: UpstreamGroup(
                DEFAULT_GROUP, config.forwarding.upstreams, config, transports, reuse
            )
        }
        for name, specs in config.forwarding.groups:
            groups[name] = UpstreamGroup(name, specs, config, reuse=reuse)
        router = Router(dict(config.forwarding.rules))
        acl = AccessList(config.access.allow)
        limiter = (
            RateLimiter(
                config.access.rate_limit,
                config.access.rate_limit_burst,
                ipv6_prefix=config.access.ipv6_client_prefix,
            )
            if config.access.rate_limit > 0
            else None
        )
        exempt = AccessList(config.access.rate_limit_exempt)
        limits = config.cache
        if validation is not self.validation:
            # what was cached under other DNSSEC settings must not pass as checked under these
            self._answer_notes.clear()
            if self.validation is not None:
                self.cache.flush()
                self._aside(self.validation.aclose())
            elif validation is not None:
                self.cache.drop_unvalidated()
            if validation is not None:
                validation.start()
        self.config = config
        self.validation = validation
        self.groups = groups
        self.router = router
        self.acl = acl
        self.rate_limiter = limiter
        self.rate_exempt = exempt
        self.cache.apply_limits(limits)

    def _validation_for(self, config: Config) -> Validation | None:
        """The validation a configuration asks for; the current one (its key cache warm) when the
        DNSSEC settings and the trust anchors (the file is read again on reload) did not change."""
        if config.dnssec.mode != "validate":
            return None
        # imported here: the validator needs cryptography (~8 MB) that `dnssec: off` never does
        from stubby_py.daemon.anchor_updates import AnchorUpdates, default_state_file
        from stubby_py.daemon.validation import Validation
        from stubby_py.dnssec import anchors
        from stubby_py.dnssec.chain import KeyChain
        from stubby_py.dnssec.validate import Validator

        trusted = (
            anchors.load(config.dnssec.trust_anchors)
            if config.dnssec.trust_anchors
            else anchors.builtin()
        )
        old = self.validation
        if (
            old is not None
            and old.configured == trusted
            and (old.updates is not None) == config.dnssec.trust_anchor_updates
            and old.validator.chain.skew == config.dnssec.clock_skew
            and old.validator.chain.max_iterations == config.dnssec.nsec3_max_iterations
        ):
            old.timeout = config.forwarding.timeout
            old.validator.aggressive = config.dnssec.aggressive_nsec
            if not config.dnssec.aggressive_nsec:
                old.validator.chain.denials.flush()
            return old
        updates = None
        if config.dnssec.trust_anchor_updates:
            updates = AnchorUpdates(trusted, default_state_file(os.environ))
        chain = KeyChain(
            updates.anchors() if updates is not None else trusted,
            skew=config.dnssec.clock_skew,
            max_iterations=config.dnssec.nsec3_max_iterations,
            on_anchor_keys=updates.observe if updates is not None else None,
        )
        if updates is not None:
            updates.chain = chain
        return Validation(
            Validator(chain, aggressive=config.dnssec.aggressive_nsec), config.forwarding.timeout,
            self.counters, configured=trusted, updates=updates,
            main_group=lambda: self.groups[DEFAULT_GROUP],
        )  # fmt: skip

    @property
    def validator(self) -> Validator | None:
        return self.validation.validator if self.validation is not None else None

    def reconfigure(self, config: Config) -> None:
        """Apply a new configuration (SIGHUP) keeping the cache. Upstreams that did not change
        keep their connections and health; queries in flight finish on the upstreams they
        started with, and the connections of removed upstreams close once those are done."""
        old = [t for group in self.groups.values() for t in group.transports]
        reuse: dict[UpstreamSpec, tuple[Transport, UpstreamHealth]] = {}
        if transport_settings(config) == transport_settings(self.config):
            for group in self.groups.values():
                for transport, health in zip(group.transports, group.pool.health, strict=True):
                    reuse.setdefault(transport.spec, (transport, health))
        self._apply(config, None, reuse)
        self.cache_file = default_cache_file(config.service.cache_file, os.environ)
        kept = {id(t) for group in self.groups.values() for t in group.transports}
        retired = [t for t in old if id(t) not in kept]
        if retired:
            self._retired.extend(retired)
            self._aside(self._retire(retired))

    def _aside(self, work: Coroutine[Any, Any, None]) -> None:
        """Run work nobody waits for (retiring, closing); cancelled at shutdown."""
        task = self._loop.create_task(work)
        self._tasks_aside.add(task)
        task.add_done_callback(self._tasks_aside.discard)

    async def _retire(self, transports: list[Transport]) -> None:
        await asyncio.sleep(self.config.forwarding.timeout + 0.5)
        for transport in transports:
            await transport.aclose()
            self._retired.remove(transport)

    @property
    def transports(self) -> list[Transport]:
        """The main pool's transports."""
        return self.groups[DEFAULT_GROUP].transports

    @property
    def pool(self) -> Pool:
        return self.groups[DEFAULT_GROUP].pool

    # -- entry point for listeners ------------------------------------------------------
    def handle(self, data: bytes, client_ip: str, respond: Respond, *, udp: bool) -> bool:
        """Answer `data` through `respond`, now or later (True); or drop it (False): what is not
        even a header or is a response, and what the access list or the rate limit say to drop.
        The source is checked before the message is read, so a denied or limited client gets no
        FORMERR or NOTIMP either."""
        self.counters["queries"] += 1
        if len(data) < wire.HEADER_LEN or data[2] & _QR_OCTET:
            self.counters["dropped"] += 1  # never answer a response (no loops)
            return False
        verdict = self._admit(data, client_ip, respond)
        if verdict != ADMITTED:
            return verdict == REFUSED
        query = self._read(data, respond)
        if query is None:
            return True
        if self.query_log is not None:
            respond = LoggedRespond(respond, self.query_log, client_ip, query)
        if query.edns_version > 0:
            self._reject(respond, query, data, BadVersionError())
        elif query.qtype == TYPE_ANY and udp:
            self._answer_any(query, respond)
        elif not (local.is_candidate(query) and self._answer_locally(query, respond, udp)):
            self._answer(query, respond, udp)
        return True

    def _read(self, data: bytes, respond: Respond) -> wire.ClientQuery | None:
        """The client's query (at least a header, not a response), or None when it was answered
        FORMERR or NOTIMP."""
        query = _parse(data)
        if query is None:
            opcode = wire.U16.unpack_from(data, 2)[0] & wire.OPCODE_MASK
            error = NotImplementedOpcodeError() if opcode else MalformedQueryError()
            self._reject(respond, None, data, error)
        return query

    def _admit(self, data: bytes, client_ip: str, respond: Respond) -> int:
        """Request checks on the source, before the message is read: the access list, the rate
        limit (REFUSED to a denied source counts against it too). ADMITTED, or what became of
        the query: REFUSED or DROPPED."""
        if not self.acl.allows(client_ip):
            if self.config.access.deny_action == "refuse" and (
                self.rate_limiter is None or self._within_rate(client_ip)
            ):
                self._refuse(data, client_ip, respond, RefusedError(), None)
                return REFUSED
            self.counters["dropped"] += 1
            self._log_drop(data, client_ip, "denied")
            return DROPPED
        if self.rate_limiter is not None and not self._within_rate(client_ip):
            if self.config.access.rate_limit_action == "refuse":
                self._refuse(data, client_ip, respond, RefusedError("rate limited"), "rate-limited")
                return REFUSED
            self._log_drop(data, client_ip, "rate-limited")
            return DROPPED
        return ADMITTED

    def _refuse(
        self,
        data: bytes,
        client_ip: str,
        respond: Respond,
        error: RefusedError,
        source: str | None,
    ) -> None:
        """REFUSED to a client turned away: with the question when the message reads as a
        query, a bare header when not."""
        query = _parse(data)
        if query is not None and self.query_log is not None:
            respond = LoggedRespond(respond, self.query_log, client_ip, query)
            if source is not None:
                respond.source = source
        self._reject(respond, query, data, error)

    def _log_drop(self, data: bytes, client_ip: str, why: str) -> None:
        if self.query_log is not None and (query := _parse(data)) is not None:
            self.query_log.record_drop(client_ip, query, why)

    def _within_rate(self, client_ip: str) -> bool:
        assert self.rate_limiter is not None
        if self.rate_exempt.allows(client_ip):
            return True
        if self.rate_limiter.allows(client_ip, self._loop.time()):
            return True
        self.counters["rate_limited"] += 1
        return False

    def _answer_locally(self, query: wire.ClientQuery, respond: Respond, udp: bool) -> bool:
        """RFC 6761/6303/8375 names: answered here unless a forwarding rule claims them."""
        zone = local.local_zone(query)
        if zone is None:
            return False
        if not local.is_always_local(zone) and self.router.group_for(query.key[:-5]) is not None:
            return False
        self.counters["local"] += 1
        _mark(respond, "local")
        limit = response.udp_limit(query) if udp else None
        body = local.local_answer(query, zone, self.designated)
        respond(response.client_reply(body, query, limit=limit))
        return True

    def _answer_any(self, query: wire.ClientQuery, respond: Respond) -> None:
        """RFC 8482: no conventional ANY answer over UDP (an amplification favourite)."""
        self.counters["any_minimal"] += 1
        _mark(respond, "any-minimal")
        respond(response.client_reply(local.hinfo_answer(query, *_ANY_HINFO), query, limit=None))

    def _answer(
        self, query: wire.ClientQuery, respond: Respond, udp: bool, trace: Trace | None = None
    ) -> None:
        """The cache's part: a hit is answered here and now, with no task (the hottest path)."""
        cache = self.cache
        now = self._loop.time()
        body = cache.fresh(query.key, now)
        if body is not None:
            self.counters["cache_hits"] += 1
            limit = response.udp_limit(query) if udp else None
            notes = self._answer_notes
            ede = notes.get(query.key) if notes else None
            if respond.__class__ is LoggedRespond:
                respond.source = "cache"
            respond(response.client_reply(body, query, limit=limit, ede=ede))
            if cache.prefetch_due:
                cache.prefetch_due.clear()  # only ever this query's key: fresh() just put it there
                self._prefetch(query)
            return
        waiters = self._inflight.get(query.key)
        if waiters is not None:
            self.counters["joined"] += 1
            _mark(respond, "joined")
            waiters.append((query, respond, udp))
            return
        held = cache.failure(query.key, now)
        if held is not None:
            self._answer_held_failure(query, respond, udp, held, now)
            return
        self.counters["cache_misses"] += 1
        synthesizing = self.validation is not None
        if synthesizing and self._answer_synthesized(query, respond, udp, trace):
            return
        self._start(query, respond, udp, trace)

    def _answer_synthesized(
        self,
        query: wire.ClientQuery,
        respond: Respond,
        udp: bool,
        trace: Trace | None,
    ) -> bool:
        """A miss the validator can answer from the proofs it holds (RFC 8198), answered here and
        now with no task and no upstream query. Not stored in the answer cache: the held proofs
        are the cache (as in Unbound), so a flood of random names under a signed zone neither
        leaves the machine nor evicts the answers cached for everyone else."""
        validation = self.validation
        if validation is None or query.cd or not validation.validator.aggressive:
            return False
        if self.router and self.router.group_for(query.key[:-5]) not in (None, DEFAULT_GROUP):
            return False  # another group's names are not validated
        validated = validation.synthesized(query, trace)
        if validated is None:
            return False
        self.counters["answered"] += 1
        _mark(respond, "synthesized")
        if trace is not None:
            trace.source = "synthesized"
        limit = response.udp_limit(query) if udp else None
        respond(response.client_reply(validated.body, query, limit=limit))
        return True

    def _start(
        self,
        query: wire.ClientQuery,
        respond: Respond | None,
        udp: bool,
        trace: Trace | None = None,
    ) -> None:
        """Ask upstream for query; identical queries arriving meanwhile wait on this one."""
        self._inflight[query.key] = []
        task = self._loop.create_task(self._resolve(query, respond, udp, trace))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _prefetch(self, query: wire.ClientQuery) -> None:
        """Refresh a popular answer before it expires; nobody waits for this one (RFC 8767 §5)."""
        if query.key not in self._inflight:
            self.counters["prefetches"] += 1
            self._start(query, None, False)

    def _reject(
        self, respond: Respond, query: wire.ClientQuery | None, data: bytes, error: ClientError
    ) -> None:
        """Answer a request we will not forward: FORMERR, NOTIMP, REFUSED or BADVERS."""
        name = Rcode.to_text(error.rcode).lower()
        self.counters[name] = self.counters.get(name, 0) + 1
        if respond.__class__ is LoggedRespond and respond.source == "upstream":
            respond.source = "rejected"
        if query is None:
            flags = wire.U16.unpack_from(data, 2)[0]
            respond(wire.header_only_reply(None, wire.header_id(data), flags, error.rcode))
            return
        ede = (error.ede, "") if error.ede is not None else None
        respond(response.error_reply(query, error.rcode, ede))

    # -- forwarding -------------------------------------------------------------------------
    async def _resolve(
        self,
        query: wire.ClientQuery,
        respond: Respond | None,
        udp: bool,
        trace: Trace | None = None,
    ) -> None:
        """Ask upstream, then answer this query and every identical one that joined it."""
        outcome: Outcome = None
        try:
            outcome = await self._fetch(query, trace)
        finally:
            waiters = self._inflight.pop(query.key, [])
            if respond is not None:
                self._deliver(query, respond, udp, outcome)
            for waiter in waiters:
                self._deliver(*waiter, outcome)

    async def _fetch(self, query: wire.ClientQuery, trace: Trace | None = None) -> Outcome:
        """One upstream exchange for the question; the cache learns the answer or the failure."""
        deadline = self._loop.time() + self.config.forwarding.timeout
        name = (self.router.group_for(query.key[:-5]) if self.router else None) or DEFAULT_GROUP
        group = self.groups[name]
        # names a forwarding rule sends to another group (private zones) have no chain from
        # the root; the validation is taken now, so a reload meanwhile changes nothing here
        validation = self.validation
        validating = validation is not None and name == DEFAULT_GROUP
        status = ValidationStatus.UNCHECKED
        started = time.perf_counter() if trace is not None else 0.0
        try:
            if validating:
                assert validation is not None
                validated = await validation.forward(query, group, deadline, trace)
                body, ttl_offsets, layout = validated.body, validated.ttl_offsets, validated.layout
                status = validated.status
                self._note(query.key, validated.note)
            else:
                body, ttl_offsets, layout = await group.forward(query, deadline, trace=trace)
                if trace is not None:
                    trace.upstream_ms = (time.perf_counter() - started) * 1000
                if validation is not None:
                    # a rule's group (a LAN resolver, say) cannot vouch for what we did not check
                    body = wire.with_flag(body, wire.AD, False)
        except DnssecFailureError as exc:
            self.cache.record_failure(
                query.key, self._loop.time(), reason=exc.kind, ede=(exc.ede, str(exc)),
                stale_ok=exc.indeterminate,
            )  # fmt: skip
            if trace is not None:
                trace.failure = f"{exc.kind}: {exc}"
            return exc
        except UpstreamError as exc:
            # the held failure names what failed (the failure that told most), not that it did
            self.cache.record_failure(query.key, self._loop.time(), reason=exc.reason)
            if trace is not None:
                trace.upstream_ms = (time.perf_counter() - started) * 1000
                trace.failure = f"{exc.kind}: {exc}"
            return exc
        except Exception:
            log.exception("internal error while resolving")
            return None
        now = self._loop.time()
        if layout.rcode == Rcode.SERVFAIL:
            # RFC 9520 §2: a SERVFAIL is a resolution failure too; replay it while held
            self.cache.record_failure(query.key, now, reply=body, reason="upstream SERVFAIL")
        else:
            # the client asking now gets the TTLs the cache keeps (clamped), as later ones will
            body = self.cache.store(query.key, body, ttl_offsets, layout, now, status) or body
        return body

    def _note(self, key: bytes, note: tuple[int, str] | None) -> None:
        """Keep an informational EDE (why an answer is insecure) to send with the answer."""
        notes = self._answer_notes
        if note is None:
            if notes:
                notes.pop(key, None)
            return
        if len(notes) >= MAX_ANSWER_NOTES:
            del notes[next(iter(notes))]
        notes[key] = note

    def _deliver(
        self, query: wire.ClientQuery, respond: Respond, udp: bool, outcome: Outcome
    ) -> None:
        limit = response.udp_limit(query) if udp else None
        if isinstance(outcome, bytes) and response.rcode_of(outcome) != Rcode.SERVFAIL:
            self.counters["answered"] += 1
            notes = self._answer_notes
            ede = notes.get(query.key) if notes else None
            respond(response.client_reply(outcome, query, limit=limit, ede=ede))
            return
        # never a stale answer in place of a bogus one; a chain that could not be fetched is an
        # outage like any other (RFC 8767)
        bogus = isinstance(outcome, DnssecFailureError) and not outcome.indeterminate
        if not bogus and self._answer_stale(query, respond, limit):
            return
        if isinstance(outcome, bytes):
            self.counters["servfail"] += 1
            respond(response.client_reply(outcome, query, limit=limit))
        elif outcome is None:
            self.counters["servfail"] += 1
            respond(response.error_reply(query, Rcode.SERVFAIL, (EDECode.OTHER, "internal error")))
        else:
            respond(self._answer_error(query, outcome, limit))

    def _answer_stale(self, query: wire.ClientQuery, respond: Respond, limit: int | None) -> bool:
        """RFC 8767: every upstream failed; answer from an expired entry if one is recent enough."""
        stale = self.cache.stale(query.key, self._loop.time())
        if stale is None:
            return False
        self.counters["stale"] += 1
        _mark(respond, "stale")
        # RFC 8914 §4.4 and §4.20: EDE 3 Stale Answer, or 19 for a stale NXDOMAIN
        if response.rcode_of(stale) == Rcode.NXDOMAIN:
            ede = (EDECode.STALE_NXDOMAIN_ANSWER, "")
        else:
            ede = (EDECode.STALE_ANSWER, "")
        respond(response.client_reply(stale, query, limit=limit, ede=ede))
        return True

    def _answer_held_failure(
        self,
        query: wire.ClientQuery,
        respond: Respond,
        udp: bool,
        held: FailureEntry,
        now: float,
    ) -> None:
        """RFC 9520 §3: the question failed moments ago; do not ask again before the hold ends."""
        limit = response.udp_limit(query) if udp else None
        if (held.ede is None or held.stale_ok) and self._answer_stale(query, respond, limit):
            return
        self.counters["cached_failures"] += 1
        self.counters["servfail"] += 1
        _mark(respond, "held-failure")
        if held.reply is not None:
            respond(response.client_reply(held.reply, query, limit=limit))
            return
        if held.ede is not None:
            respond(_error_reply(query, Rcode.SERVFAIL, held.ede, limit))
            return
        text = f"cached failure ({held.reason}), retry in {held.until - now:.0f} s"
        respond(_error_reply(query, Rcode.SERVFAIL, (EDECode.CACHED_ERROR, text), limit))

    def _answer_error(
        self, query: wire.ClientQuery, exc: UpstreamError, limit: int | None = None
    ) -> bytes:
        counter = Rcode.to_text(exc.rcode).lower()  # "servfail" for every upstream error today
        self.counters[counter] = self.counters.get(counter, 0) + 1
        ede_code = exc.ede if exc.ede is not None else EDECode.OTHER
        text = str(exc.args[0]) if exc.args else exc.kind
        return _error_reply(query, exc.rcode, (ede_code, text), limit)

    # -- explain ------------------------------------------------------------------------------
    async def explain(self, name: str, qtype: int, *, do: bool = False) -> Trace:
        """`stubby-py explain`: ask the question as a client would (EDNS, DO as given, AD set, CD
        clear) through the normal path, recording what it looked at and asked on the way."""
        started = time.perf_counter()
        qname = dns.name.from_text(name)
        rdtype = dns.rdatatype.RdataType.make(qtype)
        message = dns.message.make_query(qname, rdtype, use_edns=0, want_dnssec=do)
        message.flags |= dns.flags.AD  # RFC 6840 §5.7: AD back on a secure answer, same cache key
        query = wire.parse_query(message.to_wire())
        trace = Trace(qname.to_text(), dns.rdatatype.to_text(rdtype), do)
        rule = self.router.rule_for(query.key[:-5])
        trace.rule, trace.group = rule if rule is not None else (None, DEFAULT_GROUP)
        now = self._loop.time()
        trace.cache = self._cache_view(query.key, now)
        reply: asyncio.Future[bytes] = self._loop.create_future()

        def capture(data: bytes) -> None:
            if not reply.done():
                reply.set_result(data)

        if local.is_candidate(query) and self._answer_locally(query, capture, False):
            trace.source = "local"
        else:
            if trace.cache.state == "fresh":
                trace.source = "cache"
            elif query.key in self._inflight:
                trace.source = "joined"
            elif trace.cache.held_failure is not None:
                trace.source = "held-failure"
            else:
                trace.source = "upstream"
            self._answer(query, capture, False, trace)
        describe_reply(trace, await asyncio.wait_for(reply, self.config.forwarding.timeout + 2.0))
        if trace.group == DEFAULT_GROUP:
            trace.key_chain = self._key_chain(qname)
        trace.total_ms = (time.perf_counter() - started) * 1000
        return trace

    def _cache_view(self, key: bytes, now: float) -> CacheView:
        view = CacheView()
        entry = self.cache.peek(key)
        if entry is not None:
            left = entry.expires - now
            if left > 0:
                view.state = "fresh"
            elif self.cache.stale(key, now) is not None:
                view.state = "stale"
            else:
                view.state = "expired"
            view.ttl_left = round(left, 1)
            view.validation = entry.status.name.lower()
            view.prefetch_due = left > 0 and entry.visited and now >= entry.prefetch_at
        held = self.cache.failure(key, now)
        if held is not None:
            view.held_failure = held.reason or "failure"
            view.retry_in = round(held.until - now, 1)
        return view

    def _key_chain(self, qname: dns.name.Name) -> list[ChainLink]:
        """The deepest zone on qname's path the key cache holds, with its chain from the anchor."""
        if self.validator is None:
            return []
        now = time.time()
        for depth in range(len(qname), 0, -1):
            entry = self.validator.chain.cached(qname.split(depth)[1], now)
            if entry is None:
                continue
            if entry.links:
                return [chain_link(link.zone, link.security, link.detail) for link in entry.links]
            return [chain_link(entry.zone.to_text(), entry.security, entry.reason)]
        return []

    def network_changed(self, reason: str) -> None:
        """The network changed or the machine woke up (netwatch.py): every upstream connection
        is retired, so no later query travels on one opened before, and every backoff is
        forgotten, so upstreams are tried again at once. The cache keeps answering meanwhile."""
        seen: set[int] = set()
        for group in self.groups.values():
            group.pool.reset()
            for transport in group.transports:
                if id(transport) not in seen:  # groups may share a transport after a reload
                    seen.add(id(transport))
                    transport.reset()
        self.counters["network_changes"] += 1
        log.info("network change (%s): upstream connections renewed, backoff reset", reason)

    # -- life cycle ---------------------------------------------------------------------------
    async def drain(self, timeout: float) -> None:
        """Wait (bounded) for the queries in flight to be answered."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=timeout)

    async def aclose(self) -> None:
        """Save the cache (if it persists) and close the upstream connections."""
        if self.cache_file is not None:
            saved = cache.save(self.cache, self.cache_file, self._loop.time(), time.time())
            if saved:
                log.info("cache: %d answers saved to %s", len(self.cache), self.cache_file)
        for task in list(self._tasks_aside):
            task.cancel()
        if self.validation is not None:
            await self.validation.aclose()
        for group in self.groups.values():
            await group.aclose()
        for transport in self._retired:
            await transport.aclose()

    def snapshot(self) -> dict[str, Any]:
        now = self._loop.time()
        return {
            "counters": dict(self.counters),
            "cache": {"entries": len(self.cache), "bytes": self.cache.nbytes,
                      "evictions": self.cache.evictions},
            "upstreams": [
                {"group": group.name, "name": t.name, "transport": t.spec.transport,
                 "queries": t.stats.queries, "failures": t.stats.failures,
                 "failure_kinds": dict(t.stats.failure_kinds),
                 "handshakes": t.stats.handshakes, "mismatched": t.stats.mismatched,
                 "resent": t.stats.resent,
                 "state": group.pool.health[i].state(now),
                 "latency_ewma_ms": _ms(group.pool.health[i].latency_ewma),
                 "latencies_ms": [round(x * 1000, 3) for x in group.pool.health[i].latencies]}
                for group in self.groups.values()
                for i, t in enumerate(group.transports)
            ],
        }  # fmt: skip


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


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)
