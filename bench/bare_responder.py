#!/usr/bin/env python3
"""A bare uvloop UDP responder answering from a dict: the Python limit for a cache hit.

It does the least a caching stub must do per query, and nothing more: look the question up in a
dict and send back the stored answer with the query's ID in it. No parsing, no checks, no TTL
arithmetic, no statistics. Its socket asks for the same 4 MiB receive buffer as stubby-py's UDP
listener. bench/cache_hits.py measures stubby-py's cache hits against it.

    python -m bench.bare_responder --port 5300 --names names.txt

names.txt is a dnsperf query file (``NAME TYPE`` per line, TYPE A or AAAA); every name gets the
answer ``NAME 3600 IN A 192.0.2.1`` (or AAAA 2001:db8::1), built with dnspython at start. The key
is the question's wire form (name, type, class: what follows the 12-octet header up to the end of
the first question), so a query with EDNS or another ID still finds its answer. Queries for other
questions get no reply; their count is printed at exit (SIGTERM or SIGINT).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import socket
import sys
from pathlib import Path
from typing import Any

import dns.flags
import dns.message
import dns.rrset
import uvloop

HOST = "127.0.0.1"
TTL = 3600
ADDRESSES = {"A": "192.0.2.1", "AAAA": "2001:db8::1"}
RECEIVE_BUFFER = 4 << 20  # as stubby-py's UDP listener asks for, so both queue a burst alike


def load_answers(path: Path) -> dict[bytes, bytes]:
    """Question wire form -> answer wire form (ID 0), for every name in a dnsperf query file."""
    answers: dict[bytes, bytes] = {}
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        name, rdtype = line.split()[:2]
        query = dns.message.make_query(name, rdtype, use_edns=False, id=0)
        response = dns.message.make_response(query)
        response.flags |= dns.flags.RA
        owner = query.question[0].name
        response.answer.append(dns.rrset.from_text(owner, TTL, "IN", rdtype, ADDRESSES[rdtype]))
        answers[query.to_wire()[12:]] = response.to_wire()
    return answers


class Responder(asyncio.DatagramProtocol):
    def __init__(self, answers: dict[bytes, bytes]) -> None:
        self.answers = answers
        self.unknown = 0
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        # The question ends 4 octets (type, class) after the name's root label.
        answer = self.answers.get(data[12 : data.find(b"\0", 12) + 5])
        if answer is None:
            self.unknown += 1
            return
        self.transport.sendto(data[:2] + answer[2:], addr)  # type: ignore[union-attr]


async def serve(port: int, answers: dict[bytes, bytes]) -> None:
    loop = asyncio.get_running_loop()
    responder = Responder(answers)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for option in (getattr(socket, "SO_RCVBUFFORCE", None), socket.SO_RCVBUF):
        if option is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, option, RECEIVE_BUFFER)
                break
    sock.bind((HOST, port))
    transport, _ = await loop.create_datagram_endpoint(lambda: responder, sock=sock)
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    print(f"answering {len(answers)} questions on {HOST}:{port}", flush=True)
    await stop.wait()
    transport.close()
    print(f"queries for unknown questions (not answered): {responder.unknown}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--port", type=int, required=True, help=f"UDP port on {HOST}")
    parser.add_argument("--names", type=Path, required=True, help="dnsperf query file")
    args = parser.parse_args()
    answers = load_answers(args.names)
    if not answers:
        sys.exit(f"no names in {args.names}")
    uvloop.run(serve(args.port, answers))


if __name__ == "__main__":
    main()
