#!/usr/bin/env python3
"""Forwarding benchmark: stubby-py vs Stubby vs Unbound, every query a cache miss, in one run.

A local Unbound answers ``*.bench`` authoritatively from its config over plain UDP and over DoT
(RFC 7858) with a certificate from a throw-away trustme CA. dnsperf (pinned to CPU 1) then loads,
in turn, stubby-py and Stubby (each pinned to CPU 0, forwarding over DoT to that Unbound) and
Unbound's plain port directly (moved to CPU 0 for that run). For each target it reports the
maximum queries/s, queries lost, latency at a fixed 2,000 queries/s (average, stddev, p50, p99)
and the forwarder's CPU time per completed query. Names are unique (``q<N>.bench``) so no cache
can hit. See bench/README.md and "Performance targets" in the design notes.
"""

from __future__ import annotations

import argparse
import shlex
import signal
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.harness import (
    AUTH_NAME,
    DNSSEC_OFF,
    FIXED_QPS,
    FORWARDER_CPU,
    HOST,
    LOAD_CPU,
    MAX_CLIENTS,
    MAX_OUTSTANDING,
    MAX_QPS_CAP,
    Certs,
    Children,
    Ports,
    Result,
    Sample,
    background_load,
    busy_note,
    busy_share,
    check_cpus,
    common_options,
    core_times,
    dnsperf,
    fmt,
    free_ports,
    make_certs,
    pct,
    raise_on_signal,
    ratio_of,
    read_tail,
    record_counters,
    run_main,
    set_affinity,
    start_unbound,
    stubby_conf,
    stubby_py_command,
    target_notes,
    wait_until_answers,
    workspace,
    write_json,
    write_query_file,
)

TARGETS = ("stubby-py", "stubby", "unbound-direct")

# --------------------------------------------------------------------------- one target


@dataclass(frozen=True)
class Setup:
    children: Children
    tmp: Path
    ports: Ports
    certs: Certs
    unbound: subprocess.Popen[bytes]
    max_names: Path
    fixed_names: Path
    duration: float
    stubby_py_args: tuple[str, ...]


def measure(setup: Setup, target: str, pid: int, port: int) -> Result:
    """Fixed-rate latency run first (it also warms the upstream connection), then max rate."""
    result = Result(target)
    result.fixed_rate = dnsperf(
        setup.children, port, setup.fixed_names, setup.duration, ["-Q", str(FIXED_QPS), "-v"]
    )
    upstream = setup.unbound.pid if pid != setup.unbound.pid else None
    before, cores = Sample.take(pid, upstream, port), [core_times()]
    result.max_rate = dnsperf(
        setup.children,
        port,
        setup.max_names,
        setup.duration,
        ["-c", str(MAX_CLIENTS), "-q", str(MAX_OUTSTANDING)],
        at=(setup.duration, lambda: cores.append(core_times())),  # while dnsperf still sends
    )
    after = Sample.take(pid, upstream, port)
    record_counters(result, before, after, has_upstream=upstream is not None)
    result.forwarder_core_busy = busy_share(cores[0], cores[-1], FORWARDER_CPU)
    result.load_core_busy = busy_share(cores[0], cores[-1], LOAD_CPU)
    return result


def stubby_py_argv(setup: Setup) -> list[str]:
    return [
        "taskset",
        "-c",
        str(FORWARDER_CPU),
        *stubby_py_command(),
        "run",
        "--listen",
        f"{HOST}:{setup.ports.stubby_py}",
        "--upstream",
        f"tls://{HOST}:{setup.ports.dot}#{AUTH_NAME}",
        "--ca-file",
        str(setup.certs.ca),
        *DNSSEC_OFF,
        *setup.stubby_py_args,
    ]


def run_forwarder(setup: Setup, target: str, argv: list[str], port: int) -> Result:
    proc = setup.children.start(argv, setup.tmp / f"{target}.log")
    try:
        wait_until_answers(setup.children, proc, port, target)
        return measure(setup, target, proc.pid, port)
    finally:
        setup.children.stop(proc)


def run_target(setup: Setup, target: str) -> Result:
    print(
        f"-- {target}: {setup.duration:g} s at {FIXED_QPS} q/s, then {setup.duration:g} s at "
        "max rate",
        file=sys.stderr,
        flush=True,
    )
    if target == "stubby-py":
        return run_forwarder(setup, target, stubby_py_argv(setup), setup.ports.stubby_py)
    if target == "stubby":
        conf = setup.tmp / "stubby.yml"
        conf.write_text(stubby_conf(setup.ports, setup.certs))
        argv = ["taskset", "-c", str(FORWARDER_CPU), "stubby", "-C", str(conf), "-l"]
        return run_forwarder(setup, target, argv, setup.ports.stubby)
    set_affinity(setup.unbound.pid, FORWARDER_CPU)
    try:
        return measure(setup, target, setup.unbound.pid, setup.ports.plain)
    finally:
        set_affinity(setup.unbound.pid, LOAD_CPU)


def guarded(setup: Setup, target: str) -> Result:
    """A failing target is reported as such and the others still run."""
    try:
        return run_target(setup, target)
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        tail = read_tail(setup.tmp / f"{target}.log")
        return Result(target, error=f"{exc}\n{tail}".strip())


# --------------------------------------------------------------------------- report


def ratios(results: dict[str, Result]) -> dict[str, float | None]:
    def get(target: str, what: str) -> float | None:
        res = results.get(target)
        if res is None or res.max_rate is None:
            return None
        return res.max_rate.qps if what == "qps" else res.cpu_us_per_query

    out: dict[str, float | None] = {}
    for other in ("stubby", "unbound-direct"):
        for what in ("qps", "cpu"):
            out[f"stubby-py/{other} {what}"] = ratio_of(get("stubby-py", what), get(other, what))
    return out


def ratio_lines(results: dict[str, Result]) -> list[str]:
    values = ratios(results)
    return [
        f"stubby-py / {other:<15} max qps {fmt(values[f'stubby-py/{other} qps'], '.2f'):>5}"
        f"   cpu per query {fmt(values[f'stubby-py/{other} cpu'], '.2f'):>5}"
        for other in ("stubby", "unbound-direct")
    ]


COLUMNS = (  # heading, width
    ("target", 15),
    ("max qps", 9),
    ("lost", 7),
    ("avg ms", 8),
    ("sd ms", 7),
    ("p50 ms", 8),
    ("p99 ms", 8),
    ("cpu µs/q", 9),
    ("upstr µs/q", 11),
    ("cpu0 %", 7),
    ("cpu1 %", 7),
)


def row(res: Result) -> list[str]:
    m, f = res.max_rate, res.fixed_rate
    assert m is not None and f is not None
    return [
        res.target,
        f"{m.qps:.0f}",
        str(m.lost),
        f"{f.avg_latency_ms:.3f}",
        fmt(f.stddev_latency_ms, ".3f"),
        fmt(f.p50_latency_ms, ".3f"),
        fmt(f.p99_latency_ms, ".3f"),
        fmt(res.cpu_us_per_query, ".1f"),
        fmt(res.upstream_cpu_us_per_query, ".1f"),
        pct(res.forwarder_core_busy),
        pct(res.load_core_busy),
    ]


def table(results: dict[str, Result]) -> str:
    def line(cells: Sequence[str]) -> str:
        first, *rest = zip(cells, COLUMNS, strict=True)
        return f"{first[0]:<{first[1][1]}}" + "".join(f"{c:>{w + 1}}" for c, (_, w) in rest)

    lines = [
        f"max qps, lost, cpu µs/q, cpu%: max-rate run; avg/sd/p50/p99: at {FIXED_QPS} queries/s",
        f"cpu{FORWARDER_CPU} %: the target's core busy; cpu{LOAD_CPU} %: dnsperf's core "
        "(and the upstream Unbound's) busy",
        "",
        line([name for name, _ in COLUMNS]),
    ]
    for res in results.values():
        if res.max_rate is None or res.fixed_rate is None:
            lines.append(f"{res.target:<15} FAILED: {(res.error or '?').splitlines()[0]}")
        else:
            lines.append(line(row(res)))
    lines.append("")
    lines += ratio_lines(results)
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def prepare(children: Children, tmp: Path, args: argparse.Namespace) -> Setup:
    ports = Ports(*free_ports(4))
    certs = make_certs(tmp)
    unbound = start_unbound(children, tmp, ports, certs)
    max_count = int(MAX_QPS_CAP * args.duration)
    max_names, fixed_names = tmp / "max.txt", tmp / "fixed.txt"
    write_query_file(max_names, 0, max_count)
    write_query_file(fixed_names, max_count, int(FIXED_QPS * args.duration * 1.1) + 1000)
    return Setup(
        children,
        tmp,
        ports,
        certs,
        unbound,
        max_names,
        fixed_names,
        args.duration,
        tuple(shlex.split(args.stubby_py_args)),
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    common_options(
        parser, duration=10.0, duration_help="seconds per dnsperf run, two runs per target"
    )
    parser.add_argument(
        "--targets",
        default=",".join(TARGETS),
        help=f"comma-separated subset of {','.join(TARGETS)}",
    )
    parser.add_argument(
        "--stubby-py-args", default="", help="extra arguments appended to 'stubby-py run ...'"
    )
    args = parser.parse_args(argv)
    args.targets = [t for t in args.targets.split(",") if t]
    unknown = set(args.targets) - set(TARGETS)
    if unknown or not 1 <= args.duration <= 60:
        parser.error(f"unknown targets {sorted(unknown)}" if unknown else "duration: 1..60 s")
    return args


def report(results: dict[str, Result], idle: dict[int, float], args: argparse.Namespace) -> None:
    print(table(results))
    notes = [n for r in results.values() for n in target_notes(r, args.duration)]
    busy = busy_note(idle)
    notes = [busy, *notes] if busy else notes
    if notes:
        print("\nnotes:\n" + "\n".join(notes))
    doc = {
        "duration_s": args.duration,
        "fixed_qps": FIXED_QPS,
        "results": {t: asdict(r) for t, r in results.items()},
        "ratios": ratios(results),
    }
    write_json(args.json, idle, doc)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    check_cpus()
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, raise_on_signal)
    idle = background_load()
    with workspace(args.keep) as (children, tmp):
        setup = prepare(children, tmp, args)
        results = {t: guarded(setup, t) for t in args.targets}
    report(results, idle, args)
    return 1 if any(r.error for r in results.values()) else 0


if __name__ == "__main__":
    run_main(main)
