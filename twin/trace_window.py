"""Network traces over a store whose layers are not held in memory (PostGIS): only the part of
the network a trace reaches is read.

A trace of a pipe reads, in a window around it, the pipes of its network and the valves of
that network (or of none stated; when one states none, the pipes of every network, as the
nearest of them tells which network it belongs to), builds the network of what it read
(`network.build` with the window) and traces on it. That network knows which of its nodes lie
far enough inside the window for everything they touch to have been read (`Network.closed`);
a trace reaching any other raises `Incomplete`, and the window is doubled and read again, up
to the whole layer. A trace that stays on nodes known whole is the trace of the whole layers,
to the byte: the frame is the layer's (`network.frame_origin` of its stored bounds), the
nodes, edges and rows keep their order, ties are broken by it. So an isolation reads the
valves around the break and the parts the closure cuts off, up to where each meets a pump (or,
on a network without pumps, all of its component); a gravity trace reads what it reaches.

The networks built are kept (`TraceWindows`, a few, the oldest dropped first, all of them
when a layer changes): a trace of another pipe inside one of them reads nothing but the pipe.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import pandas as pd
import shapely

from layers.catalog import Catalog
from layers.models import Access, Bounds, Match
from twin import metric
from twin.network import Incomplete, Network, build, frame_origin, window_margin_m

T = TypeVar("T")

PIPES, VALVES = "pipes", "valves"
_ALL = Access.RESTRICTED


@dataclass(frozen=True)
class _Held:
    """A network built of a window, for the revisions and tolerances of `key`."""

    key: tuple
    window: Bounds
    network: Network
    whole: bool
    """Whether the window held the whole layer (every node known)."""


class TraceWindows:
    """The networks built of windows of the pipes and valves layers: at most `keep`, of at
    most `keep_edges` edges in all, the least lately used dropped first; a trace starts from a
    window `first_m` metres (plus the margin a node needs to be known) around its pipe."""

    def __init__(self, keep: int = 32, keep_edges: int = 1_000_000, first_m: float = 250.0):
        self.keep = keep
        self.keep_edges = keep_edges
        self.first_m = first_m
        self._held: list[_Held] = []
        self._lock = threading.Lock()
        self.reads = 0
        """Windows read so far (for tests and benchmarks)."""

    def answer(
        self,
        catalog: Catalog,
        fid: str,
        trace: Callable[[Network], T],
        *,
        snap_m: float,
        attach_m: float,
    ) -> T:
        """`trace` (which raises `Incomplete` when the network it is given does not hold its
        answer) on a network of pipe `fid` (an existing pipe) that holds its answer."""
        pipe = catalog.picked(PIPES, _ALL, [fid])
        row = pipe.row(fid)
        value = pipe.attrs["network"].iloc[row]
        kind = None if pd.isna(value) else str(value)
        bounds = catalog.head(PIPES, _ALL).bounds
        origin = frame_origin(bounds)
        has_valves = VALVES in catalog.heads(_ALL)
        revisions = (catalog.revision(PIPES), catalog.revision(VALVES) if has_valves else None)
        key = (revisions, snap_m, attach_m, kind, origin)
        start = None
        for held in self._holding(key, fid):
            try:
                return trace(held.network)
            except Incomplete:
                start = held.window if start is None else start
        box = start or _around(pipe.geometry[row], self.first_m, snap_m, attach_m, origin)
        while True:
            if start is not None:
                box = _grown(box)
            start = box
            whole = bounds is None or _covers(box, bounds)
            net = self._read(catalog, box, kind, has_valves, snap_m, attach_m, origin, whole)
            try:
                result = trace(net)
            except Incomplete:
                if whole:  # every node of a whole layer is known: cannot happen
                    raise
                self._hold(_Held(key, box, net, whole))
                continue
            self._hold(_Held(key, box, net, whole))
            return result

    def _read(
        self,
        catalog: Catalog,
        box: Bounds,
        kind: str | None,
        has_valves: bool,
        snap_m: float,
        attach_m: float,
        origin: tuple[float, float],
        whole: bool,
    ) -> Network:
        """The network of the pipes and valves of network `kind` in `box`."""
        self.reads += 1
        valves = (
            catalog.around(VALVES, _ALL, box, match=Match("network", (kind, None)))
            if has_valves
            else None
        )
        unstated = valves is not None and bool(valves.attrs["network"].isna().any())
        only = None if unstated else Match("network", (kind,))
        pipes = catalog.around(PIPES, _ALL, box, match=only)
        return build(
            pipes,
            valves,
            snap_m=snap_m,
            attach_m=attach_m,
            origin=origin,
            window=None if whole else box,
        )

    def _holding(self, key: tuple, fid: str) -> list[_Held]:
        """The networks held for `key` that hold pipe `fid`, the largest first."""
        with self._lock:
            found = [h for h in self._held if h.key == key and fid in h.network.pipes.row_of]
            for h in found:  # lately used
                self._held.remove(h)
                self._held.append(h)
        return sorted(found, key=lambda h: -h.network.n_edges)

    def _hold(self, held: _Held) -> None:
        with self._lock:
            keep = [
                h
                for h in self._held
                if h.key[0] == held.key[0] and not _covers(held.window, h.window)
            ]
            keep.append(held)
            while len(keep) > 1 and (
                len(keep) > self.keep or sum(h.network.n_edges for h in keep) > self.keep_edges
            ):
                keep.pop(0)
            self._held = keep

    def clear(self) -> None:
        """Drop every network held."""
        with self._lock:
            self._held = []


def _scales(origin: tuple[float, float]) -> tuple[float, float]:
    """Metres per degree of longitude and of latitude in the frame around `origin`."""
    fwd, _ = metric.local_frame(*origin)
    (x0, y0), (x1, y1) = fwd(np.array([origin, (origin[0] + 1.0, origin[1] + 1.0)]))
    return x1 - x0, y1 - y0


def _around(
    geometry: shapely.Geometry,
    first_m: float,
    snap_m: float,
    attach_m: float,
    origin: tuple[float, float],
) -> Bounds:
    """The first window of a trace of the pipe `geometry`."""
    kx, ky = _scales(origin)
    grow = first_m + window_margin_m(snap_m, attach_m)
    minx, miny, maxx, maxy = shapely.bounds(geometry).tolist()
    return Bounds(minx - grow / kx, miny - grow / ky, maxx + grow / kx, maxy + grow / ky)


def _grown(box: Bounds) -> Bounds:
    """`box` twice as wide and high, about its centre."""
    dx, dy = (box.maxx - box.minx) / 2, (box.maxy - box.miny) / 2
    return Bounds(box.minx - dx, box.miny - dy, box.maxx + dx, box.maxy + dy)


def _covers(box: Bounds, inner: Bounds) -> bool:
    return (
        box.minx <= inner.minx
        and box.miny <= inner.miny
        and box.maxx >= inner.maxx
        and box.maxy >= inner.maxy
    )
