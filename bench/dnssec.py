#!/usr/bin/env python3
"""DNSSEC benchmark: what validation costs stubby-py, as ratios to ``--dnssec off``, in one run.

A private signed hierarchy (tests/dnssec_hierarchy.py: NSD authoritative for ``.``, ``test.`` and
its signed children, a non-validating Unbound recursive over DoT in front of it, all on
127.0.0.1) stands in for the Internet. stubby-py (CPU 0) forwards to that Unbound over DoT with
the private root's DS as its trust anchor; dnsperf and both servers sit on CPU 1.

1. Throughput, every query a cache miss (unique names, ``dnsperf -n 1``): max queries/s and
   stubby-py's CPU per query with validation off and on (key cache warm), for wildcard answers
   with an NSEC or NSEC3 proof and for NXDOMAIN answers in zones of different algorithms; and
   the same loads through Unbound as a validating forwarder at its defaults (same DoT upstream,
   same CPU, same trust anchor: the ``unbound`` rows, ``cpu/ub`` is stubby-py's ratio to it).
2. Latency of the first validated query to a zone (chain of trust fetched) vs a warm one (keys
   cached) vs validation off, p50 over a bounded number of fresh daemons. A full ``stubby-py
   flush`` would now empty the validator's key cache too, but a new daemon per round leaves
   nothing of the round before anywhere in the process (answers, keys, held failures, the
   upstream connection), so every round starts from the same state. See bench/README.md.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import dns.flags
import dns.message
import dns.rcode

from bench.harness import (
    CLK_TCK,
    FORWARDER_CPU,
    HOST,
    LOAD_CPU,
    MAX_CLIENTS,
    READY_TIMEOUT,
    Children,
    Dnsperf,
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
    others_seconds,
    pct,
    process_ticks,
    raise_on_signal,
    ratio_of,
    read_tail,
    run_main,
    set_affinity,
    stubby_py_command,
    udp_drops,
    vm_kib,
    workspace,
    write_json,
)
from stubby_py.daemon import control
from tests.dnssec_hierarchy import (
    Hierarchy,
    ZoneSpec,
    _apex,
    signed_hierarchy,
)

#: sizes each query file: above any rate reached here (Unbound answering from aggressive NSEC
#: passes 100,000 q/s); each row's file is removed after it
NAMES_PER_SECOND = 150_000
#: dnsperf -q: below forwarding.py's 500, so that the recursive Unbound and NSD (one core with
#: dnsperf) are not flooded; still far more than a validating stubby-py needs to stay busy
OUTSTANDING = 200
CHECK_QUERIES = 3  # sent one by one before a max-rate run: rcode and AD checked, keys warmed
OTHERS_LIMIT = 0.05  # other programs using more than this share of a core skew a row
TOOLS = ("unbound", "nsd", "dnsperf", "taskset", "dnssec-keygen", "dnssec-signzone")
COLD_ZONE_FULL = "ecdsap256.test."  # the first validated query of a daemon: . test. and this
COLD_ZONE_ONLY = "ed25519.test."  # then this one: only its own DS and DNSKEY are missing
READY_NAME = "www.test."  # answered 192.0.2.1 by the hierarchy


#: signed positive answers: a zone of this many names ``h<n> 0 A``, TTL 0 so that no cache
#: (stubby-py's, Unbound's, the upstream's) answers them: every query is validated afresh
POSITIVE_NAMES = 20_000
POSITIVE_ZONE = ZoneSpec(
    "pos.test.",
    _apex([f"h{n} 0 A 192.0.2.{n % 250 + 1}" for n in range(POSITIVE_NAMES)]),
)


@dataclass(frozen=True)
class Load:
    """One kind of query, every name new: ``<prefix><n>.<zone> <qtype>``; with `names`, the
    names ``h<n % names>.<zone>`` instead; with `parts`, the named loads in turn (a mix)."""

    zone: str
    qtype: str
    rcode: str  # what every answer must be
    kind: str  # loads of one kind share the validation-off baseline
    what: str
    signed: bool = True  # answers validate secure (AD); False: an unsigned zone (no AD)
    names: int = 0
    parts: tuple[str, ...] = ()

    def line(self, prefix: str, n: int) -> str:
        if self.parts:
            index = n % len(self.parts)
            return LOADS[self.parts[index]].line(f"{prefix}p{index}x", n // len(self.parts))
        name = f"h{n % self.names}" if self.names else f"{prefix}{n}"
        return f"{name}.{self.zone} {self.qtype}\n"

    def rcodes(self) -> set[str]:
        return {LOADS[p].rcode for p in self.parts} if self.parts else {self.rcode}

    def all_signed(self) -> bool:
        return all(LOADS[p].signed for p in self.parts) if self.parts else self.signed


LOADS: dict[str, Load] = {
    "wild-nsec": Load("wild.nsec.test.", "TXT", "NOERROR", "wild", "wildcard TXT + NSEC, P-256"),
    "wild-nsec3": Load("wild.nsec3.test.", "TXT", "NOERROR", "wild", "wildcard TXT + NSEC3, P-256"),
    "nx-nsec3": Load("nsec3.test.", "A", "NXDOMAIN", "nx", "NXDOMAIN + NSEC3, P-256"),
    # NODATA under a wildcard (*.wild has TXT only): every name new, the same proof each time
    "nodata-nsec": Load("wild.nsec.test.", "MX", "NOERROR", "nodata", "wildcard NODATA + NSEC"),
    **{
        f"nx-{zone}": Load(f"{zone}.test.", "A", "NXDOMAIN", "nx", f"NXDOMAIN + NSEC, alg {alg}")
        for zone, alg in (
            ("rsasha256", 8),
            ("rsasha512", 10),
            ("ecdsap256", 13),
            ("ecdsap384", 14),
            ("ed25519", 15),
            ("ed448", 16),
        )
    },
    # most of the DNS: an unsigned zone below a proven insecure delegation (the short path)
    "nx-insecure": Load("insecure.test.", "A", "NXDOMAIN", "nx", "NXDOMAIN, unsigned", False),
    # unsigned positive answers (an unsigned wildcard A): what most cached answers look like
    "a-insecure": Load("wild.insecure.test.", "A", "NOERROR", "a", "A, unsigned", False),
    # signed positive answers that no cache holds (TTL 0), from POSITIVE_NAMES names in turn
    "pos-signed": Load("pos.test.", "A", "NOERROR", "pos", "A, P-256, TTL 0", names=POSITIVE_NAMES),
    # what a validating stub sees: mostly unsigned answers, some signed, some denials
    "mixed": Load(
        "",
        "",
        "",
        "mixed",
        "a mix",
        False,
        parts=(
            "a-insecure",
            "a-insecure",
            "nx-insecure",
            "pos-signed",
            "wild-nsec",
            "nx-ecdsap256",
            "nodata-nsec",
        ),
    ),
}
DEFAULT_LOADS = (
    "wild-nsec", "wild-nsec3", "nodata-nsec", "nx-rsasha256", "nx-ecdsap256", "nx-ed25519",
    "nx-insecure", "pos-signed", "mixed",
)  # fmt: skip


# --------------------------------------------------------------------------- servers


def pin_servers(children: Children) -> list[int]:
    """Moves every process this script started so far (NSD, Unbound) to LOAD_CPU; returns the
    top-level ones, whose process trees are the upstream's CPU time."""
    me = os.getpid()
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int(
                    (entry / "stat").read_text().rsplit(")", 1)[1].split()[1]
                )
            except OSError:
                continue
    top = [p for p, pp in parents.items() if pp == me]
    tree, frontier = set(top), list(top)
    while frontier:
        parent = frontier.pop()
        kids = [p for p, pp in parents.items() if pp == parent and p not in tree]
        tree.update(kids)
        frontier.extend(kids)
    for pid in tree:
        try:
            set_affinity(pid, LOAD_CPU)
        except OSError:
            continue  # a short-lived helper that has gone
    return top


@dataclass(frozen=True)
class Bench:
    children: Children
    tmp: Path
    hierarchy: Hierarchy
    upstream_pids: tuple[int, ...]
    duration: float
    transport: str  # "dot" or "udp": how stubby-py reaches the recursive Unbound
    #: False: `aggressive_nsec: false` (what verify-once alone does, without RFC 8198)
    aggressive: bool = True

    def upstream_ticks(self) -> int:
        return sum(cpu_ticks(pid) for pid in self.upstream_pids)


class Daemon:
    """One stubby-py on FORWARDER_CPU forwarding to the hierarchy's Unbound over DoT."""

    def __init__(self, bench: Bench, mode: str, slug: str) -> None:
        self.bench, self.mode = bench, mode
        self.port = free_ports(1)[0]
        self.sock = bench.tmp / f"{slug}.sock"
        self.log = bench.tmp / f"{slug}.log"
        conf = bench.tmp / f"{slug}.yaml"
        conf.write_text(
            f'rate_limit: 0\nuser: null\ncache_file: false\ncontrol_socket: "{self.sock}"\n'
            + ("" if bench.aggressive else "aggressive_nsec: false\n")
        )
        h = bench.hierarchy
        argv = [
            "taskset",
            "-c",
            str(FORWARDER_CPU),
            *stubby_py_command(),
            "run",
            "-c",
            str(conf),
            "--listen",
            f"{HOST}:{self.port}",
            "--upstream",
            h.resolver_dot_upstream if bench.transport == "dot" else h.resolver_upstream,
            "--ca-file",
            str(h.ca_file),
            "--trust-anchors",
            str(h.anchor_ds_file),
            "--dnssec",
            mode,
        ]
        self.proc = bench.children.start(argv, self.log)

    def __enter__(self) -> Daemon:
        try:
            self.wait_ready()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.bench.children.stop(self.proc)

    def wait_ready(self) -> None:
        """Polls with a CD query (never validated: no chain fetched) until it is answered."""
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"stubby-py exited with {self.proc.returncode}")
            try:
                reply, _ = ask(self.port, READY_NAME, "A", cd=True, timeout=1.0)
            except OSError:
                reply = None
            if reply is not None and reply.rcode() == dns.rcode.NOERROR and reply.answer:
                return
            time.sleep(0.1)
        raise RuntimeError(f"stubby-py did not answer within {READY_TIMEOUT:.0f} s")

    def stats(self) -> dict[str, Any]:
        return control.request(str(self.sock), "stats", timeout=5.0)


class UnboundForwarder(Daemon):
    """Unbound as a validating forwarder on FORWARDER_CPU, at its defaults (module-config
    "validator iterator", one thread, aggressive-nsec as its version ships it), forwarding
    everything over DoT to the hierarchy's Unbound, with the same private root anchor. The
    only settings are where to listen, where to forward, and whom to trust; do-not-query-
    localhost: no lets it forward to 127.0.0.1 at all, and local-zone "test." nodefault lets
    the private hierarchy's test. through (Unbound answers it NXDOMAIN itself by default,
    RFC 6761)."""

    def __init__(self, bench: Bench, mode: str, slug: str) -> None:
        self.bench, self.mode = bench, mode
        self.port = free_ports(1)[0]
        directory = bench.tmp / f"{slug}-unbound"
        directory.mkdir()
        self.log = bench.tmp / f"{slug}.log"
        h = bench.hierarchy
        conf = directory / "unbound.conf"
        conf.write_text(
            "server:\n"
            "  verbosity: 0\n"
            '  chroot: ""\n'
            '  username: ""\n'
            f'  directory: "{directory}"\n'
            f'  pidfile: "{directory / "unbound.pid"}"\n'
            "  use-syslog: no\n"
            f"  interface: {HOST}@{self.port}\n"
            "  do-not-query-localhost: no\n"
            '  local-zone: "test." nodefault\n'
            f'  trust-anchor-file: "{h.anchor_ds_file}"\n'
            f'  tls-cert-bundle: "{h.ca_file}"\n'
            "remote-control:\n"
            "  control-enable: no\n"
            "forward-zone:\n"
            '  name: "."\n'
            "  forward-tls-upstream: yes\n"
            f"  forward-addr: {HOST}@{h.resolver_dot_port}#{h.dot_auth_name}\n"
        )
        argv = ["taskset", "-c", str(FORWARDER_CPU), "unbound", "-d", "-c", str(conf)]
        self.proc = bench.children.start(argv, self.log)

    def stats(self) -> dict[str, Any]:
        return {}  # no control socket: the secure/servfail counts stay unknown


def ask(
    port: int, name: str, qtype: str, *, cd: bool = False, timeout: float = 3.0
) -> tuple[dns.message.Message, float]:
    """One UDP query with AD set; (reply, seconds from send to receipt). OSError on timeout."""
    query = dns.message.make_query(name, qtype)
    query.flags |= dns.flags.AD  # RFC 6840 §5.7: without AD (or DO) no AD comes back
    if cd:
        query.flags |= dns.flags.CD
    wire = query.to_wire()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.connect((HOST, port))
        start = time.perf_counter()
        sock.send(wire)
        while True:  # bounded by the socket timeout
            data = sock.recv(65535)
            elapsed = time.perf_counter() - start
            reply = dns.message.from_wire(data)
            if reply.id == query.id:
                return reply, elapsed


def upstream_queries(stats: dict[str, Any]) -> int:
    return sum(int(u["queries"]) for u in stats["upstreams"])


# --------------------------------------------------------------------------- throughput


@dataclass
class Row:
    load: str
    mode: str
    #: which pass over the plan (--rounds); ratios are taken within a round
    round: int = 0
    max_rate: Dnsperf | None = None
    cpu_us_per_query: float | None = None
    upstream_cpu_us_per_query: float | None = None
    forwarder_core_busy: float | None = None
    load_core_busy: float | None = None
    others_share: float | None = None  # other programs' CPU in the run, share of one core
    listener_drops: int | None = None
    secure: int | None = None  # the daemon's dnssec_secure counter, over the run
    servfail: int | None = None
    check: str | None = None  # what the check queries got, when not what was expected
    error: str | None = None

    @property
    def label(self) -> str:
        return f"{self.mode} {self.load}"


def write_names(path: Path, load: Load, prefix: str, count: int) -> None:
    with path.open("w") as f:
        for start in range(0, count, 100_000):
            stop = min(start + 100_000, count)
            f.write("".join(load.line(prefix, n) for n in range(start, stop)))


def check_answers(daemon: Daemon, load: Load, prefix: str) -> str | None:
    """A few queries one by one (each part of a mix): the expected rcode, AD exactly when
    validating."""
    for key in dict.fromkeys(load.parts):
        wrong = check_answers(daemon, LOADS[key], f"{prefix}{key}")
        if wrong is not None:
            return f"{key}: {wrong}"
    if load.parts:
        return None
    for n in range(CHECK_QUERIES):
        name, qtype = load.line(f"{prefix}check", n).split()
        reply, _ = ask(daemon.port, name, qtype)
        rcode = dns.rcode.to_text(reply.rcode())
        ad = bool(reply.flags & dns.flags.AD)
        validating = daemon.mode in ("validate", "unbound")
        if rcode != load.rcode or ad != (validating and load.signed):
            return f"{rcode}, AD {'set' if ad else 'clear'}"
    return None


def measure_row(bench: Bench, index: int, key: str, mode: str) -> Row:
    load, row = LOADS[key], Row(key, mode)
    prefix = f"r{index}q"
    names = bench.tmp / f"row{index}.txt"
    write_names(names, load, prefix, int(NAMES_PER_SECOND * bench.duration))
    print(f"-- {row.label}: {bench.duration:g} s at max rate", file=sys.stderr, flush=True)
    try:
        forwarder = UnboundForwarder if mode == "unbound" else Daemon
        with forwarder(bench, mode, f"row{index}") as daemon:
            row.check = check_answers(daemon, load, prefix)
            pid, port = daemon.proc.pid, daemon.port
            stats0 = daemon.stats()
            ticks0, up0, drops0 = cpu_ticks(pid), bench.upstream_ticks(), udp_drops(port)
            others0, start, cores = process_ticks(), time.monotonic(), [core_times()]
            row.max_rate = dnsperf(
                bench.children,
                port,
                names,
                bench.duration,
                ["-c", str(MAX_CLIENTS), "-q", str(OUTSTANDING)],
                at=(bench.duration, lambda: cores.append(core_times())),
            )
            elapsed = time.monotonic() - start
            ticks1, up1, drops1 = cpu_ticks(pid), bench.upstream_ticks(), udp_drops(port)
            row.others_share = others_seconds(others0, process_ticks()) / elapsed
            stats1 = daemon.stats()
    except (RuntimeError, OSError, subprocess.SubprocessError, ValueError) as exc:
        row.error = f"{exc}\n{read_tail(bench.tmp / f'row{index}.log')}".strip()
        return row
    finally:
        names.unlink(missing_ok=True)
    done = max(row.max_rate.completed, 1)
    row.cpu_us_per_query = (ticks1 - ticks0) / CLK_TCK / done * 1e6
    row.upstream_cpu_us_per_query = (up1 - up0) / CLK_TCK / done * 1e6
    row.forwarder_core_busy = busy_share(cores[0], cores[-1], FORWARDER_CPU)
    row.load_core_busy = busy_share(cores[0], cores[-1], LOAD_CPU)
    row.listener_drops = drops1 - drops0
    if stats0 and stats1:
        counters0, counters1 = stats0["counters"], stats1["counters"]
        secure = ("dnssec_secure", "dnssec_synthesized")
        row.secure = sum(counters1.get(k, 0) - counters0.get(k, 0) for k in secure)
        row.servfail = stats1["servfail"] - stats0["servfail"]
    return row


def plan(loads: Sequence[str], unbound: bool = True) -> list[tuple[str, str]]:
    """(load, mode) in run order: each kind's validation-off baseline first; with `unbound`,
    Unbound validating the same load right after stubby-py."""
    rows: list[tuple[str, str]] = []
    for key in loads:
        kind = LOADS[key].kind
        if not any(LOADS[k].kind == kind and m == "off" for k, m in rows):
            rows.append((key, "off"))
        rows.append((key, "validate"))
        if unbound:
            rows.append((key, "unbound"))
    return rows


def unbound_row(rows: Sequence[Row], row: Row) -> Row | None:
    return next(
        (r for r in rows if r.mode == "unbound" and r.load == row.load and r.round == row.round),
        None,
    )


def baseline(rows: Sequence[Row], row: Row) -> Row | None:
    kind = LOADS[row.load].kind
    return next(
        (
            r
            for r in rows
            if r.mode == "off" and LOADS[r.load].kind == kind and r.round == row.round
        ),
        None,
    )


def cpu_ratio_to_unbound(rows: Sequence[Row], row: Row) -> float | None:
    ub = unbound_row(rows, row)
    return ratio_of(row.cpu_us_per_query, ub.cpu_us_per_query if ub else None)


def rounds_table(rows: Sequence[Row]) -> list[str]:
    """With --rounds N > 1: each validate row's CPU per query against Unbound's, round by round
    (each a stubby-py row and the Unbound row right after it), and their median. Rows measured
    minutes apart on a shared machine differ by ±30 %; the median of alternated rounds is the
    steadier figure."""
    rounds = sorted({r.round for r in rows})
    if len(rounds) < 2:
        return []
    lines = [
        f"cpu/ub by round ({len(rounds)} rounds, each row and its Unbound row back to back) "
        "and the median",
        "",
        f"{'row':<24}" + "".join(f"{f'r{n + 1}':>7}" for n in rounds) + f"{'median':>8}",
    ]
    labels = dict.fromkeys(r.label for r in rows if r.mode == "validate")
    for label in labels:
        ratios = []
        for n in rounds:
            row = next((r for r in rows if r.label == label and r.round == n), None)
            ratios.append(cpu_ratio_to_unbound(rows, row) if row else None)
        known = [x for x in ratios if x is not None]
        median = statistics.median(known) if known else None
        lines.append(
            f"{label:<24}"
            + "".join(f"{fmt(x, '.2f'):>7}" for x in ratios)
            + f"{fmt(median, '.2f'):>8}"
        )
    return lines


# --------------------------------------------------------------------------- cold chain


@dataclass
class Cold:
    """Latencies (ms) over fresh daemons; upstream queries the first validated query caused."""

    off: list[float] = field(default_factory=list)
    cold_full: list[float] = field(default_factory=list)
    cold_zone: list[float] = field(default_factory=list)
    warm: list[float] = field(default_factory=list)
    full_upstream_queries: list[int] = field(default_factory=list)
    zone_upstream_queries: list[int] = field(default_factory=list)
    others_share: float | None = None
    failures: list[str] = field(default_factory=list)


def timed(daemon: Daemon, name: str, qtype: str) -> tuple[float, int]:
    """(latency in ms, upstream queries it caused); raises if the answer is not as expected."""
    before = upstream_queries(daemon.stats())
    reply, seconds = ask(daemon.port, name, qtype)
    after = upstream_queries(daemon.stats())
    ad = bool(reply.flags & dns.flags.AD)
    if reply.rcode() != dns.rcode.NOERROR or not reply.answer or ad != (daemon.mode != "off"):
        raise RuntimeError(f"{name} {qtype}: {dns.rcode.to_text(reply.rcode())}, AD {ad}")
    return seconds * 1e3, after - before


def cold_round(bench: Bench, index: int, cold: Cold | None) -> None:
    """One fresh daemon of each mode; cold None: a warm-up round for Unbound, not recorded."""
    full, zone = f"www.{COLD_ZONE_FULL}", f"www.{COLD_ZONE_ONLY}"
    with Daemon(bench, "off", f"cold{index}-off") as daemon:
        off_ms, _ = timed(daemon, full, "A")
    with Daemon(bench, "validate", f"cold{index}-validate") as daemon:
        full_ms, full_n = timed(daemon, full, "A")
        warm_ms, _ = timed(daemon, full, "TXT")
        zone_ms, zone_n = timed(daemon, zone, "A")
        warm2_ms, _ = timed(daemon, zone, "TXT")
    if cold is not None:
        cold.off.append(off_ms)
        cold.cold_full.append(full_ms)
        cold.cold_zone.append(zone_ms)
        cold.warm += [warm_ms, warm2_ms]
        cold.full_upstream_queries.append(full_n)
        cold.zone_upstream_queries.append(zone_n)


def measure_cold(bench: Bench, rounds: int) -> Cold:
    print(f"-- cold chain: {rounds} rounds of two fresh daemons", file=sys.stderr, flush=True)
    cold = Cold()
    others0, start = process_ticks(), time.monotonic()
    for index in range(rounds + 1):
        try:
            cold_round(bench, index, cold if index else None)
        except (RuntimeError, OSError, ValueError) as exc:
            cold.failures.append(f"round {index}: {exc}")
    cold.others_share = others_seconds(others0, process_ticks()) / (time.monotonic() - start)
    return cold


# --------------------------------------------------------------------------- memory

MEMORY_NAMES = 100_000  # answers in the cache when the resident memory is read
MEMORY_TARGET_MIB = 64
MEMORY_FILL_LIMIT_S = 60  # a fill pass is cut off after this
MEMORY_FILL_PASSES = 5  # the first, and more for names lost on the way (a busy upstream's SERVFAIL)


@dataclass
class Memory:
    """A fresh daemon's resident memory before any query and with MEMORY_NAMES answers cached,
    filled with unique names of `loads` (split evenly); `mode` is its --dnssec."""

    loads: list[str]
    mode: str = "validate"
    rss_start_kib: int | None = None
    rss_full_kib: int | None = None
    hwm_full_kib: int | None = None
    #: the full RSS split: anonymous (heap, Python objects) and file-backed (the interpreter's
    #: and the extension modules' mapped code)
    anon_full_kib: int | None = None
    file_full_kib: int | None = None
    cache: dict[str, Any] = field(default_factory=dict)
    fill: list[Dnsperf] = field(default_factory=list)
    error: str | None = None


def measure_memory(
    bench: Bench, loads: Sequence[str], mode: str = "validate", total: int = MEMORY_NAMES
) -> Memory:
    memory = Memory(list(loads), mode)
    print(
        f"-- memory: {total:,} answers with --dnssec {mode} ({','.join(loads)})",
        file=sys.stderr,
        flush=True,
    )
    names = bench.tmp / "memory.txt"
    with names.open("w") as f:
        for i, key in enumerate(loads):
            load, count = LOADS[key], total // len(loads) + (i < total % len(loads))
            f.write("".join(load.line("m", n) for n in range(count)))
    try:
        with Daemon(bench, mode, f"memory-{mode}") as daemon:
            memory.rss_start_kib = vm_kib(daemon.proc.pid)
            for _ in range(MEMORY_FILL_PASSES):
                memory.fill.append(
                    dnsperf(
                        bench.children,
                        daemon.port,
                        names,
                        MEMORY_FILL_LIMIT_S,
                        ["-c", str(MAX_CLIENTS), "-q", str(OUTSTANDING)],
                    )
                )
                time.sleep(0.5)  # answers still in flight settle
                memory.cache = daemon.stats()["cache"]
                if memory.cache["entries"] >= total:
                    break
            memory.rss_full_kib = vm_kib(daemon.proc.pid)
            memory.hwm_full_kib = vm_kib(daemon.proc.pid, "VmHWM")
            memory.anon_full_kib = vm_kib(daemon.proc.pid, "RssAnon")
            memory.file_full_kib = vm_kib(daemon.proc.pid, "RssFile")
    except (RuntimeError, OSError, subprocess.SubprocessError, ValueError) as exc:
        memory.error = f"{exc}\n{read_tail(bench.tmp / f'memory-{mode}.log')}".strip()
    finally:
        names.unlink(missing_ok=True)
    return memory


def memory_table(memories: Sequence[Memory]) -> list[str]:
    if not memories:
        return []
    lines = [
        f"resident memory, answers from {','.join(memories[0].loads)} "
        f"(unique names, each asked once); target < {MEMORY_TARGET_MIB} MiB with validation on"
    ]
    for memory in memories:
        if memory.error or memory.rss_full_kib is None or memory.rss_start_kib is None:
            lines.append(
                f"  --dnssec {memory.mode}: FAILED: {(memory.error or '?').splitlines()[0]}"
            )
            continue
        full = memory.rss_full_kib / 1024
        verdict = "met" if full < MEMORY_TARGET_MIB else "NOT met"
        if memory.mode != "validate":
            verdict = "for comparison"
        if memory.cache.get("entries", 0) < MEMORY_NAMES:
            # answers with TTL 0 and answers synthesized from held records are not cached
            verdict = f"not comparable, fewer than {MEMORY_NAMES:,} answers cached"
        rcodes: dict[str, int] = {}
        for run in memory.fill:
            for k, v in run.rcodes.items():
                rcodes[k] = rcodes.get(k, 0) + v
        lines += [
            f"  --dnssec {memory.mode}",
            f"    at start, before any query  {memory.rss_start_kib / 1024:>7.1f} MiB",
            f"    {memory.cache.get('entries', 0):,} answers cached     {full:>7.1f} MiB   "
            f"{verdict}",
            f"    the cache's share {(memory.rss_full_kib - memory.rss_start_kib) / 1024:.1f} MiB "
            f"(its own count {memory.cache.get('bytes', 0) / 2**20:.1f} MiB); peak RSS (VmHWM) "
            f"{fmt((memory.hwm_full_kib or 0) / 1024, '.1f')} MiB; fill answers {rcodes}",
            f"    of the full RSS: anonymous {(memory.anon_full_kib or 0) / 1024:.1f} MiB, "
            f"file-backed (mapped code) {(memory.file_full_kib or 0) / 1024:.1f} MiB",
        ]
    return lines


# --------------------------------------------------------------------------- report


def _p50(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


COLUMNS = (
    ("row", 24),
    ("max qps", 8),
    ("lost", 6),
    ("cpu µs/q", 9),
    ("upstr µs/q", 11),
    ("qps/off", 9),
    ("cpu/off", 9),
    ("cpu/ub", 8),
    ("cpu0 %", 7),
    ("cpu1 %", 7),
    ("others %", 9),
)


def throughput_table(rows: Sequence[Row]) -> list[str]:
    def line(cells: Sequence[str]) -> str:
        first, *rest = zip(cells, COLUMNS, strict=True)
        return f"{first[0]:<{first[1][1]}}" + "".join(f"{c:>{w + 1}}" for c, (_, w) in rest)

    lines = [
        "throughput, every query a cache miss (dnsperf -c 4 -q 200, unique names); "
        "qps/off, cpu/off: ratio to the validation-off row of the same kind; cpu/ub: to the "
        "unbound row (Unbound 'validator iterator' forwarding over DoT, its defaults) of the load",
        "",
        line([name for name, _ in COLUMNS]),
    ]
    several = any(row.round for row in rows)
    for row in rows:
        label = f"r{row.round + 1} {row.label}" if several else row.label
        if row.max_rate is None:
            lines.append(f"{label:<24} FAILED: {(row.error or '?').splitlines()[0]}")
            continue
        base = baseline(rows, row)
        base_qps = base.max_rate.qps if base and base.max_rate else None
        base_cpu = base.cpu_us_per_query if base else None
        ub = unbound_row(rows, row) if row.mode == "validate" else None
        ub_cpu = ub.cpu_us_per_query if ub else None
        lines.append(
            line(
                [
                    label,
                    f"{row.max_rate.qps:.0f}",
                    str(row.max_rate.lost),
                    fmt(row.cpu_us_per_query, ".1f"),
                    fmt(row.upstream_cpu_us_per_query, ".1f"),
                    fmt(ratio_of(row.max_rate.qps, base_qps), ".2f"),
                    fmt(ratio_of(row.cpu_us_per_query, base_cpu), ".2f"),
                    fmt(ratio_of(row.cpu_us_per_query, ub_cpu), ".2f"),
                    pct(row.forwarder_core_busy),
                    pct(row.load_core_busy),
                    pct(row.others_share),
                ]
            )
        )
    return lines


def cold_summary(cold: Cold) -> dict[str, Any]:
    off, warm = _p50(cold.off), _p50(cold.warm)
    full, zone = _p50(cold.cold_full), _p50(cold.cold_zone)
    return {
        "p50_ms": {"off": off, "warm": warm, "cold_zone": zone, "cold_full": full},
        "ratios": {
            "warm/off": ratio_of(warm, off),
            "cold_zone/warm": ratio_of(zone, warm),
            "cold_full/warm": ratio_of(full, warm),
        },
        "upstream_queries_p50": {
            "cold_full": _p50(cold.full_upstream_queries),
            "cold_zone": _p50(cold.zone_upstream_queries),
        },
    }


def cold_table(cold: Cold) -> list[str]:
    s = cold_summary(cold)
    p50, ratio, ups = s["p50_ms"], s["ratios"], s["upstream_queries_p50"]
    rounds = len(cold.cold_full)
    return [
        f"latency of one query through a fresh daemon, p50 over {rounds} rounds "
        f"(others {pct(cold.others_share)} % of a core meanwhile)",
        "",
        f"{'query':<44}{'p50 ms':>8}{'/warm':>8}{'upstream q':>12}",
        f"{'off: ' + COLD_ZONE_FULL + ' A, validation off':<44}{fmt(p50['off'], '.3f'):>8}"
        f"{fmt(ratio_of(p50['off'], p50['warm']), '.2f'):>8}{1:>12}",
        f"{'warm: same zone, keys cached (TXT)':<44}{fmt(p50['warm'], '.3f'):>8}{1.0:>8.2f}{1:>12}",
        f"{'cold zone: ' + COLD_ZONE_ONLY + ' (. test. cached)':<44}"
        f"{fmt(p50['cold_zone'], '.3f'):>8}{fmt(ratio['cold_zone/warm'], '.2f'):>8}"
        f"{fmt(ups['cold_zone'], '.0f'):>12}",
        f"{'cold chain: first query (. test. zone)':<44}{fmt(p50['cold_full'], '.3f'):>8}"
        f"{fmt(ratio['cold_full/warm'], '.2f'):>8}{fmt(ups['cold_full'], '.0f'):>12}",
        "",
        f"warm / off p50: {fmt(ratio['warm/off'], '.2f')}",
    ]


def row_notes(row: Row) -> list[str]:
    if row.error or row.max_rate is None:
        return [f"{row.label} failed:\n{row.error}"]
    out, run = [], row.max_rate
    expected = LOADS[row.load].rcodes()
    odd = {k: v for k, v in run.rcodes.items() if k not in expected}
    if odd:
        out.append(f"{row.label}: answers other than {'/'.join(sorted(expected))}: {odd}")
    if row.check:
        out.append(f"{row.label}: check queries got {row.check}")
    signed = LOADS[row.load].all_signed()
    # secure: validated upstream answers and answers proven from held records (RFC 8198)
    if row.mode == "validate" and signed and row.secure is not None and row.secure < run.completed:
        out.append(f"{row.label}: only {row.secure} of {run.completed} answers validated secure")
    if run.lost:
        out.append(
            f"{row.label}: {run.lost} lost ({row.listener_drops} dropped at the forwarder's full "
            "UDP socket)"
        )
    if run.ran_out_of_names:
        out.append(f"{row.label}: ran out of names; raise NAMES_PER_SECOND")
    if row.others_share and row.others_share > OTHERS_LIMIT:
        out.append(f"NOT CLEAN: {row.label}: other programs took {row.others_share:.0%} of a core")
    if row.load_core_busy and row.load_core_busy > 0.9:
        out.append(f"{row.label}: cpu{LOAD_CPU} {row.load_core_busy:.0%} busy (dnsperf + upstream)")
    return out


def notes(rows: Sequence[Row], cold: Cold | None, idle: dict[int, float]) -> list[str]:
    busy = busy_note(idle)
    out = [f"NOT CLEAN: {busy}"] if busy else []
    for row in rows:
        out += row_notes(row)
    if cold is not None:
        out += [f"cold chain {f}" for f in cold.failures]
        if cold.others_share and cold.others_share > OTHERS_LIMIT:
            out.append(
                f"NOT CLEAN: cold chain: other programs took {cold.others_share:.0%} of a core"
            )
    return out


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    common_options(
        parser,
        duration=10.0,
        duration_help="seconds per row",
        keep_help="keep the temp dir (logs, zones)",
    )
    parser.add_argument(
        "--loads",
        default=",".join(DEFAULT_LOADS),
        help=f"comma-separated subset of {','.join(LOADS)} (default {','.join(DEFAULT_LOADS)})",
    )
    parser.add_argument(
        "--cold-rounds", type=int, default=10, help="fresh-daemon rounds for cold latency (10)"
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="passes over the throughput rows (1); with more, a table of each validate row's "
        "CPU ratio to Unbound per round and the median",
    )
    parser.add_argument(
        "--transport",
        choices=("dot", "udp"),
        default="dot",
        help="stubby-py to the recursive Unbound: DoT (default) or plain UDP",
    )
    parser.add_argument(
        "--no-unbound", action="store_true", help="leave out the Unbound validating forwarder rows"
    )
    parser.add_argument(
        "--no-aggressive-nsec",
        action="store_true",
        help="stubby-py with aggressive_nsec: false (every question goes upstream)",
    )
    parser.add_argument(
        "--memory",
        default="a-insecure",
        help="loads whose unique names fill a validating daemon's cache to 100,000 answers "
        "before its RSS is read (comma-separated; '' leaves the measurement out; default "
        "a-insecure: unsigned A answers proven insecure below the signed test.)",
    )
    parser.add_argument(
        "--memory-modes",
        default="validate,off",
        help="--dnssec modes whose memory is measured, each in a fresh daemon (default "
        "validate,off: the target is for validate, off shows what validation adds)",
    )
    args = parser.parse_args(argv)
    args.memory_modes = [mode for mode in args.memory_modes.split(",") if mode]
    if set(args.memory_modes) - {"validate", "off"}:
        parser.error("--memory-modes: validate and/or off")
    args.loads = [key for key in args.loads.split(",") if key]
    args.memory = [key for key in args.memory.split(",") if key]
    unknown = (set(args.loads) | set(args.memory)) - set(LOADS)
    if unknown:
        parser.error(f"unknown loads {sorted(unknown)}")
    if not 1 <= args.duration <= 60 or not 0 <= args.cold_rounds <= 100:
        parser.error("duration: 1..60 s; cold-rounds: 0..100")
    return args


def run(args: argparse.Namespace, children: Children, tmp: Path) -> Iterator[Row | Cold | Memory]:
    with signed_hierarchy(tmp / "hierarchy", [POSITIVE_ZONE]) as hierarchy:
        upstreams = tuple(pin_servers(children))
        bench = Bench(
            children, tmp, hierarchy, upstreams, args.duration, args.transport,
            not args.no_aggressive_nsec,
        )  # fmt: skip
        steps = plan(args.loads, not args.no_unbound)
        for round_ in range(args.rounds):
            for index, (key, mode) in enumerate(steps):
                # a row's names are its own in every round: each query stays a cache miss
                row = measure_row(bench, round_ * len(steps) + index, key, mode)
                row.round = round_
                yield row
        if args.cold_rounds:
            yield measure_cold(bench, args.cold_rounds)
        for mode in args.memory_modes if args.memory else ():
            yield measure_memory(bench, args.memory, mode)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    check_cpus(TOOLS)
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, raise_on_signal)
    idle = background_load()
    rows: list[Row] = []
    cold: Cold | None = None
    memories: list[Memory] = []
    with workspace(args.keep, prefix="bench-dnssec-") as (children, tmp):
        for result in run(args, children, tmp):
            if isinstance(result, Row):
                rows.append(result)
            elif isinstance(result, Memory):
                memories.append(result)
            else:
                cold = result
    print("\n".join(throughput_table(rows)))
    if by_round := rounds_table(rows):
        print("\n" + "\n".join(by_round))
    if cold is not None:
        print("\n" + "\n".join(cold_table(cold)))
    if memories:
        print("\n" + "\n".join(memory_table(memories)))
    found = notes(rows, cold, idle)
    print("\nnotes:\n" + "\n".join(found) if found else "\nclean run: no notes")
    doc = {
        "duration_s": args.duration,
        "transport": args.transport,
        "rows": [asdict(r) for r in rows],
        "cold": {**asdict(cold), **cold_summary(cold)} if cold else None,
        "memory": [asdict(memory) for memory in memories],
    }
    write_json(args.json, idle, doc)
    failed = (
        any(r.error for r in rows)
        or (cold and cold.failures)
        or any(memory.error for memory in memories)
    )
    return 1 if failed else 0


if __name__ == "__main__":
    run_main(main)
