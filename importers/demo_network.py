"""The demo city's pipes: five networks along its streets, with valves, hydrants and pumps.

Each network runs along every street (sewer and storm stop at bridges), shifted from the
centre line by a fixed offset per network, so pipes of one network meet exactly at the
junctions: a sound topology for isolation and gravity traces. Mains are cut at the
junctions, at valves 4 m from them and at manholes; valves sit on every leg of a water
junction (arterial legs for gas), hydrants beside the water main about every 100 m, pumps
at a few arterial junctions. Sewer and storm pipes are digitised downhill. Frames are in
the city's survey CRS (EPSG:4547), as a city's own files would be.
"""

from __future__ import annotations

from dataclasses import dataclass

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely

from importers.demo_city import CRS, PRIMARY, RESIDENTIAL, SECONDARY, TERTIARY, City, rng


@dataclass(frozen=True)
class NetworkSpec:
    """How one pipe network is laid: its offset from the street, where pipes are cut."""

    name: str
    prefix: str
    offset: tuple[float, float]
    cuts: tuple[int, ...]
    """Vertex slots (of an edge's 11) where pipes end: junctions, valves, manholes."""
    on_bridges: bool
    downhill: bool
    depth_m: tuple[float, float]
    diameters: dict[str, tuple[int, ...]]
    """Nominal diameters (mm) by street class."""


NETWORKS = (
    NetworkSpec("water", "W", (2.5, 2.5), (0, 1, 5, 9, 10), True, False, (1.2, 1.8),
                {PRIMARY: (500, 600), SECONDARY: (400, 500), TERTIARY: (200, 300), RESIDENTIAL: (100, 150, 200)}),
    NetworkSpec("sewer", "S", (0.0, 0.0), (0, 3, 5, 7, 10), False, True, (2.5, 4.5),
                {PRIMARY: (800, 1000), SECONDARY: (600, 800), TERTIARY: (500, 600), RESIDENTIAL: (300, 400)}),
    NetworkSpec("storm", "R", (-2.5, 2.5), (0, 4, 7, 10), False, True, (1.5, 3.0),
                {PRIMARY: (1200, 1500), SECONDARY: (1000, 1200), TERTIARY: (800, 1000), RESIDENTIAL: (400, 600)}),
    NetworkSpec("gas", "G", (-2.5, -2.5), (0, 1, 9, 10), True, False, (0.9, 1.3),
                {PRIMARY: (300, 400), SECONDARY: (250, 300), TERTIARY: (160, 200), RESIDENTIAL: (110, 160)}),
    NetworkSpec("heat", "H", (2.5, -2.5), (0, 5, 10), True, False, (1.5, 2.2),
                {PRIMARY: (400, 500), SECONDARY: (300, 400), TERTIARY: (200, 300), RESIDENTIAL: (150,)}),
)  # fmt: skip


def ids(prefix: str, n: int, width: int = 7) -> list[str]:
    """`prefix0000001`, `prefix0000002`, ... : `n` zero-padded feature ids."""
    return [f"{prefix}{i:0{width}d}" for i in range(1, n + 1)]


def frame(data: dict, geometry: np.ndarray) -> gpd.GeoDataFrame:
    """A frame of `data` and `geometry` in the survey CRS."""
    return gpd.GeoDataFrame(
        pd.DataFrame(data), geometry=np.asarray(geometry, dtype=object), crs=CRS
    )


def radius(city: City, xy: np.ndarray) -> np.ndarray:
    """Distance from the district centre as a share of the half-width (0 centre, ~1 edge)."""
    return np.hypot(xy[:, 0] - city.origin[0], xy[:, 1] - city.origin[1]) / city.half


def install_years(city: City, xy: np.ndarray, g: np.random.Generator) -> np.ndarray:
    """Older in the centre, newer towards the edge of the district."""
    r = radius(city, xy)
    base = np.where(r < 0.3, 1978, np.where(r < 0.6, 1996, 2008))
    spread = np.where(r < 0.3, 20, np.where(r < 0.6, 16, 16))
    return (base + np.floor(g.random(len(xy)) * spread)).astype(np.int64)


def farthest_points(pts: np.ndarray, k: int) -> np.ndarray:
    """Indices of `k` points spread out over `pts` (farthest-point sampling from the south-west)."""
    picked = [int(np.argmin(pts[:, 0] + pts[:, 1]))]
    dist = np.hypot(*(pts - pts[picked[0]]).T)
    while len(picked) < min(k, len(pts)):
        nxt = int(np.argmax(dist))
        picked.append(nxt)
        dist = np.minimum(dist, np.hypot(*(pts - pts[nxt]).T))
    return np.array(picked)


# -- pipes and fittings ---------------------------------------------------------------------


def _network_edges(city: City, spec: NetworkSpec) -> np.ndarray:
    s = city.streets
    keep = np.ones(len(s.edges), dtype=bool)
    if not spec.on_bridges:
        keep &= ~s.bridge
    if spec.name == "heat":
        # District heating serves the dense core only, along the larger streets.
        mid = s.xy[s.edges[:, s.edges.shape[1] // 2]]
        keep &= (radius(city, mid) < 0.35) & (s.kind != RESIDENTIAL)
    return np.flatnonzero(keep)


def _material(
    network: str, diameter: np.ndarray, year: np.ndarray, g: np.random.Generator
) -> np.ndarray:
    n = len(diameter)
    out = np.empty(n, dtype=object)
    u = g.random(n)
    if network == "water":
        out[:] = "DI"
        out[(year < 1992) & (u < 0.6)] = "CI"
        out[(diameter <= 200) & (year >= 2000) & (u < 0.5)] = "PE"
        out[diameter >= 800] = "STEEL"
    elif network == "sewer":
        out[:] = np.where(diameter >= 600, "CONC", np.where(year < 1995, "VCP", "HDPE"))
    elif network == "storm":
        out[:] = np.where(diameter >= 800, "CONC", "HDPE")
    elif network == "gas":
        out[:] = np.where(diameter <= 250, "PE", "STEEL")
    else:
        out[:] = "STEEL"
    return out


def pipes_and_fittings(city: City) -> tuple[gpd.GeoDataFrame, gpd.GeoDataFrame]:
    """Pipes of every network, and the valves, hydrants and pumps on the water and gas mains."""
    s = city.streets
    frames = []
    fittings: list[dict] = []
    elevation = city.elevation(s.xy)
    for spec in NETWORKS:
        g = rng(city.seed, f"pipes-{spec.name}")
        chosen = _network_edges(city, spec)
        if not len(chosen):
            continue
        edges = s.edges[chosen]
        if spec.downhill:
            uphill = elevation[edges[:, -1]] > elevation[edges[:, 0]]
            edges = np.where(uphill[:, None], edges[:, ::-1], edges)
        kind = s.kind[chosen]
        mid_xy = s.xy[edges[:, edges.shape[1] // 2]]
        year = install_years(city, mid_xy, g)
        options = [spec.diameters[k] for k in kind]
        diameter = np.array([opt[int(g.integers(len(opt)))] for opt in options], dtype=float)
        depth = np.round(g.uniform(*spec.depth_m, len(chosen)), 1)
        if spec.downhill:
            depth = np.round(depth + np.where(np.isin(kind, [PRIMARY, SECONDARY]), 0.8, 0.0), 1)
        material = _material(spec.name, diameter, year, g)
        zone = _zones(city, spec.name, mid_xy, kind)
        offset = np.array(spec.offset)
        cuts = spec.cuts
        pieces_geom = []
        piece_edge = []
        piece_order = []
        for p in range(len(cuts) - 1):
            slots = edges[:, cuts[p] : cuts[p + 1] + 1]
            length = slots.shape[1]
            coords = s.xy[slots.ravel()] + offset
            pieces_geom.append(
                shapely.linestrings(coords, indices=np.repeat(np.arange(len(edges)), length))
            )
            piece_edge.append(np.arange(len(edges)))
            piece_order.append(np.full(len(edges), p))
        geom = np.concatenate(pieces_geom)
        edge_of = np.concatenate(piece_edge)
        order = np.lexsort([np.concatenate(piece_order), edge_of])
        geom, edge_of = geom[order], edge_of[order]
        n = len(geom)
        frames.append(
            frame(
                {
                    "pipe_id": ids(spec.prefix, n),
                    "network": [spec.name] * n,
                    "material": material[edge_of],
                    "diameter_mm": diameter[edge_of],
                    "install_year": year[edge_of],
                    "depth_m": depth[edge_of],
                    "pressure_zone": zone[edge_of],
                    "status": ["in_service"] * n,
                },
                geom,
            )
        )
        if spec.name in ("water", "gas"):
            fittings += _valves(city, spec, chosen, edges, diameter, year, depth)
        if spec.name == "water":
            fittings += _hydrants(city, spec, chosen, edges, year)
            fittings += _pumps(city, spec, chosen, edges)
    pipes = pd.concat(frames, ignore_index=True)
    valves = _fittingsframe(fittings, city.seed)
    return gpd.GeoDataFrame(pipes, geometry="geometry", crs=CRS), valves


def _zones(city: City, network: str, xy: np.ndarray, kind: np.ndarray) -> np.ndarray:
    if network == "water":
        z = city.elevation(xy)
        return np.where(z < 30, "JX-低区", np.where(z < 45, "JX-中区", "JX-高区")).astype(object)
    if network == "gas":
        return np.where(np.isin(kind, [PRIMARY, SECONDARY]), "中压A", "低压").astype(object)
    if network == "heat":
        return np.full(len(xy), "JX-热网一期", dtype=object)
    quadrant = (xy[:, 0] > city.origin[0]).astype(int) + 2 * (xy[:, 1] > city.origin[1])
    names = np.array(["汇水区-西南", "汇水区-东南", "汇水区-西北", "汇水区-东北"], dtype=object)
    return names[quadrant]


def _valves(
    city: City, spec: NetworkSpec, chosen: np.ndarray, edges: np.ndarray, diameter, year, depth
) -> list[dict]:
    """Valves on each leg of a junction (water), on arterial legs only (gas)."""
    s = city.streets
    net_degree = np.bincount(np.concatenate([edges[:, 0], edges[:, -1]]), minlength=len(s.xy))
    out = []
    arterial = np.isin(s.kind[chosen], [PRIMARY, SECONDARY])
    for end, slot in ((0, 1), (-1, -2)):
        at = net_degree[edges[:, end]] >= 3
        if spec.name == "gas":
            at &= arterial
        for e in np.flatnonzero(at).tolist():
            out.append(
                {
                    "kind": "valve",
                    "network": spec.name,
                    "xy": s.xy[edges[e, slot]] + np.array(spec.offset),
                    "diameter_mm": float(diameter[e]),
                    "install_year": int(year[e]),
                    "depth_m": float(depth[e]),
                }
            )
    return out


def perpendicular(
    lines: np.ndarray, at: np.ndarray, side: np.ndarray, distance: np.ndarray
) -> np.ndarray:
    """Points `distance` metres to the left (side=1) or right (-1) of lines at `at` metres."""
    p = shapely.get_coordinates(shapely.line_interpolate_point(lines, at))
    q = shapely.get_coordinates(shapely.line_interpolate_point(lines, at + 1.0))
    d = q - p
    d /= np.hypot(d[:, 0], d[:, 1])[:, None]
    normal = np.c_[-d[:, 1], d[:, 0]]
    return p + normal * (side * distance)[:, None]


def _hydrants(
    city: City, spec: NetworkSpec, chosen: np.ndarray, edges: np.ndarray, year
) -> list[dict]:
    """A hydrant beside the main about every 100 m: at 40 m on every edge, 120 m on every other."""
    s = city.streets
    lines = shapely.linestrings(
        s.xy[edges.ravel()] + np.array(spec.offset),
        indices=np.repeat(np.arange(len(edges)), edges.shape[1]),
    )
    second = s.position[chosen] % 2 == 0
    rows = np.concatenate([np.arange(len(edges)), np.flatnonzero(second)])
    at = np.concatenate([np.full(len(edges), 40.0), np.full(int(second.sum()), 120.0)])
    lengths = shapely.length(lines[rows])
    at = np.minimum(at, lengths - 2.0)
    xy = perpendicular(lines[rows], at, np.ones(len(rows)), np.full(len(rows), 2.0))
    g = rng(city.seed, "hydrants")
    sizes = np.where(g.random(len(rows)) < 0.7, 100.0, 150.0)
    return [
        {
            "kind": "hydrant",
            "network": "water",
            "xy": xy[i],
            "diameter_mm": float(sizes[i]),
            "install_year": int(year[r]),
        }
        for i, r in enumerate(rows.tolist())
    ]


def _pumps(city: City, spec: NetworkSpec, chosen: np.ndarray, edges: np.ndarray) -> list[dict]:
    """Water pumping stations at arterial junctions spread over the district."""
    s = city.streets
    arterial = np.isin(s.kind[chosen], [PRIMARY, SECONDARY])
    candidates = np.unique(edges[arterial][:, [0, -1]])
    if not len(candidates):
        candidates = np.unique(edges[:, [0, -1]])
    pts = s.xy[candidates]
    picked = farthest_points(pts, {"small": 2, "city": 3}.get(city.size, 8))
    return [
        {
            "kind": "pump",
            "network": "water",
            "xy": pts[i] + np.array(spec.offset),
            "diameter_mm": 600.0,
            "install_year": 2005,
        }
        for i in picked.tolist()
    ]


def _fittingsframe(fittings: list[dict], seed: int) -> gpd.GeoDataFrame:
    n = len(fittings)
    g = rng(seed, "valve-states")
    kind = np.array([f["kind"] for f in fittings], dtype=object)
    is_valve = kind == "valve"
    u = g.random(n)
    normally_open = np.array(
        [bool(x) if v else None for x, v in zip(u >= 0.02, is_valve, strict=True)], dtype=object
    )
    operable = np.where(g.random(n) >= 0.05, True, False)
    operable = np.where(kind == "pump", True, operable)
    prefixes = {"valve": "V", "hydrant": "FH", "pump": "P"}
    counters: dict[str, int] = {}
    ids = []
    for k in kind.tolist():
        counters[k] = counters.get(k, 0) + 1
        ids.append(f"{prefixes[k]}{counters[k]:07d}")
    xy = np.array([f["xy"] for f in fittings]) if n else np.zeros((0, 2))
    return frame(
        {
            "valve_id": ids,
            "kind": kind,
            "network": [f["network"] for f in fittings],
            "normally_open": pd.array(normally_open, dtype="boolean"),
            "operable": pd.array(operable, dtype="boolean"),
            "diameter_mm": [f["diameter_mm"] for f in fittings],
            "install_year": [f["install_year"] for f in fittings],
            "depth_m": [f.get("depth_m") for f in fittings],
            "status": ["in_service"] * n,
        },
        shapely.points(xy),
    )
