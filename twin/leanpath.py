"""Lean paths: ASGI middleware answering some plain GET requests of declared routes without
FastAPI's routing and dependency solving, which cost more CPU than a cached tile or a near
query. The tile and query modules each define one (`twin.tileserve.TileFastPath`,
`twin.routes.queries.QueryFastPath`) by saying which requests they settle and how.

A lean path sits inside the metrics, CORS and gzip middlewares and answers through the same
functions as the declared routes, so status, body and headers are the same; it labels the
request with the declared route for the metrics. Anything else, and any request it cannot
settle cleanly (every other error), goes on to the full app, which gives the answer and error
it always gives; a request over a limit or refused by a full worker is answered here, as the
app would, rather than paying for the same work twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi.responses import Response

from twin.errors import LimitExceeded, Overloaded
from twin.problems import problem


class LeanPath:
    """The shared mechanism: subclasses name their route `paths` and implement `answer`."""

    paths: tuple[str, ...] = ()
    """Paths of the declared routes whose requests this answers."""

    def __init__(self, app: Any, routes: Sequence[Any]) -> None:
        """`routes`: the declared routes, among them those of `paths`."""
        self.app = app
        self._routes = {r.path: r for r in routes if getattr(r, "path", None) in self.paths}
        if len(self._routes) != len(self.paths):
            raise ValueError(f"routes lack some of {self.paths}")

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        answer = None
        if scope["type"] == "http" and scope["method"] == "GET":
            try:
                answer = await self.answer(scope)
            except (LimitExceeded, Overloaded) as exc:
                refusal = problem(exc, scope["app"].state.guard.retry_after_s)
                assert refusal is not None
                await refusal(scope, receive, send)
                return
            except Exception:
                answer = None  # the full app answers (and reports) whatever went wrong
        if answer is None:
            await self.app(scope, receive, send)
            return
        path, response = answer
        scope["route"] = self._routes[path]
        await response(scope, receive, send)

    async def answer(self, scope: dict) -> tuple[str, Response] | None:
        """The declared route path and the response for a request this settles; None for
        any other request."""
        raise NotImplementedError
