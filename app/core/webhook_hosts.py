"""Per-host webhook slots: one receiver that hangs must not take every delivery slot.

A delivery's host is the lower-cased `hostname:port` of its URL (the scheme's port when none is
written), so `HTTP://Hooks.Example.com/a` and `http://hooks.example.com:80/b` share a bound while
two ports of one address do not. The counts live in the process (one deliverer per API process):
the bound is per API process, and a process that dies takes its counts with it, so nothing in
Redis has to expire.
"""

from __future__ import annotations

from collections import Counter

import httpx

DEFAULT_PORTS = {"http": 80, "https": 443}


def host_and_port(parsed: httpx.URL) -> tuple[str, int] | None:
    """The host (as written) and port a POST to `parsed` connects to; None unless http(s) with a host."""
    if parsed.scheme not in DEFAULT_PORTS or not parsed.raw_host:
        return None
    return parsed.raw_host.decode("ascii"), parsed.port or DEFAULT_PORTS[parsed.scheme]


def host_key(url: str) -> str | None:
    """`hostname:port`, lower-cased; None for a URL that cannot be delivered (the POST refuses it)."""
    try:
        target = host_and_port(httpx.URL(url))
    except (httpx.InvalidURL, TypeError, ValueError):
        return None
    if target is None:
        return None
    host, port = target
    host = host.lower().rstrip(".")
    if ":" in host:
        host = f"[{host}]"  # an IPv6 literal, bracketed as in the URL
    return f"{host}:{port}"


class HostSlots:
    """At most `per_host` deliveries in flight to one host; `take` before the POST, `release` after."""

    def __init__(self, per_host: int) -> None:
        self.per_host = per_host
        self._in_flight: Counter[str] = Counter()

    def take(self, host: str | None) -> bool:
        """True (and counted) when `host` has a free slot; a URL with no host is never held back."""
        if host is None:
            return True
        if self._in_flight[host] >= self.per_host:
            return False
        self._in_flight[host] += 1
        return True

    def release(self, host: str | None) -> None:
        if host is None:
            return
        self._in_flight[host] -= 1
        if self._in_flight[host] <= 0:
            del self._in_flight[host]  # hosts seen once do not accumulate

    def in_flight(self, host: str) -> int:
        return self._in_flight[host]
