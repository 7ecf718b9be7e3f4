"""The connection toolkit: frame reader, idle timer, waiter map (transports/toolkit.py)."""

from __future__ import annotations

import asyncio

import pytest

from stubby_py.core import wire
from stubby_py.core.errors import UpstreamClosedError, UpstreamTimeoutError
from stubby_py.transports.toolkit import Exchanges, FrameReader, IdleTimer, Waiter

QUERY = bytes.fromhex("00000100000100000000000003777777076578616d706c6503636f6d0000010001")


def test_frames_come_out_whole_whatever_the_reads() -> None:
    stream = wire.frame(b"one") + wire.frame(b"") + wire.frame(b"three" * 100)
    for step in (1, 2, 3, 7, len(stream)):
        reader = FrameReader()
        got = []
        for start in range(0, len(stream), step):
            reader.feed(stream[start : start + step])
            while (message := reader.next_message()) is not None:
                got.append(message)
        assert got == [b"one", b"", b"three" * 100], step
        assert reader.buffered() == 0


def test_an_unfinished_frame_stays_buffered() -> None:
    reader = FrameReader()
    reader.feed(wire.frame(b"abc") + wire.frame(b"defgh")[:4])
    assert reader.has_message()
    assert reader.next_message() == b"abc"
    assert not reader.has_message() and reader.next_message() is None
    assert reader.buffered() == 4
    reader.feed(b"fgh")
    assert reader.next_message() == b"defgh"
    reader.feed(b"\x00")
    reader.clear()
    assert reader.buffered() == 0 and reader.next_message() is None


def test_idle_timer_checks_on_the_loop_clock_until_told_to_stop() -> None:
    async def main() -> list[float]:
        loop = asyncio.get_running_loop()
        seen: list[float] = []

        def check(now: float) -> bool:
            seen.append(now)
            return len(seen) < 3

        timer = IdleTimer(loop, 0.01, check)
        timer.start()
        await asyncio.sleep(0.1)
        assert timer.idle_for(loop.time()) >= 0.1 - 0.01
        timer.touch()
        assert timer.idle_for(loop.time()) < 0.01
        timer.cancel()
        return seen

    seen = asyncio.run(main())
    assert len(seen) == 3 and seen == sorted(seen)


def test_waiter_map_settles_each_waiter_once() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        expired: list[int] = []
        exchanges: Exchanges[Waiter] = Exchanges("up", lambda key, waiter: expired.append(key))
        futures = [loop.create_future() for _ in range(4)]
        for key, future in enumerate(futures):
            exchanges.add(key, Waiter(future, QUERY, 0), loop.time() + (0.01 if key == 3 else 5))
        assert 0 in exchanges and len(exchanges) == 4
        exchanges.resolve(0, b"reply")
        assert futures[0].result() == b"reply" and exchanges.answered == 1
        other = loop.create_future()
        assert exchanges.forget(1, other) is None and 1 in exchanges  # not this query's key
        assert exchanges.forget(1, futures[1]) is not None and 1 not in exchanges
        await asyncio.sleep(0.05)
        assert expired == [3]
        with pytest.raises(UpstreamTimeoutError):
            futures[3].result()
        exchanges.fail_all(UpstreamClosedError("closed"))
        with pytest.raises(UpstreamClosedError):
            futures[2].result()
        assert len(exchanges) == 0 and not futures[1].done()

    asyncio.run(main())
