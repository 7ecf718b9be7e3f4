"""RFC 5011 at work: the trust anchors follow the anchored zones' key rollovers.

`dnssec/rfc5011.py` keeps each anchored zone's key states (sans-IO); this module feeds it every
DNSKEY RRset the chain of trust authenticates through the anchors, hands the resulting anchors
back to the key chain, keeps the state in a file across restarts (under systemd's
StateDirectory=), and asks for the DNSKEY RRset again when RFC 5011 §2.3 says to, so a daemon
that runs for months sees a rollover through even when nobody asks about the root.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import dns.name
import dns.rrset

from stubby_py.dnssec import rfc5011
from stubby_py.dnssec.anchors import TrustAnchors
from stubby_py.dnssec.chain import KeyChain
from stubby_py.state_files import StateFileError, read_state, state_path, write_state

log = logging.getLogger(__name__)

#: the state file's name in the state directory
STATE_FILE = "trust-anchors.json"
#: the first refresh after start, seconds (then as RFC 5011 §2.3 says)
FIRST_REFRESH = 60.0
#: a refresh never waits longer than this, seconds (the hold-down is counted in days)
MAX_REFRESH = 86_400.0


def default_state_file(environ: Mapping[str, str]) -> str | None:
    """$STATE_DIRECTORY/trust-anchors.json under systemd; else none (tracked in memory only)."""
    return state_path("auto", STATE_FILE, environ)


def load_state(path: str) -> dict[str, Any] | None:
    """The state saved at `path` (rfc5011.parse_state); None if there is no file; ValueError
    (state_files.StateFileError among them) if it is refused or damaged, OSError if unreadable."""
    text = read_state(path, rfc5011.MAX_STATE_BYTES)
    return None if text is None else rfc5011.parse_state(text)


def save_state(path: str, data: dict[str, Any]) -> None:
    """Write the state atomically, readable by the owner only (state_files.write_state);
    StateFileError or OSError when it cannot be."""
    write_state(path, rfc5011.state_text(data))


class AnchorUpdates:
    def __init__(self, configured: TrustAnchors, state_file: str | None) -> None:
        self.configured = configured
        self.state_file = state_file
        self.trackers: dict[dns.name.Name, rfc5011.AnchorTracker] = {}
        self._fingerprint = _fingerprint(configured)
        saved = self._load()
        for zone in configured.zones:
            anchor = configured.get(zone)
            assert anchor is not None
            tracker = None
            if saved is not None and zone.to_text() in saved:
                try:
                    tracker = rfc5011.AnchorTracker.from_json(zone, anchor, saved[zone.to_text()])
                except ValueError as exc:
                    log.warning("trust anchor state for %s ignored: %s", zone, exc)
            self.trackers[zone] = tracker or rfc5011.AnchorTracker(zone, anchor)
        if state_file is None:
            log.info("trust anchor updates (RFC 5011) tracked in memory only: no state directory")
        self.chain: KeyChain | None = None
        self._refresh: asyncio.Task[None] | None = None
        self._closed = False

    def anchors(self) -> TrustAnchors:
        """The anchors to validate from now: the configured ones as the tracked states have them."""
        return TrustAnchors({zone: t.anchors() for zone, t in self.trackers.items()})

    def observe(
        self,
        zone: dns.name.Name,
        dnskeys: dns.rrset.RRset,
        rrsigs: dns.rrset.RRset | None,
        now: float,
    ) -> None:
        """KeyChain's hook: an authenticated DNSKEY RRset of an anchored zone."""
        tracker = self.trackers.get(zone)
        if tracker is None or self._closed:
            return
        states = tracker.states()
        skew = self.chain.skew if self.chain is not None else 3600.0
        try:
            changed = tracker.observe(dnskeys, rrsigs, now, skew=skew)
        except ValueError as exc:  # not signed by a key this tracker trusts: learn nothing
            log.debug("trust anchor update for %s skipped: %s", zone, exc)
            return
        if tracker.states() != states:
            self._save()  # a key's state moved (a new hold-down begun, a revocation...)
        if not changed:
            return
        log.info("trust anchors for %s updated (RFC 5011)", zone)
        if tracker.exhausted:
            log.error(
                "every trust anchor of %s is revoked: answers in it cannot be validated until "
                "new anchors are configured (trust_anchors: FILE)", zone,
            )  # fmt: skip
        if self.chain is not None:
            self.chain.anchors = self.anchors()
            self.chain.flush()  # what was authenticated with the old anchors is checked again

    def start(self, ask: Callable[[dns.name.Name], Awaitable[object]]) -> None:
        if self._closed or self._refresh is not None:
            return
        """Refresh every anchored zone's keys on RFC 5011's schedule; `ask` authenticates a
        zone's DNSKEY RRset through the pool (which calls `observe`)."""
        self._refresh = asyncio.get_running_loop().create_task(self._refresh_loop(ask))

    async def _refresh_loop(self, ask: Callable[[dns.name.Name], Awaitable[object]]) -> None:
        delay = FIRST_REFRESH
        while True:
            await asyncio.sleep(delay)
            delay = MAX_REFRESH
            for zone in self.trackers:
                try:
                    await ask(zone)
                except Exception:  # a refresh must never end the refreshing
                    log.exception("trust anchor refresh for %s failed", zone)
                delay = min(delay, self._next_delay(zone))

    def _next_delay(self, zone: dns.name.Name) -> float:
        entry = self.chain.cached(zone, time.time()) if self.chain is not None else None
        tracker = self.trackers[zone]
        now = time.time()
        if entry is None or not entry.keys:
            return max(1.0, tracker.retry_after(now, 86_400, now + 86_400) - now)
        ttl = int(max(0.0, entry.expires - now))
        return max(1.0, min(MAX_REFRESH, tracker.next_refresh(now, ttl, entry.expires) - now))

    async def aclose(self) -> None:
        if self._closed:
            return
        if self._refresh is not None:
            self._refresh.cancel()
            await asyncio.gather(self._refresh, return_exceptions=True)
        self._save()  # last-seen times, which alone do not trigger a save
        self._closed = True

    def _load(self) -> dict[str, object] | None:
        """The saved trackers, when they were made for the anchors configured now (a key taken
        out of the configuration must not stay trusted through the state file)."""
        if self.state_file is None:
            return None
        try:
            saved = load_state(self.state_file)
        except (OSError, ValueError) as exc:
            log.warning("trust anchor state %s ignored: %s", self.state_file, exc)
            return None
        if saved is None:
            return None
        if saved.get("configured") != self._fingerprint:
            log.warning(
                "trust anchor state %s was kept for other configured anchors: starting afresh",
                self.state_file,
            )  # fmt: skip
            return None
        trackers = saved.get("trackers")
        return trackers if isinstance(trackers, dict) else None

    def _save(self) -> None:
        if self.state_file is None or self._closed:
            return
        trackers = {zone.to_text(): t.to_json() for zone, t in self.trackers.items()}
        data = {"configured": self._fingerprint, "trackers": trackers}
        try:
            save_state(self.state_file, data)
        except (OSError, StateFileError) as exc:
            log.warning("trust anchor state %s not saved: %s", self.state_file, exc)


def _fingerprint(anchors: TrustAnchors) -> list[str]:
    """The configured anchors as text, in a stable order: what a saved state was made for."""
    lines = []
    for zone in anchors.zones:
        anchor = anchors.get(zone)
        assert anchor is not None
        lines += [f"{zone} DS {ds.to_text()}" for ds in anchor.ds]
        lines += [f"{zone} DNSKEY {key.to_text()}" for key in anchor.dnskeys]
    return sorted(lines)
