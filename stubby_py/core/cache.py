"""The answer cache: positive, negative (RFC 2308), failed (RFC 9520) and stale (RFC 8767) answers.

Sans-IO: every call takes `now`, the event loop's monotonic clock in seconds, and nothing here
awaits; the resolver does the asking. An answer is a reply body (the reply without its OPT record,
as `wire.without_opt` makes it) plus where its TTL fields are, kept in one bytes object, so a hit
is answered by patching bytes, never by building a message. The key is `wire.ClientQuery.key`:
the lower-cased question name, type and class, plus the DO and CD bits.

Memory: the key is kept inside the answer's bytes object (the body then leaves its question out)
and the objects sit in an open-addressing table at most half full (linear probing), so an answer
costs one object and a table slot: 136 octets for a one-A answer at 100,000 answers, against 267
with a dict (a key object, a record object and a dict entry). The price: the table is rebuilt in
Python when it doubles and, at capacity, every ~70,000 evictions (its gone slots dropped), which
holds the event loop ~0.1 s per 100,000 answers.

Eviction is SIEVE (Zhang et al., NSDI 2024): answers sit in insertion order; a hit only marks its
answer visited (no reordering on the hottest path); a hand walks from the oldest answer, sparing
and unmarking visited ones, and evicts the first one that was not. On Zipf traces (exponent
0.7-1.1, alone, with half the queries a random-name flood, or with scans) holding 1% of the names
it kept 6-10 points more hits than LRU, within a point of S3-FIFO at 60% of its bookkeeping cost
and with no ghost queue (tests/test_cache_policy.py has the measurement).

Persistence: `Cache.dump` makes an image of the entries with the wall-clock time, so TTLs lose
the time the daemon was down, and `Cache.restore` takes one back (daemon/cache_persistence.py
keeps it in a file). An image is trusted no more than an unsigned answer from the network: what is
restored is unvalidated (no AD), its TTLs clamped; a damaged or foreign image is refused whole.
"""

from __future__ import annotations

import bisect
import enum
import math
import struct
import zlib
from array import array
from collections import OrderedDict
from dataclasses import dataclass

import dns.exception
import dns.name
from dns.rcode import Rcode

from stubby_py.core import wire

#: RFC 8767 §4: a stale answer is served with this TTL
STALE_TTL = 30
#: a negative answer without an SOA (RFC 2308 §5 says do not cache) is kept this long at most,
#: enough to join a burst of identical questions without looping a stale denial for long
NO_SOA_NEGATIVE_TTL = 5
#: RFC 9520 §3.2: a resolution failure is remembered for 1 s at least and 5 min at most
FAILURE_MIN_HOLD = 1.0
FAILURE_MAX_HOLD = 300.0
#: prefetch: an answer asked for in the last tenth of its TTL that was asked for before since the
#: eviction hand last passed it (SIEVE's visited mark doubles as "popular")
PREFETCH_FRACTION = 0.1  # Cache.hit has it inlined
#: memory per answer beyond the octets of its record (the bytes object's header and its rounding
#: to pymalloc's 16-octet size classes, its table slot, the table being at most half full, and
#: its SIEVE queue entry); used for the byte bound. Measured (pymalloc's and malloc's bytes in
#: use) over 100,000 one-A answers: 136 octets each, of which 78 are the record's own (which
#: happens to fill its size class: 7 more octets of rounding on average)
ENTRY_OVERHEAD = 72

_U32 = struct.Struct("!I")


class ValidationStatus(enum.IntEnum):
    """The DNSSEC verdict stored with an answer (RFC 4035 §4.3)."""

    #: not validated (no validator yet, or the client set CD)
    UNCHECKED = 0
    SECURE = 1
    INSECURE = 2
    BOGUS = 3
    INDETERMINATE = 4
    #: read from a cache file: never validated by this daemon, whatever the file said
    LOADED = 5


@dataclass(frozen=True, slots=True)
class CacheLimits:
    """The cache's policy knobs, and the configuration's `cache` section."""

    #: most answers kept; 0 disables answer caching (failures are still remembered)
    max_entries: int = 100_000
    #: most octets kept, counting each entry's wire form plus ENTRY_OVERHEAD
    max_bytes: int = 32 << 20
    #: TTL clamps for positive answers, seconds (Unbound's cache-min-ttl and cache-max-ttl)
    min_ttl: int = 0
    max_ttl: int = 86_400
    #: ceiling of a negative answer's TTL (Unbound's cache-max-negative-ttl)
    negative_max_ttl: int = 3_600
    #: RFC 8767: serve an expired answer when every upstream fails, for this long after expiry
    serve_stale: bool = True
    stale_window: float = 86_400.0
    #: refresh popular answers asked for in the last tenth of their TTL
    prefetch: bool = True
    #: most questions remembered as failed (oldest forgotten first)
    max_failures: int = 10_000


@dataclass(slots=True)
class FailureEntry:
    """A question every upstream failed for (RFC 9520): answered SERVFAIL until `until`."""

    until: float
    #: seconds of this hold; the next failure soon after doubles it (up to FAILURE_MAX_HOLD)
    hold: float
    #: the upstream's own SERVFAIL body to replay, or None to answer with EDE 13 (Cached Error)
    reply: bytes | None
    #: what failed, for the EDE text
    reason: str
    #: the Extended DNS Error to repeat (a DNSSEC failure); None: EDE 13 Cached Error
    ede: tuple[int, str] | None = None
    #: whether a stale answer may stand in (not for a bogus one)
    stale_ok: bool = True


class CacheFileError(ValueError):
    """A cache file that is not ours, not this version, or damaged."""


# An answer is stored as one bytes object, its key inside it, in an open-addressing table (a dict
# would add a key object and ~52 octets of its own per answer: ~100 octets in all):
#   _HEAD, then the key, then `count` 16-bit offsets of the TTL fields, then the reply body
#   without its question (the key holds it, lower-cased), the offsets relative to that.
#   stored, expires: ticks (1/_TICKS s) of the monotonic clock since the cache's epoch, rounded
#     down: an answer ages and expires at most one tick early, never late (Unbound keeps whole
#     seconds); 4 octets each where two doubles took 16, which puts a one-A answer in pymalloc's
#     112-octet class instead of the 128 one (~1.5 MiB at 100,000 answers)
#   body_age: whole seconds already taken off the body's TTLs (a hit in a new second patches them)
#   bits: the ValidationStatus (low 3 bits), _VISITED (asked for since the eviction hand last
#     passed, SIEVE), _PREFETCH (a prefetch is due at the last tenth of the TTL, not yet claimed)
#   name_len: the key's name length (the key is the name plus 5 octets)
_HEAD = struct.Struct("!IIIBBH")
_HEAD_SIZE = _HEAD.size
_BITS = struct.calcsize("!III")  # offset of the bits octet in _HEAD
_NAME_LEN = _BITS + 1
_TICKS = 16
#: ticks a record's times can count to; past 3/4 of it the epoch moves on (every ~6 years)
_TICK_LIMIT = (1 << 32) - 1
_REBASE_AT = _TICK_LIMIT // 4 * 3
_STATUS_MASK = 0x07
_VISITED = 0x08
_PREFETCH = 0x10
#: the CD bit in the last octet of a cache key (wire.parse_query: DO << 1 | CD)
_KEY_CD = 1
_U16 = struct.Struct("!H")
#: an evicted answer's table slot until the table is rebuilt (lookups walk past it: an empty
#: bytes object never starts with a key at _HEAD_SIZE)
_GONE = b""
#: the table's smallest size, and its fill (answers and gone slots) before it is rebuilt
_MIN_TABLE = 1 << 10
_MAX_FILL = 0.5


@dataclass(frozen=True, slots=True)
class CachedAnswer:
    """What the cache holds for a key (for inspection and stats, not the hit path)."""

    body: bytes
    ttl_offsets: list[int]
    stored: float
    expires: float
    status: ValidationStatus
    visited: bool
    prefetch_at: float


class Cache:
    def __init__(self, limits: CacheLimits | None = None) -> None:
        self.limits = limits or CacheLimits()
        #: open addressing, linear probing: a record, _GONE or None in each slot
        self._table: list[bytes | None] = [None] * _MIN_TABLE
        self._mask = _MIN_TABLE - 1
        self._count = 0
        self._gone = 0
        #: SIEVE queue of table slots, oldest answer first; -1 marks an evicted answer's place
        #: until compaction (an array of 32-bit ints: no Python object per answer)
        self._queue = array("i")
        self._hand = 0
        self._holes = 0
        self._bytes = 0
        self._failures: OrderedDict[bytes, FailureEntry] = OrderedDict()
        #: the monotonic time of tick 0 (moved on by _rebase_if_due)
        self._epoch = 0.0
        #: keys whose answers want a prefetch, appended by `fresh`; the resolver takes them
        self.prefetch_due: list[bytes] = []
        self.evictions = 0

    def __len__(self) -> int:
        return self._count

    def apply_limits(self, limits: CacheLimits) -> None:
        """New bounds (a reload): answers are kept, evicted only as far as the bounds require."""
        self.limits = limits
        while self._count and (self._count > limits.max_entries or self._bytes > limits.max_bytes):
            self._evict_one()

    @property
    def nbytes(self) -> int:
        """Estimated memory held by the answers (what `max_bytes` bounds)."""
        return self._bytes

    # -- the hit path ---------------------------------------------------------------------------
    def hit(self, key: bytes, now: float) -> bytes | None:
        """The unexpired answer for key, TTLs lowered by its age, as its header and the sections
        after the question (the question is the client's own: response.client_reply puts it
        back); None if there is none.

        A TTL that reached zero is not fresh. The first hit in a new second patches the stored
        TTLs (later hits in that second cost a lookup and a copy); a popular answer in the last
        tenth of its TTL has its key put on `prefetch_due`, once.
        """
        table = self._table
        mask = self._mask
        index = hash(key) & mask
        record = table[index]
        while record is not None:
            if record.startswith(key, _HEAD_SIZE):
                break
            index = (index + 1) & mask
            record = table[index]
        else:
            return None
        stored, expires, body_age, bits, _name_len, count = _HEAD.unpack_from(record)
        ticks = (now - self._epoch) * 16  # _TICKS, as a constant: the hottest path
        if ticks >= expires:
            return None
        if (
            not bits & _VISITED
            or ticks >= stored + body_age * 16 + 16
            # _prefetch_time(stored, expires) <= ticks, inlined (PREFETCH_FRACTION is 1/10)
            or (bits & _PREFETCH and ticks * 10 >= stored + 9 * expires)
        ):
            record = self._touch(key, index, record, ticks)
        return record[_HEAD_SIZE + len(key) + 2 * count :]

    def fresh(self, key: bytes, now: float) -> bytes | None:
        """As `hit`, but the whole reply body, question included (lower-cased, as in the key)."""
        part = self.hit(key, now)
        return None if part is None else _with_question(key, part)

    @staticmethod
    def with_question(key: bytes, stored: bytes) -> bytes:
        """The whole reply body from what `hit` returned for key."""
        return _with_question(key, stored)

    def _touch(self, key: bytes, index: int, record: bytes, ticks: float) -> bytes:
        """Mark the answer visited, age its TTLs to `ticks`, and claim a prefetch if one is
        due."""
        stored, expires, body_age, bits, name_len, count = _HEAD.unpack_from(record)
        buf = bytearray(record)
        age = int((ticks - stored) / _TICKS)
        if age > body_age:
            # exact across steps: TTLs stop at zero, and max(max(t-a,0)-b,0) = max(t-a-b,0)
            _lower_ttls(buf, _HEAD_SIZE + len(key), count, age - body_age)
            body_age = age
        if bits & _PREFETCH and bits & _VISITED and ticks >= _prefetch_time(stored, expires):
            # asked for before since the hand last passed (popular) and now in the last tenth
            # of its TTL: refresh it in the background, once per stored answer
            bits &= ~_PREFETCH
            self.prefetch_due.append(key)
        _HEAD.pack_into(buf, 0, stored, expires, body_age, bits | _VISITED, name_len, count)
        record = bytes(buf)
        self._table[index] = record
        return record

    def _find(self, key: bytes) -> int:
        """The table slot of key's answer, or -1."""
        table = self._table
        mask = self._mask
        index = hash(key) & mask
        record = table[index]
        while record is not None:
            if record.startswith(key, _HEAD_SIZE):
                return index
            index = (index + 1) & mask
            record = table[index]
        return -1

    def _record(self, key: bytes) -> bytes | None:
        index = self._find(key)
        return None if index < 0 else self._table[index]

    def peek(self, key: bytes) -> CachedAnswer | None:
        """The stored answer for key, fresh or not, without counting a hit."""
        record = self._record(key)
        if record is None:
            return None
        stored, expires, _age, bits, _name_len, count = _HEAD.unpack_from(record)
        body, offsets = _body_of(key, record, count)
        prefetch_at = (
            self._seconds(_prefetch_time(stored, expires)) if bits & _PREFETCH else math.inf
        )
        verdict = ValidationStatus(bits & _STATUS_MASK)
        return CachedAnswer(
            body,
            offsets,
            self._seconds(stored),
            self._seconds(expires),
            verdict,
            bool(bits & _VISITED),
            prefetch_at,
        )

    # -- the clock ------------------------------------------------------------------------------
    def _ticks(self, now: float) -> float:
        """The monotonic time `now` in ticks since the epoch (Cache.hit has this inlined)."""
        return (now - self._epoch) * _TICKS

    def _seconds(self, ticks: float) -> float:
        """The monotonic time of a record's tick count."""
        return self._epoch + ticks / _TICKS

    def _times(self, now: float, lifetime: float) -> tuple[int, int]:
        """A record's stored and expires ticks for an answer stored at `now` and fresh for
        `lifetime` seconds, both rounded down (a lifetime past the ticks' range is cut to it)."""
        self._rebase_if_due(now)
        ticks = self._ticks(now)
        end = ticks + lifetime * _TICKS
        return (
            int(ticks) if ticks > 0 else 0,
            min(int(end), _TICK_LIMIT) if end > 0 else 0,
        )

    def _rebase_if_due(self, now: float) -> None:
        """Move the epoch on by half the ticks' range, once the clock at `now` has used three
        quarters of it (years of uptime): answers stored before the new epoch (expired long
        since, or with lifetimes of years) are dropped, the others' ticks shifted."""
        if self._ticks(now) < _REBASE_AT:
            return
        shift = _TICK_LIMIT // 2
        self._drop([key for key, record in self._records() if _HEAD.unpack_from(record)[0] < shift])
        table = self._table
        for slot in self._queue:
            if slot < 0:
                continue
            record = table[slot]
            assert record
            stored, expires, *rest = _HEAD.unpack_from(record)
            buf = bytearray(record)
            _HEAD.pack_into(buf, 0, stored - shift, expires - shift, *rest)
            table[slot] = bytes(buf)
        self._epoch += shift / _TICKS

    # -- storing --------------------------------------------------------------------------------
    def ttl_for(self, layout: wire.ReplyLayout) -> tuple[int, bool] | None:
        """How long a reply may be cached and whether it is negative; None: not cacheable.

        RFC 2308 §5: a negative answer (NXDOMAIN, or NOERROR with no answer or ending in an SOA)
        lives min(SOA TTL, SOA MINIMUM), within the negative ceiling; without an SOA only briefly.
        """
        limits = self.limits
        rcode = layout.rcode
        if rcode not in (Rcode.NOERROR, Rcode.NXDOMAIN):
            return None
        negative = rcode == Rcode.NXDOMAIN or layout.answer_count == 0 or layout.soa_ttl is not None
        if not negative:
            assert layout.min_ttl is not None  # there is an answer record
            return max(limits.min_ttl, min(layout.min_ttl, limits.max_ttl)), False
        ceiling = min(limits.negative_max_ttl, limits.max_ttl)
        if layout.soa_minimum is None:
            ttl = NO_SOA_NEGATIVE_TTL if layout.min_ttl is None else layout.min_ttl
            return min(ttl, NO_SOA_NEGATIVE_TTL, ceiling), True
        assert layout.min_ttl is not None  # the SOA is a record
        return min(layout.min_ttl, layout.soa_minimum, ceiling), True

    def store(
        self,
        key: bytes,
        body: bytes,
        ttl_offsets: list[int],
        layout: wire.ReplyLayout,
        now: float,
        status: ValidationStatus = ValidationStatus.UNCHECKED,
    ) -> bytes | None:
        """Cache an upstream's reply body (OPT removed) if it may be; forget a held failure.

        `layout` is the reply's scan (rcode, answer count, SOA fields, smallest TTL). Positive
        answers' TTLs are clamped to [min_ttl, max_ttl]; a negative answer's TTLs (its SOA's
        included) are capped at the negative TTL, as RFC 2308 §5 has the SOA carry it.
        Returns the body as cached, TTLs clamped (the client asking now gets the same), or None.
        """
        self._failures.pop(key, None)
        if self.limits.max_entries <= 0 or status == ValidationStatus.BOGUS:
            return None
        if wire.U16.unpack_from(body, 2)[0] & wire.TC:
            return None
        verdict = self.ttl_for(layout)
        if verdict is None or verdict[0] <= 0:
            return None
        ttl, negative = verdict
        if negative:
            body = _clamp_ttls(body, ttl_offsets, 0, ttl)
        else:
            body = _clamp_ttls(body, ttl_offsets, self.limits.min_ttl, self.limits.max_ttl)
        return body if self.store_body(key, body, ttl_offsets, ttl, now, status) else None

    def store_body(
        self,
        key: bytes,
        body: bytes,
        ttl_offsets: list[int],
        ttl: float,
        now: float,
        status: ValidationStatus = ValidationStatus.UNCHECKED,
        body_age: int = 0,
    ) -> bool:
        """Cache a body as it is, stored at `now` and fresh for `ttl` seconds (no clamping).
        The body's question must be the key's (any case): the key stands in for it."""
        limits = self.limits
        if limits.max_entries <= 0 or ttl <= 0 or len(ttl_offsets) > 0xFFFF:
            return False
        stored, expires = self._times(now, ttl)  # first: a rebase would move the answer
        index = self._find(key)
        old = self._table[index] if index >= 0 else None
        visited = old[_BITS] & _VISITED if old else 0
        prefetch = _PREFETCH if limits.prefetch else 0
        record = _make_record(
            key, body, ttl_offsets, stored, expires, body_age, status | visited | prefetch
        )
        return self._insert(key, record, index)

    def _insert(self, key: bytes, record: bytes, index: int | None = None) -> bool:
        """Put a record in, evicting as the bounds require; False if it could not stay.
        `index`: key's slot as `_find` just gave it, when the caller looked already."""
        limits = self.limits
        cost = _cost(record)
        if index is None:
            index = self._find(key)
        if index < 0:
            # make room first, so the hand never evicts the answer being stored
            while self._count and (
                self._count >= limits.max_entries or self._bytes + cost > limits.max_bytes
            ):
                self._evict_one()
            if cost > limits.max_bytes or limits.max_entries <= 0:
                return False
            if (self._count + self._gone + 1) > _MAX_FILL * len(self._table):
                self._rebuild(self._count + 1)
            index = self._free_slot(key)
            self._queue.append(index)
            self._count += 1
        else:
            old = self._table[index]
            assert old is not None
            self._bytes -= _cost(old)  # a new answer for a key keeps the key's place
        self._table[index] = record
        self._bytes += cost
        if self._bytes <= limits.max_bytes:
            return True
        while self._bytes > limits.max_bytes:  # a replaced answer grew
            self._evict_one()
        return self._find(key) >= 0

    def _free_slot(self, key: bytes) -> int:
        """Where a new key goes: the first empty or gone slot on its probe path."""
        table = self._table
        mask = self._mask
        index = hash(key) & mask
        while True:
            record = table[index]
            if record is None:
                return index
            if record is _GONE:
                self._gone -= 1
                return index
            index = (index + 1) & mask

    def _rebuild(self, wanted: int) -> None:
        """A new table for `wanted` answers (half full at most), the answers in their queue
        order, gone slots dropped; the queue follows them."""
        size = _MIN_TABLE
        while wanted > _MAX_FILL * size:
            size *= 2
        old_table = self._table
        live = [position for position, slot in enumerate(self._queue) if slot >= 0]
        before_hand = bisect.bisect_left(live, self._hand)
        queue = self._queue
        records = [old_table[queue[position]] or b"" for position in live]  # never None
        mask = size - 1
        homes = [hash(r[_HEAD_SIZE : _HEAD_SIZE + r[_NAME_LEN] + 5]) & mask for r in records]
        table: list[bytes | None] = [None] * size
        new_queue = array("i")
        append = new_queue.append
        for record, index in zip(records, homes, strict=True):
            while table[index] is not None:  # a new table has no gone slots
                index = (index + 1) & mask
            table[index] = record
            append(index)
        queue = new_queue
        self._table = table
        self._mask = mask
        self._gone = 0
        self._queue = queue
        self._hand = before_hand
        self._holes = 0

    def _evict_one(self) -> None:
        """SIEVE: spare (and unmark) answers visited since the hand last passed; evict the next."""
        queue = self._queue
        table = self._table
        i = self._hand
        while True:
            if i >= len(queue):
                i = 0
            slot = queue[i]
            if slot < 0:
                i += 1
                continue
            record = table[slot]
            assert record is not None
            bits = record[_BITS]
            if not bits & _VISITED:
                break
            table[slot] = record[:_BITS] + bytes((bits & ~_VISITED,)) + record[_BITS + 1 :]
            i += 1
        queue[i] = -1
        self._vacate(slot)
        self._count -= 1
        self._bytes -= _cost(record)
        self.evictions += 1
        self._hand = i + 1
        self._holes += 1
        if self._holes * 2 > len(queue):
            self._compact_queue()

    def _vacate(self, index: int) -> None:
        """Empty a slot: None when the next slot is None (no probe path goes on through it, nor
        through the gone slots just before it, which become None too), else _GONE."""
        table = self._table
        mask = self._mask
        if table[(index + 1) & mask] is not None:
            table[index] = _GONE
            self._gone += 1
            return
        table[index] = None
        index = (index - 1) & mask
        while table[index] is _GONE:
            table[index] = None
            self._gone -= 1
            index = (index - 1) & mask

    def _compact_queue(self) -> None:
        queue = self._queue
        self._hand = sum(1 for slot in queue[: self._hand] if slot >= 0)
        self._queue = array("i", (slot for slot in queue if slot >= 0))
        self._holes = 0
        if self._gone * 4 > len(self._table):
            self._rebuild(self._count)

    def _records(self) -> list[tuple[bytes, bytes]]:
        """(key, record) of every answer, oldest first."""
        table = self._table
        found = []
        for slot in self._queue:
            if slot >= 0:
                record = table[slot]
                assert record is not None
                found.append((_key_of(record), record))
        return found

    # -- stale and failed answers -------------------------------------------------------------
    def stale(self, key: bytes, now: float) -> bytes | None:
        """RFC 8767 §4: an expired answer still within the stale window, every TTL set to 30."""
        limits = self.limits
        if not limits.serve_stale:
            return None
        record = self._record(key)
        if record is None:
            return None
        _stored, expires, _a, _b, _n, count = _HEAD.unpack_from(record)
        ticks = self._ticks(now)
        if not expires <= ticks < expires + limits.stale_window * _TICKS:
            return None
        body, offsets = _body_of(key, record, count)
        buf = bytearray(body)
        for offset in offsets:
            _U32.pack_into(buf, offset, STALE_TTL)
        return bytes(buf)

    def record_failure(
        self,
        key: bytes,
        now: float,
        *,
        reply: bytes | None = None,
        reason: str = "",
        ede: tuple[int, str] | None = None,
        stale_ok: bool = True,
    ) -> FailureEntry:
        """RFC 9520 §3: every upstream failed for key; hold it for 1 s, doubling to 5 min while
        failures follow each other (within one hold of the previous hold's end)."""
        failures = self._failures
        previous = failures.pop(key, None)
        hold = FAILURE_MIN_HOLD
        if previous is not None and now < previous.until + previous.hold:
            hold = min(FAILURE_MAX_HOLD, previous.hold * 2)
        entry = FailureEntry(now + hold, hold, reply, reason, ede, stale_ok)
        failures[key] = entry
        while len(failures) > max(1, self.limits.max_failures):
            failures.popitem(last=False)
        return entry

    def failure(self, key: bytes, now: float) -> FailureEntry | None:
        """The failure being held for key, if its hold has not run out."""
        entry = self._failures.get(key)
        if entry is None or now >= entry.until:
            return None
        return entry

    # -- flushing -------------------------------------------------------------------------------
    def flush(self, name: str | None = None) -> int:
        """Forget every answer (name None) or those for one owner name, any type, class or
        DO/CD bits; held failures go too. Returns how many answers were dropped."""
        if name is None:
            dropped = self._count
            self._table = [None] * _MIN_TABLE
            self._mask = _MIN_TABLE - 1
            self._queue = array("i")
            self._failures.clear()
            self.prefetch_due.clear()
            self._count = self._gone = self._hand = self._holes = self._bytes = 0
            return dropped
        try:
            qname = dns.name.from_text(name).to_wire()
        except dns.exception.DNSException as exc:
            raise ValueError(f"not a domain name: {name!r} ({exc})") from None
        assert qname is not None
        qname = qname.lower()
        for key in [k for k in self._failures if k[:-5] == qname]:
            del self._failures[key]
        return self._drop([k for k, _ in self._records() if k[:-5] == qname])

    def drop_unvalidated(self) -> int:
        """Forget the answers that were never validated (cached with validation off), but those
        for clients that set CD, and every answer read from a file (CD or not: a file's answer is
        anyone's): validation has just been turned on."""
        unchecked = ValidationStatus.UNCHECKED
        loaded = ValidationStatus.LOADED
        return self._drop(
            [
                key
                for key, record in self._records()
                if record[_BITS] & _STATUS_MASK == loaded
                or (record[_BITS] & _STATUS_MASK == unchecked and not key[-1] & _KEY_CD)
            ]
        )

    def _drop(self, keys: list[bytes]) -> int:
        table = self._table
        for key in keys:
            index = self._find(key)
            record = table[index]
            assert record is not None
            self._bytes -= _cost(record)
            self._vacate(index)
            self._count -= 1
        if keys:
            queue = self._queue
            for position, slot in enumerate(queue):
                if slot >= 0 and not table[slot]:  # None or _GONE: dropped just now
                    queue[position] = -1
            self._hand = sum(1 for slot in queue[: self._hand] if slot >= 0)
            self._queue = array("i", (slot for slot in queue if slot >= 0))
            self._holes = 0
            self._rebuild(self._count)
        return len(keys)

    # -- persistence ----------------------------------------------------------------------------
    def dump(self, now: float, wall_now: float) -> bytes:
        """The unexpired answers as a self-checking file image (see "the file format")."""
        parts = [b""]
        ticks = self._ticks(now)
        for key, record in self._records():
            stored, expires, body_age, bits, _n, count = _HEAD.unpack_from(record)
            if ticks >= expires:
                continue
            body, offsets = _body_of(key, record, count)
            age, ttl = (ticks - stored) / _TICKS, (expires - stored) / _TICKS
            relative = (
                _FILE_HEAD.pack(age, ttl, 0.0, body_age, bits & _STATUS_MASK, 0, count)
                + struct.pack(f"!{count}H", *offsets)
                + body
            )
            parts.append(_FILE_RECORD.pack(len(key), len(relative)) + key + relative)
        parts[0] = _FILE_HEADER.pack(_MAGIC, _VERSION, wall_now, len(parts) - 1)
        image = b"".join(parts)
        return image + _U32.pack(zlib.crc32(image))

    def restore(self, data: bytes, now: float, wall_now: float) -> int:
        """Load answers from a `dump` image, the wall-clock time since it was written taken off
        their TTLs; expired ones are dropped. Raises CacheFileError for a damaged or foreign image
        (nothing is loaded then). Returns how many answers were loaded.

        A file is trusted no more than an upstream that did not sign: every answer is loaded as
        LOADED (never validated) with AD cleared, whatever the file says, and its lifetime and
        TTLs are clamped as if it had just been received (cache_max_ttl, the negative ceiling)."""
        saved_wall, items = _parse_image(data, wall_now)
        down = wall_now - saved_wall
        self._rebase_if_due(now)  # not between making the records and inserting them
        kept = []
        for key, record in items:
            loaded = self._loaded(key, record, now, down)
            if loaded is not None:
                kept.append((key, loaded))
        return sum(self._insert(key, record) for key, record in kept)

    def _loaded(self, key: bytes, record: bytes, now: float, down: float) -> bytes | None:
        """A record from a file as the cache keeps it; None if it expired meanwhile. Raises
        CacheFileError unless it is an answer to `key` whose TTL offsets are its records' own
        (so patching can only ever touch TTL fields) and of a kind the cache keeps."""
        if len(record) < _FILE_HEAD_SIZE:
            raise CacheFileError("a damaged answer (shorter than its header)")
        age, ttl, _p, body_age, _status, _v, count = _FILE_HEAD.unpack_from(record)
        if not (math.isfinite(age) and math.isfinite(ttl) and age >= 0 and ttl > 0):
            raise CacheFileError("a damaged answer")
        elapsed = age + down
        if ttl <= elapsed or elapsed >= 1 << 32:
            return None  # expired while the daemon was down
        start = _FILE_HEAD_SIZE + 2 * count
        layout = _scan_loaded(key, record, count)
        offsets = layout.ttl_offsets
        body = record[start:]
        allowed = self.ttl_for(layout)
        flags = wire.U16.unpack_from(body, 2)[0]
        if allowed is None or flags & wire.TC or not flags & wire.QR or layout.opt_span:
            raise CacheFileError("an answer of a kind that is never cached")
        # no longer than the TTLs it carries allow (clamped as a fresh reply's would be)
        left = min(ttl - elapsed, allowed[0])
        if left <= 0:
            return None
        buf = bytearray(body)
        seen = int(elapsed)
        buf[3] &= ~wire.AD & 0xFF  # AD is in the low octet of the flags
        lower = seen - body_age if seen > body_age else 0
        ceiling = math.ceil(left)
        for offset in offsets:
            field = _U32.unpack_from(buf, offset)[0]
            field = field - lower if field > lower else 0
            _U32.pack_into(buf, offset, field if field < ceiling else ceiling)
        bits = ValidationStatus.LOADED | (_PREFETCH if self.limits.prefetch else 0)
        # the TTLs now say `seen` seconds less: the answer ages from the part of a second left
        # over (the same TTLs from here on as stored `elapsed` ago with `seen` taken off)
        over = elapsed - seen
        stored, expires = self._times(now - over, left + over)
        return _make_record(key, bytes(buf), offsets, stored, expires, 0, bits)


def _prefetch_time(stored: int, expires: int) -> float:
    """When (ticks) an answer stored at `stored` and expiring at `expires` is due for a
    prefetch."""
    return stored + (expires - stored) * (1 - PREFETCH_FRACTION)


def _make_record(
    key: bytes,
    body: bytes,
    ttl_offsets: list[int],
    stored: int,
    expires: int,
    body_age: int,
    bits: int,
) -> bytes:
    """The stored form of an answer (see _HEAD): the body's question left out, the key has it."""
    question_end = wire.HEADER_LEN + len(key) - 1
    count = len(ttl_offsets)
    shift = len(key) - 1
    return (
        _HEAD.pack(stored, expires, body_age, bits, len(key) - 5, count)
        + key
        + struct.pack(f"!{count}H", *[offset - shift for offset in ttl_offsets])
        + body[: wire.HEADER_LEN]
        + body[question_end:]
    )


def _key_of(record: bytes) -> bytes:
    return record[_HEAD_SIZE : _HEAD_SIZE + record[_NAME_LEN] + 5]


def _with_question(key: bytes, part: bytes) -> bytes:
    """A whole reply body from a stored one (header and the sections after the question)."""
    return part[: wire.HEADER_LEN] + key[:-1] + part[wire.HEADER_LEN :]


def _body_of(key: bytes, record: bytes, count: int) -> tuple[bytes, list[int]]:
    """A record's whole reply body (question from the key) and its TTL offsets in that body."""
    start = _HEAD_SIZE + len(key)
    shift = len(key) - 1
    offsets = [offset + shift for offset in struct.unpack_from(f"!{count}H", record, start)]
    return _with_question(key, record[start + 2 * count :]), offsets


def _scan_loaded(key: bytes, record: bytes, count: int) -> wire.ReplyLayout:
    """The layout of a loaded record's body; CacheFileError unless the body is a well-formed
    reply to `key` whose TTL offsets (as the record lists them) are its records' own."""
    body = record[_FILE_HEAD_SIZE + 2 * count :]
    try:
        layout = wire.scan_reply(body)
    except wire.WireError as exc:
        raise CacheFileError(f"a damaged answer ({exc})") from None
    question_end = wire.HEADER_LEN + len(key) - 1
    if layout.question_end != question_end or wire.U16.unpack_from(body, 4)[0] != 1:
        raise CacheFileError("an answer does not match its key")
    question = body[wire.HEADER_LEN : question_end]
    if question[:-4].lower() + question[-4:] != key[:-1]:
        raise CacheFileError("an answer does not match its key")
    if len(key) - 5 > 255 or len(key) < 6:
        raise CacheFileError("an answer does not match its key")
    offsets = list(struct.unpack_from(f"!{count}H", record, _FILE_HEAD_SIZE))
    if layout.ttl_offsets != offsets:
        raise CacheFileError("an answer's TTL offsets are not those of its records")
    return layout


def _cost(record: bytes) -> int:
    """What an answer is counted for against `max_bytes` (its record holds its key)."""
    return ENTRY_OVERHEAD + len(record)


def _lower_ttls(buf: bytearray, offsets_at: int, count: int, seconds: int) -> None:
    """Lower every TTL of a record's body by `seconds`, not below zero."""
    start = offsets_at + 2 * count
    for index in range(count):
        offset = start + _U16.unpack_from(buf, offsets_at + 2 * index)[0]
        ttl = _U32.unpack_from(buf, offset)[0]
        _U32.pack_into(buf, offset, ttl - seconds if ttl > seconds else 0)


def _clamp_ttls(body: bytes, ttl_offsets: list[int], low: int, high: int) -> bytes:
    """Every TTL brought within [low, high]; the body unchanged (same object) if all were."""
    buf: bytearray | None = None
    for offset in ttl_offsets:
        ttl = _U32.unpack_from(body, offset)[0]
        clamped = low if ttl < low else high if ttl > high else ttl
        if clamped != ttl:
            if buf is None:
                buf = bytearray(body)
            _U32.pack_into(buf, offset, clamped)
    return body if buf is None else bytes(buf)


# --------------------------------------------------------------------------- the file format
# header: magic, version, wall-clock time of writing (float seconds), record count;
# then per answer: key length, record length, the key, and the in-memory record with its times
# made relative (stored → age in seconds, expires → TTL in seconds); trailer: CRC-32 of all before
_MAGIC = b"stubby-py cache\n"
_VERSION = 1
_FILE_HEADER = struct.Struct("!16sHdI")
#: an answer in the file: age, TTL, 0.0, body_age, status, 0, count; offsets; the whole body
_FILE_HEAD = struct.Struct("!dddIBBH")
_FILE_HEAD_SIZE = _FILE_HEAD.size
_FILE_RECORD = struct.Struct("!HI")


def _parse_image(data: bytes, wall_now: float) -> tuple[float, list[tuple[bytes, bytes]]]:
    if len(data) < _FILE_HEADER.size + 4 or not data.startswith(_MAGIC):
        raise CacheFileError("not a stubby-py cache file")
    _magic, version, saved_wall, count = _FILE_HEADER.unpack_from(data)
    if version != _VERSION:
        raise CacheFileError(f"cache file version {version}, expected {_VERSION}")
    if zlib.crc32(data[:-4]) != _U32.unpack_from(data, len(data) - 4)[0]:
        raise CacheFileError("checksum mismatch (truncated or damaged)")
    if not math.isfinite(saved_wall) or saved_wall > wall_now:
        raise CacheFileError("written in the future: the clock is behind the time it was saved")
    pos = _FILE_HEADER.size
    end = len(data) - 4
    items: list[tuple[bytes, bytes]] = []
    try:
        for _ in range(count):
            key_len, record_len = _FILE_RECORD.unpack_from(data, pos)
            pos += _FILE_RECORD.size
            items.append(
                (data[pos : pos + key_len], data[pos + key_len : pos + key_len + record_len])
            )
            pos += key_len + record_len
    except struct.error as exc:
        raise CacheFileError(f"damaged record: {exc}") from None
    if pos != end:
        raise CacheFileError("records do not fill the file")
    return saved_wall, items


def file_limit(limits: CacheLimits) -> int:
    """The largest cache file worth reading: the answers' own octets are less than what
    `max_bytes` counts for them, so a bigger file holds more than the cache could keep."""
    return limits.max_bytes + _FILE_HEADER.size + _U32.size
