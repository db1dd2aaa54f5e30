"""Who is asking, resolved once per request: key -> identity -> the policy's view.

`CallerMiddleware` resolves the caller of every HTTP request before anything else answers it
(routes, the lean tile and query paths, event streams, HTML pages, the web map's files):

- no `Authorization` header: the anonymous caller (it sees what `anonymous_access` allows);
- `Authorization: Bearer <key>`: the key's name, role, department and area, read from the key
  ring on every request (a key revoked in any process is refused on the next request);
- anything else, or a key unknown, revoked or expired: 401, never a silent downgrade.

The result (`Caller`, with its `View` of the layers under the current policy) goes on the
request's scope (`scope["state"]["caller"]`); everything that needs to know reads that one
result (`caller`, `caller_view`, the `Scope` and `CallerDep` dependencies) and never works it
out again. A request that reaches a path without it is refused (fail closed), so a path added
outside the middleware cannot leak.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import shapely
from fastapi import Depends, Request
from starlette.types import ASGIApp, Message, Receive, Send
from starlette.types import Scope as AsgiScope

from layers.catalog import Catalog
from layers.errors import UnknownCollection
from layers.keys import KEYS_FILE, AuditEntry, Key, KeyRing, Ring
from layers.layer import Layer
from layers.models import Access, Role, utc_stamp
from layers.policy import (
    GRIDS,
    NO_POLICY,
    READS,
    CellResolver,
    Policy,
    PolicyError,
    View,
    Who,
    area_geometry,
    cell_resolver,
)
from twin.errors import Forbidden
from twin.problems import error_response

log = logging.getLogger(__name__)

STATE_KEY = "caller"
WRITES = frozenset({"POST", "PUT", "PATCH", "DELETE"})
READ_ONLY_POSTS = ("/query/",)
"""POST paths that only read (a drawn shape too big for a URL)."""


@dataclass(frozen=True)
class Caller:
    """The caller of a request as resolved once (`CallerMiddleware`)."""

    name: str
    """Who: `anonymous`, or the name of a key."""
    role: Role
    view: View
    """What it may see under the policy in force."""
    key: Key | None = None
    refused: str | None = None
    """Why the credentials sent are not a valid key (answered 401 by `KeyRefusal`, after the
    rate limit of the caller's address: floods of bad keys are limited like anonymous ones)."""

    @property
    def department(self) -> str | None:
        return None if self.key is None else self.key.department

    @property
    def area(self) -> shapely.Geometry | None:
        """Where it may see and change features (None: everywhere)."""
        return self.view.area

    def may_write(self) -> None:
        """Raise `Forbidden` unless the caller may change data (engineer or admin)."""
        if self.role < Role.ENGINEER:
            who = "an anonymous caller" if self.key is None else f"a {self.role.label} key"
            raise Forbidden(f"{who} may not change data: an engineer or admin key may")

    def may_administer(self) -> None:
        """Raise `Forbidden` unless the caller is an admin."""
        if self.role < Role.ADMIN:
            raise Forbidden("only an admin key may do this")


class PolicyFile:
    """The policy in force, from `TWIN_POLICY`: read at start (a bad file stops the start),
    then looked at again at most every `check_s` seconds; a changed file is reloaded, and a bad
    one is refused (logged with the line at fault) while the policy before it stays."""

    def __init__(self, path: Path | None, check_s: float = 1.0) -> None:
        self.path = path
        self.check_s = check_s
        self.error: str | None = None
        self._seen: tuple[int, int] | None = None
        self._checked = time.monotonic()
        self._lock = threading.Lock()
        self.policy = NO_POLICY if path is None else Policy.load(path)
        self._seen = self._stamp()

    def _stamp(self) -> tuple[int, int] | None:
        if self.path is None:
            return None
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size)

    def current(self) -> Policy:
        """The policy in force now (reloaded first if the file changed)."""
        if self.path is None:
            return self.policy
        now = time.monotonic()
        if now - self._checked < self.check_s:
            return self.policy
        with self._lock:
            if now - self._checked < self.check_s:
                return self.policy
            self._checked = now
            stamp = self._stamp()
            if stamp != self._seen and stamp is not None:
                self._seen = stamp
                self.reload()
        return self.policy

    def reload(self) -> bool:
        """Read the file again; False (the old policy kept, `error` set) when it is bad."""
        if self.path is None:
            return True
        try:
            self.policy = Policy.load(self.path)
        except PolicyError as exc:
            self.error = str(exc)
            log.error("policy not reloaded, the one before stays: %s", exc)
            return False
        self.error = None
        log.info("policy reloaded from %s (%s)", self.path, self.policy.generation)
        return True


class Views:
    """The views of the callers, made once per (policy, role, department, area): callers alike
    share one view, so they share its filtered layers and cached tiles."""

    def __init__(self, keep: int = 256) -> None:
        self.keep = keep
        self._held: OrderedDict[tuple, View] = OrderedDict()
        self._lock = threading.Lock()

    def of(self, policy: Policy, who: Who, key: Key | None, catalog: Catalog | None) -> View:
        cells = key.cells if key is not None else ()
        area = key.area if key is not None else None
        # Cells (the key's, the policy's areas') are resolved in the grid as it is now.
        uses_grid = catalog is not None and (cells or policy.areas)
        grid_rev = catalog.revision(GRIDS) if uses_grid and catalog is not None else 0
        ident = (policy.generation, who, cells, area, grid_rev)
        got = self._held.get(ident)
        if got is not None:
            return got
        with self._lock:
            got = self._held.get(ident)
            if got is None:
                limit = hashlib.sha256(repr((cells, area, grid_rev)).encode()).hexdigest()[:10]
                got = View(
                    policy,
                    who,
                    area=None if area is None else area_geometry_text(area),
                    cells=cells,
                    resolve=None if catalog is None else _cells_of(catalog),
                    key="|".join(
                        (
                            policy.generation,
                            who.role.label,
                            who.department or "",
                            who.anonymous.label,
                            limit if (cells or area or policy.areas) else "",
                        )
                    ),
                )
                self._held[ident] = got
                while len(self._held) > self.keep:
                    self._held.popitem(last=False)
            return got


def area_geometry_text(text: str) -> shapely.Geometry:
    """A key's area as kept (GeoJSON text) as a geometry."""
    return area_geometry(json.loads(text))


def _cells_of(catalog: Catalog) -> CellResolver:
    def grid() -> Layer | None:
        try:
            return catalog.layer(GRIDS, Access.RESTRICTED)
        except UnknownCollection:
            return None

    return cell_resolver(grid)


# -- the audit log -----------------------------------------------------------------------------


class Auditor:
    """Collects audit entries and writes them to the key ring's log in batches (a thread,
    every second), so recording costs a request an append."""

    def __init__(self, ring: Ring, every_s: float = 1.0) -> None:
        self.ring = ring
        self.every_s = every_s
        self._pending: list[AuditEntry] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="twin-audit", daemon=True)
        self._thread.start()

    def add(self, entry: AuditEntry) -> None:
        with self._lock:
            self._pending.append(entry)

    def flush(self) -> None:
        with self._lock:
            batch, self._pending = self._pending, []
        if batch:
            try:
                self.ring.record(batch)
            except Exception:
                log.exception("audit entries not written")
                with self._lock:
                    self._pending[:0] = batch

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self.flush()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.flush()


# -- resolution --------------------------------------------------------------------------------


class Unauthorized(Exception):
    """A request with credentials that are not a valid key: 401."""


def resolve(scope: AsgiScope) -> Caller:
    """The caller of the request of ASGI `scope` (its app is `scope["app"]`); `Unauthorized`
    for credentials that are not a valid key."""
    app: Any = scope["app"]
    state = app.state
    header = None
    for k, v in scope.get("headers", ()):
        if k == b"authorization":
            header = v.decode("latin-1")
            break
    policy = state.policy.current()
    catalog = getattr(state, "catalog", None)
    if header is None:
        who = Who(Role.ANONYMOUS, None, state.anonymous_access)
        return Caller("anonymous", Role.ANONYMOUS, state.views.of(policy, who, None, catalog))
    kind, _, secret = header.strip().partition(" ")
    secret = secret.strip()
    if kind.lower() != "bearer" or not secret:
        raise Unauthorized("send the key as 'Authorization: Bearer <key>'")
    ring: Ring | None = state.keys
    key = None if ring is None else ring.find(secret)
    if key is None:
        raise Unauthorized("the key is unknown, revoked or expired")
    who = Who(key.role, key.department, state.anonymous_access)
    return Caller(key.name, key.role, state.views.of(policy, who, key, catalog), key)


class CallerMiddleware:
    """Resolves the caller of every HTTP request once, before the rest of the app sees it;
    records restricted reads and every change in the audit log."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: AsgiScope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            who = resolve(scope)
        except Unauthorized as exc:
            # Resolved as the anonymous caller of its address, marked refused: the rate limit
            # counts it, then `KeyRefusal` answers 401 (never an answer as anonymous).
            scope.setdefault("state", {})[STATE_KEY] = _refused(scope, str(exc))
            await self.app(scope, receive, send)
            return
        scope.setdefault("state", {})[STATE_KEY] = who
        keyed = who.key is not None
        auditor: Auditor | None = getattr(scope["app"].state, "auditor", None)
        # Changes are recorded, and reads by those who may be shown restricted data (a viewer
        # never is).
        audited = (
            auditor is not None
            and keyed
            and (who.role >= Role.ENGINEER or scope["method"] in WRITES)
        )
        seen: set[str] = set()
        status = 500

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = _private(message.get("headers", []), keyed)
            await send(message)

        token = READS.set(seen) if audited else None
        try:
            await self.app(scope, receive, sending)
        finally:
            if token is not None:
                READS.reset(token)
                assert auditor is not None
                _audit(auditor, who, scope, seen, status)


def _refused(scope: AsgiScope, why: str) -> Caller:
    state = scope["app"].state
    policy = state.policy.current()
    who = Who(Role.ANONYMOUS, None, Access.PUBLIC)
    view = state.views.of(policy, who, None, getattr(state, "catalog", None))
    return Caller("anonymous", Role.ANONYMOUS, view, refused=why)


class KeyRefusal:
    """Answers 401 a request whose credentials are not a valid key (see `Caller.refused`);
    runs inside the rate limits, before anything else answers."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: AsgiScope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            who = scope.get("state", {}).get(STATE_KEY)
            if who is None or who.refused is not None:
                why = "no caller resolved" if who is None else who.refused
                answer = error_response(401, "InvalidKey", why)
                answer.headers["WWW-Authenticate"] = 'Bearer realm="twin", error="invalid_token"'
                await answer(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _private(headers: list[tuple[bytes, bytes]], keyed: bool) -> list[tuple[bytes, bytes]]:
    """Answer headers telling caches that the answer depends on who asks (`Vary:
    Authorization`), and that an answer to a key is the key holder's alone (`private`): no
    browser or proxy cache hands one caller's answer to another."""
    out = []
    vary = False
    for k, v in headers:
        if k == b"vary":
            vary = True
            if b"authorization" not in v.lower():
                v = v + b", Authorization"
        elif k == b"cache-control" and keyed:
            v = v.replace(b"public", b"private")
        out.append((k, v))
    if not vary:
        out.append((b"vary", b"Authorization"))
    return out


def _audit(auditor: Auditor, who: Caller, scope: AsgiScope, seen: set[str], status: int) -> None:
    method = scope["method"]
    path = scope["path"]
    write = method in WRITES and not path.startswith(READ_ONLY_POSTS)
    secret = sorted(seen)
    if not write and not secret:
        return
    auditor.add(
        AuditEntry(
            utc_stamp(dt.datetime.now(dt.UTC)),
            who.name,
            who.role.label,
            "write" if write else "read",
            method,
            path,
            tuple(secret if not write else sorted(seen) or _collection_of(path)),
            status,
        )
    )


def _collection_of(path: str) -> list[str]:
    parts = path.strip("/").split("/")
    if len(parts) >= 2 and parts[0] == "collections":
        return [parts[1]]
    return []


def caller(request: Request) -> Caller:
    """The caller `CallerMiddleware` resolved for `request` (a request that did not pass
    through it is a bug: refused, never answered as someone)."""
    got = request.scope.get("state", {}).get(STATE_KEY)
    if not isinstance(got, Caller):
        raise RuntimeError(f"no caller resolved for {request.url.path}: CallerMiddleware missing")
    return got


async def caller_view(request: Request) -> View:
    """The `View` of the caller of `request`, as resolved once."""
    return caller(request).view


Scope = Annotated[View, Depends(caller_view)]
"""Route parameter type giving the caller's view of the layers."""
CallerDep = Annotated[Caller, Depends(caller)]
"""Route parameter type giving the caller."""


def open_key_ring(configured: Path | None, root: Path | None, database: str | None) -> Ring:
    """The key ring of a deployment: `configured` (`TWIN_KEYS_FILE`), else the one beside a
    directory store (`root`), else the database store's own (`database`, a URL: every server
    on every machine shares it), else one in the user's data folder."""
    if configured is not None:
        return KeyRing(configured)
    if root is not None:
        return KeyRing.beside(root)
    if database is not None:
        from layers.keys_pg import DatabaseKeyRing

        return DatabaseKeyRing(database)
    base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return KeyRing(base / "twin" / KEYS_FILE)


def writer(request: Request) -> Caller:
    """The caller of `request`, if it may change data (`Forbidden` otherwise)."""
    who = caller(request)
    who.may_write()
    return who


def admin(request: Request) -> Caller:
    """The caller of `request`, if it is an admin (`Forbidden` otherwise)."""
    who = caller(request)
    who.may_administer()
    return who


Writer = Annotated[Caller, Depends(writer)]
"""Route parameter type: the caller, who must be an engineer or admin (checked before the
request's body is read)."""
Admin = Annotated[Caller, Depends(admin)]
"""Route parameter type: the caller, who must be an admin."""
