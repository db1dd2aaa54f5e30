"""Rate limits (`twin.limits`): a token bucket per caller, anonymous callers per address, keys
each their own; over it 429 `RateLimited` with `Retry-After`, in the app's error shape; health
checks never limited; memory bounded whatever the number of callers."""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from layers.models import Role
from layers.settings import StoreSettings
from tests.twin.serve_fixtures import fill_store, sites_layer
from twin.access import STATE_KEY
from twin.app import create_app
from twin.limits import Buckets, Rate, RateLimits, address_key, rates
from twin.metrics import Metrics
from twin.settings import LimitSettings, ServerSettings


@dataclass(frozen=True)
class Who:
    """A resolved caller as `RateLimits` reads it: its name and role."""

    name: str
    role: Role


ANONYMOUS = Who("anonymous", Role.ANONYMOUS)


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def limits(clock: Clock, **settings: Any) -> RateLimits:
    """`RateLimits` over an app answering 200 to everything, on `clock`."""

    async def ok(scope: dict, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    limit_settings = LimitSettings(_env_file=None, **settings)  # type: ignore[call-arg]
    return RateLimits(ok, limit_settings, Metrics(), clock=clock)


def ask(
    app: RateLimits, caller: Any = ANONYMOUS, host: str = "10.0.0.1", path: str = "/collections"
) -> tuple[int, dict[str, str], bytes]:
    """One GET through `app` by `caller` from `host`: status, headers, body."""
    scope = {
        "type": "http",
        "method": "GET",
        "path": path,
        "query_string": b"",
        "headers": [],
        "client": (host, 40000),
        "state": {STATE_KEY: caller},
    }
    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    start = sent[0]
    headers = {k.decode().lower(): v.decode() for k, v in start["headers"]}
    return start["status"], headers, b"".join(m.get("body", b"") for m in sent[1:])


def statuses(app: RateLimits, n: int, **kw: Any) -> list[int]:
    return [ask(app, **kw)[0] for _ in range(n)]


# -- the bucket --------------------------------------------------------------------------------


def test_a_bucket_lets_a_burst_through_then_one_request_per_refill() -> None:
    rate = Rate(per_s=4.0, burst=10, role=Role.ANONYMOUS)
    buckets = Buckets(max_buckets=100, idle_s=10 / 4)
    t = 50.0
    assert [buckets.take("a", rate, t) for _ in range(10)] == [0.0] * 10
    # Empty: the next token is a quarter of a second away, and asking spends nothing.
    assert buckets.take("a", rate, t) == pytest.approx(0.25)
    assert buckets.take("a", rate, t + 0.1) == pytest.approx(0.15)
    assert buckets.take("a", rate, t + 0.3) == 0.0
    assert buckets.take("a", rate, t + 0.3) == pytest.approx(0.2)
    # Idle for long, it holds a burst again, never more.
    t += 100
    assert [buckets.take("a", rate, t) for _ in range(11)][-2:] == [0.0, pytest.approx(0.25)]


def test_buckets_full_again_are_dropped_and_their_number_is_bounded() -> None:
    rate = Rate(per_s=1.0, burst=5, role=Role.ANONYMOUS)
    buckets = Buckets(max_buckets=1000, idle_s=5.0)
    for i in range(600):
        buckets.take(f"10.0.{i // 256}.{i % 256}", rate, 0.0)
    assert len(buckets) == 600
    # Long after, a new caller's bucket sweeps the 600 full ones away.
    buckets.take("10.9.9.9", rate, 1000.0)
    assert len(buckets) == 1
    # Many callers at once: never more buckets than the bound.
    for i in range(5000):
        buckets.take(("key", f"k{i}"), rate, 1000.0 + i / 1e6)
        assert len(buckets) <= 1000


def test_ipv6_clients_share_a_bucket_per_64_and_mapped_ipv4_is_ipv4() -> None:
    assert address_key(("2001:db8:1:2:aaaa::1", 1)) == address_key(("2001:db8:1:2:bbbb::9", 2))
    assert address_key(("2001:db8:1:2::1", 1)) != address_key(("2001:db8:1:3::1", 1))
    assert address_key(("::ffff:192.0.2.7", 1)) == address_key(("192.0.2.7", 1)) == "192.0.2.7"
    assert address_key(None) == ""


def test_every_role_has_its_settings_and_zero_is_no_limit() -> None:
    got = rates(LimitSettings(_env_file=None, rate_viewer=0))  # type: ignore[call-arg]
    assert set(got) == set(Role)
    assert got[Role.VIEWER] is None
    assert got[Role.ADMIN] is None  # unlimited by default
    anonymous, engineer = got[Role.ANONYMOUS], got[Role.ENGINEER]
    assert anonymous is not None and engineer is not None
    # A map pulls ~50 tiles at once: the defaults take a few screens at once, keys more.
    assert anonymous.burst >= 200 and anonymous.per_s >= 50
    assert engineer.burst > anonymous.burst and engineer.per_s > anonymous.per_s


# -- the middleware ----------------------------------------------------------------------------


def test_over_the_burst_a_caller_gets_429_with_retry_after_and_recovers() -> None:
    clock = Clock()
    app = limits(clock, rate_anonymous=0.5, burst_anonymous=3)
    assert statuses(app, 3) == [200] * 3
    status, headers, body = ask(app)
    assert status == 429
    # A token every 2 s: the caller is told to come back in 2 s, as a whole number.
    assert headers["retry-after"] == "2"
    error = json.loads(body)
    assert set(error) == {"code", "description"} and error["code"] == "RateLimited"
    assert "TWIN_RATE_ANONYMOUS" in error["description"]
    assert headers["content-type"] == "application/json"
    clock.now += 1.5
    status, headers, _ = ask(app)
    assert status == 429 and headers["retry-after"] == "1"  # half a second, rounded up
    clock.now += 0.5
    assert statuses(app, 2) == [200, 429]


def test_anonymous_callers_have_a_bucket_per_address() -> None:
    clock = Clock()
    app = limits(clock, rate_anonymous=1, burst_anonymous=2)
    assert statuses(app, 3, host="10.0.0.1") == [200, 200, 429]
    assert statuses(app, 3, host="10.0.0.2") == [200, 200, 429]
    # Their key is not their name: every anonymous caller is called "anonymous".
    assert statuses(app, 1, host="10.0.0.3") == [200]


def test_each_key_has_its_own_bucket_wherever_it_is_used_from() -> None:
    clock = Clock()
    app = limits(clock, rate_viewer=1, burst_viewer=4, rate_anonymous=1, burst_anonymous=1)
    alice, bob = Who("alice", Role.VIEWER), Who("bob", Role.VIEWER)
    # Alice's burst is spent from two addresses together.
    assert statuses(app, 2, caller=alice, host="10.0.0.1") == [200, 200]
    assert statuses(app, 3, caller=alice, host="10.0.0.2") == [200, 200, 429]
    # Bob, from the very same address, has all of his.
    assert statuses(app, 5, caller=bob, host="10.0.0.2") == [200] * 4 + [429]
    # The address's anonymous bucket is another still.
    assert statuses(app, 2, host="10.0.0.2") == [200, 429]
    status, _, body = ask(app, caller=alice)
    assert status == 429 and "TWIN_RATE_VIEWER" in json.loads(body)["description"]
    assert "alice" not in body.decode()


def test_each_role_has_its_own_rate_and_admins_are_not_limited() -> None:
    clock = Clock()
    app = limits(clock, rate_viewer=1, burst_viewer=2, rate_engineer=1, burst_engineer=5)
    viewer, engineer = Who("v", Role.VIEWER), Who("e", Role.ENGINEER)
    assert statuses(app, 3, caller=viewer) == [200, 200, 429]
    assert statuses(app, 6, caller=engineer) == [200] * 5 + [429]
    assert statuses(app, 100, caller=Who("root", Role.ADMIN)) == [200] * 100
    assert len(app.buckets) == 2  # none kept for an unlimited caller


def test_health_checks_are_never_limited() -> None:
    clock = Clock()
    app = limits(clock, rate_anonymous=1, burst_anonymous=1)
    assert statuses(app, 2) == [200, 429]
    assert statuses(app, 50, path="/healthz") == [200] * 50


def test_a_caller_without_a_role_is_anonymous_and_none_at_all_is_a_bug() -> None:
    clock = Clock()
    app = limits(clock, rate_anonymous=1, burst_anonymous=1)

    @dataclass(frozen=True)
    class Nameless:
        name: str

    assert statuses(app, 2, caller=Nameless("someone"), host="10.1.1.1") == [200, 429]
    with pytest.raises(RuntimeError, match="CallerMiddleware"):
        ask(app, caller=None)


# -- in the app --------------------------------------------------------------------------------


class ClientFrom:
    """The app, answering each request as if it came from the address in `X-Test-Client`."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            host = dict(scope["headers"]).get(b"x-test-client")
            if host is not None:
                scope = {**scope, "client": (host.decode(), 40000)}
        await self.app(scope, receive, send)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fill_store(tmp_path_factory.mktemp("limits") / "store", [sites_layer()])


@pytest.fixture
def client(store: Path) -> Iterator[TestClient]:
    """The real app over a small store, anonymous callers allowed 1 request a second after 3."""
    app = create_app(
        ServerSettings(_env_file=None),  # type: ignore[call-arg]
        StoreSettings(_env_file=None, store=store),  # type: ignore[call-arg]
        limit_settings=LimitSettings(  # type: ignore[call-arg]
            _env_file=None, rate_anonymous=1, burst_anonymous=3
        ),
    )
    with TestClient(ClientFrom(app)) as c:
        yield c


def test_the_app_limits_anonymous_callers_per_address(client: TestClient) -> None:
    one, two = {"X-Test-Client": "192.0.2.1"}, {"X-Test-Client": "192.0.2.2"}
    assert [client.get("/collections", headers=one).status_code for _ in range(3)] == [200] * 3
    # Every kind of request counts: a tile, an item, a query, a page.
    refused = [
        client.get(path, headers=one)
        for path in (
            "/collections/sites/items",
            "/collections/sites/tiles/WebMercatorQuad/14/6744/13394",
            "/query/near?lon=114.30&lat=30.50&radius=50",
            "/collections?f=html",
        )
    ]
    assert [r.status_code for r in refused] == [429] * 4
    for r in refused:
        assert r.json()["code"] == "RateLimited"
        assert int(r.headers["retry-after"]) >= 1
    # A browser on another site may read the refusal and when to come back.
    r = client.get("/collections", headers={**one, "Origin": "https://elsewhere.example"})
    assert r.status_code == 429
    assert r.headers["access-control-allow-origin"] == "*"
    assert "retry-after" in r.headers["access-control-expose-headers"].lower()
    # Another address is not held back, nor are health checks.
    assert client.get("/collections", headers=two).status_code == 200
    assert [client.get("/healthz", headers=one).status_code for _ in range(5)] == [200] * 5
    # The refusals are counted by role.
    metrics = client.get("/metrics", headers=two).text
    line = next(x for x in metrics.splitlines() if x.startswith("twin_http_requests_limited"))
    assert line.startswith('twin_http_requests_limited_total{role="anonymous"}')
    assert float(line.split()[-1]) >= 5


def test_the_app_lets_a_caller_in_again_after_retry_after(client: TestClient) -> None:
    one = {"X-Test-Client": "192.0.2.9"}
    for _ in range(20):
        r = client.get("/conformance", headers=one)
        if r.status_code != 200:
            break
    assert r.status_code == 429
    # Waiting as long as told is enough (a lower bound on the wait, not a speed test).
    time.sleep(math.ceil(float(r.headers["retry-after"])))
    assert client.get("/conformance", headers=one).status_code == 200


def test_bad_keys_count_against_their_address_and_are_401_until_over_it(client) -> None:
    """Credentials that are not a valid key are answered 401 — counted first against the
    rate of the address they come from, so a flood of guessed keys is limited like any
    anonymous flood (429), and does not spend another address's allowance."""
    bad = {"X-Test-Client": "192.0.2.9", "Authorization": "Bearer twin_guess"}
    got = [client.get("/collections/sites/items", headers=bad) for _ in range(4)]
    assert [r.status_code for r in got] == [401, 401, 401, 429]
    assert got[0].json()["code"] == "InvalidKey"
    assert got[0].headers["www-authenticate"].startswith("Bearer")
    other = {"X-Test-Client": "192.0.2.10"}
    assert client.get("/collections", headers=other).status_code == 200
