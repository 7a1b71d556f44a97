"""A rate limit on refused calls, so that anyone who can reach the admin port cannot fill the
coordinator's disk through the audit log."""

from __future__ import annotations

import ipaddress
import threading
import time


class RefusalLimiter:
    """A token bucket per caller address for refused calls: `burst` at once, then `per_second`.

    Keyed by `peer_host`, not the peer: a new connection is a new source port, and must not buy a
    fresh bucket. Refusals over the rate are counted per address, to be logged as one entry.
    """

    def __init__(self, burst: int = 20, per_second: float = 0.1, *,
                 clock=time.monotonic, max_hosts: int = 10_000) -> None:
        if burst < 1 or per_second < 0:
            raise ValueError("a refusal limit needs burst >= 1 and per_second >= 0")
        self.burst, self.per_second, self.clock = burst, per_second, clock
        self.max_hosts = max_hosts
        self._hosts: dict[str, tuple[float, float, int]] = {}  # tokens, updated, suppressed
        self._lock = threading.Lock()

    def admit(self, host: str) -> tuple[bool, int]:
        """Whether this refusal from `host` may be logged, and how many refusals from it were
        over the rate since its last logged one (0 when not admitted)."""
        with self._lock:
            now = self.clock()
            tokens, updated, suppressed = self._hosts.get(host, (float(self.burst), now, 0))
            tokens = self._refilled(tokens, updated, now)
            if tokens < 1:
                self._hosts[host] = (tokens, now, suppressed + 1)
                return False, 0
            self._hosts[host] = (tokens - 1, now, 0)
            if len(self._hosts) > self.max_hosts:
                self._forget_idle(now)
            return True, suppressed

    def drain(self) -> dict[str, int]:
        """The refusals over the rate not reported yet, by address (and forget them)."""
        with self._lock:
            counts = {h: n for h, (_, _, n) in self._hosts.items() if n}
            for host in counts:
                tokens, updated, _ = self._hosts[host]
                self._hosts[host] = (tokens, updated, 0)
            return counts

    def describe(self) -> str:
        pace = f", then one every {1 / self.per_second:g} s" if self.per_second else ""
        return f"{self.burst} at once{pace}"

    def _refilled(self, tokens: float, updated: float, now: float) -> float:
        return min(float(self.burst), tokens + (now - updated) * self.per_second)

    def _forget_idle(self, now: float) -> None:
        # An address whose bucket is full again and that owes no count is like a new one.
        idle = [h for h, (t, u, n) in self._hosts.items()
                if not n and self._refilled(t, u, now) >= self.burst]
        for host in idle:
            del self._hosts[host]


def peer_host(peer: str) -> str:
    """gRPC's peer string (`ipv4:1.2.3.4:5678`, `ipv6:[::1]:5678`) without the port; IPv6 by its
    /64, which one host usually holds whole."""
    kind, _, rest = peer.partition(":")
    if kind not in ("ipv4", "ipv6"):
        return peer
    address = rest.rsplit(":", 1)[0]
    if kind == "ipv6":
        try:
            address = str(ipaddress.IPv6Network(f"{address.strip('[]')}/64", strict=False))
        except ValueError:
            pass
    return f"{kind}:{address}"

