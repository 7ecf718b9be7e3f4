"""An upstream group at work: the pool's decisions turned into attempts, with hedging.

The pool (pool.py) decides the order, the fan-out and when to hedge; this module awaits. A query
goes to the first upstream in the pool's order (or the `fanout` first, for `parallel`); when an
attempt fails the next starts at once; when the hedge delay passes with no answer the next starts
too; the first valid answer wins and the other attempts are cancelled. An answer of SERVFAIL or
REFUSED is kept as a last resort while other upstreams are asked (`retry_servfail`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from dns.rcode import Rcode

from stubby_py.core import edns, wire
from stubby_py.core.config import Config, UpstreamSpec
from stubby_py.core.errors import (
    NoUpstreamAvailableError,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamTimeoutError,
)
from stubby_py.core.logthrottle import LogThrottle
from stubby_py.core.pool import Pool, UpstreamHealth
from stubby_py.daemon.explain import TRANSPORT_NAMES, Attempt, Trace
from stubby_py.daemon.fallback import make_upstream
from stubby_py.transports.base import Transport

log = logging.getLogger(__name__)

#: an upstream reply as the cache wants it: body without OPT, its TTL offsets, its layout
ScannedReply = tuple[bytes, list[int], wire.ReplyLayout]
_RETRYABLE_RCODES = (Rcode.SERVFAIL, Rcode.REFUSED)


def scan(reply: bytes, transport: Transport) -> ScannedReply:
    """Check an upstream reply's structure; garbage is an upstream failure, never an answer."""
    try:
        layout = wire.scan_reply(reply)
    except wire.WireError as exc:
        raise UpstreamProtocolError(f"{transport.name}: malformed reply ({exc})") from None
    if layout.opt_span is not None and wire.opt_rcode_high(reply, layout.opt_span):
        raise UpstreamProtocolError(f"{transport.name}: unexpected extended RCODE")
    body, ttl_offsets = wire.without_opt(reply, layout)
    return body, ttl_offsets, layout


def _consume_outcome(task: asyncio.Task[ScannedReply]) -> None:
    if not task.cancelled():
        task.exception()


class _QueryForms:
    """The upstream query, built once per form: padded for encrypted transports, plain else."""

    __slots__ = ("_block", "_dnssec", "_padded", "_plain", "_query", "trace")

    def __init__(
        self, query: wire.ClientQuery, pad_block: int, dnssec: bool, trace: Trace | None = None
    ) -> None:
        self._query = query
        #: `stubby-py explain` records each attempt here; None on every ordinary query
        self.trace = trace
        self._block = pad_block
        self._dnssec = dnssec
        self._padded: bytes | None = None
        self._plain: bytes | None = None

    def for_transport(self, transport: Transport) -> bytes:
        query = self._query
        dnssec = self._dnssec
        if transport.is_encrypted:
            if self._padded is None:
                self._padded = edns.upstream_query(
                    query, pad_block=self._block, do=query.do or dnssec, keepalive=True, cd=dnssec
                )
            return self._padded
        if self._plain is None:
            self._plain = edns.upstream_query(query, pad_block=0, do=query.do or dnssec, cd=dnssec)
        return self._plain


@dataclass
class _Race:
    """The attempts of one query: which upstreams were asked, what came of them."""

    order: list[int]
    started: int = 0
    #: when the newest attempt started (the hedge timer runs from there)
    newest_start: float = 0.0
    #: each failed attempt: the upstream's name and how it failed, in the order they ended
    failures: list[tuple[str, UpstreamError]] | None = None
    fallback: ScannedReply | None = None
    #: the upstream whose answer was taken (final, or kept as the fallback), for explain
    winner: int = -1
    fallback_index: int = -1
    #: when each upstream's attempt started (perf_counter), and those started as a hedge
    started_at: dict[int, float] = field(default_factory=dict)
    hedges: set[int] = field(default_factory=set)

    def note_failure(self, name: str, error: UpstreamError) -> None:
        if self.failures is None:
            self.failures = []
        self.failures.append((name, error))

    def all_failed(self) -> NoUpstreamAvailableError:
        """The error for a race nobody won: the failure that tells most comes first, with its
        detail (errors.py ranks them), then the others, most telling first."""
        failures = sorted(self.failures or (), key=lambda failure: -failure[1].rank)
        if not failures:
            return NoUpstreamAvailableError("no upstream answered in time")
        (name, cause), others = failures[0], failures[1:]
        parts = [f"{name}: {cause.kind}{_detail(name, cause)}"]
        parts += [f"{other}: {error.kind}" for other, error in others]
        return NoUpstreamAvailableError(", ".join(parts), cause)


#: the most of a failure's own words repeated in an answer's Extended DNS Error text
MAX_DETAIL = 120


def _detail(name: str, error: UpstreamError) -> str:
    """' (what the error says)', without the upstream's name it usually starts with."""
    text = str(error.args[0]) if error.args else ""
    text = text.removeprefix(f"{name}: ").strip()
    if not text or text == error.kind:
        return ""
    if len(text) > MAX_DETAIL:
        text = text[: MAX_DETAIL - 1] + "…"
    return f" ({text})"


class UpstreamGroup:
    """A named set of upstreams with its own pool (health, latency, strategy)."""

    def __init__(
        self,
        name: str,
        specs: Sequence[UpstreamSpec],
        config: Config,
        transports: Sequence[Transport] | None = None,
        reuse: Mapping[UpstreamSpec, tuple[Transport, UpstreamHealth]] | None = None,
    ) -> None:
        """reuse: transports (with their health) kept from before a reload, by upstream."""
        self.name = name
        reuse = reuse or {}
        self.transports = list(transports) if transports is not None else [
            reuse[spec][0] if spec in reuse else make_upstream(spec, config) for spec in specs
        ]  # fmt: skip
        self.pool = Pool(len(self.transports), config.pool)
        for index, transport in enumerate(self.transports):
            if transport.spec in reuse:
                self.pool.health[index] = reuse[transport.spec][1]
        self._config = config
        self._loop = asyncio.get_running_loop()
        self._probes: set[asyncio.Task[None]] = set()
        #: each upstream's failures, by class, logged once a minute at most
        self._log_throttle = LogThrottle()

    async def forward(
        self,
        query: wire.ClientQuery,
        deadline: float,
        *,
        dnssec: bool = False,
        trace: Trace | None = None,
        avoid: Sequence[int] = (),
        answered_by: list[int] | None = None,
    ) -> ScannedReply:
        """Ask upstreams until one gives a valid answer; NoUpstreamAvailableError if none did.

        dnssec: ask with DO and CD set, for the validator (RFC 6840 §5.9).
        trace: record the attempts and which upstream answered (`stubby-py explain`).
        avoid: upstreams not to ask (one whose answer was bogus). answered_by: gets the index
        of the upstream whose answer is returned.
        """
        forms = _QueryForms(query, self._config.transport.padding_block, dnssec, trace)
        now = self._loop.time()
        for index in self.pool.take_probes(now):
            self._probe(index, forms, deadline)
        race = _Race(self.pool.order(now))
        if avoid:
            race.order = [index for index in race.order if index not in avoid]
        if len(race.order) == 1 or (self.pool.fanout == 1 and not self.pool.settings.hedge):
            result = await self._one_by_one(forms, race, deadline)
        else:
            result = await self._hedged(forms, race, deadline)
        if trace is not None:
            self._trace_winner(trace, race, result is not None)
        answerer = race.winner if result is not None else race.fallback_index
        if answerer >= 0:
            self.pool.health[answerer].answers += 1
        if answered_by is not None:
            answered_by.append(answerer)
        if result is not None:
            return result
        if race.fallback is not None:
            return race.fallback
        raise race.all_failed()

    async def _one_by_one(
        self, forms: _QueryForms, race: _Race, deadline: float
    ) -> ScannedReply | None:
        """No hedging possible or wanted: each upstream in turn, in this task (no extra task)."""
        while race.started < len(race.order) and self._loop.time() < deadline:
            index = race.order[race.started]
            race.started += 1
            try:
                scanned = await self._attempt(index, forms, deadline)
            except UpstreamError as exc:
                race.note_failure(self.transports[index].name, exc)
                continue
            if self._is_final(scanned, index, race):
                return scanned
        return None

    async def _hedged(
        self, forms: _QueryForms, race: _Race, deadline: float
    ) -> ScannedReply | None:
        loop = self._loop
        running: dict[asyncio.Task[ScannedReply], int] = {}
        for _ in range(min(self.pool.fanout, len(race.order))):
            self._launch(forms, race, deadline, running)
        try:
            while running:
                hedge_at = self._hedge_time(race)
                wait = min(deadline, hedge_at) - loop.time()
                done, _ = await asyncio.wait(
                    running, timeout=max(0.0, wait), return_when=asyncio.FIRST_COMPLETED
                )
                if not done:
                    if loop.time() >= deadline:
                        for index in running.values():
                            late = UpstreamTimeoutError("no answer before the query's deadline")
                            race.note_failure(self.transports[index].name, late)
                        return None
                    self._launch(forms, race, deadline, running, hedge=True)
                    continue
                winner = self._settle(done, running, race)
                if winner is not None:
                    return winner
                if not running and race.started < len(race.order) and loop.time() < deadline:
                    self._launch(forms, race, deadline, running)  # failed: the next, at once
            return None
        finally:
            if race.winner >= 0:
                self._account_hedges(race, running)
            for task in running:
                # a cancelled attempt may still end in a failure of its own (Python 3.11's
                # wait_for returns a result that is ready when the cancellation comes, so an
                # attempt caught connecting goes on to send): read it whenever it comes, never
                # leave it to "Task exception was never retrieved" with its traceback
                task.cancel()
                task.add_done_callback(_consume_outcome)

    def _trace_winner(self, trace: Trace, race: _Race, final: bool) -> None:
        index = race.winner if final else race.fallback_index
        if index >= 0:
            transport = self.transports[index]
            trace.answered_by = f"{transport.name} over {_transport_name(transport)}"

    def _hedge_time(self, race: _Race) -> float:
        """When to ask the next upstream if the newest attempt has not answered."""
        if race.started >= len(race.order):
            return float("inf")
        delay = self.pool.hedge_delay(race.order[race.started - 1])
        return float("inf") if delay is None else race.newest_start + delay

    def _account_hedges(self, race: _Race, running: dict[asyncio.Task[ScannedReply], int]) -> None:
        """A race won: count a winning hedge, and record each attempt the winner overtook (one
        started before it, still running) as taking at least the time it has run, so a stalling
        upstream's latency shows it (an attempt started after the winner is no sign of anything)."""
        winner = race.winner
        if winner in race.hedges:
            self.pool.health[winner].hedge_wins += 1
        now = time.perf_counter()
        winner_start = race.started_at.get(winner, now)
        loop_now = self._loop.time()
        for index in running.values():
            started = race.started_at.get(index)
            if started is not None and started < winner_start:
                elapsed = now - started
                self.pool.record_overtaken(index, elapsed)
                self._figures(index, loop_now, elapsed)

    def _launch(
        self,
        forms: _QueryForms,
        race: _Race,
        deadline: float,
        running: dict[asyncio.Task[ScannedReply], int],
        *,
        hedge: bool = False,
    ) -> None:
        """Start the next upstream's attempt; hedge: because the one before was slow."""
        index = race.order[race.started]
        race.started += 1
        race.newest_start = self._loop.time()
        race.started_at[index] = time.perf_counter()
        if hedge:
            race.hedges.add(index)
            self.pool.health[index].hedged += 1
        task = self._loop.create_task(self._attempt(index, forms, deadline))
        running[task] = index

    def _settle(
        self,
        done: set[asyncio.Task[ScannedReply]],
        running: dict[asyncio.Task[ScannedReply], int],
        race: _Race,
    ) -> ScannedReply | None:
        for task in done:
            index = running.pop(task)
            try:
                scanned = task.result()
            except UpstreamError as exc:
                race.note_failure(self.transports[index].name, exc)
                continue
            if self._is_final(scanned, index, race):
                return scanned
        return None

    def _is_final(self, scanned: ScannedReply, index: int, race: _Race) -> bool:
        """A usable answer ends the race; SERVFAIL/REFUSED is kept while others are asked."""
        rcode = scanned[2].rcode
        if rcode not in _RETRYABLE_RCODES or not self._config.forwarding.retry_servfail:
            race.winner = index
            return True
        # (an upstream's own answer tells more than any failure: it is what the client gets)
        if race.fallback is None:
            race.fallback = scanned
            race.fallback_index = index
        return False

    def _probe(self, index: int, forms: _QueryForms, deadline: float) -> None:
        """Ask a recovering upstream this query on the side; only its health learns the result."""

        async def probe() -> None:
            with contextlib.suppress(UpstreamError):
                await self._attempt(index, forms, deadline)

        task = self._loop.create_task(probe())
        self._probes.add(task)
        task.add_done_callback(self._probes.discard)

    async def _attempt(self, index: int, forms: _QueryForms, deadline: float) -> ScannedReply:
        """One upstream, one try; the pool learns how it went."""
        loop = self._loop
        transport = self.transports[index]
        start = loop.time()
        started = time.perf_counter()  # the loop's clock has 1 ms steps: too coarse for latency
        self.pool.attempt_started(index, start)
        attempt_deadline = min(deadline, start + self._config.transport.attempt_timeout)
        try:
            held = self.pool.held_failure(index, start)
            if held is not None:
                raise held
            try:
                reply = await transport.exchange(forms.for_transport(transport), attempt_deadline)
            except (UpstreamError, asyncio.CancelledError):
                raise
            except Exception as exc:
                # a fault of ours in one transport stays with that upstream: the pool goes on
                raise self._internal_error(index, exc) from exc
            scanned = scan(reply, transport)
        except UpstreamError as exc:
            now = loop.time()
            self.pool.record_error(index, exc, now)
            self._figures(index, now, kind=exc.kind)
            held_back = self._log_throttle.allow((index, exc.kind), now)
            if held_back is not None:
                more = f" ({held_back} more like it since the last)" if held_back else ""
                log.warning("upstream %s failed: %s: %s%s", transport.name, exc.kind, exc, more)
            if forms.trace is not None:
                self._trace(forms.trace, index, exc.kind, started, str(exc))
            raise
        except asyncio.CancelledError:
            if forms.trace is not None:
                self._trace(forms.trace, index, "cancelled", started)
            raise
        latency = time.perf_counter() - started
        self.pool.record_success(index, latency)
        self._figures(index, loop.time(), latency)
        if forms.trace is not None:
            rcode = scanned[2].rcode
            outcome = (
                "answer" if rcode not in _RETRYABLE_RCODES else f"answered {Rcode.to_text(rcode)}"
            )
            self._trace(forms.trace, index, outcome, started)
        return scanned

    async def probe(self, index: int, query: wire.ClientQuery) -> None:
        """A background probe (daemon/probing.py) of one upstream: connected first (the set-up
        is measured apart, as the transport's handshake), then the query timed alone, padded
        and sent as any client's would be. Its outcome goes to the upstream's figures and,
        as core/pool.py says, to its health."""
        loop = self._loop
        transport = self.transports[index]
        health = self.pool.health[index]
        now = loop.time()
        health.last_probe_at = now
        deadline = now + self._config.transport.attempt_timeout
        forms = _QueryForms(query, self._config.transport.padding_block, False)
        try:
            held = self.pool.held_failure(index, now)
            if held is not None:
                raise held
            try:
                await transport.connect(deadline)
                started = time.perf_counter()
                reply = await transport.exchange(forms.for_transport(transport), deadline)
                latency = time.perf_counter() - started
            except (UpstreamError, asyncio.CancelledError):
                raise
            except Exception as exc:
                raise self._internal_error(index, exc) from exc
            scan(reply, transport)
        except UpstreamError as exc:
            now = loop.time()
            self.pool.record_probe_failure(index, exc, now)
            health.probe_figures.failure(now, exc.kind)
            self._figures(index, now, kind=exc.kind)
            log.debug("probe of %s failed: %s: %s", transport.name, exc.kind, exc)
            return
        now = loop.time()
        self.pool.record_probe_success(index, latency)
        health.last_probe_s = latency
        health.probe_figures.sample(now, latency)
        self._figures(index, now, latency)

    def _figures(
        self, index: int, now: float, latency: float | None = None, kind: str | None = None
    ) -> None:
        """An attempt's outcome into the upstream's rolling figures (latency.py): a latency, or
        a failure; and whether the upstream is (still) down, for its outage time."""
        health = self.pool.health[index]
        figures = health.figures
        if latency is not None:
            figures.sample(now, latency)
        if kind is not None:
            figures.failure(now, kind)
        figures.set_down(now, health.unavailable)

    def _internal_error(self, index: int, exc: Exception) -> UpstreamError:
        transport = self.transports[index]
        if self._log_throttle.allow((index, "internal-error"), self._loop.time()) is not None:
            log.error("upstream %s: internal error", transport.name, exc_info=exc)
        return UpstreamError(f"{transport.name}: internal error ({type(exc).__name__})")

    def _trace(
        self, trace: Trace, index: int, outcome: str, started: float, detail: str = ""
    ) -> None:
        transport = self.transports[index]
        ms = (time.perf_counter() - started) * 1000
        trace.attempt(
            Attempt(self.name, transport.name, _transport_name(transport), outcome, ms, detail)
        )

    async def aclose(self) -> None:
        for task in self._probes:
            task.cancel()
        for transport in self.transports:
            await transport.aclose()


def _transport_name(transport: Transport) -> str:
    kind = transport.spec.transport
    return TRANSPORT_NAMES.get(kind, kind)


def transport_settings(config: Config) -> tuple[object, ...]:
    """The settings transports are built with: a reload that changes none can keep them."""
    return (
        config.transport.ca_file,
        config.transport.tls_min_version,
        config.transport.idle_timeout,
        config.transport.attempt_timeout,
        config.transport.padding_block,
        # an upstream by hostname keeps the address book of these (bootstrap.py)
        config.bootstrap.resolvers,
        config.bootstrap.min_ttl,
        config.bootstrap.max_ttl,
        config.bootstrap.file,
        config.transport.proxy,
    )
