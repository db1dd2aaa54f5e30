"""Who is asking, resolved once per request.

`CallerMiddleware` resolves the caller of every HTTP request before anything else answers it
(routes, the lean tile and query paths, event streams, HTML pages, the web map's files) and
puts the result on the request's scope (`scope["state"]["caller"]`); everything that needs
to know reads that one result (`caller`, `caller_scope`, the `Scope` dependency) and never
works it out again. A request that reaches a path without it is refused (fail closed), so a
path added outside the middleware cannot leak.

Every caller is anonymous for now (`ServerSettings.anonymous_access`); API keys, roles and the
policy view change only `resolve`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request
from starlette.types import ASGIApp, Receive, Send
from starlette.types import Scope as AsgiScope

from layers.models import Access

STATE_KEY = "caller"


@dataclass(frozen=True)
class Caller:
    """The caller of a request as resolved once (`CallerMiddleware`)."""

    name: str
    """Who: `anonymous`, or the name of a key."""
    access: Access
    """The classification of the layers it may see."""


def resolve(scope: AsgiScope) -> Caller:
    """The caller of the request of ASGI `scope` (its app is `scope["app"]`)."""
    app: Any = scope["app"]
    return Caller("anonymous", app.state.anonymous_access)


class CallerMiddleware:
    """Resolves the caller of every HTTP request once, before the rest of the app sees it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: AsgiScope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            scope.setdefault("state", {})[STATE_KEY] = resolve(scope)
        await self.app(scope, receive, send)


def caller(request: Request) -> Caller:
    """The caller `CallerMiddleware` resolved for `request` (a request that did not pass
    through it is a bug: refused, never answered as someone)."""
    got = request.scope.get("state", {}).get(STATE_KEY)
    if not isinstance(got, Caller):
        raise RuntimeError(f"no caller resolved for {request.url.path}: CallerMiddleware missing")
    return got


async def caller_scope(request: Request) -> Access:
    """The `Access` scope of the caller of `request`, as resolved once."""
    return caller(request).access


Scope = Annotated[Access, Depends(caller_scope)]
"""Route parameter type giving the caller's scope."""
