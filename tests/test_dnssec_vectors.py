"""RRSIG verification and DS matching against the examples published in the RFCs.

Record texts are the RFCs' own: RFC 5702 §6.1 (RSASHA256) and §6.2 (RSASHA512), RFC 6605 §6.1
(ECDSA P-256) and §6.2 (P-384), RFC 8080 §6.1 (Ed25519) and §6.2 (Ed448). RFC 8080's RRSIGs are
those of verified Errata 4935: as first published they lack the algorithm field and carry a
label count of 3 for the 2-label owner example.com., so their signatures cover the wrong data
(test_rfc8080_as_first_published_is_not_accepted). The texts were cross-checked against
independent copies (miekg/dns, dnspython and Net::DNS test suites, the errata page), and the
EdDSA signatures are re-derived below from the RFC's private keys: EdDSA is deterministic.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

import dns.dnssec
import dns.name
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import pytest
from cryptography.hazmat.primitives.asymmetric import ed448, ed25519
from dns.dnssectypes import DSDigest
from dns.edns import EDECode
from dns.rdtypes.ANY.DNSKEY import DNSKEY
from dns.rdtypes.ANY.DS import DS
from dns.rdtypes.ANY.RRSIG import RRSIG

from stubby_py.dnssec import verify


@dataclass(frozen=True)
class Vector:
    id: str
    zone: str
    dnskey: str
    owner: str
    rdtype: str
    rdata: str
    rrsig: str
    #: the DS record the RFC gives for the key, if it gives one
    ds: str | None = None


VECTORS = [
    Vector(
        "rfc5702-6.1-rsasha256",
        "example.net.",
        "256 3 8 AwEAAcFcGsaxxdgiuuGmCkVI my4h99CqT7jwY3pexPGcnUFtR2Fh36BponcwtkZ4cAgtvd4Qs8P"
        " kxUdp6p/DlUmObdk=",
        "www.example.net.",
        "A",
        "192.0.2.91",
        "A 8 3 3600 20300101000000 20000101000000 9033 example.net. kRCOH6u7l0QGy9qpC9"
        " l1sLncJcOKFLJ7GhiUOibu4teYp5VE9RncriShZNz85mwlMgNEa cFYK/lPtPiVYP4bwg==",
    ),
    Vector(
        "rfc5702-6.2-rsasha512",
        "example.net.",
        "256 3 10 AwEAAdHoNTOW+et86KuJOWRD p1pndvwb6Y83nSVXXyLA3DLroROUkN6X0O6pnWnjJQujX/AyhqFD"
        " xj13tOnD9u/1kTg7cV6rklMrZDtJCQ5PCl/D7QNPsgVsMu1J2Q8g"
        " pMpztNFLpPBz1bWXjDtaR7ZQBlZ3PFY12ZTSncorffcGmhOL",
        "www.example.net.",
        "A",
        "192.0.2.91",
        "A 10 3 3600 20300101000000 20000101000000 3740 example.net. tsb4wnjRUDnB1BUi+t"
        " 6TMTXThjVnG+eCkWqjvvjhzQL1d0YRoOe0CbxrVDYd0xDtsuJRa"
        " eUw1ep94PzEWzr0iGYgZBWm/zpq+9fOuagYJRfDqfReKBzMweOL"
        " DiNa8iP5g9vMhpuv6OPlvpXwm9Sa9ZXIbNl1MBGk0fthPgxdDLw =",
    ),
    Vector(
        "rfc6605-6.1-ecdsap256",
        "example.net.",
        "257 3 13 GojIhhXUN/u4v54ZQqGSnyhWJwaubCvTmeexv7bR6edb"
        " krSqQpF64cYbcB7wNcP+e+MAnLr+Wi9xMWyQLc8NAA==",
        "www.example.net.",
        "A",
        "192.0.2.1",
        "A 13 3 3600 20100909100439 20100812100439 55648 example.net."
        " qx6wLYqmh+l9oCKTN6qIc+bw6ya+KJ8oMz0YP107epXA"
        " yGmt+3SNruPFKG7tZoLBLlUzGGus7ZwmwWep666VCw==",
        "55648 13 2 b4c8c1fe2e7477127b27115656ad6256f424625bf5c1 e2770ce6d6e37df61d17",
    ),
    Vector(
        "rfc6605-6.2-ecdsap384",
        "example.net.",
        "257 3 14 xKYaNhWdGOfJ+nPrL8/arkwf2EY3MDJ+SErKivBVSum1"
        " w/egsXvSADtNJhyem5RCOpgQ6K8X1DRSEkrbYQ+OB+v8"
        " /uX45NBwY8rp65F6Glur8I/mlVNgF6W/qTI37m40",
        "www.example.net.",
        "A",
        "192.0.2.1",
        "A 14 3 3600 20100909102025 20100812102025 10771 example.net."
        " /L5hDKIvGDyI1fcARX3z65qrmPsVz73QD1Mr5CEqOiLP"
        " 95hxQouuroGCeZOvzFaxsT8Glr74hbavRKayJNuydCuz"
        " WTSSPdz7wnqXL5bdcJzusdnI0RSMROxxwGipWcJm",
        "10771 14 4 72d7b62976ce06438e9c0bf319013cf801f09ecc84b8d7e9"
        " 495f27e305c6a9b0563a9b5f4d288405c3008a946df983d6",
    ),
    Vector(
        "rfc8080-6.1-ed25519-3613",
        "example.com.",
        "257 3 15 l02Woi0iS8Aa25FQkUd9RMzZHJpBoRQwAQEX1SxZJA4=",
        "example.com.",
        "MX",
        "10 mail.example.com.",
        "MX 15 2 3600 1440021600 1438207200 3613 example.com."
        " oL9krJun7xfBOIWcGHi7mag5/hdZrKWw15jPGrHpjQeRAvTdszaPD+QLs3f"
        " x8A4M3e23mRZ9VrbpMngwcrqNAg==",
        "3613 15 2 3aa5ab37efce57f737fc1627013fee07bdf241bd10f3b1964ab55c78e79 a304b",
    ),
    Vector(
        "rfc8080-6.1-ed25519-35217",
        "example.com.",
        "257 3 15 zPnZ/QwEe7S8C5SPz2OfS5RR40ATk2/rYnE9xHIEijs=",
        "example.com.",
        "MX",
        "10 mail.example.com.",
        "MX 15 2 3600 1440021600 1438207200 35217 example.com."
        " zXQ0bkYgQTEFyfLyi9QoiY6D8ZdYo4wyUhVioYZXFdT410QPRITQSqJSnzQ"
        " oSm5poJ7gD7AQR0O7KuI5k2pcBg==",
        "35217 15 2 401781b934e392de492ec77ae2e15d70f6575a1c0bc59c5275c04ebe80c 6614c",
    ),
    Vector(
        "rfc8080-6.2-ed448-9713",
        "example.com.",
        "257 3 16 3kgROaDjrh0H2iuixWBrc8g2EpBBLCdGzHmn+G2MpTPhpj/OiBVHHSfPodx 1FYYUcJKm1MDpJtIA",
        "example.com.",
        "MX",
        "10 mail.example.com.",
        "MX 16 2 3600 1440021600 1438207200 9713 example.com."
        " 3cPAHkmlnxcDHMyg7vFC34l0blBhuG1qpwLmjInI8w1CMB29FkEAIJUA0am"
        " xWndkmnBZ6SKiwZSAxGILn/NBtOXft0+Gj7FSvOKxE/07+4RQvE581N3Aj/"
        " JtIyaiYVdnYtyMWbSNyGEY2213WKsJlwEA",
        "9713 16 2 6ccf18d5bc5d7fc2fceb1d59d17321402f2aa8d368048db93dd811f5cb2 b19c7",
    ),
    Vector(
        "rfc8080-6.2-ed448-38353",
        "example.com.",
        "257 3 16 kkreGWoccSDmUBGAe7+zsbG6ZAFQp+syPmYUurBRQc3tDjeMCJcVMRDmgcN Lp5HlHAMy12VoISsA",
        "example.com.",
        "MX",
        "10 mail.example.com.",
        "MX 16 2 3600 1440021600 1438207200 38353 example.com."
        " E1/oLjSGIbmLny/4fcgM1z4oL6aqo+izT3urCyHyvEp4Sp8Syg1eI+lJ57C"
        " SnZqjJP41O/9l4m0AsQ4f7qI1gVnML8vWWiyW2KXhT9kuAICUSxv5OWbf81"
        " Rq7Yu60npabODB0QFPb/rkW3kUZmQ0YQUA",
        "38353 16 2 645ff078b3568f5852b70cb60e8e696cc77b75bfaaffc118cf79cbda1ba 28af4",
    ),
]
WITH_DS = [v for v in VECTORS if v.ds is not None]

#: RFC 8080 §6: the private keys of the Ed25519 and Ed448 vectors above
RFC8080_PRIVATE_KEYS = {
    "rfc8080-6.1-ed25519-3613": "ODIyNjAzODQ2MjgwODAxMjI2NDUxOTAyMDQxNDIyNjI=",
    "rfc8080-6.1-ed25519-35217": "DSSF3o0s0f+ElWzj9E/Osxw8hLpk55chkmx0LYN5WiY=",
    "rfc8080-6.2-ed448-9713": (
        "xZ+5Cgm463xugtkY5B0Jx6erFTXp13rYegst0qRtNsOYnaVpMx0Z/c5EiA9x8wWbDDct/U3FhYWA"
    ),
    "rfc8080-6.2-ed448-38353": (
        "WEykD3ht3MHkU8iH4uVOLz8JLwtRBSqiBoM6fF72+Mrp/u5gjxuB1DV6NnPO2BlZdz4hdSTkOdOA"
    ),
}

#: RFC 4034 §5.4: an RSASHA1 (algorithm 5) key and its SHA-1 DS
RFC4034_DNSKEY = (
    "256 3 5 AQOeiiR0GOMYkDshWoSKz9XzfwJr1AYtsmx3TGkJaNXVbfi/2pHm822aJ5iI9BMzNXxe"
    " YCmZDRD99WYwYqUSdjMmmAphXdvxegXd/M5+X7OrzKBaMbCVdFLUUh6DhweJBjEVv5f2"
    " wwjM9XzcnOf+EPbtG9DMBmADjFDc2w/rljwvFw=="
)
RFC4034_DS = "60485 5 1 2BB183AF5F22588179A53B0A 98631FAD1A292118"
#: RFC 5155 Appendix A: the zone-signing key of example., RSASHA1-NSEC3-SHA1 (algorithm 7)
RFC5155_DNSKEY = (
    "256 3 7 AwEAAaetidLzsKWUt4swWR8yu0wPHPiUi8LUsAD0QPWU+wzt89epO6tH"
    " zkMBVDkC7qphQO2hTY4hHn9npWFRw5BYubE="
)


def _rdata(rdtype: str, text: str) -> dns.rdata.Rdata:
    return dns.rdata.from_text(dns.rdataclass.IN, rdtype, text)


def _key(text: str) -> DNSKEY:
    key = _rdata("DNSKEY", text)
    assert isinstance(key, DNSKEY)
    return key


def _ds(text: str) -> DS:
    ds = _rdata("DS", text)
    assert isinstance(ds, DS)
    return ds


def _parts(v: Vector) -> tuple[dns.rrset.RRset, dns.rrset.RRset, dns.name.Name, DNSKEY]:
    rrset = dns.rrset.from_text(v.owner, 3600, "IN", v.rdtype, v.rdata)
    rrsigs = dns.rrset.from_text(v.owner, 3600, "IN", "RRSIG", v.rrsig)
    return rrset, rrsigs, dns.name.from_text(v.zone), _key(v.dnskey)


def _rrsig(rrsigs: dns.rrset.RRset) -> RRSIG:
    rrsig = rrsigs[0]
    assert isinstance(rrsig, RRSIG)
    return rrsig


def _mid(rrsig: RRSIG) -> float:
    return (rrsig.inception + rrsig.expiration) / 2


def _bumped(rdata: dns.rdata.Rdata, *changes: tuple[int, int]) -> dns.rdata.Rdata:
    """`rdata` with the wire octet at each index moved by its delta (mod 256)."""
    wire = bytearray(rdata.to_digestable())
    for index, delta in changes:
        wire[index] = (wire[index] + delta) % 256
    return dns.rdata.from_wire(rdata.rdclass, rdata.rdtype, bytes(wire), 0, len(wire))


def _key_change(key: DNSKEY, *changes: tuple[int, int]) -> DNSKEY:
    """The key with octets of its public key field (after flags, protocol, algorithm) moved."""
    bumped = _bumped(key, *((4 + index, delta) for index, delta in changes))
    assert isinstance(bumped, DNSKEY)
    return bumped


@pytest.mark.parametrize("v", VECTORS, ids=lambda v: v.id)
def test_vector_verifies(v: Vector) -> None:
    rrset, rrsigs, zone, key = _parts(v)
    rrsig = _rrsig(rrsigs)
    assert dns.dnssec.key_id(key) == rrsig.key_tag
    check = verify.verify_rrset(rrset, rrsigs, zone, [key], _mid(rrsig))
    assert check.ok, check.reason
    assert (check.ede, check.expiration, check.original_ttl) == (None, rrsig.expiration, 3600)
    assert check.labels == len(rrset.name) - 1


@pytest.mark.parametrize("v", VECTORS, ids=lambda v: v.id)
def test_vector_verifies_among_other_keys(v: Vector) -> None:
    """The right key is found among the zone's others, including one with another algorithm."""
    rrset, rrsigs, zone, key = _parts(v)
    others = [_key(o.dnskey) for o in VECTORS if o.dnskey != v.dnskey]
    check = verify.verify_rrset(rrset, rrsigs, zone, [*others, key], _mid(_rrsig(rrsigs)))
    assert check.ok, check.reason


@pytest.mark.parametrize("v", VECTORS, ids=lambda v: v.id)
def test_changed_rdata_is_bogus(v: Vector) -> None:
    rrset, rrsigs, zone, key = _parts(v)
    # octet 0: the first octet of the address (A) or of the preference (MX)
    changed = dns.rrset.from_rdata_list(rrset.name, rrset.ttl, [_bumped(rrset[0], (0, 1))])
    check = verify.verify_rrset(changed, rrsigs, zone, [key], _mid(_rrsig(rrsigs)))
    assert (check.ok, check.ede) == (False, EDECode.DNSSEC_BOGUS)
    assert "does not verify" in check.reason


@pytest.mark.parametrize("where", ["first", "middle", "last"])
@pytest.mark.parametrize("v", VECTORS, ids=lambda v: v.id)
def test_changed_signature_is_bogus(v: Vector, where: str) -> None:
    rrset, rrsigs, zone, key = _parts(v)
    rrsig = _rrsig(rrsigs)
    signature = bytearray(rrsig.signature)
    index = {"first": 0, "middle": len(signature) // 2, "last": len(signature) - 1}[where]
    signature[index] ^= 0x01
    forged = dns.rrset.from_rdata_list(
        rrsigs.name, rrsigs.ttl, [rrsig.replace(signature=bytes(signature))]
    )
    check = verify.verify_rrset(rrset, forged, zone, [key], _mid(rrsig))
    assert (check.ok, check.ede) == (False, EDECode.DNSSEC_BOGUS)


@pytest.mark.parametrize("v", VECTORS, ids=lambda v: v.id)
def test_changed_key_octet_is_a_missing_key(v: Vector) -> None:
    """One changed public-key octet changes the key tag, a checksum over the whole DNSKEY RDATA
    (RFC 4034 Appendix B), so the RRSIG's key tag names no key we have: DNSKEY_MISSING, not
    BOGUS. RFC 4035 §5.3.1 only lets a key whose tag matches be tried at all."""
    rrset, rrsigs, zone, key = _parts(v)
    changed = _key_change(key, (len(key.key) // 2, 1))
    assert dns.dnssec.key_id(changed) != dns.dnssec.key_id(key)
    check = verify.verify_rrset(rrset, rrsigs, zone, [changed], _mid(_rrsig(rrsigs)))
    assert (check.ok, check.ede) == (False, EDECode.DNSKEY_MISSING)


@pytest.mark.parametrize("v", VECTORS, ids=lambda v: v.id)
def test_changed_key_with_the_same_tag_is_bogus(v: Vector) -> None:
    """+1 and -1 on two octets two apart cancel in the key tag sum: a different key under the
    same tag is tried and the signature fails."""
    rrset, rrsigs, zone, key = _parts(v)
    middle = len(key.key) // 2
    changed = _key_change(key, (middle, 1), (middle + 2, -1))
    assert changed.key != key.key
    assert dns.dnssec.key_id(changed) == dns.dnssec.key_id(key)
    check = verify.verify_rrset(rrset, rrsigs, zone, [changed], _mid(_rrsig(rrsigs)))
    assert (check.ok, check.ede) == (False, EDECode.DNSSEC_BOGUS)


@pytest.mark.parametrize("skew", [0.0, 300.0])
@pytest.mark.parametrize("v", VECTORS, ids=lambda v: v.id)
def test_validity_window(v: Vector, skew: float) -> None:
    """RFC 4035 §5.3.1: outside [inception, expiration] (widened by the skew allowance) a
    signature does not count: EDE 7 after it, EDE 8 before it; at the edges it still does."""
    rrset, rrsigs, zone, key = _parts(v)
    rrsig = _rrsig(rrsigs)

    def ede_at(now: float) -> int | None:
        return verify.verify_rrset(rrset, rrsigs, zone, [key], now, skew=skew).ede

    assert ede_at(rrsig.expiration + skew) is None
    assert ede_at(rrsig.inception - skew) is None
    assert ede_at(rrsig.expiration + skew + 1) == EDECode.SIGNATURE_EXPIRED
    assert ede_at(rrsig.inception - skew - 1) == EDECode.SIGNATURE_NOT_YET_VALID


@pytest.mark.parametrize("v", WITH_DS, ids=lambda v: v.id)
def test_rfc_ds_digest_is_reproduced_and_matches(v: Vector) -> None:
    assert v.ds is not None
    zone, key, ds = dns.name.from_text(v.zone), _key(v.dnskey), _ds(v.ds)
    made = dns.dnssec.make_ds(zone, key, DSDigest(ds.digest_type))
    assert made == ds
    assert (ds.key_tag, ds.algorithm) == (dns.dnssec.key_id(key), key.algorithm)
    assert verify.is_supported_ds(ds)
    assert verify.keys_matching_ds(zone, [key], [ds]) == [key]


@pytest.mark.parametrize("v", WITH_DS, ids=lambda v: v.id)
def test_ds_matches_only_its_own_key(v: Vector) -> None:
    assert v.ds is not None
    zone, ds = dns.name.from_text(v.zone), _ds(v.ds)
    others = [_key(o.dnskey) for o in VECTORS if o.dnskey != v.dnskey]
    assert verify.keys_matching_ds(zone, others, [ds]) == []
    # the same key under another owner name hashes differently (RFC 4034 §5.1.4)
    assert verify.keys_matching_ds(dns.name.from_text("example.org."), [_key(v.dnskey)], [ds]) == []


def test_sha1_ds_is_not_used_even_when_right() -> None:
    """RFC 8624 §3.3: SHA-1 (digest type 1) is not for validation; a correct SHA-1 DS commits to
    nothing, while the SHA-256 DS of the same key does."""
    zone = dns.name.from_text("example.net.")
    key = _key(VECTORS[2].dnskey)
    sha1 = dns.dnssec.make_ds(zone, key, DSDigest.SHA1, policy=dns.dnssec.allow_all_policy)
    assert not verify.is_supported_ds(sha1)
    assert verify.keys_matching_ds(zone, [key], [sha1]) == []
    assert verify.keys_matching_ds(
        zone, [key], [sha1, dns.dnssec.make_ds(zone, key, DSDigest.SHA256)]
    ) == [key]


@pytest.mark.parametrize(
    ("owner", "dnskey", "tag"),
    [("dskey.example.com.", RFC4034_DNSKEY, 60485), ("example.", RFC5155_DNSKEY, 40430)],
    ids=["rfc4034-alg5", "rfc5155-alg7"],
)
def test_ds_for_unsupported_algorithm_matches_nothing(owner: str, dnskey: str, tag: int) -> None:
    """RFC 8624 §3.1: RSASHA1 (5) and RSASHA1-NSEC3-SHA1 (7) are not validated; their DS records,
    even with a supported digest, point at no usable key."""
    zone, key = dns.name.from_text(owner), _key(dnskey)
    assert dns.dnssec.key_id(key) == tag
    sha256 = dns.dnssec.make_ds(zone, key, DSDigest.SHA256, policy=dns.dnssec.allow_all_policy)
    assert sha256.algorithm == key.algorithm
    assert not verify.is_supported_ds(sha256)
    assert verify.keys_matching_ds(zone, [key], [sha256]) == []


def test_rfc4034_ds_example_is_reproduced_and_unsupported() -> None:
    zone, key, ds = dns.name.from_text("dskey.example.com."), _key(RFC4034_DNSKEY), _ds(RFC4034_DS)
    assert dns.dnssec.make_ds(zone, key, DSDigest.SHA1, policy=dns.dnssec.allow_all_policy) == ds
    assert not verify.is_supported_ds(ds)
    assert verify.keys_matching_ds(zone, [key], [ds]) == []


@pytest.mark.parametrize(
    "v", [v for v in VECTORS if v.id in RFC8080_PRIVATE_KEYS], ids=lambda v: v.id
)
def test_rfc8080_signatures_are_rederived_from_the_private_keys(v: Vector) -> None:
    """EdDSA is deterministic: the RFC's private keys sign the RRset to the errata's signatures,
    octet for octet, so the vector texts above carry no transcription error."""
    rrset, rrsigs, zone, key = _parts(v)
    rrsig = _rrsig(rrsigs)
    seed = base64.b64decode(RFC8080_PRIVATE_KEYS[v.id])
    private: ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey
    if key.algorithm == 15:
        private = ed25519.Ed25519PrivateKey.from_private_bytes(seed)
    else:
        private = ed448.Ed448PrivateKey.from_private_bytes(seed)
    signed = dns.dnssec.sign(
        rrset,
        private,
        zone,
        key,
        inception=rrsig.inception,
        expiration=rrsig.expiration,
        deterministic=True,
    )
    assert signed == rrsig


def test_rfc8080_as_first_published_is_not_accepted() -> None:
    """The RFC's original text signs with labels 3 for the 2-label owner example.com.; RFC 4035
    §5.3.1 forbids a labels field above the owner's label count, so the signature cannot speak
    for the RRset at all."""
    rrset, _, zone, key = _parts(VECTORS[4])
    published = dns.rrset.from_text(
        "example.com.",
        3600,
        "IN",
        "RRSIG",
        "MX 15 3 3600 1440021600 1438207200 3613 example.com."
        " Edk+IB9KNNWg0HAjm7FazXyrd5m3Rk8zNZbvNpAcM+eysqcUOMIjWoevFkj"
        " H5GaMWeG96GUVZu6ECKOQmemHDg==",
    )
    check = verify.verify_rrset(rrset, published, zone, [key], 1439000000.0)
    assert (check.ok, check.ede) == (False, EDECode.RRSIGS_MISSING)


def test_signature_by_another_zone_does_not_count() -> None:
    """RFC 4035 §5.3.1: the signer must be the zone we validate for."""
    rrset, rrsigs, _, key = _parts(VECTORS[0])
    check = verify.verify_rrset(
        rrset, rrsigs, dns.name.from_text("net."), [key], _mid(_rrsig(rrsigs))
    )
    assert (check.ok, check.ede) == (False, EDECode.RRSIGS_MISSING)
