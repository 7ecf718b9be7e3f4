#!/usr/bin/env python3
"""Resets benchmark: stubby-py vs Stubby vs Unbound-as-forwarder when a middlebox cuts connections.

One local Unbound serves ``*.bench`` over DoT (as in forwarding.py). Between it and each forwarder
sits a TCP relay that kills every connection with a TCP RST after the server has sent a given
number of TLS records on it (tests/servers/tamper_proxy.py, ResettingProxy; 30 by default: about 25
replies, the encrypted TLS 1.3 handshake and session tickets count too), as a NAT or firewall that
cuts long-lived TLS does. dnsperf sends unique names at a fixed rate to stubby-py, Stubby and an
Unbound configured as a DoT forwarder, in turn, each through its own fresh relay; the table gives
the share answered NOERROR, the SERVFAIL and lost counts, and how many connections the relay cut.
See bench/README.md.
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bench.harness import (
    AUTH_NAME,
    DNSSEC_OFF,
    FORWARDER_CPU,
    HOST,
    Certs,
    Children,
    Ports,
    background_load,
    busy_note,
    check_cpus,
    common_options,
    dnsperf,
    fmt,
    free_ports,
    make_certs,
    proxy_counts,
    raise_on_signal,
    read_tail,
    run_main,
    start_resetting_proxy,
    start_unbound,
    stubby_conf,
    stubby_py_command,
    wait_until_answers,
    workspace,
    write_json,
    write_query_file,
)

TARGETS = ("stubby-py", "stubby", "unbound-forwarder")
OUTSTANDING = 500  # dnsperf -q: never the limit at the default rate
QUERY_TIMEOUT = 5  # dnsperf -t: above every forwarder's own deadline, so its SERVFAILs are seen

# --------------------------------------------------------------------------- the relay
# (bench.harness.start_resetting_proxy runs it as tests.servers.tamper_proxy; `--serve-proxy`
# runs the same relay in this script's process)


def serve_proxy(args: argparse.Namespace) -> int:
    from tests.servers.tamper_proxy import main as proxy_main

    port, upstream, cut_after = str(args.proxy_port), str(args.upstream), str(args.cut_after)
    silent = ["--silent"] if args.silent else []
    return proxy_main(["--port", port, "--upstream", upstream, "--cut-after", cut_after, *silent])


# --------------------------------------------------------------------------- the forwarders


def unbound_forwarder_conf(tmp: Path, port: int, proxy: int, certs: Certs) -> str:
    """Unbound as a DoT forwarder (as many routers run it): every name to the relay, no DNSSEC."""
    return f"""server:
    interface: {HOST}@{port}
    do-daemonize: no
    chroot: ""
    username: ""
    directory: "{tmp}"
    pidfile: "{tmp}/unbound-forwarder.pid"
    logfile: "{tmp}/unbound-forwarder.log"
    use-syslog: no
    verbosity: 1
    num-threads: 1
    do-ip6: no
    do-not-query-localhost: no
    module-config: "iterator"
    qname-minimisation: no
    access-control: 127.0.0.0/8 allow
    tls-cert-bundle: "{certs.ca}"
remote-control:
    control-enable: no
forward-zone:
    name: "."
    forward-addr: {HOST}@{proxy}#{AUTH_NAME}
    forward-tls-upstream: yes
"""


def forwarder_argv(target: str, tmp: Path, port: int, proxy: int, certs: Certs) -> list[str]:
    pinned = ["taskset", "-c", str(FORWARDER_CPU)]
    if target == "stubby-py":
        upstream = f"tls://{HOST}:{proxy}#{AUTH_NAME}"
        return [
            *pinned, *stubby_py_command(), "run", "--listen", f"{HOST}:{port}",
            "--upstream", upstream, "--ca-file", str(certs.ca), *DNSSEC_OFF,
        ]  # fmt: skip
    if target == "stubby":
        conf = tmp / "stubby.yml"
        conf.write_text(stubby_conf(Ports(0, proxy, port, 0), certs))
        return [*pinned, "stubby", "-C", str(conf), "-l"]
    conf = tmp / "unbound-forwarder.conf"
    conf.write_text(unbound_forwarder_conf(tmp, port, proxy, certs))
    return [*pinned, "unbound", "-d", "-c", str(conf)]


# --------------------------------------------------------------------------- one target


@dataclass
class Result:
    target: str
    sent: int = 0
    noerror: int = 0
    servfail: int = 0
    lost: int = 0
    rcodes: dict[str, int] = field(default_factory=dict)
    run_time_s: float = 0.0
    #: connections the relay saw, and how many of them it cut
    connections: int | None = None
    cuts: int | None = None
    error: str | None = None

    @property
    def noerror_share(self) -> float | None:
        return self.noerror / self.sent if self.sent else None


@dataclass(frozen=True)
class Setup:
    children: Children
    tmp: Path
    certs: Certs
    dot: int
    names: Path
    args: argparse.Namespace


def run_target(setup: Setup, target: str) -> Result:
    args = setup.args
    port, proxy_port = free_ports(2)
    proxy_log = setup.tmp / f"relay-{target}.log"
    proxy = start_resetting_proxy(
        setup.children, proxy_log, proxy_port, setup.dot, args.cut_after, args.silent
    )
    result = Result(target)
    log = setup.tmp / f"{target}.log"
    try:
        argv = forwarder_argv(target, setup.tmp, port, proxy_port, setup.certs)
        proc = setup.children.start(argv, log)
        try:
            wait_until_answers(setup.children, proc, port, target)
            extra = ["-Q", str(args.rate), "-q", str(OUTSTANDING)]
            run = dnsperf(setup.children, port, setup.names, args.duration, extra)
        finally:
            setup.children.stop(proc)
    finally:
        setup.children.stop(proxy)
    result.connections, result.cuts = proxy_counts(proxy_log)
    result.sent, result.lost, result.rcodes = run.sent, run.lost, run.rcodes
    result.noerror = run.rcodes.get("NOERROR", 0)
    result.servfail = run.rcodes.get("SERVFAIL", 0)
    result.run_time_s = run.run_time_s
    return result


def guarded(setup: Setup, target: str) -> Result:
    print(
        f"-- {target}: {setup.args.duration:g} s at {setup.args.rate} q/s, connections cut "
        f"after {setup.args.cut_after} TLS records",
        file=sys.stderr,
        flush=True,
    )
    try:
        return run_target(setup, target)
    except (RuntimeError, OSError) as exc:
        tail = read_tail(setup.tmp / f"{target}.log")
        return Result(target, error=f"{exc}\n{tail}".strip())


# --------------------------------------------------------------------------- report


COLUMNS = (("target", 18), ("sent", 7), ("NOERROR %", 10), ("SERVFAIL", 9), ("lost", 6),
           ("other", 6), ("cuts", 6))  # fmt: skip


def table(results: list[Result], args: argparse.Namespace) -> str:
    def line(cells: Sequence[str]) -> str:
        first, *rest = zip(cells, COLUMNS, strict=True)
        return f"{first[0]:<{first[1][1]}}" + "".join(f"{c:>{w + 1}}" for c, (_, w) in rest)

    lines = [
        f"{args.rate} queries/s for {args.duration:g} s, unique names; the relay cuts each "
        f"connection after {args.cut_after} TLS records from the server",
        "",
        line([name for name, _ in COLUMNS]),
    ]
    for r in results:
        if r.error:
            lines.append(f"{r.target:<18} FAILED: {r.error.splitlines()[0]}")
            continue
        share = r.noerror_share
        other = r.sent - r.noerror - r.servfail - r.lost
        lines.append(line([
            r.target, str(r.sent), fmt(None if share is None else share * 100, ".1f"),
            str(r.servfail), str(r.lost), str(other), fmt(r.cuts, "d"),
        ]))  # fmt: skip
    return "\n".join(lines)


def report(results: list[Result], idle: dict[int, float], args: argparse.Namespace) -> None:
    print(table(results, args))
    notes = [f"{r.target} failed:\n{r.error}" for r in results if r.error]
    busy = busy_note(idle)
    if busy:
        notes.insert(0, busy)
    if notes:
        print("\nnotes:\n" + "\n".join(notes))
    doc = {
        "rate": args.rate,
        "duration_s": args.duration,
        "cut_after_records": args.cut_after,
        "results": {r.target: {**asdict(r), "noerror_share": r.noerror_share} for r in results},
    }
    write_json(args.json, idle, doc)


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    common_options(parser, duration=10.0, duration_help="seconds per target")
    parser.add_argument("--rate", type=int, default=1000, help="queries per second (1000)")
    parser.add_argument(
        "--cut-after", type=int, default=30, help="TLS records per connection before the cut (30)"
    )
    parser.add_argument(
        "--silent",
        action="store_true",
        help="cut silently (no RST to the forwarder: a NAT that forgot the flow)",
    )
    parser.add_argument("--targets", default=",".join(TARGETS), help=f"subset of {TARGETS}")
    # the relay's own process
    parser.add_argument("--serve-proxy", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--proxy-port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--upstream", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.targets = [t for t in args.targets.split(",") if t]
    unknown = set(args.targets) - set(TARGETS)
    if unknown:
        parser.error(f"unknown targets {sorted(unknown)}")
    if not 1 <= args.duration <= 60 or not 1 <= args.rate <= 20_000 or args.cut_after < 1:
        parser.error("duration 1..60 s, rate 1..20000 q/s, cut-after at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve_proxy:
        return serve_proxy(args)
    check_cpus(("unbound", "dnsperf", "stubby", "dig", "kdig", "taskset"))
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, raise_on_signal)
    idle = background_load()
    with workspace(args.keep, "bench-resets-") as (children, tmp):
        plain, dot = free_ports(2)
        certs = make_certs(tmp)
        start_unbound(children, tmp, Ports(plain, dot, 0, 0), certs)
        # one name per query, and other names for each target: no cache anywhere hits
        count = int(args.rate * args.duration * 1.2) + 1000
        results = []
        for index, target in enumerate(args.targets):
            target_names = tmp / f"names-{target}.txt"
            write_query_file(target_names, index * count, count)
            setup = Setup(children, tmp, certs, dot, target_names, args)
            results.append(guarded(setup, target))
    report(results, idle, args)
    return 1 if any(r.error for r in results) else 0


if __name__ == "__main__":
    run_main(main)
