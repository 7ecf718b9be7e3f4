"""What the query path works with, built from the configuration and rebuilt on reload: the
upstream groups, forwarding rules, admission rules, DNSSEC validation and cache limits; the
cache file (loaded at start, saved at stop) and the state paths; the network reset and the
stats snapshot. Owned by the daemon (service.py), which passes the environment in.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from stubby_py.core import admission
from stubby_py.core.access import AccessList
from stubby_py.core.cache import Cache
from stubby_py.core.config import DEFAULT_GROUP, Config, UpstreamSpec
from stubby_py.core.pool import UpstreamHealth
from stubby_py.core.ratelimit import RateLimiter
from stubby_py.core.router import Router
from stubby_py.daemon import cache_persistence, heap, stats
from stubby_py.daemon.cache_persistence import default_cache_file
from stubby_py.daemon.fallback import fallback_figures
from stubby_py.daemon.query_path import Resolver
from stubby_py.daemon.upstreams import UpstreamGroup, transport_settings
from stubby_py.transports.base import Transport

if TYPE_CHECKING:
    from stubby_py.daemon.validation import Validation

log = logging.getLogger(__name__)


def admission_rules(config: Config) -> admission.Rules:
    limiter = (
        RateLimiter(
            config.access.rate_limit,
            config.access.rate_limit_burst,
            ipv6_prefix=config.access.ipv6_client_prefix,
        )
        if config.access.rate_limit > 0
        else None
    )
    return admission.Rules(
        AccessList(config.access.allow),
        limiter,
        AccessList(config.access.rate_limit_exempt),
        refuse_denied=config.access.deny_action == "refuse",
        refuse_limited=config.access.rate_limit_action == "refuse",
    )


class Runtime:
    """The query path (`resolver`) and what it is configured with."""

    def __init__(
        self,
        config: Config,
        environ: Mapping[str, str],
        transports: Sequence[Transport] | None = None,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        #: the environment state paths are resolved from (STATE_DIRECTORY under systemd)
        self._environ = dict(environ)
        self.resolver = Resolver(Cache(config.cache))
        self._retired: list[Transport] = []
        self._tasks_aside: set[asyncio.Task[None]] = set()
        self._apply(config, transports)
        self.cache_file = default_cache_file(config.service.cache_file, self._environ)
        resolver = self.resolver
        if self.cache_file is not None and resolver.validation is not None:
            # a file cannot prove what it says (a non-DO answer is kept without its RRSIGs):
            # under validation only what this run validated is served
            log.info("cache: %s not loaded (dnssec: validate)", self.cache_file)
        elif self.cache_file is not None:
            loaded = cache_persistence.load(
                resolver.cache, self.cache_file, self._loop.time(), time.time()
            )
            log.info("cache: %d answers loaded from %s", loaded, self.cache_file)

    @property
    def config(self) -> Config:
        return self.resolver.config

    def _apply(
        self,
        config: Config,
        transports: Sequence[Transport] | None,
        reuse: Mapping[UpstreamSpec, tuple[Transport, UpstreamHealth]] | None = None,
    ) -> None:
        """Take a configuration: upstream groups, rules, access list, rate limit, cache limits.
        Everything is built before anything is replaced, so a failure changes nothing (the
        validation first: reading the trust anchors is what most often fails)."""
        resolver = self.resolver
        validation = self._validation_for(config)
        groups = {
            DEFAULT_GROUP: UpstreamGroup(
                DEFAULT_GROUP, config.forwarding.upstreams, config, transports, reuse
            )
        }
        for name, specs in config.forwarding.groups:
            groups[name] = UpstreamGroup(name, specs, config, reuse=reuse)
        router = Router(dict(config.forwarding.rules))
        rules = admission_rules(config)
        limits = config.cache
        if validation is not resolver.validation:
            # what was cached under other DNSSEC settings must not pass as checked under these
            resolver.answer_notes.clear()
            if resolver.validation is not None:
                resolver.cache.flush()
                self._aside(resolver.validation.aclose())
            elif validation is not None:
                resolver.cache.drop_unvalidated()
            if validation is not None:
                validation.start()
        resolver.config = config
        resolver.validation = validation
        resolver.groups = groups
        resolver.router = router
        resolver.rules = rules
        resolver.acl = rules.acl
        resolver.cache.apply_limits(limits)

    def _validation_for(self, config: Config) -> Validation | None:
        """The validation a configuration asks for; the current one (its key cache warm) when the
        DNSSEC settings and the trust anchors (the file is read again on reload) did not change."""
        if config.dnssec.mode != "validate":
            return None
        # imported here: the validator needs cryptography (~8 MB) that `dnssec: off` never does
        from stubby_py.daemon.anchor_updates import AnchorUpdates, default_state_file
        from stubby_py.daemon.validation import Validation
        from stubby_py.dnssec import anchors
        from stubby_py.dnssec.chain import KeyChain
        from stubby_py.dnssec.validate import Validator

        trusted = (
            anchors.load(config.dnssec.trust_anchors)
            if config.dnssec.trust_anchors
            else anchors.builtin()
        )
        old = self.resolver.validation
        if (
            old is not None
            and old.configured == trusted
            and (old.updates is not None) == config.dnssec.trust_anchor_updates
            and old.validator.chain.skew == config.dnssec.clock_skew
            and old.validator.chain.max_iterations == config.dnssec.nsec3_max_iterations
        ):
            old.timeout = config.forwarding.timeout
            old.validator.aggressive = config.dnssec.aggressive_nsec
            if not config.dnssec.aggressive_nsec:
                old.validator.chain.denials.flush()
            return old
        updates = None
        if config.dnssec.trust_anchor_updates:
            updates = AnchorUpdates(trusted, default_state_file(self._environ))
        chain = KeyChain(
            updates.anchors() if updates is not None else trusted,
            skew=config.dnssec.clock_skew,
            max_iterations=config.dnssec.nsec3_max_iterations,
            on_anchor_keys=updates.observe if updates is not None else None,
        )
        if updates is not None:
            updates.chain = chain
        resolver = self.resolver
        return Validation(
            Validator(chain, aggressive=config.dnssec.aggressive_nsec), config.forwarding.timeout,
            resolver.counters, configured=trusted, updates=updates,
            main_group=lambda: resolver.groups[DEFAULT_GROUP],
        )  # fmt: skip

    def reconfigure(self, config: Config) -> None:
        """Apply a new configuration (SIGHUP) keeping the cache. Upstreams that did not change
        keep their connections and health; queries in flight finish on the upstreams they
        started with, and the connections of removed upstreams close once those are done."""
        groups = self.resolver.groups
        old = [t for group in groups.values() for t in group.transports]
        reuse: dict[UpstreamSpec, tuple[Transport, UpstreamHealth]] = {}
        if transport_settings(config) == transport_settings(self.config):
            for group in groups.values():
                for transport, health in zip(group.transports, group.pool.health, strict=True):
                    reuse.setdefault(transport.spec, (transport, health))
        self._apply(config, None, reuse)
        self.cache_file = default_cache_file(config.service.cache_file, self._environ)
        kept = {id(t) for group in self.resolver.groups.values() for t in group.transports}
        retired = [t for t in old if id(t) not in kept]
        if retired:
            self._retired.extend(retired)
            self._aside(self._retire(retired))

    def _aside(self, work: Coroutine[Any, Any, None]) -> None:
        """Run work nobody waits for (retiring, closing); cancelled at shutdown."""
        task = self._loop.create_task(work)
        self._tasks_aside.add(task)
        task.add_done_callback(self._tasks_aside.discard)

    async def _retire(self, transports: list[Transport]) -> None:
        await asyncio.sleep(self.config.forwarding.timeout + 0.5)
        for transport in transports:
            await transport.aclose()
            self._retired.remove(transport)
        heap.release_free_pages()  # what the old transports left between live chunks

    def network_changed(self, reason: str) -> None:
        """The network changed or the machine woke up (netwatch.py): every upstream connection
        is retired, so no later query travels on one opened before, and every backoff is
        forgotten, so upstreams are tried again at once. The cache keeps answering meanwhile."""
        seen: set[int] = set()
        for group in self.resolver.groups.values():
            group.pool.reset()
            for transport in group.transports:
                if id(transport) not in seen:  # groups may share a transport after a reload
                    seen.add(id(transport))
                    transport.reset()
        self.resolver.counters["network_changes"] += 1
        log.info("network change (%s): upstream connections renewed, backoff reset", reason)

    async def aclose(self) -> None:
        """Save the cache (if it persists) and close the upstream connections."""
        resolver = self.resolver
        if self.cache_file is not None:
            saved = cache_persistence.save(
                resolver.cache, self.cache_file, self._loop.time(), time.time()
            )
            if saved:
                log.info("cache: %d answers saved to %s", len(resolver.cache), self.cache_file)
        for task in list(self._tasks_aside):
            task.cancel()
        if resolver.validation is not None:
            await resolver.validation.aclose()
        for group in resolver.groups.values():
            await group.aclose()
        for transport in self._retired:
            await transport.aclose()

    def snapshot(self) -> dict[str, Any]:
        now = self._loop.time()
        resolver = self.resolver
        return {
            "counters": dict(resolver.counters),
            "cache": {"entries": len(resolver.cache), "bytes": resolver.cache.nbytes,
                      "evictions": resolver.cache.evictions},
            "upstreams": [
                {"group": group.name, "name": t.name, "transport": t.spec.transport,
                 "queries": group.pool.health[i].attempts,
                 "failures": group.pool.health[i].failures,
                 "failure_kinds": dict(group.pool.health[i].failure_kinds),
                 "handshakes": t.stats.handshakes, "mismatched": t.stats.mismatched,
                 "resent": t.stats.resent,
                 "state": group.pool.health[i].state(now),
                 "latency_ewma_ms": _ms(group.pool.health[i].latency_ewma),
                 "latencies_ms": [round(x * 1000, 3) for x in group.pool.health[i].latencies],
                 **fallback_figures(t),
                 **stats.upstream_figures(
                     group.pool.health[i], t.stats, now, sum(h.answers for h in group.pool.health)
                 )}
                for group in resolver.groups.values()
                for i, t in enumerate(group.transports)
            ],
        }  # fmt: skip


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)
