"""Which address a request comes from, believing `X-Forwarded-For` only from trusted proxies.

Anyone can send an `X-Forwarded-For` header, so taking it at face value would let a client pick
the identity its per-client limits are counted under. As uvicorn's `--forwarded-allow-ips` does,
the header is read only when the connecting peer is a listed proxy, and then from its right end
(the entry the nearest proxy appended) leftwards, to the first address that is not a trusted
proxy itself. Under `enhancer serve` uvicorn has already done the same with the same list; doing
it again changes nothing, and it makes the app behave the same under any ASGI server.
"""

from __future__ import annotations

import ipaddress
from functools import lru_cache

from starlette.types import Scope

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class TrustedProxies:
    """A parsed ENHANCER_FORWARDED_ALLOW_IPS: addresses, networks, or `*` (every peer)."""

    def __init__(self, spec: str):
        entries = [e.strip() for e in spec.split(",") if e.strip()]
        self.trust_all = "*" in entries
        self.addresses: set[Address] = set()
        self.networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        for entry in entries:
            if entry == "*":
                continue
            if "/" in entry:
                self.networks.append(ipaddress.ip_network(entry))
            else:
                self.addresses.add(ipaddress.ip_address(entry))
        self._trusted = lru_cache(maxsize=4096)(self._compute)

    def _compute(self, host: str) -> bool:
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            return False  # a unix socket path, a name, garbage: not a listed proxy
        return ip in self.addresses or any(ip in net for net in self.networks)

    def __contains__(self, host: str | None) -> bool:
        if self.trust_all:
            return True
        if not host or len(host) > 64:  # no textual IP address is that long
            return False
        return self._trusted(host)

    def client_host(self, scope: Scope) -> str:
        """The client's address: the peer, or what trusted proxies say in X-Forwarded-For."""
        peer = scope.get("client")
        host = peer[0] if peer else ""
        if host not in self:
            return host
        values = [v.decode("latin-1") for k, v in scope.get("headers", ()) if k == b"x-forwarded-for"]
        hops = [_host_of(h.strip()) for h in ",".join(values).split(",") if h.strip()]
        if not hops:
            return host
        if self.trust_all:
            return hops[0]
        for hop in reversed(hops):
            if hop not in self:
                return hop
        return hops[0]  # every hop is a trusted proxy: the first one is where it started


def _host_of(entry: str) -> str:
    """An X-Forwarded-For entry without its port: `1.2.3.4:5`, `[::1]:5`, `::1`, `1.2.3.4`."""
    if entry.startswith("["):
        end = entry.find("]")
        return entry[1:end] if end > 0 else entry
    if entry.count(":") == 1:
        return entry.split(":", 1)[0]
    return entry
