"""Trust anchors: the built-in root KSKs, anchor files in zone-file form, closest()."""

from __future__ import annotations

import types
from pathlib import Path

import dns.dnssec
import dns.name
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import pytest
from dns.dnssectypes import DSDigest
from dns.rdtypes.ANY.DNSKEY import DNSKEY

from stubby_py.core.errors import ConfigError
from stubby_py.dnssec import anchors, verify

ROOT = dns.name.root
#: IANA root-anchors.xml <PublicKey> of KSK-2017 (20326) and KSK-2024 (38696), the same keys
#: as Debian dns-root-data's root.key and the root zone's DNSKEY RRset (flags 257, algorithm 8)
KSK_2017 = (
    "257 3 8 AwEAAaz/tAm8yTn4Mfeh5eyI96WSVexTBAvkMgJzkKTOiW1vkIbzxeF3+/4RgWOq7HrxRixHlFlExOLAJr5e"
    "mLvN7SWXgnLh4+B5xQlNVz8Og8kvArMtNROxVQuCaSnIDdD5LKyWbRd2n9WGe2R8PzgCmr3EgVLrjyBxWezF0jLH"
    "wVN8efS3rCj/EWgvIWgb9tarpVUDK/b58Da+sqqls3eNbuv7pr+eoZG+SrDK6nWeL3c6H5Apxz7LjVc1uTIdsIXx"
    "uOLYA4/ilBmSVIzuDWfdRUfhHdY6+cn8HFRm+2hM8AnXGXws9555KrUB5qihylGa8subX2Nn6UwNR1AkUTV74bU="
)
KSK_2024 = (
    "257 3 8 AwEAAa96jeuknZlaeSrvyAJj6ZHv28hhOKkx3rLGXVaC6rXTsDc449/cidltpkyGwCJNnOAlFNKF2jBosZBU"
    "5eeHspaQWOmOElZsjICMQMC3aeHbGiShvZsx4wMYSjH8e7Vrhbu6irwCzVBApESjbUdpWWmEnhathWu1jo+siFUi"
    "RAAxm9qyJNg/wOZqqzL/dL/q8PkcRU5oUKEpUge71M3ej2/7CPqpdVwuMoTvoB+ZOT4YeGyxMvHmbrxlFzGOHOij"
    "tzN+u1TQNatX2XBuzZNQ1K+s2CXkPIZo7s6JgZyvaBevYtxPvYLw4z9mR7K2vaF18UYH9Z9GNUUeayffKC73PYc="
)
#: the digests exactly as IANA publishes them
IANA_DIGESTS = {
    20326: "E06D44B80B8F1D39A95C0B0D7C65D08458E880409BBC683457104237C7F8EC8D",
    38696: "683D2D0ACB8C9B712A1948B27F741219298D0A450D612C483AF444A4C0FB2B16",
}
#: RFC 6605 §6.1 (example.net., tag 55648) and RFC 8080 §6.1 (example.com., tag 3613)
P256_KEY = (
    "257 3 13 GojIhhXUN/u4v54ZQqGSnyhWJwaubCvTmeexv7bR6edb"
    "krSqQpF64cYbcB7wNcP+e+MAnLr+Wi9xMWyQLc8NAA=="
)
ED25519_KEY = "257 3 15 l02Woi0iS8Aa25FQkUd9RMzZHJpBoRQwAQEX1SxZJA4="


def name(text: str) -> dns.name.Name:
    return dns.name.from_text(text)


def key(text: str) -> DNSKEY:
    rdata = dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.DNSKEY, text)
    assert isinstance(rdata, DNSKEY)
    return rdata


def write(tmp_path: Path, text: str, filename: str = "anchors.txt") -> Path:
    path = tmp_path / filename
    path.write_text(text, encoding="utf-8")
    return path


def load_error(path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        anchors.load(path)
    return str(info.value)


# -- built in ------------------------------------------------------------------------------


def test_builtin_is_exactly_the_two_root_ksk_ds() -> None:
    builtin = anchors.builtin()
    assert builtin.zones == (ROOT,)
    root = builtin.get(ROOT)
    assert root is not None and root.dnskeys == ()
    assert [(ds.key_tag, ds.algorithm, ds.digest_type) for ds in root.ds] == [
        (20326, 8, 2),
        (38696, 8, 2),
    ]
    assert {ds.key_tag: ds.digest.hex().upper() for ds in root.ds} == IANA_DIGESTS
    assert all(verify.is_supported_ds(ds) for ds in root.ds)


@pytest.mark.parametrize(("tag", "text"), [(20326, KSK_2017), (38696, KSK_2024)])
def test_builtin_ds_commit_to_the_published_root_ksks(tag: int, text: str) -> None:
    ksk = key(text)
    assert dns.dnssec.key_id(ksk) == tag
    made = dns.dnssec.make_ds(ROOT, ksk, DSDigest.SHA256)
    root = anchors.builtin().get(ROOT)
    assert root is not None
    assert made in root.ds
    assert verify.keys_matching_ds(ROOT, [ksk], root.ds) == [ksk]


def test_builtin_matches_debians_dns_root_data() -> None:
    """A second copy of IANA's file, where the system has one (Debian's dns-root-data)."""
    root_ds = Path("/usr/share/dns/root.ds")
    if not root_ds.is_file():
        pytest.skip("dns-root-data is not installed")
    root = anchors.builtin().get(ROOT)
    assert root is not None
    assert set(anchors.load(root_ds).anchors[ROOT].ds) == set(root.ds)


def test_builtin_compares_and_hashes_by_value() -> None:
    assert anchors.builtin() == anchors.builtin()
    assert hash(anchors.builtin()) == hash(anchors.builtin())
    assert isinstance(anchors.builtin().anchors, types.MappingProxyType)
    with pytest.raises(TypeError):
        anchors.builtin().anchors[name("example.")] = anchors.AnchorSet()  # type: ignore[index]


# -- load ----------------------------------------------------------------------------------


def test_load_ds_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        f". 3600 IN DS 20326 8 2 {IANA_DIGESTS[20326]}\n"
        f".\t172800\tIN\tDS\t38696 8 2 {IANA_DIGESTS[38696].lower()}\n",
    )
    loaded = anchors.load(path)
    assert loaded == anchors.builtin()


def test_load_accepts_a_str_path(tmp_path: Path) -> None:
    path = write(tmp_path, f". IN DS 20326 8 2 {IANA_DIGESTS[20326]}\n")
    assert anchors.load(str(path)).zones == (ROOT,)


def test_load_dnskey_file_without_ttl_or_class(tmp_path: Path) -> None:
    path = write(tmp_path, f". IN DNSKEY {KSK_2024}\nexample.net. DNSKEY {P256_KEY}\n")
    loaded = anchors.load(path)
    assert loaded.zones == (ROOT, name("example.net."))
    assert loaded.anchors[ROOT] == anchors.AnchorSet(dnskeys=(key(KSK_2024),))
    assert loaded.anchors[name("example.net.")].dnskeys == (key(P256_KEY),)
    assert loaded.anchors[name("example.net.")].ds == ()


def test_load_zone_file_features(tmp_path: Path) -> None:
    """Comments, blank lines, $TTL, $ORIGIN, relative and @ owners, parentheses, and DS and
    DNSKEY together for one zone."""
    p256 = key(P256_KEY)
    ds = dns.dnssec.make_ds(name("example.net."), p256, DSDigest.SHA256)
    path = write(
        tmp_path,
        "; trust anchors for the lab\n"
        "\n"
        "$TTL 1d\n"
        f". IN DS 20326 8 2 {IANA_DIGESTS[20326]} ; KSK-2017\n"
        "$ORIGIN net.\n"
        "example IN DNSKEY ( 257 3 13\n"
        "    GojIhhXUN/u4v54ZQqGSnyhWJwaubCvTmeexv7bR6edb\n"
        "    krSqQpF64cYbcB7wNcP+e+MAnLr+Wi9xMWyQLc8NAA== ) ; tag 55648\n"
        f"example.net. IN DS {ds.to_text()}\n"
        "$ORIGIN example.com.\n"
        f"@ 60 IN DNSKEY {ED25519_KEY}\n"
        "   ; a comment-only line between records\n",
    )
    loaded = anchors.load(path)
    assert loaded.zones == (ROOT, name("example.com."), name("example.net."))
    assert loaded.anchors[name("example.net.")] == anchors.AnchorSet((ds,), (p256,))
    assert loaded.anchors[name("example.com.")].dnskeys == (key(ED25519_KEY),)
    assert all(zone_anchors.is_usable for zone_anchors in loaded.anchors.values())


def test_load_names_are_case_insensitive_and_merge(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        f"Example.NET. IN DNSKEY {P256_KEY}\nexample.net. IN DNSKEY {ED25519_KEY}\n",
    )
    loaded = anchors.load(path)
    assert loaded.zones == (name("example.net."),)
    assert set(loaded.anchors[name("EXAMPLE.net.")].dnskeys) == {key(P256_KEY), key(ED25519_KEY)}


def test_unsupported_anchor_for_another_zone_is_kept_but_not_usable(tmp_path: Path) -> None:
    """Only the root must have a usable anchor; another zone anchored only by an unsupported
    algorithm is insecure (RFC 4035 §5.2), which is for the validator to decide."""
    path = write(
        tmp_path,
        f". IN DS 20326 8 2 {IANA_DIGESTS[20326]}\n"
        "old.example. IN DS 60485 5 1 2BB183AF5F22588179A53B0A98631FAD1A292118\n",
    )
    loaded = anchors.load(path)
    old = loaded.anchors[name("old.example.")]
    assert not old.is_usable
    assert loaded.anchors[ROOT].is_usable


# -- load: errors --------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "anchors.txt"
    assert load_error(path) == f"{path}: cannot read (No such file or directory)"


def test_directory_is_not_a_file(tmp_path: Path) -> None:
    assert load_error(tmp_path) == f"{tmp_path}: cannot read (Is a directory)"


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "anchors.txt"
    path.write_bytes(b"\xff\xfe. IN DS 1 8 2 00\n")
    assert load_error(path).startswith(f"{path}: cannot read (not UTF-8 text")


@pytest.mark.parametrize("text", ["", "\n\n", "; only a comment\n$TTL 3600\n"])
def test_no_anchors(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, text)
    assert load_error(path) == f"{path}: no trust anchors in file (expected DS or DNSKEY records)"


def test_other_record_types_name_their_line(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        f"; header\n. IN DS 20326 8 2 {IANA_DIGESTS[20326]}\nwww.example. IN A 192.0.2.1\n",
    )
    assert load_error(path) == f"{path}:3: expected DS or DNSKEY records, got A"


def test_other_record_type_after_a_multiline_record(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "example.net. IN DNSKEY ( 257 3 13\n"
        "  GojIhhXUN/u4v54ZQqGSnyhWJwaubCvTmeexv7bR6edb\n"
        "  krSqQpF64cYbcB7wNcP+e+MAnLr+Wi9xMWyQLc8NAA== )\n"
        "example.net. IN RRSIG DNSKEY 13 2 3600 20300101000000 20000101000000 55648"
        " example.net. AAAA",
    )
    assert load_error(path) == f"{path}:4: expected DS or DNSKEY records, got RRSIG"


def test_dnskey_without_zone_flag(tmp_path: Path) -> None:
    path = write(tmp_path, f"\nexample.com. IN DNSKEY {ED25519_KEY.replace('257', '1', 1)}\n")
    assert load_error(path) == (
        f"{path}:2: DNSKEY anchor for example.com. (flags 1, algorithm 15) lacks the ZONE flag"
        " (256): only a zone key can be an anchor"
    )


def test_dnskey_with_wrong_protocol(tmp_path: Path) -> None:
    path = write(tmp_path, f"example.com. IN DNSKEY {ED25519_KEY.replace(' 3 ', ' 2 ', 1)}\n")
    assert load_error(path) == (
        f"{path}:1: DNSKEY anchor for example.com. (flags 257, algorithm 15) has protocol 2,"
        " expected 3"
    )


def test_revoked_dnskey(tmp_path: Path) -> None:
    path = write(tmp_path, f"example.com. IN DNSKEY {ED25519_KEY.replace('257', '385', 1)}\n")
    assert load_error(path) == (
        f"{path}:1: DNSKEY anchor for example.com. (flags 385, algorithm 15) has the REVOKE"
        " flag (128): a revoked key is no anchor"
    )


def test_ds_digest_of_the_wrong_length_names_its_own_line(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        f". IN DS 20326 8 2 {IANA_DIGESTS[20326]}\n. IN DS 38696 8 2 {IANA_DIGESTS[38696][:-2]}\n",
    )
    assert load_error(path) == f"{path}:2: digest length inconsistent with digest type"


@pytest.mark.parametrize(
    ("text", "line", "expected"),
    [
        ("; x\n. IN NOTATYPE 1 2 3\n", 2, "unknown rdatatype 'NOTATYPE'"),
        (". IN DS 20326 8 two 00\n", 1, "expecting an integer"),
        (". CH DS 20326 8 2 00\n", 1, "RR class is not zone's class"),
        ("\n\n$INCLUDE /etc/passwd\n", 3, "zone file directive '$INCLUDE' is not allowed"),
        ("$GENERATE 1-2 a$ DS 1 8 2 00\n", 1, "zone file directive '$GENERATE' is not allowed"),
    ],
    ids=["unknown-type", "bad-digest-type", "class", "include", "generate"],
)
def test_syntax_errors_name_file_and_line(
    tmp_path: Path, text: str, line: int, expected: str
) -> None:
    path = write(tmp_path, text)
    message = load_error(path)
    assert message.startswith(f"{path}:{line}: ")
    assert expected in message


@pytest.mark.parametrize(
    "text",
    [
        ". IN DS 60485 5 1 2BB183AF5F22588179A53B0A98631FAD1A292118\n",
        ". IN DS 20326 8 1 0000000000000000000000000000000000000000\n",
        f". IN DNSKEY {P256_KEY.replace(' 13 ', ' 7 ', 1)}\n",
    ],
    ids=["alg5-sha1", "sha1-digest", "dnskey-alg7"],
)
def test_root_with_only_unsupported_anchors(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, text)
    message = load_error(path)
    assert message.startswith(f"{path}: no usable trust anchor for the root: ")
    assert "supported: algorithms 8, 10, 13, 14, 15, 16, digest types 2, 4" in message
    assert message.endswith("the validator would treat every answer as insecure")


def test_root_with_one_usable_anchor_among_unsupported_ones(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        ". IN DS 19036 8 1 B256BD09DC8DD59F0E0F0D8541B8328DD986DF6E\n"
        f". IN DS 20326 8 2 {IANA_DIGESTS[20326]}\n",
    )
    root = anchors.load(path).anchors[ROOT]
    assert len(root.ds) == 2 and root.is_usable


# -- closest -------------------------------------------------------------------------------


@pytest.fixture
def nested() -> anchors.TrustAnchors:
    ds = anchors.builtin().anchors[ROOT]
    return anchors.TrustAnchors(
        {
            ROOT: ds,
            name("example."): anchors.AnchorSet(dnskeys=(key(P256_KEY),)),
            name("deep.sub.example."): anchors.AnchorSet(dnskeys=(key(ED25519_KEY),)),
        }
    )


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        (".", "."),
        ("org.", "."),
        ("www.example.org.", "."),
        ("example.", "example."),
        ("WWW.Example.", "example."),
        ("sub.example.", "example."),
        ("deep.sub.example.", "deep.sub.example."),
        ("a.b.deep.sub.example.", "deep.sub.example."),
        ("notdeep.sub.example.", "example."),
        ("xexample.", "."),
    ],
)
def test_closest_is_the_deepest_anchor_at_or_above(
    nested: anchors.TrustAnchors, query: str, expected: str
) -> None:
    assert nested.closest(name(query)) == name(expected)


def test_closest_without_a_root_anchor() -> None:
    only = anchors.TrustAnchors({name("example."): anchors.AnchorSet(dnskeys=(key(P256_KEY),))})
    assert only.closest(name("www.example.")) == name("example.")
    assert only.closest(name("example.org.")) is None
    assert only.closest(ROOT) is None
    assert anchors.TrustAnchors().closest(name("example.")) is None


def test_closest_of_a_long_name() -> None:
    long_name = dns.name.Name([b"a"] * 126 + [b""])
    assert anchors.builtin().closest(long_name) == ROOT


def test_relative_names_are_refused(nested: anchors.TrustAnchors) -> None:
    with pytest.raises(ValueError, match="absolute"):
        nested.closest(dns.name.from_text("example", None))
    with pytest.raises(ValueError, match="absolute"):
        anchors.TrustAnchors({dns.name.from_text("example", None): anchors.AnchorSet()})


def test_updated_replaces_zones_and_keeps_the_rest(nested: anchors.TrustAnchors) -> None:
    replacement = anchors.AnchorSet(dnskeys=(key(KSK_2024),))
    merged = nested.updated(anchors.TrustAnchors({ROOT: replacement}))
    assert merged.anchors[ROOT] == replacement
    assert merged.zones == nested.zones
    assert nested.anchors[ROOT] == anchors.builtin().anchors[ROOT]
