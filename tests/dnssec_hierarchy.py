"""A private signed DNS hierarchy for end-to-end DNSSEC tests (RFC 4033-4035, 5155, 9276).

Built fresh in a directory at test time, no keys committed: keys from ``dnssec-keygen`` (one CSK
per zone), zones signed with ``dnssec-signzone``, all of them served by one NSD on
127.0.0.1:<free port>, and a non-validating Unbound recursive (``module-config: "iterator"``) on
127.0.0.1 (plain and DoT) whose stub zones send every question to that NSD and nowhere else.
Queries through the Unbound come back with RRSIGs and denial records as the zones hold them, bogus
ones included, so a validator downstream sees exactly what each case is built to show.

``with signed_hierarchy(workdir) as h:`` builds, starts and returns a `Hierarchy`; on exit both
servers stop. The zone names below are a contract with the e2e tests; keep them as they are.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import subprocess
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Self

import dns.dnssec
import dns.dnssectypes
import dns.name
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.DNSKEY
import dns.rrset
import dns.zone
from cryptography.hazmat.primitives.asymmetric import ec

from tests.peers import (
    LOOPBACK,
    PeerError,
    TLSFiles,
    Unbound,
    _stop,
    _tail,
    _wait_until,
    answers_on_udp,
    free_ports,
    require_tool,
    write_tls_files,
)

NSD_PATHS = ("/usr/sbin/nsd",)
DOT_AUTH_NAME = "dns.test"
TTL = 300
NS_NAME = "ns.test."

#: signed children of test. with one algorithm each: zone -> algorithm number; each holds
#: ``www A 192.0.2.<number>`` and ``www TXT "alg <number>"``
ALGORITHM_ZONES: dict[str, int] = {
    "rsasha256.test.": 8,
    "rsasha512.test.": 10,
    "ecdsap256.test.": 13,
    "ecdsap384.test.": 14,
    "ed25519.test.": 15,
    "ed448.test.": 16,
}
#: zones for denial-of-existence proofs, NSEC and NSEC3 (iterations 0, no salt, no opt-out)
DENIAL_ZONES = ("nsec.test.", "nsec3.test.")
#: delegations without DS (RFC 4035 §5.2): the data below is insecure, served unsigned
UNSIGNED_ZONES: dict[str, str] = {
    "insecure.test.": "192.0.2.21",
    "unsigned.optout.test.": "192.0.2.20",
}
#: signed correctly, but with what RFC 8624 leaves to a validator: a SHA-1-only DS, an RSASHA1
#: key. ``www A 192.0.2.30``. A validator without them must call these insecure (RFC 4035 §5.2).
UNSUPPORTED_ZONES = ("sha1ds.test.", "rsasha1.test.")
#: NSEC3 with more iterations than RFC 9276 §3.2 lets validators accept
MANY_ITERATIONS_ZONE = "manyiter.test."
MANY_ITERATIONS = 200
#: broken on purpose, each signed with algorithm 13 and holding ``www A 192.0.2.40``; the value
#: is the RFC 8914 Extended DNS Error a validator should give for ``www <zone> A`` (``nx`` for
#: nonsec.test.) and what BIND's delv says about it
BOGUS_ZONES: dict[str, int] = {
    "expired.test.": 7,  # Signature Expired
    "future.test.": 8,  # Signature Not Yet Valid
    "badds.test.": 9,  # DNSKEY Missing: no DNSKEY matches the parent's DS
    "nosig.test.": 10,  # RRSIGs Missing
    "changed.test.": 6,  # DNSSEC Bogus: the A rdata no longer matches its RRSIG
    "badkeysig.test.": 6,  # DNSSEC Bogus (or 9): the DNSKEY RRset's RRSIG is corrupt
    "nonsec.test.": 12,  # NSEC Missing: NXDOMAIN without any proof
}
BOGUS_ADDRESS = "192.0.2.40"
CHANGED_ADDRESS = "192.0.2.66"


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _stamp(moment: datetime.datetime) -> str:
    """dnssec-signzone's absolute time form, YYYYMMDDHHMMSS in UTC."""
    return moment.strftime("%Y%m%d%H%M%S")


# --- post-signing edits on -O full output (one record per line: owner ttl class type rdata) ---

Edit = Callable[[list[str]], list[str]]


def _fields(line: str) -> list[str]:
    return [] if line.startswith(";") else line.split()


def _is(line: str, owner: str | None, rdtype: str, covered: str | None = None) -> bool:
    f = _fields(line)
    if len(f) < 5 or f[3] != rdtype or (owner is not None and f[0].lower() != owner):
        return False
    return covered is None or f[4] == covered


def _drop_rrsig(owner: str, covered: str) -> Edit:
    def edit(lines: list[str]) -> list[str]:
        kept = [ln for ln in lines if not _is(ln, owner, "RRSIG", covered)]
        if len(kept) == len(lines):
            raise PeerError(f"no RRSIG {covered} at {owner} to drop")
        return kept

    return edit


def _change_address(owner: str, new: str) -> Edit:
    def edit(lines: list[str]) -> list[str]:
        out = []
        for line in lines:
            if _is(line, owner, "A"):
                f = _fields(line)
                line = "\t".join([*f[:4], new])
            out.append(line)
        if out == lines:
            raise PeerError(f"no A at {owner} to change")
        return out

    return edit


def _corrupt_rrsig(owner: str, covered: str) -> Edit:
    """Change one base64 character of the signature, so it still decodes but cannot verify."""

    def edit(lines: list[str]) -> list[str]:
        out = []
        for line in lines:
            if _is(line, owner, "RRSIG", covered):
                f = _fields(line)
                signature = f[12]  # after type covered, alg, labels, ttl, exp, inc, tag, signer
                swapped = "B" if signature[4] == "A" else "A"
                f[12] = signature[:4] + swapped + signature[5:]
                line = "\t".join(f)
            out.append(line)
        if out == lines:
            raise PeerError(f"no RRSIG {covered} at {owner} to corrupt")
        return out

    return edit


def _drop_nsec(lines: list[str]) -> list[str]:
    return [ln for ln in lines if not (_is(ln, None, "NSEC") or _is(ln, None, "RRSIG", "NSEC"))]


# --- the zones ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ZoneSpec:
    """One zone of the hierarchy and how it is signed and delegated."""

    origin: str  # absolute, lower case
    body: tuple[str, ...]  # records relative to the origin, zone-file syntax
    #: dnssec-keygen algorithm name; None: served unsigned and delegated without DS
    algorithm: str | None = "ECDSAP256SHA256"
    #: None: NSEC; else (iterations, opt-out) with no salt
    nsec3: tuple[int, bool] | None = None
    #: DS digest types the parent publishes
    ds_digests: tuple[int, ...] = (2,)
    #: the parent's DS comes from another key than the one signing the zone
    ds_from_other_key: bool = False
    #: signature validity: (inception, expiration); None: dnssec-signzone's default
    validity: tuple[datetime.datetime, datetime.datetime] | None = None
    #: edits to the signed zone text
    edits: tuple[Edit, ...] = ()
    #: sign in Python (dnssec-signzone refuses NSEC3 iterations above 150)
    python_nsec3: bool = False

    @property
    def file_stem(self) -> str:
        return "root" if self.origin == "." else self.origin.rstrip(".")

    @property
    def parent(self) -> str | None:
        if self.origin == ".":
            return None
        return dns.name.from_text(self.origin).parent().to_text()


def _apex(extra: Sequence[str] = ()) -> tuple[str, ...]:
    return (
        f"@ {TTL} IN SOA {NS_NAME} hostmaster.test. 1 3600 600 86400 {TTL}",
        f"@ {TTL} IN NS {NS_NAME}",
        *extra,
    )


def _denial_body(other: str, *, dname: bool) -> tuple[str, ...]:
    records = [
        "www A 192.0.2.10",
        '*.wild TXT "wild"',
        "a.b.ent A 192.0.2.11",
        f"alias CNAME www.{other}",
        "to-insecure CNAME www.insecure.test.",
    ]
    if dname:
        records.append("dname DNAME nsec3.test.")
    return _apex(records)


def zone_specs() -> list[ZoneSpec]:
    """Every zone, parents before children."""
    now = _now()
    day = datetime.timedelta(days=1)
    bogus_www = ("www A " + BOGUS_ADDRESS,)
    zones = [
        ZoneSpec(".", _apex([f"{NS_NAME} A {LOOPBACK}"]), "ECDSAP256SHA256"),
        ZoneSpec("test.", _apex([f"ns A {LOOPBACK}", "www A 192.0.2.1"]), "RSASHA256"),
    ]
    for origin, number in ALGORITHM_ZONES.items():
        algorithm = dns.dnssectypes.Algorithm(number).name
        body = _apex([f"www A 192.0.2.{number}", f'www TXT "alg {number}"'])
        zones.append(ZoneSpec(origin, body, algorithm))
    zones += [
        ZoneSpec("nsec.test.", _denial_body("nsec3.test.", dname=True)),
        ZoneSpec("nsec3.test.", _denial_body("nsec.test.", dname=False), nsec3=(0, False)),
        ZoneSpec(
            "optout.test.",
            _apex(["www A 192.0.2.12", f"unsigned NS {NS_NAME}"]),
            nsec3=(0, True),
        ),
        ZoneSpec("sha1ds.test.", _apex(["www A 192.0.2.30"]), ds_digests=(1,)),
        ZoneSpec("rsasha1.test.", _apex(["www A 192.0.2.30"]), "RSASHA1"),
        ZoneSpec(
            MANY_ITERATIONS_ZONE,
            _apex(["www A 192.0.2.50"]),
            nsec3=(MANY_ITERATIONS, False),
            python_nsec3=True,
        ),
        ZoneSpec("expired.test.", _apex(bogus_www), validity=(now - 40 * day, now - 10 * day)),
        ZoneSpec("future.test.", _apex(bogus_www), validity=(now + 10 * day, now + 40 * day)),
        ZoneSpec("badds.test.", _apex(bogus_www), ds_from_other_key=True),
        ZoneSpec("nosig.test.", _apex(bogus_www), edits=(_drop_rrsig("www.nosig.test.", "A"),)),
        ZoneSpec(
            "changed.test.",
            _apex(bogus_www),
            edits=(_change_address("www.changed.test.", CHANGED_ADDRESS),),
        ),
        ZoneSpec(
            "badkeysig.test.",
            _apex(bogus_www),
            edits=(_corrupt_rrsig("badkeysig.test.", "DNSKEY"),),
        ),
        ZoneSpec("nonsec.test.", _apex(bogus_www), edits=(_drop_nsec,)),
    ]
    for origin, address in UNSIGNED_ZONES.items():
        body = _apex([f"www A {address}", f"*.wild A {address}"])
        zones.append(ZoneSpec(origin, body, algorithm=None))
    return zones


# --- building ---------------------------------------------------------------------------------


def _run(args: Sequence[str], cwd: Path) -> str:
    """Run a BIND tool; raise with its output if it fails."""
    done = subprocess.run(
        list(args), cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )
    if done.returncode != 0:
        raise PeerError(f"{' '.join(args)} exited with {done.returncode}:\n{done.stderr}")
    return done.stdout


def _run_all(commands: Sequence[tuple[Sequence[str], Path]]) -> list[str]:
    with ThreadPoolExecutor(max_workers=4) as pool:
        return list(pool.map(lambda c: _run(*c), commands))


@dataclass
class _Key:
    path: Path  # K<zone>+<alg>+<id>.key
    dnskey_line: str  # "<zone> IN DNSKEY ..." without comments


def _key_size(algorithm: str) -> list[str]:
    # 1024-bit RSA keeps key generation fast; the tool's minimum for every RSA algorithm
    return ["-b", "1024"] if algorithm.startswith("RSA") else []


class _Builder:
    def __init__(self, workdir: Path, tools: dict[str, str]) -> None:
        self.workdir = workdir
        self.tools = tools
        self.keydir = workdir / "keys"
        self.zonedir = workdir / "zones"
        self.keys: dict[str, _Key] = {}
        self.other_keys: dict[str, _Key] = {}

    def build(self, zones: Sequence[ZoneSpec]) -> None:
        self.keydir.mkdir(parents=True, exist_ok=True)
        self.zonedir.mkdir(parents=True, exist_ok=True)
        self._make_keys(zones)
        ds = self._make_ds(zones)
        texts = {z.origin: self._unsigned_text(z, zones, ds) for z in zones}
        for zone in zones:
            (self.zonedir / f"{zone.file_stem}.unsigned").write_text(texts[zone.origin])
        _run_all([self._sign_command(z) for z in zones if z.algorithm and not z.python_nsec3])
        for zone in zones:
            self._finish(zone)

    def _make_keys(self, zones: Sequence[ZoneSpec]) -> None:
        jobs: list[tuple[str, str, Path]] = []
        for zone in zones:
            if zone.algorithm is not None:
                jobs.append((zone.origin, zone.algorithm, self.keydir / zone.file_stem))
                if zone.ds_from_other_key:  # a second key, never published in the zone
                    jobs.append((zone.origin, zone.algorithm, self.keydir / f"{zone.file_stem}-x"))
        commands = []
        for origin, algorithm, directory in jobs:
            directory.mkdir(exist_ok=True)
            args = [self.tools["dnssec-keygen"], "-q", "-K", str(directory), "-a", algorithm]
            commands.append(
                ([*args, *_key_size(algorithm), "-f", "KSK", "-n", "ZONE", origin], directory)
            )
        names = _run_all(commands)
        for (origin, _, directory), name in zip(jobs, names, strict=True):
            path = directory / f"{name.strip()}.key"
            line = next(ln for ln in path.read_text().splitlines() if not ln.startswith(";"))
            key = _Key(path, line)
            if directory.name.endswith("-x"):
                self.other_keys[origin] = key
            else:
                self.keys[origin] = key

    def _make_ds(self, zones: Sequence[ZoneSpec]) -> dict[str, list[str]]:
        """DS records per child zone, as dnssec-dsfromkey writes them."""
        jobs: list[tuple[str, int, _Key]] = []
        for zone in zones:
            if zone.algorithm is None:
                continue
            key = self.other_keys[zone.origin] if zone.ds_from_other_key else self.keys[zone.origin]
            jobs += [(zone.origin, digest, key) for digest in zone.ds_digests]
        digest_names = {1: "SHA-1", 2: "SHA-256", 4: "SHA-384"}
        dsfromkey = [self.tools["dnssec-dsfromkey"], "-T", "3600", "-a"]
        outputs = _run_all(
            [([*dsfromkey, digest_names[d], str(k.path)], self.keydir) for _, d, k in jobs]
        )
        ds: dict[str, list[str]] = {}
        for (origin, _, _), out in zip(jobs, outputs, strict=True):
            ds.setdefault(origin, []).extend(ln for ln in out.splitlines() if ln.strip())
        return ds

    def _unsigned_text(
        self, zone: ZoneSpec, zones: Sequence[ZoneSpec], ds: dict[str, list[str]]
    ) -> str:
        lines = [f"$ORIGIN {zone.origin}", f"$TTL {TTL}", *zone.body]
        for child in zones:
            if child.parent == zone.origin:
                lines.append(f"{child.origin} {TTL} IN NS {NS_NAME}")
                lines += ds.get(child.origin, [])
        if zone.algorithm is not None:
            lines.append(self.keys[zone.origin].dnskey_line)
        return "\n".join(lines) + "\n"

    def _sign_command(self, zone: ZoneSpec) -> tuple[list[str], Path]:
        stem = zone.file_stem
        args = [self.tools["dnssec-signzone"], "-q", "-z", "-P", "-O", "full"]
        args += ["-o", zone.origin, "-f", f"{stem}.signed"]
        if zone.nsec3 is not None:
            iterations, opt_out = zone.nsec3
            args += ["-3", "-", "-H", str(iterations)] + (["-A"] if opt_out else [])
        if zone.validity is not None:
            args += ["-s", _stamp(zone.validity[0]), "-e", _stamp(zone.validity[1])]
        args += [f"{stem}.unsigned", str(self.keys[zone.origin].path)]
        return args, self.zonedir

    def _finish(self, zone: ZoneSpec) -> None:
        stem = zone.file_stem
        final = self.zonedir / f"{stem}.zone"
        if zone.algorithm is None:
            final.write_text((self.zonedir / f"{stem}.unsigned").read_text())
            return
        if zone.python_nsec3:
            unsigned = self.zonedir / f"{stem}.unsigned"
            final.write_text(sign_nsec3_zone(zone, self.keys[zone.origin], unsigned))
            return
        lines = (self.zonedir / f"{stem}.signed").read_text().splitlines()
        for edit in zone.edits:
            lines = edit(lines)
        final.write_text("\n".join(lines) + "\n")


# --- NSEC3 with more iterations than dnssec-signzone allows (it stops at 150) -------------------


def _load_private_key(key: _Key) -> ec.EllipticCurvePrivateKey:
    """The P-256 private key of a BIND ``.private`` file (algorithm 13 only)."""
    private = key.path.with_suffix(".private").read_text()
    fields = dict(ln.split(": ", 1) for ln in private.splitlines() if ": " in ln)
    if not fields["Algorithm"].startswith("13 "):
        raise PeerError(f"{key.path}: only algorithm 13 can be signed in Python here")
    secret = int.from_bytes(base64.b64decode(fields["PrivateKey"]), "big")
    return ec.derive_private_key(secret, ec.SECP256R1())


def sign_nsec3_zone(zone: ZoneSpec, key: _Key, unsigned: Path) -> str:
    """Sign a small zone with no delegations, building the NSEC3 chain here (RFC 5155 §7.1)."""
    assert zone.nsec3 is not None
    iterations, _ = zone.nsec3
    origin = dns.name.from_text(zone.origin)
    parsed = dns.zone.from_text(unsigned.read_text(), origin=origin, relativize=False)
    dnskey_rdata = parsed.get_rdataset(origin, "DNSKEY")
    assert dnskey_rdata is not None
    dnskey = dnskey_rdata[0]
    assert isinstance(dnskey, dns.rdtypes.ANY.DNSKEY.DNSKEY)
    rrsets: list[dns.rrset.RRset] = []
    types: dict[dns.name.Name, set[int]] = {}
    for name, node in parsed.nodes.items():
        for rdataset in node.rdatasets:
            rrsets.append(dns.rrset.from_rdata_list(name, rdataset.ttl, list(rdataset)))
            types.setdefault(name, set()).add(rdataset.rdtype)
    types[origin].add(dns.rdatatype.NSEC3PARAM)
    rrsets.append(dns.rrset.from_text(origin, 0, "IN", "NSEC3PARAM", f"1 0 {iterations} -"))
    hashed = sorted((dns.dnssec.nsec3_hash(name, None, iterations, 1), name) for name in types)
    for i, (digest, name) in enumerate(hashed):
        following = hashed[(i + 1) % len(hashed)][0]
        present = sorted(types[name] | {dns.rdatatype.RRSIG})
        bitmap = " ".join(dns.rdatatype.to_text(dns.rdatatype.RdataType(t)) for t in present)
        owner = dns.name.from_text(digest.lower(), origin)
        rdata = f"1 0 {iterations} - {following} {bitmap}"
        rrsets.append(dns.rrset.from_text(owner, TTL, "IN", "NSEC3", rdata))
    private = _load_private_key(key)
    now = _now()
    lines = []
    for rrset in rrsets:
        signature = dns.dnssec.sign(
            rrset,
            private,
            origin,
            dnskey,
            inception=now - datetime.timedelta(hours=1),
            expiration=now + datetime.timedelta(days=30),
        )
        lines.append(rrset.to_text())
        lines.append(dns.rrset.from_rdata(rrset.name, rrset.ttl, signature).to_text())
    return "\n".join(lines) + "\n"


# --- servers ----------------------------------------------------------------------------------


class NSD:
    """``nsd -d`` serving the zone files of a directory on 127.0.0.1:<free port>, UDP and TCP."""

    def __init__(
        self,
        directory: Path,
        zones: Sequence[tuple[str, Path]],
        *,
        start_timeout: float = 10.0,
        stop_timeout: float = 5.0,
    ) -> None:
        self.directory = directory
        self.zones = list(zones)
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.binary = require_tool("nsd", *NSD_PATHS)
        self.config_path = directory / "nsd.conf"
        self.log_path = directory / "nsd.log"
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self._console: IO[bytes] | None = None

    def config_text(self) -> str:
        d = self.directory
        lines = [
            "server:",
            f"  ip-address: {LOOPBACK}@{self.port}",
            "  do-ip6: no",
            "  server-count: 1",
            "  reuseport: no",
            "  verbosity: 1",
            '  username: ""',
            '  chroot: ""',
            f'  zonesdir: "{d}"',
            '  database: ""',
            f'  zonelistfile: "{d / "zone.list"}"',
            f'  xfrdfile: "{d / "xfrd.state"}"',
            f'  xfrdir: "{d}"',
            f'  pidfile: "{d / "nsd.pid"}"',
            f'  logfile: "{self.log_path}"',
            "remote-control:",
            "  control-enable: no",
        ]
        for name, path in self.zones:
            lines += ["zone:", f'  name: "{name}"', f'  zonefile: "{path}"']
        return "\n".join(lines) + "\n"

    def _start_once(self) -> bool:
        self.port = free_ports(1)[0]
        self.config_path.write_text(self.config_text())
        self.log_path.write_bytes(b"")
        console_path = self.directory / "nsd.console"
        self._console = console_path.open("wb")
        self.process = process = subprocess.Popen(
            [self.binary, "-d", "-c", str(self.config_path)],
            stdin=subprocess.DEVNULL,
            stdout=self._console,
            stderr=subprocess.STDOUT,
            cwd=self.directory,
        )
        if _wait_until(
            lambda: answers_on_udp(self.port, "test."),
            lambda: process.poll() is not None,
            self.start_timeout,
        ):
            return True
        log = self.log_text() + _tail(console_path)
        self.close()
        if process.returncode is not None and "already in use" in log:
            return False
        raise PeerError(
            f"nsd did not answer on port {self.port} (exit {process.returncode}):\n{log}"
        )

    def __enter__(self) -> Self:
        for _ in range(3):
            if self._start_once():
                return self
        raise PeerError("nsd lost the race for a free port three times")

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        if self.process is not None:
            _stop(self.process, self.stop_timeout)
        if self._console is not None:
            self._console.close()
            self._console = None

    def log_text(self) -> str:
        return _tail(self.log_path)


class RecursiveUnbound(Unbound):
    """tests.peers.Unbound as a non-validating recursive whose stub zones all point at NSD.

    ``do-not-query-localhost: no`` lets it ask 127.0.0.1; with a stub for ``.`` it never primes
    from root hints, so nothing leaves the machine.
    """

    def __init__(
        self, tls: TLSFiles, *, directory: Path, auth_port: int, zones: Sequence[str]
    ) -> None:
        # Unbound answers test. itself (RFC 6761 §6.2) unless told not to
        local_zones = (("test.", "nodefault"),)
        super().__init__(tls, directory=directory, local_data=(), local_zones=local_zones)
        self.auth_port = auth_port
        self.stub_zones = list(zones)

    def config_text(self) -> str:
        server, rest = super().config_text().split("remote-control:", 1)
        server += "\n".join(
            [
                "  do-not-query-localhost: no",
                "  target-fetch-policy: '0 0 0 0 0'",
                "  harden-referral-path: no",
                "  prefetch: no",
                "  minimal-responses: no",
                "",
            ]
        )
        stubs = []
        for zone in self.stub_zones:
            stubs += [
                "stub-zone:",
                f"  name: '{zone}'",
                f"  stub-addr: {LOOPBACK}@{self.auth_port}",
            ]
        return server + "remote-control:" + rest + "\n".join(stubs) + "\n"


# --- the hierarchy ----------------------------------------------------------------------------


@dataclass
class Hierarchy:
    """A running private hierarchy: trust anchors for its root and where to ask."""

    workdir: Path
    #: ``. 3600 IN DS ...`` (digest 2) for the private root
    anchor_ds_file: Path
    #: ``. 3600 IN DNSKEY 257 3 13 ...``
    anchor_dnskey_file: Path
    #: ``trust-anchors { . static-ds ...; };`` for ``delv -a``
    delv_anchor_file: Path
    #: the non-validating Unbound recursive, plain UDP/TCP
    resolver_port: int
    #: the same Unbound over DoT (RFC 7858); certificate for `dot_auth_name` from `ca_file`
    resolver_dot_port: int
    ca_file: Path
    dot_auth_name: str
    #: NSD, authoritative for every zone
    auth_port: int
    zones: list[ZoneSpec] = field(default_factory=list)
    _logs: list[Callable[[], str]] = field(default_factory=list, repr=False)

    @property
    def resolver_upstream(self) -> str:
        return f"udp://{LOOPBACK}:{self.resolver_port}"

    @property
    def resolver_dot_upstream(self) -> str:
        return f"tls://{LOOPBACK}:{self.resolver_dot_port}#{self.dot_auth_name}"

    def logs(self) -> str:
        """The servers' log tails, for failure messages."""
        return "\n".join(read() for read in self._logs)


def _tools() -> dict[str, str]:
    names = ("dnssec-keygen", "dnssec-signzone", "dnssec-dsfromkey")
    return {name: require_tool(name, f"/usr/sbin/{name}", f"/usr/bin/{name}") for name in names}


def _write_anchors(workdir: Path, root_key: _Key, dsfromkey: str) -> tuple[Path, Path, Path]:
    ds_line = _run([dsfromkey, "-T", "3600", "-a", "SHA-256", str(root_key.path)], workdir)
    ds_line = next(ln for ln in ds_line.splitlines() if ln.strip())
    owner, ttl, rdclass, rdtype, tag, alg, digest_type, digest = ds_line.split()
    assert (owner, ttl, rdclass, rdtype) == (".", "3600", "IN", "DS"), ds_line
    ds_file = workdir / "root-anchor.ds"
    ds_file.write_text(ds_line + "\n")
    owner, rdclass, rdtype, *rdata = root_key.dnskey_line.split()
    dnskey_file = workdir / "root-anchor.dnskey"
    dnskey_file.write_text(f". 3600 IN DNSKEY {' '.join(rdata)}\n")
    delv_file = workdir / "root-anchor.delv"
    delv_file.write_text(
        f'trust-anchors {{\n\t. static-ds {tag} {alg} {digest_type} "{digest}";\n}};\n'
    )
    return ds_file, dnskey_file, delv_file


def build_zones(
    workdir: Path, extra_zones: Sequence[ZoneSpec] = ()
) -> tuple[list[ZoneSpec], dict[str, Path], tuple[Path, Path, Path]]:
    """Keys, DS records, signed (and broken) zone files, trust anchors; no server started.
    extra_zones: more zones below those of `zone_specs` (parents first)."""
    tools = _tools()
    zones = [*zone_specs(), *extra_zones]
    builder = _Builder(workdir, tools)
    builder.build(zones)
    files = {z.origin: builder.zonedir / f"{z.file_stem}.zone" for z in zones}
    anchors = _write_anchors(workdir, builder.keys["."], tools["dnssec-dsfromkey"])
    return zones, files, anchors


@contextlib.contextmanager
def signed_hierarchy(workdir: Path, extra_zones: Sequence[ZoneSpec] = ()) -> Iterator[Hierarchy]:
    """Build the hierarchy in ``workdir`` and serve it; both servers stop on exit."""
    workdir.mkdir(parents=True, exist_ok=True)
    zones, files, (ds_file, dnskey_file, delv_file) = build_zones(workdir, extra_zones)
    tls = write_tls_files(workdir / "tls", (DOT_AUTH_NAME, LOOPBACK))
    nsd_dir = workdir / "nsd"
    nsd_dir.mkdir(exist_ok=True)
    with NSD(nsd_dir, [(z.origin, files[z.origin]) for z in zones]) as nsd:
        unbound_dir = workdir / "unbound"
        unbound = RecursiveUnbound(
            tls, directory=unbound_dir, auth_port=nsd.port, zones=[z.origin for z in zones]
        )
        try:
            unbound.__enter__()
        except PeerError as exc:
            raise PeerError(f"{exc}\nnsd log:\n{nsd.log_text()}") from None
        try:
            yield Hierarchy(
                workdir=workdir,
                anchor_ds_file=ds_file,
                anchor_dnskey_file=dnskey_file,
                delv_anchor_file=delv_file,
                resolver_port=unbound.plain_port,
                resolver_dot_port=unbound.dot_port,
                ca_file=tls.ca_pem,
                dot_auth_name=DOT_AUTH_NAME,
                auth_port=nsd.port,
                zones=zones,
                _logs=[
                    lambda: f"nsd log:\n{nsd.log_text()}",
                    lambda: f"unbound log:\n{unbound.log_text()}",
                ],
            )
        finally:
            unbound.__exit__(None, None, None)
