"""The query path, top to bottom: request checks, forwarding through the pool, response shaping.

One place turns errors into answers (`_answer_error`). A listener hands `handle` the client's bytes
and a `respond` callback; every query that is at least a header is answered exactly once, from here,
before its deadline: with the answer, or with SERVFAIL and an Extended DNS Error (RFC 8914).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Callable, Sequence
from typing import Any

from dns.edns import EDECode
from dns.rcode import Rcode

from stubby_py import edns, response, wire
from stubby_py.config import Config
from stubby_py.errors import (
    BadVersionError,
    ClientError,
    MalformedQueryError,
    NoUpstreamAvailableError,
    NotImplementedOpcodeError,
    RefusedError,
    UpstreamError,
    UpstreamProtocolError,
)
from stubby_py.pool import Pool
from stubby_py.transports.base import Transport

log = logging.getLogger(__name__)

Respond = Callable[[bytes], None]
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
ACL_CACHE_LIMIT = 4096


class AccessList:
    """Client networks allowed to query; verdicts cached per address string."""

    def __init__(self, networks: Sequence[str]) -> None:
        self._networks: list[IPNetwork] = [ipaddress.ip_network(n) for n in networks]
        self._verdicts: dict[str, bool] = {}

    def allows(self, address: str) -> bool:
        verdict = self._verdicts.get(address)
        if verdict is None:
            verdict = self._judge(address)
            if len(self._verdicts) >= ACL_CACHE_LIMIT:
                self._verdicts.clear()
            self._verdicts[address] = verdict
        return verdict

    def _judge(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address.partition("%")[0])
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in net for net in self._networks)


class Resolver:
    def __init__(self, config: Config, transports: Sequence[Transport]) -> None:
        self.config = config
        self.transports = list(transports)
        self.pool = Pool(len(self.transports))
        self.acl = AccessList(config.allow)
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop = asyncio.get_running_loop()
        self.counters: dict[str, int] = {
            "queries": 0, "dropped": 0, "formerr": 0, "refused": 0, "notimp": 0,
            "servfail": 0, "answered": 0,
        }  # fmt: skip

    # -- entry point for listeners ------------------------------------------------------
    def handle(self, data: bytes, client_ip: str, respond: Respond, *, udp: bool) -> None:
        """Answer `data` through `respond`, now or later; drop only what is not even a header."""
        counters = self.counters
        counters["queries"] += 1
        if len(data) < wire.HEADER_LEN:
            counters["dropped"] += 1
            return
        flags = wire.U16.unpack_from(data, 2)[0]
        if flags & wire.QR:
            counters["dropped"] += 1  # a response sent to us: never answer it (no loops)
            return
        if flags & wire.OPCODE_MASK:
            self._reject(respond, None, data, flags, NotImplementedOpcodeError())
            return
        try:
            query = wire.parse_query(data)
        except wire.WireError:
            try:
                query = wire.parse_unusual_query(data)
            except wire.WireError:
                self._reject(respond, None, data, flags, MalformedQueryError())
                return
        if not self.acl.allows(client_ip):
            self._reject(respond, query, data, flags, RefusedError())
            return
        if query.edns_version > 0:
            self._reject(respond, query, data, flags, BadVersionError())
            return
        task = self._loop.create_task(self._resolve(query, respond, udp))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _reject(
        self,
        respond: Respond,
        query: wire.ClientQuery | None,
        data: bytes,
        flags: int,
        error: ClientError,
    ) -> None:
        """Answer a request we will not forward: FORMERR, NOTIMP, REFUSED or BADVERS."""
        name = Rcode.to_text(error.rcode).lower()
        self.counters[name] = self.counters.get(name, 0) + 1
        if query is None:
            respond(wire.header_only_reply(None, wire.header_id(data), flags, error.rcode))
            return
        ede = (error.ede, "") if error.ede is not None else None
        respond(response.error_reply(query, error.rcode, ede))

    # -- forwarding -------------------------------------------------------------------------
    async def _resolve(self, query: wire.ClientQuery, respond: Respond, udp: bool) -> None:
        deadline = self._loop.time() + self.config.timeout
        limit = response.udp_limit(query) if udp else None
        try:
            body = await self._forward(query, deadline)
        except UpstreamError as exc:
            respond(self._answer_error(query, exc))
            return
        except Exception:
            log.exception("internal error while resolving")
            respond(response.error_reply(query, Rcode.SERVFAIL, (EDECode.OTHER, "internal error")))
            return
        self.counters["answered"] += 1
        respond(response.client_reply(body, query, limit=limit))

    def _answer_error(self, query: wire.ClientQuery, exc: UpstreamError) -> bytes:
        self.counters["servfail"] += 1
        ede_code = exc.ede if exc.ede is not None else EDECode.OTHER
        return response.error_reply(query, Rcode.SERVFAIL, (ede_code, str(exc.args[0]) if exc.args else exc.kind))

    async def _forward(self, query: wire.ClientQuery, deadline: float) -> bytes:
        """Ask upstreams in the pool's order until one answers; return the reply body (no OPT)."""
        loop = self._loop
        padded: bytes | None = None
        plain: bytes | None = None
        failures: list[str] = []
        for index in self.pool.order(loop.time()):
            transport = self.transports[index]
            now = loop.time()
            if now >= deadline:
                break
            if transport.is_encrypted:
                if padded is None:
                    padded = edns.upstream_query(
                        query, pad_block=self.config.padding_block_size, do=query.do, keepalive=True
                    )
                wire_query = padded
            else:
                if plain is None:
                    plain = edns.upstream_query(query, pad_block=0, do=query.do)
                wire_query = plain
            try:
                reply = await transport.exchange(wire_query, min(deadline, now + self.config.attempt_timeout))
                body = self._reply_body(reply, transport)
            except UpstreamError as exc:
                self.pool.record_failure(index, loop.time())
                failures.append(f"{transport.name}: {exc.kind}")
                log.debug("%s", exc)
                continue
            self.pool.record_success(index, loop.time() - now)
            return body
        raise NoUpstreamAvailableError(
            "all upstreams failed: " + ", ".join(failures) if failures else "no upstream in time"
        )

    @staticmethod
    def _reply_body(reply: bytes, transport: Transport) -> bytes:
        try:
            layout = wire.scan_reply(reply)
        except wire.WireError as exc:
            raise UpstreamProtocolError(f"{transport.name}: malformed reply ({exc})") from None
        if layout.opt_span is not None and wire.opt_rcode_high(reply, layout.opt_span):
            raise UpstreamProtocolError(f"{transport.name}: unexpected extended RCODE")
        body, _ttls = wire.without_opt(reply, layout)
        return body

    # -- life cycle ---------------------------------------------------------------------------
    async def drain(self, timeout: float) -> None:
        """Wait (bounded) for the queries in flight to be answered."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=timeout)

    async def aclose(self) -> None:
        for transport in self.transports:
            await transport.aclose()

    def snapshot(self) -> dict[str, Any]:
        return {
            "counters": dict(self.counters),
            "upstreams": [
                {"name": t.name, "queries": t.stats.queries, "failures": t.stats.failures,
                 "handshakes": t.stats.handshakes, "mismatched": t.stats.mismatched}
                for t in self.transports
            ],
        }  # fmt: skip
