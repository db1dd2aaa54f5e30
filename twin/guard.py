"""The request guard: how many requests a worker works on at once, and for how long each.

`Guard` is ASGI middleware in front of the routes and the lean paths:

- **Load shedding.** A worker admits at most `TWIN_MAX_IN_FLIGHT` requests at once; one more is
  answered 503 `Overloaded` with `Retry-After` at once, instead of waiting its turn behind a
  queue that only grows under overload. `/healthz` and `/metrics` are always answered, and so
  are tiles held in the cache: a tile request is admitted (`Admission.admit`) only when it
  must be rendered.
- **A deadline per request** (`TWIN_REQUEST_TIMEOUT_S`, `twin.budget`; a plain tile request,
  bounded by the tile budgets, has none): the work checks it and
  stops itself with a 400 `TimeLimitExceeded`. Should some step not check it in time, the
  guard answers that 400 itself a moment after the deadline and drops whatever the work
  answers later; the request keeps its place among those admitted until its work has ended,
  so abandoned work is still counted against the worker's capacity.

The admission count lives on the event loop (entered and left there only), so it needs no lock.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from prometheus_client import Counter, Gauge

from twin import budget
from twin.errors import Overloaded, TimeLimitExceeded
from twin.metrics import Metrics
from twin.problems import problem
from twin.settings import GuardSettings

ALWAYS_ANSWERED = frozenset({"/healthz", "/metrics", "/events"})
"""Paths answered whatever the load: health checks and scrapes must see an overloaded worker;
event streams (long-lived by design, capped by `TWIN_MAX_STREAMS` of their own)."""
_TILE = re.compile(r"/tiles/[^/]+/\d+/\d+/\d+$")
"""Tile paths: admitted by the tile server on a cache miss only (`Admission.admit`)."""
GRACE_S = 0.5
"""How long after its deadline a request's work may take to stop before the guard answers."""


class Admission:
    """The requests a worker works on now, up to `limit`."""

    def __init__(self, settings: GuardSettings, metrics: Metrics) -> None:
        self.limit = settings.max_in_flight
        self.retry_after_s = settings.retry_after_s
        self.in_flight = 0
        self.shed = Counter(
            "twin_http_requests_shed",
            "Requests answered 503 at once because the worker was full (TWIN_MAX_IN_FLIGHT).",
            registry=metrics.registry,
        )
        Gauge(
            "twin_http_requests_in_flight",
            "Requests this worker is working on now (admitted and not finished).",
            registry=metrics.registry,
        ).set_function(lambda: self.in_flight)

    def try_enter(self) -> bool:
        """Take a place, or count a shed request and say no."""
        if self.in_flight >= self.limit:
            self.shed.inc()
            return False
        self.in_flight += 1
        return True

    def leave(self) -> None:
        """Give a place back."""
        self.in_flight -= 1

    def refusal(self) -> Overloaded:
        """The error of a request that found the worker full."""
        return Overloaded(
            f"the server is working on as many requests as it may ({self.limit}, "
            f"TWIN_MAX_IN_FLIGHT); retry in {self.retry_after_s} s"
        )

    @contextmanager
    def admit(self) -> Iterator[None]:
        """Hold a place for the block; `Overloaded` when there is none (call on the event loop)."""
        if not self.try_enter():
            raise self.refusal()
        try:
            yield
        finally:
            self.leave()


class Guard:
    """ASGI middleware: admission and the deadline of every HTTP request (see the module)."""

    def __init__(
        self, app: Any, settings: GuardSettings, admission: Admission, metrics: Metrics
    ) -> None:
        self.app = app
        self.timeout_s = settings.request_timeout_s
        self.answer_bytes = settings.max_answer_bytes
        self._full: tuple[int, list[tuple[bytes, bytes]], bytes] | None = None
        self.admission = admission
        self.timed_out = Counter(
            "twin_http_requests_timed_out",
            "Requests answered by the guard because their work ran past the deadline "
            "(TWIN_REQUEST_TIMEOUT_S) without stopping itself.",
            registry=metrics.registry,
        )

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] in ALWAYS_ANSWERED:
            await self.app(scope, receive, send)
            return
        admitted = _TILE.search(scope["path"]) is None
        if not admitted and not scope["query_string"]:
            # A plain tile: answered from the cache, or rendered within the tile budgets once
            # the tile server admits it; no deadline to keep (the cheapest answer there is).
            await self.app(scope, receive, send)
            return
        if admitted and not self.admission.try_enter():
            # The same few bytes every time, made once: a full worker spends least on them.
            if self._full is None:
                full = problem(self.admission.refusal(), self.admission.retry_after_s)
                assert full is not None
                self._full = (full.status_code, full.raw_headers, bytes(full.body))
            status, headers, body = self._full
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        try:
            with budget.deadline(self.timeout_s, self.answer_bytes) as deadline:
                await self._within(deadline, scope, receive, send)
        finally:
            if admitted:
                self.admission.leave()

    async def _within(
        self, deadline: budget.Deadline, scope: dict, receive: Any, send: Any
    ) -> None:
        """Run the request; answer 400 for it if its work is still going a moment past the
        deadline without having started its answer, and drop that work's answer."""
        state = {"started": False, "answered_here": False}

        async def guarded(message: dict) -> None:
            if state["answered_here"]:
                return
            if message["type"] == "http.response.start":
                state["started"] = True
            await send(message)

        async def answer_late() -> None:
            if state["started"]:
                return
            state["answered_here"] = True
            self.timed_out.inc()
            late = TimeLimitExceeded(
                f"the request ran past its budget of {deadline.seconds:g} s "
                f"({budget.SETTING}) and was stopped; ask for less (a smaller area, radius, "
                "filter or limit)"
            )
            await self._answer(late, scope, receive, send)

        loop = asyncio.get_running_loop()
        tasks: set[asyncio.Task[None]] = set()

        def fire() -> None:
            task = loop.create_task(answer_late())
            tasks.add(task)
            task.add_done_callback(tasks.discard)

        timer = loop.call_at(loop.time() + deadline.seconds + GRACE_S, fire)
        try:
            await self.app(scope, receive, guarded)
        finally:
            timer.cancel()
            for task in list(tasks):
                await task

    async def _answer(self, exc: Exception, scope: dict, receive: Any, send: Any) -> None:
        response = problem(exc, self.admission.retry_after_s)
        assert response is not None
        await response(scope, receive, send)
