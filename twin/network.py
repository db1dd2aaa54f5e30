"""The pipe network: topology from `pipes` and `valves`, isolation traces and gravity traces.

Topology. Every live pipe (status not abandoned, removed, planned or under construction) is an
edge between two nodes, in its digitised direction. Pipe ends, and valves, closer than the
snap tolerance to each other join one node; an end or a valve within the tolerance of another
pipe's interior splits that pipe there (T-junctions, in-line valves). Pipes of different
networks (water, gas, ...) never connect. Valves (`kind = valve`) are barrier nodes, as in
Giswater's mincut and Esri's isolation trace; hydrants, meters and pumps serve the nearest pipe
of their network within the attach distance (a valve of no stated network belongs to the
network of the nearest pipe; one stating a network no pipe is of, to none). Built once per
layer pair and cached; or of a window of the layers (`twin.trace_window`), when the network
tells which nodes it knows whole (`Network.closed`) and a trace reaching another raises
`Incomplete`. Measured in a local frame centred on the pipes layer's bounds, whatever part of
it is read, so a window's network measures, snaps and orders alike to the last bit.

Isolation of a broken pipe. From the piece of pipe holding the break (the reported point, or
the middle of the pipe), the trace spreads through plain nodes and
inoperable valves and stops at operable open valves (those to close) and normally-closed
valves (already shut). Everything reached is cut off; then, with those valves shut, any part
of the network left without a path to a source is cut off too ("unsupplied"). Sources are the
pumps (`kind = pump`); on a network with none, the largest remaining part is taken as the one
still fed, and the answer says so. Affected assets are the assets the cut-off part of the same
network serves: the hydrants, meters and pumps attached to cut-off pipes (never assets of other
kinds that merely stand near them, such as street lights). Gravity networks (sewer, storm) are
not isolated by valves: an isolation asked of one is refused (`GravityNetwork`), pointing at the
upstream and downstream traces.

Gravity traces follow sewer and storm pipes in their digitised direction (upstream to
downstream, the usual convention of sewer GIS data).
"""

from __future__ import annotations

import dataclasses
import json
import threading
import weakref
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
import shapely
from scipy.sparse import coo_matrix, csr_matrix
from scipy.sparse.csgraph import breadth_first_order, connected_components
from shapely.ops import substring

from layers.catalog import Lens
from layers.layer import Bounds, Layer
from layers.models import Access
from twin import metric
from twin.errors import GravityNetwork, InvalidParameter
from twin.queries import Matches, feature_collection

BARRIER_KINDS = frozenset({"valve"})
GRAVITY_NETWORKS = frozenset({"sewer", "storm"})
DEAD_STATUS = frozenset({"abandoned", "removed", "planned", "under_construction"})

PLAIN, CLOSABLE, SHUT, INOPERABLE = 0, 1, 2, 3
"""Node kinds: no valve, an operable open valve, a normally-closed valve, an inoperable valve."""

Direction = Literal["upstream", "downstream"]


class Incomplete(Exception):
    """A trace on a network built of a window of the layers reached nodes near the window's
    edge, where what lies beyond was not read: a larger window is needed."""


def _text(v: Any) -> str | None:
    return None if v is None or v is pd.NA else str(v)


def _live(attrs: pd.DataFrame) -> np.ndarray:
    if "status" not in attrs:
        return np.ones(len(attrs), dtype=bool)
    return ~np.asarray(attrs["status"].isin(DEAD_STATUS).fillna(False), dtype=bool)


def _flag(col: pd.Series, default: bool) -> np.ndarray:
    return np.asarray(col.fillna(default), dtype=bool)


@dataclass(frozen=True, eq=False)
class Network:
    """Topology of the pipe network: nodes, edges (pipe pieces) and where valves sit."""

    pipes: Layer
    valves: Layer | None
    snap_m: float
    node_lonlat: np.ndarray
    node_kind: np.ndarray
    u: np.ndarray
    v: np.ndarray
    edge_pipe: np.ndarray
    edge_length_m: np.ndarray
    valve_node: np.ndarray
    """Node of each valves row that is a barrier valve on the network, else -1."""
    fitting_edge: np.ndarray
    """Edge each hydrant, meter or pump row serves, else -1."""
    lines: np.ndarray
    """The single-part lines (lon/lat) the edges are pieces of."""
    edge_line: np.ndarray
    edge_t0: np.ndarray
    edge_t1: np.ndarray
    """Where each edge starts and ends along its line, metres in the network's local frame."""
    origin: tuple[float, float]
    """Centre of the network's local frame (lon, lat)."""
    report: dict[str, int] = field(default_factory=dict)
    closed: np.ndarray | None = None
    """Of a network built of a window of the layers, the nodes known whole: every point of
    theirs and every pipe through them lies far enough inside the window for all they touch
    to have been read. None: all (built of the whole layers)."""

    def require(self, nodes: np.ndarray) -> None:
        """`Incomplete` unless every one of `nodes` is known whole."""
        if self.closed is not None and not self.closed[nodes].all():
            raise Incomplete("the answer reaches past the window the network was built of")

    @property
    def n_nodes(self) -> int:
        """Number of nodes."""
        return len(self.node_kind)

    @property
    def n_edges(self) -> int:
        """Number of edges (pipe pieces)."""
        return len(self.u)

    def segments(self, edges: np.ndarray) -> np.ndarray:
        """Lon/lat geometry of each of `edges`: the piece of pipe between its two nodes."""
        fwd, inv = metric.local_frame(*self.origin)
        out = np.empty(len(edges), dtype=object)
        # One substring per edge: used on the few edges an answer shows, never on the network.
        for i, e in enumerate(np.asarray(edges, dtype=np.int64).tolist()):
            line = shapely.transform(self.lines[self.edge_line[e]], fwd)
            out[i] = shapely.transform(substring(line, self.edge_t0[e], self.edge_t1[e]), inv)
        return out

    def edge_at(self, row: int, point: shapely.Point, max_m: float) -> int:
        """The edge of pipe `row` nearest to a lon/lat point (a reported break)."""
        edges = self.pipe_edges(row)
        lines = np.unique(self.edge_line[edges])
        d = metric.distances(self.lines[lines], point)
        best = int(np.argmin(d))
        if not d[best] <= max_m:
            raise InvalidParameter(
                f"the break at ({point.x}, {point.y}) is {d[best]:.1f} m from pipe "
                f"{self.pipes.ids[row]!r}, more than {max_m:g} m"
            )
        fwd, _ = metric.local_frame(*self.origin)
        line = shapely.transform(self.lines[lines[best]], fwd)
        t = shapely.line_locate_point(line, shapely.transform(point, fwd))
        on = edges[self.edge_line[edges] == lines[best]]
        i = int(np.searchsorted(self.edge_t0[on], t, side="right")) - 1
        return int(on[max(i, 0)])

    def middle_edge(self, row: int) -> int:
        """The edge of pipe `row` holding the middle of its length."""
        edges = self.pipe_edges(row)
        cum = np.cumsum(self.edge_length_m[edges])
        return int(edges[min(int(np.searchsorted(cum, cum[-1] / 2)), len(edges) - 1)])

    # -- derived indexes, built on first use ------------------------------------------------

    def _memo(self, name: str, build: Any) -> Any:
        cache = self.__dict__.setdefault("_derived", {})
        if name not in cache:
            cache[name] = build()
        return cache[name]

    def pipe_edges(self, row: int) -> np.ndarray:
        """Edges of one pipe row, in its digitised order."""
        order, ptr = self._memo("pipe_csr", lambda: _csr(self.edge_pipe, len(self.pipes)))
        return order[ptr[row] : ptr[row + 1]]

    @property
    def degree(self) -> np.ndarray:
        """Edges meeting each node (a loop counts twice)."""
        return self._memo(
            "degree",
            lambda: np.bincount(np.concatenate([self.u, self.v]), minlength=self.n_nodes),
        )

    @property
    def edge_zone(self) -> np.ndarray:
        """Isolation zone of each edge: the part of the network enclosed by valves."""
        return self._memo("zone", self._zones)

    def zone_edges(self, zones: np.ndarray) -> np.ndarray:
        """Sorted edges of the given zones."""
        order, ptr = self._memo(
            "zone_csr", lambda: _csr(self.edge_zone, self.n_nodes + self.n_edges)
        )
        return np.sort(np.concatenate([order[ptr[z] : ptr[z + 1]] for z in zones.tolist()]))

    def _zones(self) -> np.ndarray:
        barrier = np.isin(self.node_kind, (CLOSABLE, SHUT))
        inner = ~barrier[self.u] & ~barrier[self.v]
        n = self.n_nodes
        graph = coo_matrix(
            (np.ones(int(inner.sum())), (self.u[inner], self.v[inner])), shape=(n, n)
        )
        _, label = connected_components(graph, directed=False)
        zone = np.where(
            ~barrier[self.u],
            label[self.u],
            np.where(~barrier[self.v], label[self.v], n + np.arange(self.n_edges)),
        )
        return zone.astype(np.int64)

    @property
    def edge_component(self) -> np.ndarray:
        """Connected component of each edge, with normally-closed valves shut."""
        return self._memo(
            "component",
            lambda: self.components(np.ones(self.n_edges, dtype=bool), self.node_kind == SHUT),
        )

    def components(self, edges: np.ndarray, shut: np.ndarray) -> np.ndarray:
        """Component label of each selected edge when the `shut` nodes let nothing through
        (-1 for the others)."""
        idx = np.flatnonzero(edges)
        n, m = self.n_nodes, len(idx)
        u = np.where(shut[self.u[idx]], n + np.arange(m), self.u[idx])
        v = np.where(shut[self.v[idx]], n + m + np.arange(m), self.v[idx])
        size = n + 2 * m
        _, label = connected_components(
            coo_matrix((np.ones(m), (u, v)), shape=(size, size)), directed=False
        )
        out = np.full(self.n_edges, -1, dtype=np.int64)
        out[idx] = label[u]
        return out

    @property
    def source_edges(self) -> np.ndarray:
        """Edges served by a pump: where water enters the network."""

        def build() -> np.ndarray:
            if self.valves is None:
                return np.array([], dtype=np.int64)
            pump = np.asarray((self.valves.attrs["kind"] == "pump").fillna(False), dtype=bool)
            return np.unique(self.fitting_edge[pump & (self.fitting_edge >= 0)])

        return self._memo("sources", build)

    @property
    def flow(self) -> csr_matrix:
        """Directed adjacency in the digitised (flow) direction."""
        return self._memo(
            "flow",
            lambda: csr_matrix(
                (np.ones(self.n_edges), (self.u, self.v)), shape=(self.n_nodes, self.n_nodes)
            ),
        )


def _from(
    layer: Layer, rows: np.ndarray, origin: shapely.Geometry, members: dict | None = None
) -> Matches:
    """`rows` of `layer` as matches sorted by their distance from `origin`."""
    rows = np.asarray(rows, dtype=np.int64)
    d = metric.distances(layer.geometry[rows], origin) if len(rows) else np.array([])
    order = np.lexsort((rows, d))
    extra = {k: [v[i] for i in order.tolist()] for k, v in (members or {}).items()}
    return Matches(layer, rows[order], d[order], extra)


def _csr(keys: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(keys, kind="stable")
    ptr = np.searchsorted(keys[order], np.arange(n + 1))
    return order, ptr


# -- building the topology --------------------------------------------------------------------


def _nearest(
    lines: np.ndarray,
    pts: np.ndarray,
    max_m: float,
    nets: tuple[np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """Index of the nearest of `lines` within `max_m` of each point (-1 when none), of the
    point's own network when `nets` (the lines' and the points' network codes) is given; of
    equally near ones the first, so any subset holding them all answers alike."""
    out = np.full(len(pts), -1, dtype=np.int64)
    if len(pts) == 0 or len(lines) == 0:
        return out
    i, j = shapely.STRtree(lines).query(pts, predicate="dwithin", distance=max_m)
    if nets is not None:
        same = nets[0][j] == nets[1][i]
        i, j = i[same], j[same]
    if not len(i):
        return out
    order = np.lexsort((j, shapely.distance(pts[i], lines[j]), i))
    i, j = i[order], j[order]
    first = np.r_[True, i[1:] != i[:-1]]
    out[i[first]] = j[first]
    return out


@dataclass(frozen=True)
class _Parts:
    """The live pipes as single-part lines, in lon/lat and in the snapping frame."""

    lines: np.ndarray
    pipe: np.ndarray
    """Pipes row of each part."""
    net: np.ndarray
    """Network code of each part (an index into `net_names`)."""
    net_names: np.ndarray
    origin: tuple[float, float]
    fwd: metric.CoordMap
    local: np.ndarray
    """The parts in the snapping frame (metres)."""
    frame_len: np.ndarray
    ground_len: np.ndarray

    def framed(self, geoms: np.ndarray) -> np.ndarray:
        """`geoms` (lon/lat) in the snapping frame."""
        return shapely.transform(geoms, self.fwd)


def frame_origin(bounds: Bounds | None) -> tuple[float, float]:
    """Centre of the snapping frame of a pipes layer with these bounds. Taken from the layer's
    bounds (not from the pipes read), so a network built of a window of the layer measures in
    the same frame as one built of the whole layer, to the last bit."""
    if bounds is None:
        return (0.0, 0.0)
    return ((bounds.minx + bounds.maxx) / 2, (bounds.miny + bounds.maxy) / 2)


def _pipe_parts(pipes: Layer, origin: tuple[float, float]) -> _Parts:
    """The live pipes' single-part lines of two or more positions, with their networks and
    their lengths in the frame and on the ground."""
    live = np.flatnonzero(_live(pipes.attrs) & ~shapely.is_missing(pipes.geometry))
    lines, part_of = shapely.get_parts(pipes.geometry[live], return_index=True)
    pipe = live[part_of]
    keep = (shapely.get_type_id(lines) == 1) & (shapely.get_num_coordinates(lines) >= 2)
    lines, pipe = lines[keep], pipe[keep]
    nets = pipes.attrs["network"].astype(object).where(pipes.attrs["network"].notna(), "")
    net_codes, net_names = pd.factorize(nets.to_numpy())
    fwd, _ = metric.local_frame(*origin)
    local = shapely.transform(lines, fwd)
    return _Parts(
        lines,
        pipe,
        net_codes[pipe],
        np.asarray(net_names),
        origin,
        fwd,
        local,
        shapely.length(local),
        metric.length_m(lines),
    )


@dataclass(frozen=True)
class _Valves:
    """What each valves row is to the network."""

    net: np.ndarray
    """Network code of each row (-1: none)."""
    barrier_rows: np.ndarray
    """Rows of the barrier valves (kind valve) of a known network."""
    barrier_pts: np.ndarray
    """Those valves in the snapping frame."""
    fitting: np.ndarray
    """Whether each row is a fitting (hydrant, meter, pump) of a known network."""


def _valve_roles(valves: Layer | None, parts: _Parts, attach_m: float) -> _Valves:
    """Barriers (kind valve) become nodes; other fittings attach to the nearest pipe. A valve of
    no stated network belongs to the network of the nearest pipe within `attach_m` (one stating
    a network no pipe is of, to none)."""
    if valves is None or not len(valves):
        return _Valves(
            np.zeros(0, dtype=np.int64),
            np.array([], dtype=np.int64),
            np.array([], dtype=object),
            np.zeros(0, dtype=bool),
        )
    v_ok = _live(valves.attrs) & ~shapely.is_missing(valves.geometry)
    v_ok &= shapely.get_type_id(valves.geometry) == 0
    kind = valves.attrs["kind"].astype(object).where(valves.attrs["kind"].notna(), "")
    barrier = v_ok & np.isin(kind.to_numpy(), list(BARRIER_KINDS))
    fitting = v_ok & ~barrier
    stated = valves.attrs["network"].astype(object).where(valves.attrs["network"].notna(), None)
    v_net = pd.Index(parts.net_names).get_indexer(stated.to_numpy()).astype(np.int64)
    v_net[v_net < 0] = -2  # a network with no pipe: on none
    v_net[stated.isna().to_numpy()] = -1
    unknown = np.flatnonzero(v_ok & (v_net == -1))
    if len(unknown) and len(parts.lines):
        near = _nearest(parts.local, parts.framed(valves.geometry[unknown]), attach_m)
        v_net[unknown] = np.where(near >= 0, parts.net[np.maximum(near, 0)], -1)
    barrier &= v_net >= 0
    fitting &= v_net >= 0
    bar_rows = np.flatnonzero(barrier)
    return _Valves(v_net, bar_rows, parts.framed(valves.geometry[bar_rows]), fitting)


def _snap(pts: np.ndarray, net: np.ndarray, snap_m: float) -> tuple[np.ndarray, np.ndarray]:
    """Node of each point (points of one network within `snap_m` of each other, transitively,
    are one node) and each node's first point; nodes are numbered in the order of their first
    points, so the nodes of a window of the layer keep the order they have in the whole."""
    n_pts = len(pts)
    i, j = shapely.STRtree(pts).query(pts, predicate="dwithin", distance=snap_m)
    same = net[i] == net[j]
    _, label = connected_components(
        coo_matrix((np.ones(int(same.sum())), (i[same], j[same])), shape=(n_pts, n_pts)),
        directed=False,
    )
    _, first, node_of = np.unique(label, return_index=True, return_inverse=True)
    order = np.argsort(first)
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    return rank[node_of], first[order]


def _splits(
    parts: _Parts, pts: np.ndarray, net: np.ndarray, owner: np.ndarray, snap_m: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Points (ends and valves) within `snap_m` of another part of their network's interior,
    which split that part there: the point, the part and where along it (frame metres)."""
    k, p = shapely.STRtree(parts.local).query(pts, predicate="dwithin", distance=snap_m)
    other = (owner[k] != p) & (net[k] == parts.net[p])
    k, p = k[other], p[other]
    t = shapely.line_locate_point(parts.local[p], pts[k]) if len(k) else np.array([])
    interior = (t > snap_m) & (t < parts.frame_len[p] - snap_m)
    return k[interior], p[interior], t[interior]


@dataclass(frozen=True)
class _Edges:
    """Pieces of parts between consecutive waypoints: their nodes, part, span and length."""

    u: np.ndarray
    v: np.ndarray
    part: np.ndarray
    t0: np.ndarray
    t1: np.ndarray
    length_m: np.ndarray


def _edges(
    parts: _Parts,
    node_of: np.ndarray,
    splits: tuple[np.ndarray, np.ndarray, np.ndarray],
    snap_m: float,
) -> _Edges:
    """Waypoints along each part (start, splits, end); consecutive ones make edges. Edges
    that snapped to nothing (same node, shorter than the tolerance) are dropped."""
    n_parts = len(parts.lines)
    k, p, t = splits
    way_part = np.concatenate([np.arange(n_parts), p, np.arange(n_parts)])
    way_t = np.concatenate([np.zeros(n_parts), t, parts.frame_len])
    way_node = np.concatenate([node_of[:n_parts], node_of[k], node_of[n_parts : 2 * n_parts]])
    order = np.lexsort((way_t, way_part))
    way_part, way_t, way_node = way_part[order], way_t[order], way_node[order]
    same = way_part[1:] == way_part[:-1]
    e_part = way_part[:-1][same]
    t0, t1 = way_t[:-1][same], way_t[1:][same]
    u, v = way_node[:-1][same], way_node[1:][same]
    frame_len = parts.frame_len[e_part]
    with np.errstate(invalid="ignore", divide="ignore"):
        e_len = parts.ground_len[e_part] * np.where(frame_len > 0, (t1 - t0) / frame_len, 0)
    real = (u != v) | (t1 - t0 > 2 * snap_m)
    return _Edges(u[real], v[real], e_part[real], t0[real], t1[real], e_len[real])


def _barrier_nodes(
    valves: Layer | None,
    roles: _Valves,
    node_of: np.ndarray,
    split_points: np.ndarray,
    n_parts: int,
    n_nodes: int,
) -> tuple[np.ndarray, np.ndarray]:
    """The node of each valves row that is a barrier on the network (-1: none), and each
    node's kind. A barrier valve is on the network when it joined a pipe end or split a pipe;
    of several valves on one node, an operable open one can shut it, else a shut one holds."""
    n_valves = len(valves) if valves is not None else 0
    valve_node = np.full(n_valves, -1, dtype=np.int64)
    node_kind = np.zeros(n_nodes, dtype=np.int8)
    bar_rows = roles.barrier_rows
    if not len(bar_rows) or valves is None:
        return valve_node, node_kind
    is_end = np.zeros(n_nodes, dtype=bool)
    is_end[node_of[: 2 * n_parts]] = True
    split_by = np.zeros(len(node_of), dtype=bool)
    split_by[split_points] = True
    bar_node = node_of[2 * n_parts :]
    on_net = is_end[bar_node] | split_by[2 * n_parts :]
    valve_node[bar_rows[on_net]] = bar_node[on_net]
    attrs = valves.attrs.iloc[bar_rows[on_net]]
    operable = _flag(attrs["operable"], True)
    open_ = _flag(attrs["normally_open"], True)
    kinds = np.where(open_ & operable, CLOSABLE, np.where(~open_, SHUT, INOPERABLE))
    rank = np.array([0, 3, 2, 1])  # plain < inoperable < shut < closable
    best = np.zeros(n_nodes, dtype=np.int64)
    np.maximum.at(best, bar_node[on_net], rank[kinds])
    node_kind = np.array([PLAIN, INOPERABLE, SHUT, CLOSABLE], dtype=np.int8)[best]
    return valve_node, node_kind


def _attach_fittings(
    valves: Layer | None, roles: _Valves, parts: _Parts, edges: _Edges, attach_m: float
) -> np.ndarray:
    """The edge each fitting row serves: the piece of the nearest pipe of its network within
    `attach_m` (-1: none, or not a fitting)."""
    n_valves = len(valves) if valves is not None else 0
    fitting_edge = np.full(n_valves, -1, dtype=np.int64)
    f_rows = np.flatnonzero(roles.fitting)
    if not len(f_rows) or not len(edges.u) or valves is None:
        return fitting_edge
    f_pts = parts.framed(valves.geometry[f_rows])
    near = _nearest(parts.local, f_pts, attach_m, (parts.net, roles.net[f_rows]))
    hit = near >= 0
    f_rows, f_pts, near = f_rows[hit], f_pts[hit], near[hit]
    ft = shapely.line_locate_point(parts.local[near], f_pts)
    span = parts.frame_len * (1 + 1e-9) + 1e-9
    edge_key = edges.part + edges.t0 / span[edges.part]
    at = np.searchsorted(edge_key, near + ft / span[near], side="right") - 1
    good = (at >= 0) & (edges.part[np.clip(at, 0, None)] == near)
    fitting_edge[f_rows[good]] = at[good]
    return fitting_edge


def build(
    pipes: Layer,
    valves: Layer | None,
    *,
    snap_m: float = 0.5,
    attach_m: float = 30.0,
    origin: tuple[float, float] | None = None,
    window: Bounds | None = None,
) -> Network:
    """The network topology of `pipes` and `valves` (see the module docstring), measured in
    the local frame around `origin` (default: the centre of the pipes' bounds). With `window`,
    the layers are the features of the whole layers whose boxes meet it (at least), and the
    network tells which nodes are known whole (`Network.closed`)."""
    if snap_m <= 0 or attach_m < 0:
        raise InvalidParameter("network tolerances must be positive metres")
    parts = _pipe_parts(pipes, frame_origin(pipes.bounds) if origin is None else origin)
    roles = _valve_roles(valves, parts, attach_m)
    n_parts = len(parts.lines)

    # Candidate nodes: every part's start and end, then the barrier valves.
    starts, ends = shapely.get_point(parts.local, 0), shapely.get_point(parts.local, -1)
    pts = np.concatenate([starts, ends, roles.barrier_pts])
    pts_net = np.concatenate([parts.net, parts.net, roles.net[roles.barrier_rows]])
    lonlat = np.concatenate(
        [
            shapely.get_coordinates(shapely.get_point(parts.lines, 0)),
            shapely.get_coordinates(shapely.get_point(parts.lines, -1)),
            shapely.get_coordinates(valves.geometry[roles.barrier_rows])
            if valves is not None
            else np.empty((0, 2)),
        ]
    )
    node_of, first = _snap(pts, pts_net, snap_m)
    node_lonlat = lonlat[first] if len(pts) else np.empty((0, 2))
    n_nodes = len(first)

    owner = np.concatenate(
        [np.arange(n_parts), np.arange(n_parts), np.full(len(roles.barrier_rows), -1)]
    )
    splits = _splits(parts, pts, pts_net, owner, snap_m)
    edges = _edges(parts, node_of, splits, snap_m)
    valve_node, node_kind = _barrier_nodes(valves, roles, node_of, splits[0], n_parts, n_nodes)
    fitting_edge = _attach_fittings(valves, roles, parts, edges, attach_m)
    closed = None
    if window is not None:
        inner = _inner_box(parts.fwd, window, window_margin_m(snap_m, attach_m))
        closed = _closed(parts, pts, node_of, edges, n_nodes, inner)

    return Network(
        pipes=pipes,
        valves=valves,
        snap_m=snap_m,
        node_lonlat=node_lonlat,
        node_kind=node_kind,
        u=edges.u.astype(np.int64),
        v=edges.v.astype(np.int64),
        edge_pipe=parts.pipe[edges.part].astype(np.int64),
        edge_length_m=edges.length_m,
        valve_node=valve_node,
        fitting_edge=fitting_edge,
        lines=parts.lines,
        edge_line=edges.part.astype(np.int64),
        edge_t0=edges.t0,
        edge_t1=edges.t1,
        origin=parts.origin,
        report={
            "pipes": len(np.unique(parts.pipe)),
            "nodes": int(n_nodes),
            "edges": len(edges.u),
            "splits": len(splits[0]),
            "valves_on_network": int((valve_node >= 0).sum()),
            "valves_off_network": int(len(roles.barrier_rows) - (valve_node >= 0).sum()),
            "fittings_attached": int((fitting_edge >= 0).sum()),
        },
        closed=closed,
    )


def window_margin_m(snap_m: float, attach_m: float) -> float:
    """How far inside a window a node must lie for all it touches to have been read: a fitting
    serving a pipe there lies within `attach_m` of it and is served by the nearest pipe within
    `attach_m` of the fitting; what snaps to it or splits a pipe at it, within a few `snap_m`."""
    return 2 * attach_m + 4 * snap_m + 1.0


def _inner_box(fwd: metric.CoordMap, window: Bounds, margin_m: float) -> tuple[float, ...]:
    """`window` in the snapping frame, shrunk by `margin_m`."""
    (x0, y0), (x1, y1) = fwd(np.array([[window.minx, window.miny], [window.maxx, window.maxy]]))
    return (x0 + margin_m, y0 + margin_m, x1 - margin_m, y1 - margin_m)


def _closed(
    parts: _Parts,
    pts: np.ndarray,
    node_of: np.ndarray,
    edges: _Edges,
    n_nodes: int,
    inner: tuple[float, ...],
) -> np.ndarray:
    """The nodes every point of which lies inside `inner` (frame metres) and every edge at
    which is a piece of a pipe lying wholly inside it."""
    x0, y0, x1, y1 = inner
    xy = shapely.get_coordinates(pts)
    out_pt = ~((xy[:, 0] >= x0) & (xy[:, 0] <= x1) & (xy[:, 1] >= y0) & (xy[:, 1] <= y1))
    b = shapely.bounds(parts.local)
    out_part = ~((b[:, 0] >= x0) & (b[:, 2] <= x1) & (b[:, 1] >= y0) & (b[:, 3] <= y1))
    bad = np.bincount(node_of[out_pt], minlength=n_nodes)
    cut = out_part[edges.part]
    bad += np.bincount(edges.u[cut], minlength=n_nodes)
    bad += np.bincount(edges.v[cut], minlength=n_nodes)
    return bad == 0


_lock = threading.Lock()


def network_for(
    pipes: Layer, valves: Layer | None, *, snap_m: float = 0.5, attach_m: float = 30.0
) -> Network:
    """The cached network of this pipes and valves layer pair (built on first use; a layer
    edit makes new `Layer` objects, hence a new network)."""
    key = (id(valves), snap_m, attach_m)
    # Held with the pipes layer, so it goes when the layer goes: a global map would keep every
    # old layer alive through its network's reference to it.
    cache: dict[tuple, tuple[Any, Network]] = pipes.derived(network_for, dict)
    with _lock:
        held = cache.get(key)
        if held is not None and (held[0] is None if valves is None else held[0]() is valves):
            return held[1]
        net = build(pipes, valves, snap_m=snap_m, attach_m=attach_m)
        cache[key] = (None if valves is None else weakref.ref(valves), net)
        return net


# -- isolation ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Isolation:
    """The answer of an isolation trace for one broken pipe."""

    network: Network
    pipe: int
    broken: int
    """The edge (piece of pipe) holding the break."""
    to_close: np.ndarray
    """Valve rows to close."""
    shut: np.ndarray
    """Valve rows already closed (normally closed) on the boundary."""
    inoperable: np.ndarray
    """Valve rows skipped because they cannot be operated."""
    isolated: np.ndarray
    """Edges cut off by the closure."""
    unsupplied: np.ndarray
    """Edges left without supply by the closure."""
    fittings: np.ndarray
    """Hydrant, meter and pump rows served by cut-off pipes."""
    supply: str = "sources"
    """How fed parts were told from unsupplied ones: `sources` (pumps) or `largest part`."""

    @property
    def length_m(self) -> float:
        """Length of pipe cut off, metres (isolated and unsupplied)."""
        e = np.concatenate([self.isolated, self.unsupplied])
        return float(self.network.edge_length_m[e].sum())

    def to_json(self) -> dict[str, Any]:
        """The JSON answer: FeatureCollections of valves to close, pipes cut off and affected
        assets, each nearest the broken pipe first, and a summary."""
        net = self.network
        broken = net.pipes.geometry[self.pipe]
        rows, length, cause = self.pipes_cut()
        pipes = _from(
            net.pipes,
            rows,
            broken,
            {"cut_length_m": [round(float(v), 3) for v in length], "cause": cause},
        )
        groups: dict[str, Matches | None] = {"pipes": pipes}
        valves = net.valves
        if valves is not None:
            groups["to_close"] = _from(valves, self.to_close, broken)
            groups["shut"] = _from(valves, self.shut, broken)
            groups["inoperable"] = _from(valves, self.inoperable, broken)
            groups["fittings"] = _from(valves, self.fittings, broken)
        kinds = (
            valves.attrs["kind"].iloc[self.fittings].fillna("unknown").value_counts().to_dict()
            if valves is not None
            else {}
        )

        def fc(*names: str) -> dict[str, Any]:
            return feature_collection([g for n in names if (g := groups.get(n)) is not None])

        return {
            "pipe": {
                "collection": net.pipes.name,
                "id": str(net.pipes.ids[self.pipe]),
                "network": _text(net.pipes.attrs["network"].iloc[self.pipe]),
                "break": json.loads(shapely.to_geojson(net.segments(np.array([self.broken]))[0])),
            },
            "valves_to_close": fc("to_close"),
            "closed_valves": fc("shut"),
            "inoperable_valves": fc("inoperable"),
            "pipes": fc("pipes"),
            "length_m": round(self.length_m, 3),
            "cut": json.loads(
                shapely.to_geojson(
                    shapely.multilinestrings(
                        net.segments(np.concatenate([self.isolated, self.unsupplied]))
                    )
                )
            ),
            "affected": fc("fittings"),
            # Counts of the answer's members, by the same names.
            "summary": {
                "valves_to_close": len(self.to_close),
                "closed_valves": len(self.shut),
                "inoperable_valves": len(self.inoperable),
                "pipes": len(rows),
                "pipes_unsupplied": cause.count("unsupplied"),
                "supply": self.supply,
                "length_m": round(self.length_m, 3),
                "affected": {str(k): int(v) for k, v in kinds.items()},
            },
        }

    def pipes_cut(self) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """Rows of the pipes cut off, the length of each cut off, and why (isolated or
        unsupplied)."""
        net = self.network
        e = np.concatenate([self.isolated, self.unsupplied])
        rows, inv = np.unique(net.edge_pipe[e], return_inverse=True)
        length = np.bincount(inv, weights=net.edge_length_m[e], minlength=len(rows))
        iso = set(net.edge_pipe[self.isolated].tolist())
        return rows, length, ["isolated" if r in iso else "unsupplied" for r in rows.tolist()]


def isolate(
    net: Network,
    fid: str,
    *,
    at: shapely.Point | None = None,
    max_m: float = 50.0,
) -> Isolation:
    """Valves to close to isolate a break on pipe `fid` (at the point `at`, within `max_m`
    metres of the pipe; by default the middle of the pipe), what is cut off, and the assets the
    cut-off part serves. `GravityNetwork` for a sewer or storm pipe."""
    row = net.pipes.row(fid)
    kind = _text(net.pipes.attrs["network"].iloc[row])
    if kind in GRAVITY_NETWORKS:
        base = f"/collections/{net.pipes.name}/items/{fid}"
        raise GravityNetwork(
            f"pipe {fid!r} is on the {kind} network, which flows by gravity: no valves isolate "
            f"it. Trace what drains into it ({base}/upstream) or where it drains "
            f"({base}/downstream) instead"
        )
    edges = net.pipe_edges(row)
    if not len(edges):
        raise InvalidParameter(
            f"pipe {fid!r} is not part of the live network (no geometry, or status "
            f"{', '.join(sorted(DEAD_STATUS))})"
        )
    net.require(np.concatenate([net.u[edges], net.v[edges]]))
    broken = net.middle_edge(row) if at is None else net.edge_at(row, at, max_m)
    edges = np.array([broken])
    region = net.zone_edges(net.edge_zone[edges])
    nodes = np.unique(np.concatenate([net.u[region], net.v[region]]))
    net.require(nodes)
    inside = np.bincount(np.concatenate([net.u[region], net.v[region]]), minlength=net.n_nodes)
    kind = net.node_kind[nodes]
    boundary = inside[nodes] < net.degree[nodes]
    closing = nodes[(kind == CLOSABLE) & boundary]
    shut_nodes = nodes[(kind == SHUT) & boundary]
    inoperable_nodes = nodes[kind == INOPERABLE]

    # With those valves shut, parts with no path left to a source lose supply too.
    component = net.edge_component
    same = np.isin(component, np.unique(component[edges]))
    same[region] = False
    shut = net.node_kind == SHUT
    shut[closing] = True
    unsupplied = np.array([], dtype=np.int64)
    supply = "sources"
    if same.any():
        rest, label, fed = _parts(net, same, shut, closing)
        if len(fed):
            unsupplied = rest[~np.isin(label[rest], fed)]
        else:
            # No source modelled on this network: the largest remaining part is taken as fed.
            supply = "largest part"
            _, inv = np.unique(label[rest], return_inverse=True)
            main = np.argmax(np.bincount(inv, weights=net.edge_length_m[rest]))
            unsupplied = rest[inv != main]

    cut = np.zeros(net.n_edges, dtype=bool)
    cut[region] = True
    cut[unsupplied] = True
    served = np.flatnonzero((net.fitting_edge >= 0) & cut[np.maximum(net.fitting_edge, 0)])

    def valves_at(node_set: np.ndarray) -> np.ndarray:
        return np.flatnonzero(np.isin(net.valve_node, node_set) & (net.valve_node >= 0))

    to_close = valves_at(closing)
    if net.valves is not None and len(to_close):
        attrs = net.valves.attrs.iloc[to_close]
        usable = _flag(attrs["operable"], True) & _flag(attrs["normally_open"], True)
        to_close = to_close[usable]
    shut_rows = valves_at(shut_nodes)
    inop_rows = valves_at(inoperable_nodes)
    return Isolation(
        net, row, broken, to_close, shut_rows, inop_rows, region, unsupplied, served, supply
    )


def _parts(
    net: Network, same: np.ndarray, shut: np.ndarray, closing: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The edges of the parts the closure leaves (`same`: the rest of the broken pipe's
    component, `shut`: what lets nothing through), each edge's part, and the parts a source
    feeds. On a network known only in part, the parts are those at the closing valves, joined
    through nodes known whole; `Incomplete` when one of them reaches a node not known whole
    without having met a source (whether it is fed, or how large it is, lies beyond)."""
    if net.closed is None:
        label = net.components(same, shut)
        rest = np.flatnonzero(same)
    else:
        label = net.components(same, shut | ~net.closed)
        at_closing = same & (np.isin(net.u, closing) | np.isin(net.v, closing))
        rest = np.flatnonzero(same & np.isin(label, label[at_closing]))
    sources = net.source_edges
    fed = np.unique(label[sources[same[sources]]])
    if net.closed is not None:
        open_end = ~net.closed[net.u[rest]] | ~net.closed[net.v[rest]]
        if not np.isin(label[rest[open_end]], fed).all():
            raise Incomplete("a part cut off may reach past the window")
        fed = fed[np.isin(fed, label[rest])]
    return rest, label, fed


# -- gravity traces -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Trace:
    """Pipes reached following the flow up or down from a start pipe."""

    network: Network
    start: int
    direction: Direction
    edges: np.ndarray
    ends: np.ndarray
    """Nodes where the trace ends: outlets downstream, heads of the network upstream."""

    @property
    def length_m(self) -> float:
        """Length of pipe traced, metres."""
        return float(self.network.edge_length_m[self.edges].sum())

    def to_json(self) -> dict[str, Any]:
        """The JSON answer: the pipes traced (nearest the start first), length and ends."""
        net = self.network
        rows, length = self.pipes()
        start = net.pipes.geometry[self.start]
        pipes = _from(
            net.pipes, rows, start, {"traced_length_m": [round(float(v), 3) for v in length]}
        )
        ends = [
            {"type": "Point", "coordinates": [float(x), float(y)]}
            for x, y in net.node_lonlat[self.ends].tolist()
        ]
        return {
            "start": {"collection": net.pipes.name, "id": str(net.pipes.ids[self.start])},
            "direction": self.direction,
            "length_m": round(self.length_m, 3),
            "pipes": feature_collection([pipes]),
            "ends": ends,
            "summary": {"pipes": len(rows), "length_m": round(self.length_m, 3), "ends": len(ends)},
        }

    def pipes(self) -> tuple[np.ndarray, np.ndarray]:
        """Rows of the pipes traced and the length of each traced."""
        net = self.network
        rows, inv = np.unique(net.edge_pipe[self.edges], return_inverse=True)
        return rows, np.bincount(inv, weights=net.edge_length_m[self.edges], minlength=len(rows))


def trace(net: Network, fid: str, direction: Direction) -> Trace:
    """The pipes downstream (or upstream) of gravity pipe `fid`, by digitised direction."""
    if direction not in ("upstream", "downstream"):
        raise InvalidParameter(f"direction {direction!r}: use upstream or downstream")
    row = net.pipes.row(fid)
    network = net.pipes.attrs["network"].iloc[row]
    if network is pd.NA or network not in GRAVITY_NETWORKS:
        raise InvalidParameter(
            f"pipe {fid!r} is on the {network if network is not pd.NA else 'unknown'} network; "
            f"traces follow gravity networks ({', '.join(sorted(GRAVITY_NETWORKS))}); "
            "use /isolation for pressure networks"
        )
    edges = net.pipe_edges(row)
    if not len(edges):
        raise InvalidParameter(f"pipe {fid!r} is not part of the live network")
    net.require(np.concatenate([net.u[edges], net.v[edges]]))
    graph = net.flow if direction == "downstream" else net.flow.T.tocsr()
    start = net.v[edges[-1]] if direction == "downstream" else net.u[edges[0]]
    reached = breadth_first_order(graph, int(start), directed=True, return_predecessors=False)
    net.require(reached)
    mask = np.zeros(net.n_nodes, dtype=bool)
    mask[reached] = True
    tail = net.u if direction == "downstream" else net.v
    traced = np.union1d(np.flatnonzero(mask[tail]), edges)
    out_deg = np.diff(graph.indptr)
    ends = reached[out_deg[reached] == 0]
    return Trace(net, row, direction, traced, ends)


def nearest_gravity_pipe(pipes: Layer, point: shapely.Point, within_m: float) -> str:
    """Id of the nearest sewer or storm pipe within `within_m` metres of a point."""
    rows, _ = metric.within(pipes, point, within_m)
    network = pipes.attrs["network"].iloc[rows]
    gravity = np.asarray(network.isin(GRAVITY_NETWORKS).fillna(False), dtype=bool)
    rows = rows[gravity]
    if not len(rows):
        raise InvalidParameter(
            f"no sewer or storm pipe lies within {within_m:g} m of ({point.x}, {point.y})"
        )
    return str(pipes.ids[rows[0]])


# -- what a caller is shown ---------------------------------------------------------------------


def shown(result: Isolation | Trace, scope: Lens) -> Isolation | Trace:
    """`result` (worked out over every pipe and valve, so a valve the caller may not see is
    still closed) as the caller at `scope` may see it: the pipes, valves and assets it may not
    see left out of the answer (and of its lengths and counts), hidden fields dropped."""
    if isinstance(scope, Access) or scope.everything:
        return result
    net = result.network
    pipe_ok = scope.rows(net.pipes)
    if net.valves is not None and scope.sees(net.valves.name, net.valves.schema.classification):
        valve_ok = scope.rows(net.valves)
        valves: Layer | None = scope.strip_fields(net.valves)
    else:
        valve_ok = np.zeros(0 if net.valves is None else len(net.valves), dtype=bool)
        valves = net.valves
    seen = dataclasses.replace(net, pipes=scope.strip_fields(net.pipes), valves=valves)

    def edges(e: np.ndarray) -> np.ndarray:
        return e[pipe_ok[net.edge_pipe[e]]]

    def rows(r: np.ndarray) -> np.ndarray:
        return r[valve_ok[r]]

    if isinstance(result, Trace):
        return dataclasses.replace(result, network=seen, edges=edges(result.edges))
    return dataclasses.replace(
        result,
        network=seen,
        to_close=rows(result.to_close),
        shut=rows(result.shut),
        inoperable=rows(result.inoperable),
        fittings=rows(result.fittings),
        isolated=edges(result.isolated),
        unsupplied=edges(result.unsupplied),
    )
