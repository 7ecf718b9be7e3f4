"""`stubby-py bench`: compare encrypted upstreams' latency from where the user sits.

Every upstream (the configured pool, or --upstream URIs) is measured in five phases, through
the same transports the daemon uses (transports.make_transport), with the daemon's padded queries:

- cached: popular names on one open connection, after a warm-up that asked each of them once,
  so the upstream answers from its cache; the second and later asks are measured.
- uncached: a fresh random label under --zone (default example.com) each time: the upstream has
  to ask the authoritative servers (or its aggressive NSEC cache; RFC 8198).
- handshake: a new transport object per sample, so a new connection with a full handshake (no
  session to resume: the session store lives in the transport); the sample is what the
  transport's connect() measured: TCP+TLS, or QUIC, up to a connection ready for queries.
- resumed: one more transport per upstream, whose connection is renewed for each sample
  (connect(fresh=True)): a new connection that resumes the previous one's session (TLS session
  ticket, QUIC resumption). A handshake that did not resume is counted as a failure of kind
  "not-resumed", not as a sample. After each connect one query is asked on the new connection,
  unmeasured: TLS 1.3 hands the next ticket over after the handshake.
- dnssec: signed names (--signed-names, a built-in list by default) asked with DO: the sample is
  the answer's latency; the record counts the answers that carried RRSIGs and those with AD set
  (the upstream validated them).
  udp:// has no connection: no handshake or resumed phase; tcp:// no resumed phase.

Samples run round-robin over upstreams and phases (benchstats.measure_plan), at most
--concurrency at a time, each with --timeout; the whole run stops after --max-time. Ctrl-C stops
it too, and whatever was measured is reported. Timeouts and errors are counted per phase, never
folded into the latencies; a SERVFAIL or REFUSED answer counts as an error.

The JSON output is `{zone, queries, concurrency, timeout_s, elapsed_s, stopped_by, records}`,
each record one `benchstats.Summary` (upstream x transport x phase): rank, upstream, transport,
phase, count, errors, timeouts, p50/p90/p99/mean/stdev/min/max_ms, and resumed (resumed phase),
rrsig and ad (dnssec phase), null elsewhere. CSV has the same fields as columns.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import secrets
import signal
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

import dns.exception
import dns.flags
import dns.message
import dns.rdatatype

from stubby_py.commands import stubby_import
from stubby_py.core import benchstats, edns, wire
from stubby_py.core.benchstats import Job, Tally, UpstreamResult
from stubby_py.core.config import Config, Overrides, UpstreamSpec, apply_overrides
from stubby_py.core.errors import StubbyError, UpstreamError
from stubby_py.transports import make_transport
from stubby_py.transports.base import ConnectInfo, Transport

#: popular names for the cached phase (any public resolver has them cached)
POPULAR_NAMES = (
    "google.com",
    "youtube.com",
    "facebook.com",
    "wikipedia.org",
    "amazon.com",
    "apple.com",
    "microsoft.com",
    "cloudflare.com",
    "github.com",
    "netflix.com",
    "instagram.com",
    "linkedin.com",
    "reddit.com",
    "yahoo.com",
    "bing.com",
    "whatsapp.com",
    "office.com",
    "zoom.us",
    "debian.org",
    "mozilla.org",
)
#: signed zones for the dnssec phase (their answers carry RRSIGs when asked with DO)
SIGNED_NAMES = (
    "cloudflare.com",
    "isc.org",
    "ietf.org",
    "debian.org",
    "nic.cz",
    "quad9.net",
)
#: the rcodes that say the upstream could not answer (counted as errors)
_FAILED_RCODES = {2: "rcode-SERVFAIL", 5: "rcode-REFUSED"}
EXIT_INTERRUPTED = 130
#: seconds left to closing connections at the end of a run
CLOSE_GRACE = 0.1


@dataclass(frozen=True, slots=True)
class BenchOptions:
    queries: int = 30
    concurrency: int = 4
    timeout: float = 2.0
    zone: str = "example.com"
    names: tuple[str, ...] = POPULAR_NAMES
    signed_names: tuple[str, ...] = SIGNED_NAMES
    #: stop measuring after this many seconds, whatever is left
    max_time: float = 120.0


class _Failed(Exception):
    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


def phases_for(spec: UpstreamSpec) -> tuple[str, ...]:
    if spec.transport == "udp":
        return tuple(p for p in benchstats.PHASES if p not in benchstats.CONNECTION_PHASES)
    if spec.transport == "tcp":  # no TLS: no session to resume
        return tuple(p for p in benchstats.PHASES if p != "resumed")
    return benchstats.PHASES


def make_query(name: str, spec: UpstreamSpec, pad_block: int, *, do: bool = False) -> bytes:
    """The query the daemon would send for a client's `name A`: ID 0, RD, our OPT, padded
    (do: with the DNSSEC OK bit, as the daemon asks for a client that set it)."""
    client = wire.parse_query(dns.message.make_query(name, "A").to_wire())
    if spec.is_encrypted:
        return edns.upstream_query(client, pad_block=pad_block, do=do, keepalive=True)
    return edns.upstream_query(client, pad_block=0, do=do)


def dnssec_signs(reply: bytes) -> tuple[bool, bool]:
    """(the answer carries RRSIGs, AD is set) for one reply."""
    try:
        message = dns.message.from_wire(reply)
    except dns.exception.DNSException:
        return False, False
    signed = any(rrset.rdtype == dns.rdatatype.RRSIG for rrset in message.answer)
    return signed, bool(message.flags & dns.flags.AD)


class BenchRun:
    """One bench run: the upstreams, their tallies, and the asyncio side that fills them."""

    def __init__(self, specs: Sequence[UpstreamSpec], config: Config, options: BenchOptions):
        self.specs = list(specs)
        self.config = config
        self.options = options
        self.results = [
            UpstreamResult(
                spec.label,
                benchstats.TRANSPORT_OF_SCHEME[spec.transport],
                {phase: Tally() for phase in phases_for(spec)},
            )
            for spec in self.specs
        ]
        self.done = 0
        self.total = 0
        self.elapsed = 0.0
        #: why it stopped early: "interrupted", "max-time", or None (finished)
        self.stopped_by: str | None = None
        self._stop: asyncio.Event | None = None
        self._transports: list[Transport] = []
        #: per upstream: the transport whose connection each resumed sample renews, and a lock
        #: so that one renewal at a time runs on it
        self._resumers: list[Transport] = []
        self._resume_locks: list[asyncio.Lock] = []

    # -- running -----------------------------------------------------------------------------
    def stop(self, reason: str) -> None:
        if self.stopped_by is None:
            self.stopped_by = reason
        if self._stop is not None:
            self._stop.set()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        started = time.perf_counter()
        timer = loop.call_later(self.options.max_time, self.stop, "max-time")
        self._transports = [make_transport(spec, self.config) for spec in self.specs]
        self._resumers = [make_transport(spec, self.config) for spec in self.specs]
        self._resume_locks = [asyncio.Lock() for _ in self.specs]
        labels = [
            f"{secrets.token_hex(6)}.{self.options.zone.strip('.')}"
            for _ in range(self.options.queries)
        ]
        warmup = benchstats.warmup_plan(len(self.specs), self.options.names)
        jobs = benchstats.measure_plan(
            [phases_for(s) for s in self.specs], self.options.names, self.options.queries, labels,
            self.options.signed_names,
        )  # fmt: skip
        self.total = len(warmup) + len(jobs)
        try:
            await self._run_jobs(warmup)
            await self._run_jobs(jobs)
        finally:
            timer.cancel()
            self.elapsed = time.perf_counter() - started
            for transport in self._transports + self._resumers:
                await transport.aclose()
            # a closed TLS connection still trades close_notify with the server: give it a
            # moment before the loop goes (the DoT transport's aclose does not wait for that)
            await asyncio.sleep(CLOSE_GRACE)

    async def _run_jobs(self, jobs: Iterable[Job]) -> None:
        assert self._stop is not None
        pending = iter(jobs)

        async def worker() -> None:
            for job in pending:
                await self._one(job)
                self.done += 1

        workers = [asyncio.ensure_future(worker()) for _ in range(self.options.concurrency)]
        stopped = asyncio.ensure_future(self._stop.wait())
        everything = asyncio.gather(*workers)
        watched: list[asyncio.Future[Any]] = [everything, stopped]
        try:
            await asyncio.wait(watched, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
            everything.cancel()
            await asyncio.gather(everything, stopped, return_exceptions=True)

    async def _one(self, job: Job) -> None:
        if job.phase == "handshake":
            await self._handshake(job)
            return
        if job.phase == "resumed":
            await self._resumed(job)
            return
        transport = self._transports[job.upstream]
        tally = self.results[job.upstream].tallies.get(job.phase)
        dnssec = job.phase == "dnssec"
        try:
            seconds, reply = await self._timed_reply(transport, job.name, do=dnssec)
        except _Failed as failure:
            if tally is not None:
                tally.fail(failure.kind)
            return
        if tally is not None:
            tally.add(seconds)
            if dnssec:
                signed, validated = dnssec_signs(reply)
                tally.rrsig += signed
                tally.ad += validated

    async def _handshake(self, job: Job) -> None:
        tally = self.results[job.upstream].tallies["handshake"]
        transport = make_transport(self.specs[job.upstream], self.config)
        try:
            info = await self._connected(transport)
        except _Failed as failure:
            tally.fail(failure.kind)
            return
        finally:
            await transport.aclose()
        tally.add(info.handshake_s)

    async def _resumed(self, job: Job) -> None:
        tally = self.results[job.upstream].tallies["resumed"]
        transport = self._resumers[job.upstream]
        async with self._resume_locks[job.upstream]:
            try:
                if transport.stats.handshakes == 0:
                    # its first connection, unmeasured: a session for the sample to resume
                    await self._timed(transport, job.name)
                info = await self._connected(transport, fresh=True)
                # unmeasured: brings the next session ticket in (TLS 1.3 sends it after the
                # handshake; QUIC's are each used once)
                await self._timed(transport, job.name)
            except _Failed as failure:
                tally.fail(failure.kind)
                return
        if not info.resumed:
            tally.fail("not-resumed")
            return
        tally.resumed += 1
        tally.add(info.handshake_s)

    async def _connected(self, transport: Transport, *, fresh: bool = False) -> ConnectInfo:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.options.timeout + 1.0):
                return await transport.connect(loop.time() + self.options.timeout, fresh=fresh)
        except UpstreamError as exc:
            raise _Failed(exc.kind) from None
        except TimeoutError:
            raise _Failed("timeout") from None

    async def _timed(self, transport: Transport, name: str) -> float:
        """Seconds for one exchange of `name A`; _Failed with the kind of failure otherwise."""
        return (await self._timed_reply(transport, name))[0]

    async def _timed_reply(
        self, transport: Transport, name: str, *, do: bool = False
    ) -> tuple[float, bytes]:
        """Seconds for one exchange of `name A`, and the reply; _Failed otherwise."""
        query = make_query(name, transport.spec, self.config.transport.padding_block, do=do)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.options.timeout
        started = time.perf_counter()
        try:
            # the transport keeps the deadline; the outer limit only guards against a bug there
            async with asyncio.timeout(self.options.timeout + 1.0):
                reply = await transport.exchange(query, deadline)
        except UpstreamError as exc:
            raise _Failed(exc.kind) from None
        except TimeoutError:
            raise _Failed("timeout") from None
        elapsed = time.perf_counter() - started
        failed = _FAILED_RCODES.get(reply[3] & wire.RCODE_MASK)
        if failed is not None:
            raise _Failed(failed)
        return elapsed, reply

    # -- what it measured --------------------------------------------------------------------
    def counts(self) -> tuple[int, int]:
        errors = sum(t.errors for r in self.results for t in r.tallies.values())
        timeouts = sum(t.timeouts for r in self.results for t in r.tallies.values())
        return errors, timeouts

    def progress(self) -> str:
        errors, timeouts = self.counts()
        return benchstats.progress_text(self.done, self.total, errors, timeouts, self.elapsed)

    def meta(self) -> dict[str, object]:
        return {
            "zone": self.options.zone,
            "queries": self.options.queries,
            "concurrency": self.options.concurrency,
            "timeout_s": self.options.timeout,
            "elapsed_s": round(self.elapsed, 3),
            "stopped_by": self.stopped_by,
        }


# --- the asyncio edge: signals and the progress line ----------------------------------------------


async def _progress(run: BenchRun, stream: TextIO, started: float) -> None:
    is_tty = stream.isatty()
    interval = 0.2 if is_tty else 5.0
    while True:
        await asyncio.sleep(interval)
        run.elapsed = time.perf_counter() - started
        text = run.progress()
        stream.write(f"\r{text}\x1b[K" if is_tty else f"{text}\n")
        stream.flush()


async def run_with_progress(run: BenchRun, stream: TextIO) -> None:
    """Run the bench; Ctrl-C (SIGINT) stops it gracefully, a second one at once."""
    loop = asyncio.get_running_loop()
    handled = False
    with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
        loop.add_signal_handler(signal.SIGINT, _interrupt, run, loop)
        handled = True
    progress = asyncio.ensure_future(_progress(run, stream, time.perf_counter()))
    try:
        await run.run()
    finally:
        progress.cancel()
        await asyncio.gather(progress, return_exceptions=True)
        if stream.isatty():
            stream.write("\r\x1b[K")
        stream.write(run.progress() + "\n")
        if handled:
            loop.remove_signal_handler(signal.SIGINT)


def _interrupt(run: BenchRun, loop: asyncio.AbstractEventLoop) -> None:
    run.stop("interrupted")
    loop.remove_signal_handler(signal.SIGINT)  # a second Ctrl-C: KeyboardInterrupt


# --- the chart (matplotlib, an optional extra) ----------------------------------------------------

CHART_MISSING = (
    "--chart needs matplotlib: pip install 'stubby-py[chart]' (or: pip install matplotlib)"
)


def check_chart_available() -> None:
    try:
        import matplotlib.figure  # noqa: F401
    except ImportError:
        raise StubbyError(CHART_MISSING) from None


def write_chart(path: str, results: Sequence[UpstreamResult]) -> None:
    """One panel per phase: a box plot of each upstream's latencies (ms, log scale), fastest on
    top. The format follows the file name (.png, .svg, and whatever else matplotlib writes)."""
    try:
        from matplotlib.figure import Figure
        from matplotlib.ticker import FuncFormatter, NullFormatter
    except ImportError:
        raise StubbyError(CHART_MISSING) from None
    phases = [p for p in benchstats.PHASES if any(p in r.tallies for r in results)]
    figure = Figure(figsize=(9, 1.2 + 0.45 * len(results) * len(phases)), layout="constrained")
    axes = figure.subplots(len(phases), 1, squeeze=False)[:, 0]
    labels = [f"{r.upstream} ({r.transport})" for r in reversed(results)]
    for ax, phase in zip(axes, phases, strict=True):
        data = [_ms(r, phase) or [float("nan")] for r in reversed(results)]
        ax.boxplot(data, orientation="horizontal", tick_labels=labels, showfliers=True)
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_title(f"{phase}: latency, ms")
        ax.grid(True, axis="x", which="both", alpha=0.3)
    figure.suptitle("stubby-py bench")
    try:
        figure.savefig(path)
    except (OSError, ValueError) as exc:
        raise StubbyError(f"--chart {path}: {exc}") from None


def _ms(result: UpstreamResult, phase: str) -> list[float]:
    tally = result.tallies.get(phase)
    # a log scale has no 0: a handshake sample of 0 (set-up lost in the noise) is drawn at 1 µs
    return [max(s * 1000.0, 0.001) for s in tally.latencies] if tally is not None else []


# --- the command ----------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--config", metavar="FILE", help="take the upstream pool from FILE")
    parser.add_argument(
        "--upstream", action="append", default=[], metavar="URI",
        help="upstream to measure (repeatable; replaces the pool): tls://, https://, h3://, "
        "quic://, udp://, tcp:// or a DNS stamp sdns:// as for `run`",
    )  # fmt: skip
    parser.add_argument("--ca-file", metavar="FILE", help="PEM CA certificates to verify with")
    parser.add_argument(
        "--bootstrap", action="append", default=[], metavar="URI",
        help="resolver for upstreams given by hostname (repeatable; replaces the configured ones)",
    )
    parser.add_argument(
        "--transport", metavar="LIST",
        help="only these transports, comma-separated: dot,doh,doh3,doq,udp (udp: udp:// and tcp://)",
    )  # fmt: skip
    parser.add_argument(
        "--names", metavar="FILE",
        help="popular names for the cached phase, one a line (default: a built-in list)",
    )  # fmt: skip
    parser.add_argument(
        "--signed-names", metavar="FILE",
        help="signed names for the dnssec phase, one a line (default: a built-in list)",
    )  # fmt: skip
    parser.add_argument(
        "--zone", default="example.com",
        help="uncached phase: random labels under this zone (default: example.com)",
    )  # fmt: skip
    parser.add_argument(
        "--queries", type=_positive_int, default=30, metavar="N",
        help="samples per upstream and phase (default: 30)",
    )  # fmt: skip
    parser.add_argument(
        "--concurrency", type=_positive_int, default=4, metavar="N",
        help="queries in flight at once, over all upstreams (default: 4)",
    )  # fmt: skip
    parser.add_argument(
        "--timeout", type=_positive_float, default=2.0, metavar="S",
        help="per-query timeout, seconds (default: 2)",
    )  # fmt: skip
    parser.add_argument(
        "--max-time", type=_positive_float, default=120.0, metavar="S",
        help="stop after this many seconds and report what was measured (default: 120)",
    )  # fmt: skip
    parser.add_argument("--format", choices=("table", "json", "csv"), default="table")
    parser.add_argument(
        "--chart", metavar="FILE",
        help="also draw the latency distributions to FILE (.png or .svg; needs matplotlib)",
    )  # fmt: skip
    parser.add_argument(
        "--html", metavar="FILE",
        help="also write a self-contained HTML report (charts, table, where and when) to FILE",
    )  # fmt: skip


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected at least 1, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected more than 0, got {text}")
    return value


def selected_upstreams(config: Config, transports: str | None) -> list[UpstreamSpec]:
    if not transports:
        return list(config.forwarding.upstreams)
    wanted = {t.strip() for t in transports.split(",") if t.strip()}
    unknown = wanted - set(benchstats.TRANSPORT_CHOICES)
    if unknown:
        choices = ",".join(benchstats.TRANSPORT_CHOICES)
        raise StubbyError(f"--transport: unknown {','.join(sorted(unknown))}; expected {choices}")
    upstreams = config.forwarding.upstreams
    chosen = [s for s in upstreams if benchstats.FILTER_OF_SCHEME[s.transport] in wanted]
    if not chosen:
        raise StubbyError(f"--transport {transports}: no upstream in the pool uses it")
    return chosen


def read_names(path: str) -> tuple[str, ...]:
    try:
        with open(path, encoding="utf-8") as handle:
            lines = [line.split("#", 1)[0].strip() for line in handle]
    except OSError as exc:
        raise StubbyError(f"{path}: cannot read the names: {exc.strerror}") from None
    names = tuple(line for line in lines if line)
    if not names:
        raise StubbyError(f"{path}: no names in it")
    return names


def _options(args: argparse.Namespace) -> BenchOptions:
    names = read_names(args.names) if args.names else POPULAR_NAMES
    signed = read_names(args.signed_names) if args.signed_names else SIGNED_NAMES
    return BenchOptions(
        queries=args.queries, concurrency=args.concurrency, timeout=args.timeout,
        zone=args.zone, names=names, signed_names=signed, max_time=args.max_time,
    )  # fmt: skip


def _config(args: argparse.Namespace, timeout: float) -> Config:
    config = stubby_import.load(args.config)[0]
    overrides = Overrides(
        upstreams=tuple(args.upstream), ca_file=args.ca_file, bootstrap=tuple(args.bootstrap)
    )
    config = apply_overrides(config, overrides)
    # connections stay open for the whole run; one attempt per query, no pool retries; TLS
    # sessions resumed unless turned off (a run of minutes: what a Python that leaks each session
    # read, transports/tls.py SESSION_READ_LEAKS, loses here is small and gone at exit)
    resumption = "off" if config.transport.tls_resumption == "off" else "on"
    return config.with_options(
        timeout=timeout, attempt_timeout=timeout, upstream_idle_timeout=300.0,
        tls_resumption=resumption,
    )  # fmt: skip


def main(args: argparse.Namespace) -> int:
    """`stubby-py bench`: measure, then print the ranked table, JSON or CSV on stdout."""
    if args.chart:
        check_chart_available()
    options = _options(args)
    config = _config(args, options.timeout)
    run = BenchRun(selected_upstreams(config, args.transport), config, options)
    try:
        asyncio.run(run_with_progress(run, sys.stderr))
    except KeyboardInterrupt:
        run.stop("interrupted")
    records = benchstats.summaries(run.results)
    if args.format == "json":
        sys.stdout.write(benchstats.format_json(records, run.meta()))
    elif args.format == "csv":
        sys.stdout.write(benchstats.format_csv(records))
    else:
        sys.stdout.write(benchstats.format_table(records))
        if run.stopped_by is not None:
            sys.stdout.write(f"stopped early ({run.stopped_by}): partial results\n")
    if args.chart:
        write_chart(args.chart, benchstats.ranked(run.results))
        print(f"chart written to {args.chart}", file=sys.stderr)
    if args.html:
        from stubby_py.commands import bench_html

        bench_html.write(args.html, run.results, run.meta())
    return EXIT_INTERRUPTED if run.stopped_by == "interrupted" else 0
