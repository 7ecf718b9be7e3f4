"""The control socket: JSON in, JSON out, owner-only permissions, bad requests answered."""

from __future__ import annotations

import asyncio
import os
import stat
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from stubby_py.control import ControlServer, request


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
