#!/usr/bin/env python3
"""Listener benchmark: stubby-py's plain, DoT and DoH listeners vs dnsdist's, on cached answers.

A local Unbound serves ``*.bench`` (as bench/forwarding.py starts it). stubby-py runs with three
listeners, plain UDP/TCP, DoT (``tls://``) and DoH (``https://``), all with one certificate from
a throw-away trustme CA, forwarding to that Unbound; then, on the same core, Debian's dnsdist 1.7
with a plain, a DoT (addTLSLocal) and a DoH (addDOHLocal) frontend on the same certificate, its
packet cache on, and the same Unbound as its backend. Each daemon in turn is pinned to CPU 0 and
the load generator to CPU 1. For each transport the daemon's cache is first warmed over that
transport, then the load runs at its maximum rate over several connections, so every measured
query is a cache hit (checked with the daemons' own counters): ``dnsperf -m udp`` and
``-m dot`` going round a small set of names, and for DoH h2load (nghttp2-client) POSTing one
query, since dnsperf 2.10's DoH client loses the answers that arrive several to a read (as
dnsdist's do). Reported per transport: queries/s and CPU time per query of each daemon,
stubby-py/dnsdist, and each daemon's DoT and DoH against its own UDP. See bench/README.md and
"Performance targets" in the design notes.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import dns.message

from bench.harness import (
    ANSWER,
    AUTH_NAME,
    DNSSEC_OFF,
    DOH_PATH,
    FORWARDER_CPU,
    HOST,
    LOAD_CPU,
    ZONE,
    Certs,
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
    dnsperf,
    fmt,
    free_ports,
    lost_note,
    make_certs,
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
    wait_until_answers,
    workspace,
    write_json,
    write_query_file,
)

DAEMONS = ("stubby-py", "dnsdist")
TRANSPORTS = ("udp", "dot", "doh")
DNSDIST = "/usr/bin/dnsdist"  # Debian's
H2LOAD = "h2load"  # Debian's nghttp2-client
HOT_NAMES = 1000  # the set dnsperf loops over: every measured query a cache hit
CONNECTIONS = 8  # dnsperf -c / h2load -c: UDP sockets, TCP/TLS or HTTP/2 connections
OUTSTANDING = 400  # dnsperf -q over all connections (h2load -m: per connection, 50)
DOH_WARM = 100  # h2load's warm-up: its one query this many times
WARM_LIMIT_S = 20  # a warm-up run (each name once) is cut off after this
#: dnsdist's queries in flight per incoming DoT connection (0, its default, answers them one
#: after the other); stubby-py's is listeners/plain.py's MAX_PIPELINED
DNSDIST_MAX_IN_FLIGHT = 128
DOT_TARGET = 0.5  # stubby-py / dnsdist DoT queries/s
OTHERS_LIMIT = 0.05  # other programs' CPU during a run (share of one core) worth a note

# --------------------------------------------------------------------------- setup


@dataclass(frozen=True)
class Listeners:
    """One daemon's three ports on HOST."""

    plain: int
    dot: int
    doh: int


@dataclass(frozen=True)
class Bench:
    children: Children
    tmp: Path
    certs: Certs
    upstream: Ports  # the Unbound's plain and dot ports (stubby, stubby_py unused)
    unbound: subprocess.Popen[bytes]
    listeners: dict[str, Listeners]  # daemon -> its ports
    console_port: int  # dnsdist's console, on HOST
    console_key: str
    hot_names: Path
    doh_query: Path  # the one query h2load POSTs, in wire format
    duration: float
    stubby_py_args: tuple[str, ...]

    @property
    def control_socket(self) -> Path:
        return self.tmp / "control.sock"

    @property
    def dnsdist_conf(self) -> Path:
        return self.tmp / "dnsdist.conf"


def prepare(children: Children, tmp: Path, args: argparse.Namespace) -> Bench:
    ports = free_ports(4 + 3 * len(DAEMONS) + 1)
    upstream = Ports(*ports[:4])
    listeners = {
        daemon: Listeners(*ports[4 + 3 * i : 7 + 3 * i]) for i, daemon in enumerate(DAEMONS)
    }
    certs = make_certs(tmp)
    unbound = start_unbound(children, tmp, upstream, certs)
    hot = tmp / "hot.txt"
    write_query_file(hot, 0, HOT_NAMES)
    doh_query = tmp / "doh-query.bin"
    doh_query.write_bytes(dns.message.make_query(f"q0.{ZONE}", "A", id=0).to_wire())
    return Bench(
        children,
        tmp,
        certs,
        upstream,
        unbound,
        listeners,
        ports[-1],
        base64.b64encode(os.urandom(32)).decode(),
        hot,
        doh_query,
        args.duration,
        tuple(shlex.split(args.stubby_py_args)),
    )


def stubby_py_argv(bench: Bench) -> list[str]:
    conf = bench.tmp / "stubby-py.yaml"
    conf.write_text(f'control_socket: "{bench.control_socket}"\nrate_limit: 0\n')
    ports = bench.listeners["stubby-py"]
    return [
        "taskset", "-c", str(FORWARDER_CPU), *stubby_py_command(), "run", "-c", str(conf),
        "--listen", f"{HOST}:{ports.plain}",
        "--listen", f"tls://{HOST}:{ports.dot}",
        "--listen", f"https://{HOST}:{ports.doh}{DOH_PATH}",
        "--tls-cert", str(bench.certs.cert), "--tls-key", str(bench.certs.key),
        "--upstream", f"tls://{HOST}:{bench.upstream.dot}#{AUTH_NAME}",
        "--ca-file", str(bench.certs.ca),
        *DNSSEC_OFF, *bench.stubby_py_args,
    ]  # fmt: skip


def dnsdist_conf(bench: Bench) -> str:
    """Only loopback: the backend is the local Unbound, no security polling, console on HOST."""
    ports, certs = bench.listeners["dnsdist"], bench.certs
    tls = f'"{certs.cert}", "{certs.key}"'
    return f"""setLocal("{HOST}:{ports.plain}")
addTLSLocal("{HOST}:{ports.dot}", {tls}, {{maxInFlight={DNSDIST_MAX_IN_FLIGHT}}})
addDOHLocal("{HOST}:{ports.doh}", {tls}, "{DOH_PATH}")
setACL({{"127.0.0.0/8"}})
newServer({{address="{HOST}:{bench.upstream.plain}", name="unbound"}})
getPool(""):setCache(newPacketCache(100000))
controlSocket("{HOST}:{bench.console_port}")
setKey("{bench.console_key}")
setSecurityPollSuffix("")
"""


def dnsdist_argv(bench: Bench) -> list[str]:
    bench.dnsdist_conf.write_text(dnsdist_conf(bench))
    return [
        "taskset", "-c", str(FORWARDER_CPU),
        DNSDIST, "--supervised", "--disable-syslog", "-C", str(bench.dnsdist_conf),
    ]  # fmt: skip


def check_encrypted(bench: Bench, daemon: str, transport: str) -> None:
    """One kdig query over the daemon's DoT or DoH listener, the certificate checked."""
    ports = bench.listeners[daemon]
    port = ports.dot if transport == "dot" else ports.doh
    argv = [
        "kdig",
        *([f"+https={DOH_PATH}"] if transport == "doh" else []),
        f"+tls-ca={bench.certs.ca}",
        f"+tls-hostname={AUTH_NAME}",
        f"@{HOST}",
        "-p",
        str(port),
        f"check-{transport}.{ZONE}",
    ]
    out, err = bench.children.run(argv, timeout=10)
    if ANSWER not in out:
        raise RuntimeError(f"{daemon} does not answer over {transport}: {shlex.join(argv)}\n"
                           f"{out}{err}")  # fmt: skip


# --------------------------------------------------------------------------- cache counters


def stubby_py_hits(bench: Bench) -> tuple[int, int]:
    """(hits, misses) of stubby-py's cache, from `stubby-py stats --json`."""
    out, err = bench.children.run(
        [*stubby_py_command(), "stats", "--json", "--socket", str(bench.control_socket)],
        timeout=10,
    )
    try:
        cache = json.loads(out)["cache"]
        return int(cache["hits"]), int(cache["misses"])
    except (ValueError, KeyError) as exc:
        raise RuntimeError(f"stubby-py stats --json: {exc}\n{out}{err}") from None


def dnsdist_hits(bench: Bench) -> tuple[int, int]:
    """(cache-hits, cache-misses) from dnsdist's console (dumpStats)."""
    out, err = bench.children.run(
        [DNSDIST, "-C", str(bench.dnsdist_conf), "-c", "-e", "dumpStats()"], timeout=10
    )
    hits = re.search(r"\bcache-hits\s+(\d+)", out)
    misses = re.search(r"\bcache-misses\s+(\d+)", out)
    if hits is None or misses is None:
        raise RuntimeError(f"dnsdist's console gave no cache counters:\n{out}{err}")
    return int(hits.group(1)), int(misses.group(1))


HIT_COUNTERS: dict[str, Callable[[Bench], tuple[int, int]]] = {
    "stubby-py": stubby_py_hits,
    "dnsdist": dnsdist_hits,
}

# --------------------------------------------------------------------------- measurements


@dataclass
class ListenerResult(Result):
    transport: str = ""
    warm: Dnsperf | None = None  # each name asked once over the transport: fills the cache
    cache_hits: int | None = None  # counted by the daemon over the measured run
    cache_misses: int | None = None
    others_share: float | None = None  # other programs' CPU during the measured run / wall


_H2LOAD: dict[str, tuple[str, Callable[[str], Any]]] = {
    "run_time_s": (r"finished in ([\d.]+)s", float),
    "qps": (r"finished in [\d.]+s, ([\d.]+) req/s", float),
    "sent": (r"requests: \d+ total, (\d+) started", int),
    "completed": (r"(\d+) succeeded", int),
    "lost": (r"(\d+) failed", int),
    "avg_latency_ms": (r"time for request:\s+\S+\s+\S+\s+([\d.]+)(?:us|ms|s)", float),
}


def parse_h2load(out: str) -> Dnsperf:
    """h2load's summary in dnsperf's terms: a request that got a 2xx answer is a completed
    query; failed, errored and timed-out ones are lost (those still in flight at the end are
    neither)."""
    if "finished in" not in out:
        raise RuntimeError(f"h2load printed no statistics:\n{out[-2000:]}")
    result = Dnsperf()
    for name, (pattern, convert) in _H2LOAD.items():
        match = re.search(pattern, out)
        if match:
            setattr(result, name, convert(match.group(1)))
    errored = re.search(r"(\d+) errored, (\d+) timeout", out)
    if errored:
        result.lost += int(errored.group(1)) + int(errored.group(2))
    unit = re.search(r"time for request:\s+\S+\s+\S+\s+[\d.]+(us|ms|s)\b", out)
    if unit:
        result.avg_latency_ms *= {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit.group(1)]
    codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    if codes:
        result.rcodes = {  # 2xx left out: what is not 2xx gets a note
            f"HTTP {k}": int(v)
            for k, v in zip(("3xx", "4xx", "5xx"), codes.groups()[1:], strict=True)
            if int(v)
        }
    return result


def h2load(
    bench: Bench,
    port: int,
    load: Sequence[str],
    at: tuple[float, Callable[[], None]] | None = None,
) -> Dnsperf:
    """One bounded h2load run POSTing bench.doh_query (TLS is not verified: h2load never does)."""
    argv = [
        "taskset", "-c", str(LOAD_CPU), H2LOAD, *load,
        "-d", str(bench.doh_query),
        "-H", "content-type: application/dns-message",
        "-H", "accept: application/dns-message",
        f"https://{HOST}:{port}{DOH_PATH}",
    ]  # fmt: skip
    out, err = bench.children.run(argv, timeout=bench.duration + 30, at=at)
    return parse_h2load(out + err)


def port_of(bench: Bench, daemon: str, transport: str) -> int:
    ports = bench.listeners[daemon]
    return {"udp": ports.plain, "dot": ports.dot, "doh": ports.doh}[transport]


def measure(bench: Bench, result: ListenerResult, pid: int) -> None:
    """Warm the cache over the transport, then the maximum rate: dnsperf going round the names
    (each asked once to warm), or h2load POSTing its one query (DOH_WARM times to warm)."""
    daemon, transport = result.target, result.transport
    port = port_of(bench, daemon, transport)
    per_connection = str(OUTSTANDING // CONNECTIONS)
    if transport == "doh":
        result.warm = h2load(bench, port, ["-n", str(DOH_WARM), "-c", "1", "-m", "10"])
    else:
        result.warm = dnsperf(
            bench.children, port, bench.hot_names, WARM_LIMIT_S,
            ["-m", transport, "-c", "1", "-q", "100"],
        )  # fmt: skip
    hits_before = HIT_COUNTERS[daemon](bench)
    plain = bench.listeners[daemon].plain  # UDP drops are counted there (none for dot, doh)
    before, cores = Sample.take(pid, None, plain), [core_times()]
    others, start = process_ticks(), time.monotonic()
    at = (bench.duration, lambda: cores.append(core_times()))  # while the load still runs
    if transport == "doh":
        load = ["-D", f"{bench.duration:g}", "-c", str(CONNECTIONS), "-m", per_connection]
        result.max_rate = h2load(bench, port, load, at=at)
    else:
        result.max_rate = dnsperf(
            bench.children, port, bench.hot_names, bench.duration,
            ["-m", transport, "-c", str(CONNECTIONS), "-q", str(OUTSTANDING)],
            at=at, passes=None,
        )  # fmt: skip
    after = Sample.take(pid, None, plain)
    result.others_share = others_seconds(others, process_ticks()) / (time.monotonic() - start)
    hits_after = HIT_COUNTERS[daemon](bench)
    result.cache_hits = hits_after[0] - hits_before[0]
    result.cache_misses = hits_after[1] - hits_before[1]
    record_counters(result, before, after, has_upstream=False)
    result.forwarder_core_busy = busy_share(cores[0], cores[-1], FORWARDER_CPU)
    result.load_core_busy = busy_share(cores[0], cores[-1], LOAD_CPU)


def run_daemon(bench: Bench, daemon: str) -> list[ListenerResult]:
    """Start the daemon on FORWARDER_CPU, check its three listeners, measure each transport."""
    argv = stubby_py_argv(bench) if daemon == "stubby-py" else dnsdist_argv(bench)
    results = [ListenerResult(daemon, transport=t) for t in TRANSPORTS]
    proc = bench.children.start(argv, bench.tmp / f"{daemon}.log")
    try:
        try:
            wait_until_answers(bench.children, proc, bench.listeners[daemon].plain, daemon)
            for transport in ("dot", "doh"):
                check_encrypted(bench, daemon, transport)
        except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
            error = f"{exc}\n{read_tail(bench.tmp / f'{daemon}.log')}".strip()
            for result in results:
                result.error = error
            return results
        for result in results:
            print(
                f"-- {daemon} {result.transport}: warm-up, then {bench.duration:g} s at max rate",
                file=sys.stderr,
                flush=True,
            )
            try:
                measure(bench, result, proc.pid)
            except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
                result.error = f"{exc}\n{read_tail(bench.tmp / f'{daemon}.log')}".strip()
    finally:
        bench.children.stop(proc)
    return results


# --------------------------------------------------------------------------- report

Results = dict[tuple[str, str], ListenerResult]  # (daemon, transport) -> result


def qps(results: Results, daemon: str, transport: str) -> float | None:
    res = results.get((daemon, transport))
    return res.max_rate.qps if res is not None and res.max_rate is not None else None


def cpu(results: Results, daemon: str, transport: str) -> float | None:
    res = results.get((daemon, transport))
    return res.cpu_us_per_query if res is not None and res.max_rate is not None else None


def ratios(results: Results) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for t in TRANSPORTS:
        out[f"stubby-py/dnsdist {t} qps"] = ratio_of(
            qps(results, "stubby-py", t), qps(results, "dnsdist", t)
        )
        out[f"stubby-py/dnsdist {t} cpu"] = ratio_of(
            cpu(results, "stubby-py", t), cpu(results, "dnsdist", t)
        )
    for daemon in DAEMONS:
        for t in ("dot", "doh"):
            out[f"{daemon} {t}/udp qps"] = ratio_of(
                qps(results, daemon, t), qps(results, daemon, "udp")
            )
            out[f"{daemon} {t}/udp cpu"] = ratio_of(
                cpu(results, daemon, t), cpu(results, daemon, "udp")
            )
    return out


COLUMNS = (  # heading, width
    ("transport", 9),
    ("stubby-py qps", 14),
    ("dnsdist qps", 12),
    ("qps ratio", 10),
    ("stubby-py µs/q", 15),
    ("dnsdist µs/q", 13),
    ("cpu ratio", 10),
    ("stubby-py /udp", 15),
    ("dnsdist /udp", 13),
    ("cpu0 %", 7),
    ("cpu1 %", 7),
)


def row(results: Results, transport: str) -> list[str]:
    r = ratios(results)
    own = {
        d: "1" if transport == "udp" else fmt(r[f"{d} {transport}/udp qps"], ".2f") for d in DAEMONS
    }
    busy = [results.get((d, transport)) for d in DAEMONS]
    return [
        transport,
        fmt(qps(results, "stubby-py", transport), ".0f"),
        fmt(qps(results, "dnsdist", transport), ".0f"),
        fmt(r[f"stubby-py/dnsdist {transport} qps"], ".2f"),
        fmt(cpu(results, "stubby-py", transport), ".1f"),
        fmt(cpu(results, "dnsdist", transport), ".1f"),
        fmt(r[f"stubby-py/dnsdist {transport} cpu"], ".2f"),
        own["stubby-py"],
        own["dnsdist"],
        "/".join(pct(b.forwarder_core_busy if b else None) for b in busy),
        "/".join(pct(b.load_core_busy if b else None) for b in busy),
    ]


def table(results: Results) -> str:
    def line(cells: Sequence[str]) -> str:
        first, *rest = zip(cells, COLUMNS, strict=True)
        return f"{first[0]:<{first[1][1]}}" + "".join(f"{c:>{w + 1}}" for c, (_, w) in rest)

    dot = ratios(results)["stubby-py/dnsdist dot qps"]
    verdict = (
        "" if dot is None else ("  (target met)" if dot >= DOT_TARGET else "  (target NOT met)")
    )
    return "\n".join(
        [
            f"every query a cache hit: udp, dot: dnsperf round and round {HOT_NAMES:,} names, "
            f"-c {CONNECTIONS} -q {OUTSTANDING}; doh: h2load POSTing one query, -c {CONNECTIONS} "
            f"-m {OUTSTANDING // CONNECTIONS}",
            f"each daemon in turn on cpu{FORWARDER_CPU}, the load on cpu{LOAD_CPU}",
            "qps ratio, cpu ratio: stubby-py / dnsdist (qps above 1, cpu below 1: stubby-py "
            "better); /udp: the daemon's queries/s over that transport / over its own UDP",
            "cpu0 %, cpu1 %: the daemon's core and the load's core busy (stubby-py/dnsdist runs)",
            "",
            line([name for name, _ in COLUMNS]),
            *(line(row(results, t)) for t in TRANSPORTS),
            "",
            f"DoT: stubby-py / dnsdist queries/s {fmt(dot, '.2f')}   target >= {DOT_TARGET}"
            + verdict,
        ]
    )


def result_notes(res: ListenerResult, duration: float) -> list[str]:
    label = f"{res.target} {res.transport}"
    if res.error:
        return [f"{label} failed:\n{res.error}"]
    notes = []
    expected = DOH_WARM if res.transport == "doh" else HOT_NAMES
    if res.warm is not None and (res.warm.completed != expected or res.warm.lost):
        notes.append(
            f"{label} warm-up: {res.warm.completed} of {expected} queries answered, "
            f"{res.warm.lost} lost: some measured queries may be cache misses"
        )
    if res.max_rate is not None:
        notes += [n.replace(f"{res.target} max-rate", label) for n in
                  run_notes(res.target, "max-rate", res.max_rate, duration)]  # fmt: skip
        if res.max_rate.lost and res.transport == "udp":
            notes.append(lost_note(res, res.max_rate.lost).replace(f"{res.target} max-rate", label))
    if res.cache_misses:
        notes.append(
            f"{label}: {res.cache_misses} cache misses (and {res.cache_hits} hits) over the "
            "measured run"
        )
    if res.others_share and res.others_share > OTHERS_LIMIT:
        notes.append(
            f"{label}: other programs used {res.others_share:.0%} of a core meanwhile: its "
            "figures are skewed"
        )
    if res.load_core_busy and res.load_core_busy > 0.9:
        notes.append(
            f"{label}: cpu{LOAD_CPU} {res.load_core_busy:.0%} busy; the figure may be limited "
            "by the load generator (dnsperf, h2load), not by the daemon"
        )
    return notes


def report(results: Results, idle: dict[int, float], args: argparse.Namespace) -> None:
    print(table(results))
    notes = [n for r in results.values() for n in result_notes(r, args.duration)]
    hits = ", ".join(
        f"{d} {t} {r.cache_hits}/{(r.cache_hits or 0) + (r.cache_misses or 0)}"
        for (d, t), r in results.items()
        if r.cache_hits is not None
    )
    notes.append(f"cache hits counted by the daemons over the measured runs: {hits}")
    busy = busy_note(idle)
    notes = [busy, *notes] if busy else notes
    print("\nnotes:\n" + "\n".join(notes))
    doc: dict[str, Any] = {
        "duration_s": args.duration,
        "hot_names": HOT_NAMES,
        "connections": CONNECTIONS,
        "outstanding": OUTSTANDING,
        "results": {f"{d} {t}": asdict(r) for (d, t), r in results.items()},
        "ratios": ratios(results),
        "targets": {"dot_qps_ratio_min": DOT_TARGET},
    }
    write_json(args.json, idle, doc)


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    common_options(
        parser,
        duration=10.0,
        duration_help="seconds per max-rate run, one per daemon and transport",
    )
    parser.add_argument(
        "--stubby-py-args", default="", help="extra arguments appended to 'stubby-py run ...'"
    )
    args = parser.parse_args(argv)
    if not 1 <= args.duration <= 60:
        parser.error("duration: 1..60 s")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    check_cpus(("unbound", "dnsperf", H2LOAD, "dig", "kdig", "taskset", DNSDIST))
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, raise_on_signal)
    idle = background_load()
    results: Results = {}
    with workspace(args.keep, "bench-listeners-") as (children, tmp):
        bench = prepare(children, tmp, args)
        for daemon in DAEMONS:
            for res in run_daemon(bench, daemon):
                results[(daemon, res.transport)] = res
    report(results, idle, args)
    return 1 if any(r.error for r in results.values()) else 0


if __name__ == "__main__":
    run_main(main)
