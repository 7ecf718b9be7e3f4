#!/usr/bin/env python3
"""Soak run: one stubby-py under stacked churn for minutes to hours; memory, descriptors, tasks.

One daemon (validation off, strategy round_robin, a small cache) forwards to one upstream per
transport asked for: DoT and DoH over HTTP/2 to a local Unbound, each through a relay that resets
every connection after a number of TLS records (tests/servers/tamper_proxy.py, as bench/resets.py);
DoH over HTTP/3 and DoQ to the aioquic test servers (tests/servers/quic.py, as
bench/transports.py). dnsperf sends names never asked before at a bounded rate, so every query
goes upstream and the cache turns over past its bound within seconds.
Meanwhile, on their own clocks:

- SIGHUP reloads, alternating two configurations whose transport settings differ, so that every
  reload retires all transports and builds new ones;
- network changes, asked on the control socket (`network-changed`, what netwatch calls on a route
  change): every connection is retired;
- an upstream outage: the DoT relay is stopped for a while and started again on the same port;
- idle gaps: every few samples the load pauses longer than the upstream idle timeout, so that
  connections close idle too.

Every --interval seconds it samples the daemon's RSS (/proc/PID/status), open descriptors
(/proc/PID/fd), asyncio tasks (`stats` on the control socket) and dnsperf's figures for that
interval (latency percentiles from its -v lines), prints them as a table, fits the RSS slope
(MiB/hour) over the second half of the run (and the last 30 minutes when the run is longer than
an hour... or is an hour), writes JSON and, with matplotlib, a PNG. See bench/README.md.

--tracemalloc FILE runs the daemon with STUBBY_PY_TRACEMALLOC=FILE
(stubby_py/daemon/memtrace.py) and sends it SIGUSR1 after each sample from the warm-up on:
FILE then holds what grew. --mallinfo FILE (STUBBY_PY_MALLINFO) gets a JSON line of glibc's
mallinfo2 per sample: C heap in use against free in chunks, growth against fragmentation.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.harness import (
    AUTH_NAME,
    DOH_PATH,
    FORWARDER_CPU,
    HOST,
    Children,
    DoHPorts,
    check_cpus,
    common_options,
    dnsperf,
    free_ports,
    make_certs,
    proxy_counts,
    quic_uri,
    raise_on_signal,
    read_tail,
    run_main,
    start_doh_unbound,
    start_quic_server,
    start_resetting_proxy,
    wait_until_answers,
    workspace,
    write_query_file,
)

TRANSPORTS = ("dot", "doh", "h3", "doq")
MIB = 1024 * 1024
#: the two configurations a reload alternates between differ in this (a transport setting)
IDLE_TIMEOUTS = (2.0, 2.5)
IDLE_GAP = 3.5  # seconds without load: longer than either idle timeout
DAEMON_CONF = """rate_limit: 0
user: null
cache_file: false
watch_network: false
strategy: round_robin
dnssec: "off"
cache_size: {cache_size}
upstream_idle_timeout: {idle}
control_socket: "{socket}"
listen:
  - "{host}:{port}"
ca_file: "{ca}"
upstreams:
{upstreams}
"""


@dataclass
class Sample:
    t: float  # seconds since the load began (end of the interval)
    rss_mib: float
    fds: int
    tasks: int | None
    sent: int = 0
    lost: int = 0
    noerror: int = 0
    servfail: int = 0
    p50_ms: float | None = None
    p99_ms: float | None = None
    handshakes: int = 0
    resent: int = 0
    cache_entries: int = 0
    events: str = ""


@dataclass
class Soak:
    args: argparse.Namespace
    children: Children
    tmp: Path
    pid: int = 0
    port: int = 0
    socket: Path = Path()
    conf: Path = Path()
    upstreams: str = ""
    relays: dict[str, tuple[int, int, Any]] = field(default_factory=dict)  # name → port, up, proc
    events: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    reloads: int = 0

    def event(self, letter: str) -> None:
        with self.lock:
            self.events.append(letter)

    def take_events(self) -> str:
        with self.lock:
            text, self.events = "".join(self.events), []
        return text


def write_conf(soak: Soak, idle: float) -> None:
    soak.conf.write_text(
        DAEMON_CONF.format(
            cache_size=soak.args.cache_size, idle=idle, socket=soak.socket, host=HOST,
            port=soak.port, ca=soak.tmp / "ca.pem", upstreams=soak.upstreams,
        )
    )  # fmt: skip


def relay(soak: Soak, name: str, upstream: int, port: int) -> Any:
    log = soak.tmp / f"relay-{name}-{time.monotonic():.0f}.log"
    return start_resetting_proxy(
        soak.children, log, port, upstream, soak.args.cut_after, silent=False
    )


def start_upstreams(soak: Soak, certs: Any) -> list[str]:
    """The daemon's upstream URIs, with the servers (and relays) behind them running."""
    args, tmp = soak.args, soak.tmp
    uris = []
    if {"dot", "doh"} & set(args.transports):
        ports = DoHPorts(*free_ports(3))
        start_doh_unbound(soak.children, tmp, ports, certs)
        for name, server in (("dot", ports.dot), ("doh", ports.doh)):
            if name not in args.transports:
                continue
            (port,) = free_ports(1)
            soak.relays[name] = (port, server, relay(soak, name, server, port))
            if name == "dot":
                uris.append(f"tls://{HOST}:{port}#{AUTH_NAME}")
            else:
                uris.append(f"https://{HOST}:{port}{DOH_PATH}")
    for kind in ("h3", "doq"):
        if kind in args.transports:
            _, port = start_quic_server(soak.children, tmp, certs, kind)
            uris.append(quic_uri(kind, port))
    return uris


def read_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def daemon_stats(soak: Soak) -> dict[str, Any]:
    from stubby_py.daemon import control

    try:
        return control.request(str(soak.socket), "stats", timeout=10)
    except (OSError, ValueError):
        return {}


def take_sample(soak: Soak, t: float, run: Any) -> Sample:
    stats = daemon_stats(soak)
    ups = stats.get("upstreams", ())
    sample = Sample(
        t=round(t, 1),
        rss_mib=round(read_rss_mib(soak.pid), 2),
        fds=len(os.listdir(f"/proc/{soak.pid}/fd")),
        tasks=stats.get("tasks"),
        handshakes=sum(u.get("handshakes", 0) for u in ups),
        resent=sum(u.get("resent", 0) for u in ups),
        cache_entries=stats.get("cache", {}).get("entries", 0),
        events=soak.take_events(),
    )
    if run is not None:
        sample.sent, sample.lost = run.sent, run.lost
        sample.noerror = run.rcodes.get("NOERROR", 0)
        sample.servfail = run.rcodes.get("SERVFAIL", 0)
        sample.p50_ms, sample.p99_ms = run.p50_latency_ms, run.p99_latency_ms
    return sample


# --------------------------------------------------------------------------- churn


def churn(soak: Soak, stop: threading.Event) -> None:
    """Reloads, network changes and outages on their own clocks, until stop."""
    from stubby_py.daemon import control

    args = soak.args
    start = time.monotonic()
    due = {"reload": args.reload_every, "netchange": args.netchange_every,
           "outage": args.outage_every}  # fmt: skip
    while not stop.wait(0.5):
        now = time.monotonic() - start
        if due["reload"] and now >= due["reload"]:
            due["reload"] += args.reload_every
            soak.reloads += 1
            write_conf(soak, IDLE_TIMEOUTS[soak.reloads % 2])
            os.kill(soak.pid, signal.SIGHUP)
            soak.event("H")
        if due["netchange"] and now >= due["netchange"]:
            due["netchange"] += args.netchange_every
            try:
                control.request(str(soak.socket), "network-changed", timeout=10)
                soak.event("N")
            except (OSError, ValueError):
                soak.event("n")  # asked, not answered
        if due["outage"] and now >= due["outage"] and "dot" in soak.relays:
            due["outage"] += args.outage_every
            port, upstream, proc = soak.relays["dot"]
            soak.children.stop(proc)
            soak.event("O")
            if stop.wait(args.outage_seconds):
                return
            soak.relays["dot"] = (port, upstream, relay(soak, "dot", upstream, port))
            soak.event("U")


# --------------------------------------------------------------------------- report


def slope_mib_per_hour(samples: Sequence[Sample], since: float) -> float | None:
    points = [(s.t / 3600, s.rss_mib) for s in samples if s.t >= since]
    if len(points) < 3:
        return None
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    return sum((x - mx) * (y - my) for x, y in points) / sxx if sxx else None


def _cell(value: Any, spec: str = "") -> str:
    return "-" if value is None else format(value, spec)


HEAD = ("t min", "RSS MiB", "fds", "tasks", "sent", "lost", "NOERR%", "SERVF", "p50 ms",
        "p99 ms", "hshakes", "resent", "cache", "events")  # fmt: skip


def row(s: Sample) -> list[str]:
    share = s.noerror / s.sent * 100 if s.sent else None
    return [
        f"{s.t / 60:.1f}", f"{s.rss_mib:.1f}", str(s.fds), _cell(s.tasks), str(s.sent),
        str(s.lost), _cell(share, ".2f"), str(s.servfail), _cell(s.p50_ms, ".1f"),
        _cell(s.p99_ms, ".1f"), str(s.handshakes), str(s.resent), str(s.cache_entries), s.events,
    ]  # fmt: skip


def table_line(cells: Sequence[str]) -> str:
    return "  ".join(c.rjust(8) for c in cells).rstrip()


def summary(samples: Sequence[Sample], minutes: float) -> list[str]:
    lines = []
    seconds = minutes * 60
    half = slope_mib_per_hour(samples, seconds / 2)
    lines.append(f"RSS slope over the second half: {_cell(half, '+.2f')} MiB/hour")
    if minutes >= 60:
        last = slope_mib_per_hour(samples, seconds - 1800)
        lines.append(f"RSS slope over the last 30 minutes: {_cell(last, '+.2f')} MiB/hour")
    for mark in (10, 60):
        near = [s for s in samples if abs(s.t - mark * 60) <= max(31, samples[0].t)]
        if near and mark <= minutes:
            lines.append(f"RSS at {mark} min: {near[0].rss_mib:.1f} MiB")
    if samples:
        first, last_s = samples[0], samples[-1]
        lines.append(f"fds: {first.fds} at start, {last_s.fds} at end; "
                     f"tasks: {first.tasks} at start, {last_s.tasks} at end")  # fmt: skip
        lines.append(f"RSS: {first.rss_mib:.1f} MiB at start, {last_s.rss_mib:.1f} at end, "
                     f"max {max(s.rss_mib for s in samples):.1f}")  # fmt: skip
        sent = sum(s.sent for s in samples)
        lost = sum(s.lost for s in samples)
        noerror = sum(s.noerror for s in samples)
        if sent:
            lines.append(f"queries: {sent} sent, {noerror / sent:.3%} NOERROR, {lost} lost")
    return lines


def plot(samples: Sequence[Sample], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    minutes = [s.t / 60 for s in samples]
    fig, axes = plt.subplots(3, 1, figsize=(9, 8), sharex=True)
    axes[0].plot(minutes, [s.rss_mib for s in samples])
    axes[0].set_ylabel("RSS MiB")
    axes[1].plot(minutes, [s.fds for s in samples], label="fds")
    axes[1].plot(minutes, [s.tasks or 0 for s in samples], label="asyncio tasks")
    axes[1].legend()
    axes[2].plot(minutes, [s.p50_ms for s in samples], label="p50 ms")
    axes[2].plot(minutes, [s.p99_ms for s in samples], label="p99 ms")
    axes[2].set_yscale("log")
    axes[2].legend()
    axes[2].set_xlabel("minutes")
    fig.suptitle("stubby-py soak")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


# --------------------------------------------------------------------------- run


def start_daemon(soak: Soak) -> subprocess.Popen[bytes]:
    env_note = []
    if soak.args.tracemalloc:
        os.environ["STUBBY_PY_TRACEMALLOC"] = str(Path(soak.args.tracemalloc).resolve())
        env_note = ["(tracemalloc on)"]
    if soak.args.mallinfo:
        os.environ["STUBBY_PY_MALLINFO"] = str(Path(soak.args.mallinfo).resolve())
        env_note.append("(mallinfo2 on)")
    argv = ["taskset", "-c", str(FORWARDER_CPU), sys.executable, "-m", "stubby_py", "run",
            "-c", str(soak.conf)]  # fmt: skip
    proc = soak.children.start(argv, soak.tmp / "stubby-py.log")
    print(f"stubby-py pid {proc.pid} on {HOST}:{soak.port} {' '.join(env_note)}", flush=True)
    return proc


def run(soak: Soak) -> list[Sample]:
    args = soak.args
    proc = start_daemon(soak)
    soak.pid = proc.pid
    wait_until_answers(soak.children, proc, soak.port, "stubby-py")
    samples: list[Sample] = [take_sample(soak, 0.0, None)]
    print(table_line(HEAD), flush=True)
    print(table_line(row(samples[0])), flush=True)
    stop = threading.Event()
    thread = threading.Thread(target=churn, args=(soak, stop), daemon=True)
    begin = time.monotonic()
    thread.start()
    warm = args.minutes * 60 / 4
    try:
        index, first = 0, 0
        names = soak.tmp / "names.txt"
        while (elapsed := time.monotonic() - begin) < args.minutes * 60 - 1:
            length = min(args.interval, args.minutes * 60 - elapsed)
            # names never asked before: every chunk starts where the last one ended
            count = int(args.rate * length * 1.2) + 100
            write_query_file(names, first, count)
            first += count
            extra = ["-Q", str(args.rate), "-q", "200", "-v"]
            run_figures = dnsperf(soak.children, soak.port, names, length, extra)
            index += 1
            if proc.poll() is not None:
                raise RuntimeError(f"stubby-py exited:\n{read_tail(soak.tmp / 'stubby-py.log')}")
            sample = take_sample(soak, time.monotonic() - begin, run_figures)
            samples.append(sample)
            print(table_line(row(sample)), flush=True)
            if (args.tracemalloc and sample.t >= warm) or args.mallinfo:
                os.kill(soak.pid, signal.SIGUSR1)
            if args.idle_gap_every and index % args.idle_gap_every == 0:
                soak.event("I")
                time.sleep(IDLE_GAP)
    finally:
        stop.set()
        thread.join(timeout=args.outage_seconds + 10)
    return samples


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    common_options(
        parser, keep_help="keep logs and configs", json_help="write the samples as JSON here"
    )
    parser.add_argument("--minutes", type=float, default=10.0, help="length of the run")
    parser.add_argument("--rate", type=int, default=500, help="queries per second (dnsperf -Q)")
    parser.add_argument("--interval", type=float, default=30.0, help="seconds between samples")
    parser.add_argument("--transports", default=",".join(TRANSPORTS),
                        type=lambda s: [t for t in s.split(",") if t],
                        help=f"comma-separated, of {','.join(TRANSPORTS)}")  # fmt: skip
    parser.add_argument("--cache-size", type=int, default=5000, help="the daemon's cache_size")
    parser.add_argument(
        "--cut-after",
        type=int,
        default=30,
        help="TLS records the relays let through per connection (0: no resets)",
    )
    parser.add_argument("--reload-every", type=float, default=60.0, help="seconds; 0: never")
    parser.add_argument("--netchange-every", type=float, default=90.0, help="seconds; 0: never")
    parser.add_argument(
        "--outage-every",
        type=float,
        default=300.0,
        help="seconds between DoT upstream outages; 0: never",
    )
    parser.add_argument("--outage-seconds", type=float, default=20.0)
    parser.add_argument(
        "--idle-gap-every",
        type=int,
        default=4,
        help=f"a {IDLE_GAP} s pause in the load after every N samples; 0: never",
    )
    parser.add_argument("--tracemalloc", metavar="FILE", help="tracemalloc diffs to FILE")
    parser.add_argument(
        "--mallinfo", metavar="FILE", help="a JSON line of glibc mallinfo2 per sample to FILE"
    )
    parser.add_argument("--png", type=Path, help="plot here (needs matplotlib)")
    args = parser.parse_args(argv)
    unknown = set(args.transports) - set(TRANSPORTS)
    if unknown or not args.transports:
        parser.error(f"--transports: expected some of {','.join(TRANSPORTS)}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    check_cpus(("unbound", "dnsperf", "dig", "kdig", "taskset"))
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, raise_on_signal)
    with workspace(args.keep, "bench-soak-") as (children, tmp):
        certs = make_certs(tmp)
        soak = Soak(args, children, tmp)
        (soak.port,) = free_ports(1)
        soak.socket, soak.conf = tmp / "control.sock", tmp / "stubby-py.yaml"
        uris = start_upstreams(soak, certs)
        soak.upstreams = "\n".join(f'  - "{uri}"' for uri in uris)
        write_conf(soak, IDLE_TIMEOUTS[0])
        print(f"soak: {args.minutes:g} min at {args.rate} q/s over {', '.join(uris)}", flush=True)
        samples = run(soak)
        for _, _, proc in soak.relays.values():
            children.stop(proc)
        relays = {p.name: proxy_counts(p) for p in sorted(tmp.glob("relay-*.log"))}
    print()
    print(table_line(HEAD))
    for sample in samples:
        print(table_line(row(sample)))
    print("events: H reload, N network change, O/U DoT upstream down/up, I idle gap")
    for line in summary(samples, args.minutes):
        print(line)
    cuts = sum(c or 0 for _, c in relays.values())
    connections = sum(c or 0 for c, _ in relays.values())
    print(f"relays: {connections} connections, {cuts} cut by RST")
    if args.json:
        doc = {"args": {k: v for k, v in vars(args).items() if not isinstance(v, Path)},
               "samples": [asdict(s) for s in samples], "summary": summary(samples, args.minutes),
               "relay_connections": connections, "relay_cuts": cuts}  # fmt: skip
        args.json.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    if args.png and plot(samples, args.png):
        print(f"plot: {args.png}")
    return 0


if __name__ == "__main__":
    run_main(main)
