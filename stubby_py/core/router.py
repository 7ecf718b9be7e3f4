"""Forwarding rules (split DNS): domain suffix → upstream group; the most specific suffix wins.

Names compare case-insensitively, on the wire form, label by label from the longest suffix.
"""

from __future__ import annotations

from collections.abc import Mapping

import dns.name

DEFAULT_GROUP = "default"


def _suffix_key(domain: str) -> bytes:
    return dns.name.from_text(domain).to_wire().lower()  # type: ignore[union-attr]


class Router:
    def __init__(self, rules: Mapping[str, str]) -> None:
        """rules: domain → group name."""
        #: suffix key → (the domain as configured, group)
        self._rules = {_suffix_key(domain): (domain, group) for domain, group in rules.items()}

    def __bool__(self) -> bool:
        return bool(self._rules)

    def group_for(self, qname_wire_lower: bytes) -> str | None:
        """The group of the most specific rule covering the name, or None (the default pool)."""
        rule = self.rule_for(qname_wire_lower)
        return rule[1] if rule is not None else None

    def rule_for(self, qname_wire_lower: bytes) -> tuple[str, str] | None:
        """The most specific rule covering the name, (domain as configured, group), or None."""
        rules = self._rules
        pos = 0
        end = len(qname_wire_lower)
        while pos < end:
            rule = rules.get(qname_wire_lower[pos:])
            if rule is not None:
                return rule
            pos += qname_wire_lower[pos] + 1
        return rules.get(b"\x00")
