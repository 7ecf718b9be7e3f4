"""Network namespaces a test creates and tears down: a laptop, the network it joins, nftables.

    laptop ns (10.N.0.2) ──veth── network ns (10.N.0.1: its resolver, e.g. dnsmasq;
                                               10.N.1.1 on its lo: the "internet", upstreams)

The addresses live only inside these namespaces (never in the machine's own), so nothing the
test sends can leave the machine. The daemon under test runs in the laptop namespace as a
process (`ip netns exec`); test servers and clients run in threads that enter a namespace with
setns(2) before they open a socket (a thread's namespace is its own: the test process stays
where it was). Everything goes when the context ends (deleting a namespace removes its veth).
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import os
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import pytest

from tests.peers import require_tool

CLONE_NEWNET = 0x40000000
T = TypeVar("T")
_serial = itertools.count(1)


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


def require_netns() -> None:
    """Skip when namespaces cannot be made here (no root, a container without CAP_SYS_ADMIN);
    under CI=true fail instead."""
    require_tool("ip", "/usr/sbin/ip")
    require_tool("nft", "/usr/sbin/nft")
    name = f"s4chk{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", name], capture_output=True, timeout=10)
    if made.returncode == 0:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=10)
        return
    message = f"cannot create network namespaces: {made.stderr.decode().strip()}"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{message} (CI=true: the namespace tests must run)", pytrace=False)
    pytest.skip(message)


def enter(namespace: str) -> None:
    """Move the calling thread into `namespace` (its sockets from now on are there)."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{namespace}", os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {namespace}")
    finally:
        os.close(fd)


def run_in(namespace: str, func: Callable[[], T], timeout: float = 30.0) -> T:
    """`func()` in a fresh thread inside `namespace`; its result (or its exception)."""
    result: list[Any] = []

    def target() -> None:
        try:
            enter(namespace)
            result.append(("ok", func()))
        except BaseException as exc:  # handed to the caller
            result.append(("error", exc))

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    if not result:
        raise TimeoutError(f"{func} in {namespace} took over {timeout} s")
    kind, value = result[0]
    if kind == "error":
        raise value
    return value  # type: ignore[no-any-return]


@dataclass(frozen=True)
class Road:
    """The two namespaces and their addresses."""

    laptop: str
    network: str
    #: the network's own address (its resolver listens here)
    gateway: str
    #: the laptop's address on the network
    laptop_address: str
    #: where the upstreams are ("the internet", past the gateway)
    internet: str
    #: the laptop's interface on the network
    laptop_link: str

    def change_network(self) -> None:
        """A change netwatch sees (an address added on the laptop's link), as a roam would."""
        extra = self.laptop_address.rsplit(".", 1)[0] + ".7/24"
        _ip("-n", self.laptop, "addr", "add", extra, "dev", self.laptop_link)

    def nft(self, *rules: str) -> None:
        """Replace the laptop's output filter with `rules` (nft syntax, e.g.
        `tcp dport 853 drop`); no rules: let everything through."""
        subprocess.run(
            ["ip", "netns", "exec", self.laptop, "nft", "delete table inet road"],
            capture_output=True, timeout=10,
        )  # fmt: skip
        if not rules:
            return
        script = "table inet road {\n chain out {\n  type filter hook output priority 0;\n"
        script += "".join(f"  {rule}\n" for rule in rules) + " }\n}\n"
        subprocess.run(
            ["ip", "netns", "exec", self.laptop, "nft", "-f", "-"],
            input=script.encode(), check=True, capture_output=True, timeout=10,
        )  # fmt: skip

    def exec_command(self, namespace: str, command: list[str]) -> list[str]:
        return ["ip", "netns", "exec", namespace, *command]


@contextlib.contextmanager
def road() -> Iterator[Road]:
    """A laptop namespace joined to a network namespace; torn down at the end."""
    require_netns()
    serial = next(_serial)
    tag = f"{os.getpid() % 10000}x{serial}"
    laptop, network = f"s4lap{tag}", f"s4net{tag}"
    subnet = 10 + (os.getpid() + serial) % 200
    gateway, laptop_address, internet = (
        f"10.{subnet}.0.1", f"10.{subnet}.0.2", f"10.{subnet}.1.1",
    )  # fmt: skip
    veth_laptop, veth_network = f"s4l{tag}"[:15], f"s4n{tag}"[:15]
    made: list[str] = []
    try:
        for name in (laptop, network):
            _ip("netns", "add", name)
            made.append(name)
            _ip("-n", name, "link", "set", "lo", "up")
        _ip("link", "add", veth_laptop, "netns", laptop, "type", "veth",
            "peer", "name", veth_network, "netns", network)  # fmt: skip
        _ip("-n", laptop, "addr", "add", f"{laptop_address}/24", "dev", veth_laptop)
        _ip("-n", network, "addr", "add", f"{gateway}/24", "dev", veth_network)
        _ip("-n", network, "addr", "add", f"{internet}/32", "dev", "lo")
        _ip("-n", laptop, "link", "set", veth_laptop, "up")
        _ip("-n", network, "link", "set", veth_network, "up")
        _ip("-n", laptop, "route", "add", "default", "via", gateway)
        yield Road(laptop, network, gateway, laptop_address, internet, veth_laptop)
    finally:
        for name in made:
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=10)
