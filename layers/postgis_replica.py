"""Reads from a streaming replica of the PostGIS store's database, when it has what they must see.

The store notes the primary's WAL position (`pg_current_wal_flush_lsn()`) after each of its
commits, after each change another process announces, and at each read the primary served: the
*floor*. A read goes to the replica only when the replica has replayed up to the floor, so it
sees this process's own writes and never state older than what this process has already read
(revisions stay monotonic, a follower never skips an entry); otherwise to the primary. The
replica's position is looked up at most every `CHECK_S`. A replica that is unreachable, not in
recovery, not streaming, or lagging more than `max_lag_s` (WAL received but not replayed, and its
last replayed commit older than that) is skipped for `RETRY_S`, logged once, then looked at again.
"""

from __future__ import annotations

import logging
import threading
import time

import psycopg
from psycopg_pool import ConnectionPool

log = logging.getLogger(__name__)

CHECK_S = 0.1
"""How long the replica's replayed position is trusted before it is looked up again."""
RETRY_S = 1.0
"""How long a replica found unusable is left alone before it is looked at again."""

FLUSH_LSN = "SELECT (pg_current_wal_flush_lsn() - '0/0'::pg_lsn)::bigint"
"""The primary's WAL position every committed (synchronous) transaction ends before."""
_LOOK = """
SELECT pg_is_in_recovery(), (pg_last_wal_replay_lsn() - '0/0'::pg_lsn)::bigint,
  EXISTS (SELECT 1 FROM pg_stat_wal_receiver),
  CASE WHEN pg_last_wal_receive_lsn() IS NOT DISTINCT FROM pg_last_wal_replay_lsn() THEN 0
  ELSE coalesce(extract(epoch FROM now() - pg_last_xact_replay_timestamp()), 0)::float8 END
"""


class Replica:
    """The replica at `url` (`location`: the same without its password) and what the process
    knows it must have replayed before it may serve a read."""

    def __init__(
        self,
        url: str,
        location: str,
        *,
        max_lag_s: float,
        pool_size: int,
        connect_timeout: float,
    ) -> None:
        self._url = url
        self.location = location
        self.max_lag_s = max_lag_s
        self._pool_size = pool_size
        self._timeout = connect_timeout
        self._pool: ConnectionPool | None = None
        self._probe: psycopg.Connection | None = None
        self._lock = threading.Lock()  # one look at a time
        self._floor_lock = threading.Lock()
        self._floor = 0
        self._replayed = -1  # the position it had replayed when last looked at (-1: unusable)
        self._checked = float("-inf")
        self._skip_until = 0.0
        self._down: str | None = None
        self.served = 0
        """Reads the replica served (a measure; not used to route)."""

    def saw(self, lsn: int) -> None:
        """The primary had reached `lsn` when this process last learnt something from it."""
        with self._floor_lock:
            self._floor = max(self._floor, int(lsn))

    def pool(self) -> ConnectionPool | None:
        """The replica's pool when it may serve a read now; None: read from the primary."""
        now = time.monotonic()
        if now - self._checked >= CHECK_S and self._lock.acquire(blocking=False):
            try:
                self._look(now)
            finally:
                self._lock.release()
        pool = self._pool
        # `_replayed` only grows while usable (replay is monotonic), so a value looked up a
        # moment ago is a lower bound of what a transaction begun now will see.
        if pool is None or self._replayed < self._floor:
            return None
        return pool

    def failed(self, why: str) -> None:
        """A read on the replica failed on the connection: skip it for a while."""
        with self._lock:
            self._skip(f"failed ({why})", time.monotonic(), close=True)

    def _look(self, now: float) -> None:
        self._checked = now
        if now < self._skip_until:
            return
        try:
            if self._probe is None or self._probe.closed:
                # Briefly: the read that looks waits for it.
                timeout = min(2, max(1, int(self._timeout)))
                self._probe = psycopg.connect(self._url, autocommit=True, connect_timeout=timeout)
            row = self._probe.execute(_LOOK).fetchone()
        except psycopg.Error as exc:
            text = str(exc).strip().splitlines()
            self._skip(f"unreachable ({text[0] if text else type(exc).__name__})", now, True)
            return
        recovering, replayed, streaming, lag = row or (False, -1, False, 0.0)
        if not recovering:
            self._skip("is not in recovery (not a replica)", now)
        elif not streaming:
            self._skip("is not streaming from the primary", now)
        elif lag > self.max_lag_s:
            self._skip(f"lags {lag:.1f} s (more than {self.max_lag_s:g} s)", now)
        else:
            if self._pool is None:
                self._pool = ConnectionPool(
                    self._url,
                    min_size=1,
                    max_size=self._pool_size,
                    kwargs={"options": "-c TimeZone=UTC", "connect_timeout": int(self._timeout)},
                    timeout=min(self._timeout, 2.0),  # a replica gone: soon to the primary
                    open=True,
                    name="twin-replica",
                    check=ConnectionPool.check_connection,
                )
            if self._down is not None:
                log.warning("replica %s is usable again: reads go to it", self.location)
                self._down = None
            self._replayed = int(replayed)

    def _skip(self, why: str, now: float, close: bool = False) -> None:
        self._replayed = -1
        self._skip_until = now + RETRY_S
        if close:
            self._close()
        if self._down is None:
            log.warning(
                "replica %s %s: reads go to the primary (looking again every %g s)",
                self.location,
                why,
                RETRY_S,
            )
        self._down = why

    def _close(self) -> None:
        probe, pool = self._probe, self._pool
        self._probe = self._pool = None
        if probe is not None:
            probe.close()
        if pool is not None:
            pool.close(timeout=1)

    def close(self) -> None:
        """Close the replica's connections."""
        with self._lock:
            self._close()
