"""Opening an upstream's datagram socket never leaves the socket behind (transports/datagram.py).

uvloop's own create_datagram_endpoint leaves its transport to the garbage collector when the
opening task is cancelled (a deadline, a shutdown) or connect(2) fails (an IPv6 address with no
route); the CI run of session 5 failed on the ResourceWarning such a transport gives when it is
collected. The tests count those warnings (recorded, not raised) and the sockets still open.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import os
import subprocess
import warnings
from collections.abc import Coroutine
from typing import Any, TypeVar

import pytest
import uvloop

from stubby_py.core.config import parse_upstream_uri
from stubby_py.transports.datagram import OPENING_TASK, open_connected
from stubby_py.transports.plain import UDPTransport
from tests.daemon_thread import make_config
from tests.netns import require_netns, run_in

T = TypeVar("T")


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _run(coroutine: Coroutine[Any, Any, Any]) -> Any:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coroutine)


async def _settled_fd_change(before: int) -> int:
    """How many more descriptors are open than `before`, once the opens in progress have ended
    and their closes landed: a cancelled open runs on (and closes what it opened) until uvloop's
    address lookup, done on a libuv worker thread, comes back, which on a loaded machine takes
    more than a few turns of the loop (bounded: 2 s each). Ending the loop before that would
    cancel them at uvloop's await, the very loss the daemon's shutdown avoids (OPENING_TASK)."""
    for _ in range(200):
        if not any(t.get_name() == OPENING_TASK and not t.done() for t in asyncio.all_tasks()):
            break
        await asyncio.sleep(0.01)
    for _ in range(200):
        if _open_fds() <= before:
            break
        await asyncio.sleep(0.01)
    return _open_fds() - before


def _run_counting_unclosed(coroutine: Coroutine[Any, Any, T]) -> tuple[T, int]:
    """The coroutine's result on a uvloop loop, and how many transports were collected unclosed
    (garbage left by earlier tests is collected first, so that it is not counted here)."""
    gc.collect()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        result = _run(coroutine)
        gc.collect()
    return result, sum(issubclass(w.category, ResourceWarning) for w in caught)


@pytest.mark.parametrize("addressed_sends", [False, True])
def test_an_open_cancelled_at_any_step_closes_its_socket(addressed_sends: bool) -> None:
    async def cancelled_opens() -> int:
        before = _open_fds()
        for steps in range(6):  # cancelled after 0..5 turns of the loop: each step of the open
            for _ in range(10):
                opening = asyncio.ensure_future(
                    open_connected(
                        asyncio.DatagramProtocol, "127.0.0.1", 53, addressed_sends=addressed_sends
                    )
                )
                for _ in range(steps):
                    await asyncio.sleep(0)
                opening.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    transport, _ = await opening
                    transport.close()  # it was open before the cancel arrived
        return await _settled_fd_change(before)

    assert _run_counting_unclosed(cancelled_opens()) == (0, 0)


def test_a_udp_query_cancelled_in_flight_closes_its_socket() -> None:
    spec = parse_upstream_uri("udp://127.0.0.1:9")
    config = make_config(["udp://127.0.0.1:9"])

    async def cancelled_queries() -> int:
        transport = UDPTransport(spec, config)
        query = bytes.fromhex("abcd01000001000000000000") + b"\x01a\x00\x00\x01\x00\x01"
        before = _open_fds()
        loop = asyncio.get_running_loop()
        for steps in range(6):
            for _ in range(10):
                asking = asyncio.ensure_future(transport.exchange(query, loop.time() + 5))
                for _ in range(steps):
                    await asyncio.sleep(0)
                asking.cancel()
                with contextlib.suppress(asyncio.CancelledError, OSError):
                    await asking
        await transport.aclose()
        return await _settled_fd_change(before)

    assert _run_counting_unclosed(cancelled_queries()) == (0, 0)


def test_no_route_is_an_oserror_and_leaves_no_socket() -> None:
    """In a namespace with only loopback up, 2001:db8::53 has no route: ENETUNREACH."""
    require_netns()
    namespace = f"s6dg{os.getpid() % 100000}"
    subprocess.run(["ip", "netns", "add", namespace], check=True, capture_output=True, timeout=10)
    try:
        subprocess.run(
            ["ip", "-n", namespace, "link", "set", "lo", "up"],
            check=True, capture_output=True, timeout=10,
        )  # fmt: skip

        def attempt() -> tuple[tuple[int, int], int]:
            async def go() -> tuple[int, int]:
                before = _open_fds()
                code = 0
                for _ in range(20):
                    with pytest.raises(OSError) as raised:
                        await open_connected(asyncio.DatagramProtocol, "2001:db8::53", 53)
                    code = raised.value.errno or 0
                return code, _open_fds() - before

            return _run_counting_unclosed(go())

        (code, left), unclosed = run_in(namespace, attempt, timeout=30)
        assert code == errno.ENETUNREACH
        assert (left, unclosed) == (0, 0)
    finally:
        subprocess.run(["ip", "netns", "del", namespace], capture_output=True, timeout=10)


def test_ipv4_and_ipv6_addresses_are_connected_to_as_given() -> None:
    """(A name would be looked up through the system's resolver: not tried here, so nothing
    can leave the machine.)"""

    async def go() -> list[Any]:
        opened = []
        for host in ("127.0.0.1", "::1"):
            transport, _ = await open_connected(asyncio.DatagramProtocol, host, 5353)
            opened.append(transport.get_extra_info("peername")[:2])
            transport.close()
        return opened

    assert _run(go()) == [("127.0.0.1", 5353), ("::1", 5353)]
