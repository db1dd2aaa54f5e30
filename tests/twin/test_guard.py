"""The request guard against a real uvicorn server: a full worker answers 503 with Retry-After
at once while /healthz, /metrics and cached tiles are still answered; a request past its
deadline is stopped by its own work (400 naming the setting), and one whose work does not
check the deadline is answered by the guard and keeps its place until the work ends."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import morecantile
import pytest

from layers.settings import StoreSettings
from tests.twin.serve_fixtures import (
    LiveServer,
    served_store_fixture,  # noqa: F401  (fixture)
)
from twin import cql2, queries
from twin.app import create_app
from twin.settings import GuardSettings, ServerSettings

LON, LAT = -71.1056, 42.3736  # Cambridge, among the street lights
TILE = morecantile.tms.get("WebMercatorQuad").tile(LON, LAT, 15)
TILE_PATH = f"/collections/lights/tiles/WebMercatorQuad/{TILE.z}/{TILE.y}/{TILE.x}"
NEAR = f"/query/near?lon={LON}&lat={LAT}&radius=50"


def server(store: Path, **guard: Any) -> LiveServer:
    app = create_app(
        ServerSettings(_env_file=None),  # type: ignore[call-arg]
        StoreSettings(_env_file=None, store=store),  # type: ignore[call-arg]
        guard_settings=GuardSettings(_env_file=None, **guard),  # type: ignore[call-arg]
    )
    return LiveServer(app)


class Gate:
    """Holds every call of a patched function until opened (or 10 s pass)."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.opened = threading.Event()

    def hold(self) -> None:
        self.entered.set()
        self.opened.wait(10)


@pytest.fixture
def held_near(monkeypatch: pytest.MonkeyPatch) -> Iterator[Gate]:
    """`/query/near` held in its thread until the gate opens (a slow query that never checks
    its deadline)."""
    gate = Gate()
    real = queries.near

    def slow(*args: Any, **kwargs: Any) -> Any:
        gate.hold()
        return real(*args, **kwargs)

    monkeypatch.setattr(queries, "near", slow)
    yield gate
    gate.opened.set()


def in_background(url: str) -> tuple[threading.Thread, dict[str, Any]]:
    out: dict[str, Any] = {}

    def run() -> None:
        t0 = time.monotonic()
        res = httpx.get(url, timeout=20)
        out.update(status=res.status_code, json=res.json(), seconds=time.monotonic() - t0)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, out


def metric(text: str, name: str) -> float:
    line = next(ln for ln in text.splitlines() if ln.startswith(name + " "))
    return float(line.split()[1])


def test_a_full_worker_sheds_at_once_but_answers_health_and_cached_tiles(
    served_store: Path, held_near: Gate
) -> None:
    with server(served_store, max_in_flight=1, retry_after_s=3) as live, httpx.Client() as c:
        assert c.get(live.url + TILE_PATH).status_code == 200  # now cached
        slow, answer = in_background(live.url + NEAR)
        assert held_near.entered.wait(10)
        # The one place is taken: every other request that needs work is refused at once.
        for path in (NEAR, "/collections/lights/items?limit=1", TILE_PATH.replace("/15/", "/14/")):
            res = c.get(live.url + path)
            assert res.status_code == 503, path
            assert res.headers["retry-after"] == "3"
            body = res.json()
            assert body["code"] == "Overloaded" and "TWIN_MAX_IN_FLIGHT" in body["description"]
        # What needs no work is still answered.
        assert c.get(live.url + "/healthz").json()["status"] == "ok"
        cached = c.get(live.url + TILE_PATH)
        assert cached.status_code == 200 and cached.content
        scraped = c.get(live.url + "/metrics").text
        assert metric(scraped, "twin_http_requests_shed_total") == 3
        assert metric(scraped, "twin_http_requests_in_flight") == 1
        held_near.opened.set()
        slow.join(20)
        assert answer["status"] == 200 and answer["json"]["numberMatched"] > 0
        # The place is free again.
        assert c.get(live.url + NEAR).status_code == 200
        assert metric(c.get(live.url + "/metrics").text, "twin_http_requests_in_flight") == 0


def test_work_past_its_deadline_stops_itself(
    served_store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A filter whose every comparison takes 0.1 s is stopped by the evaluator's own deadline
    check, long before its 40 comparisons would end."""
    real = cql2._Evaluator.compare
    compared: list[int] = []

    def slow_compare(self: Any, *args: Any) -> Any:
        compared.append(1)
        time.sleep(0.1)
        return real(self, *args)

    monkeypatch.setattr(cql2._Evaluator, "compare", slow_compare)
    flt = " OR ".join(f"status = 's{i}'" for i in range(40))
    with server(served_store, request_timeout_s=0.5) as live:
        res = httpx.get(f"{live.url}/collections/lights/items", params={"filter": flt}, timeout=20)
    assert res.status_code == 400
    body = res.json()
    assert body["code"] == "TimeLimitExceeded"
    assert "TWIN_REQUEST_TIMEOUT_S" in body["description"]
    assert "evaluating the filter" in body["description"]
    # Stopped after about 5 of the 40 comparisons (0.5 s of 0.1 s each), not after all of them.
    assert 3 <= len(compared) < 20


def test_work_that_does_not_check_is_answered_by_the_guard_and_keeps_its_place(
    served_store: Path, held_near: Gate
) -> None:
    with server(served_store, request_timeout_s=0.3, max_in_flight=1) as live:
        slow, answer = in_background(live.url + NEAR)
        slow.join(20)
        # Answered by the guard a moment after the deadline, while the work is still held.
        assert answer["status"] == 400
        assert answer["json"]["code"] == "TimeLimitExceeded"
        assert "TWIN_REQUEST_TIMEOUT_S" in answer["json"]["description"]
        assert not held_near.opened.is_set()
        with httpx.Client() as c:
            # The abandoned work still holds the worker's one place.
            assert c.get(live.url + "/collections/lights/items?limit=1").status_code == 503
            assert (
                metric(c.get(live.url + "/metrics").text, "twin_http_requests_timed_out_total") == 1
            )
            held_near.opened.set()
            deadline = time.monotonic() + 10
            while c.get(live.url + "/collections/lights/items?limit=1").status_code == 503:
                assert time.monotonic() < deadline, "the place was never given back"
                time.sleep(0.05)
