"""Events pushed to maps and systems: every change this process has applied, as one event.

`ChangeFeed` holds the newest changes (published by its `Follower` after `Catalog.follow`,
and a batch of readings as soon as it is written: `early`), wakes the `/events` streams
waiting for them, and serves a stream that resumes from an older sequence number
(`Last-Event-ID`, after a reconnect or a restart) from the store's change log first.

A batch of readings is told to the streams when the worker that took it has written it (and,
through `twin.peers`, when the other workers hear of it), not once each has applied it: under
a stream of readings a worker applies several batches at a time, and the events must not
wait for that. Events go out in the order of the log, each once: a batch heard of early
waits for the entries before it. A request reading the data after an event waits until its
process serves what the event told (`twin.dependencies.get_catalog`), so a client that
fetches the feature on an event gets the new state.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import threading
from collections.abc import AsyncIterator, Callable, Container, Iterator
from typing import Any

import numpy as np

from layers.catalog import Applied, AppliedRun, Catalog, Part
from layers.models import Bounds, Change, StateRun

KEEP = 50_000
"""Changes held in memory for the streams (~200 bytes each; seconds of a stream of readings);
older ones are read back from the store, a log row (a batch) at a time."""
STORE_PAGE = 100
"""Rows of the change log read back at a time (a row of readings holds a batch's entries)."""
WAIT_S = 1.0
"""How long a stream waits for news before looking again, and whether the server is stopping
(pings are FastAPI's)."""


def event_data(change: Change) -> dict[str, Any]:
    """The JSON of one event: what changed, and where it was and is."""
    return {
        "seq": change.seq,
        "collection": change.collection,
        "id": change.id,
        "kind": change.kind.value,
        "properties": None if change.properties is None else list(change.properties),
        "old_bbox": None if change.old is None else list(change.old),
        "new_bbox": None if change.new is None else list(change.new),
        "time": change.time.isoformat().replace("+00:00", "Z"),
    }


def run_events(run: AppliedRun, rows: np.ndarray) -> Iterator[tuple[int, dict[str, Any]]]:
    """The events of entries `rows` of a run of readings, with their sequence numbers (the
    same JSON as `event_data` of each entry's `Change`)."""
    r = run.run
    time = r.time.isoformat().replace("+00:00", "Z")
    boxes = run.boxes
    for k in rows.tolist():
        box = None if np.isnan(boxes[k, 0]) else boxes[k].tolist()
        yield (
            r.seq + k,
            {
                "seq": r.seq + k,
                "collection": r.collection,
                "id": r.ids[k],
                "kind": "updated",
                "properties": list(r.sets[k]),
                "old_bbox": box,
                "new_bbox": box,
                "time": time,
            },
        )


class ChangeFeed:
    """The changes one process applied, for its event streams (see the module)."""

    def __init__(self, catalog: Catalog, keep: int = KEEP) -> None:
        self.catalog = catalog
        self.keep = keep
        self._recent: list[Part] = []
        self._lasts: list[int] = []
        self._sizes: list[int] = []
        self._held = 0
        self._lock = threading.Lock()
        self.floor = catalog.seq
        """Changes after this one are all in memory; up to it, in the store's log."""
        self.released = catalog.seq
        """The newest change the streams may be sent: every one up to it is told."""
        self._early: dict[int, AppliedRun] = {}
        """Runs of readings heard of before the entries ahead of them, by first entry."""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._news: asyncio.Event | None = None
        self.streams = 0

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Wake streams on `loop` (the serving event loop) from now on."""
        self._loop = loop
        self._news = asyncio.Event()

    def publish(self, changes: Applied | list[Change], upto: int | None = None) -> None:
        """Changes just applied, oldest first (from any thread): every entry of the log up to
        `upto` (default: the last of them) is known then. What was told early is not told
        again."""
        parts: list[Part] = changes.parts if isinstance(changes, Applied) else list(changes)
        with self._lock:
            told = False
            for p in parts:
                told |= self._release(p)
            last = max([_last(p) for p in parts], default=self.released)
            self.released = max(self.released, last if upto is None else max(upto, last))
            told |= self._continue()
        if told:
            self._told()

    def early(self, runs: list[AppliedRun]) -> None:
        """Runs of readings just written, before this process applied them (from any thread):
        told once every entry before them is (those of another worker's batches may come
        later, or from the store through `publish`)."""
        with self._lock:
            for r in runs:
                if r.last > self.released:
                    self._early[r.seq] = r
            told = self._continue()
        if told:
            self._told()

    def written(self, runs: list[StateRun]) -> None:
        """Runs of readings this or another worker has just written, told `early` with each
        feature's box as served here (a run naming a feature not held here yet is told once
        applied). Reads the layers held: call off the event loop."""
        told = [r for r in map(self.catalog.boxed, runs) if r is not None]
        if told:
            self.early(told)

    def _continue(self) -> bool:
        """Tell the runs heard of early that follow on what is told (under the lock)."""
        told = False
        for seq in sorted(self._early):
            r = self._early[seq]
            if r.seq > self.released + 1:
                break
            del self._early[seq]
            told |= self._release(r)
        return told

    def _release(self, p: Part) -> bool:
        """Hold `p` for the streams, without what is told already (under the lock)."""
        if _last(p) <= self.released:
            return False
        if isinstance(p, AppliedRun) and p.seq <= self.released:
            p = p.after(self.released)
        size = 1 if isinstance(p, Change) else len(p.run.ids)
        self._recent.append(p)
        self._lasts.append(_last(p))
        self._sizes.append(size)
        self._held += size
        self.released = _last(p)
        if self._held > 2 * self.keep:
            cut = 0
            while self._held > self.keep and cut < len(self._recent) - 1:
                self._held -= self._sizes[cut]
                cut += 1
            if cut:
                self.floor = self._lasts[cut - 1]
                del self._recent[:cut], self._lasts[:cut], self._sizes[:cut]
        return True

    def _told(self) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._wake)

    def _wake(self) -> None:
        news, self._news = self._news, asyncio.Event()
        if news is not None:
            news.set()

    def _after(self, seq: int) -> list[Part]:
        with self._lock:
            out = self._recent[bisect.bisect_right(self._lasts, seq) :]
        if out and isinstance(out[0], AppliedRun) and out[0].seq <= seq:
            out[0] = out[0].after(seq)
        return out

    async def changes(
        self, since: int, stopping: Callable[[], bool] = lambda: False
    ) -> AsyncIterator[list[Part]]:
        """Every change after `since`, oldest first, then the new ones as they are applied, a
        list at a time (a run of readings' entries as one `AppliedRun`), until `stopping()`
        (the server shutting down: a stream would hold it up)."""
        last = since
        while not stopping():
            if last < self.floor:
                page = await asyncio.to_thread(self.catalog.read_back, last, STORE_PAGE)
                page = [p for p in page if p.seq <= self.floor]
                if page:
                    end = page[-1]
                    if isinstance(end, AppliedRun) and end.last > self.floor:
                        page[-1] = end.before(self.floor)
                    yield page
                    end = page[-1]
                    last = end.seq if isinstance(end, Change) else end.last
                else:
                    last = self.floor
                continue
            news = self._news
            fresh = self._after(last)
            if fresh:
                yield fresh
                end = fresh[-1]
                last = end.seq if isinstance(end, Change) else end.last
                continue
            if news is not None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(news.wait(), WAIT_S)
            else:
                await asyncio.sleep(WAIT_S)


def _last(p: Part) -> int:
    return p.seq if isinstance(p, Change) else p.last


def matches(
    visible: Container[str] | None, collections: list[str] | None, bbox: Bounds | None
) -> Callable[[Change], bool]:
    """Whether a change is for a stream: a collection it may see (`visible`; None: all) and
    asked for, and a box meeting `bbox` (a whole-layer change always does)."""

    def meets(box: Bounds | None) -> bool:
        return box is not None and bbox is not None and box.meets(bbox)

    def test(c: Change) -> bool:
        if visible is not None and c.collection not in visible:
            return False
        if collections is not None and c.collection not in collections:
            return False
        return bbox is None or c.id is None or meets(c.old) or meets(c.new)

    return test


def run_matches(
    visible: Container[str] | None, collections: list[str] | None, bbox: Bounds | None
) -> Callable[[AppliedRun], np.ndarray]:
    """`matches` for the entries of a run of readings at once: the indexes of those for a
    stream."""

    def test(run: AppliedRun) -> np.ndarray:
        c = run.run.collection
        if (visible is not None and c not in visible) or (
            collections is not None and c not in collections
        ):
            return np.empty(0, dtype=np.int64)
        if bbox is None:
            return np.arange(len(run.run.ids))
        b = run.boxes
        with np.errstate(invalid="ignore"):
            meet = (
                (b[:, 0] <= bbox.maxx)
                & (b[:, 2] >= bbox.minx)
                & (b[:, 1] <= bbox.maxy)
                & (b[:, 3] >= bbox.miny)
            )
        return np.flatnonzero(meet)

    return test
