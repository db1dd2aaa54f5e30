"""The key ring in a PostgreSQL database (the PostGIS store's own): every server of a
deployment, on any machine, reads the same keys and writes one audit log.

A process keeps the keys it has looked up until the ring changes: every change is announced
with `NOTIFY twin_keys`, and a thread of each process `LISTEN`s (a revocation reaches every
process within the notification's way, milliseconds). While that thread is not listening
(the database unreachable, the connection being made again), nothing is kept: every request
reads the ring.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from layers.errors import StoreError
from layers.keys import Ring
from layers.pg_listen import Listener

CHANNEL = "twin_keys"
CONNECT_TIMEOUT_S = 5

_SCHEMA = """
CREATE TABLE IF NOT EXISTS twin_keys (
    name text PRIMARY KEY,
    hash text NOT NULL UNIQUE,
    role text NOT NULL,
    department text,
    cells text,
    area text,
    expires text,
    created text NOT NULL,
    revoked text
);
CREATE TABLE IF NOT EXISTS twin_audit (
    seq bigserial PRIMARY KEY,
    time text NOT NULL,
    who text NOT NULL,
    role text NOT NULL,
    action text NOT NULL,
    method text NOT NULL,
    path text NOT NULL,
    collections text NOT NULL,
    status integer NOT NULL
);
CREATE INDEX IF NOT EXISTS twin_audit_who ON twin_audit (who, seq);
"""


def _pg(sql: str) -> str:
    """SQL written with `?` placeholders (the ring's) in psycopg's `%s`."""
    return sql.replace("%", "%%").replace("?", "%s")


class DatabaseKeyRing(Ring):
    """The keys and the audit log in the database at `url` (tables `twin_keys`,
    `twin_audit`)."""

    def __init__(self, url: str, location: str | None = None) -> None:
        super().__init__()
        self._url = url
        self.location = location or url.split("@")[-1]
        try:
            with psycopg.connect(url, connect_timeout=CONNECT_TIMEOUT_S, autocommit=True) as db:
                db.execute("SELECT pg_advisory_lock(hashtext('twin_keys'))")
                try:
                    db.execute(_SCHEMA)
                finally:
                    db.execute("SELECT pg_advisory_unlock(hashtext('twin_keys'))")
        except psycopg.Error as exc:
            raise StoreError(f"cannot open the key ring of {self.location}: {exc}") from None
        self._pool = ConnectionPool(
            url,
            min_size=1,
            max_size=2,
            kwargs={"connect_timeout": CONNECT_TIMEOUT_S, "autocommit": True},
            timeout=CONNECT_TIMEOUT_S * 2,
            open=True,
            name="twin-keys",
            check=ConnectionPool.check_connection,
        )
        self._changes = 0
        self._uncached = itertools.count(-2, -1)
        self._listener = Listener(url, CHANNEL, self._heard, "twin-keys-listen")

    # -- the backend -------------------------------------------------------------------------

    def _fetch(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        try:
            with self._pool.connection() as db:
                return db.execute(_pg(sql), tuple(params)).fetchall()
        except (psycopg.Error, PoolTimeout) as exc:
            raise StoreError(f"the key ring of {self.location}: {exc}") from None

    def _run(self, sql: str, params: Sequence[Any] = ()) -> int:
        try:
            with self._pool.connection() as db:
                return db.execute(_pg(sql), tuple(params)).rowcount
        except psycopg.errors.UniqueViolation:
            raise
        except (psycopg.Error, PoolTimeout) as exc:
            raise StoreError(f"the key ring of {self.location}: {exc}") from None

    def _run_many(self, sql: str, rows: list[tuple]) -> None:
        try:
            with self._pool.connection() as db, db.transaction(), db.cursor() as cur:
                cur.executemany(_pg(sql), rows)
        except (psycopg.Error, PoolTimeout) as exc:
            raise StoreError(f"the key ring of {self.location}: {exc}") from None

    def _duplicate(self, exc: Exception) -> bool:
        return isinstance(exc, psycopg.errors.UniqueViolation)

    def _generation(self) -> int:
        # Not listening: a number never seen before, so nothing looked up is kept.
        return self._changes if self._listener.listening else next(self._uncached)

    def _bump(self) -> None:
        self._changes += 1  # this process at once; the others when told
        with self._pool.connection() as db:
            db.execute(f"NOTIFY {CHANNEL}")

    def _heard(self, db: psycopg.Connection) -> None:
        """The ring changed (or may have, while not listening): drop what was looked up."""
        self._changes += 1

    def close(self) -> None:
        """Stop listening and close the pool."""
        self._listener.stop()
        self._pool.close()
