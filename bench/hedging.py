#!/usr/bin/env python3
"""Hedging benchmark: tail latency of stubby-py with hedging on and off, one upstream stalling.

Three local DoT upstreams (tests/servers/stream.py LocalUpstream, trustme CA, in one process of
their own on CPU 1); the first, listed first, never answers 10 % of names. stubby-py (CPU 0) runs
`strategy: failover`, `attempt_timeout: 1.0` and `failures_to_down: 100` (the most it accepts; the
stalling upstream stays first), once with `hedge: false`, once with `hedge: true, hedge_max: 0.2`.
dnsperf (CPU 1) sends the same unique names at a fixed rate to each; the table gives
p50/p90/p99/max latency and lost and SERVFAIL counts for both. See bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import shutil
import signal
import ssl
import statistics
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.harness import (
    AUTH_NAME,
    DNSSEC_OFF,
    FORWARDER_CPU,
    HOST,
    LOAD_CPU,
    check_cpus,
    common_options,
    fmt,
    free_ports,
    make_certs,
    module_argv,
    raise_on_signal,
    read_tail,
    rounded,
    run_main,
    wait_until_answers,
    workspace,
    write_query_file,
)

RATE = 500  # queries/s
STALL_SHARE = 10  # the first upstream stays silent for 1 in STALL_SHARE names
QUERY_TIMEOUT = 3  # dnsperf -t: above stubby-py's 2.5 s deadline, so its SERVFAILs are seen
OUTSTANDING = 2000  # dnsperf -q: never the limit at RATE with 1 s stalls
#: the pool settings under test; the rest of the configuration is stubby-py's defaults
SETTINGS = {
    "hedge off": "hedge: false\n",
    "hedge on": "hedge: true\nhedge_max: 0.2\n",
}
DAEMON_CONF = """upstreams:
{upstreams}
strategy: failover
attempt_timeout: 1.0
failures_to_down: 100
{settings}rate_limit: 0
user: null
cache_file: false
control_socket: "{socket}"
"""


def stalls(name: str) -> bool:
    """Whether the first upstream ignores a query for name (fixed per name, ~1/STALL_SHARE)."""
    return zlib.crc32(name.lower().rstrip(".").encode()) % STALL_SHARE == 0


# --------------------------------------------------------------------------- upstreams
# (run in a child process: `python -m bench.hedging --serve-upstreams ...`)


def serve_upstreams(args: argparse.Namespace) -> int:
    from tests.servers import LocalUpstream, Misbehaviour

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(args.cert, args.key)
    servers = [LocalUpstream(context).start() for _ in range(3)]
    servers[0].state.chooser = lambda q: (
        Misbehaviour.STALL if stalls(q.question[0].name.to_text()) else Misbehaviour.NONE
    )
    done = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: done.set())
    try:
        Path(args.port_file).write_text(json.dumps([s.port for s in servers]) + "\n")
        done.wait()
    finally:
        for server in servers:
            server.stop()
    return 0


def start_upstreams(children: Any, tmp: Path, certs: Any) -> list[int]:
    port_file = tmp / "upstreams.ports"
    argv = [
        "taskset",
        "-c",
        str(LOAD_CPU),
        *module_argv("bench.hedging"),
        "--serve-upstreams",
        "--cert",
        str(certs.cert),
        "--key",
        str(certs.key),
        "--port-file",
        str(port_file),
    ]
    proc = children.start(argv, tmp / "upstreams.log")
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if port_file.exists() and port_file.read_text().endswith("\n"):
            return list(json.loads(port_file.read_text()))
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    raise RuntimeError(f"the upstreams did not start:\n{read_tail(tmp / 'upstreams.log')}")


# --------------------------------------------------------------------------- one setting


@dataclass
class Run:
    setting: str
    sent: int = 0
    answered: int = 0
    lost: int = 0
    rcodes: dict[str, int] = field(default_factory=dict)
    #: of the names sent, those the first upstream ignores
    stalled_names: int = 0
    p50_ms: float | None = None
    p90_ms: float | None = None
    p99_ms: float | None = None
    max_ms: float | None = None
    run_time_s: float = 0.0
    #: stubby-py's stats after the run: queries and failed attempts per upstream
    upstreams: list[dict[str, Any]] = field(default_factory=list)
    servfail_by_daemon: int | None = None
    error: str | None = None


_LINE = re.compile(r"^> (\S+) (\S+) \S+(?: ([\d.]+))?$", re.MULTILINE)


def parse(run: Run, out: str) -> None:
    """dnsperf -v: one `> RCODE NAME TYPE SECONDS` line per query (`> T NAME TYPE` if lost)."""
    if "Queries sent" not in out:
        raise RuntimeError(f"dnsperf printed no statistics:\n{out[-2000:]}")
    latencies = []
    for rcode, name, seconds in _LINE.findall(out):
        run.sent += 1
        run.stalled_names += stalls(name)
        if rcode == "T" or not seconds:
            run.lost += 1
            continue
        run.rcodes[rcode] = run.rcodes.get(rcode, 0) + 1
        latencies.append(float(seconds) * 1e3)
    run.answered = len(latencies)
    match = re.search(r"Run time \(s\):\s+([\d.]+)", out)
    run.run_time_s = float(match.group(1)) if match else 0.0
    if len(latencies) >= 100:
        cuts = statistics.quantiles(latencies, n=100, method="inclusive")
        run.p50_ms, run.p90_ms, run.p99_ms = cuts[49], cuts[89], cuts[98]
        run.max_ms = max(latencies)


def daemon_stats(run: Run, sock: Path) -> None:
    from stubby_py.daemon import control

    with contextlib.suppress(OSError, ValueError):
        reply = control.request(str(sock), "stats", timeout=5)
        run.servfail_by_daemon = reply.get("servfail")
        run.upstreams = [
            {k: u.get(k) for k in ("name", "queries", "failures", "failure_kinds", "handshakes")}
            for u in reply.get("upstreams", ())
        ]


@dataclass(frozen=True)
class Setup:
    children: Any
    tmp: Path
    certs: Any
    upstreams: list[int]
    queries: int


def stubby_py_argv(setup: Setup, conf: Path, port: int) -> list[str]:
    exe = shutil.which("stubby-py")
    base = [exe] if exe else [sys.executable, "-m", "stubby_py"]
    return [
        "taskset",
        "-c",
        str(FORWARDER_CPU),
        *base,
        "run",
        "-c",
        str(conf),
        "--listen",
        f"{HOST}:{port}",
        "--ca-file",
        str(setup.certs.ca),
        *DNSSEC_OFF,
    ]


def dnsperf_argv(port: int, names: Path, queries: int) -> list[str]:
    return [
        "taskset",
        "-c",
        str(LOAD_CPU),
        "dnsperf",
        "-s",
        HOST,
        "-p",
        str(port),
        "-d",
        str(names),
        "-n",
        "1",
        "-Q",
        str(RATE),
        "-q",
        str(OUTSTANDING),
        "-t",
        str(QUERY_TIMEOUT),
        "-l",
        str(int(queries / RATE * 1.5) + 5),
        "-v",
    ]


def run_setting(setup: Setup, setting: str, names: Path, port: int) -> Run:
    slug = setting.replace(" ", "-")
    sock, conf, log = (setup.tmp / f"{slug}.{ext}" for ext in ("sock", "yaml", "log"))
    upstreams = "\n".join(f"  - tls://{HOST}:{p}#{AUTH_NAME}" for p in setup.upstreams)
    conf.write_text(
        DAEMON_CONF.format(upstreams=upstreams, settings=SETTINGS[setting], socket=sock)
    )
    run = Run(setting)
    proc = setup.children.start(stubby_py_argv(setup, conf, port), log)
    try:
        wait_until_answers(setup.children, proc, port, f"stubby-py ({setting})")
        timeout = setup.queries / RATE * 1.5 + QUERY_TIMEOUT + 30
        out, _ = setup.children.run(dnsperf_argv(port, names, setup.queries), timeout=timeout)
        parse(run, out)
        daemon_stats(run, sock)
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        run.error = f"{exc}\n{read_tail(log)}".strip()
    finally:
        setup.children.stop(proc)
    return run


# --------------------------------------------------------------------------- report


def table(runs: Sequence[Run], queries: int) -> str:
    head = (
        f"{'setting':<10}{'sent':>6}{'stalled':>8}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}"
        f"{'max ms':>9}{'lost':>6}{'SERVFAIL':>9}{'other':>6}  attempts per upstream"
    )
    lines = [
        f"{queries} unique names at {RATE} queries/s; upstream 1 (first, failover) ignores the "
        f"names in 'stalled'; latencies over answered queries",
        "",
        head,
    ]
    for run in runs:
        if run.error:
            lines.append(f"{run.setting:<10} FAILED: {run.error.splitlines()[0]}")
            continue
        servfail = run.rcodes.get("SERVFAIL", 0)
        other = sum(v for k, v in run.rcodes.items() if k not in ("NOERROR", "SERVFAIL"))
        attempts = " / ".join(str(u.get("queries", "?")) for u in run.upstreams) or "-"
        lines.append(
            f"{run.setting:<10}{run.sent:>6}{run.stalled_names:>8}{fmt(run.p50_ms, '.2f'):>9}"
            f"{fmt(run.p90_ms, '.2f'):>9}{fmt(run.p99_ms, '.2f'):>9}"
            f"{fmt(run.max_ms, '.1f'):>9}{run.lost:>6}{servfail:>9}{other:>6}  {attempts}"
        )
    return "\n".join(lines)


def notes(runs: Sequence[Run]) -> list[str]:
    out = []
    for run in runs:
        if run.error:
            out.append(f"{run.setting} failed:\n{run.error}")
            continue
        if run.lost:
            out.append(f"{run.setting}: {run.lost} of {run.sent} queries got no answer at all")
        if run.servfail_by_daemon:
            out.append(f"{run.setting}: stubby-py counted {run.servfail_by_daemon} SERVFAIL")
        for index, up in enumerate(run.upstreams, 1):
            if up.get("failures"):
                out.append(
                    f"{run.setting}: upstream {index}: {up['failures']} failed attempts "
                    f"{up.get('failure_kinds')}"
                )
            if (up.get("handshakes") or 0) > 1:
                out.append(f"{run.setting}: upstream {index}: {up['handshakes']} handshakes")
    return out


def report(runs: Sequence[Run], args: argparse.Namespace) -> None:
    print(table(runs, args.queries))
    lines = notes(runs)
    if lines:
        print("\nnotes:\n" + "\n".join(lines))
    if args.json:
        doc = {
            "queries": args.queries,
            "rate_qps": RATE,
            "stall_share": 1 / STALL_SHARE,
            "runs": {run.setting: asdict(run) for run in runs},
        }
        args.json.write_text(json.dumps(rounded(doc), indent=2) + "\n")


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    common_options(parser)
    parser.add_argument(
        "--queries", type=int, default=2000, help="queries per setting (default 2000)"
    )
    # the script's own child process
    parser.add_argument("--serve-upstreams", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--cert", help=argparse.SUPPRESS)
    parser.add_argument("--key", help=argparse.SUPPRESS)
    parser.add_argument("--port-file", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not 100 <= args.queries <= 20_000:
        parser.error("queries: 100..20000")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve_upstreams:
        return serve_upstreams(args)
    check_cpus(("dnsperf", "dig", "taskset"))
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, raise_on_signal)
    with workspace(args.keep, "bench-hedging-") as (children, tmp):
        certs = make_certs(tmp)
        setup = Setup(children, tmp, certs, start_upstreams(children, tmp, certs), args.queries)
        # the same names for each setting (each to a new stubby-py, so no cache sees one twice):
        # the same queries stall in each
        names = tmp / "names.txt"
        write_query_file(names, 0, args.queries)
        runs = []
        for setting, port in zip(SETTINGS, free_ports(len(SETTINGS)), strict=True):
            print(f"-- {setting}: {args.queries} queries at {RATE}/s", file=sys.stderr, flush=True)
            runs.append(run_setting(setup, setting, names, port))
    report(runs, args)
    return 1 if any(run.error for run in runs) else 0


if __name__ == "__main__":
    run_main(main)
