"""The test servers' one answer source (tests/servers/answers.py): each misbehaviour's reply."""

from __future__ import annotations

import dns.flags
import dns.message
import dns.rcode
import pytest

from tests.servers import Misbehaviour, ServerState, outcome
from tests.servers.answers import http_response
from tests.servers.misbehaviour import SILENT


def query(name: str = "www.example.", rdtype: str = "A") -> bytes:
    message = dns.message.make_query(name, rdtype)
    message.id = 4242
    return message.to_wire()


def reply_of(state: ServerState, data: bytes, *, udp: bool = False) -> dns.message.Message:
    result = outcome(state, data, udp=udp)
    assert result.reply is not None
    return dns.message.from_wire(result.reply)


def test_a_correct_answer_and_the_query_recorded() -> None:
    state = ServerState()
    data = query()
    reply = reply_of(state, data)
    assert state.queries == [data]
    assert reply.id == 4242 and reply.rcode() == dns.rcode.NOERROR
    assert reply.answer[0][0].address == "192.0.2.1"
    assert reply.flags & dns.flags.RA


def test_records_nxdomain_and_address_from_the_state() -> None:
    state = ServerState(address="192.0.2.9", nxdomain={"gone.example."})
    state.records["txt.example."] = [("TXT", '"hello"')]
    assert reply_of(state, query()).answer[0][0].address == "192.0.2.9"
    assert reply_of(state, query("gone.example.")).rcode() == dns.rcode.NXDOMAIN
    assert reply_of(state, query("txt.example.", "TXT")).answer[0][0].strings == (b"hello",)
    assert not reply_of(state, query("txt.example.", "A")).answer


@pytest.mark.parametrize("misbehaviour", sorted(SILENT))
def test_silent_misbehaviours_send_nothing(misbehaviour: Misbehaviour) -> None:
    result = outcome(ServerState(misbehaviour=misbehaviour), query())
    assert result.misbehaviour is misbehaviour and result.reply is None


def test_wrong_id_wrong_question_servfail() -> None:
    assert reply_of(ServerState(misbehaviour=Misbehaviour.WRONG_ID), query()).id == 4243
    other = reply_of(ServerState(misbehaviour=Misbehaviour.WRONG_QUESTION), query())
    assert other.id == 4242 and other.question[0].name.to_text() == "wrong.example."
    failed = reply_of(ServerState(misbehaviour=Misbehaviour.SERVFAIL), query())
    assert failed.rcode() == dns.rcode.SERVFAIL and not failed.answer


def test_garbage_keeps_the_id_and_cut_messages_do_not_parse() -> None:
    data = query()
    garbage = outcome(ServerState(misbehaviour=Misbehaviour.GARBAGE), data).reply
    assert garbage is not None and garbage[:2] == data[:2] and len(garbage) == 42
    short = outcome(ServerState(misbehaviour=Misbehaviour.SHORT_DNS), data).reply
    whole = outcome(ServerState(), data).reply
    assert short is not None and whole is not None and short == whole[: len(whole) // 2]
    oversized = outcome(ServerState(misbehaviour=Misbehaviour.OVERSIZED), data).reply
    assert oversized is not None and len(oversized) > 65535


def test_udp_truncates_past_the_client_size() -> None:
    state = ServerState()
    state.records["big.example."] = [("TXT", f'"{n}' + "y" * 200 + '"') for n in range(6)]
    reply = reply_of(state, query("big.example.", "TXT"), udp=True)
    assert reply.flags & dns.flags.TC and not reply.answer
    assert reply_of(state, query("big.example.", "TXT")).answer  # streams: whole


def test_chooser_delays_and_names() -> None:
    state = ServerState(delay=0.5, delays={"slow.example.": 2.0})

    def mute_one(message: dns.message.Message) -> Misbehaviour:
        muted = message.question[0].name.to_text() == "mute.example."
        return Misbehaviour.STALL if muted else Misbehaviour("answer")

    state.chooser = mute_one
    assert outcome(state, query("mute.example.")).reply is None
    assert outcome(state, query()).delay == 0.5
    assert outcome(state, query("slow.example.")).delay == 2.0
    state.chooser = lambda _q: "no-such-misbehaviour"  # type: ignore[assignment,return-value]
    with pytest.raises(ValueError):
        outcome(state, query())


def test_unparsable_query_is_stalled() -> None:
    assert outcome(ServerState(), b"\x00\x01").misbehaviour is Misbehaviour.STALL


def test_http_misbehaviours() -> None:
    headers, body = http_response(Misbehaviour.NONE, b"abcd")
    assert dict(headers)[b":status"] == b"200" and body == b"abcd"
    assert dict(headers)[b"content-type"] == b"application/dns-message"
    assert dict(http_response(Misbehaviour.HTTP500, b"x")[0])[b":status"] == b"500"
    assert dict(http_response(Misbehaviour.CONTENT_TYPE, b"x")[0])[b"content-type"] == b"text/plain"
    headers, body = http_response(Misbehaviour.TRUNCATED, b"abcd")
    assert dict(headers)[b"content-length"] == b"4" and body == b"ab"
