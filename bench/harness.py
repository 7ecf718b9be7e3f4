"""The harness every benchmark shares: local peers, dnsperf, CPU from /proc, reports, options.

- child processes (`Children`: each in its own session, killed with this process) and the temp
  dir they log to (`workspace`);
- the local peers: a throw-away CA (`make_certs`), Unbound serving ``*.bench`` over UDP, DoT and
  optionally DoH (`start_unbound`, `start_doh_unbound`), Stubby's config, the aioquic test
  servers in a process of their own (`start_quic_server`), the stubby-py command line;
- dnsperf: query files of unique names, one run and its parsed output (`dnsperf`, `Dnsperf`);
- measurement from /proc: CPU ticks of a process tree, per core and of everything else, UDP
  drops, memory (`cpu_ticks`, `core_times`, `process_ticks`, `vm_kib`, `udp_drops`);
- reports: cells (`fmt`, `pct`, `ratio_of`), notes on runs and on a busy machine, JSON output;
- command lines: `common_options` (--duration, --json, --keep) and `run_main`.

Scripts run as modules from the repository root: ``python -m bench.forwarding``.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import trustme

# no stubby-py a benchmark starts may learn this machine's own resolver (`network_resolver:
# auto`) and send it the captive-portal check names when a local upstream fails
os.environ.setdefault("STUBBY_PY_NETWORK_STATE_ROOT", tempfile.mkdtemp(prefix="bench-netstate-"))

FORWARDER_CPU = 0  # the process under test
LOAD_CPU = 1  # dnsperf, and the upstream Unbound while a forwarder is measured
HOST = "127.0.0.1"
AUTH_NAME = "bench.test"
ZONE = "bench"
ANSWER = "192.0.2.1"
FIXED_QPS = 2000
MAX_QPS_CAP = 250_000  # sizes the max-rate query file so names stay unique for a whole run
MAX_CLIENTS = 4
MAX_OUTSTANDING = 500
READY_TIMEOUT = 15.0
QUERY_TIMEOUT = 2  # dnsperf -t: a query unanswered after this many seconds counts as lost
CLK_TCK = os.sysconf("SC_CLK_TCK")
IDLE_LIMIT = 0.1  # a core busier than this before the run earns a warning
KTHREADD = 2  # the parent of the kernel's threads
#: stubby-py validates by default; Stubby and Unbound-as-forwarder here do not, and the local
#: data is unsigned (no chain from the root anchors), so every stubby-py run turns it off
DNSSEC_OFF = ("--dnssec", "off")
DOH_PATH = "/dns-query"

# --------------------------------------------------------------------------- child processes


def _die_with_parent() -> None:
    """Runs in the child before exec: SIGKILL it if this script dies, even by SIGKILL."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class Children:
    """Every process this script starts, each in its own session; all are killed on close."""

    def __init__(self) -> None:
        self._procs: list[subprocess.Popen[bytes]] = []

    def _spawn(self, argv: Sequence[str], stdout: Any, stderr: Any) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            start_new_session=True,  # Ctrl-C reaches only this script, which then stops them
            preexec_fn=_die_with_parent,
        )
        self._procs.append(proc)
        return proc

    def start(self, argv: Sequence[str], log: Path) -> subprocess.Popen[bytes]:
        """Starts a server in the background, its stdout and stderr to log."""
        with log.open("wb") as out:
            return self._spawn(argv, out, subprocess.STDOUT)

    def run(
        self,
        argv: Sequence[str],
        timeout: float,
        at: tuple[float, Callable[[], None]] | None = None,
    ) -> tuple[str, str]:
        """Runs argv to completion (killed after timeout); returns (stdout, stderr).

        at=(seconds, action) calls action that long after the start (or at exit if sooner)."""
        proc = self._spawn(argv, subprocess.PIPE, subprocess.PIPE)
        try:
            out, err = _communicate(proc, timeout, at)
        finally:
            self.stop(proc)
        return out.decode(errors="replace"), err.decode(errors="replace")

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        """SIGTERM the process group, SIGKILL it after 3 s."""
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=3)
        if proc in self._procs:
            self._procs.remove(proc)

    def close(self) -> None:
        for proc in list(self._procs):
            self.stop(proc)


def _communicate(
    proc: subprocess.Popen[bytes], timeout: float, at: tuple[float, Callable[[], None]] | None
) -> tuple[bytes, bytes]:
    if at is None:
        return proc.communicate(timeout=timeout)
    delay, action = at
    try:
        out, err = proc.communicate(timeout=delay)
    except subprocess.TimeoutExpired:
        action()
        return proc.communicate(timeout=timeout - delay)
    action()
    return out, err


def raise_on_signal(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def module_argv(module: str) -> list[str]:
    """The command that runs a bench module (``python -m bench.x``) in a child process."""
    return [sys.executable, "-m", module]


@contextlib.contextmanager
def workspace(keep: bool, prefix: str = "bench-forwarding-") -> Iterator[tuple[Children, Path]]:
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    children = Children()
    try:
        yield children, tmp
    finally:
        children.close()
        if keep:
            print(f"logs and configs kept in {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def read_tail(path: Path, size: int = 1500) -> str:
    return path.read_text(errors="replace")[-size:] if path.exists() else ""


# --------------------------------------------------------------------------- local peers


@dataclass(frozen=True)
class Certs:
    ca: Path
    cert: Path
    key: Path


@dataclass(frozen=True)
class Ports:
    plain: int
    dot: int
    stubby: int
    stubby_py: int


def free_ports(count: int) -> list[int]:
    """Ports free for both UDP and TCP on HOST (held open together so they differ)."""
    held: list[socket.socket] = []
    ports: list[int] = []
    try:
        while len(ports) < count:
            tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            held.append(tcp)
            tcp.bind((HOST, 0))
            port = tcp.getsockname()[1]
            udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            held.append(udp)
            with contextlib.suppress(OSError):
                udp.bind((HOST, port))
                ports.append(port)
    finally:
        for sock in held:
            sock.close()
    return ports


def make_certs(tmp: Path) -> Certs:
    ca = trustme.CA()
    server = ca.issue_cert(AUTH_NAME, HOST)
    certs = Certs(ca=tmp / "ca.pem", cert=tmp / "server.pem", key=tmp / "server.key")
    ca.cert_pem.write_to_path(str(certs.ca))
    server.cert_chain_pems[0].write_to_path(str(certs.cert))
    server.private_key_pem.write_to_path(str(certs.key))
    return certs


def unbound_conf(tmp: Path, ports: Ports, certs: Certs) -> str:
    """Only local zones, so Unbound never sends a packet anywhere; '.' static stops recursion."""
    return f"""server:
    interface: {HOST}@{ports.plain}
    interface: {HOST}@{ports.dot}
    tls-port: {ports.dot}
    tls-service-key: "{certs.key}"
    tls-service-pem: "{certs.cert}"
    do-daemonize: no
    chroot: ""
    username: ""
    directory: "{tmp}"
    pidfile: "{tmp}/unbound.pid"
    logfile: "{tmp}/unbound.log"
    use-syslog: no
    verbosity: 1
    num-threads: 1
    do-ip6: no
    do-not-query-localhost: yes
    module-config: "iterator"
    access-control: 127.0.0.0/8 allow
    so-rcvbuf: 4m
    so-sndbuf: 4m
    incoming-num-tcp: 1024
    stream-wait-size: 64m
    tcp-idle-timeout: 120000
    edns-tcp-keepalive: yes
    edns-tcp-keepalive-timeout: 120000
    local-zone: "." static
    local-data: ". 3600 IN SOA {AUTH_NAME}. hostmaster.{AUTH_NAME}. 1 3600 600 86400 60"
    local-zone: "{ZONE}." redirect
    local-data: "{ZONE}. 3600 IN A {ANSWER}"
remote-control:
    control-enable: no
"""


def stubby_conf(ports: Ports, certs: Certs) -> str:
    return f"""resolution_type: GETDNS_RESOLUTION_STUB
dns_transport_list:
  - GETDNS_TRANSPORT_TLS
tls_authentication: GETDNS_AUTHENTICATION_REQUIRED
tls_query_padding_blocksize: 128
edns_client_subnet_private: 1
round_robin_upstreams: 0
idle_timeout: 10000
tls_connection_retries: 5
tls_backoff_time: 1
timeout: 5000
tls_ca_file: "{certs.ca}"
listen_addresses:
  - {HOST}@{ports.stubby}
upstream_recursive_servers:
  - address_data: {HOST}
    tls_port: {ports.dot}
    tls_auth_name: "{AUTH_NAME}"
"""


def dig_answer(children: Children, port: int, name: str) -> str:
    out, _ = children.run(
        ["dig", "+short", "+tries=1", "+time=1", f"@{HOST}", "-p", str(port), name, "A"],
        timeout=5,
    )
    return out.strip()


def wait_until_answers(
    children: Children, proc: subprocess.Popen[bytes], port: int, what: str
) -> None:
    """Polls with dig until the server at port answers ``ready<i>.bench`` with ANSWER."""
    deadline = time.monotonic() + READY_TIMEOUT
    attempt = 0
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with status {proc.returncode} before answering")
        attempt += 1
        if dig_answer(children, port, f"ready{attempt}.{ZONE}") == ANSWER:
            return
        time.sleep(0.2)
    full, _ = children.run(
        ["dig", "+tries=1", "+time=2", f"@{HOST}", "-p", str(port), f"ready.{ZONE}"], timeout=6
    )
    raise RuntimeError(f"{what} did not answer {ANSWER} within {READY_TIMEOUT:.0f} s:\n{full}")


def check_dot(children: Children, ports: Ports, certs: Certs) -> None:
    argv = [
        "kdig",
        f"+tls-ca={certs.ca}",
        f"+tls-hostname={AUTH_NAME}",
        f"@{HOST}",
        "-p",
        str(ports.dot),
        f"x.{ZONE}",
    ]
    out, err = children.run(argv, timeout=10)
    if "TLS session" not in out or ANSWER not in out:
        raise RuntimeError(f"Unbound does not serve DoT: {shlex.join(argv)}\n{out}{err}")


def start_unbound(
    children: Children, tmp: Path, ports: Ports, certs: Certs
) -> subprocess.Popen[bytes]:
    conf = tmp / "unbound.conf"
    conf.write_text(unbound_conf(tmp, ports, certs))
    proc = children.start(
        ["taskset", "-c", str(LOAD_CPU), "unbound", "-d", "-c", str(conf)], tmp / "unbound.stderr"
    )
    try:
        wait_until_answers(children, proc, ports.plain, "unbound")
    except RuntimeError as exc:
        raise RuntimeError(f"{exc}\n{read_tail(tmp / 'unbound.log')}") from None
    check_dot(children, ports, certs)
    return proc


@dataclass(frozen=True)
class DoHPorts:
    plain: int
    dot: int
    doh: int


def unbound_doh_conf(tmp: Path, ports: DoHPorts, certs: Any) -> str:
    """forwarding.py's Unbound, plus its nghttp2 DoH server on ports.doh (same certificate)."""
    doh = (
        f"    interface: {HOST}@{ports.doh}\n"
        f"    https-port: {ports.doh}\n"
        f"    http-endpoint: {DOH_PATH}\n"
        "    http-notls-downstream: no\n"
    )
    return unbound_conf(tmp, ports, certs).replace("server:\n", "server:\n" + doh, 1)


def check_doh(children: Any, ports: DoHPorts, certs: Any) -> None:
    argv = [
        "kdig",
        f"+https={DOH_PATH}",
        f"+tls-ca={certs.ca}",
        f"+tls-hostname={AUTH_NAME}",
        f"@{HOST}",
        "-p",
        str(ports.doh),
        f"x.{ZONE}",
    ]
    out, err = children.run(argv, timeout=10)
    if ANSWER not in out:
        raise RuntimeError(f"Unbound does not serve DoH: {' '.join(argv)}\n{out}{err}")


def start_doh_unbound(
    children: Any, tmp: Path, ports: DoHPorts, certs: Any
) -> subprocess.Popen[bytes]:
    conf = tmp / "unbound.conf"
    conf.write_text(unbound_doh_conf(tmp, ports, certs))
    argv = ["taskset", "-c", str(LOAD_CPU), "unbound", "-d", "-c", str(conf)]
    proc = children.start(argv, tmp / "unbound.stderr")
    try:
        wait_until_answers(children, proc, ports.plain, "unbound")
        check_dot(children, ports, certs)
        check_doh(children, ports, certs)
    except RuntimeError as exc:
        raise RuntimeError(f"{exc}\n{read_tail(tmp / 'unbound.log')}") from None
    return proc


def start_quic_server(
    children: Any, tmp: Path, certs: Any, kind: str
) -> tuple[subprocess.Popen[bytes], int]:
    """One tests/servers/quic.py server ("doq" or "h3") in a process of its own on LOAD_CPU."""
    port_file = tmp / f"{kind}-server.port"
    argv = [
        "taskset",
        "-c",
        str(LOAD_CPU),
        *module_argv("bench.transports"),
        "--serve-quic",
        kind,
        "--cert",
        str(certs.cert),
        "--key",
        str(certs.key),
        "--port-file",
        str(port_file),
    ]
    proc = children.start(argv, tmp / f"{kind}-server.log")
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if port_file.exists() and port_file.read_text().strip():
            return proc, int(port_file.read_text())
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    children.stop(proc)
    raise RuntimeError(f"{kind} server did not start:\n{read_tail(tmp / f'{kind}-server.log')}")


def quic_uri(kind: str, port: int) -> str:
    if kind == "h3":
        return f"h3://{HOST}:{port}{DOH_PATH}"
    return f"quic://{HOST}:{port}#{AUTH_NAME}"


def start_resetting_proxy(
    children: Children, log: Path, port: int, upstream: int, cut_after: int, silent: bool
) -> subprocess.Popen[bytes]:
    """The connection-cutting TLS relay (tests/servers/tamper_proxy.py) on LOAD_CPU."""
    argv = [
        "taskset", "-c", str(LOAD_CPU), *module_argv("tests.servers.tamper_proxy"),
        "--port", str(port), "--upstream", str(upstream), "--cut-after", str(cut_after),
        *(["--silent"] if silent else []),
    ]  # fmt: skip
    proc = children.start(argv, log)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if "listening on" in read_tail(log):
            return proc
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    raise RuntimeError(f"the relay did not start:\n{read_tail(log)}")


def proxy_counts(log: Path) -> tuple[int | None, int | None]:
    """(connections, cuts) from the line the relay prints when it stops."""
    for line in read_tail(log, 4000).splitlines():
        if line.startswith("connections "):
            _, connections, _, cuts = line.split()
            return int(connections), int(cuts)
    return None, None


#: the stubby-py the bench runs when --stubby-py names one
_chosen_stubby_py: str | None = None


def stubby_py_command() -> list[str]:
    """The stubby-py given with --stubby-py, else the console script on PATH, else
    ``python -m stubby_py``."""
    if _chosen_stubby_py is not None:
        return [_chosen_stubby_py]
    exe = shutil.which("stubby-py")
    return [exe] if exe else [sys.executable, "-m", "stubby_py"]


class _ChooseStubbyPy(argparse.Action):
    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        global _chosen_stubby_py
        path = shutil.which(str(values))
        if path is None:
            parser.error(f"--stubby-py: {values} is not an executable")
        _chosen_stubby_py = path
        setattr(namespace, self.dest, path)


# --------------------------------------------------------------------------- dnsperf


def write_query_file(path: Path, first: int, count: int) -> None:
    """``q<N>.bench A`` for N in [first, first+count): names unique across runs of one target."""
    with path.open("w") as f:
        step = 100_000
        for start in range(first, first + count, step):
            stop = min(start + step, first + count)
            f.write("".join(f"q{n}.{ZONE} A\n" for n in range(start, stop)))


@dataclass
class Dnsperf:
    """The figures dnsperf prints, plus percentiles from its -v per-query lines."""

    sent: int = 0
    completed: int = 0
    lost: int = 0
    run_time_s: float = 0.0
    qps: float = 0.0
    avg_latency_ms: float = 0.0
    stddev_latency_ms: float | None = None
    p50_latency_ms: float | None = None
    p99_latency_ms: float | None = None
    rcodes: dict[str, int] = field(default_factory=dict)
    ran_out_of_names: bool = False


_SUMMARY: dict[str, tuple[str, Callable[[str], Any]]] = {
    "sent": (r"Queries sent:\s+(\d+)", int),
    "completed": (r"Queries completed:\s+(\d+)", int),
    "lost": (r"Queries lost:\s+(\d+)", int),
    "run_time_s": (r"Run time \(s\):\s+([\d.]+)", float),
    "qps": (r"Queries per second:\s+([\d.]+)", float),
    "avg_latency_ms": (r"Average Latency \(s\):\s+([\d.]+)", lambda s: float(s) * 1e3),
    "stddev_latency_ms": (r"Latency StdDev \(s\):\s+([\d.]+)", lambda s: float(s) * 1e3),
}


def parse_dnsperf(out: str) -> Dnsperf:
    if "Queries per second" not in out:
        raise RuntimeError(f"dnsperf printed no statistics:\n{out[-2000:]}")
    result = Dnsperf()
    for name, (pattern, convert) in _SUMMARY.items():
        match = re.search(pattern, out)
        if match:
            setattr(result, name, convert(match.group(1)))
    codes = re.search(r"Response codes:\s+(.*)", out)
    if codes:
        result.rcodes = {k: int(v) for k, v in re.findall(r"(\w+) (\d+) \(", codes.group(1))}
    result.ran_out_of_names = "end of file" in out
    latencies = [float(s) for s in re.findall(r"^> \S+ \S+ \S+ ([\d.]+)$", out, re.MULTILINE)]
    if len(latencies) >= 100:
        cuts = statistics.quantiles(latencies, n=100, method="inclusive")
        result.p50_latency_ms, result.p99_latency_ms = cuts[49] * 1e3, cuts[98] * 1e3
    return result


def dnsperf(
    children: Children,
    port: int,
    names: Path,
    duration: float,
    extra: Sequence[str],
    at: tuple[float, Callable[[], None]] | None = None,
    passes: int | None = 1,
) -> Dnsperf:
    """One bounded dnsperf run; each name is sent at most `passes` times (-n; None: dnsperf
    goes round the file until -l ends the run)."""
    argv = [
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
        *(["-n", str(passes)] if passes else []),
        "-l",
        f"{duration:g}",
        "-t",
        str(QUERY_TIMEOUT),
        *extra,
    ]
    out, _ = children.run(argv, timeout=duration + QUERY_TIMEOUT + 30, at=at)
    return parse_dnsperf(out)


# --------------------------------------------------------------------------- measurement from /proc


def cpu_ticks(pid: int) -> int:
    """utime+stime of pid and its live descendants, in clock ticks."""
    stats: dict[int, tuple[int, int]] = {}  # pid -> (ppid, ticks)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        stats[int(entry.name)] = (int(fields[1]), int(fields[11]) + int(fields[12]))
    tree, frontier = {pid}, [pid]
    while frontier:
        parent = frontier.pop()
        kids = [p for p, (ppid, _) in stats.items() if ppid == parent and p not in tree]
        tree.update(kids)
        frontier.extend(kids)
    return sum(stats[p][1] for p in tree if p in stats)


def core_times() -> dict[int, tuple[int, int]]:
    """(busy, total) jiffies per CPU from /proc/stat; idle and iowait count as not busy."""
    times = {}
    for line in Path("/proc/stat").read_text().splitlines():
        name, *values = line.split()
        if name.startswith("cpu") and name[3:].isdigit():
            jiffies = [int(v) for v in values[:8]]
            times[int(name[3:])] = sum(jiffies) - jiffies[3] - jiffies[4], sum(jiffies)
    return times


def busy_share(
    before: dict[int, tuple[int, int]], after: dict[int, tuple[int, int]], cpu: int
) -> float:
    return (after[cpu][0] - before[cpu][0]) / max(after[cpu][1] - before[cpu][1], 1)


def udp_drops(port: int) -> int:
    """Datagrams the kernel dropped at HOST:port sockets because their receive buffer was full."""
    local = f"{socket.htonl(0x7F000001):08X}:{port:04X}"  # /proc/net/udp spelling of HOST
    drops: dict[str, int] = {}  # inode -> drops (a socket may be listed twice)
    for line in Path("/proc/net/udp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == local:
            drops[fields[9]] = int(fields[12])
    return sum(drops.values())


def udp_rcvbuf_errors() -> int:
    """Datagrams dropped at any full UDP receive buffer on this host (Udp: RcvbufErrors)."""
    rows = [line.split() for line in Path("/proc/net/snmp").read_text().splitlines()]
    names, values = (r for r in rows if r[0] == "Udp:")
    return int(values[names.index("RcvbufErrors")])


@dataclass(frozen=True)
class Sample:
    """Counters read just before and just after a max-rate run."""

    target_ticks: int  # CPU of the target's process tree
    upstream_ticks: int  # CPU of the upstream Unbound (0 when Unbound is the target)
    drops: int  # receive-buffer drops at the target's UDP port
    host_drops: int  # receive-buffer drops at any UDP socket (dnsperf's included)

    @classmethod
    def take(cls, pid: int, upstream: int | None, port: int) -> Sample:
        upstream_ticks = cpu_ticks(upstream) if upstream else 0
        return cls(cpu_ticks(pid), upstream_ticks, udp_drops(port), udp_rcvbuf_errors())


def set_affinity(pid: int, cpu: int) -> None:
    for task in Path(f"/proc/{pid}/task").iterdir():
        os.sched_setaffinity(int(task.name), {cpu})


def vm_kib(pid: int, what: str = "VmRSS") -> int:
    """A size from /proc/PID/status (VmRSS, VmHWM, ...), in KiB."""
    match = re.search(rf"^{what}:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.M)
    if match is None:
        raise RuntimeError(f"no {what} in /proc/{pid}/status")
    return int(match.group(1))


def process_ticks() -> dict[int, tuple[int, int]]:
    """pid -> (ppid, utime+stime+cutime+cstime) of every process but the kernel's threads."""
    ticks = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ppid = int(fields[1])
        if ppid != KTHREADD and int(entry.name) != KTHREADD:
            ticks[int(entry.name)] = (ppid, sum(int(f) for f in fields[11:15]))
    return ticks


def others_seconds(before: dict[int, tuple[int, int]], after: dict[int, tuple[int, int]]) -> float:
    """CPU seconds used meanwhile by processes outside this script's tree. A process that ended
    in between has all its time added to its parent's children time: what it had used before is
    taken off again."""
    family = {**before, **after}
    ours, frontier = {os.getpid()}, [os.getpid()]
    while frontier:
        parent = frontier.pop()
        kids = [p for p, (pp, _) in family.items() if pp == parent and p not in ours]
        ours.update(kids)
        frontier.extend(kids)
    used = sum(t - before.get(p, (0, 0))[1] for p, (_, t) in after.items() if p not in ours)
    ended = sum(t for p, (_, t) in before.items() if p not in after and p not in ours)
    return max(used - ended, 0) / CLK_TCK


def background_load(seconds: float = 1.0) -> dict[int, float]:
    """How busy the two cores are before anything starts: other work skews every figure."""
    before = core_times()
    time.sleep(seconds)
    after = core_times()
    return {cpu: busy_share(before, after, cpu) for cpu in (FORWARDER_CPU, LOAD_CPU)}


def check_cpus(
    tools: Sequence[str] = ("unbound", "dnsperf", "stubby", "dig", "kdig", "taskset"),
) -> None:
    if not {FORWARDER_CPU, LOAD_CPU} <= os.sched_getaffinity(0):
        raise SystemExit(f"needs CPUs {FORWARDER_CPU} and {LOAD_CPU}")
    for tool in tools:
        if not shutil.which(tool):
            raise SystemExit(f"{tool} not found; see bench/README.md")


# --------------------------------------------------------------------------- results and reports


@dataclass
class Result:
    target: str
    max_rate: Dnsperf | None = None
    fixed_rate: Dnsperf | None = None
    cpu_us_per_query: float | None = None
    upstream_cpu_us_per_query: float | None = None
    forwarder_core_busy: float | None = None  # busy share of FORWARDER_CPU at max rate
    load_core_busy: float | None = None  # busy share of LOAD_CPU (dnsperf + upstream), ditto
    listener_drops: int | None = None  # datagrams dropped at the target's full UDP socket
    other_drops: int | None = None  # dropped at other full UDP sockets (e.g. dnsperf's)
    error: str | None = None


def record_counters(result: Result, before: Sample, after: Sample, has_upstream: bool) -> None:
    """CPU per completed query; dropped datagrams."""
    assert result.max_rate is not None
    done = max(result.max_rate.completed, 1)
    result.cpu_us_per_query = (after.target_ticks - before.target_ticks) / CLK_TCK / done * 1e6
    if has_upstream:
        upstream_s = (after.upstream_ticks - before.upstream_ticks) / CLK_TCK
        result.upstream_cpu_us_per_query = upstream_s / done * 1e6
    result.listener_drops = after.drops - before.drops
    result.other_drops = after.host_drops - before.host_drops - result.listener_drops


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def ratio_of(num: float | None, den: float | None) -> float | None:
    return num / den if num is not None and den else None


def pct(share: float | None) -> str:
    return fmt(None if share is None else share * 100, ".0f")


def run_notes(target: str, label: str, run: Dnsperf, duration: float) -> list[str]:
    notes = []
    odd = {k: v for k, v in run.rcodes.items() if k != "NOERROR"}
    if odd:
        notes.append(f"{target} {label}: answers other than NOERROR: {odd}")
    if run.lost:
        notes.append(f"{target} {label}: {run.lost} of {run.sent} queries lost")
    if run.ran_out_of_names or run.run_time_s < 0.95 * duration:
        notes.append(f"{target} {label}: ran only {run.run_time_s:.1f} s (names ran out?)")
    return notes


def lost_note(res: Result, lost: int) -> str:
    """Where the max-rate run's lost queries went, from the kernel's UDP drop counters."""
    at_target = min(res.listener_drops or 0, lost)
    text = (
        f"{res.target} max-rate: of {lost} lost, {at_target} were dropped at its full UDP socket "
        f"and {lost - at_target} never answered"
    )
    if res.other_drops:
        text += (
            f" (meanwhile {res.other_drops} datagrams were dropped at other full UDP sockets on "
            "the host: dnsperf's, or another program's)"
        )
    return text


def target_notes(res: Result, duration: float) -> list[str]:
    notes = [f"{res.target} failed:\n{res.error}"] if res.error else []
    for label, run in (("fixed-rate", res.fixed_rate), ("max-rate", res.max_rate)):
        if run is not None:
            notes += run_notes(res.target, label, run, duration)
    if res.max_rate and res.max_rate.lost:
        notes.append(lost_note(res, res.max_rate.lost))
    if res.load_core_busy and res.load_core_busy > 0.9:
        notes.append(
            f"{res.target} max-rate: cpu{LOAD_CPU} {res.load_core_busy:.0%} busy; the figure may "
            "be limited by dnsperf (+ upstream), not by the target"
        )
    return notes


def busy_note(idle: dict[int, float]) -> str | None:
    """What to say when a core was busy before the run (every figure is then skewed)."""
    if max(idle.values()) <= IDLE_LIMIT:
        return None
    busy = ", ".join(f"cpu{cpu} {share:.0%}" for cpu, share in idle.items())
    return f"the machine was busy before the run ({busy}): every figure is skewed"


def rounded(value: Any) -> Any:
    """The same JSON document with floats cut to 4 decimals."""
    if isinstance(value, float):
        return round(value, 4)
    if isinstance(value, dict):
        return {k: rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [rounded(v) for v in value]
    return value


def write_json(path: Path | None, idle: dict[int, float], doc: dict[str, Any]) -> None:
    """The figures as JSON, rounded, with how busy the cores were before the run."""
    if path is not None:
        doc = {**doc, "busy_before_run": {f"cpu{cpu}": share for cpu, share in idle.items()}}
        path.write_text(json.dumps(rounded(doc), indent=2) + "\n")


# --------------------------------------------------------------------------- command lines


def common_options(
    parser: argparse.ArgumentParser,
    *,
    duration: float | None = None,
    duration_help: str = "seconds per dnsperf run",
    keep_help: str = "keep the temp dir (logs, configs)",
    json_help: str = "also write the figures to this file",
) -> None:
    """--duration (when the bench has a default for it), --json FILE, --keep and --stubby-py."""
    if duration is not None:
        parser.add_argument(
            "--duration",
            type=float,
            default=duration,
            help=f"{duration_help} (default {duration:g})",
        )
    parser.add_argument("--json", type=Path, help=json_help)
    parser.add_argument("--keep", action="store_true", help=keep_help)
    parser.add_argument(
        "--stubby-py",
        action=_ChooseStubbyPy,
        metavar="PATH",
        help="the stubby-py to measure, e.g. the console script of a venv made with "
        "`pip install .` (default: stubby-py on PATH, else python -m stubby_py)",
    )


def run_main(main: Callable[[], int]) -> None:
    """Exit with main()'s status; Ctrl-C is status 130, without a traceback."""
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
