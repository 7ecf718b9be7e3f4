"""The cache on its own, with an injected clock: TTLs, clamps, negative and failed answers, stale
answers, prefetch, eviction bounds, flushing and persistence. No network, no event loop."""

from __future__ import annotations

import logging
import math
import os
import random
import struct
import time
import zlib
from pathlib import Path

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stubby_py.core import cache as cache_module
from stubby_py.core import wire
from stubby_py.core.cache import (
    FAILURE_MAX_HOLD,
    NO_SOA_NEGATIVE_TTL,
    STALE_TTL,
    Cache,
    CacheFileError,
    CacheLimits,
    ValidationStatus,
)
from stubby_py.daemon import cache_persistence
from stubby_py.daemon.cache_persistence import default_cache_file

SOA = "ns.example. hostmaster.example. 1 7200 900 1209600 {minimum}"


def make_reply(
    name: str = "www.example.",
    rdtype: str = "A",
    *,
    answers: list[tuple[str, int, str, str]] | None = None,
    rcode: int = dns.rcode.NOERROR,
    soa: tuple[int, int] | None = None,
    do: bool = False,
    cd: bool = False,
    tc: bool = False,
) -> tuple[bytes, bytes, list[int], wire.ReplyLayout]:
    """(key, body, ttl offsets, layout) as the resolver has them after an upstream exchange.

    answers: (owner, ttl, type, rdata); default one A with TTL 300. soa: (SOA TTL, MINIMUM).
    """
    query = dns.message.make_query(name, rdtype, use_edns=0, want_dnssec=do)
    if cd:
        query.flags |= dns.flags.CD
    reply = dns.message.make_response(query)
    reply.set_rcode(dns.rcode.Rcode(rcode))
    if tc:
        reply.flags |= dns.flags.TC
    if answers is None:
        answers = [(name, 300, "A", "192.0.2.1")] if rcode == dns.rcode.NOERROR else []
    for owner, ttl, kind, rdata in answers:
        reply.answer.append(dns.rrset.from_text(owner, ttl, "IN", kind, rdata))
    if soa is not None:
        soa_ttl, minimum = soa
        zone = name.split(".", 1)[1] or "."
        reply.authority.append(
            dns.rrset.from_text(zone, soa_ttl, "IN", "SOA", SOA.format(minimum=minimum))
        )
    data = reply.to_wire(max_size=65535)
    layout = wire.scan_reply(data)
    body, offsets = wire.without_opt(data, layout)
    return wire.parse_query(query.to_wire()).key, body, offsets, layout


def ttls(body: bytes) -> list[int]:
    message = dns.message.from_wire(body)
    return [rrset.ttl for section in (message.answer, message.authority) for rrset in section]


def stored(
    limits: CacheLimits | None = None, now: float = 100.0, **reply: object
) -> tuple[Cache, bytes]:
    cache = Cache(limits or CacheLimits())
    key, body, offsets, layout = make_reply(**reply)  # type: ignore[arg-type]
    assert cache.store(key, body, offsets, layout, now)
    return cache, key


# --------------------------------------------------------------------------- TTLs


def test_ttls_decrement_with_time_and_zero_is_not_fresh() -> None:
    answers = [
        ("www.example.", 300, "CNAME", "edge.example."),
        ("edge.example.", 60, "A", "192.0.2.7"),
    ]
    cache, key = stored(answers=answers)
    assert ttls(cache.fresh(key, 100.9)) == [300, 60]  # type: ignore[arg-type]
    assert ttls(cache.fresh(key, 110.2)) == [290, 50]  # type: ignore[arg-type]
    assert ttls(cache.fresh(key, 110.7)) == [290, 50]  # type: ignore[arg-type]
    assert ttls(cache.fresh(key, 159.99)) == [241, 1]  # type: ignore[arg-type]
    # the answer lives as long as its shortest TTL: at zero it is no longer served as fresh
    assert cache.fresh(key, 160.0) is None
    assert cache.fresh(key, 1000.0) is None


def test_ttl_patching_composes_over_many_steps() -> None:
    cache, key = stored()
    for step in range(1, 300):
        body = cache.fresh(key, 100.0 + step + 0.5)
        assert body is not None and ttls(body) == [300 - step]
    assert cache.fresh(key, 400.0) is None


def test_a_hit_returns_the_body_ready_for_the_client() -> None:
    cache, key = stored(name="Www.Example.")
    body = cache.fresh(key, 101.0)
    assert body is not None
    message = dns.message.from_wire(body)
    assert message.answer[0][0].address == "192.0.2.1"


def test_key_separates_type_do_and_cd() -> None:
    cache = Cache()
    for variant in ({}, {"rdtype": "AAAA"}, {"do": True}, {"cd": True}):
        key, body, offsets, layout = make_reply(**variant)
        assert cache.fresh(key, 100.0) is None
        cache.store(key, body, offsets, layout, 100.0)
    assert len(cache) == 4


@pytest.mark.parametrize(
    ("limits", "record_ttl", "expected"),
    [
        (CacheLimits(), 300, 300),
        (CacheLimits(), 200_000, 86_400),  # Unbound's default cache-max-ttl: one day
        (CacheLimits(), 1, 1),  # and no minimum
        (CacheLimits(max_ttl=60), 300, 60),
        (CacheLimits(min_ttl=120), 30, 120),
        (CacheLimits(min_ttl=120, max_ttl=200), 150, 150),
    ],
)
def test_ttl_clamps(limits: CacheLimits, record_ttl: int, expected: int) -> None:
    cache, key = stored(limits, answers=[("www.example.", record_ttl, "A", "192.0.2.1")])
    assert ttls(cache.fresh(key, 100.0)) == [expected]  # type: ignore[arg-type]
    assert cache.fresh(key, 100.0 + expected - 0.01) is not None
    assert cache.fresh(key, 100.0 + expected) is None


def test_zero_ttl_answers_are_not_cached() -> None:
    cache = Cache()
    key, body, offsets, layout = make_reply(answers=[("www.example.", 0, "A", "192.0.2.1")])
    assert not cache.store(key, body, offsets, layout, 100.0)
    assert len(cache) == 0


# --------------------------------------------------------------------------- negative answers


@pytest.mark.parametrize(
    ("soa", "expected"),
    [((900, 60), 60), ((30, 3600), 30), ((86_400, 86_400), 3600)],
)
@pytest.mark.parametrize("rcode", [dns.rcode.NXDOMAIN, dns.rcode.NOERROR])
def test_negative_ttl_is_min_of_soa_ttl_and_minimum(
    rcode: int, soa: tuple[int, int], expected: int
) -> None:
    """RFC 2308 §5; NOERROR with no answer is NODATA; the default negative ceiling is one hour."""
    cache, key = stored(rcode=rcode, answers=[], soa=soa)
    body = cache.fresh(key, 100.0)
    assert body is not None
    assert dns.message.from_wire(body).rcode() == rcode
    assert ttls(body) == [expected]  # the SOA carries the negative TTL
    assert cache.fresh(key, 100.0 + expected - 0.01) is not None
    assert cache.fresh(key, 100.0 + expected) is None


def test_negative_ceiling_is_configurable() -> None:
    limits = CacheLimits(negative_max_ttl=10)
    cache, key = stored(limits, rcode=dns.rcode.NXDOMAIN, soa=(900, 900))
    assert ttls(cache.fresh(key, 100.0)) == [10]  # type: ignore[arg-type]


def test_nodata_after_a_cname_uses_the_soa_minimum() -> None:
    answers = [("www.example.", 3600, "CNAME", "edge.example.")]
    cache, key = stored(answers=answers, soa=(900, 40))
    assert ttls(cache.fresh(key, 100.0)) == [40, 40]  # type: ignore[arg-type]


@pytest.mark.parametrize("rcode", [dns.rcode.NXDOMAIN, dns.rcode.NOERROR])
def test_negative_answer_without_soa_is_kept_only_briefly(rcode: int) -> None:
    cache, key = stored(rcode=rcode, answers=[])
    assert cache.fresh(key, 100.0 + NO_SOA_NEGATIVE_TTL - 0.01) is not None
    assert cache.fresh(key, 100.0 + NO_SOA_NEGATIVE_TTL) is None


@pytest.mark.parametrize(
    "reply",
    [
        {"rcode": dns.rcode.SERVFAIL},
        {"rcode": dns.rcode.REFUSED},
        {"rcode": dns.rcode.FORMERR},
        {"tc": True},
    ],
)
def test_failures_refusals_and_truncated_replies_are_not_cached(reply: dict[str, object]) -> None:
    cache = Cache()
    key, body, offsets, layout = make_reply(**reply)  # type: ignore[arg-type]
    assert not cache.store(key, body, offsets, layout, 100.0)
    assert cache.fresh(key, 100.0) is None


def test_bogus_answers_are_not_cached_and_status_is_kept() -> None:
    cache = Cache()
    key, body, offsets, layout = make_reply()
    assert not cache.store(key, body, offsets, layout, 100.0, ValidationStatus.BOGUS)
    assert cache.store(key, body, offsets, layout, 100.0, ValidationStatus.SECURE)
    entry = cache.peek(key)
    assert entry is not None and entry.status == ValidationStatus.SECURE


# --------------------------------------------------------------------------- failures (RFC 9520)


def test_failure_hold_starts_at_one_second_and_doubles_up_to_five_minutes() -> None:
    cache = Cache()
    key = make_reply()[0]
    now = 0.0
    holds = []
    for _ in range(12):
        entry = cache.record_failure(key, now, reason="timeout")
        holds.append(entry.hold)
        assert cache.failure(key, now + entry.hold - 0.01) is entry
        assert cache.failure(key, now + entry.hold) is None
        now += entry.hold + 0.5  # asked again soon after the hold ended, and failed again
    assert holds == [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]
    assert max(holds) == FAILURE_MAX_HOLD


def test_failure_hold_resets_after_a_quiet_spell_and_on_success() -> None:
    cache = Cache()
    key, body, offsets, layout = make_reply()
    cache.record_failure(key, 0.0)
    assert cache.record_failure(key, 1.5).hold == 2
    assert cache.record_failure(key, 100.0).hold == 1  # long after: back to 1 s
    cache.store(key, body, offsets, layout, 100.5)
    assert cache.failure(key, 100.6) is None
    assert cache.record_failure(key, 101.0).hold == 1


def test_failure_memory_is_bounded() -> None:
    cache = Cache(CacheLimits(max_failures=100))
    for index in range(1000):
        cache.record_failure(index.to_bytes(4, "big"), 0.0)
    assert cache.failure((999).to_bytes(4, "big"), 0.5) is not None
    assert cache.failure((0).to_bytes(4, "big"), 0.5) is None
    assert len(cache._failures) == 100


# --------------------------------------------------------------------------- stale (RFC 8767)


def test_stale_answer_after_expiry_has_ttl_30() -> None:
    answers = [
        ("www.example.", 300, "CNAME", "edge.example."),
        ("edge.example.", 60, "A", "192.0.2.7"),
    ]
    cache, key = stored(answers=answers)
    assert cache.stale(key, 150.0) is None  # still fresh: not stale
    body = cache.stale(key, 160.0)
    assert body is not None and ttls(body) == [STALE_TTL, STALE_TTL]
    assert dns.message.from_wire(body).answer[1][0].address == "192.0.2.7"
    assert cache.stale(key, 160.0 + 86_400 - 1) is not None  # default window: one day
    assert cache.stale(key, 160.0 + 86_400) is None


def test_stale_window_and_switch() -> None:
    cache, key = stored(CacheLimits(stale_window=60))
    assert cache.stale(key, 400.0 + 59) is not None
    assert cache.stale(key, 400.0 + 60) is None
    cache, key = stored(CacheLimits(serve_stale=False))
    assert cache.stale(key, 401.0) is None


# --------------------------------------------------------------------------- prefetch


def test_prefetch_fires_once_for_a_popular_answer_in_its_last_tenth() -> None:
    cache, key = stored(answers=[("www.example.", 100, "A", "192.0.2.1")], now=0.0)
    cache.fresh(key, 10.0)
    cache.fresh(key, 50.0)
    assert cache.prefetch_due == []
    assert cache.fresh(key, 90.5) is not None
    assert cache.prefetch_due == [key]
    cache.prefetch_due.clear()
    for moment in (91.0, 95.0, 99.9):
        assert cache.fresh(key, moment) is not None
    assert cache.prefetch_due == []


def test_prefetch_needs_a_second_asking_and_a_refresh_rearms_it() -> None:
    key, body, offsets, layout = make_reply(answers=[("www.example.", 100, "A", "192.0.2.1")])
    cache = Cache()
    cache.store(key, body, offsets, layout, 0.0)
    cache.fresh(key, 95.0)  # the first asking ever: not popular yet
    assert cache.prefetch_due == []
    cache.fresh(key, 96.0)
    assert cache.prefetch_due == [key]
    cache.prefetch_due.clear()
    cache.store(key, body, offsets, layout, 96.5)  # the prefetched answer arrives
    cache.fresh(key, 100.0)
    assert cache.prefetch_due == []
    cache.fresh(key, 187.0)
    assert cache.prefetch_due == [key]


def test_prefetch_off() -> None:
    cache, key = stored(CacheLimits(prefetch=False), now=0.0)
    for moment in (1.0, 280.0, 290.0, 299.0):
        cache.fresh(key, moment)
    assert cache.prefetch_due == []
    entry = cache.peek(key)
    assert entry is not None and entry.prefetch_at == math.inf


# --------------------------------------------------------------------------- bounds


def test_entry_bound_holds_under_a_million_random_names() -> None:
    """A random-name flood (water torture) cannot grow the cache: entries and bytes stay bounded,
    and a popular name asked throughout survives it."""
    limits = CacheLimits(max_entries=10_000, max_bytes=64 << 20)
    cache = Cache(limits)
    _, body, offsets, _ = make_reply("x.flood.example.")
    popular, pbody, poffsets, playout = make_reply("popular.example.")
    cache.store(popular, pbody, poffsets, playout, 0.0)
    rng = random.Random(7)
    suffix = b"\x05flood\x07example\x00\x00\x01\x00\x01\x00"
    rss_before = _rss()
    start = time.monotonic()
    for index in range(1_000_000):
        label = b"%016x" % rng.getrandbits(64)
        cache.store_body(b"\x10" + label + suffix, body, offsets, 300, 1.0)
        if index % 1000 == 0:
            assert cache.fresh(popular, 1.0) is not None
    elapsed = time.monotonic() - start
    assert len(cache) == 10_000
    assert cache.nbytes <= limits.max_bytes
    assert cache.nbytes < 10_000 * 400  # ~270 octets an answer, all overheads counted
    assert cache.evictions == 1_000_000 + 1 - 10_000
    if rss_before is not None:
        grown = _rss() - rss_before  # type: ignore[operator]
        assert grown < 40 << 20, grown  # without eviction this would be ~270 MB
    assert elapsed < 20


def test_byte_bound_holds_with_large_answers() -> None:
    limits = CacheLimits(max_entries=100_000, max_bytes=1 << 20)
    cache = Cache(limits)
    txt = " ".join(['"' + "x" * 250 + '"'] * 15)  # about 3.8 kB an answer
    _, body, offsets, layout = make_reply(
        "n.example.", "TXT", answers=[("n.example.", 300, "TXT", txt)]
    )
    for index in range(2000):
        cache.store(b"%d" % index + b"\x00\x00\x10\x00\x01\x00", body, offsets, layout, 0.0)
        assert cache.nbytes <= limits.max_bytes
    assert 200 < len(cache) < 300


def test_an_answer_larger_than_the_whole_budget_is_not_cached() -> None:
    cache = Cache(CacheLimits(max_bytes=1000))
    txt = '"' + "x" * 250 + '"'
    name = "big.example."
    key, body, offsets, layout = make_reply(name, "TXT", answers=[(name, 300, "TXT", txt)] * 1)
    body = body + b""  # 300-odd octets fit
    assert cache.store(key, body, offsets, layout, 0.0)
    big_key, big, big_offsets, big_layout = make_reply(
        name, "TXT", answers=[(name, 300, "TXT", " ".join([txt] * 4))]
    )
    assert not cache.store(big_key + b"x", big, big_offsets, big_layout, 0.0)
    assert cache.nbytes <= 1000


def test_size_zero_turns_answer_caching_off() -> None:
    cache = Cache(CacheLimits(max_entries=0))
    key, body, offsets, layout = make_reply()
    assert not cache.store(key, body, offsets, layout, 0.0)
    assert cache.fresh(key, 0.0) is None
    cache.record_failure(key, 0.0)
    assert cache.failure(key, 0.5) is not None  # failures are still remembered


def test_sieve_spares_visited_answers() -> None:
    cache = Cache(CacheLimits(max_entries=3))
    keys = []
    for name in ("a.example.", "b.example.", "c.example."):
        key, body, offsets, layout = make_reply(name)
        cache.store(key, body, offsets, layout, 0.0)
        keys.append(key)
    cache.fresh(keys[0], 1.0)  # a is visited: the hand spares it and evicts b
    key, body, offsets, layout = make_reply("d.example.")
    cache.store(key, body, offsets, layout, 1.0)
    assert cache.peek(keys[0]) is not None
    assert cache.peek(keys[1]) is None
    assert cache.peek(keys[2]) is not None


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["store", "fresh", "flush_name", "flush_all"]), st.integers(0, 30)
        ),
        max_size=300,
    ),
    st.integers(1, 12),
)
def test_bookkeeping_stays_consistent(ops: list[tuple[str, int]], capacity: int) -> None:
    cache = Cache(CacheLimits(max_entries=capacity))
    replies = {}
    now = 0.0
    for op, index in ops:
        now += 0.3
        name = f"n{index}.example."
        if index not in replies:
            replies[index] = make_reply(name)
        key, body, offsets, layout = replies[index]
        if op == "store":
            cache.store(key, body, offsets, layout, now)
        elif op == "fresh":
            cache.fresh(key, now)
        elif op == "flush_name":
            cache.flush(name)
            assert cache.peek(key) is None
        else:
            cache.flush()
        records = cache._records()  # every answer in the table, through the SIEVE queue
        in_table = [r for r in cache._table if r]
        assert sorted(r for _, r in records) == sorted(in_table)
        assert len({k for k, _ in records}) == len(records) == len(cache) <= capacity
        assert all(cache.peek(k) is not None for k, _ in records)
        assert cache.nbytes == sum(cache_module._cost(r) for _, r in records)


# --------------------------------------------------------------------------- flushing


def test_flush_one_name_every_type_and_flag_or_everything() -> None:
    cache = Cache()
    for variant in (
        {"name": "www.example."}, {"name": "www.example.", "rdtype": "AAAA"},
        {"name": "WWW.example.", "do": True}, {"name": "other.example."},
        {"name": "sub.www.example."},
    ):  # fmt: skip
        key, body, offsets, layout = make_reply(**variant)
        cache.store(key, body, offsets, layout, 0.0)
    cache.record_failure(make_reply("www.example.", "MX")[0], 0.0)
    assert cache.flush("Www.Example.COM.") == 0
    assert cache.flush("WWW.EXAMPLE") == 3
    assert cache.failure(make_reply("www.example.", "MX")[0], 0.1) is None
    assert len(cache) == 2
    assert cache.flush(None) == 2
    assert len(cache) == 0 and cache.nbytes == 0
    with pytest.raises(ValueError, match="not a domain name"):
        cache.flush("a" * 70 + ".example.")


# --------------------------------------------------------------------------- persistence


def filled_cache(now: float) -> tuple[Cache, dict[str, bytes]]:
    cache = Cache()
    keys = {}
    for name, ttl in (("long.example.", 3600), ("short.example.", 20), ("mid.example.", 600)):
        key, body, offsets, layout = make_reply(name, answers=[(name, ttl, "A", "192.0.2.9")])
        cache.store(key, body, offsets, layout, now, ValidationStatus.INSECURE)
        keys[name] = key
    nx_key, body, offsets, layout = make_reply(
        "gone.example.", rcode=dns.rcode.NXDOMAIN, soa=(900, 300)
    )
    cache.store(nx_key, body, offsets, layout, now)
    keys["gone.example."] = nx_key
    return cache, keys


def test_persistence_round_trip_takes_off_the_time_the_daemon_was_down(tmp_path: Path) -> None:
    cache, keys = filled_cache(now=1000.0)
    cache.fresh(keys["long.example."], 1010.5)  # 10 s old when saved
    path = str(tmp_path / "cache.bin")
    assert cache_persistence.save(cache, path, now=1010.5, wall_now=50_000.0)
    # a new process: another monotonic clock, and 30 s of wall-clock time later
    restored = Cache()
    assert cache_persistence.load(restored, path, now=5.0, wall_now=50_030.0) == 3
    assert restored.fresh(keys["short.example."], 5.0) is None  # 20 s TTL: expired while down
    assert ttls(restored.fresh(keys["long.example."], 5.0)) == [3560]  # type: ignore[arg-type]
    assert ttls(restored.fresh(keys["mid.example."], 5.0)) == [560]  # type: ignore[arg-type]
    body = restored.fresh(keys["gone.example."], 5.0)
    assert body is not None and dns.message.from_wire(body).rcode() == dns.rcode.NXDOMAIN
    assert ttls(body) == [260]
    assert restored.fresh(keys["mid.example."], 5.0 + 560) is None
    entry = restored.peek(keys["long.example."])
    # a file's word on validation is not taken: whatever it said, it was never validated here
    assert entry is not None and entry.status == ValidationStatus.LOADED
    # stored 10.5 s before the save, down 30 s: 3559.5 s left
    assert restored.fresh(keys["long.example."], 5.0 + 3559.4) is not None
    assert restored.fresh(keys["long.example."], 5.0 + 3559.6) is None


def test_restore_drops_everything_expired_after_a_long_downtime() -> None:
    cache, _ = filled_cache(now=0.0)
    image = cache.dump(now=0.0, wall_now=1000.0)
    assert Cache().restore(image, now=0.0, wall_now=1000.0 + 7200) == 0


def _corruptions(image: bytes) -> dict[str, bytes]:
    flipped = bytearray(image)
    flipped[len(image) // 2] ^= 0x40
    other_version = bytearray(image)
    struct.pack_into("!H", other_version, 16, 99)
    return {
        "empty": b"",
        "text": b"# some other program's state\n" * 10,
        "truncated": image[: len(image) // 2],
        "flipped bit": bytes(flipped),
        "other version": bytes(other_version),
        "random": random.Random(3).randbytes(len(image)),
    }


@pytest.mark.parametrize(
    "damage", ["empty", "text", "truncated", "flipped bit", "other version", "random"]
)
def test_corrupt_or_foreign_file_is_ignored_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, damage: str
) -> None:
    cache, _ = filled_cache(now=0.0)
    path = tmp_path / "cache.bin"
    path.write_bytes(_corruptions(cache.dump(now=0.0, wall_now=1000.0))[damage])
    restored = Cache()
    with caplog.at_level(logging.WARNING, logger="stubby_py.daemon.cache_persistence"):
        assert cache_persistence.load(restored, str(path), now=0.0, wall_now=1001.0) == 0
    assert len(restored) == 0
    assert "ignored" in caplog.text


def test_a_well_formed_file_with_a_mismatched_answer_is_ignored() -> None:
    cache = Cache()
    key, body, offsets, layout = make_reply("one.example.")
    cache.store(key, body, offsets, layout, 0.0)
    image = bytearray(cache.dump(now=0.0, wall_now=10.0))
    # the answer's question (after its file head, offsets and header) filed under key "one"
    at = cache_module._FILE_HEADER.size + cache_module._FILE_RECORD.size + len(key)
    question = at + cache_module._FILE_HEAD_SIZE + 2 * len(offsets) + 12
    assert image[question + 1 : question + 4] == b"one"
    image[question + 1 : question + 4] = b"two"
    struct.pack_into("!I", image, len(image) - 4, zlib.crc32(image[:-4]))
    with pytest.raises(CacheFileError, match="does not match"):
        Cache().restore(bytes(image), now=0.0, wall_now=11.0)


def test_ttl_offsets_outside_the_answer_are_refused_even_with_a_good_checksum() -> None:
    cache = Cache()
    key, body, offsets, layout = make_reply("one.example.")
    cache.store(key, body, offsets, layout, 0.0)
    image = bytearray(cache.dump(now=0.0, wall_now=10.0))
    # the first record's first TTL offset: after the file header, record header, key and _HEAD
    at = cache_module._FILE_HEADER.size + cache_module._FILE_RECORD.size + len(key)
    struct.pack_into("!H", image, at + cache_module._FILE_HEAD_SIZE, 4)  # into the header
    struct.pack_into("!I", image, len(image) - 4, zlib.crc32(image[:-4]))
    with pytest.raises(CacheFileError, match="TTL offsets"):
        Cache().restore(bytes(image), now=0.0, wall_now=11.0)


def test_a_file_from_the_future_is_ignored() -> None:
    cache, _ = filled_cache(now=0.0)
    with pytest.raises(CacheFileError, match="future"):
        Cache().restore(cache.dump(now=0.0, wall_now=10_000.0), now=0.0, wall_now=9000.0)


def test_missing_file_loads_nothing_quietly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        assert cache_persistence.load(Cache(), str(tmp_path / "none.bin"), 0.0, 0.0) == 0
    assert caplog.text == ""


def test_unwritable_place_is_a_warning_not_a_crash(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cache, _ = filled_cache(now=0.0)
    with caplog.at_level(logging.WARNING, logger="stubby_py.daemon.cache_persistence"):
        assert not cache_persistence.save(
            cache, str(tmp_path / "no" / "such" / "dir" / "c.bin"), 0.0, 1.0
        )
    assert "not saved" in caplog.text
    assert os.listdir(tmp_path) == []


def test_default_cache_file_follows_systemd_state_directory() -> None:
    assert default_cache_file("auto", {}) is None
    assert default_cache_file("auto", {"STATE_DIRECTORY": "/var/lib/stubby-py"}) == (
        "/var/lib/stubby-py/cache.bin"
    )
    assert default_cache_file("auto", {"STATE_DIRECTORY": "/var/lib/a:/var/lib/b"}) == (
        "/var/lib/a/cache.bin"
    )
    assert default_cache_file("/tmp/c.bin", {"STATE_DIRECTORY": "/x"}) == "/tmp/c.bin"
    assert default_cache_file(None, {"STATE_DIRECTORY": "/x"}) is None


def _rss() -> int | None:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


# --------------------------------------------------------------------------- the stored shape


def test_one_object_per_answer_at_100000_answers() -> None:
    """Each answer is one bytes object (its key inside) in a table at most half full: about 136
    octets an answer as tracemalloc counts them (before: a key object, a record object and a
    dict entry, about 255; then with its times as two doubles, 157), and `nbytes` counts no
    less than that."""
    import tracemalloc

    count = 100_000
    key0, body, offsets, layout = make_reply("m0.wild.insecure.test.")
    items = []  # (key, body, TTL offsets) as make_reply would give them, built faster
    for n in range(count):
        question = dns.name.from_text(f"m{n}.wild.insecure.test.").to_wire() + b"\0\1\0\1"
        extra = len(question) + 1 - len(key0)
        answer = body[:12] + question + body[layout.question_end :]
        items.append((question + b"\0", answer, [o + extra for o in offsets]))
    assert items[0][0] == key0 and items[0][1] == body
    cache = Cache()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for key, answer, ttl_offsets in items:
            cache.store_body(key, answer, ttl_offsets, 300, 0.0)
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(cache) == count
    assert grown / count < 145, grown / count
    assert grown <= cache.nbytes <= grown * 1.25
    for key, answer, _ in random.Random(5).sample(items, 200):
        assert cache.fresh(key, 0.5) == answer  # the same second: TTLs not lowered
        assert cache.hit(key, 0.5) == answer[:12] + answer[12 + len(key) - 1 :]


def ttl_of(reply_body: bytes) -> int:
    return dns.message.from_wire(reply_body).answer[0].ttl


def test_times_are_ticks_rounded_down_so_answers_age_and_expire_early_never_late() -> None:
    """A record keeps its times in 1/16 s ticks, rounded down: an answer stored at 10.03 for
    300 s expires within one tick before 310.03, never after, and its TTL never reads higher
    than the time it has left."""
    key, body, offsets, layout = make_reply("ticks.example.")
    cache = Cache()
    cache.store(key, body, offsets, layout, 10.03)
    entry = cache.peek(key)
    assert entry is not None
    assert 310.03 - 1 / 16 <= entry.expires <= 310.03
    assert 10.03 - 1 / 16 <= entry.stored <= 10.03
    for now in (10.03, 10.5, 11.02, 11.03, 50.0, 200.99, 309.9, 310.03 - 1 / 16 - 0.001):
        reply = cache.fresh(key, now)
        assert reply is not None
        assert ttl_of(reply) <= math.ceil(310.03 - now), now
        assert ttl_of(reply) >= math.floor(310.03 - now) - 1, now
    assert cache.fresh(key, 310.03) is None


def test_the_epoch_moves_on_before_the_ticks_run_out(monkeypatch: pytest.MonkeyPatch) -> None:
    """Years of uptime (here a 1,000-second range): past three quarters of the ticks' range the
    epoch moves on by half of it; answers stored before the new epoch are dropped, the others
    keep their TTLs and expiry to the tick; a lifetime longer than the range is cut to it."""
    monkeypatch.setattr(cache_module, "_TICK_LIMIT", 16_000 - 1)
    monkeypatch.setattr(cache_module, "_REBASE_AT", (16_000 - 1) // 4 * 3)
    cache = Cache()
    old, body_old, offsets_old, layout_old = make_reply("old.example.")
    kept, body_kept, offsets_kept, _ = make_reply("kept.example.", answers=[
        ("kept.example.", 200, "A", "192.0.2.2")
    ])  # fmt: skip
    late, body_late, offsets_late, _ = make_reply("late.example.")
    cache.store(old, body_old, offsets_old, layout_old, 100.0)
    cache.store_body(kept, body_kept, offsets_kept, 200, 700.0)
    assert cache._epoch == 0.0
    cache.store_body(late, body_late, offsets_late, 300, 800.0)  # 12,800 ticks: past 11,999
    assert cache._epoch == pytest.approx(7_999 / 16)
    assert cache.peek(old) is None and len(cache) == 2
    reply = cache.fresh(kept, 800.0)
    assert reply is not None and ttl_of(reply) == 100
    assert cache.fresh(kept, 899.9) is not None and cache.fresh(kept, 900.0) is None
    reply = cache.fresh(late, 900.0)
    assert reply is not None and ttl_of(reply) == 200
    forever, body_forever, offsets_forever, _ = make_reply("forever.example.")
    cache.store_body(forever, body_forever, offsets_forever, 10**6, 900.0)
    entry = cache.peek(forever)
    assert entry is not None and entry.expires == pytest.approx(cache._epoch + 15_999 / 16)


def test_a_restore_past_the_rebase_point_loads_with_the_new_epoch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(cache_module, "_TICK_LIMIT", 16_000 - 1)
    monkeypatch.setattr(cache_module, "_REBASE_AT", (16_000 - 1) // 4 * 3)
    saved = Cache()
    key, body, offsets, layout = make_reply("restored.example.")
    saved.store(key, body, offsets, layout, 100.0)
    image = saved.dump(150.0, 1_000_000.0)  # 50 s old when saved
    restored = Cache()
    assert restored.restore(image, 800.0, 1_000_010.0) == 1  # down 10 s; 800 s: past 750
    assert restored._epoch > 0
    reply = restored.fresh(key, 800.0)
    assert reply is not None and ttl_of(reply) == 300 - 60
    assert restored.fresh(key, 1039.9) is not None and restored.fresh(key, 1040.0) is None


def test_lookups_hold_through_evictions_rebuilds_and_flushes() -> None:
    """Answers found by their key only (never another's) while the table grows, evicts, reuses
    the places of evicted answers and is rebuilt; the question comes back from the key."""
    cache = Cache(CacheLimits(max_entries=3000))
    replies = {n: make_reply(f"n{n}.example.", "AAAA" if n % 3 else "A") for n in range(9000)}
    for n, (key, body, offsets, layout) in replies.items():
        cache.store(key, body, offsets, layout, n / 1000)
        if n % 7 == 0:
            assert cache.fresh(key, n / 1000) is not None  # visited: SIEVE spares some
    assert len(cache) == 3000 and cache.evictions == 6000
    assert cache.flush("n8999.example.") == 1
    live = {key for key, _ in cache._records()}
    assert len(live) == 2999
    for key, body, _offsets, _layout in replies.values():
        got = cache.fresh(key, 9.0)
        if key in live:
            # make_reply's names are lower-case: the question from the key is theirs (and only
            # the TTLs, lowered by the answer's age, differ)
            assert got is not None and len(got) == len(body)
            assert got[: 12 + len(key) - 1] == body[: 12 + len(key) - 1]
        else:
            assert got is None and cache.hit(key, 9.0) is None
    assert sum(1 for r in cache._table if r) == 2999
    assert (len(cache) + cache._gone) <= cache_module._MAX_FILL * len(cache._table)
