"""A captive portal's network resolver: dnsmasq answering one address (the portal's) for every
name, logging each query it gets (`--log-queries`), so a test can say which names reached it."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

from tests.peers import PeerError, _stop, require_tool
from tests.service import wait_for

PORTAL_ADDRESS = "192.0.2.99"


@contextlib.contextmanager
def portal_dnsmasq(
    log: Path,
    listen: str,
    port: int,
    ready: Callable[[], bool],
    prefix: tuple[str, ...] = (),
) -> Iterator[Path]:
    """dnsmasq on listen:port (run under `prefix`, e.g. `ip netns exec NS`); yields its log."""
    binary = require_tool("dnsmasq", "/usr/sbin/dnsmasq")
    command = [
        *prefix, binary, "--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv",
        "--no-hosts", "--no-poll", "--pid-file=", f"--port={port}", f"--listen-address={listen}",
        "--bind-interfaces", f"--address=/#/{PORTAL_ADDRESS}", "--log-queries",
        f"--log-facility={log}",
    ]  # fmt: skip
    if os.geteuid() == 0:
        command += ["--user=root", "--group=root"]  # stay able to write the log
    with (log.parent / f"{log.name}.console").open("wb") as console:
        process = subprocess.Popen(command, stdout=console, stderr=subprocess.STDOUT)
    try:
        up = wait_for(lambda: process.poll() is not None or ready(), timeout=10)
        if not up or process.poll() is not None:
            raise PeerError(f"dnsmasq did not come up:\n{log.read_text(errors='replace')}")
        yield log
    finally:
        _stop(process, 5)


def names_asked(log: Path) -> set[str]:
    """The names dnsmasq was asked (`query[A] NAME from ...` lines), lower case, no dot."""
    names = set()
    for line in log.read_text(errors="replace").splitlines():
        parts = line.split()
        for index, part in enumerate(parts):
            if part.startswith("query[") and index + 1 < len(parts):
                names.add(parts[index + 1].lower().rstrip("."))
    return names
