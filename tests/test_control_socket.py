"""The control socket: JSON in, JSON out, owner-only permissions, bad requests answered."""

from __future__ import annotations

import asyncio
import os
import socket
import stat
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from stubby_py.commands import cli
from stubby_py.daemon import control as control_client
from stubby_py.daemon.control import ControlServer, request


@pytest.fixture
def control(tmp_path: Path) -> Iterator[str]:
    path = str(tmp_path / "run" / "control.sock")

    async def stats(_: Mapping[str, Any]) -> dict[str, Any]:
        return {"queries": 42}

    async def echo(args: Mapping[str, Any]) -> dict[str, Any]:
        return {"name": args.get("name")}

    async def broken(_: Mapping[str, Any]) -> dict[str, Any]:
        raise RuntimeError("boom")

    loop = asyncio.new_event_loop()
    server = ControlServer(path, {"stats": stats, "flush": echo, "broken": broken})
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(server.start(), loop).result(5)
    try:
        yield path
    finally:
        asyncio.run_coroutine_threadsafe(server.aclose(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


def test_commands_and_arguments(control: str) -> None:
    assert request(control, "stats") == {"ok": True, "queries": 42}
    assert request(control, "flush", name="example.com") == {"ok": True, "name": "example.com"}


def test_errors_are_replies_not_crashes(control: str) -> None:
    unknown = request(control, "nope")
    assert not unknown["ok"] and "known: broken, flush, stats" in unknown["error"]
    assert request(control, "broken") == {"ok": False, "error": "boom"}
    assert request(control, "stats")["ok"]


def test_socket_is_owner_only(control: str) -> None:
    mode = stat.S_IMODE(os.stat(control).st_mode)
    assert mode & 0o077 == 0


def test_a_failure_with_an_empty_message_is_named_by_its_class(tmp_path: Path) -> None:
    async def slow(_: Mapping[str, Any]) -> dict[str, Any]:
        raise TimeoutError  # as asyncio.wait_for raises it: str() is ""

    path = str(tmp_path / "control.sock")
    loop = asyncio.new_event_loop()
    server = ControlServer(path, {"explain": slow})
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        asyncio.run_coroutine_threadsafe(server.start(), loop).result(5)
        assert request(path, "explain") == {"ok": False, "error": "TimeoutError"}
    finally:
        asyncio.run_coroutine_threadsafe(server.aclose(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


def test_explain_waits_longer_than_the_daemon_may_take() -> None:
    # the daemon answers an explain within its timeout (at most 30 s, config.py) + 2 s
    assert control_client.timeout_for("explain") == 40 > 30 + 2
    assert control_client.timeout_for("stats") == 10


def test_no_reply_in_time_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = str(tmp_path / "control.sock")
    monkeypatch.setattr(control_client, "EXPLAIN_TIMEOUT", 0.2)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as silent:
        silent.bind(path)
        silent.listen()  # connections wait in the backlog: no reply ever comes
        assert cli.main(["explain", "--socket", path, "example.com"]) == 2
    err = capsys.readouterr().err
    assert f"{path}: TimeoutError: no reply from the daemon in 0.2 s" in err


def test_a_daemon_hanging_up_without_a_reply_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = str(tmp_path / "control.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as rude:
        rude.bind(path)
        rude.listen()

        def hang_up() -> None:
            conn, _ = rude.accept()
            with conn:
                conn.recv(65536)  # the request, unanswered

        thread = threading.Thread(target=hang_up, daemon=True)
        thread.start()
        assert cli.main(["stats", "--socket", path]) == 2
        thread.join(5)
    err = capsys.readouterr().err
    assert "ConnectionError: the daemon closed the connection without a reply" in err
