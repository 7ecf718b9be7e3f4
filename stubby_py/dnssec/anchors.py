"""Trust anchors: the built-in root KSKs and files of DS/DNSKEY records (RFC 4033 §3, RFC 7958).

A trust anchor is where a chain of trust starts (RFC 4035 §4.4, §5): a DS or DNSKEY record the
validator believes without proof. The root's come built in; a file in zone-file form may
replace them or anchor other zones. No I/O beyond reading that one file.
"""

from __future__ import annotations

import os
import types
from collections.abc import Mapping
from dataclasses import dataclass, field

import dns.exception
import dns.name
import dns.rdata
import dns.rdataclass
import dns.rdataset
import dns.rdatatype
import dns.tokenizer
import dns.transaction
import dns.zonefile
from dns.rdtypes.ANY.DNSKEY import DNSKEY
from dns.rdtypes.ANY.DS import DS
from dns.rdtypes.dnskeybase import Flag

from stubby_py.core.errors import ConfigError
from stubby_py.dnssec.verify import (
    DNSKEY_PROTOCOL,
    SUPPORTED_ALGORITHMS,
    SUPPORTED_DIGESTS,
    is_supported_ds,
)

#: The root KSKs as DS records, copied from IANA's https://data.iana.org/root-anchors/root-anchors.xml
#: (KeyDigest "Klajeyz": KSK-2017, validFrom 2017-02-02; KeyDigest "Kmyv6jo": KSK-2024,
#: validFrom 2024-07-18). Cross-checked against Debian's dns-root-data 2024071801
#: (/usr/share/dns/root.ds, built from the same XML) and ISC BIND's bind.keys; the KSK public
#: keys published in that XML hash to exactly these digests (tests/test_dnssec_anchors.py).
ROOT_DS = (
    "20326 8 2 E06D44B80B8F1D39A95C0B0D7C65D08458E880409BBC683457104237C7F8EC8D",
    "38696 8 2 683D2D0ACB8C9B712A1948B27F741219298D0A450D612C483AF444A4C0FB2B16",
)


@dataclass(frozen=True, slots=True)
class AnchorSet:
    """The anchors of one zone: DS records, DNSKEY records, or both."""

    ds: tuple[DS, ...] = ()
    dnskeys: tuple[DNSKEY, ...] = ()

    @property
    def is_usable(self) -> bool:
        """Does any anchor name an algorithm (and, for DS, a digest) we can validate?
        A zone whose anchors are all unusable is treated as insecure (RFC 4035 §5.2)."""
        return any(is_supported_ds(ds) for ds in self.ds) or any(
            key.algorithm in SUPPORTED_ALGORITHMS for key in self.dnskeys
        )


@dataclass(frozen=True)
class TrustAnchors:
    """Anchored zones (absolute names) and their anchors."""

    anchors: Mapping[dns.name.Name, AnchorSet] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for zone in self.anchors:
            if not zone.is_absolute():
                raise ValueError(f"trust anchor zone {zone} is not an absolute name")
        object.__setattr__(self, "anchors", types.MappingProxyType(dict(self.anchors)))

    def __hash__(self) -> int:
        return hash(frozenset(self.anchors.items()))

    @property
    def zones(self) -> tuple[dns.name.Name, ...]:
        """The anchored zones, in canonical order (the root first)."""
        return tuple(sorted(self.anchors))

    def get(self, zone: dns.name.Name) -> AnchorSet | None:
        return self.anchors.get(zone)

    def closest(self, name: dns.name.Name) -> dns.name.Name | None:
        """The deepest anchored zone at or above `name` (where its chain of trust starts)."""
        if not name.is_absolute():
            raise ValueError(f"{name} is not an absolute name")
        if len(self.anchors) == 1 and dns.name.root in self.anchors:
            return dns.name.root  # the usual case: the root's anchors only, above every name
        for _ in range(len(name)):
            if name in self.anchors:
                return name
            if name == dns.name.root:
                break
            name = name.parent()
        return None

    def updated(self, other: TrustAnchors) -> TrustAnchors:
        """These anchors with `other`'s zones replacing (or adding to) ours."""
        return TrustAnchors({**self.anchors, **other.anchors})


def builtin() -> TrustAnchors:
    """The IANA root trust anchors, KSK-2017 (20326) and KSK-2024 (38696)."""
    ds = tuple(_ds(text) for text in ROOT_DS)
    return TrustAnchors({dns.name.root: AnchorSet(ds=ds)})


def _ds(text: str) -> DS:
    rdata = dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.DS, text)
    assert isinstance(rdata, DS)
    return rdata


class _Rejected(Exception):
    """A record that parses but cannot be a trust anchor."""


class _Reader(dns.zonefile.Reader):
    """dnspython's zone-file reader, noting the line each record starts on: errors name it."""

    record_line = 0

    def _rr_line(self) -> None:
        self.record_line = self.tok.line_number
        try:
            super()._rr_line()
        except dns.exception.SyntaxError as exc:
            # read() would put the line the tokenizer is on, past the record when its rdata
            # was parsed to the end of the line (e.g. a DS digest of the wrong length)
            raise _Rejected(str(exc) or "syntax error") from None


def load(path: str | os.PathLike[str]) -> TrustAnchors:
    """Read a file of DS and/or DNSKEY records in zone-file form (RFC 1035 §5.1: comments,
    $TTL, $ORIGIN; owner names relative to $ORIGIN, the root by default).

    Raises ConfigError naming the file, the line where there is one, and what was expected.
    """
    where = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as file:
            text = file.read()
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{where}: cannot read (not UTF-8 text: {exc.reason})") from None
    anchors = _parse(text, where)
    if not anchors:
        raise ConfigError(f"{where}: no trust anchors in file (expected DS or DNSKEY records)")
    root = anchors.get(dns.name.root)
    if root is not None and not root.is_usable:
        raise ConfigError(
            f"{where}: no usable trust anchor for the root: {_unusable(root)}; with no usable "
            "root anchor the validator would treat every answer as insecure"
        )
    return TrustAnchors(anchors)


def _parse(text: str, where: str) -> dict[dns.name.Name, AnchorSet]:
    manager = dns.zonefile.RRSetsReaderManager(dns.name.root, False, dns.rdataclass.IN)
    tok = dns.tokenizer.Tokenizer(text, where)
    try:
        with manager.writer(True) as txn:  # type: ignore[no-untyped-call]
            assert isinstance(txn, dns.transaction.Transaction)
            txn.check_put_rdataset(_check_anchor_rdataset)
            # no $INCLUDE (an anchor file names no other files) and no $GENERATE
            reader = _Reader(
                tok, dns.rdataclass.IN, txn, allow_directives={"$ORIGIN", "$TTL"}, default_ttl=0
            )
            try:
                reader.read()
            except _Rejected as exc:
                raise ConfigError(f"{where}:{reader.record_line}: {exc}") from None
    except dns.exception.SyntaxError as exc:
        # dnspython's reader already says "file:line: what"
        raise ConfigError(str(exc)) from None
    except dns.exception.DNSException as exc:
        raise ConfigError(f"{where}:{tok.line_number}: {exc}") from None
    found: dict[dns.name.Name, tuple[list[DS], list[DNSKEY]]] = {}
    for rrset in manager.rrsets:
        ds, keys = found.setdefault(rrset.name, ([], []))
        for rdata in rrset:
            if isinstance(rdata, DS):
                ds.append(rdata)
            elif isinstance(rdata, DNSKEY):
                keys.append(rdata)
    return {zone: AnchorSet(tuple(ds), tuple(keys)) for zone, (ds, keys) in found.items()}


def _check_anchor_rdataset(
    _txn: dns.transaction.Transaction, name: dns.name.Name, rdataset: dns.rdataset.Rdataset
) -> None:
    if rdataset.rdtype not in (dns.rdatatype.DS, dns.rdatatype.DNSKEY):
        got = dns.rdatatype.to_text(rdataset.rdtype)
        raise _Rejected(f"expected DS or DNSKEY records, got {got}")
    for rdata in rdataset:
        if isinstance(rdata, DNSKEY):
            _check_dnskey(name, rdata)


def _check_dnskey(name: dns.name.Name, key: DNSKEY) -> None:
    what = f"DNSKEY anchor for {name} (flags {key.flags}, algorithm {key.algorithm})"
    # RFC 4034 §2.1.1: only a key with the Zone Key flag may verify RRSIGs
    if not key.flags & Flag.ZONE:
        raise _Rejected(f"{what} lacks the ZONE flag (256): only a zone key can be an anchor")
    # RFC 4034 §2.1.2
    if key.protocol != DNSKEY_PROTOCOL:
        raise _Rejected(f"{what} has protocol {key.protocol}, expected {DNSKEY_PROTOCOL}")
    # RFC 5011 §2.1: a revoked key must not be trusted
    if key.flags & Flag.REVOKE:
        raise _Rejected(f"{what} has the REVOKE flag (128): a revoked key is no anchor")


def _unusable(anchor: AnchorSet) -> str:
    named = [
        f"DS tag {ds.key_tag} algorithm {ds.algorithm} digest {ds.digest_type}" for ds in anchor.ds
    ]
    named += [f"DNSKEY algorithm {key.algorithm}" for key in anchor.dnskeys]
    algorithms = ", ".join(str(a) for a in sorted(SUPPORTED_ALGORITHMS))
    digests = ", ".join(str(d) for d in sorted(SUPPORTED_DIGESTS))
    return (
        f"{'; '.join(named)} use only unsupported algorithms or digest types "
        f"(supported: algorithms {algorithms}, digest types {digests})"
    )
