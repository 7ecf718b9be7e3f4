"""Records read straight from a reply's octets, and the data an RRSIG signs over them.

The validator's fast path (validate.Validator.validate_answer) builds no dnspython message: it
reads the records it needs here, in canonical form (RFC 4034 §6.2: names uncompressed, owner
names lower-cased, names in RDATA lower-cased for the types that list them), and builds the data a
signature covers (RFC 4034 §3.1.8.1) from them. A record whose RDATA layout is not known here has
no canonical form (`Record.rdata` is None): the caller takes the full path for it. Malformed
octets (a name or record running past the end, a pointer loop, a bad label) raise WireError.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from typing import NamedTuple

from stubby_py.core.wire import HEADER, HEADER_LEN, MAX_NAME_LEN, RR_FIXED, WireError

RRSIG = 46
NSEC = 47
_RRSIG_FIXED = struct.Struct("!HBBIIIH")  # type covered, algorithm, labels, TTL, times, key tag
_SIGNED_FIXED = struct.Struct("!HHI")  # type, class, original TTL of each signed record
_LENGTH = struct.Struct("!H")

#: RDATA without domain names: canonical as received (A, HINFO, TXT, AAAA, DS, SSHFP, DNSKEY,
#: NSEC3, NSEC3PARAM, TLSA, CDS, CDNSKEY, OPENPGPKEY, CAA)
_NAMELESS = frozenset({1, 13, 16, 28, 43, 44, 48, 50, 51, 52, 59, 60, 61, 257})
#: RDATA layouts with names, as (octets before the first name, names, octets after): the names
#: are lower-cased in canonical form (RFC 4034 §6.2); RRSIG's signer name is read with the RRSIG
_WITH_NAMES: dict[int, tuple[int, int]] = {
    2: (0, 1),  # NS
    5: (0, 1),  # CNAME
    12: (0, 1),  # PTR
    39: (0, 1),  # DNAME
    15: (2, 1),  # MX
    18: (2, 1),  # AFSDB
    21: (2, 1),  # RT
    36: (2, 1),  # KX
    33: (6, 1),  # SRV
    17: (0, 2),  # RP
    26: (2, 2),  # PX
}
_SOA = 6
_SOA_FIXED = 20


class Record(NamedTuple):
    """One resource record of a reply (a tuple: made for every record, so made cheaply)."""

    #: 0 answer, 1 authority, 2 additional
    section: int
    #: the owner name in canonical form: uncompressed, lower-cased
    owner: bytes
    rtype: int
    rclass: int
    ttl: int
    #: the RDATA in canonical form; None: a type whose layout is not read here
    rdata: bytes | None
    #: where the record lies in the reply (owner name to the end of its RDATA)
    start: int
    end: int


class Signature(NamedTuple):
    """An RRSIG's fields (names as dnspython's RRSIG has them, so verify.py judges both)."""

    owner: bytes
    rclass: int
    type_covered: int
    algorithm: int
    labels: int
    original_ttl: int
    expiration: int
    inception: int
    key_tag: int
    #: the signer's name in canonical form
    signer: bytes
    signature: bytes
    #: the RDATA up to the signature: what RFC 4034 §3.1.8.1 puts before the records
    head: bytes


def read_name(data: bytes, pos: int) -> tuple[bytes, int]:
    """The name at pos, uncompressed, in its received case; and where it ends in place.

    A compression pointer must point before itself (as dnspython insists), so every name ends."""
    parts: list[bytes] = []
    size = 0
    end = 0
    limit = len(data)
    while True:
        if pos >= limit:
            raise WireError("name runs past the end")
        length = data[pos]
        if length >= 0xC0:
            end = end or pos + 2
            pos = _pointer(data, pos)
            continue
        if length > 63:
            raise WireError("unknown label type")
        size += length + 1
        if size > MAX_NAME_LEN:
            raise WireError("name longer than 255 octets")
        if length == 0:
            parts.append(b"\x00")
            return b"".join(parts), end or pos + 1
        parts.append(data[pos : pos + 1 + length])
        pos += 1 + length


def _pointer(data: bytes, pos: int) -> int:
    """Where the compression pointer at pos leads: backwards, past the header. A prefix of a
    reply's records so read can be copied alone: none of its names leads beyond it."""
    if pos + 1 >= len(data):
        raise WireError("pointer runs past the end")
    target = ((data[pos] & 0x3F) << 8) | data[pos + 1]
    if target >= pos:
        raise WireError("compression pointer does not point backwards")
    if target < HEADER_LEN:
        # into the header, whose counts a copy rewrites
        raise WireError("compression pointer into the header")
    return target


def label_count(name: bytes) -> int:
    """Labels of an uncompressed name, the root not counted (as the RRSIG labels field counts)."""
    count = 0
    pos = 0
    while name[pos]:
        count += 1
        pos += name[pos] + 1
    return count


def _names_rdata(data: bytes, rtype: int, start: int, end: int) -> bytes:
    """RDATA of a layout in _WITH_NAMES, names uncompressed and lower-cased."""
    before, names = _WITH_NAMES[rtype]
    parts = [data[start : start + before]]
    pos = start + before
    for _ in range(names):
        name, pos = read_name(data, pos)
        parts.append(name.lower())  # length octets (≤ 63) are never ASCII letters
    if pos != end:
        raise WireError(f"type {rtype} RDATA of the wrong length")
    return b"".join(parts)


def _soa_rdata(data: bytes, rtype: int, start: int, end: int) -> bytes:
    mname, pos = read_name(data, start)
    rname, pos = read_name(data, pos)
    if pos + _SOA_FIXED != end:
        raise WireError("SOA RDATA of the wrong length")
    return mname.lower() + rname.lower() + data[pos:end]


def _nsec_rdata(data: bytes, rtype: int, start: int, end: int) -> bytes:
    # RFC 6840 §5.1: the next owner name keeps its case
    following, pos = read_name(data, start)
    if pos > end:
        raise WireError("NSEC RDATA of the wrong length")
    return following + data[pos:end]


def _rrsig_rdata(data: bytes, rtype: int, start: int, end: int) -> bytes:
    if end - start < _RRSIG_FIXED.size + 1:
        raise WireError("RRSIG RDATA too short")
    signer, pos = read_name(data, start + _RRSIG_FIXED.size)
    if pos > end:
        raise WireError("RRSIG RDATA of the wrong length")
    return data[start : start + _RRSIG_FIXED.size] + signer.lower() + data[pos:end]


_READERS = {
    **dict.fromkeys(_WITH_NAMES, _names_rdata),
    _SOA: _soa_rdata,
    NSEC: _nsec_rdata,
    RRSIG: _rrsig_rdata,
}


def _canonical_rdata(data: bytes, rtype: int, start: int, end: int) -> bytes | None:
    if rtype in _NAMELESS:
        return data[start:end]
    reader = _READERS.get(rtype)
    return reader(data, rtype, start, end) if reader is not None else None


def read_records(body: bytes, sections: int = 3) -> list[Record]:
    """The records of a reply's first `sections` sections (1: the answer only), in order; with
    all three, octets past the last record are an error too (as dnspython has it)."""
    if len(body) < HEADER_LEN:
        raise WireError("shorter than a header")
    _id, _flags, qdcount, ancount, nscount, arcount = HEADER.unpack_from(body)
    pos = HEADER_LEN
    for _ in range(qdcount):
        pos = read_name(body, pos)[1] + 4
    records: list[Record] = []
    limit = len(body)
    counts = (ancount, ancount + nscount, ancount + nscount + arcount)
    for index in range(counts[min(max(sections, 1), 3) - 1]):
        section = 0 if index < ancount else 1 if index < ancount + nscount else 2
        start = pos
        owner, pos = read_name(body, pos)
        if pos + RR_FIXED.size > limit:
            raise WireError("record runs past the end")
        rtype, rclass, ttl, rdlength = RR_FIXED.unpack_from(body, pos)
        pos += RR_FIXED.size
        end = pos + rdlength
        if end > limit:
            raise WireError("RDATA runs past the end")
        rdata = _canonical_rdata(body, rtype, pos, end)
        records.append(Record(section, owner.lower(), rtype, rclass, ttl, rdata, start, end))
        pos = end
    if sections >= 3 and pos != limit:
        raise WireError("octets past the last record")
    return records


def signature(record: Record) -> Signature:
    """The fields of an RRSIG record (its canonical RDATA)."""
    rdata = record.rdata
    if record.rtype != RRSIG or rdata is None:
        raise WireError("not an RRSIG")
    covered, algorithm, labels, original_ttl, expiration, inception, key_tag = (
        _RRSIG_FIXED.unpack_from(rdata)
    )
    pos = _RRSIG_FIXED.size
    while rdata[pos]:
        pos += rdata[pos] + 1
    pos += 1
    signer = rdata[_RRSIG_FIXED.size : pos]
    return Signature(
        record.owner, record.rclass, covered, algorithm, labels, original_ttl, expiration,
        inception, key_tag, signer, rdata[pos:], rdata[:pos],
    )  # fmt: skip


def is_subdomain(name: bytes, zone: bytes) -> bool:
    """Whether the canonical name `name` is `zone` or below it (both canonical)."""
    if not name.endswith(zone):
        return False
    cut = len(name) - len(zone)
    if cut == 0:
        return True
    pos = 0
    while pos < cut:  # zone's first octet must begin a label of name, not sit inside one
        pos += name[pos] + 1
    return pos == cut


def signed_data(sig: Signature, owner: bytes, rtype: int, rclass: int,
                rdatas: Iterable[bytes]) -> bytes:  # fmt: skip
    """The data `sig` signs over the RRset (owner, rtype, rclass) of canonical `rdatas` (RFC
    4034 §3.1.8.1): see `signed_data_of`."""
    return signed_data_of(sig.head, sig.labels, sig.original_ttl, owner, rtype, rclass, rdatas)


def signed_data_of(head: bytes, labels: int, original_ttl: int, owner: bytes, rtype: int,
                   rclass: int, rdatas: Iterable[bytes]) -> bytes:  # fmt: skip
    """What an RRSIG whose RDATA up to the signature is `head` (with its `labels` and
    `original_ttl` fields) signs over the RRset (canonical `owner`, rtype, rclass) of canonical
    `rdatas` (RFC 4034 §3.1.8.1): `head`, then each record, sorted in canonical order (§6.3:
    RDATA as unsigned octets, duplicates once), with the original TTL. An owner with more labels
    than the signature's was expanded from a wildcard: the wildcard is what was signed.
    WireError when the labels field cannot belong to the owner."""
    owner_labels = label_count(owner)
    if owner.startswith(b"\x01*"):
        if labels != owner_labels - 1:
            raise WireError("wildcard owner with the wrong RRSIG labels")
    elif labels > owner_labels:
        raise WireError("RRSIG labels longer than its owner")
    elif labels < owner_labels:
        pos = 0
        for _ in range(owner_labels - labels):
            pos += owner[pos] + 1
        owner = b"\x01*" + owner[pos:]
    fixed = owner + _SIGNED_FIXED.pack(rtype, rclass, original_ttl)
    parts = [head]
    for rdata in sorted(set(rdatas)):
        parts.append(fixed)
        parts.append(_LENGTH.pack(len(rdata)))
        parts.append(rdata)
    return b"".join(parts)
