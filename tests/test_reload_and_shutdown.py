"""SIGHUP reloads the configuration without losing a query or the cache; a bad file is refused
and the old configuration keeps serving; SIGTERM answers the queries in flight and saves the cache.
The daemon runs as a real process, as systemd runs it (sd_notify included)."""

from __future__ import annotations

import concurrent.futures
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import dns.rcode
import pytest
import trustme

from stubby_py.commands import cli
from tests.clients import ask_many, rcodes
from tests.conftest import dot_uri, server_context
from tests.daemon_thread import make_config, running_daemon
from tests.peers import Daemon, free_port
from tests.servers import LocalUpstream, local_upstream
from tests.service import ask, wait_for, write_config


def asked(upstream: LocalUpstream, name: str) -> bool:
    wire_name = b"".join(bytes([len(x)]) + x.encode() for x in name.rstrip(".").split("."))
    return any(wire_name in q.lower() for q in upstream.state.queries)


@pytest.fixture
def second_upstream(ca: trustme.CA) -> Iterator[LocalUpstream]:
    with local_upstream(server_context(ca)) as server:
        yield server


@pytest.fixture
def notifications(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """sd_notify messages the daemon sends, collected by a thread."""
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(0.1)
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    seen: list[str] = []
    done = threading.Event()

    def collect() -> None:
        while not done.is_set():
            try:
                seen.append(sock.recv(4096).decode())
            except TimeoutError:
                continue

    thread = threading.Thread(target=collect, daemon=True)
    thread.start()
    try:
        yield seen
    finally:
        done.set()
        thread.join(2)
        sock.close()


def test_sighup_applies_a_new_config_losing_no_query_and_keeping_the_cache(
    dot_upstream: LocalUpstream,
    second_upstream: LocalUpstream,
    ca_file: str,
    tmp_path: Path,
    notifications: list[str],
) -> None:
    port = free_port()
    path = tmp_path / "config.yaml"
    write_config(path, port, [dot_uri(dot_upstream)], ca_file)
    dot_upstream.state.delay = 0.05  # queries are in flight when the reload comes
    with Daemon(["-c", str(path)], port=port) as daemon:
        assert ask(port, "before.example.").rcode() == dns.rcode.NOERROR
        names = [f"stream{i}.example." for i in range(150)]
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            stream = pool.submit(ask_many, names, port, timeout=4.0, concurrency=8)
            assert wait_for(lambda: len(dot_upstream.state.queries) > 30)
            write_config(path, port, [dot_uri(second_upstream)], ca_file, rate_limit=0)
            assert daemon.process is not None
            daemon.process.send_signal(signal.SIGHUP)
            results = stream.result(15)
        assert rcodes(results) == ["NOERROR"] * len(names)  # not one lost across the reload
        assert second_upstream.state.queries, "the stream outlived the reload"
        assert wait_for(lambda: "reloaded" in daemon.stderr_text())
        assert ask(port, "after.example.").rcode() == dns.rcode.NOERROR
        assert asked(second_upstream, "after.example.")
        assert not asked(dot_upstream, "after.example.")
        assert ask(port, "before.example.").answer  # the cache survived the reload ...
        assert not asked(second_upstream, "before.example.")  # ... so nobody was asked
    assert any("RELOADING=1" in m for m in notifications)
    assert any("READY=1" in m and "STATUS=" in m for m in notifications[1:])


def test_a_bad_config_is_refused_and_the_old_one_keeps_serving(
    dot_upstream: LocalUpstream, ca_file: str, tmp_path: Path
) -> None:
    port = free_port()
    path = tmp_path / "config.yaml"
    write_config(path, port, [dot_uri(dot_upstream)], ca_file)
    with Daemon(["-c", str(path)], port=port) as daemon:
        good = path.read_text()
        path.write_text(good + "timeout: soon\n")
        line = len(good.splitlines()) + 1
        assert daemon.process is not None
        daemon.process.send_signal(signal.SIGHUP)
        message = f"{path}:{line}: timeout: expected a number"
        assert wait_for(lambda: message in daemon.stderr_text()), daemon.stderr_text()
        assert "reload refused, the running configuration stays" in daemon.stderr_text()
        assert ask(port, "still.example.").rcode() == dns.rcode.NOERROR
        assert asked(dot_upstream, "still.example.")
        # `stubby-py reload` says so too, and fails; after a fix it succeeds
        socket_path = str(tmp_path / "control.sock")
        assert cli.main(["reload", "--socket", socket_path]) == 2
        path.write_text(good)
        assert cli.main(["reload", "--socket", socket_path]) == 0


def test_sigterm_answers_queries_in_flight_saves_the_cache_and_exits_0(
    dot_upstream: LocalUpstream, ca_file: str, tmp_path: Path
) -> None:
    port = free_port()
    path = tmp_path / "config.yaml"
    cache_file = tmp_path / "state" / "cache.bin"
    cache_file.parent.mkdir()
    write_config(path, port, [dot_uri(dot_upstream)], ca_file, cache_file=str(cache_file))
    with Daemon(["-c", str(path)], port=port) as daemon:
        assert daemon.process is not None
        process = daemon.process
        dot_upstream.state.delay = 1.0
        names = [f"slow{i}.example." for i in range(20)]
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            udp = pool.submit(ask_many, names[:15], port, timeout=5.0)
            tcp = pool.submit(ask_many, names[15:], port, timeout=5.0, tcp=True)
            assert wait_for(lambda: len(dot_upstream.state.queries) >= 21)  # probe + 20
            process.send_signal(signal.SIGTERM)
            # no longer taking queries: the TCP listener is closed at once
            assert wait_for(lambda: _refused(port), timeout=1.0)
            results = udp.result(10) + tcp.result(10)
        assert rcodes(results) == ["NOERROR"] * len(names)
        assert process.wait(5) == 0
        assert "answers saved" in daemon.stderr_text()
    assert cache_file.stat().st_size > 0


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
    except OSError:
        return True
    return False


def test_reload_applies_listener_limits_and_the_query_log(
    dot_upstream: LocalUpstream, ca_file: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # a short timeout: upstreams replaced by a reload are closed timeout + 0.5 s later
    config = make_config([dot_uri(dot_upstream)], ca_file, timeout=0.3, attempt_timeout=0.3)
    with running_daemon(config) as running:
        daemon = running.daemon
        log_path = tmp_path / "queries.log"
        new = config.with_options(
            tcp_max_connections_per_client=3, query_log=str(log_path),
            listen=(("127.0.0.1", 5399),),
        )  # fmt: skip
        daemon.loader = lambda: new
        assert running.call(daemon.reload) is None
        assert (daemon.tcp.max_per_client, daemon.resolver.query_log) == (3, daemon.query_log)
        assert "listen changed; takes effect at the next restart" in caplog.text
        assert ask(running.port, "logged.example.").answer
        # a query log that cannot be opened: refused, nothing changed
        daemon.loader = lambda: new.with_options(query_log=str(tmp_path / "no" / "such" / "dir"))
        assert "cannot open" in running.call(daemon.reload)
        assert daemon.config is new and daemon.query_log is not None
        daemon.loader = lambda: new.with_options(query_log=None)  # off again: the file is closed
        assert running.call(daemon.reload) is None
        assert daemon.query_log is None and daemon.resolver.query_log is None
        time.sleep(0.9)  # replaced upstreams close timeout + 0.5 s after a reload (not at stop)
    assert "logged.example. A NOERROR" in log_path.read_text()
