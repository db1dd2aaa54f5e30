"""API keys and the audit log: who may call, and what they read and changed.

A key is a random secret shown once when made; only its SHA-256 is kept, so neither the file
nor a log can give it back. Each key has a role, and optionally a department, an area it is
limited to (grid cell codes or a GeoJSON polygon) and an expiry. The key ring lives in its own
SQLite file beside the store (`access.sqlite`), apart from the layers, so a long import never
makes a caller wait to be recognised, and every process reads the same file: a key revoked by
`twin keys revoke` is refused on the next request by every worker. Beside it, `access.generation`
holds a counter that every change of a key bumps (after it is committed); each process maps it
into memory and keeps the keys it has looked up until the counter moves, so recognising a key
costs a request a hash and a memory read, not a query.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import hashlib
import json
import mmap
import os
import secrets
import sqlite3
import struct
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from layers.models import Role, parse_utc, utc_stamp

KEYS_FILE = "access.sqlite"
PREFIX = "twin_"
"""Every key starts so: a secret pasted into a ticket or a log is easy to find."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS twin_keys (
    name TEXT PRIMARY KEY,
    hash TEXT NOT NULL UNIQUE,
    role TEXT NOT NULL,
    department TEXT,
    cells TEXT,
    area TEXT,
    expires TEXT,
    created TEXT NOT NULL,
    revoked TEXT
);
CREATE TABLE IF NOT EXISTS twin_audit (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    time TEXT NOT NULL,
    who TEXT NOT NULL,
    role TEXT NOT NULL,
    action TEXT NOT NULL,
    method TEXT NOT NULL,
    path TEXT NOT NULL,
    collections TEXT NOT NULL,
    status INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS twin_audit_who ON twin_audit (who, seq);
"""


class KeyRefused(ValueError):
    """A key cannot be made or changed as asked (a name in use, a bad role or date)."""


@dataclass(frozen=True)
class Key:
    """One API key as kept (never its secret)."""

    name: str
    role: Role
    department: str | None = None
    cells: tuple[str, ...] = ()
    """Grid cell codes the key is limited to (empty: no cell limit)."""
    area: str | None = None
    """GeoJSON geometry (lon/lat) the key is limited to, as text (None: no area limit)."""
    expires: str | None = None
    """UTC instant the key stops working (ISO text), or None."""
    created: str = ""
    revoked: str | None = None

    @property
    def limited(self) -> bool:
        """Whether the key sees and changes only part of the district."""
        return bool(self.cells) or self.area is not None

    def expired(self, now: dt.datetime) -> bool:
        """Whether the key has expired at `now`."""
        return self.expires is not None and parse_utc(self.expires) <= now

    def as_json(self) -> dict[str, Any]:
        """The key as listed to admins (never the secret or its hash)."""
        return {
            "name": self.name,
            "role": self.role.label,
            "department": self.department,
            "cells": list(self.cells),
            "area": None if self.area is None else json.loads(self.area),
            "expires": self.expires,
            "created": self.created,
            "revoked": self.revoked,
        }


@dataclass(frozen=True)
class AuditEntry:
    """One request worth recording: a read of restricted data, or a change."""

    time: str
    who: str
    role: str
    action: str
    """`read` (restricted data was answered), `write`, `keys` or `policy`."""
    method: str
    path: str
    collections: tuple[str, ...]
    status: int


def digest(secret: str) -> str:
    """What is kept of a key: the SHA-256 of its text (keys are 256 random bits, so a slow
    hash adds nothing)."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def parse_expiry(text: str) -> str:
    """An expiry as given (`2027-03-31`: the end of that day, UTC; or an ISO date-time) as the
    UTC instant it ends, ISO text."""
    text = text.strip()
    try:
        if len(text) == 10:
            day = dt.date.fromisoformat(text)
            end = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), dt.UTC)
            return utc_stamp(end)
        return utc_stamp(parse_utc(text))
    except ValueError:
        raise KeyRefused(f"expiry {text!r} is not a date (YYYY-MM-DD) or date-time") from None


class Ring(ABC):
    """What every key ring does, over SQL written with `?` placeholders; a backend gives the
    statements a connection (`_fetch`, `_run`, `_run_many`), says whether an error is a
    duplicate name, and keeps the generation counter (`_generation`, `_bump`)."""

    def __init__(self) -> None:
        self._made: dict[str, tuple[Key, dt.datetime | None] | None] = {}
        self._seen_generation = -1

    @abstractmethod
    def _fetch(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        """The rows of one query."""

    @abstractmethod
    def _run(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one statement in a transaction of its own; the rows it changed."""

    @abstractmethod
    def _run_many(self, sql: str, rows: list[tuple]) -> None:
        """Run one statement for each of `rows`, in one transaction."""

    @abstractmethod
    def _duplicate(self, exc: Exception) -> bool:
        """Whether `exc` is the backend's refusal of a name or hash already there."""

    @abstractmethod
    def _generation(self) -> int:
        """A number that moves whenever the ring changes, in any process (the keys looked up
        are kept while it stays)."""

    @abstractmethod
    def _bump(self) -> None:
        """Move the generation, for every process (after a change is committed)."""

    # -- keys --------------------------------------------------------------------------------

    def add(
        self,
        name: str,
        role: Role | str,
        *,
        department: str | None = None,
        cells: Sequence[str] = (),
        area: dict[str, Any] | None = None,
        expires: str | None = None,
        now: dt.datetime | None = None,
    ) -> tuple[Key, str]:
        """Make a key; returns it and its secret (shown once: only its hash is kept)."""
        name = name.strip()
        if not name or len(name) > 100 or any(c.isspace() for c in name):
            raise KeyRefused("a key's name is 1 to 100 characters without spaces")
        try:
            role = Role.parse(role)
        except ValueError as exc:
            raise KeyRefused(str(exc)) from None
        if role is Role.ANONYMOUS:
            raise KeyRefused("a key's role is viewer, engineer or admin")
        when = utc_stamp(now or dt.datetime.now(dt.UTC))
        key = Key(
            name,
            role,
            department.strip() or None if department else None,
            tuple(c.strip() for c in cells if c.strip()),
            None if area is None else json.dumps(area, separators=(",", ":")),
            None if expires is None else parse_expiry(expires),
            when,
        )
        secret = PREFIX + secrets.token_urlsafe(32)
        try:
            self._run(
                f"INSERT INTO twin_keys ({_KEY_COLUMNS}, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    key.name,
                    key.role.label,
                    key.department,
                    json.dumps(list(key.cells)) if key.cells else None,
                    key.area,
                    key.expires,
                    key.created,
                    None,
                    digest(secret),
                ),
            )
        except Exception as exc:
            if self._duplicate(exc):
                raise KeyRefused(
                    f"a key named {name!r} exists (revoked keys keep their name)"
                ) from None
            raise
        self._bump()
        return key, secret

    def keys(self) -> list[Key]:
        """Every key, revoked ones included, by name."""
        return [_key(r) for r in self._fetch(f"SELECT {_KEY_COLUMNS} FROM twin_keys ORDER BY name")]

    def revoke(self, name: str, now: dt.datetime | None = None) -> bool:
        """Revoke key `name` (refused from the next request on); False when there is no such
        key, or it was revoked already."""
        when = utc_stamp(now or dt.datetime.now(dt.UTC))
        done = self._run(
            "UPDATE twin_keys SET revoked = ? WHERE name = ? AND revoked IS NULL", (when, name)
        )
        self._bump()
        return done == 1

    def find(self, secret: str, now: dt.datetime | None = None) -> Key | None:
        """The key whose secret is `secret`, if it is known, not revoked and not expired (as
        the key ring is now: a key revoked by another process a moment ago is refused)."""
        hashed = digest(secret)
        generation = self._generation()
        if generation != self._seen_generation:
            self._made = {}
            self._seen_generation = generation
        try:
            held = self._made[hashed]
        except KeyError:
            held = self._made[hashed] = self._lookup(hashed)
            if len(self._made) > 10_000:  # unknown keys sent at random: bounded
                self._made = {}
        if held is None:
            return None
        key, ends = held
        if ends is not None and ends <= (now or dt.datetime.now(dt.UTC)):
            return None
        return key

    def _lookup(self, hashed: str) -> tuple[Key, dt.datetime | None] | None:
        rows = self._fetch(f"SELECT {_KEY_COLUMNS} FROM twin_keys WHERE hash = ?", (hashed,))
        if not rows:
            return None
        key = _key(rows[0])
        if key.revoked is not None:
            return None
        return key, _expiry(key.expires)

    # -- audit -------------------------------------------------------------------------------

    def record(self, entries: Iterable[AuditEntry]) -> None:
        """Append entries to the audit log (one transaction)."""
        rows = [
            (
                e.time,
                e.who,
                e.role,
                e.action,
                e.method,
                e.path,
                ",".join(e.collections),
                e.status,
            )
            for e in entries
        ]
        if rows:
            self._run_many(
                "INSERT INTO twin_audit (time, who, role, action, method, path, collections,"
                " status) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )

    def audit(
        self,
        *,
        who: str | None = None,
        action: str | None = None,
        collection: str | None = None,
        after: int = 0,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        """Audit entries after sequence `after`, oldest first, filtered."""
        sql = "SELECT seq, time, who, role, action, method, path, collections, status"
        sql += " FROM twin_audit WHERE seq > ?"
        params: list[Any] = [after]
        if who is not None:
            sql += " AND who = ?"
            params.append(who)
        if action is not None:
            sql += " AND action = ?"
            params.append(action)
        if collection is not None:
            sql += " AND (',' || collections || ',') LIKE ?"
            params.append(f"%,{collection},%")
        sql += " ORDER BY seq LIMIT ?"
        params.append(limit)
        names = ("seq", "time", "who", "role", "action", "method", "path", "collections")
        out = []
        for r in self._fetch(sql, params):
            entry = dict(zip(names, r[:8], strict=True))
            entry["collections"] = [c for c in str(r[7]).split(",") if c]
            entry["status"] = r[8]
            out.append(entry)
        return out

    @abstractmethod
    def close(self) -> None:
        """Release the ring's connections."""


class KeyRing(Ring):
    """The keys and the audit log in a SQLite file (`<store>/access.sqlite` beside a directory
    store, or `TWIN_KEYS_FILE`), shared by the processes of one machine."""

    def __init__(self, path: str | Path) -> None:
        super().__init__()
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._lock = threading.Lock()
        self._counter = _Generation(self.path.with_suffix(".generation"))
        # Processes starting together (the workers of one server) make the file one at a
        # time: switching it to WAL does not wait for another connection, it fails.
        with self._counter.locked():
            db = self._db()
            db.execute("PRAGMA journal_mode=WAL")  # kept in the file
            db.executescript(_SCHEMA)

    @classmethod
    def beside(cls, store_root: str | Path) -> KeyRing:
        """The key ring of the store at directory `store_root`."""
        return cls(Path(store_root) / KEYS_FILE)

    def _db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, isolation_level=None, timeout=30)
            db.execute("PRAGMA synchronous=NORMAL")
            self._local.db = db
        return db

    def _fetch(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        return self._db().execute(sql, tuple(params)).fetchall()

    def _run(self, sql: str, params: Sequence[Any] = ()) -> int:
        return self._db().execute(sql, tuple(params)).rowcount

    def _run_many(self, sql: str, rows: list[tuple]) -> None:
        db = self._db()
        with self._lock:
            db.execute("BEGIN IMMEDIATE")
            try:
                db.executemany(sql, rows)
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def _duplicate(self, exc: Exception) -> bool:
        return isinstance(exc, sqlite3.IntegrityError)

    def _generation(self) -> int:
        return self._counter.read()

    def _bump(self) -> None:
        self._counter.bump()

    def close(self) -> None:
        """Close this thread's connection (others close when their threads end)."""
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None


class _Generation:
    """A counter in a small file that every process maps into memory: bumped (under a file
    lock) after every change of the key ring, read by every request."""

    def __init__(self, path: Path) -> None:
        self.path = path
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if os.fstat(fd).st_size < 8:
                os.pwrite(fd, b"\0" * 8, 0)
            self._map = mmap.mmap(fd, 8)
        finally:
            os.close(fd)

    def read(self) -> int:
        return int(struct.unpack_from("<Q", self._map)[0])

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the ring's file lock (one process at a time)."""
        with open(self.path, "r+b") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            yield

    def bump(self) -> None:
        with self.locked():
            struct.pack_into("<Q", self._map, 0, self.read() + 1)
            self._map.flush()


_KEY_COLUMNS = "name, role, department, cells, area, expires, created, revoked"


def _expiry(text: str | None) -> dt.datetime | None:
    return None if text is None else parse_utc(text)


def _key(row: tuple) -> Key:
    name, role, department, cells, area, expires, created, revoked = row
    return Key(
        name,
        Role.parse(role),
        department,
        tuple(json.loads(cells)) if cells else (),
        area,
        expires,
        created,
        revoked,
    )
