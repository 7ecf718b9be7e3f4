"""Access lists: which client addresses may query (`allow`), or skip the rate limit."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
#: verdicts remembered per address string (the table is cleared when full)
ACL_CACHE_LIMIT = 4096


class AccessList:
    """Client networks allowed to query; verdicts cached per address string."""

    def __init__(self, networks: Sequence[str]) -> None:
        self._networks: list[IPNetwork] = [ipaddress.ip_network(n) for n in networks]
        self._verdicts: dict[str, bool] = {}

    def allows(self, address: str) -> bool:
        verdict = self._verdicts.get(address)
        if verdict is None:
            verdict = self._judge(address)
            if len(self._verdicts) >= ACL_CACHE_LIMIT:
                self._verdicts.clear()
            self._verdicts[address] = verdict
        return verdict

    def _judge(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address.partition("%")[0])
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in net for net in self._networks)
