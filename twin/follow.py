"""Every server process follows the store's change log, so an import by `twin import` in
another process, or an edit taken by another worker, is served here within a second, without
a restart.

`Follower` is one thread per process (started in the app's lifespan, so in each `--workers`
worker after the fork): every `TWIN_FOLLOW_INTERVAL_S` it asks the store for its revision and,
when it has moved, has the catalog apply the changes (`Catalog.follow`: the changed features
patched into their layers, made ready, swapped in, the tiles their old and new boxes touch
dropped), then remakes what queries derive from the changed layers.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable

from prometheus_client import Counter, Gauge

from layers.catalog import Applied, Catalog
from twin.metrics import Metrics

log = logging.getLogger(__name__)

JOIN_S = 5.0
"""How long stopping waits for a change being applied."""
GAP_S = 0.2
"""The least time between two steps unless hurried (`hurry`): changes arriving faster (a batch
of readings every few ms) are applied together, a step costing ~10 ms at 100k features
whatever it applies (a whole-layer pass per column changed, the layer made ready) and ~1 ms
more per 1,000 readings. Their events do not wait for it (`twin.events`)."""
REACH_S = 1.0
"""How long a request waits for its process to serve what its event streams were told
(`reach`)."""
SETTLE_S = 1.0
HISTORY_EVERY = 30
"""Of the settling rounds, those that also move readings into the indexed history."""
"""How often a process folds what was written append-only into the store (`Store.settle`):
any process may; the first to find something does."""


class Follower:
    """The thread keeping one process's catalog in step with the store's change log."""

    def __init__(
        self,
        catalog: Catalog,
        interval_s: float,
        metrics: Metrics,
        after: Callable[[Applied], None] | None = None,
    ) -> None:
        self.catalog = catalog
        self.interval_s = interval_s
        self.after = after
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._hurry = threading.Event()
        self.hurry_at = 2_500
        """Entries heard of (`heard`) beyond those applied past which a step is not put off."""
        self.newest = catalog.seq
        """The newest entry of the log this process knows of (applied, or `heard`)."""
        self._thread: threading.Thread | None = None
        self._settler: threading.Thread | None = None
        self.applied = Counter(
            "twin_changes_applied",
            "Change-log entries this process has applied to the layers it serves.",
            registry=metrics.registry,
        )
        Gauge(
            "twin_store_revision",
            "The newest change-log entry this process serves.",
            registry=metrics.registry,
        ).set_function(lambda: self.catalog.seq)

    def start(self) -> None:
        """Follow from now on (no thread when the interval is 0), and fold what was written
        append-only into the store every `SETTLE_S` on a thread of its own (folding holds the
        store a few ms at a time; applying must not wait behind it)."""
        if self.interval_s > 0 and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="twin-follow", daemon=True)
            self._thread.start()
            # A store that can say when any process changed it (PostgreSQL's LISTEN/NOTIFY)
            # wakes the follower at once; the interval stays the fallback.
            listen = getattr(self.catalog.store, "listen", None)
            if callable(listen):
                listen(self.wake)
            self._settler = threading.Thread(target=self._settle, name="twin-settle", daemon=True)
            self._settler.start()

    @property
    def running(self) -> bool:
        """Whether the thread follows the log (not with an interval of 0)."""
        return self._thread is not None

    def wake(self) -> None:
        """Look at the log now (this process has just written to the store)."""
        self._wake.set()

    def hurry(self) -> None:
        """Look at the log now, not after the gap between steps (`GAP_S`): a request waits."""
        self._hurry.set()
        self._wake.set()

    def heard(self, seq: int) -> None:
        """The log has moved to entry `seq` (written here or by another worker): look now,
        and without the gap when that is `hurry_at` entries or more ahead of what is
        applied."""
        self.newest = max(self.newest, seq)
        if seq - self.catalog.seq >= self.hurry_at:
            self._hurry.set()
        self._wake.set()

    async def reach(self, seq: int) -> None:
        """Return once this process serves the log up to entry `seq` (hurried), or after
        `REACH_S` (a follower stuck on a broken store must not hold every request), or at
        once when nothing is followed."""
        if self.catalog.seq >= seq or not self.running:
            return
        self.hurry()
        give_up = time.monotonic() + REACH_S
        while self.catalog.seq < seq and time.monotonic() < give_up:
            await asyncio.sleep(0.002)

    def stop(self) -> None:
        """Stop following (waits for a change being applied)."""
        self._stop.set()
        self._wake.set()
        self._hurry.set()
        if self._thread is not None:
            self._thread.join(JOIN_S)
            self._thread = None
        if self._settler is not None:
            self._settler.join(JOIN_S)
            self._settler = None

    def step(self) -> Applied:
        """Apply what changed since the last step (what the thread does every interval)."""
        if self.catalog.store.revision() <= self.catalog.seq:
            return Applied([])
        changes = self.catalog.follow()
        if changes:
            if self.after is not None:
                self.after(changes)
            self.applied.inc(len(changes))  # counted once all it makes stale is made again
        return changes

    def _run(self) -> None:
        while True:
            self._wake.wait(self.interval_s)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                if self.step():
                    self._hurry.wait(GAP_S)
                    self._hurry.clear()
            except Exception:  # the store busy or broken: say so, try again next time
                log.exception("applying the store's changes failed; trying again")

    def _settle(self) -> None:
        rounds = 0
        while not self._stop.wait(SETTLE_S):
            rounds += 1
            try:
                # The state every second, the history every HISTORY_EVERY seconds (see
                # `layers.gpkg_live.settle`).
                self.catalog.store.settle(history=rounds % HISTORY_EVERY == 0)
            except Exception:  # the store busy or broken: say so, try again next time
                log.exception("folding readings into the store failed; trying again")
