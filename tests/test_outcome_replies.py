"""Every outcome of a query → the client's reply: its rcode and Extended DNS Errors (RFC 8914),
one table for core/answers.py, with no sockets."""

from __future__ import annotations

from collections.abc import Callable

import dns.edns
import dns.message
import dns.rcode
import dns.rrset
import pytest
from dns.edns import EDECode
from dns.rcode import Rcode

from stubby_py.core import answers, errors, wire
from stubby_py.core.cache import FailureEntry

QUERY = dns.message.make_query("www.example.com.", "A", use_edns=0)
DATA = QUERY.to_wire()
CLIENT = wire.parse_query(DATA)


def _body(rcode: Rcode) -> bytes:
    reply = dns.message.make_response(QUERY)
    reply.set_rcode(rcode)
    if rcode == Rcode.NOERROR:
        reply.answer.append(dns.rrset.from_text("www.example.com.", 300, "IN", "A", "192.0.2.1"))
    reply.use_edns(False)
    return reply.to_wire()


def _held(**fields: object) -> FailureEntry:
    return FailureEntry(until=30.0, hold=30.0, reply=None, reason="timeout", **fields)  # type: ignore[arg-type]


#: outcome → the reply it becomes
OUTCOMES: dict[str, Callable[[], bytes]] = {
    "formerr (not a query)": lambda: answers.rejection(DATA, None, errors.MalformedQueryError),
    "notimp (another opcode)": lambda: answers.rejection(
        DATA, None, errors.NotImplementedOpcodeError
    ),
    "badvers (EDNS version 1)": lambda: answers.rejection(DATA, CLIENT, errors.BadVersionError),
    "refused (access list, rate limit)": lambda: answers.rejection(
        DATA, CLIENT, errors.RefusedError
    ),
    "upstream timeout": lambda: answers.error_answer(
        CLIENT, errors.UpstreamTimeoutError("quad9: timeout"), None
    ),
    "every upstream failed": lambda: answers.error_answer(
        CLIENT, errors.NoUpstreamAvailableError("quad9: timeout"), None
    ),
    "bogus (DNSSEC)": lambda: answers.error_answer(
        CLIENT, errors.DnssecFailureError(EDECode.SIGNATURE_EXPIRED, "expired", "example."), None
    ),
    "indeterminate (DNSSEC)": lambda: answers.error_answer(
        CLIENT,
        errors.DnssecFailureError(
            EDECode.DNSKEY_MISSING, "no keys", "example.", indeterminate=True
        ),
        None,
    ),
    "held failure": lambda: answers.held_failure_answer(CLIENT, _held(), 0.0, None),
    "held DNSSEC failure": lambda: answers.held_failure_answer(
        CLIENT, _held(ede=(EDECode.DNSSEC_BOGUS, "bogus")), 0.0, None
    ),
    "held upstream SERVFAIL": lambda: answers.held_failure_answer(
        CLIENT,
        FailureEntry(30.0, 30.0, _body(Rcode.SERVFAIL), "upstream SERVFAIL"),
        0.0,
        None,
    ),
    "stale answer": lambda: answers.stale_answer(CLIENT, _body(Rcode.NOERROR), None),
    "stale NXDOMAIN": lambda: answers.stale_answer(CLIENT, _body(Rcode.NXDOMAIN), None),
    "internal error": lambda: answers.error_answer(CLIENT, errors.InternalError(), None),
}

EXPECTED: dict[str, tuple[Rcode, list[int]]] = {
    "formerr (not a query)": (Rcode.FORMERR, []),
    "notimp (another opcode)": (Rcode.NOTIMP, []),
    "badvers (EDNS version 1)": (Rcode.BADVERS, []),
    "refused (access list, rate limit)": (Rcode.REFUSED, [EDECode.PROHIBITED]),
    "upstream timeout": (Rcode.SERVFAIL, [EDECode.NETWORK_ERROR]),
    "every upstream failed": (Rcode.SERVFAIL, [EDECode.NO_REACHABLE_AUTHORITY]),
    "bogus (DNSSEC)": (Rcode.SERVFAIL, [EDECode.SIGNATURE_EXPIRED]),
    "indeterminate (DNSSEC)": (Rcode.SERVFAIL, [EDECode.DNSKEY_MISSING]),
    "held failure": (Rcode.SERVFAIL, [EDECode.CACHED_ERROR]),
    "held DNSSEC failure": (Rcode.SERVFAIL, [EDECode.DNSSEC_BOGUS]),
    "held upstream SERVFAIL": (Rcode.SERVFAIL, []),
    "stale answer": (Rcode.NOERROR, [EDECode.STALE_ANSWER]),
    "stale NXDOMAIN": (Rcode.NXDOMAIN, [EDECode.STALE_NXDOMAIN_ANSWER]),
    "internal error": (Rcode.SERVFAIL, [EDECode.OTHER]),
}


def _read(reply: bytes) -> tuple[Rcode, list[int]]:
    message = dns.message.from_wire(reply)
    codes = [int(o.code) for o in message.options if isinstance(o, dns.edns.EDEOption)]
    return message.rcode(), codes


def test_every_outcome_has_its_expectation() -> None:
    assert OUTCOMES.keys() == EXPECTED.keys()


@pytest.mark.parametrize("outcome", list(OUTCOMES))
def test_outcome_becomes_its_rcode_and_ede(outcome: str) -> None:
    reply = OUTCOMES[outcome]()
    assert _read(reply) == EXPECTED[outcome]
    assert wire.header_id(reply) == QUERY.id


def test_every_upstream_error_is_servfail() -> None:
    """RFC 1035 §4.1.1, RFC 8914: a resolution failure is SERVFAIL, whatever the failure; the
    EDE tells which. The error's own rcode is what the reply carries."""
    kinds = [errors.UpstreamError, errors.InternalError]
    seen: set[type[errors.StubbyError]] = set()
    while kinds:
        kind = kinds.pop()
        seen.add(kind)
        kinds += kind.__subclasses__()
    assert {kind.rcode for kind in seen} == {Rcode.SERVFAIL}


def test_held_failure_says_what_failed_and_when_it_is_asked_again() -> None:
    message = dns.message.from_wire(answers.held_failure_answer(CLIENT, _held(), 12.0, None))
    (ede,) = [o for o in message.options if isinstance(o, dns.edns.EDEOption)]
    assert ede.text == "cached failure (timeout), retry in 18 s"


def test_a_long_error_text_is_cut_to_the_udp_limit_not_truncated() -> None:
    text = ", ".join(f"upstream{i}.example: timeout" for i in range(40))
    reply = answers.error_answer(CLIENT, errors.NoUpstreamAvailableError(text), 512)
    assert len(reply) <= 512
    message = dns.message.from_wire(reply)
    assert not message.flags & dns.flags.TC
    (ede,) = [o for o in message.options if isinstance(o, dns.edns.EDEOption)]
    assert ede.text is not None and ede.text.endswith("…")


def test_a_query_without_edns_gets_the_rcode_and_no_opt() -> None:
    plain = wire.parse_query(dns.message.make_query("www.example.com.", "A").to_wire())
    reply = dns.message.from_wire(answers.error_answer(plain, errors.InternalError(), None))
    assert reply.rcode() == Rcode.SERVFAIL and reply.edns < 0
