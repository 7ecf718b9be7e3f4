"""Request admission (core/admission.py) as a table: the source's access-list and rate-limit
verdicts and the message → admitted, refused, dropped, FORMERR, NOTIMP or BADVERS; no sockets."""

from __future__ import annotations

import dns.message
import dns.opcode
import pytest

from stubby_py.core import admission, wire
from stubby_py.core.access import AccessList
from stubby_py.core.ratelimit import RateLimiter

QUERY = dns.message.make_query("www.example.com.", "A", use_edns=0).to_wire()
RESPONSE = dns.message.make_response(dns.message.from_wire(QUERY)).to_wire()
NOTIFY = dns.message.make_query("example.com.", "SOA")
NOTIFY.set_opcode(dns.opcode.NOTIFY)
GARBAGE = QUERY[:12] + b"\xff\xff"
EDNS1 = dns.message.make_query("www.example.com.", "A", use_edns=1).to_wire()

ALLOWED, DENIED = "192.0.2.1", "198.51.100.1"


def _rules(
    *, limited: bool, refuse_denied: bool = True, refuse_limited: bool = False
) -> admission.Rules:
    """A rate limit that says no to every source (its one token spent) when `limited`."""
    limiter = None
    if limited:
        limiter = RateLimiter(1, 1)
        for address in (ALLOWED, DENIED):
            limiter.allows(address, 0.0)
    return admission.Rules(
        AccessList(["192.0.2.0/24"]), limiter, AccessList([]), refuse_denied, refuse_limited
    )


CASES = [
    # data, client, rules, what becomes of it
    (QUERY, ALLOWED, _rules(limited=False), None),
    (b"\x00" * 11, ALLOWED, _rules(limited=False), admission.NOT_A_QUERY),
    (RESPONSE, ALLOWED, _rules(limited=False), admission.NOT_A_QUERY),
    (QUERY, DENIED, _rules(limited=False), admission.DENIED_REFUSED),
    (QUERY, DENIED, _rules(limited=False, refuse_denied=False), admission.DENIED_DROPPED),
    (QUERY, DENIED, _rules(limited=True), admission.DENIED_OVER_RATE),
    (QUERY, DENIED, _rules(limited=True, refuse_denied=False), admission.DENIED_DROPPED),
    (QUERY, ALLOWED, _rules(limited=True), admission.RATE_LIMITED_DROPPED),
    (QUERY, ALLOWED, _rules(limited=True, refuse_limited=True), admission.RATE_LIMITED_REFUSED),
    # the source is judged before the message is read
    (GARBAGE, DENIED, _rules(limited=False), admission.DENIED_REFUSED),
    (GARBAGE, ALLOWED, _rules(limited=True), admission.RATE_LIMITED_DROPPED),
    (GARBAGE, ALLOWED, _rules(limited=False), admission.FORMERR),
    (NOTIFY.to_wire(), ALLOWED, _rules(limited=False), admission.NOTIMP),
    (EDNS1, ALLOWED, _rules(limited=False), admission.BADVERS),
]


@pytest.mark.parametrize(("data", "client", "rules", "expected"), CASES)
def test_what_becomes_of_a_request(
    data: bytes, client: str, rules: admission.Rules, expected: admission.Rejection | None
) -> None:
    verdict = admission.admit(data, client, 0.0, rules)
    if expected is None:
        assert isinstance(verdict, wire.ClientQuery) and verdict.question == QUERY[12:-11]
    else:
        assert verdict is expected


def test_a_dropped_source_spends_no_rate_token() -> None:
    """deny_action: drop decides without the rate limit; a refusal is counted against it."""
    limiter = RateLimiter(1, 1)
    dropping = admission.Rules(AccessList([]), limiter, AccessList([]), False, False)
    for _ in range(3):
        assert admission.admit(QUERY, DENIED, 0.0, dropping) is admission.DENIED_DROPPED
    refusing = admission.Rules(AccessList([]), limiter, AccessList([]), True, False)
    assert admission.admit(QUERY, DENIED, 0.0, refusing) is admission.DENIED_REFUSED
    assert admission.admit(QUERY, DENIED, 0.0, refusing) is admission.DENIED_OVER_RATE


def test_an_exempt_source_is_never_rate_limited() -> None:
    rules = _rules(limited=True)
    rules.exempt = AccessList([f"{ALLOWED}/32"])
    assert isinstance(admission.admit(QUERY, ALLOWED, 0.0, rules), wire.ClientQuery)


@pytest.mark.parametrize(
    ("rejection", "answered"),
    [
        (admission.NOT_A_QUERY, False),
        (admission.DENIED_DROPPED, False),
        (admission.DENIED_OVER_RATE, False),
        (admission.RATE_LIMITED_DROPPED, False),
        (admission.DENIED_REFUSED, True),
        (admission.RATE_LIMITED_REFUSED, True),
        (admission.FORMERR, True),
        (admission.NOTIMP, True),
        (admission.BADVERS, True),
    ],
)
def test_only_refusals_and_message_errors_are_answered(
    rejection: admission.Rejection, answered: bool
) -> None:
    assert (rejection.error is not None) == answered
