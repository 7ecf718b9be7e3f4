"""The DNSSEC primitives (dnssec/primitives.py) agree with dnspython's dns.dnssec, which the
validator used before: signatures made by dnspython verify with our public keys (and altered
data, signatures or keys do not), DS digests, NSEC3 hashes and the signed data of random RRsets
are dnspython's to the octet, and malformed keys are unusable rather than fatal."""

from __future__ import annotations

import random
from typing import Any

import dns.dnssec
import dns.exception
import dns.message
import dns.name
import dns.node
import dns.rdataclass
import dns.rdataset
import dns.rdatatype
import dns.rrset
import pytest
from dns.dnssecalgs import get_algorithm_cls
from dns.dnssectypes import DSDigest
from dns.rdtypes.ANY.DNSKEY import DNSKEY
from dns.rdtypes.ANY.RRSIG import RRSIG
from hypothesis import given, settings
from hypothesis import strategies as st

from stubby_py.core.wire import WireError
from stubby_py.dnssec import primitives, verify
from tests.test_dnssec_records import _random_name, _signed_reply, signature_pairs

ZONE = dns.name.from_text("example.")
#: RSA modulus sizes: the common one, and the smallest still seen in signed zones
_KEY_SIZES = {primitives.RSASHA256: 2048, primitives.RSASHA512: 1024}


def _private(algorithm: int) -> Any:
    cls: Any = get_algorithm_cls(algorithm)  # a private key class: generate() is on each
    if algorithm in _KEY_SIZES:
        return cls.generate(key_size=_KEY_SIZES[algorithm])
    return cls.generate()


_PRIVATE = {algorithm: _private(algorithm) for algorithm in sorted(primitives.ALGORITHMS)}


def _dnskey(algorithm: int) -> DNSKEY:
    key: DNSKEY = _PRIVATE[algorithm].public_key().to_dnskey()
    return key


def _sign(rrset: dns.rrset.RRset, algorithm: int) -> RRSIG:
    return dns.dnssec.sign(
        rrset,
        _PRIVATE[algorithm],
        ZONE,
        _dnskey(algorithm),
        inception=1_700_000_000,
        expiration=2_000_000_000,
    )


def test_the_algorithms_are_those_the_validator_supports() -> None:
    assert primitives.ALGORITHMS == verify.SUPPORTED_ALGORITHMS


@pytest.mark.parametrize("algorithm", sorted(primitives.ALGORITHMS))
def test_dnspython_signatures_verify_and_altered_ones_do_not(algorithm: int) -> None:
    rnd = random.Random(algorithm)
    key = _dnskey(algorithm)
    public = primitives.PublicKey(key.algorithm, key.key)
    for n in range(5):
        rrset = dns.rrset.from_text(
            f"host{n}.example.", 300, "IN", "A", *[f"192.0.2.{rnd.randint(1, 254)}"] * 2
        )
        rrsig = _sign(rrset, algorithm)
        data = primitives.signed_data(rrset, rrsig)
        assert data == dns.dnssec._make_rrsig_signature_data(rrset, rrsig)
        keys: dict[dns.name.Name, dns.node.Node | dns.rdataset.Rdataset] = {
            ZONE: dns.rdataset.from_rdata(300, key)
        }
        dns.dnssec.validate_rrsig(rrset, rrsig, keys, now=1_800_000_000)  # theirs agree
        assert public.verifies(rrsig.signature, data)
        flipped = bytearray(data)
        flipped[rnd.randrange(len(flipped))] ^= 1 << rnd.randrange(8)
        assert not public.verifies(rrsig.signature, bytes(flipped))
        signature = bytearray(rrsig.signature)
        signature[rnd.randrange(len(signature))] ^= 1 << rnd.randrange(8)
        assert not public.verifies(bytes(signature), data)
        assert not public.verifies(rrsig.signature[:-1], data)
        assert not public.verifies(rrsig.signature + b"\0", data)
        assert not public.verifies(b"", data)


@pytest.mark.parametrize("algorithm", sorted(primitives.ALGORITHMS))
def test_a_signature_does_not_verify_with_another_key_or_algorithm(algorithm: int) -> None:
    rrset = dns.rrset.from_text("www.example.", 300, "IN", "AAAA", "2001:db8::1")
    rrsig = _sign(rrset, algorithm)
    data = primitives.signed_data(rrset, rrsig)
    for other in sorted(primitives.ALGORITHMS - {algorithm}):
        key = _dnskey(other)
        assert not primitives.PublicKey(other, key.key).verifies(rrsig.signature, data)
    key = _private(algorithm).public_key().to_dnskey()
    assert not primitives.PublicKey(algorithm, key.key).verifies(rrsig.signature, data)


@pytest.mark.parametrize(
    "algorithm, key",
    [
        (primitives.RSASHA256, b""),
        (primitives.RSASHA256, b"\x03\x01\x00"),  # exponent, no modulus
        (primitives.RSASHA256, b"\x00\x00"),  # a two-octet length cut short
        (primitives.RSASHA256, b"\x00\x00\x00\x01"),  # a zero-length exponent
        (primitives.RSASHA256, b"\x09\x01\x00\x01"),  # exponent longer than the key
        (primitives.ECDSAP256SHA256, b"\x01" * 63),
        (primitives.ECDSAP256SHA256, b"\x01" * 65),  # dnspython would use the first 64
        (primitives.ECDSAP256SHA256, b"\x00" * 64),  # not a point on the curve
        (primitives.ECDSAP384SHA384, b"\x01" * 64),
        (primitives.ED25519, b"\x01" * 31),
        (primitives.ED448, b"\x01" * 56),
        (primitives.RSASHA256 - 3, b"\x03\x01\x00\x01" + b"\xff" * 128),  # RSASHA1: not ours
        (3, b"\x01" * 64),  # DSA
        (253, b"\x01" * 64),  # PRIVATEDNS
    ],
)
def test_a_malformed_or_foreign_key_is_refused_not_fatal(algorithm: int, key: bytes) -> None:
    with pytest.raises(ValueError):
        primitives.PublicKey(algorithm, key)


@pytest.mark.parametrize("digest_type", [1, 2, 4])
@pytest.mark.parametrize("algorithm", sorted(primitives.ALGORITHMS))
def test_ds_digests_are_dnspythons(algorithm: int, digest_type: int) -> None:
    key = _dnskey(algorithm)
    for owner in ("example.", "ExAmPle.", "a.B.c.example.", "."):
        zone = dns.name.from_text(owner)
        digest = DSDigest(digest_type)
        made = dns.dnssec.make_ds(zone, key, digest, policy=dns.dnssec.allow_all_policy)
        assert primitives.ds_digest(zone, key, digest_type) == made.digest


@pytest.mark.parametrize("digest_type", [0, 3, 5, 255])
def test_a_ds_digest_type_we_cannot_compute_gives_none(digest_type: int) -> None:
    assert primitives.ds_digest(ZONE, _dnskey(primitives.ED25519), digest_type) is None


@settings(max_examples=200, deadline=None)
@given(
    st.integers(min_value=0, max_value=2**32),
    st.binary(max_size=16),
    st.integers(min_value=0, max_value=30),
)
def test_nsec3_hashes_are_dnspythons(seed: int, salt: bytes, iterations: int) -> None:
    name = dns.name.from_text(_random_name(random.Random(seed)))
    ours = primitives.nsec3_hash(name, salt, iterations)
    assert ours == dns.dnssec.nsec3_hash(name, salt, iterations, 1)
    assert ours == primitives.nsec3_hash(name.canonicalize(), salt, iterations)


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=0, max_value=2**32))
def test_signed_data_of_random_rrsets_is_dnspythons(seed: int) -> None:
    """Random RRsets (names in RDATA, mixed case, several records, wildcard expansions) and
    RRSIGs over them: the same octets as dnspython's, or both refuse the labels field."""
    for covered, rrsig in signature_pairs(_signed_reply(seed)):
        try:
            theirs = dns.dnssec._make_rrsig_signature_data(covered, rrsig)
        except dns.exception.ValidationFailure:
            with pytest.raises(WireError):
                primitives.signed_data(covered, rrsig)
            continue
        assert primitives.signed_data(covered, rrsig) == theirs


@pytest.mark.parametrize(
    "owner, labels, refused",
    [
        ("*.example.", 1, False),  # a wildcard RRset as signed
        ("*.example.", 2, True),  # a wildcard owner must have one label fewer
        ("a.b.example.", 3, False),
        ("a.b.example.", 1, False),  # expanded from *.example.
        ("a.b.example.", 4, True),  # more labels than the owner
    ],
)
def test_signed_data_labels_field(owner: str, labels: int, refused: bool) -> None:
    rrset = dns.rrset.from_text(owner, 300, "IN", "TXT", '"x"')
    text = f"TXT 13 {labels} 300 20300101000000 20200101000000 1 example. AAAA"
    rrsig = dns.rrset.from_text(owner, 300, "IN", "RRSIG", text)[0]
    if refused:
        with pytest.raises(dns.exception.ValidationFailure):
            dns.dnssec._make_rrsig_signature_data(rrset, rrsig)
        with pytest.raises(WireError):
            primitives.signed_data(rrset, rrsig)
    else:
        theirs = dns.dnssec._make_rrsig_signature_data(rrset, rrsig)
        assert primitives.signed_data(rrset, rrsig) == theirs
