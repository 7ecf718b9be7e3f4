#!/usr/bin/env python3
"""Probing benchmark: the CPU an idle daemon spends on background probes at the default rate.

Six local DoT upstreams (as many as the built-in pool has; tests/servers/stream.py LocalUpstream,
trustme CA, in a process of their own), two stubby-py daemons on them side by side, idle (no
client query after the first that shows they answer): one with `probe_interval: 60` (the
default), one with `probe_interval: 0`. After --duration seconds, each daemon's CPU seconds (utime
+ stime from /proc) and the difference, as a share of one core; the probes counted from
`stubby-py stats --json` show they ran. Nothing leaves loopback.

    python -m bench.probing --duration 600
"""

from __future__ import annotations

import argparse
import json
import signal
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from bench.harness import (
    AUTH_NAME,
    CLK_TCK,
    DNSSEC_OFF,
    HOST,
    common_options,
    cpu_ticks,
    free_ports,
    make_certs,
    module_argv,
    read_tail,
    run_main,
    wait_until_answers,
    workspace,
)
from stubby_py.core.config import DEFAULT_UPSTREAMS

UPSTREAMS = len(DEFAULT_UPSTREAMS)
SETTINGS = {"probing on (60 s)": 60, "probing off": 0}
DAEMON_CONF = """upstreams:
{upstreams}
probe_interval: {interval}
user: null
cache_file: false
control_socket: "{socket}"
"""


def serve_upstreams(args: argparse.Namespace) -> int:
    from tests.servers import LocalUpstream

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(args.cert, args.key)
    servers = [LocalUpstream(context).start() for _ in range(UPSTREAMS)]
    done = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: done.set())
    try:
        Path(args.port_file).write_text(json.dumps([s.port for s in servers]) + "\n")
        done.wait()
        counts = [len(s.state.queries) for s in servers]
        Path(args.port_file).with_suffix(".queries").write_text(json.dumps(counts) + "\n")
    finally:
        for server in servers:
            server.stop()
    return 0


def start_upstreams(
    children: Any, tmp: Path, certs: Any
) -> tuple[subprocess.Popen[bytes], list[int]]:
    port_file = tmp / "upstreams.ports"
    argv = [*module_argv("bench.probing"), "--serve-upstreams", "--cert", str(certs.cert)]
    argv += ["--key", str(certs.key), "--port-file", str(port_file)]
    proc = children.start(argv, tmp / "upstreams.log")
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if port_file.exists() and port_file.read_text().endswith("\n"):
            return proc, list(json.loads(port_file.read_text()))
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    raise RuntimeError(f"the upstreams did not start:\n{read_tail(tmp / 'upstreams.log')}")


def probe_samples(sock: Path) -> int:
    out = subprocess.run(
        [sys.executable, "-m", "stubby_py", "stats", "--json", "--socket", str(sock)],
        capture_output=True, text=True, timeout=10, check=True,
    ).stdout  # fmt: skip
    return sum(u["probe"]["samples"] for u in json.loads(out)["upstreams"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common_options(parser, duration=300.0, duration_help="seconds the daemons stay idle")
    parser.add_argument("--serve-upstreams", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--cert", help=argparse.SUPPRESS)
    parser.add_argument("--key", help=argparse.SUPPRESS)
    parser.add_argument("--port-file", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_upstreams:
        return serve_upstreams(args)
    with workspace(args.keep, prefix="bench-probing-") as (children, tmp):
        certs = make_certs(tmp)
        _, ports = start_upstreams(children, tmp, certs)
        uris = "\n".join(f"  - tls://{HOST}:{p}#{AUTH_NAME}" for p in ports)
        daemons: dict[str, tuple[subprocess.Popen[bytes], Path]] = {}
        ports_of = free_ports(len(SETTINGS))
        for (label, interval), port in zip(SETTINGS.items(), ports_of, strict=True):
            slug = f"interval-{interval}"
            conf, sock = tmp / f"{slug}.yaml", tmp / f"{slug}.sock"
            conf.write_text(DAEMON_CONF.format(upstreams=uris, interval=interval, socket=sock))
            argv = [sys.executable, "-m", "stubby_py", "run", "-c", str(conf), "--listen"]
            argv += [f"{HOST}:{port}", "--ca-file", str(certs.ca), *DNSSEC_OFF]
            proc = children.start(argv, tmp / f"{slug}.log")
            wait_until_answers(children, proc, port, f"stubby-py ({label})")
            daemons[label] = (proc, sock)
        before = {label: cpu_ticks(proc.pid) for label, (proc, _) in daemons.items()}
        time.sleep(args.duration)
        after = {label: cpu_ticks(proc.pid) for label, (proc, _) in daemons.items()}
        probes = {label: probe_samples(sock) for label, (_, sock) in daemons.items()}
    seconds = {label: (after[label] - before[label]) / CLK_TCK for label in daemons}
    on, off = (seconds[label] for label in SETTINGS)
    result = {
        "duration_s": args.duration,
        "upstreams": UPSTREAMS,
        "cpu_seconds": seconds,
        "probes_answered": probes,
        "probing_cpu_share_of_one_core": (on - off) / args.duration,
    }
    print(f"idle {args.duration:.0f} s, {UPSTREAMS} local DoT upstreams")
    for label in SETTINGS:
        print(f"  {label:18} CPU {seconds[label]:7.2f} s  probes answered {probes[label]}")
    share = 100 * (on - off) / args.duration
    print(f"probing costs {on - off:.2f} CPU s in {args.duration:.0f} s: {share:.3f} % of one core")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    run_main(main)
