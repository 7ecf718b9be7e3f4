"""A cache file is trusted no more than the network: a forged one cannot give AD, a long TTL or
(under validation) any answer at all; a damaged one, a link, a device or a FIFO is ignored and
the daemon starts and answers."""

from __future__ import annotations

import logging
import os
import random
import stat
import struct
import threading
import time
import zlib
from pathlib import Path

import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rrset
import pytest

from stubby_py.core import cache as cache_module
from stubby_py.core.cache import Cache, ValidationStatus
from stubby_py.daemon import cache_persistence
from tests.conftest import dot_uri
from tests.daemon_thread import make_config, running_daemon
from tests.servers import LocalUpstream
from tests.service import ask

# the file format, spelled out here so the forger does not lean on the code it attacks:
# header (magic, version, wall-clock time, count); per answer (key length, record length, key,
# record: age, ttl, prefetch, body_age, status, visited, offset count, offsets, body); CRC-32
MAGIC = b"stubby-py cache\n"
HEADER = struct.Struct("!16sHdI")
RECORD = struct.Struct("!HI")
HEAD = struct.Struct("!dddIBBH")
SIXTY_THREE_YEARS = 2_000_000_000
UPSTREAM_ADDRESS = "192.0.2.1"  # what the local upstream answers for every A question


def forged_answer(
    name: str = "www.bank.example.", ttl: int = SIXTY_THREE_YEARS, address: str = "6.6.6.6"
) -> tuple[bytes, bytes, list[int]]:
    """(cache key, reply body with AD set, TTL offsets) for a plain client's A question."""
    query = dns.message.make_query(name, "A", use_edns=False)
    reply = dns.message.make_response(query)
    reply.flags |= dns.flags.AD | dns.flags.RA
    reply.answer.append(dns.rrset.from_text(name, ttl, "IN", "A", address))
    body = reply.to_wire()
    qname = dns.message.from_wire(body).question[0].name.to_wire()
    assert qname is not None
    key = qname.lower() + struct.pack("!HH", 1, 1) + b"\x00"  # no DO, no CD
    ttl_offset = 12 + len(qname) + 4 + 2 + 4  # answer: name pointer, type, class, then TTL
    return key, body, [ttl_offset]


def forged_record(
    body: bytes,
    offsets: list[int],
    *,
    ttl: float = SIXTY_THREE_YEARS,
    status: int = ValidationStatus.SECURE,
    age: float = 0.0,
) -> bytes:
    head = HEAD.pack(age, ttl, 0.0, 0, status, 0, len(offsets))
    return head + struct.pack(f"!{len(offsets)}H", *offsets) + body


def forged_file(entries: list[tuple[bytes, bytes]], wall: float | None = None) -> bytes:
    """A file image with a valid checksum holding (key, record) entries as given."""
    wall = time.time() - 1 if wall is None else wall
    image = HEADER.pack(MAGIC, 1, wall, len(entries)) + b"".join(
        RECORD.pack(len(key), len(record)) + key + record for key, record in entries
    )
    return image + struct.pack("!I", zlib.crc32(image))


def bank_file() -> bytes:
    key, body, offsets = forged_answer()
    return forged_file([(key, forged_record(body, offsets))])


def config_for(upstream: LocalUpstream, ca_file: str, path: Path, **changes: object):  # type: ignore[no-untyped-def]
    return make_config(
        [dot_uri(upstream)], ca_file, cache_file=str(path), cache_max_ttl=600, **changes
    )


def test_forged_file_gives_no_ad_and_no_long_ttl(
    dot_upstream: LocalUpstream, ca_file: str, tmp_path: Path
) -> None:
    path = tmp_path / "cache.bin"
    path.write_bytes(bank_file())
    with running_daemon(config_for(dot_upstream, ca_file, path)) as daemon:
        reply = ask(daemon.port, "www.bank.example.")
    # dnssec: off, so the answer is served as an unvalidated one would be: never AD, and no
    # longer than the configured ceiling
    assert reply.rcode() == dns.rcode.NOERROR
    assert not reply.flags & dns.flags.AD
    assert reply.answer and reply.answer[0].ttl <= 600


def test_forged_file_is_not_served_under_validation(
    dot_upstream: LocalUpstream, ca_file: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "cache.bin"
    path.write_bytes(bank_file())
    config = config_for(
        dot_upstream, ca_file, path, dnssec="validate", trust_anchor_updates=False, timeout=2.0
    )
    with caplog.at_level(logging.INFO), running_daemon(config) as daemon:
        reply = ask(daemon.port, "www.bank.example.", timeout=5.0)
        held = daemon.resolver.cache.peek(forged_answer()[0])
        assert held is None or b"\x06\x06\x06\x06" not in held.body
    addresses = [r.address for rrset in reply.answer for r in rrset]
    assert "6.6.6.6" not in addresses
    assert not reply.flags & dns.flags.AD
    assert "not loaded (dnssec: validate)" in caplog.text


def _damaged_files() -> dict[str, bytes]:
    key, body, offsets = forged_answer(ttl=300)
    good = forged_record(body, offsets, ttl=300.0)
    short = HEAD.pack(0.0, 300.0, 0.0, 0, 0, 0, 0)[:20]  # shorter than its own header
    image = forged_file([(key, good)])
    bad_lengths = bytearray(image)
    struct.pack_into("!HI", bad_lengths, HEADER.size, len(key), 60_000)  # past the end
    struct.pack_into("!I", bad_lengths, len(image) - 4, zlib.crc32(bad_lengths[:-4]))
    truncated_body = forged_record(body[:-3], offsets, ttl=300.0)
    offsets_past = forged_record(body, [len(body) + 100], ttl=300.0)
    servfail = bytearray(body)
    servfail[3] = (servfail[3] & 0xF0) | dns.rcode.SERVFAIL
    return {
        "short record, valid CRC": forged_file([(key, short)]),
        "truncated body, valid CRC": forged_file([(key, truncated_body)]),
        "TTL offset past the end": forged_file([(key, offsets_past)]),
        "bad lengths, valid CRC": bytes(bad_lengths),
        "truncated file": image[: len(image) - 7],
        "bad CRC": image[:-4] + bytes(4),
        "wrong magic": b"stubby-py cachX\n" + image[16:],
        "a SERVFAIL": forged_file([(key, forged_record(bytes(servfail), offsets, ttl=300.0))]),
        "a short key": forged_file([(b"\x00", good)]),
        "NaN age": forged_file([(key, forged_record(body, offsets, ttl=300.0, age=float("nan")))]),
        "empty": b"",
    }


@pytest.mark.parametrize("damage", sorted(_damaged_files()))
def test_damaged_file_is_ignored_and_the_daemon_answers(
    dot_upstream: LocalUpstream,
    ca_file: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    damage: str,
) -> None:
    path = tmp_path / "cache.bin"
    path.write_bytes(_damaged_files()[damage])
    with (
        caplog.at_level(logging.WARNING),
        running_daemon(config_for(dot_upstream, ca_file, path)) as daemon,
    ):
        reply = ask(daemon.port, "www.bank.example.")
        assert len(daemon.resolver.cache) == 1  # only the answer just fetched
    assert reply.rcode() == dns.rcode.NOERROR
    assert [r.address for r in reply.answer[0]] == [UPSTREAM_ADDRESS]
    assert f"cache file {path} ignored" in caplog.text


def test_a_file_too_big_for_the_cache_is_not_read(
    dot_upstream: LocalUpstream, ca_file: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "cache.bin"
    with path.open("wb") as handle:  # sparse: 2 MiB of nothing for a 1 MiB cache
        handle.truncate(2 << 20)
    with (
        caplog.at_level(logging.WARNING),
        running_daemon(config_for(dot_upstream, ca_file, path, cache_max_memory=1)) as daemon,
    ):
        assert ask(daemon.port, "www.bank.example.").rcode() == dns.rcode.NOERROR
    assert "more than the" in caplog.text


def test_a_symbolic_link_is_not_followed(
    dot_upstream: LocalUpstream, ca_file: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    target = tmp_path / "elsewhere.bin"
    key, body, offsets = forged_answer(ttl=300)
    target.write_bytes(forged_file([(key, forged_record(body, offsets, ttl=300.0))]))
    target.chmod(0o600)
    assert Cache().restore(target.read_bytes(), 0.0, time.time()) == 1  # a loadable file
    path = tmp_path / "cache.bin"
    path.symlink_to(target)
    with (
        caplog.at_level(logging.WARNING),
        running_daemon(config_for(dot_upstream, ca_file, path)) as daemon,
    ):
        reply = ask(daemon.port, "www.bank.example.")
    assert [r.address for r in reply.answer[0]] == [UPSTREAM_ADDRESS]
    assert "a symbolic link (not followed)" in caplog.text


def test_a_device_is_refused_at_once(
    dot_upstream: LocalUpstream, ca_file: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A character device like /dev/zero (made here: the real one must never be at stake)."""
    zero = tmp_path / "zero"
    try:
        os.mknod(zero, stat.S_IFCHR | 0o600, os.makedev(1, 5))
    except PermissionError:
        pytest.skip("making a device node needs root")
    started = time.monotonic()
    with (
        caplog.at_level(logging.WARNING),
        running_daemon(config_for(dot_upstream, ca_file, zero)) as daemon,
    ):
        assert time.monotonic() - started < 5.0  # reading /dev/zero would never end
        assert ask(daemon.port, "www.bank.example.").rcode() == dns.rcode.NOERROR
    assert f"cache file {zero} ignored: not a regular file" in caplog.text
    # nor is the device replaced by the cache saved at stop
    assert stat.S_ISCHR(zero.lstat().st_mode)
    assert f"cache not saved to {zero}: not a regular file" in caplog.text


def test_a_fifo_is_refused_without_waiting_for_a_writer(tmp_path: Path) -> None:
    fifo = tmp_path / "cache.bin"
    os.mkfifo(fifo)
    result: list[int] = []
    worker = threading.Thread(
        target=lambda: result.append(cache_persistence.load(Cache(), str(fifo), 0.0, time.time())),
        daemon=True,
    )
    worker.start()
    worker.join(5.0)
    if worker.is_alive():  # unblock the reader before failing
        with open(fifo, "wb"):
            pass
        worker.join(5.0)
        pytest.fail("opening the FIFO waited for a writer")
    assert result == [0]


def test_a_file_others_may_write_is_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    key, body, offsets = forged_answer(ttl=300)
    path = tmp_path / "cache.bin"
    path.write_bytes(forged_file([(key, forged_record(body, offsets, ttl=300.0))]))
    path.chmod(0o666)
    with caplog.at_level(logging.WARNING):
        assert cache_persistence.load(Cache(), str(path), 0.0, time.time()) == 0
    assert "writable by other users" in caplog.text
    path.chmod(0o600)
    assert cache_persistence.load(Cache(), str(path), 0.0, time.time()) == 1


def test_loaded_ttls_never_outlive_the_ceiling() -> None:
    """Pure: a record claiming 63 years keeps at most cache_max_ttl, its TTL fields too, and
    its status is unchecked whatever the file says."""
    key, body, offsets = forged_answer()
    cache = Cache(cache_module.CacheLimits(max_ttl=600))
    assert cache.restore(forged_file([(key, forged_record(body, offsets))]), 0.0, time.time())
    entry = cache.peek(key)
    assert entry is not None
    assert entry.status == ValidationStatus.LOADED
    assert entry.expires <= 600
    assert not struct.unpack_from("!H", entry.body, 2)[0] & dns.flags.AD
    assert struct.unpack_from("!I", entry.body, offsets[0])[0] <= 600
    assert cache.fresh(key, 600.0) is None


def test_answers_from_a_file_go_when_validation_is_turned_on(
    dot_upstream: LocalUpstream, ca_file: str, tmp_path: Path
) -> None:
    """Read under dnssec: off, then a reload turns validation on: what came from the file goes,
    the answers for clients that set CD too (CD asks for data unchecked, not for a file's)."""
    path = tmp_path / "cache.bin"
    plain_key, body, offsets = forged_answer()
    cd_key = plain_key[:-1] + b"\x01"
    path.write_bytes(
        forged_file(
            [(plain_key, forged_record(body, offsets)), (cd_key, forged_record(body, offsets))]
        )
    )
    config = config_for(dot_upstream, ca_file, path)
    with running_daemon(config) as daemon:
        assert len(daemon.resolver.cache) == 2
        daemon.daemon.loader = lambda: config.with_options(
            dnssec="validate", trust_anchor_updates=False
        )
        assert daemon.call(daemon.daemon.reload) is None
        assert len(daemon.resolver.cache) == 0
        query = dns.message.make_query("www.bank.example.", "A", use_edns=False)
        query.flags |= dns.flags.CD
        reply = dns.query.udp(query, "127.0.0.1", port=daemon.port, timeout=5)
    assert [r.address for r in reply.answer[0]] == [UPSTREAM_ADDRESS]


def test_mutated_files_with_good_checksums_are_loaded_or_refused_never_crash() -> None:
    """Pure: 3,000 random mutations of a well-formed file, each with its checksum made right
    again: restore either loads answers or raises CacheFileError, nothing else."""
    rng = random.Random(14)
    key, body, offsets = forged_answer(ttl=300)
    nx_key, nx_body, nx_offsets = forged_answer("gone.example.", ttl=60)
    image = forged_file(
        [
            (key, forged_record(body, offsets, ttl=300.0)),
            (nx_key, forged_record(nx_body, nx_offsets, ttl=60.0)),
        ]
    )[:-4]
    for _ in range(3000):
        mutated = bytearray(image)
        for _ in range(rng.randint(1, 4)):
            at = rng.randrange(len(mutated))
            choice = rng.random()
            if choice < 0.6:
                mutated[at] = rng.randrange(256)
            elif choice < 0.8:
                del mutated[at : at + rng.randint(1, 8)]
            else:
                mutated[at:at] = rng.randbytes(rng.randint(1, 8))
        data = bytes(mutated) + struct.pack("!I", zlib.crc32(mutated))
        cache = Cache(cache_module.CacheLimits(max_ttl=600))
        try:
            cache.restore(data, 0.0, time.time())
        except cache_module.CacheFileError:
            continue
        for stored_key, _record in cache._records():
            entry = cache.peek(stored_key)
            assert entry is not None and entry.expires <= 600
            assert not struct.unpack_from("!H", entry.body, 2)[0] & dns.flags.AD
