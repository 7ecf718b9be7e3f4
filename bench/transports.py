#!/usr/bin/env python3
"""Transport benchmark: stubby-py forwarding over DoT, DoH/HTTP2, DoH/HTTP3 and DoQ, in one run.

The workload of forwarding.py (every query a unique name, so no cache can hit; dnsperf pinned to
CPU 1, stubby-py to CPU 0), through stubby-py with one upstream on each transport in turn:

- DoT (RFC 7858) and DoH over HTTP/2 (RFC 8484) to one local Unbound (its nghttp2 DoH server),
  each compared with Unbound's plain port queried directly;
- DoH over HTTP/3 (RFC 9114) and DoQ (RFC 9250) to the aioquic test servers of
  tests/servers/quic.py, each in a process of its own, each compared with that server queried
  directly by a Python client (stubby-py's own transport, no listener). Those servers are
  Python, so they, not stubby-py, set the pace on these rows.

See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.harness import (
    AUTH_NAME,
    CLK_TCK,
    DNSSEC_OFF,
    DOH_PATH,
    FIXED_QPS,
    FORWARDER_CPU,
    HOST,
    LOAD_CPU,
    MAX_CLIENTS,
    MAX_OUTSTANDING,
    MAX_QPS_CAP,
    QUERY_TIMEOUT,
    ZONE,
    Dnsperf,
    DoHPorts,
    Result,
    Sample,
    background_load,
    busy_note,
    busy_share,
    check_cpus,
    common_options,
    core_times,
    cpu_ticks,
    dnsperf,
    fmt,
    free_ports,
    make_certs,
    module_argv,
    pct,
    quic_uri,
    raise_on_signal,
    read_tail,
    record_counters,
    run_main,
    set_affinity,
    start_doh_unbound,
    start_quic_server,
    target_notes,
    wait_until_answers,
    workspace,
    write_json,
    write_query_file,
)

#: queries in flight from the direct client to a Python QUIC server at max rate
DIRECT_CONCURRENCY = 200
TRANSPORTS = ("dot", "doh", "h3", "doq")
#: stubby-py's configuration for every row (the rest comes from the command line)
DAEMON_CONF = """rate_limit: 0
user: null
cache_file: false
control_socket: "{socket}"
"""

# --------------------------------------------------------------------------- rows


@dataclass
class Row:
    """One line of the table: what was loaded, over which transport, against what baseline."""

    name: str
    transport: str  # plain | dot | doh-h2 | doh-h3 | doq
    server: str  # what answered at the far end
    baseline: str | None  # the row whose max qps divides this one's (None: a baseline itself)
    result: Any  # forwarding.Result (dnsperf runs, CPU, drops, error)
    #: stubby-py's stats after the runs (control socket): per-upstream queries, failures...
    daemon: dict[str, Any] | None = None
    #: direct client rows: what the Python client itself spent (it is not the server)
    client_cpu_us_per_query: float | None = None


@dataclass
class Setup:
    children: Any
    tmp: Path
    ports: DoHPorts
    certs: Any
    unbound: subprocess.Popen[bytes]
    max_names: Path
    fixed_names: Path
    duration: float
    extra_ports: list[int] = field(default_factory=list)

    def port(self) -> int:
        """A fresh free port for the next stubby-py (none is reused within a run)."""
        if not self.extra_ports:
            self.extra_ports = free_ports(8)
        return self.extra_ports.pop()


def measure(setup: Setup, name: str, pid: int, port: int, upstream: int | None) -> Any:
    """forwarding.py's two dnsperf runs (fixed rate, then max rate) with the upstream's CPU."""
    result = Result(name)
    result.fixed_rate = dnsperf(
        setup.children, port, setup.fixed_names, setup.duration, ["-Q", str(FIXED_QPS), "-v"]
    )
    before, cores = Sample.take(pid, upstream, port), [core_times()]
    result.max_rate = dnsperf(
        setup.children,
        port,
        setup.max_names,
        setup.duration,
        ["-c", str(MAX_CLIENTS), "-q", str(MAX_OUTSTANDING)],
        at=(setup.duration, lambda: cores.append(core_times())),
    )
    after = Sample.take(pid, upstream, port)
    record_counters(result, before, after, has_upstream=upstream is not None)
    result.forwarder_core_busy = busy_share(cores[0], cores[-1], FORWARDER_CPU)
    result.load_core_busy = busy_share(cores[0], cores[-1], LOAD_CPU)
    return result


def daemon_stats(sock: Path) -> dict[str, Any] | None:
    from stubby_py.daemon import control

    try:
        reply = control.request(str(sock), "stats", timeout=5)
    except (OSError, ValueError):
        return None
    ups = [
        {k: u.get(k) for k in ("name", "queries", "failures", "failure_kinds", "handshakes")}
        for u in reply.get("upstreams", ())
    ]
    keys = ("queries", "servfail", "dropped", "rate_limited")
    return {**{k: reply.get(k) for k in keys}, "upstreams": ups}


def stubby_py_row(
    setup: Setup, name: str, transport: str, uri: str, upstream: int, server: str, baseline: str
) -> Row:
    port, slug = setup.port(), name.replace(" ", "-")
    sock = setup.tmp / f"{slug}.sock"
    conf = setup.tmp / f"{slug}.yaml"
    conf.write_text(DAEMON_CONF.format(socket=sock))
    exe = shutil.which("stubby-py")
    base = [exe] if exe else [sys.executable, "-m", "stubby_py"]
    argv = [
        "taskset",
        "-c",
        str(FORWARDER_CPU),
        *base,
        "run",
        "-c",
        str(conf),
        "--listen",
        f"{HOST}:{port}",
        "--upstream",
        uri,
        "--ca-file",
        str(setup.certs.ca),
        *DNSSEC_OFF,
    ]
    log = setup.tmp / f"{slug}.log"
    proc = setup.children.start(argv, log)
    row = Row(name, transport, server, baseline, Result(name))
    try:
        wait_until_answers(setup.children, proc, port, name)
        row.result = measure(setup, name, proc.pid, port, upstream)
        row.daemon = daemon_stats(sock)
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        row.result.error = f"{exc}\n{read_tail(log)}".strip()
    finally:
        setup.children.stop(proc)
    return row


def unbound_direct_row(setup: Setup) -> Row:
    name = "unbound plain"
    row = Row(name, "plain", "unbound", None, Result(name))
    set_affinity(setup.unbound.pid, FORWARDER_CPU)  # where the forwarders sit
    try:
        row.result = measure(setup, name, setup.unbound.pid, setup.ports.plain, None)
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        row.result.error = str(exc)
    finally:
        set_affinity(setup.unbound.pid, LOAD_CPU)
    return row


def direct_client(setup: Setup, uri: str, rate: int, first: int) -> dict[str, Any]:
    """Runs this script's --direct-client on FORWARDER_CPU; returns what it printed."""
    argv = [
        "taskset",
        "-c",
        str(FORWARDER_CPU),
        *module_argv("bench.transports"),
        "--direct-client",
        uri,
        "--ca-file",
        str(setup.certs.ca),
        "--duration",
        f"{setup.duration:g}",
        "--rate",
        str(rate),
        "--first",
        str(first),
    ]
    out, err = setup.children.run(argv, timeout=setup.duration + QUERY_TIMEOUT + 30)
    try:
        return dict(json.loads(out.strip().splitlines()[-1]))
    except (ValueError, IndexError):
        raise RuntimeError(f"direct client failed:\n{out[-1500:]}{err[-1500:]}") from None


def as_dnsperf(figures: dict[str, Any]) -> Any:
    run = Dnsperf()
    for key in ("sent", "completed", "lost", "run_time_s", "qps", "avg_latency_ms"):
        setattr(run, key, figures[key])
    run.stddev_latency_ms = figures.get("stddev_latency_ms")
    run.p50_latency_ms = figures.get("p50_latency_ms")
    run.p99_latency_ms = figures.get("p99_latency_ms")
    run.rcodes = {"NOERROR": figures["completed"]} if figures["completed"] else {}
    return run


def quic_direct_row(setup: Setup, name: str, transport: str, uri: str, server: int) -> Row:
    """The Python QUIC server queried by the Python client: its rate, fixed rate then max."""
    row = Row(name, transport, f"aioquic {transport} server", None, Result(name))
    res = row.result
    try:
        res.fixed_rate = as_dnsperf(direct_client(setup, uri, FIXED_QPS, 10**9))
        before, cores = (cpu_ticks(server), time.monotonic()), [core_times()]
        figures = direct_client(setup, uri, 0, 2 * 10**9)
        cores.append(core_times())
        res.max_rate = as_dnsperf(figures)
        done = max(figures["completed"], 1)
        res.upstream_cpu_us_per_query = (cpu_ticks(server) - before[0]) / CLK_TCK / done * 1e6
        res.cpu_us_per_query = figures["cpu_s"] / done * 1e6
        row.client_cpu_us_per_query = res.cpu_us_per_query
        res.forwarder_core_busy = busy_share(cores[0], cores[-1], FORWARDER_CPU)
        res.load_core_busy = busy_share(cores[0], cores[-1], LOAD_CPU)
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        res.error = str(exc)
    return row


def announce(text: str) -> None:
    print(f"-- {text}", file=sys.stderr, flush=True)


def quic_rows(setup: Setup, kind: str) -> list[Row]:
    """Direct and through stubby-py, against one aioquic server started for these two rows."""
    transport = "doh-h3" if kind == "h3" else "doq"
    server = f"aioquic {transport} server"
    direct = f"{transport} server direct"
    try:
        proc, port = start_quic_server(setup.children, setup.tmp, setup.certs, kind)
    except RuntimeError as exc:
        return [Row(direct, transport, server, None, Result(direct, error=str(exc)))]
    uri = quic_uri(kind, port)
    try:
        announce(f"{direct}: Python client, {setup.duration:g} s at {FIXED_QPS} q/s, then max")
        rows = [quic_direct_row(setup, direct, transport, uri, proc.pid)]
        name = f"stubby-py {transport}"
        announce(f"{name}: {uri}")
        rows.append(stubby_py_row(setup, name, transport, uri, proc.pid, server, direct))
        return rows
    finally:
        setup.children.stop(proc)


def run_rows(setup: Setup, transports: Sequence[str]) -> list[Row]:
    announce(f"unbound plain (direct): {setup.duration:g} s at {FIXED_QPS} q/s, then max rate")
    rows = [unbound_direct_row(setup)]
    unbound = setup.unbound.pid
    if "dot" in transports:
        uri = f"tls://{HOST}:{setup.ports.dot}#{AUTH_NAME}"
        announce(f"stubby-py dot: {uri}")
        rows.append(
            stubby_py_row(setup, "stubby-py dot", "dot", uri, unbound, "unbound", "unbound plain")
        )
    if "doh" in transports:
        uri = f"https://{HOST}:{setup.ports.doh}{DOH_PATH}"
        announce(f"stubby-py doh-h2: {uri}")
        rows.append(
            stubby_py_row(
                setup, "stubby-py doh-h2", "doh-h2", uri, unbound, "unbound", "unbound plain"
            )
        )
    for kind in ("h3", "doq"):
        if kind in transports:
            rows += quic_rows(setup, kind)
    return rows


# --------------------------------------------------------------------------- direct client
# (runs in a child process: `transports.py --direct-client URI ...`)


def query_wire(name: str, block: int = 128) -> bytes:
    """An A query for name, ID 0, RD, EDNS(0) padded to a multiple of block (RFC 8467)."""
    labels = b"".join(bytes([len(label)]) + label for label in name.encode().split(b"."))
    question = labels + b"\0" + struct.pack("!HH", 1, 1)
    header = struct.pack("!6H", 0, 0x0100, 1, 0, 0, 1)
    pad = -(len(header) + len(question) + 11 + 4) % block
    opt = b"\0" + struct.pack("!HHIHHH", 41, 1232, 0, 4 + pad, 12, pad) + bytes(pad)
    return header + question + opt


def percentiles_ms(latencies: list[float]) -> dict[str, float | None]:
    if len(latencies) < 100:
        return {"p50_latency_ms": None, "p99_latency_ms": None, "stddev_latency_ms": None}
    cuts = statistics.quantiles(latencies, n=100, method="inclusive")
    return {
        "p50_latency_ms": cuts[49] * 1e3,
        "p99_latency_ms": cuts[98] * 1e3,
        "stddev_latency_ms": statistics.pstdev(latencies) * 1e3,
    }


async def direct_load(uri: str, ca_file: str, duration: float, rate: int, first: int) -> dict:
    """Queries one upstream through stubby-py's own transport: at `rate` per second, or (0)
    as fast as DIRECT_CONCURRENCY workers can; each name once; a reply after QUERY_TIMEOUT
    seconds, or none, is lost."""
    from stubby_py.core.config import Config, parse_upstream_uri
    from stubby_py.core.errors import UpstreamError
    from stubby_py.transports import make_transport

    loop = asyncio.get_running_loop()
    transport = make_transport(parse_upstream_uri(uri), Config.from_options(ca_file=ca_file))
    await transport.exchange(query_wire(f"warm.{ZONE}"), loop.time() + 5)  # the handshake
    latencies: list[float] = []
    lost = 0
    counter = iter(range(first, first + 10**8))

    async def one() -> None:
        nonlocal lost
        start = time.perf_counter()  # uvloop's loop.time() counts whole milliseconds
        try:
            query = query_wire(f"q{next(counter)}.{ZONE}")
            await transport.exchange(query, loop.time() + QUERY_TIMEOUT)
            latencies.append(time.perf_counter() - start)
        except UpstreamError:
            lost += 1

    cpu0, start = resource.getrusage(resource.RUSAGE_SELF), loop.time()
    stop = start + duration
    if rate:
        tasks = []
        for n in range(int(rate * duration)):
            await asyncio.sleep(max(0.0, start + n / rate - loop.time()))
            tasks.append(loop.create_task(one()))
        await asyncio.gather(*tasks)
    else:

        async def worker() -> None:
            while loop.time() < stop:
                await one()

        await asyncio.gather(*(worker() for _ in range(DIRECT_CONCURRENCY)))
    elapsed, cpu1 = min(loop.time(), stop) - start, resource.getrusage(resource.RUSAGE_SELF)
    await transport.aclose()
    done = len(latencies)
    return {
        "sent": done + lost,
        "completed": done,
        "lost": lost,
        "run_time_s": elapsed,
        "qps": done / elapsed if elapsed else 0.0,
        "avg_latency_ms": statistics.fmean(latencies) * 1e3 if latencies else 0.0,
        **percentiles_ms(latencies),
        "cpu_s": cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime,
    }


def run_direct_client(args: argparse.Namespace) -> int:
    coroutine = direct_load(args.direct_client, args.ca_file, args.duration, args.rate, args.first)
    try:
        import uvloop

        figures = uvloop.run(coroutine)
    except ImportError:
        figures = asyncio.run(coroutine)
    print(json.dumps(figures))
    return 0


# --------------------------------------------------------------------------- QUIC server
# (runs in a child process: `python -m bench.transports --serve-quic doq|h3 ...`)


def serve_quic(args: argparse.Namespace) -> int:
    from tests.servers import DoQServer, H3DoHServer

    server = (DoQServer if args.serve_quic == "doq" else H3DoHServer)(args.cert, args.key)
    # the test server records every query; a benchmark keeps none
    server.state.queries = deque(maxlen=0)  # type: ignore[assignment]
    server.state.methods = deque(maxlen=0)  # type: ignore[assignment]
    done = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: done.set())
    server.start()
    try:
        Path(args.port_file).write_text(f"{server.port}\n")
        done.wait()
    finally:
        server.stop()
    return 0


# --------------------------------------------------------------------------- report


def ratio(row: Row, rows: dict[str, Row]) -> float | None:
    base = rows.get(row.baseline or "")
    mine, theirs = row.result.max_rate, base.result.max_rate if base else None
    if mine is None or theirs is None or not theirs.qps:
        return None
    return float(mine.qps / theirs.qps)


COLUMNS = (  # heading, width
    ("row", 20),
    ("max qps", 8),
    ("ratio", 6),
    ("lost", 7),
    ("avg ms", 8),
    ("p50 ms", 8),
    ("p99 ms", 8),
    ("cpu µs/q", 9),
    ("upstr µs/q", 11),
    ("cpu0 %", 7),
    ("cpu1 %", 7),
)


def cells(row: Row, rows: dict[str, Row]) -> list[str]:
    res, m, f = row.result, row.result.max_rate, row.result.fixed_rate
    return [
        row.name,
        f"{m.qps:.0f}",
        fmt(ratio(row, rows), ".2f"),
        str(m.lost),
        fmt(f.avg_latency_ms if f else None, ".3f"),
        fmt(f.p50_latency_ms if f else None, ".3f"),
        fmt(f.p99_latency_ms if f else None, ".3f"),
        fmt(res.cpu_us_per_query, ".1f"),
        fmt(res.upstream_cpu_us_per_query, ".1f"),
        pct(res.forwarder_core_busy),
        pct(res.load_core_busy),
    ]


def table(rows: dict[str, Row]) -> str:
    def line(texts: Sequence[str]) -> str:
        first, *rest = zip(texts, COLUMNS, strict=True)
        return f"{first[0]:<{first[1][1]}}" + "".join(f"{c:>{w + 1}}" for c, (_, w) in rest)

    out = [
        f"max qps, lost, cpu µs/q, cpu %: max-rate run; avg/p50/p99: at {FIXED_QPS} queries/s",
        "ratio: max qps / the same upstream queried directly (Unbound: its plain port; aioquic "
        "servers: the Python client)",
        f"cpu µs/q: stubby-py (direct rows: the Python client); upstr µs/q: the server; cpu"
        f"{FORWARDER_CPU} %: stubby-py's (client's) core; cpu{LOAD_CPU} %: dnsperf's + server's",
        "",
        line([name for name, _ in COLUMNS]),
    ]
    for row in rows.values():
        if row.result.max_rate is None:
            out.append(f"{row.name:<20} FAILED: {(row.result.error or '?').splitlines()[0]}")
        else:
            out.append(line(cells(row, rows)))
    return "\n".join(out)


def daemon_notes(row: Row) -> list[str]:
    if row.daemon is None:
        return [f"{row.name}: no stats from its control socket"] if row.baseline else []
    notes = []
    if row.daemon.get("servfail"):
        notes.append(f"{row.name}: stubby-py answered SERVFAIL {row.daemon['servfail']} times")
    for up in row.daemon.get("upstreams", ()):
        if up.get("failures"):
            notes.append(
                f"{row.name}: upstream {up['name']}: {up['failures']} failed attempts of "
                f"{up['queries']} ({up.get('failure_kinds')})"
            )
        if (up.get("handshakes") or 0) > 1:
            notes.append(f"{row.name}: upstream {up['name']}: {up['handshakes']} handshakes")
    return notes


def notes(rows: dict[str, Row], duration: float, idle: dict[int, float]) -> list[str]:
    busy = busy_note(idle)
    out = [busy] if busy else []
    for row in rows.values():
        out += target_notes(row.result, duration)
        out += daemon_notes(row)
    quic = [r for r in rows.values() if r.transport in ("doh-h3", "doq") and r.baseline]
    if quic:
        out.append(
            "doh-h3/doq rows: the upstream is a Python aioquic test server; its rate, not "
            "stubby-py's, limits them (see upstr µs/q and cpu1 %), so their ratio says how "
            "close stubby-py gets to that server's own pace, not what stubby-py can do"
        )
    return out


def report(rows: dict[str, Row], idle: dict[int, float], args: argparse.Namespace) -> None:
    print(table(rows))
    lines = notes(rows, args.duration, idle)
    if lines:
        print("\nnotes:\n" + "\n".join(lines))
    doc = {
        "duration_s": args.duration,
        "fixed_qps": FIXED_QPS,
        "rows": {
            name: {**asdict(row), "result": asdict(row.result), "ratio": ratio(row, rows)}
            for name, row in rows.items()
        },
    }
    write_json(args.json, idle, doc)


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    common_options(parser, duration=5.0, duration_help="seconds per load run")
    parser.add_argument(
        "--transports",
        default=",".join(TRANSPORTS),
        help=f"comma-separated subset of {','.join(TRANSPORTS)} (default: all)",
    )
    # the script's own child processes
    parser.add_argument("--serve-quic", choices=("doq", "h3"), help=argparse.SUPPRESS)
    parser.add_argument("--cert", help=argparse.SUPPRESS)
    parser.add_argument("--key", help=argparse.SUPPRESS)
    parser.add_argument("--port-file", help=argparse.SUPPRESS)
    parser.add_argument("--direct-client", metavar="URI", help=argparse.SUPPRESS)
    parser.add_argument("--ca-file", help=argparse.SUPPRESS)
    parser.add_argument("--rate", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--first", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.transports = [t for t in args.transports.split(",") if t]
    unknown = set(args.transports) - set(TRANSPORTS)
    if unknown or not 1 <= args.duration <= 60:
        parser.error(f"unknown transports {sorted(unknown)}" if unknown else "duration: 1..60 s")
    return args


def prepare(children: Any, tmp: Path, duration: float) -> Setup:
    ports = DoHPorts(*free_ports(3))
    certs = make_certs(tmp)
    unbound = start_doh_unbound(children, tmp, ports, certs)
    max_count = int(MAX_QPS_CAP * duration)
    max_names, fixed_names = tmp / "max.txt", tmp / "fixed.txt"
    write_query_file(max_names, 0, max_count)
    write_query_file(fixed_names, max_count, int(FIXED_QPS * duration * 1.1) + 1000)
    return Setup(children, tmp, ports, certs, unbound, max_names, fixed_names, duration)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve_quic:
        return serve_quic(args)
    if args.direct_client:
        return run_direct_client(args)
    check_cpus(("unbound", "dnsperf", "dig", "kdig", "taskset"))
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, raise_on_signal)
    idle = background_load()
    with workspace(args.keep, "bench-transports-") as (children, tmp):
        setup = prepare(children, tmp, args.duration)
        rows = {row.name: row for row in run_rows(setup, args.transports)}
    report(rows, idle, args)
    return 1 if any(r.result.error for r in rows.values()) else 0


if __name__ == "__main__":
    run_main(main)
