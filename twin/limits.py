"""Rate limits: how many requests a caller may make, a token bucket per caller.

`RateLimits` is ASGI middleware running inside `twin.access.CallerMiddleware`: it reads the
caller resolved there. A caller's bucket holds up to `TWIN_BURST_<ROLE>` requests and refills at
`TWIN_RATE_<ROLE>` a second; a request finding it empty is answered 429 `RateLimited` with
`Retry-After` (whole seconds until a token is back) and costs the caller nothing. Anonymous
callers have a bucket per client address (an IPv6 client per /64, the block one host holds),
a key has one of its own wherever it is used from. `/healthz` is never limited.

The buckets live in the worker process (`twin serve --workers N`: a caller spread over N
workers may make up to N times the rate); they are touched on the event loop only, so they need
no lock, and a request costs a dict lookup and a little arithmetic. A bucket left alone long
enough to be full again is the same as none and is dropped; past `TWIN_RATE_MAX_BUCKETS` the
oldest are dropped too, so memory stays bounded whatever the number of callers.
"""

from __future__ import annotations

import functools
import ipaddress
import itertools
import math
import time
from collections.abc import Callable, Hashable
from typing import Any, NamedTuple

from prometheus_client import Counter, Gauge

from layers.models import Role
from twin.access import STATE_KEY
from twin.errors import RateLimited
from twin.metrics import Metrics
from twin.problems import problem
from twin.settings import LimitSettings

NEVER_LIMITED = frozenset({"/healthz"})
"""Paths answered whatever the caller's rate: health checks must see the worker."""
SWEEP_S = 30.0
"""Least time between two looks for idle buckets (each looks at every bucket)."""


class Rate(NamedTuple):
    """A role's rate limit: `per_s` requests a second after a burst of `burst`."""

    per_s: float
    burst: int
    role: Role


def rates(settings: LimitSettings) -> dict[Role, Rate | None]:
    """Each role's rate from `settings` (None: not limited)."""
    out: dict[Role, Rate | None] = {}
    for role in Role:
        per_s = getattr(settings, f"rate_{role.label}")
        out[role] = Rate(per_s, getattr(settings, f"burst_{role.label}"), role) if per_s else None
    return out


class Buckets:
    """Token buckets by caller key; `take` spends a token of one."""

    def __init__(self, max_buckets: int, idle_s: float) -> None:
        self.max_buckets = max_buckets
        self.idle_s = idle_s
        """A bucket untouched this long is full again (the slowest refill of any rate)."""
        self._held: dict[Hashable, list[float]] = {}  # key -> [tokens, when last counted]
        self._next_sweep = 0.0

    def __len__(self) -> int:
        return len(self._held)

    def take(self, key: Hashable, rate: Rate, now: float) -> float:
        """Spend a token of `key`'s bucket at time `now` (seconds, monotonic): 0 when there was
        one, else the seconds until there is (nothing spent)."""
        held = self._held.get(key)
        if held is None:
            if now >= self._next_sweep or len(self._held) >= self.max_buckets:
                self._sweep(now)
            self._held[key] = [rate.burst - 1.0, now]
            return 0.0
        tokens = held[0] + (now - held[1]) * rate.per_s
        if tokens > rate.burst:
            tokens = rate.burst
        held[1] = now
        if tokens >= 1.0:
            held[0] = tokens - 1.0
            return 0.0
        held[0] = tokens
        return (1.0 - tokens) / rate.per_s

    def _sweep(self, now: float) -> None:
        """Drop the buckets that are full again, and the oldest while there are too many."""
        self._next_sweep = now + SWEEP_S
        held = self._held
        horizon = now - self.idle_s
        for key in [k for k, b in held.items() if b[1] <= horizon]:
            del held[key]
        if len(held) >= self.max_buckets:
            # Keep a quarter free, so that the next such sweep is that many callers away.
            excess = len(held) - self.max_buckets * 3 // 4
            for key in list(itertools.islice(held, excess)):
                del held[key]


@functools.lru_cache(maxsize=4096)
def _ipv6_key(host: str) -> str:
    try:
        address = ipaddress.IPv6Address(host)
    except ValueError:
        return host
    if address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(ipaddress.IPv6Network((address, 64), strict=False))


def address_key(client: Any) -> str:
    """The bucket of an anonymous client at ASGI `client` (host, port): its IPv4 address, or
    the /64 of its IPv6 address (an IPv4-mapped one: that IPv4 address)."""
    host = client[0] if client else ""
    return _ipv6_key(host) if ":" in host else host


class RateLimits:
    """ASGI middleware: the rate limit of every HTTP request's caller (see the module)."""

    def __init__(
        self,
        app: Any,
        settings: LimitSettings,
        metrics: Metrics,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.app = app
        self.rates = rates(settings)
        self.anonymous = self.rates[Role.ANONYMOUS]
        slowest = max((r.burst / r.per_s for r in self.rates.values() if r), default=0.0)
        self.buckets = Buckets(settings.rate_max_buckets, slowest)
        self.clock = clock
        registry = metrics.registry
        self.limited = Counter(
            "twin_http_requests_limited",
            "Requests answered 429 because their caller was over its rate (TWIN_RATE_*).",
            ["role"],
            registry=registry,
        )
        Gauge(
            "twin_rate_buckets",
            "Callers this worker keeps a rate-limit bucket for.",
            registry=registry,
        ).set_function(lambda: len(self.buckets))

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] in NEVER_LIMITED:
            await self.app(scope, receive, send)
            return
        caller = scope.get("state", {}).get(STATE_KEY)
        if caller is None:
            raise RuntimeError(
                f"no caller resolved for {scope['path']}: RateLimits must run inside "
                "CallerMiddleware"
            )
        role = getattr(caller, "role", None)
        key: Hashable
        if role is None or role == Role.ANONYMOUS:
            rate = self.anonymous
            key = address_key(scope.get("client"))
        else:
            rate = self.rates.get(role, self.anonymous)
            key = ("key", caller.name)
        if rate is None:
            await self.app(scope, receive, send)
            return
        wait = self.buckets.take(key, rate, self.clock())
        if not wait:
            await self.app(scope, receive, send)
            return
        self.limited.labels(rate.role.label).inc()
        response = problem(refusal(rate, wait))
        assert response is not None
        await response(scope, receive, send)


def refusal(rate: Rate, wait_s: float) -> RateLimited:
    """The error of a request `wait_s` seconds too early for `rate`."""
    after = max(1, math.ceil(wait_s))
    role = rate.role
    who = (
        "a caller without a key (per address)"
        if role == Role.ANONYMOUS
        else f"a key with the {role.label} role"
    )
    name = role.label.upper()
    return RateLimited(
        f"too many requests: {who} may make {rate.per_s:g} a second after a burst of "
        f"{rate.burst} (TWIN_RATE_{name}, TWIN_BURST_{name}); retry in {after} s",
        after,
    )
