"""The running daemon: sockets, privileges, signals, reload, sd_notify, watchdog, orderly shutdown.

Start: the runtime and its query path (runtime.py, which loads the saved cache), the listening
sockets (bound here, or inherited from systemd: socket activation), the query log, the control
socket and the metrics endpoint; if started as root, the switch to the configured user; then
READY=1 (sd_notify(3)).

Signals: SIGHUP (or `stubby-py reload`) re-reads the configuration; a bad file is refused with its
file:line: key error and the running configuration stays; a good one is applied keeping the cache
and the queries in flight. SIGTERM or SIGINT: stop taking queries, answer those in flight (bounded
by DRAIN_SECONDS), save the cache, exit 0. SIGUSR2: flush the cache.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import os
import signal
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from stubby_py.core import local
from stubby_py.core.access import AccessList
from stubby_py.core.config import Config, EncryptedListen, listener_label
from stubby_py.core.errors import StubbyError
from stubby_py.daemon import control, fdbudget, memtrace, netwatch, probing, stats
from stubby_py.daemon.metrics import MetricsServer
from stubby_py.daemon.privileges import Handover, drop_privileges
from stubby_py.daemon.query_path import Resolver
from stubby_py.daemon.querylog import QueryLog
from stubby_py.daemon.road import Road
from stubby_py.daemon.runtime import Runtime
from stubby_py.listeners import dot
from stubby_py.listeners import server as tls_accept
from stubby_py.listeners.plain import OwnAllow, TCPConnections, TCPListener, UDPListener
from stubby_py.listeners.tls_files import ServerCertificate

if TYPE_CHECKING:
    # imported where a listener of theirs is configured: h2 and aioquic (with pyOpenSSL and
    # service_identity) hold about 6 MiB that a daemon without them should not carry
    from stubby_py.listeners import doh3, doq

log = logging.getLogger(__name__)

DRAIN_SECONDS = 3.0
SD_LISTEN_FDS_START = 3
#: `listen: ADDRESS:0` (tests, benches): ports tried before giving up
PORT_ZERO_TRIES = 5
#: FileDescriptorName= of the optional socket units for the encrypted listeners (systemd/):
#: a socket so named is never taken for a plain listener
ENCRYPTED_FD_NAMES = frozenset({"dot", "doh"})
#: the socket type each encrypted listener needs
SOCKET_TYPES = {
    "tls": socket.SOCK_STREAM,
    "https": socket.SOCK_STREAM,
    "quic": socket.SOCK_DGRAM,
    "h3": socket.SOCK_DGRAM,
}
#: how often STATUS= is refreshed under systemd, seconds
STATUS_SECONDS = 10.0
#: options a reload cannot apply to a running daemon
RESTART_OPTIONS = (
    "listen", "encrypted_listen", "user", "control_socket", "metrics_listen", "watch_network"
)  # fmt: skip


class ListenError(StubbyError):
    pass


def sd_notify(message: str) -> None:
    """sd_notify(3) without libsystemd: one datagram to $NOTIFY_SOCKET, if set."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return
    if path.startswith("@"):
        path = "\0" + path[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto(message.encode(), path)
    except OSError as exc:
        log.debug("sd_notify failed: %s", exc)


def _where(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def _listen_error(address: str, port: int, exc: OSError) -> ListenError:
    if exc.errno == errno.EADDRINUSE:
        why = "the address is already in use (another DNS server running?)"
    elif exc.errno == errno.EACCES:
        why = "permission denied: ports below 1024 need root or CAP_NET_BIND_SERVICE"
    elif exc.errno == errno.EADDRNOTAVAIL:
        why = "no such address on this machine"
    else:
        why = exc.strerror or str(exc)
    return ListenError(
        f"cannot listen on {_where(address, port)}: {why}. Try --listen 127.0.0.1:5353, "
        "or run under systemd with the stubby-py.socket unit"
    )


@dataclass
class Daemon:
    config: Config
    #: reads the configuration again, for a reload (None: reload is refused)
    loader: Callable[[], Config] | None = None
    #: the configuration file, if any (it must stay readable after privileges are dropped)
    config_path: str | None = None
    #: the query path's configuration, cache file and state (runtime.py), and the query path
    runtime: Runtime | None = None
    resolver: Resolver | None = None
    bound: list[tuple[str, int]] = field(default_factory=list)
    #: the encrypted listeners, with the ports they got (port 0 in the configuration)
    encrypted_bound: list[EncryptedListen] = field(default_factory=list)
    certificate: ServerCertificate | None = None
    tcp: TCPConnections | None = None
    control: control.ControlServer | None = None
    metrics: MetricsServer | None = None
    query_log: QueryLog | None = None
    network_watch: netwatch.NetworkWatch | None = None
    #: background probes of every upstream (probing.py)
    prober: probing.Prober | None = None
    #: RLIMIT_NOFILE once raised, and the caps planned under it (fdbudget.py)
    fd_limit: int = 0
    fd_plan: fdbudget.Plan | None = None
    started: float = field(default_factory=time.time)
    _servers: list[asyncio.Server] = field(default_factory=list)
    _listening_sockets: int = 0
    _udp: list[UDPListener] = field(default_factory=list)
    _tls_servers: list[tls_accept.TLSServer] = field(default_factory=list)
    _doq_servers: list[doq.DoQServer] = field(default_factory=list)
    _doh3_servers: list[doh3.DoH3Server] = field(default_factory=list)
    #: what waits for every listener to be bound (an https:// one's Alt-Svc)
    _after_bind: list[Callable[[], None]] = field(default_factory=list)
    #: each listener's own `allow` (by listener label), set again on reload
    _own_allows: list[tuple[str, OwnAllow]] = field(default_factory=list)
    _udp_by_label: list[tuple[str, UDPListener]] = field(default_factory=list)
    #: the encrypted listeners bound, each with its own `allow` (for DDR)
    _encrypted_own: list[tuple[EncryptedListen, OwnAllow]] = field(default_factory=list)

    # -- start ----------------------------------------------------------------------------------
    async def start(self) -> None:
        config = self.config
        inherited, for_encrypted = match_inherited(inherited_sockets(), config.listeners.encrypted)
        self._listening_sockets = (len(inherited) or 2 * len(config.listeners.addresses)) + len(
            config.listeners.encrypted
        )
        before, self.fd_limit = fdbudget.raise_open_files_limit()
        if self.fd_limit > before:
            log.info("open files limit raised from %d to the hard limit, %d", before, self.fd_limit)
        self.fd_plan = fd_plan = self._plan_fds(config)
        # the state paths come from this process's environment (STATE_DIRECTORY under systemd)
        self.runtime = runtime = Runtime(config, os.environ)
        self.resolver = resolver = runtime.resolver
        self.tcp = TCPConnections(
            resolver,
            fd_plan.caps.tcp_max_connections,
            config.listeners.tcp_idle_timeout,
            fd_plan.caps.tcp_max_connections_per_client,
            config.access.ipv6_client_prefix,
        )
        if inherited:
            await self._adopt(inherited)
        else:
            for address, port in config.listeners.addresses:
                await self._listen(address, port)
        for address, port in self.bound:
            log.info("listening on %s (UDP and TCP)", _where(address, port))
        for listener in config.listeners.encrypted:
            await self._listen_encrypted(listener, for_encrypted.get(listener))
        for then in self._after_bind:
            then()
        self._designate()
        log.info("forwarding to %s", ", ".join(t.name for t in resolver.transports))
        self.network_watch = netwatch.start_watching(runtime, config)
        resolver.road = Road(resolver, self.bound)
        resolver.road.start()
        self._make_cache_directory()
        self._open_query_log(config.service.query_log)
        await self._start_control(config.service.control_socket)
        await self._start_metrics(config.service.metrics_listen)
        self.prober = probing.Prober(runtime)
        self.prober.start()

    def _plan_fds(self, config: Config) -> fdbudget.Plan:
        """The TCP and metrics caps that fit under the open files limit (logged; lowered caps
        with a warning); FdBudgetError if the daemon's own needs do not fit."""
        needs = fdbudget.Needs.of(config, self._listening_sockets)
        fd_plan = fdbudget.plan(needs, fdbudget.Caps.of(config), self.fd_limit)
        for lowered in fd_plan.lowered:
            log.warning("%s", lowered)
        log.info("%s", fd_plan.describe())
        return fd_plan

    async def _listen(self, address: str, port: int) -> None:
        # port 0: UDP takes the port TCP was given, so both answer on one address; when another
        # program holds that port for UDP, another port is taken (a few times)
        for attempt in range(1 if port else PORT_ZERO_TRIES):
            try:
                server, udp, bound = await self._bind_pair(address, port)
            except OSError as exc:
                if port or attempt == PORT_ZERO_TRIES - 1:
                    raise _listen_error(address, port, exc) from None
                continue
            break
        port = bound
        self._servers.append(server)
        self._udp.append(udp)
        self.bound.append((address, port))

    async def _bind_pair(
        self, address: str, port: int
    ) -> tuple[asyncio.Server, UDPListener, int]:
        """A TCP server and a UDP endpoint on one port (the one TCP got, for port 0)."""
        assert self.tcp is not None
        loop = asyncio.get_running_loop()
        label = listener_label((address, port))
        server = await loop.create_server(
            self._tcp_protocol(label), address, port, reuse_address=True, backlog=1024
        )
        bound = server.sockets[0].getsockname()[1]
        udp = self._udp_listener(label)
        try:
            await loop.create_datagram_endpoint(lambda: udp, local_addr=(address, bound))
        except OSError:
            server.close()
            self._forget_listener(label)
            raise
        return server, udp, bound

    # -- the listeners' own `allow` -------------------------------------------------------------
    def _own_acl(self, label: str, config: Config | None = None) -> AccessList | None:
        networks = (config or self.config).listeners.allow_of(label)
        return None if networks is None else AccessList(networks)

    def _own_allow(self, label: str) -> OwnAllow:
        """The listener's own `allow`, set now (before it takes a client) and on reload."""
        own = OwnAllow(self._own_acl(label))
        self._own_allows.append((label, own))
        return own

    def _tcp_protocol(self, label: str) -> Callable[[], TCPListener]:
        assert self.tcp is not None
        tcp, own = self.tcp, self._own_allow(label)
        return lambda: TCPListener(tcp, own)

    def _udp_listener(self, label: str) -> UDPListener:
        assert self.tcp is not None
        udp = UDPListener(self.tcp.resolver, self._own_acl(label))
        self._udp_by_label.append((label, udp))
        return udp

    def _forget_listener(self, label: str) -> None:
        """A listener that could not be bound (port 0 tried again)."""
        self._own_allows = [(name, own) for name, own in self._own_allows if name != label]
        self._udp_by_label = [(name, udp) for name, udp in self._udp_by_label if name != label]

    def _narrow(self, config: Config) -> None:
        """Reload: each listener's own `allow` as `config` says, for the connections and
        datagrams to come (adding or removing a listener needs a restart)."""
        for label, own in self._own_allows:
            own.acl = self._own_acl(label, config)
        for label, udp in self._udp_by_label:
            udp.narrow(self._own_acl(label, config))

    async def _listen_encrypted(
        self, listener: EncryptedListen, inherited: socket.socket | None
    ) -> None:
        """Bind the listener's socket, or serve on the one systemd passed (socket activation)."""
        assert self.tcp is not None
        config = self.config
        if self.certificate is None:
            assert (
                config.listeners.tls_cert is not None and config.listeners.tls_key is not None
            )  # config.py checks
            self.certificate = ServerCertificate(
                config.listeners.tls_cert, config.listeners.tls_key
            )
        if listener.scheme in ("quic", "h3"):
            await self._listen_quic(listener, self.certificate, inherited)
            return
        try:
            if inherited is not None:
                sock = inherited
                sock.setblocking(False)
            else:
                sock = tls_accept.bind(listener.address, listener.port)
        except OSError as exc:
            raise _listen_error(listener.address, listener.port, exc) from None
        tcp = self.tcp
        if listener.scheme == "tls":
            alpn = dot.ALPN

            def protocol() -> asyncio.Protocol:
                return dot.DoTListener(tcp, self.config.listeners.padding_block)
        else:
            from stubby_py.listeners import doh

            alpn = doh.ALPN
            path = listener.path

            def protocol() -> asyncio.Protocol:
                return doh.DoHListener(
                    tcp, path, self.config.listeners.padding_block, lambda: alt_svc
                )

            # looked up once the listeners are bound (an h3:// one may come after this one)
            alt_svc: bytes | None = None

            def alt_svc_later() -> None:
                nonlocal alt_svc
                alt_svc = self._alt_svc(listener)

            self._after_bind.append(alt_svc_later)

        own = self._own_allow(listener.label)
        tls_server = tls_accept.TLSServer(sock, tcp, self.certificate, alpn, protocol, own)
        tls_server.start()
        self._tls_servers.append(tls_server)
        bound = replace(listener, port=tls_server.port)
        self.encrypted_bound.append(bound)
        self._encrypted_own.append((bound, own))
        log.info("listening on %s%s", bound.label, " (socket from systemd)" if inherited else "")

    async def _listen_quic(
        self,
        listener: EncryptedListen,
        certificate: ServerCertificate,
        inherited: socket.socket | None,
    ) -> None:
        """DoQ or DoH over HTTP/3: one UDP endpoint."""
        from stubby_py.listeners import doh3, doq

        assert self.tcp is not None
        tcp = self.tcp
        loop = asyncio.get_running_loop()

        def padding_block() -> int:
            return self.config.listeners.padding_block

        own = self._own_allow(listener.label)

        def endpoint() -> doq.DoQServer:
            if listener.scheme == "h3":
                server = doh3.DoH3Server(tcp, certificate, padding_block, listener.path)
                server.own_allow = own
                return server
            return doq.DoQServer(tcp, certificate, padding_block, own)

        try:
            if inherited is not None:
                _, server = await loop.create_datagram_endpoint(endpoint, sock=inherited)
            else:
                _, server = await loop.create_datagram_endpoint(
                    endpoint, local_addr=(listener.address, listener.port)
                )
        except OSError as exc:
            raise _listen_error(listener.address, listener.port, exc) from None
        if isinstance(server, doh3.DoH3Server):
            self._doh3_servers.append(server)
        else:
            self._doq_servers.append(server)
        bound = replace(listener, port=server.port)
        self.encrypted_bound.append(bound)
        self._encrypted_own.append((bound, own))
        log.info("listening on %s (UDP%s)", bound.label, ", from systemd" if inherited else "")

    def _alt_svc(self, https: EncryptedListen) -> bytes | None:
        """`Alt-Svc` for an https:// listener: an h3:// one on its address (or on any address)
        with its path (RFC 9114 §3.1.1)."""
        for h3 in self.encrypted_bound:
            same_address = h3.address in (https.address, "0.0.0.0", "::")
            if h3.scheme == "h3" and same_address and h3.path == https.path:
                return b'h3=":%d"' % h3.port
        return None

    def _designate(self) -> None:
        """DDR: what `_dns.resolver.arpa` SVCB says, to whom (the certificate's name and the
        listeners' own `allow` may have changed)."""
        assert self.resolver is not None
        hostname = self.certificate.hostname if self.certificate is not None else None
        listeners = tuple(
            ((e.scheme, e.address, e.port, e.path), own.acl) for e, own in self._encrypted_own
        )
        self.resolver.designated = local.Designation(listeners, hostname)

    async def _adopt(self, sockets: list[socket.socket]) -> None:
        """Serve on sockets systemd passed us (socket activation): no bind, no privilege."""
        assert self.tcp is not None
        loop = asyncio.get_running_loop()
        for sock in sockets:
            sock.setblocking(False)
            address, port = sock.getsockname()[:2]
            label = listener_label((address, port))
            if sock.type == socket.SOCK_DGRAM:
                udp = self._udp_listener(label)
                await loop.create_datagram_endpoint(lambda: udp, sock=sock)  # noqa: B023
                self._udp.append(udp)
            else:
                protocol = self._tcp_protocol(label)
                server = await loop.create_server(protocol, sock=sock, backlog=1024)
                self._servers.append(server)
            if (address, port) not in self.bound:
                self.bound.append((address, port))

    def _make_cache_directory(self) -> None:
        """The cache is saved at stop into a directory that must exist by then: make it now."""
        assert self.runtime is not None
        if self.runtime.cache_file is None:
            return
        directory = os.path.dirname(os.path.abspath(self.runtime.cache_file))
        try:
            os.makedirs(directory, mode=0o700, exist_ok=True)
        except OSError as exc:
            log.warning("cache directory %s: %s", directory, exc.strerror or exc)

    def _open_query_log(self, path: str | None) -> None:
        self._switch_query_log(self._next_query_log(path))

    def _next_query_log(self, path: str | None) -> QueryLog | None:
        """The query log for `path`: the current one, reopened (logrotate), if it is the same."""
        current = self.query_log
        if path is None:
            return None
        if current is not None and current.path == path:
            current.reopen()
            return current
        try:
            query_log = QueryLog(path)
        except OSError as exc:
            raise StubbyError(f"query_log: cannot open {path}: {exc.strerror or exc}") from None
        log.info("query log: every answered query is written to %s", path)
        return query_log

    def _switch_query_log(self, query_log: QueryLog | None) -> None:
        assert self.resolver is not None
        old, self.query_log = self.query_log, query_log
        self.resolver.query_log = query_log
        if old is not None and old is not query_log:
            old.close()

    async def _start_control(self, setting: str | None) -> None:
        if setting is None:
            return
        path = control.default_path() if setting == "auto" else setting
        assert self.resolver is not None  # start() made it
        handlers: dict[str, control.Handler] = {
            "stats": self._handle_stats,
            "flush": self._handle_flush,
            "reload": self._handle_reload,
            "explain": control.explain_handler(self.resolver),
            "network-changed": self._handle_network_changed,
            "portal": control.portal_handler(self.resolver),
        }
        self.control = control.ControlServer(path, handlers)
        try:
            await self.control.start()
        except OSError as exc:
            self.control = None
            log.warning("no control socket at %s: %s", path, exc.strerror or exc)

    async def _start_metrics(self, where: tuple[str, int] | None) -> None:
        if where is None:
            return
        assert self.fd_plan is not None
        self.metrics = MetricsServer(
            where[0],
            where[1],
            self.collect_stats,
            allow=self.config.service.metrics_allow,
            max_connections=self.fd_plan.caps.metrics_max_connections,
        )
        try:
            await self.metrics.start()
        except OSError as exc:
            self.metrics = None
            raise _listen_error(where[0], where[1], exc) from None

    def _handovers(self) -> list[Handover]:
        """What the daemon still writes after it gives up root."""
        assert self.runtime is not None
        handovers = []
        if self.runtime.cache_file is not None:
            handovers.append(Handover(self.runtime.cache_file, prefix=".cache-"))
        if self.control is not None:
            handovers.append(Handover(self.control.path))
        if self.query_log is not None:
            handovers.append(Handover(self.query_log.path, directory=False))
        return handovers

    def drop_privileges(self) -> bool:
        """Started as root: become `user`, keeping the sockets (see privileges.py)."""
        return drop_privileges(self.config.service.user, self._handovers(), self._needs())

    def _needs(self) -> list[str]:
        """Files read again after the switch: CA files (TLS contexts are made at connect time)
        and the configuration (for a reload)."""
        config = self.config
        specs = [
            *config.forwarding.upstreams,
            *(s for _, group in config.forwarding.groups for s in group),
        ]
        paths = {config.transport.ca_file, *(spec.ca_file for spec in specs)}
        if config.listeners.encrypted:
            paths |= {config.listeners.tls_cert, config.listeners.tls_key}
        paths.add(self.config_path)
        return sorted(p for p in paths if p is not None)

    # -- while running ----------------------------------------------------------------------------
    def collect_stats(self) -> dict[str, Any]:
        assert self.runtime is not None
        figures = stats.collect(self.runtime, self.tcp, self.started)
        if self._doq_servers:
            figures["doq"] = stats.doq(self._doq_servers)
        if self._doh3_servers:
            figures["doh3"] = stats.doq(self._doh3_servers)
        if self.resolver is not None and self.resolver.road is not None:
            figures["portal"] = self.resolver.road.summary()
        return figures

    def status_line(self) -> str:
        figures = self.collect_stats()
        ratio = figures["cache"]["hit_ratio"]
        upstreams = figures["upstreams"]
        up = sum(1 for u in upstreams if u.get("state") == "up")
        cached = f", {ratio:.0%} from cache" if ratio is not None else ""
        return f"{figures['queries']} queries{cached}, {up}/{len(upstreams)} upstreams up"

    def flush_cache(self, name: str | None = None) -> int:
        """SIGUSR2, `stubby-py flush [NAME]`: forget cached answers and held failures; a full
        flush also forgets the validator's DS/DNSKEY results (after a botched key rollover, say)."""
        assert self.resolver is not None
        dropped = self.resolver.cache.flush(name)
        if name is None and self.resolver.validator is not None:
            self.resolver.validator.chain.flush()
        # "one name", not the name: logs never carry query names
        log.info("cache flushed%s, %d answers dropped", " for one name" if name else "", dropped)
        return dropped

    def reload(self) -> str | None:
        """SIGHUP: read the configuration again and apply it; on a bad file keep the running
        configuration and return the error."""
        if self.loader is None:
            return "this daemon was started without a configuration to re-read"
        sd_notify(f"RELOADING=1\nMONOTONIC_USEC={time.monotonic_ns() // 1000}")
        try:
            new = self.loader()
            self._apply(new)
        except (StubbyError, OSError, ValueError) as exc:
            log.error("reload refused, the running configuration stays: %s", exc)
            sd_notify(f"READY=1\nSTATUS=reload refused: {exc}")
            return str(exc)
        sd_notify(f"READY=1\nSTATUS={self.status_line()}")
        return None

    def _apply(self, new: Config) -> None:
        assert self.runtime is not None and self.tcp is not None
        old = self.config
        fd_plan = self._plan_fds(new)  # may fail: nothing changed yet
        query_log = self._next_query_log(new.service.query_log)  # may fail: nothing changed yet
        try:
            self.runtime.reconfigure(new)
        except BaseException:
            if query_log is not None and query_log is not self.query_log:
                query_log.close()
            raise
        self._switch_query_log(query_log)
        if self.prober is not None:
            self.prober.reconfigured()
        self.fd_plan = fd_plan
        self.tcp.max_connections = fd_plan.caps.tcp_max_connections
        self.tcp.max_per_client = fd_plan.caps.tcp_max_connections_per_client
        self.tcp.idle_timeout = new.listeners.tcp_idle_timeout
        self.tcp.ipv6_prefix = new.access.ipv6_client_prefix
        if self.certificate is not None and new.listeners.tls_cert and new.listeners.tls_key:
            self.certificate.configure(new.listeners.tls_cert, new.listeners.tls_key)
        self._narrow(new)
        self._designate()
        if self.metrics is not None:
            self.metrics.configure(new.service.metrics_allow, fd_plan.caps.metrics_max_connections)
        logging.getLogger().setLevel(new.service.log_level.upper())
        self.config = new
        if old.road != new.road and self.runtime.resolver.road is not None:
            self.runtime.resolver.road.reconfigured()
        pending = [key for key in RESTART_OPTIONS if old.option(key) != new.option(key)]
        if pending:
            log.warning("reload: %s changed; takes effect at the next restart", ", ".join(pending))
        names = ", ".join(t.name for t in self.runtime.resolver.transports)
        log.info("reloaded %s: forwarding to %s", new.source, names)

    async def _handle_stats(self, _request: Mapping[str, Any]) -> dict[str, Any]:
        return self.collect_stats()

    async def _handle_network_changed(self, _request: Mapping[str, Any]) -> dict[str, Any]:
        """What netwatch does on a route change, on request (a VPN script, bench/soak.py)."""
        assert self.runtime is not None
        netwatch.network_changed(self.runtime, "asked on the control socket")
        return {"ok": True}

    async def _handle_flush(self, request: Mapping[str, Any]) -> dict[str, Any]:
        name = request.get("name")
        if name is not None and not isinstance(name, str):
            return {"ok": False, "error": "name: expected a domain name"}
        try:
            return {"dropped": self.flush_cache(name)}
        except ValueError as exc:
            return {"ok": False, "error": str(exc)}

    async def _handle_reload(self, _request: Mapping[str, Any]) -> dict[str, Any]:
        error = self.reload()
        if error is not None:
            return {"ok": False, "error": error}
        return {"source": self.config.source}

    async def heartbeat(self, watchdog: float | None) -> None:
        """Under systemd: WATCHDOG=1 from the event loop itself (a stuck loop stops the pings),
        and a STATUS= line with the counts every STATUS_SECONDS."""
        interval = min(watchdog or STATUS_SECONDS, STATUS_SECONDS)
        next_status = time.monotonic() + STATUS_SECONDS
        while True:
            lines = ["WATCHDOG=1"] if watchdog else []
            if time.monotonic() >= next_status:
                lines.append(f"STATUS={self.status_line()}")
                next_status = time.monotonic() + STATUS_SECONDS
            if lines:
                sd_notify("\n".join(lines))
            await asyncio.sleep(interval)

    # -- stop ---------------------------------------------------------------------------------
    async def stop(self) -> None:
        """Stop taking queries, answer those in flight (bounded), save the cache, close."""
        sd_notify("STOPPING=1")
        await self._stop_background()
        self._close_listening_sockets()
        for udp in self._udp:
            udp.stop_reading()
        if self.tcp is not None:
            self.tcp.stop_reading()
        for side in (self.control, self.metrics):
            if side is not None:
                await side.aclose()
        if self.resolver is not None:
            await self.resolver.drain(DRAIN_SECONDS)
            if self.resolver.road is not None:
                await self.resolver.road.aclose()
        self._close_datagram_listeners()
        if self.tcp is not None:
            self.tcp.close_all()
            if self._tls_servers:
                await self._tls_connections_closed()
        await self._close_resolver()

    async def _stop_background(self) -> None:
        """Network watching and background probes end first: nothing new starts while stopping."""
        if self.network_watch is not None:
            self.network_watch.close()
        if self.prober is not None:
            await self.prober.aclose()

    async def _tls_connections_closed(self) -> None:
        """TLS connections close once the client's close_notify came, or after
        SHUTDOWN_TIMEOUT: wait for them (a little longer), so none is left open at exit."""
        assert self.tcp is not None
        deadline = time.monotonic() + tls_accept.SHUTDOWN_TIMEOUT + 0.5
        while self.tcp.open and time.monotonic() < deadline:
            await asyncio.sleep(0.02)

    def _close_datagram_listeners(self) -> None:
        for udp in self._udp:
            udp.close()
        for quic_server in (*self._doq_servers, *self._doh3_servers):
            quic_server.close()  # CONNECTION_CLOSE to each client, then the socket

    def _close_listening_sockets(self) -> None:
        for listening in self._servers:
            listening.close()
        for tls_server in self._tls_servers:
            tls_server.close()

    async def _close_resolver(self) -> None:
        """Save the cache, close the upstream connections and the query log."""
        if self.runtime is not None:
            await self.runtime.aclose()
        if self.query_log is not None:
            self.query_log.close()


@dataclass(frozen=True)
class Inherited:
    sock: socket.socket
    #: its FileDescriptorName= (LISTEN_FDNAMES), "" without one
    name: str


def inherited_sockets() -> list[Inherited]:
    """sd_listen_fds_with_names(3): the sockets systemd passed, if they are meant for this
    process."""
    if os.environ.get("LISTEN_PID") != str(os.getpid()):
        return []
    count = int(os.environ.get("LISTEN_FDS", "0") or 0)
    names = os.environ.get("LISTEN_FDNAMES", "").split(":")
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(name, None)
    return [
        Inherited(socket.socket(fileno=SD_LISTEN_FDS_START + i), names[i] if i < len(names) else "")
        for i in range(count)
    ]


def match_inherited(
    inherited: list[Inherited], encrypted: tuple[EncryptedListen, ...]
) -> tuple[list[socket.socket], dict[EncryptedListen, socket.socket]]:
    """Inherited sockets for the plain listeners, and those for the configured encrypted ones:
    one of the type the listener needs (TCP for tls:// and https://, UDP for quic:// and
    h3://) on its address and port. A socket of the encrypted units (ENCRYPTED_FD_NAMES) that no
    configured listener takes is closed, never served as plain DNS; a configured encrypted
    listener with no socket here binds its own."""
    taken: dict[EncryptedListen, socket.socket] = {}
    plain: list[socket.socket] = []
    for each in inherited:
        listener = next(
            (e for e in encrypted if e not in taken and _socket_serves(each.sock, e)), None
        )
        if listener is not None:
            taken[listener] = each.sock
        elif each.name in ENCRYPTED_FD_NAMES:
            where = each.sock.getsockname()
            log.warning(
                "socket activation: %s socket %s (%s) matches no encrypted listener in the "
                "configuration: closed",
                "TCP" if each.sock.type == socket.SOCK_STREAM else "UDP",
                _where(where[0], where[1]), each.name,
            )  # fmt: skip
            each.sock.close()
        else:
            plain.append(each.sock)
    return plain, taken


def _socket_serves(sock: socket.socket, listener: EncryptedListen) -> bool:
    if sock.family not in (socket.AF_INET, socket.AF_INET6) or listener.port == 0:
        return False
    if sock.type != SOCKET_TYPES[listener.scheme]:
        return False
    address, port = sock.getsockname()[:2]
    if port != listener.port:
        return False
    if ipaddress.ip_address(address) == ipaddress.ip_address(listener.address):
        return True
    # a dual-stack [::] socket (BindIPv6Only=both) serves IPv4 too
    return (
        address == "::"
        and listener.address == "0.0.0.0"
        and not sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY)
    )


def watchdog_interval() -> float | None:
    """Half of systemd's WatchdogSec, if the watchdog is on for this process."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 2_000_000


async def serve(
    config: Config, loader: Callable[[], Config] | None = None, config_path: str | None = None
) -> None:
    daemon = Daemon(config, loader, config_path)
    try:
        await daemon.start()
        daemon.drop_privileges()
    except BaseException:
        await daemon.stop()
        raise
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    loop.add_signal_handler(signal.SIGHUP, daemon.reload)
    loop.add_signal_handler(signal.SIGUSR2, daemon.flush_cache)
    memtrace.start_if_asked(loop)
    sd_notify(f"READY=1\nSTATUS=answering queries: {daemon.status_line()}")
    heartbeat = None
    if os.environ.get("NOTIFY_SOCKET"):
        heartbeat = loop.create_task(daemon.heartbeat(watchdog_interval()))
    await stop.wait()
    if heartbeat is not None:
        heartbeat.cancel()
    log.info("shutting down")
    await daemon.stop()
    log.info("stopped")


def run(
    config: Config, loader: Callable[[], Config] | None = None, config_path: str | None = None
) -> None:
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(config, loader, config_path))
        return
    uvloop.run(serve(config, loader, config_path))
