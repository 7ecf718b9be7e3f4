"""The query path, top to bottom: admission, local answers, the cache, forwarding through the
upstream groups (and the validation edge), delivery.

A listener hands `handle` the client's bytes and a `respond` callback; every query that is at
least a header is answered exactly once, from here, before its deadline: with the answer, or
with an error and an Extended DNS Error (RFC 8914) as core/answers.py shapes it. Each admitted
query gets one `QueryContext`, passed down instead of separate parameters.

A cache hit is answered synchronously inside `handle`, with no task. A miss starts one task per
question; identical questions arriving meanwhile (same cache key) join it and are answered from
its outcome. When every upstream fails, an expired answer is served stale (RFC 8767) and the
failure is held (RFC 9520) so that the question is not asked again at once. What the query path
works with (groups, rules, validation, cache limits) is set by daemon/runtime.py.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from dns.rcode import Rcode

from stubby_py.core import admission, answers, local, response, wire
from stubby_py.core.access import AccessList
from stubby_py.core.admission import Rejection
from stubby_py.core.cache import Cache, ValidationStatus
from stubby_py.core.config import DEFAULT_GROUP, Config
from stubby_py.core.errors import DnssecFailureError, InternalError, UpstreamError
from stubby_py.core.pool import Pool
from stubby_py.core.router import Router
from stubby_py.daemon.context import QueryContext
from stubby_py.daemon.fallback import ANSWERED_VIA
from stubby_py.listeners.handler import Respond

if TYPE_CHECKING:
    from stubby_py.daemon.dns64 import Dns64
    from stubby_py.daemon.explain import Trace
    from stubby_py.daemon.querylog import QueryLog
    from stubby_py.daemon.road import Road
    from stubby_py.daemon.upstreams import UpstreamGroup
    from stubby_py.daemon.validation import Validation
    from stubby_py.dnssec.validate import Validator
    from stubby_py.transports.base import Transport

log = logging.getLogger(__name__)

TYPE_ANY = 255
TYPE_AAAA = 28
#: RFC 8482 §4.2: the minimal answer to ANY over UDP
_ANY_HINFO = ("RFC8482", "")
#: what asking upstream came to: a reply body or the error that stands for it
Outcome = bytes | UpstreamError | InternalError
#: the outcome of a forwarding task that ended without one (cancelled at shutdown): never raised,
#: so one instance serves (building it per query was ~2 % of a miss's CPU)
DIED = InternalError()
#: answers whose informational Extended DNS Error is remembered (the oldest go first)
MAX_ANSWER_NOTES = 10_000
COUNTERS = (
    "queries", "dropped", "formerr", "refused", "notimp", "servfail", "answered", "cache_hits",
    "cache_misses", "joined", "stale", "cached_failures", "prefetches", "rate_limited", "local",
    "any_minimal", "dnssec_secure", "dnssec_insecure", "dnssec_bogus", "dnssec_indeterminate",
    "dnssec_unchecked", "dnssec_retries", "dnssec_synthesized", "network_changes",
    "portal_answers", "portal_blocked", "dns64_synthesized",
)  # fmt: skip


class Resolver:
    #: set by daemon/runtime.py, and again on reload
    config: Config
    groups: dict[str, UpstreamGroup]
    router: Router
    rules: admission.Rules
    #: the access list (listeners check it at accept)
    acl: AccessList
    #: DNSSEC validation at work (None: `dnssec: off`)
    validation: Validation | None = None
    #: the network resolver and the captive-portal state (daemon/road.py), set by the daemon
    road: Road | None = None
    #: DNS64 while a NAT64 prefix is in use (daemon/dns64.py; set by daemon/road.py)
    dns64: Dns64 | None = None

    def __init__(self, cache: Cache) -> None:
        self._loop = asyncio.get_running_loop()
        self.cache = cache
        #: set by the daemon when a query log is configured
        self.query_log: QueryLog | None = None
        #: DDR (RFC 9462): SVCB records of our encrypted listeners, per client; set by the daemon
        self.designated: local.Designation = local.NO_DESIGNATION
        #: Extended DNS Errors that go with a cached answer (why it is insecure), by cache key
        self.answer_notes: dict[bytes, tuple[int, str]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        #: questions being asked upstream (by cache key) → the identical queries waiting on them
        self._inflight: dict[bytes, list[QueryContext]] = {}
        self.counters: dict[str, int] = dict.fromkeys(COUNTERS, 0)

    @property
    def validator(self) -> Validator | None:
        return self.validation.validator if self.validation is not None else None

    @property
    def transports(self) -> list[Transport]:
        """The main pool's transports."""
        return self.groups[DEFAULT_GROUP].transports

    @property
    def pool(self) -> Pool:
        return self.groups[DEFAULT_GROUP].pool

    # -- entry point for listeners ------------------------------------------------------
    def handle(self, data: bytes, client_ip: str, respond: Respond, *, udp: bool) -> bool:
        """Answer `data` through `respond`, now or later (True); or drop it (False): see
        core/admission.py for what is dropped and what is answered without forwarding."""
        self.counters["queries"] += 1
        now = self._loop.time()
        query = admission.admit(data, client_ip, now, self.rules)
        if isinstance(query, Rejection):
            return self._turn_away(data, client_ip, respond, query)
        context = QueryContext(
            query, respond, client_ip, response.udp_limit(query) if udp else None, now,
            self.query_log,
        )  # fmt: skip
        if query.qtype == TYPE_ANY and udp:
            self._answer_any(context)
        elif not (local.is_candidate(query) and self.answer_locally(context)):
            self.answer(context)
        return True

    def handle_denied(self, data: bytes, client_ip: str, respond: Respond) -> bool:
        """A message from a client a listener's own `allow` leaves out: refused or dropped as
        one from outside the global `allow` is (`deny_action`), and counted alike."""
        self.counters["queries"] += 1
        rejection = admission.deny(data, client_ip, self._loop.time(), self.rules)
        return self._turn_away(data, client_ip, respond, rejection)

    def _turn_away(
        self, data: bytes, client_ip: str, respond: Respond, rejection: Rejection
    ) -> bool:
        """What admission said no to: answered with its error, or dropped (and logged)."""
        counters = self.counters
        for name in rejection.counters:
            counters[name] = counters.get(name, 0) + 1
        query_log = self.query_log
        if rejection.error is None:
            if rejection.log_as and query_log is not None and (query := admission.parse(data)):
                query_log.record_drop(client_ip, query, rejection.log_as)
            return False
        query = admission.parse(data) if rejection.log_as else None
        reply = answers.rejection(data, query, rejection.error)
        respond(reply)
        if query is not None and query_log is not None:
            query_log.record(client_ip, query, response.rcode_of(reply), rejection.log_as)
        return True

    def answer_locally(self, context: QueryContext) -> bool:
        """RFC 6761/6303/8375 names: answered here unless a forwarding rule claims them."""
        query = context.query
        zone = local.local_zone(query)
        if zone is None:
            return False
        if not local.is_always_local(zone) and self.router.group_for(query.key[:-5]) is not None:
            return False
        self.counters["local"] += 1
        context.source = "local"
        designated = self.designated.for_client(context.client_ip)
        body = local.local_answer(query, zone, designated)
        context.answer(response.client_reply(body, query, limit=context.limit))
        return True

    def _answer_any(self, context: QueryContext) -> None:
        """RFC 8482: no conventional ANY answer over UDP (an amplification favourite)."""
        self.counters["any_minimal"] += 1
        context.source = "any-minimal"
        body = local.hinfo_answer(context.query, *_ANY_HINFO)
        context.answer(response.client_reply(body, context.query, limit=None))

    def answer(self, context: QueryContext) -> None:
        """The cache's part: a hit is answered here and now, with no task (the hottest path)."""
        cache = self.cache
        query = context.query
        stored = cache.hit(query.key, context.received)  # the body without its question
        if stored is not None:
            self.counters["cache_hits"] += 1
            context.source = "cache"
            dns64 = self.dns64
            if (
                dns64 is not None
                and query.qtype == TYPE_AAAA
                and dns64.takes(context, cache.with_question(query.key, stored))
            ):
                pass  # NODATA on an IPv6-only network: synthesized from the A records
            else:
                notes = self.answer_notes
                ede = notes.get(query.key) if notes else None
                reply = response.client_reply(
                    stored, query, limit=context.limit, ede=ede, with_question=False
                )
                context.respond(reply)
                if context.observer is not None:
                    context.observer.answered(context, reply)
            if cache.prefetch_due:
                cache.prefetch_due.clear()  # only ever this query's key: fresh() just put it there
                self._prefetch(query)
            return
        road = self.road
        if road is not None and road.state.engaged and road.intercept(context):
            return  # a captive portal is suspected, or its window is open (daemon/road.py)
        waiters = self._inflight.get(query.key)
        if waiters is not None:
            self.counters["joined"] += 1
            context.source = "joined"
            waiters.append(context)
            return
        held = cache.failure(query.key, context.received)
        if held is not None:
            if (held.ede is None or held.stale_ok) and self._answer_stale(context):
                return
            self.counters["cached_failures"] += 1
            self.counters["servfail"] += 1
            context.source = "held-failure"
            reply = answers.held_failure_answer(query, held, context.received, context.limit)
            context.answer(reply)
            return
        self.counters["cache_misses"] += 1
        if self.validation is not None and self._answer_synthesized(context):
            return
        self._start(query, context)

    def _answer_synthesized(self, context: QueryContext) -> bool:
        """A miss the validator can answer from the proofs it holds (RFC 8198), answered here and
        now with no task and no upstream query. Not stored in the answer cache: the held proofs
        are the cache (as in Unbound), so a flood of random names under a signed zone neither
        leaves the machine nor evicts the answers cached for everyone else."""
        validation = self.validation
        query = context.query
        if validation is None or query.cd or not validation.validator.aggressive:
            return False
        if self.router and self.router.group_for(query.key[:-5]) not in (None, DEFAULT_GROUP):
            return False  # another group's names are not validated
        validated = validation.synthesized(query, context.trace)
        if validated is None:
            return False
        self.counters["answered"] += 1
        context.source = "synthesized"
        context.answer(response.client_reply(validated.body, query, limit=context.limit))
        return True

    def _start(self, query: wire.ClientQuery, context: QueryContext | None) -> None:
        """Ask upstream for query; identical queries arriving meanwhile wait on this one."""
        self._inflight[query.key] = []
        task = self._loop.create_task(self._resolve(query, context))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _prefetch(self, query: wire.ClientQuery) -> None:
        """Refresh a popular answer before it expires; nobody waits for this one (RFC 8767 §5)."""
        if query.key not in self._inflight:
            self.counters["prefetches"] += 1
            self._start(query, None)

    # -- forwarding -------------------------------------------------------------------------
    async def _resolve(self, query: wire.ClientQuery, context: QueryContext | None) -> None:
        """Ask upstream, then answer this query and every identical one that joined it."""
        outcome: Outcome = DIED  # what they hear if this task dies (shutdown)
        via: list[str] = []  # the fallbacks that answered on the way (daemon/fallback.py)
        ANSWERED_VIA.set(via)  # this task's own context: nobody else's question sees it
        try:
            outcome = await self._fetch(query, context.trace if context is not None else None)
        finally:
            waiters = self._inflight.pop(query.key, [])
            if via and context is not None:
                context.source = f"upstream-fallback:{via[-1]}"
                if context.trace is not None and context.trace.answered_by:
                    context.trace.answered_by += f", through its fallback {via[-1]}"
            if context is not None:
                self._deliver(context, outcome)
            for waiter in waiters:
                self._deliver(waiter, outcome)

    async def _fetch(self, query: wire.ClientQuery, trace: Trace | None) -> Outcome:
        """One upstream exchange for the question; the cache learns the answer or the failure."""
        deadline = self._loop.time() + self.config.forwarding.timeout
        name = (self.router.group_for(query.key[:-5]) if self.router else None) or DEFAULT_GROUP
        group = self.groups[name]
        # names a forwarding rule sends to another group (private zones) have no chain from
        # the root; the validation is taken now, so a reload meanwhile changes nothing here
        validation = self.validation
        status = ValidationStatus.UNCHECKED
        started = time.perf_counter() if trace is not None else 0.0
        try:
            if validation is not None and name == DEFAULT_GROUP:
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
            return InternalError()
        now = self._loop.time()
        if layout.rcode == Rcode.SERVFAIL:
            # RFC 9520 §2: a SERVFAIL is a resolution failure too; replay it while held
            self.cache.record_failure(query.key, now, reply=body, reason="upstream SERVFAIL")
        else:
            # the client asking now gets the TTLs the cache keeps (clamped), as later ones will
            body = self.cache.store(query.key, body, ttl_offsets, layout, now, status) or body
        return body

    async def ask(self, query: wire.ClientQuery, trace: Trace | None) -> bytes | None:
        """The answer to one of our own questions (DNS64's A), the cache first; None if it
        failed."""
        body = self.cache.fresh(query.key, self._loop.time())
        if body is None:
            outcome = await self._fetch(query, trace)
            if not isinstance(outcome, bytes):
                return None
            body = outcome
        return body if response.rcode_of(body) != Rcode.SERVFAIL else None

    def _note(self, key: bytes, note: tuple[int, str] | None) -> None:
        """Keep an informational EDE (why an answer is insecure) to send with the answer."""
        notes = self.answer_notes
        if note is None:
            if notes:
                notes.pop(key, None)
            return
        if len(notes) >= MAX_ANSWER_NOTES:
            del notes[next(iter(notes))]
        notes[key] = note

    # -- delivery -------------------------------------------------------------------------------
    def _deliver(self, context: QueryContext, outcome: Outcome) -> None:
        query = context.query
        if isinstance(outcome, bytes) and response.rcode_of(outcome) != Rcode.SERVFAIL:
            self.counters["answered"] += 1
            dns64 = self.dns64
            if dns64 is not None and query.qtype == TYPE_AAAA and dns64.takes(context, outcome):
                return
            notes = self.answer_notes
            ede = notes.get(query.key) if notes else None
            context.answer(response.client_reply(outcome, query, limit=context.limit, ede=ede))
            return
        # never a stale answer in place of a bogus one; a chain that could not be fetched is an
        # outage like any other (RFC 8767)
        bogus = isinstance(outcome, DnssecFailureError) and not outcome.indeterminate
        if not bogus and self._answer_stale(context):
            return
        if isinstance(outcome, bytes):  # the upstream's own SERVFAIL, as it came
            self.counters["servfail"] += 1
            context.answer(response.client_reply(outcome, query, limit=context.limit))
            return
        counter = Rcode.to_text(outcome.rcode).lower()
        self.counters[counter] = self.counters.get(counter, 0) + 1
        context.answer(answers.error_answer(query, outcome, context.limit))

    def _answer_stale(self, context: QueryContext) -> bool:
        """RFC 8767: every upstream failed; answer from an expired entry if one is recent enough."""
        stale = self.cache.stale(context.query.key, self._loop.time())
        if stale is None:
            return False
        self.counters["stale"] += 1
        context.source = "stale"
        context.answer(answers.stale_answer(context.query, stale, context.limit))
        return True

    async def drain(self, timeout: float) -> None:
        """Wait (bounded) for the queries in flight to be answered."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=timeout)
