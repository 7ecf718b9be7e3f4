"""The DNSSEC primitives the validator uses, on `cryptography` and hashlib directly: a DNSKEY's
public key and RRSIG verification for the algorithms we validate (RFC 5702 RSA/SHA-2, RFC 6605
ECDSA, RFC 8080 EdDSA), DS digests (RFC 4034 §5.1.4, RFC 4509, RFC 6605), NSEC3 hashes (RFC 5155
§5) and the data an RRSIG signs (RFC 4034 §3.1.8.1) for a dnspython RRset.

dnspython's `dns.dnssec` has all of these, but importing it loads every algorithm dnspython
knows (DSA and ML-DSA among them) and with them cryptography's serialization, cipher and SSH
modules: 1.4 MiB resident in a daemon that needs none of them, counted against the memory target
(README "Memory"). tests/test_dnssec_primitives.py holds every function here to dnspython's.
"""

from __future__ import annotations

import base64
import hashlib
import struct
from typing import Any

import dns.name
import dns.rrset
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from dns.rdtypes.ANY.DNSKEY import DNSKEY
from dns.rdtypes.ANY.RRSIG import RRSIG

from stubby_py.dnssec import records

RSASHA256, RSASHA512, ECDSAP256SHA256, ECDSAP384SHA384, ED25519, ED448 = 8, 10, 13, 14, 15, 16
#: the algorithms a public key can be made for: RFC 8624 §3.1's MUST and RECOMMENDED to validate
ALGORITHMS = frozenset({RSASHA256, RSASHA512, ECDSAP256SHA256, ECDSAP384SHA384, ED25519, ED448})
_RSA_HASHES: dict[int, type[hashes.HashAlgorithm]] = {
    RSASHA256: hashes.SHA256,
    RSASHA512: hashes.SHA512,
}
#: ECDSA: the curve, the hash, and the octets of each of r and s (and of x and y in the key)
_ECDSA: dict[int, tuple[ec.EllipticCurve, type[hashes.HashAlgorithm], int]] = {
    ECDSAP256SHA256: (ec.SECP256R1(), hashes.SHA256, 32),
    ECDSAP384SHA384: (ec.SECP384R1(), hashes.SHA384, 48),
}
#: DS digest types (RFC 4034 §5.1.4 SHA-1, RFC 4509 SHA-256, RFC 6605 SHA-384): RFC 5011 may
#: need SHA-1 to recognise an old DS; validation uses only what verify.SUPPORTED_DIGESTS allows
_DS_DIGESTS = {1: hashlib.sha1, 2: hashlib.sha256, 4: hashlib.sha384}
#: RFC 4034 §3.1.8.1: the RRSIG RDATA fields before the signer's name
_RRSIG_FIXED = struct.Struct("!HBBIIIH")


class PublicKey:
    """A DNSKEY's public key, ready to verify signatures of its algorithm."""

    __slots__ = ("_key", "_octets", "_padding", "_scheme")

    def __init__(self, algorithm: int, key: bytes) -> None:
        """ValueError unless `key` is a well-formed public key of `algorithm` (one of
        ALGORITHMS), as RFC 3110 §2, RFC 6605 §4 and RFC 8080 §3 lay it out."""
        #: ECDSA: the octets of each of r and s (0 for the others)
        self._octets = 0
        self._padding: padding.PKCS1v15 | None = None
        self._scheme: Any = None
        if algorithm in _RSA_HASHES:
            self._key: Any = _rsa_key(key)
            self._padding = padding.PKCS1v15()
            self._scheme = _RSA_HASHES[algorithm]()
        elif algorithm in _ECDSA:
            curve, hash_cls, octets = _ECDSA[algorithm]
            if len(key) != 2 * octets:
                raise ValueError(f"an ECDSA key of {len(key)} octets, not {2 * octets}")
            self._key = ec.EllipticCurvePublicKey.from_encoded_point(curve, b"\x04" + key)
            self._octets = octets
            self._scheme = ec.ECDSA(hash_cls())
        elif algorithm == ED25519:
            self._key = ed25519.Ed25519PublicKey.from_public_bytes(key)
        elif algorithm == ED448:
            self._key = ed448.Ed448PublicKey.from_public_bytes(key)
        else:
            raise ValueError(f"algorithm {algorithm} is not one we validate")

    def verifies(self, signature: bytes, data: bytes) -> bool:
        """Whether `signature` (RRSIG wire form) was made over `data` with this key's private
        half; a malformed signature does not verify."""
        try:
            if self._padding is not None:
                self._key.verify(signature, data, self._padding, self._scheme)
            elif self._octets:
                octets = self._octets
                if len(signature) != 2 * octets:
                    return False
                r = int.from_bytes(signature[:octets], "big")
                s = int.from_bytes(signature[octets:], "big")
                self._key.verify(encode_dss_signature(r, s), data, self._scheme)
            else:
                self._key.verify(signature, data)
        except Exception:  # InvalidSignature, or whatever a malformed signature raises
            return False
        return True


def _rsa_key(key: bytes) -> rsa.RSAPublicKey:
    """RFC 3110 §2: exponent length (one octet, or zero and two), exponent, modulus."""
    if not key:
        raise ValueError("an empty RSA key")
    length, start = key[0], 1
    if length == 0:
        if len(key) < 3:
            raise ValueError("a truncated RSA exponent length")
        length, start = (key[1] << 8) | key[2], 3
    if length == 0 or len(key) <= start + length:
        raise ValueError("a truncated RSA key")
    exponent = int.from_bytes(key[start : start + length], "big")
    modulus = int.from_bytes(key[start + length :], "big")
    return rsa.RSAPublicNumbers(exponent, modulus).public_key()


def ds_digest(owner: dns.name.Name, key: DNSKEY, digest_type: int) -> bytes | None:
    """The digest a DS of `digest_type` for `key` at `owner` carries; None for a digest type
    we cannot compute."""
    make = _DS_DIGESTS.get(digest_type)
    if make is None:
        return None
    return make(owner.to_digestable() + key.to_digestable()).digest()


def nsec3_hash(name: dns.name.Name, salt: bytes, iterations: int) -> str:
    """RFC 5155 §5: the SHA-1 NSEC3 hash of `name`, in base32hex as an NSEC3 owner's first
    label spells it (upper case)."""
    salted = salt or b""
    digest = hashlib.sha1(name.to_digestable() + salted).digest()
    for _ in range(iterations):
        digest = hashlib.sha1(digest + salted).digest()
    return base64.b32hexencode(digest).decode("ascii")


def signed_data(rrset: dns.rrset.RRset, rrsig: RRSIG) -> bytes:
    """The data `rrsig` signs over `rrset` (RFC 4034 §3.1.8.1), the owner rebuilt as the
    wildcard it was expanded from when the signature has fewer labels; records.WireError when
    the labels field cannot belong to the owner."""
    head = _RRSIG_FIXED.pack(
        rrsig.type_covered,
        rrsig.algorithm,
        rrsig.labels,
        rrsig.original_ttl,
        rrsig.expiration,
        rrsig.inception,
        rrsig.key_tag,
    )
    return records.signed_data_of(
        head + rrsig.signer.to_digestable(),
        rrsig.labels,
        rrsig.original_ttl,
        rrset.name.to_digestable(),
        rrset.rdtype,
        rrset.rdclass,
        [rdata.to_digestable() for rdata in rrset],
    )
