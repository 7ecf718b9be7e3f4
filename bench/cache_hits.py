#!/usr/bin/env python3
"""Cache-hit benchmark: stubby-py answering from its cache vs a bare uvloop responder, in one run.

A local Unbound serves ``*.bench`` over DoT (as bench/forwarding.py starts it). stubby-py (pinned
to CPU 0) forwards to it; its cache is warmed with a small set of names, each asked once, then
dnsperf (pinned to CPU 1) loops over that set, so every measured query is a cache hit (checked
with ``stubby-py stats``). The same loads then go to bench/bare_responder.py (pinned to CPU 0): a
uvloop UDP responder answering from a dict, the Python limit for a cache hit. For both: maximum
queries/s, latency at a fixed 10,000 queries/s (p50, p99), CPU time per query; for stubby-py also
its resident memory at start, with the small set cached and with 100,000 answers cached. See
bench/README.md and "Performance targets" in the design notes.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.harness import (
    ANSWER,
    AUTH_NAME,
    DNSSEC_OFF,
    FORWARDER_CPU,
    HOST,
    LOAD_CPU,
    MAX_CLIENTS,
    MAX_OUTSTANDING,
    READY_TIMEOUT,
    ZONE,
    Children,
    Dnsperf,
    Ports,
    Result,
    Sample,
    background_load,
    busy_note,
    busy_share,
    check_cpus,
    common_options,
    core_times,
    dig_answer,
    dnsperf,
    fmt,
    free_ports,
    lost_note,
    make_certs,
    module_argv,
    others_seconds,
    pct,
    process_ticks,
    raise_on_signal,
    ratio_of,
    read_tail,
    record_counters,
    run_main,
    run_notes,
    start_unbound,
    stubby_py_command,
    vm_kib,
    workspace,
    write_json,
    write_query_file,
)

HOT_NAMES = 1000  # the set dnsperf loops over: every query a cache hit
CACHED_NAMES = 100_000  # answers in stubby-py's cache when its memory is read
FIXED_QPS = 10_000
FILL_LIMIT_S = 30  # a fill run (CACHED_NAMES - HOT_NAMES names) is cut off after this
FILL_PASSES = 2
QPS_TARGET = 0.6  # stubby-py / bare responder, queries/s
RSS_TARGET_MIB = 64
OTHERS_LIMIT = 0.05  # other programs' CPU during a run (share of one core) worth a note
TARGETS = ("stubby-py", "bare")

# --------------------------------------------------------------------------- setup


@dataclass(frozen=True)
class Bench:
    children: Children
    tmp: Path
    ports: Ports  # plain, dot: the upstream Unbound's; stubby_py: the daemon's (stubby unused)
    bare_port: int
    ca: Path
    unbound: subprocess.Popen[bytes]
    hot_names: Path  # q0 .. q<HOT_NAMES-1>
    fill_names: Path  # q<HOT_NAMES> .. q<CACHED_NAMES-1>
    duration: float
    stubby_py_args: tuple[str, ...]

    @property
    def control_socket(self) -> Path:
        return self.tmp / "control.sock"


def prepare(children: Children, tmp: Path, args: argparse.Namespace) -> Bench:
    *four, bare_port = free_ports(5)
    ports = Ports(*four)
    certs = make_certs(tmp)
    unbound = start_unbound(children, tmp, ports, certs)
    hot, fill = tmp / "hot.txt", tmp / "fill.txt"
    write_query_file(hot, 0, HOT_NAMES)
    write_query_file(fill, HOT_NAMES, CACHED_NAMES - HOT_NAMES)
    return Bench(
        children,
        tmp,
        ports,
        bare_port,
        certs.ca,
        unbound,
        hot,
        fill,
        args.duration,
        tuple(shlex.split(args.stubby_py_args)),
    )


# --------------------------------------------------------------------------- probes


def stubby_py_stats(bench: Bench) -> dict[str, Any] | None:
    """`stubby-py stats --json` over the control socket; None if it does not answer (yet)."""
    out, _ = bench.children.run(
        [*stubby_py_command(), "stats", "--json", "--socket", str(bench.control_socket)],
        timeout=10,
    )
    try:
        stats: dict[str, Any] = json.loads(out)
    except ValueError:
        return None
    return stats


def wait_for_control(bench: Bench, proc: subprocess.Popen[bytes]) -> dict[str, Any]:
    """Polls the control socket (no DNS query) until the daemon answers it."""
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"stubby-py exited with status {proc.returncode} before answering")
        stats = stubby_py_stats(bench)
        if stats is not None:
            return stats
        time.sleep(0.1)
    raise RuntimeError(f"stubby-py's control socket did not answer within {READY_TIMEOUT:.0f} s")


def wait_for_answer(bench: Bench, proc: subprocess.Popen[bytes], port: int, what: str) -> None:
    """Polls with dig for q0.bench, one of the names the bare responder knows."""
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with status {proc.returncode} before answering")
        if dig_answer(bench.children, port, f"q0.{ZONE}") == ANSWER:
            return
        time.sleep(0.2)
    raise RuntimeError(f"{what} did not answer within {READY_TIMEOUT:.0f} s")


# --------------------------------------------------------------------------- measurements


@dataclass
class HitResult(Result):
    rss_start_kib: int | None = None  # before any query (bare: with its answers loaded)
    rss_hot_kib: int | None = None  # after the measured runs, HOT_NAMES answers cached
    rss_full_kib: int | None = None  # with the cache filled (stubby-py only)
    hwm_full_kib: int | None = None  # peak RSS (VmHWM) by then
    warm: Dnsperf | None = None  # stubby-py: the run that put HOT_NAMES answers in the cache
    fill: list[Dnsperf] = field(default_factory=list)  # stubby-py: the runs that filled the cache
    hits: dict[str, Any] = field(default_factory=dict)  # stubby-py: the measured runs' counters
    cache_full: dict[str, Any] = field(default_factory=dict)  # stubby-py: cache stats, filled
    unknown_questions: int | None = None  # bare: queries it had no answer for
    others_max_share: float | None = None  # other programs' CPU during the max-rate run / wall
    others_fixed_share: float | None = None  # the same during the fixed-rate run


def measure(bench: Bench, result: HitResult, pid: int, port: int, upstream: int | None) -> None:
    """Fixed-rate latency run first (it also warms the code paths), then max rate; dnsperf
    goes round the HOT_NAMES names for the whole of each run."""
    others, start = process_ticks(), time.monotonic()
    result.fixed_rate = dnsperf(
        bench.children,
        port,
        bench.hot_names,
        bench.duration,
        ["-Q", str(FIXED_QPS), "-v"],
        passes=None,
    )
    result.others_fixed_share = others_seconds(others, process_ticks()) / (time.monotonic() - start)
    before, cores = Sample.take(pid, upstream, port), [core_times()]
    others, start = process_ticks(), time.monotonic()
    result.max_rate = dnsperf(
        bench.children,
        port,
        bench.hot_names,
        bench.duration,
        ["-c", str(MAX_CLIENTS), "-q", str(MAX_OUTSTANDING)],
        at=(bench.duration, lambda: cores.append(core_times())),  # while dnsperf still sends
        passes=None,
    )
    after = Sample.take(pid, upstream, port)
    elapsed = time.monotonic() - start
    result.others_max_share = others_seconds(others, process_ticks()) / elapsed
    record_counters(result, before, after, has_upstream=upstream is not None)
    result.forwarder_core_busy = busy_share(cores[0], cores[-1], FORWARDER_CPU)
    result.load_core_busy = busy_share(cores[0], cores[-1], LOAD_CPU)


def stubby_py_config(bench: Bench) -> Path:
    conf = bench.tmp / "stubby-py.yaml"
    conf.write_text(f'control_socket: "{bench.control_socket}"\nrate_limit: 0\n')
    return conf


def stubby_py_argv(bench: Bench) -> list[str]:
    return [
        "taskset",
        "-c",
        str(FORWARDER_CPU),
        *stubby_py_command(),
        "run",
        "-c",
        str(stubby_py_config(bench)),
        "--listen",
        f"{HOST}:{bench.ports.stubby_py}",
        "--upstream",
        f"tls://{HOST}:{bench.ports.dot}#{AUTH_NAME}",
        "--ca-file",
        str(bench.ca),
        *DNSSEC_OFF,
        *bench.stubby_py_args,
    ]


def counts(stats: dict[str, Any]) -> dict[str, int]:
    cache = stats["cache"]
    upstream = sum(u["queries"] for u in stats["upstreams"])
    return {
        "queries": stats["queries"],
        "hits": cache["hits"],
        "misses": cache["misses"],
        "upstream_queries": upstream,
        "entries": cache["entries"],
    }


def stats_now(bench: Bench) -> dict[str, Any]:
    stats = stubby_py_stats(bench)
    if stats is None:
        raise RuntimeError("stubby-py stats --json gave no answer")
    return stats


def hit_counts(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """What the daemon counted over the measured runs."""
    a, b = counts(after), counts(before)
    delta: dict[str, Any] = {
        k: a[k] - b[k] for k in ("queries", "hits", "misses", "upstream_queries")
    }
    looked_up = delta["hits"] + delta["misses"]
    delta["hit_ratio"] = delta["hits"] / looked_up if looked_up else None
    delta["entries"] = a["entries"]
    return delta


def fill_cache(bench: Bench, result: HitResult, pid: int) -> None:
    """CACHED_NAMES - HOT_NAMES new names, each once, at dnsperf's max rate (bounded); a second
    pass if some were lost on the way (the names already cached are hits then)."""
    for _ in range(FILL_PASSES):
        run = dnsperf(
            bench.children,
            bench.ports.stubby_py,
            bench.fill_names,
            FILL_LIMIT_S,
            ["-c", str(MAX_CLIENTS), "-q", str(MAX_OUTSTANDING)],
        )
        result.fill.append(run)
        time.sleep(0.5)  # answers still in flight settle
        result.cache_full = stats_now(bench)["cache"]
        if result.cache_full["entries"] >= CACHED_NAMES:
            break
    result.rss_full_kib = vm_kib(pid)
    result.hwm_full_kib = vm_kib(pid, "VmHWM")


def run_stubby_py(bench: Bench, result: HitResult) -> None:
    port = bench.ports.stubby_py
    proc = bench.children.start(stubby_py_argv(bench), bench.tmp / "stubby-py.log")
    try:
        wait_for_control(bench, proc)
        result.rss_start_kib = vm_kib(proc.pid)
        result.warm = dnsperf(
            bench.children, port, bench.hot_names, 10, ["-c", "1", "-q", "100"], passes=1
        )
        before = stats_now(bench)
        measure(bench, result, proc.pid, port, bench.unbound.pid)
        result.hits = hit_counts(before, stats_now(bench))
        result.rss_hot_kib = vm_kib(proc.pid)
        fill_cache(bench, result, proc.pid)
    finally:
        bench.children.stop(proc)


def run_bare(bench: Bench, result: HitResult) -> None:
    argv = [
        "taskset",
        "-c",
        str(FORWARDER_CPU),
        *module_argv("bench.bare_responder"),
        "--port",
        str(bench.bare_port),
        "--names",
        str(bench.hot_names),
    ]
    log = bench.tmp / "bare.log"
    proc = bench.children.start(argv, log)
    try:
        wait_for_answer(bench, proc, bench.bare_port, "bare responder")
        result.rss_start_kib = vm_kib(proc.pid)
        measure(bench, result, proc.pid, bench.bare_port, None)
        result.rss_hot_kib = vm_kib(proc.pid)
    finally:
        bench.children.stop(proc)
    match = re.search(r"unknown questions \(not answered\): (\d+)", read_tail(log))
    result.unknown_questions = int(match.group(1)) if match else None


def guarded(bench: Bench, target: str) -> HitResult:
    """A failing target is reported as such and the other still runs."""
    print(
        f"-- {target}: {bench.duration:g} s at {FIXED_QPS} q/s, then {bench.duration:g} s at "
        "max rate" + (", then the cache filled" if target == "stubby-py" else ""),
        file=sys.stderr,
        flush=True,
    )
    result = HitResult(target)
    try:
        (run_stubby_py if target == "stubby-py" else run_bare)(bench, result)
    except (RuntimeError, OSError, subprocess.SubprocessError, KeyError) as exc:
        log = bench.tmp / ("stubby-py.log" if target == "stubby-py" else "bare.log")
        result.error = f"{exc}\n{read_tail(log)}".strip()
    return result


# --------------------------------------------------------------------------- report


def _mib(kib: int | None) -> str:
    return fmt(None if kib is None else kib / 1024, ".1f")


COLUMNS = (  # heading, width
    ("target", 10),
    ("max qps", 9),
    ("lost", 6),
    ("p50 ms", 8),
    ("p99 ms", 8),
    ("avg ms", 8),
    ("lost@10k", 9),
    ("cpu µs/q", 9),
    ("cpu0 %", 7),
    ("cpu1 %", 7),
    ("others %", 9),
    ("RSS MiB", 8),
)


def row(res: HitResult) -> list[str]:
    m, f = res.max_rate, res.fixed_rate
    assert m is not None and f is not None
    return [
        res.target,
        f"{m.qps:.0f}",
        str(m.lost),
        fmt(f.p50_latency_ms, ".3f"),
        fmt(f.p99_latency_ms, ".3f"),
        f"{f.avg_latency_ms:.3f}",
        str(f.lost),
        fmt(res.cpu_us_per_query, ".1f"),
        pct(res.forwarder_core_busy),
        pct(res.load_core_busy),
        pct(max(res.others_fixed_share or 0, res.others_max_share or 0)),
        _mib(res.rss_hot_kib),
    ]


WHAT: dict[str, Callable[[HitResult], float | None]] = {  # the figures compared
    "qps": lambda r: r.max_rate.qps if r.max_rate else None,
    "cpu": lambda r: r.cpu_us_per_query,
    "p50": lambda r: r.fixed_rate.p50_latency_ms if r.fixed_rate else None,
    "p99": lambda r: r.fixed_rate.p99_latency_ms if r.fixed_rate else None,
}


def ratios(results: dict[str, HitResult]) -> dict[str, float | None]:
    ours, bare = results.get("stubby-py"), results.get("bare")

    def get(res: HitResult | None, what: str) -> float | None:
        if res is None or res.max_rate is None or res.fixed_rate is None:
            return None
        return WHAT[what](res)

    return {f"stubby-py/bare {w}": ratio_of(get(ours, w), get(bare, w)) for w in WHAT}


def _verdict(value: float | None, ok: bool) -> str:
    return "" if value is None else ("  (target met)" if ok else "  (target NOT met)")


def ratio_lines(results: dict[str, HitResult]) -> list[str]:
    r = ratios(results)
    qps = r["stubby-py/bare qps"]
    return [
        f"stubby-py / bare   max qps {fmt(qps, '.2f')}   target >= {QPS_TARGET}"
        + _verdict(qps, qps is not None and qps >= QPS_TARGET),
        f"stubby-py / bare   cpu per query {fmt(r['stubby-py/bare cpu'], '.2f')}   "
        f"p50 {fmt(r['stubby-py/bare p50'], '.2f')}   p99 {fmt(r['stubby-py/bare p99'], '.2f')}",
    ]


def memory_lines(res: HitResult | None) -> list[str]:
    if res is None or res.rss_start_kib is None:
        return []
    lines = [
        "stubby-py resident memory (VmRSS):",
        f"  at start, before any query          {_mib(res.rss_start_kib):>7} MiB",
        f"  {HOT_NAMES:,} answers cached, after the runs {_mib(res.rss_hot_kib):>7} MiB",
    ]
    if res.rss_full_kib is not None:
        cache = res.cache_full
        full = res.rss_full_kib / 1024
        lines += [
            f"  {cache.get('entries', 0):,} answers cached"
            f"{'':{max(0, 21 - len(format(cache.get('entries', 0), ',')))}}"
            f"{full:>7.1f} MiB   target < {RSS_TARGET_MIB} MiB"
            + _verdict(full, full < RSS_TARGET_MIB),
            f"  the cache's own share: {(res.rss_full_kib - res.rss_start_kib) / 1024:.1f} MiB "
            f"over start (it counts {cache.get('bytes', 0) / 2**20:.1f} MiB of answers itself; "
            f"{cache.get('evictions', 0)} evicted); peak RSS (VmHWM) {_mib(res.hwm_full_kib)} MiB",
        ]
    return lines


def table(results: dict[str, HitResult]) -> str:
    def line(cells: Sequence[str]) -> str:
        first, *rest = zip(cells, COLUMNS, strict=True)
        return f"{first[0]:<{first[1][1]}}" + "".join(f"{c:>{w + 1}}" for c, (_, w) in rest)

    lines = [
        f"every query a cache hit ({HOT_NAMES:,} names, dnsperf round and round them)",
        "max qps, lost, cpu µs/q, cpu%: max-rate run (-c 4 -q 500); p50/p99/avg/lost@10k: at "
        f"{FIXED_QPS:,} queries/s",
        f"cpu{FORWARDER_CPU} %: the target's core busy; cpu{LOAD_CPU} %: dnsperf's core busy; "
        "others %: other programs' CPU meanwhile (the busier run), in % of one core",
        f"RSS: after the runs, {HOT_NAMES:,} answers held",
        "",
        line([name for name, _ in COLUMNS]),
    ]
    for res in results.values():
        if res.max_rate is None or res.fixed_rate is None:
            lines.append(f"{res.target:<10} FAILED: {(res.error or '?').splitlines()[0]}")
        else:
            lines.append(line(row(res)))
    lines += ["", *ratio_lines(results), "", *memory_lines(results.get("stubby-py"))]
    return "\n".join(lines).rstrip()


def hit_notes(res: HitResult) -> list[str]:
    notes = []
    if res.warm is not None and (res.warm.completed != HOT_NAMES or res.warm.lost):
        notes.append(
            f"stubby-py warm-up: {res.warm.completed} of {HOT_NAMES} names answered, "
            f"{res.warm.lost} lost: some measured queries were cache misses"
        )
    hits = res.hits
    if hits:
        ratio = None if hits["hit_ratio"] is None else hits["hit_ratio"] * 100
        notes.append(
            f"stubby-py over the measured runs counted {hits['queries']} queries: "
            f"{hits['hits']} cache hits, {hits['misses']} misses (hit ratio {fmt(ratio, '.3f')} "
            f"%), {hits['upstream_queries']} sent upstream"
        )
    for i, fill in enumerate(res.fill, 1):
        notes.append(
            f"stubby-py cache fill, pass {i}: {fill.sent} queries in {fill.run_time_s:.1f} s "
            f"({fill.qps:.0f}/s, mostly cache misses on pass 1, hits after), {fill.lost} lost"
            + ("" if fill.ran_out_of_names else f"; cut off at {FILL_LIMIT_S} s")
        )
    return notes


def target_notes(res: HitResult, duration: float) -> list[str]:
    notes = [f"{res.target} failed:\n{res.error}"] if res.error else []
    for label, run in (("fixed-rate", res.fixed_rate), ("max-rate", res.max_rate)):
        if run is not None:
            notes += run_notes(res.target, label, run, duration)
    if res.max_rate and res.max_rate.lost:
        notes.append(lost_note(res, res.max_rate.lost))
    if res.unknown_questions:
        notes.append(f"bare: {res.unknown_questions} queries for questions it had no answer for")
    others = {"fixed-rate": res.others_fixed_share, "max-rate": res.others_max_share}
    for label, share in others.items():
        if share and share > OTHERS_LIMIT:
            notes.append(
                f"{res.target} {label}: other programs used {share:.0%} of a core meanwhile: "
                "its figures are skewed"
            )
    if res.load_core_busy and res.load_core_busy > 0.9:
        notes.append(
            f"{res.target} max-rate: cpu{LOAD_CPU} {res.load_core_busy:.0%} busy; the figure may "
            "be limited by dnsperf, not by the target"
        )
    return notes + (hit_notes(res) if res.target == "stubby-py" else [])


def report(results: dict[str, HitResult], idle: dict[int, float], args: argparse.Namespace) -> None:
    print(table(results))
    notes = [n for r in results.values() for n in target_notes(r, args.duration)]
    busy = busy_note(idle)
    notes = [busy, *notes] if busy else notes
    if notes:
        print("\nnotes:\n" + "\n".join(notes))
    doc = {
        "duration_s": args.duration,
        "fixed_qps": FIXED_QPS,
        "hot_names": HOT_NAMES,
        "cached_names": CACHED_NAMES,
        "results": {t: asdict(r) for t, r in results.items()},
        "ratios": ratios(results),
        "targets": {"qps_ratio_min": QPS_TARGET, "rss_mib_max": RSS_TARGET_MIB},
    }
    write_json(args.json, idle, doc)


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    common_options(
        parser, duration=10.0, duration_help="seconds per dnsperf run, two runs per target"
    )
    parser.add_argument(
        "--stubby-py-args", default="", help="extra arguments appended to 'stubby-py run ...'"
    )
    args = parser.parse_args(argv)
    if not 1 <= args.duration <= 20:
        parser.error("duration: 1..20 s")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    check_cpus(("unbound", "dnsperf", "dig", "kdig", "taskset"))
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, raise_on_signal)
    idle = background_load()
    with workspace(args.keep, "bench-cache-hits-") as (children, tmp):
        bench = prepare(children, tmp, args)
        results = {t: guarded(bench, t) for t in TARGETS}
    report(results, idle, args)
    return 1 if any(r.error for r in results.values()) else 0


if __name__ == "__main__":
    run_main(main)
