"""The raw-wire fast path agrees with dnspython and refuses what is malformed."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import dns.edns
import dns.flags
import dns.message
import dns.rrset
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stubby_py.core import edns, response, wire


def make_query(name: str = "Www.Example.", rdtype: str = "A", **kw) -> dns.message.QueryMessage:  # type: ignore[no-untyped-def]
    return dns.message.make_query(name, rdtype, **kw)


def test_parse_query_reads_question_and_edns() -> None:
    query = make_query(use_edns=0, payload=4096, want_dnssec=True)
    query.flags |= dns.flags.CD
    parsed = wire.parse_query(query.to_wire())
    assert parsed.id == query.id
    assert parsed.question == query.to_wire()[12:-11]
    assert parsed.qtype == 1 and parsed.qclass == 1
    assert parsed.has_edns and parsed.do and parsed.cd
    assert parsed.udp_size == 4096
    assert parsed.key == b"\x03www\x07example\x00\x00\x01\x00\x01\x03"


def test_key_ignores_case_but_not_type() -> None:
    lower = wire.parse_query(make_query("www.example.", "HTTPS").to_wire())
    upper = wire.parse_query(make_query("WWW.EXAMPLE.", "HTTPS").to_wire())
    other = wire.parse_query(make_query("www.example.", 97).to_wire())
    assert lower.key == upper.key
    assert lower.key != other.key


def test_query_without_edns_has_classic_size() -> None:
    parsed = wire.parse_query(make_query().to_wire())
    assert not parsed.has_edns and parsed.udp_size == 512 and not parsed.do


@pytest.mark.parametrize(
    "data",
    [
        bytes(12),  # no question
        make_query().to_wire()[:-2],  # question cut short
        make_query().to_wire() + b"\x00",  # trailing byte
        make_query(use_edns=0).to_wire()[:-1],  # OPT cut short
    ],
)
def test_malformed_queries_are_refused_by_both_paths(data: bytes) -> None:
    with pytest.raises(wire.WireError):
        wire.parse_query(data)
    with pytest.raises(wire.WireError):
        wire.parse_unusual_query(data)


def test_unusual_query_goes_through_dnspython() -> None:
    query = make_query(use_edns=0)
    query.additional.append(dns.rrset.from_text("x.", 0, "IN", "A", "192.0.2.9"))
    data = query.to_wire()
    with pytest.raises(wire.WireError):
        wire.parse_query(data)
    parsed = wire.parse_unusual_query(data)
    assert parsed.id == query.id and parsed.has_edns
    assert parsed.question == make_query().to_wire()[12:]


def _reply(query: dns.message.Message, *records: str) -> dns.message.Message:
    reply = dns.message.make_response(query)
    for text in records:
        reply.answer.append(dns.rrset.from_text(query.question[0].name, 300, "IN", "A", text))
    return reply


def test_scan_reply_finds_ttls_and_opt() -> None:
    query = make_query(use_edns=0)
    reply = _reply(query, "192.0.2.1", "192.0.2.2")
    reply.authority.append(dns.rrset.from_text("example.", 60, "IN", "SOA", "ns. host. 1 2 3 4 77"))
    data = reply.to_wire()
    layout = wire.scan_reply(data)
    assert layout.min_ttl == 60
    assert layout.soa_ttl == 60 and layout.soa_minimum == 77
    assert layout.opt_span is not None and layout.opt_span[1] == len(data)
    body, offsets = wire.without_opt(data, layout)
    parsed = dns.message.from_wire(body)
    assert parsed.edns == -1 and len(parsed.answer[0]) == 2
    older = dns.message.from_wire(wire.patch_ttls(body, offsets, 100))
    assert older.answer[0].ttl == 200 and older.authority[0].ttl == 0


@given(st.binary(max_size=600))
@settings(max_examples=400, deadline=None)
def test_scan_reply_never_raises_anything_but_wire_error(data: bytes) -> None:
    with contextlib.suppress(wire.WireError):
        wire.scan_reply(data)


@given(st.binary(min_size=12, max_size=300))
@settings(max_examples=400, deadline=None)
def test_query_parsers_only_raise_wire_error(data: bytes) -> None:
    for parse in (wire.parse_query, wire.parse_unusual_query):
        with contextlib.suppress(wire.WireError):
            parse(data)


@given(st.from_regex(r"[a-z0-9]{1,20}(\.[a-z0-9]{1,20}){0,4}\.", fullmatch=True))
@settings(max_examples=100, deadline=None)
def test_fast_path_agrees_with_dnspython(name: str) -> None:
    query = make_query(name, "AAAA", use_edns=0, payload=1400)
    parsed = wire.parse_query(query.to_wire())
    assert parsed.question == dns.message.make_query(name, "AAAA").to_wire()[12:]
    assert parsed.udp_size == 1400


def test_upstream_query_is_padded_and_carries_no_client_options() -> None:
    ecs = dns.edns.ECSOption("192.0.2.0", 24)
    query = make_query(use_edns=0, options=[ecs])
    upstream = edns.upstream_query(
        wire.parse_query(query.to_wire()), pad_block=128, do=False, keepalive=True
    )
    assert len(upstream) % 128 == 0
    parsed = dns.message.from_wire(upstream)
    assert parsed.id == 0
    codes = [option.otype for option in parsed.options]
    assert codes == [dns.edns.OptionType.KEEPALIVE, dns.edns.OptionType.PADDING]


def test_client_reply_echoes_id_and_exact_question_and_truncates() -> None:
    query = make_query("MiXeD.Example.", "A")
    parsed = wire.parse_query(query.to_wire())
    reply = _reply(make_query("mixed.example."), *[f"192.0.2.{i}" for i in range(1, 60)])
    reply.id = 0
    data = response.client_reply(reply.to_wire(), parsed, limit=512)
    assert len(data) <= 512
    client = dns.message.from_wire(data)
    assert client.id == query.id
    assert client.flags & dns.flags.TC
    assert data[12 : 12 + len(parsed.question)] == parsed.question
    whole = dns.message.from_wire(response.client_reply(reply.to_wire(), parsed, limit=None))
    assert len(whole.answer[0]) == 59


def _plain_reply(
    qname: str,
    rcode: int,
    answer: list[str],
    authority: Sequence[str] = (),
    additional: Sequence[str] = (),
) -> bytes:
    query = dns.message.make_query(qname, "A")
    reply = dns.message.make_response(query)
    reply.set_rcode(rcode)
    for section, texts in ((reply.answer, answer), (reply.authority, authority),
                           (reply.additional, additional)):  # fmt: skip
        for text in texts:
            owner, ttl, rdtype, rdata = text.split(maxsplit=3)
            section.append(dns.rrset.from_text(owner, int(ttl), "IN", rdtype, rdata))
    return reply.to_wire()


def test_is_plain_answer_takes_only_the_answer_to_the_question() -> None:
    """The validator's short path for unsigned zones: only the question's own data passes."""
    from stubby_py.core.wire import is_plain_answer

    soa = "insecure. 300 SOA ns. host. 1 2 3 4 5"
    assert is_plain_answer(_plain_reply("x.insecure.", 0, ["x.insecure. 300 A 192.0.2.1"]), 1)
    assert is_plain_answer(_plain_reply("X.Insecure.", 0, ["x.insecure. 300 A 192.0.2.1"]), 1)
    assert is_plain_answer(_plain_reply("x.insecure.", 3, [], [soa]), 1)
    assert is_plain_answer(_plain_reply("x.insecure.", 0, [], [soa]), 1)  # NODATA
    # data of another name, even of the asked type (a signed zone's name, say)
    assert not is_plain_answer(
        _plain_reply("x.insecure.", 0, ["www.secure. 300 A 203.0.113.66"]), 1
    )
    # NXDOMAIN that carries data; a CNAME; NS or glue along
    assert not is_plain_answer(_plain_reply("x.insecure.", 3, ["x.insecure. 300 A 192.0.2.1"]), 1)
    assert not is_plain_answer(
        _plain_reply("x.insecure.", 0, ["x.insecure. 300 CNAME y.secure."]), 1
    )
    assert not is_plain_answer(
        _plain_reply(
            "x.insecure.", 0, ["x.insecure. 300 A 192.0.2.1"], ["secure. 300 NS ns.evil."]
        ),
        1,
    )
    assert not is_plain_answer(
        _plain_reply("x.insecure.", 0, ["x.insecure. 300 A 192.0.2.1"], [],
               ["ns.evil. 300 A 203.0.113.7"]), 1,
    )  # fmt: skip
