"""`stubby-py portal [status | open [--minutes N] | close]`: the captive-portal state of the
running daemon (daemon/road.py), and the user's explicit window, shown for people."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

#: the window's default and longest length, minutes (core/portal.py bounds it again)
DEFAULT_MINUTES = 5.0
MAX_MINUTES = 30.0


def format_status(status: Mapping[str, Any]) -> str:
    network = status.get("network_resolver")
    source = status.get("network_resolver_source")
    lines = [
        f"captive_portal:    {status.get('captive_portal')}",
        "network resolver:  " + (f"{network} (from {source})" if network else "none known"),
    ]
    if status.get("dns64_prefix"):
        lines.append(f"dns64:             {status['dns64_prefix']} ({status.get('dns64_source')}:"
                     f" {status.get('dns64')})")  # fmt: skip
    elif status.get("dns64"):
        lines.append(f"dns64:             off ({status['dns64']})")
    if status.get("portal_uri"):
        lines.append(f"portal announced:  {status['portal_uri']}")
    if status.get("suspected"):
        lines.append(
            f"portal suspected:  since {status['suspected_since']}: only the connectivity-check"
            " names resolve through the network resolver"
        )
    else:
        lines.append("portal suspected:  no")
    if status.get("window_until"):
        lines.append(
            f"window open:       until {status['window_until']}: ALL names go to the network"
            " resolver (cleartext, unvalidated)"
        )
    answered = status.get("answered") or {}
    if answered:
        lines.append("answered through the network resolver:")
        lines += [f"  {name}  ({count})" for name, count in sorted(answered.items())]
    return "\n".join(lines) + "\n"
