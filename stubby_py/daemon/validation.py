"""The validator at work in the daemon: its thin asyncio edge.

stubby_py/dnssec/ judges replies and says which DS and DNSKEY records it needs; this module asks
for them through the upstream pool (shared between concurrent validations, bounded per query),
forwards client questions with DO and CD set, retries another upstream when an answer is bogus,
and shapes the validated reply for the client. Everything it uses is captured per query (the
validator, the upstream group), so a reload in the middle changes nothing for a query in flight.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import dns.edns
import dns.exception
import dns.message
import dns.name
from dns.edns import EDECode
from dns.rcode import Rcode

from stubby_py.core import wire
from stubby_py.core.cache import ValidationStatus
from stubby_py.core.errors import (
    DnssecFailureError,
    NoUpstreamAvailableError,
    UpstreamError,
    UpstreamProtocolError,
)
from stubby_py.core.logthrottle import LogThrottle
from stubby_py.daemon.anchor_updates import AnchorUpdates
from stubby_py.daemon.explain import Trace, ValidationView, chain_link
from stubby_py.daemon.upstreams import UpstreamGroup
from stubby_py.dnssec.aggressive import Key, wire_key
from stubby_py.dnssec.anchors import TrustAnchors
from stubby_py.dnssec.outcome import Answers, Question, Security, Step, T, Verdict
from stubby_py.dnssec.validate import Validator

log = logging.getLogger(__name__)

#: an upstream reply as the cache takes it: body without OPT, TTL offsets, layout
Scanned = tuple[bytes, list[int], wire.ReplyLayout]
_STATUS = {Security.SECURE: ValidationStatus.SECURE, Security.INSECURE: ValidationStatus.INSECURE}
#: DS/DNSKEY questions one client query may cause (a cold chain of a few zones asks ~10)
MAX_VALIDATION_QUESTIONS = 96
#: other upstreams asked after a bogus answer, before SERVFAIL
MAX_BOGUS_RETRIES = 2
#: question types never answered by the shortcut: CNAME/DNAME chains, ANY, DNSSEC types
_NOT_SHORTCUT = frozenset({5, 39, 255, 43, 48, 46, 47, 50})


@dataclass(slots=True)
class Validated:
    """A reply as the client gets it, and what the cache keeps with it."""

    body: bytes
    ttl_offsets: list[int]
    layout: wire.ReplyLayout
    status: ValidationStatus
    #: an Extended DNS Error that goes with the answer (why it is insecure: EDE 1, 2, 27)
    note: tuple[int, str] | None = None


class Validation:
    def __init__(
        self,
        validator: Validator,
        timeout: float,
        counters: dict[str, int],
        *,
        configured: TrustAnchors | None = None,
        updates: AnchorUpdates | None = None,
        main_group: Callable[[], UpstreamGroup] | None = None,
    ) -> None:
        """configured: the trust anchors as configured (before RFC 5011 updates); updates:
        RFC 5011 tracking, refreshed through `main_group()`, the current main pool."""
        self.validator = validator
        self.configured = configured
        self.updates = updates
        self._main_group = main_group
        #: seconds a DS/DNSKEY question may take (the configured query timeout)
        self.timeout = timeout
        self._counters = counters
        self._loop = asyncio.get_running_loop()
        #: DS/DNSKEY questions being asked, shared by concurrent validations
        self._asks: dict[
            tuple[Question, tuple[int, ...], int], asyncio.Task[dns.message.Message | None]
        ] = {}
        self._failure_log = LogThrottle()

    async def forward(
        self,
        query: wire.ClientQuery,
        group: UpstreamGroup,
        deadline: float,
        trace: Trace | None = None,
    ) -> Validated:
        """Forward with DO and CD, and validate. A bogus answer may be one upstream's lie: then
        the others are asked (up to MAX_BOGUS_RETRIES more), the DS/DNSKEY questions too, before
        the client hears SERVFAIL (as Unbound retries other servers, val-max-restart). An
        upstream is charged with the failure only once another upstream's answer validated.

        When the others fail too (unreachable, SERVFAIL, bogus as well), the client hears the
        first verdict, its EDE and its text, with what the others came to after it: a verdict
        tells more than an upstream that could not be reached (errors.py ranks failures)."""
        avoid: list[int] = []
        #: the first bogus verdict, and what asking other upstreams after it came to
        verdict: DnssecFailureError | None = None
        since: list[str] = []
        while True:
            answered: list[int] = []
            try:
                result = await self._forward_once(query, group, deadline, trace, avoid, answered)
            except DnssecFailureError as exc:
                upstream = answered[0] if answered else -1
                if verdict is None:
                    verdict = exc
                else:
                    since.append(_came_to(exc, group, answered))
                if not self._may_ask_another(exc, upstream, avoid, group, deadline):
                    break
                self._counters["dnssec_retries"] += 1
                avoid.append(upstream)
                if exc.zone:
                    self.validator.chain.forget_bogus(dns.name.from_text(exc.zone))
                continue
            except UpstreamError as exc:
                if verdict is None:
                    raise
                since.append(_came_to(exc, group, answered))
                break
            if verdict is not None and result.layout.rcode not in (Rcode.NOERROR, Rcode.NXDOMAIN):
                rcode = Rcode.to_text(result.layout.rcode)
                since.append(f"{_name(group, answered[0] if answered else -1)}: answered {rcode}")
                break
            for liar in avoid:
                group.pool.count_failure(liar, "dnssec-bogus")
            return result
        raise verdict.followed_by("; ".join(since))

    async def _forward_once(
        self,
        query: wire.ClientQuery,
        group: UpstreamGroup,
        deadline: float,
        trace: Trace | None,
        avoid: list[int],
        answered: list[int],
    ) -> Validated:
        """One answer through the pool, validated; an answer other than NOERROR or NXDOMAIN
        (SERVFAIL, REFUSED) as it came."""
        started = time.perf_counter() if trace is not None else 0.0
        body, ttl_offsets, layout = await group.forward(
            query, deadline, dnssec=True, trace=trace, avoid=avoid, answered_by=answered
        )
        if trace is not None:
            trace.upstream_ms = (time.perf_counter() - started) * 1000
        if layout.rcode not in (Rcode.NOERROR, Rcode.NXDOMAIN):
            return Validated(body, ttl_offsets, layout, ValidationStatus.UNCHECKED)
        reply = (body, ttl_offsets, layout)
        return await self._validated(query, reply, group, deadline, trace, tuple(avoid))

    def synthesized(self, query: wire.ClientQuery, trace: Trace | None) -> Validated | None:
        """A wildcard answer, NXDOMAIN or NODATA proven from the records of earlier secure
        answers (RFC 8198), shaped for this client as a received one would be; None: ask
        upstream."""
        if query.qclass != 1:
            return None
        started = time.perf_counter() if trace is not None else 0.0
        now = time.time()
        found = self.validator.synthesize_wire(query.qname_wire, query.qtype, now)
        if found is None:
            key = wire_key(query.qname_wire)
            if key is None or not self._may_synthesize(key, now):
                return None
            qname = dns.name.from_wire(query.question, 0)[0]
            found = self.validator.synthesize(qname, query.qtype, now)
            if found is None:
                return None
        self._counters["dnssec_synthesized"] += 1
        body = found.render(query.question, query.qtype, query.do)
        layout = wire.scan_reply(body)
        body = wire.cap_ttls(body, layout.ttl_offsets, found.ttl)
        if layout.min_ttl is not None:
            layout.min_ttl = min(layout.min_ttl, found.ttl)
        if trace is not None:
            keys = self.validator.chain.cached(found.zone, time.time())
            links = keys.links if keys is not None else ()
            verdict = Verdict(Security.SECURE, reason=found.reason, zone=str(found.zone),
                              chain=links)  # fmt: skip
            trace.validation = validation_view(verdict, started, 0)
        return Validated(body, layout.ttl_offsets, layout, ValidationStatus.SECURE)

    def _may_synthesize(self, qname_key: Key, now: float) -> bool:
        """Whether records held for some zone could prove anything about the name: not when the
        key cache knows a zone cut at or above it that is deeper than every zone with held
        records (the name lies in that zone or below it, where their NSECs say nothing), nor
        when that cut is an insecure one."""
        chain = self.validator.chain
        held = chain.denials.held_depth(qname_key)
        if not held:
            return False
        known = chain.deepest_known(qname_key, now)
        if known is None:
            return True
        return known.security != Security.INSECURE and len(known.zone) <= held

    def _may_ask_another(
        self,
        verdict: DnssecFailureError,
        upstream: int,
        avoid: list[int],
        group: UpstreamGroup,
        deadline: float,
    ) -> bool:
        """Whether a bogus answer sends the question to another upstream: not when the chain
        could not be built (the others share it), nor past MAX_BOGUS_RETRIES or the deadline."""
        return not (
            verdict.indeterminate
            or upstream < 0
            or len(avoid) >= MAX_BOGUS_RETRIES
            or len(avoid) + 1 >= len(group.transports)
            or self._loop.time() >= deadline
        )

    async def _validated(
        self,
        query: wire.ClientQuery,
        reply: Scanned,
        group: UpstreamGroup,
        deadline: float,
        trace: Trace | None,
        avoid: tuple[int, ...],
    ) -> Validated:
        """The reply as this client gets it: validated (AD when secure, DnssecFailureError when
        bogus), TTLs capped by the signatures, only validated records, DNSSEC records only for
        a client that set DO. A client that set CD gets the data unchecked (RFC 4035 §3.2.2)."""
        body, ttl_offsets, layout = reply
        shortcut = self._without_parse(query, reply, trace)
        if shortcut is not None:
            return shortcut
        if not query.cd:
            qname = dns.name.from_wire(query.question, 0)[0]
        try:
            message = dns.message.from_wire(body)
        except dns.exception.DNSException as exc:
            raise UpstreamProtocolError(f"reply unparseable for validation ({exc})") from None
        if query.cd:
            verdict = Verdict(Security.INSECURE)
        else:
            started = time.perf_counter() if trace is not None else 0.0
            step = self.validator.validate(message, qname, query.qtype, time.time())
            asked: list[Question] | None = [] if trace is not None else None
            verdict = await self._drive(step, group, asked, avoid)
            if trace is not None:
                trace.validation = validation_view(verdict, started, len(asked or ()))
            self._counters[f"dnssec_{verdict.security.name.lower()}"] += 1
            if verdict.security >= Security.INDETERMINATE:
                self._log_failure(verdict)
                indeterminate = verdict.security == Security.INDETERMINATE
                ede = verdict.ede if verdict.ede is not None else EDECode.DNSSEC_BOGUS
                raise DnssecFailureError(
                    ede, verdict.reason, verdict.zone, indeterminate=indeterminate
                )
        if verdict.kept is not None or not query.do:
            # only what was validated goes on, DNSSEC records only to DO clients
            body = self.validator.render(message, verdict, query.do, body)
            layout = wire.scan_reply(body)
            ttl_offsets = layout.ttl_offsets
        body = wire.with_flag(body, wire.AD, verdict.security == Security.SECURE)
        if verdict.ttl_cap is not None:
            body = wire.cap_ttls(body, ttl_offsets, verdict.ttl_cap)
            layout = wire.scan_reply(body)
        status = _STATUS[verdict.security] if not query.cd else ValidationStatus.UNCHECKED
        note = (verdict.ede, verdict.reason) if verdict.ede is not None else None
        return Validated(body, ttl_offsets, layout, status, note)

    def _without_parse(
        self, query: wire.ClientQuery, reply: Scanned, trace: Trace | None
    ) -> Validated | None:
        """The answers judged without a dnspython message: unchecked data for a CD+DO client,
        unsigned data below a known insecure delegation, a signed answer by known keys."""
        body, ttl_offsets, layout = reply
        if query.cd:
            self._counters["dnssec_unchecked"] += 1
            if not query.do:
                return None
            # the data as received, nothing to strip: no parse
            body = wire.with_flag(body, wire.AD, False)
            return Validated(body, ttl_offsets, layout, ValidationStatus.UNCHECKED)
        shortcut = self._unsigned_in_insecure_zone(query, reply)
        if shortcut is None:
            shortcut = self._signed_answer(query, body, trace)
        return shortcut

    def _signed_answer(
        self, query: wire.ClientQuery, body: bytes, trace: Trace | None
    ) -> Validated | None:
        """A signed answer to the question itself, by a zone whose keys are known: verified and
        copied for the client from the octets (Validator.validate_answer), with no dnspython
        message built. None: the full path."""
        if query.qclass != 1:
            return None
        started = time.perf_counter() if trace is not None else 0.0
        found = self.validator.validate_answer(
            body, query.qname_wire, query.qtype, query.do, time.time()
        )
        if found is None:
            return None
        verdict, body = found
        if trace is not None:
            trace.validation = validation_view(verdict, started, 0)
        self._counters["dnssec_secure"] += 1
        body = wire.with_flag(body, wire.AD, True)
        layout = wire.scan_reply(body)
        cap = verdict.ttl_cap
        if cap is not None:
            body = wire.cap_ttls(body, layout.ttl_offsets, cap)
            if layout.min_ttl is not None:
                layout.min_ttl = min(layout.min_ttl, cap)
        return Validated(body, layout.ttl_offsets, layout, ValidationStatus.SECURE)

    def _unsigned_in_insecure_zone(
        self, query: wire.ClientQuery, reply: Scanned
    ) -> Validated | None:
        """Most of the DNS is unsigned. A reply that holds only the answer to its own question
        (wire.is_plain_answer: no DNSSEC record, no CNAME or DNAME to follow, no record of
        another name, no additional section), for a name the key cache already knows to be below
        an insecure delegation, is insecure as it stands: no parse, no render (nothing to strip).
        Anything else takes the full path, which passes on only what it validated."""
        body, ttl_offsets, layout = reply
        if query.qtype in _NOT_SHORTCUT or not wire.is_plain_answer(body, query.qtype):
            return None
        key = wire_key(query.qname_wire)
        if key is None:
            return None
        now = time.time()
        zone = self.validator.chain.known_insecure_wire(key, now)
        if zone is None:
            return None
        self._counters["dnssec_insecure"] += 1
        body = wire.with_flag(body, wire.AD, False)
        cap = int(zone.expires - now)
        if layout.min_ttl is not None and layout.min_ttl > cap:
            body = wire.cap_ttls(body, ttl_offsets, max(cap, 0))
            layout = wire.scan_reply(body)
        note = (zone.ede, zone.reason) if zone.ede is not None else None
        return Validated(body, ttl_offsets, layout, ValidationStatus.INSECURE, note)

    def start(self) -> None:
        """Begin the RFC 5011 refresh (once this validation is the one in use)."""
        main_group = self._main_group
        if self.updates is not None and main_group is not None:
            self.updates.start(lambda zone: self.authenticate_keys(zone, main_group()))

    async def authenticate_keys(self, zone: dns.name.Name, group: UpstreamGroup) -> object:
        """Fetch and authenticate an anchored zone's DNSKEY RRset again (the RFC 5011 refresh);
        what is known of the zone is replaced only by a secure result."""
        step = self.validator.chain.refresh_anchor(zone, time.time())
        return await self._drive(step, group, None, ())

    async def aclose(self) -> None:
        if self.updates is not None:
            await self.updates.aclose()

    async def _drive(
        self,
        step: Step[T],
        group: UpstreamGroup,
        asked: list[Question] | None,
        avoid: tuple[int, ...],
    ) -> T:
        """Run a validation step to its end, asking its questions upstream, round by round;
        `asked` (for explain) collects the questions. Past MAX_VALIDATION_QUESTIONS for one
        client query, questions go unasked (as failures): the answer is then indeterminate."""
        budget = MAX_VALIDATION_QUESTIONS
        try:
            questions = next(step)
            while True:
                if asked is not None:
                    asked.extend(questions)
                budget -= len(questions)
                if budget < 0:
                    questions = step.send(dict.fromkeys(questions))
                    continue
                replies = await asyncio.gather(*(self._ask(q, group, avoid) for q in questions))
                answers: Answers = dict(zip(questions, replies, strict=True))
                questions = step.send(answers)
        except StopIteration as done:
            result: T = done.value
            return result

    async def _ask(
        self, question: Question, group: UpstreamGroup, avoid: tuple[int, ...]
    ) -> dns.message.Message | None:
        """A DS or DNSKEY reply through the pool; identical questions asked at the same time (a
        cold zone under many names) share one upstream query, which has a deadline of its own
        (a query joining late must not inherit the first asker's)."""
        key = (question, avoid, id(group))
        task = self._asks.get(key)
        if task is None:
            deadline = self._loop.time() + self.timeout
            task = self._loop.create_task(self._chain_query(question, group, deadline, avoid))
            self._asks[key] = task
            task.add_done_callback(lambda _: self._asks.pop(key, None))
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            raise
        except Exception:
            return None

    async def _chain_query(
        self,
        question: Question,
        group: UpstreamGroup,
        deadline: float,
        avoid: tuple[int, ...],
    ) -> dns.message.Message | None:
        name, rdtype = question
        query = wire.chain_query(name.to_digestable(), rdtype)
        try:
            body, _offsets, _layout = await group.forward(query, deadline, dnssec=True, avoid=avoid)
            return dns.message.from_wire(body)
        except (UpstreamError, dns.exception.DNSException) as exc:
            # the owner name stays out of the log: it may be (a part of) a client's query name
            kind = exc.kind if isinstance(exc, UpstreamError) else "unparseable"
            log.debug("validator: a DS/DNSKEY question failed (%s)", kind)
            return None

    def _log_failure(self, verdict: Verdict) -> None:
        """Logged below the deepest zone the chain proved, with the Extended DNS Error: never
        a query name (the verdict's own reason may carry one) and never the client; once a
        minute per zone and error."""
        zone = next(
            (link.zone for link in reversed(verdict.chain) if link.security == Security.SECURE),
            ".",
        )
        code = verdict.ede if verdict.ede is not None else EDECode.DNSSEC_BOGUS
        held_back = self._failure_log.allow((zone, code), self._loop.time())
        if held_back is None:
            return
        more = f" ({held_back} more like it since the last)" if held_back else ""
        what = dns.edns.EDEOption(EDECode(code)).to_text()  # "EDE 7 (Signature Expired)"
        state = verdict.security.name.lower()
        log.warning("DNSSEC %s below zone %s: %s%s", state, zone, what, more)


def _name(group: UpstreamGroup, index: int) -> str:
    return group.transports[index].name if index >= 0 else "an upstream"


def _came_to(error: UpstreamError, group: UpstreamGroup, answered: list[int]) -> str:
    """What asking another upstream came to, in a few words for the client's EDE text."""
    if isinstance(error, NoUpstreamAvailableError):
        return error.summary
    return f"{_name(group, answered[0] if answered else -1)}: {error.kind}"


def validation_view(verdict: Verdict, started: float, questions: int) -> ValidationView:
    chain = [chain_link(link.zone, link.security, link.detail) for link in verdict.chain]
    ms = (time.perf_counter() - started) * 1000
    security = verdict.security.name.lower()
    return ValidationView(security, verdict.ede, verdict.reason, verdict.zone, chain, ms, questions)
