"""The demo city's ground: a district of Jiangxia (Wuhan) with lakes, a river, terrain and a
street network, generated deterministically from a seed.

Everything is laid out in metres in CGCS2000 / 3-degree Gauss-Kruger CM 114E (EPSG:4547),
the projected CRS Wuhan's own survey data uses, around 114.32°E, 30.35°N. Streets follow a
warped grid: straight-ish blocks of about 160 m with gentle curvature, arterials every fifth
line. Streets meeting water stop at the shore, except arterials (and some others over the
river), which cross on bridges.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Literal

import numpy as np
import shapely
import shapely.affinity
from pyproj import Transformer
from rasterio.features import rasterize
from rasterio.transform import Affine, from_origin
from scipy.ndimage import distance_transform_edt

Size = Literal["small", "city", "large"]
CRS = "EPSG:4547"
"""CGCS2000 / 3-degree Gauss-Kruger CM 114E: the city's survey CRS, in metres."""
CENTRE_LONLAT = (114.32, 30.35)

# Street classes by position in the grid: arterials every fifth line, a collector between.
PRIMARY, SECONDARY, TERTIARY, RESIDENTIAL = "primary", "secondary", "tertiary", "residential"
STEP_M = 20.0
"""Spacing of street vertices along a block side, metres."""
END_M = 4.0
"""Extra vertex this far from each junction: where valves sit on the mains."""

ARTERIAL_NAMES_U = (
    "文化大道",
    "江夏大道",
    "藏龙大道",
    "庙山大道",
    "光谷大道",
    "谭鑫培大道",
    "金龙大街",
    "阳光大道",
    "大花山路",
    "湖北大道",
)
ARTERIAL_NAMES_V = (
    "纸坊大街",
    "熊廷弼路",
    "汤逊湖北路",
    "江夏二桥路",
    "兴新街",
    "中央大街",
    "栗庙路",
    "五里界大道",
    "梁湖大道",
    "青龙山路",
)
LOCAL_PREFIXES = (
    "文化",
    "兴新",
    "东湖",
    "凤凰",
    "江南",
    "明熙",
    "幸福",
    "阳光",
    "金港",
    "清江",
    "龙泉",
    "牛山",
    "谭鑫",
    "复兴",
    "丰收",
    "建设",
    "光明",
    "和平",
    "育才",
    "书院",
    "古驿",
    "青龙",
    "八分山",
    "长山",
    "五里",
    "金水",
    "郑店",
    "山坡",
    "安山",
    "舒安",
    "湖泗",
    "流芳",
    "豹澥",
    "大桥",
    "新城",
    "荷塘",
    "桂园",
    "梅园",
    "桃花",
    "樱花",
)
ORDINALS = ("一", "二", "三", "四", "五", "六", "七", "八", "九", "十")
LAKE_NAMES = (
    "汤逊湖",
    "藏龙湖",
    "黄家湖",
    "青菱湖",
    "野湖",
    "安山湖",
    "上涉湖",
    "鲁湖",
    "斧头湖",
    "梁子湖",
    "团墩湖",
    "北太子湖",
)
RIVER_NAME = "金水河"


@dataclass(frozen=True)
class SizeSpec:
    """How big a demo city is."""

    blocks: int
    """Grid blocks along each side."""
    block_m: float
    lakes: int
    dem_cell_m: float
    sites: int
    hills: int


SIZES: dict[str, SizeSpec] = {
    "small": SizeSpec(blocks=20, block_m=160.0, lakes=2, dem_cell_m=10.0, sites=8, hills=4),
    "city": SizeSpec(blocks=48, block_m=160.0, lakes=4, dem_cell_m=15.0, sites=24, hills=7),
    "large": SizeSpec(blocks=310, block_m=160.0, lakes=12, dem_cell_m=30.0, sites=120, hills=30),
}


def rng(seed: int, part: str) -> np.random.Generator:
    """An independent random stream per part of the city, so parts do not shift each other."""
    return np.random.default_rng([seed, *part.encode("utf-8")])


@dataclass
class Streets:
    """The street network: vertices, and edges between junctions along grid lines.

    `edges[e]` lists the vertex indices of edge e from its first junction to its second, at
    0, 4, 20, 40 ... 140, 156, 160 m (`STEP_M` and `END_M`); every edge has the same count.
    """

    xy: np.ndarray
    """(n, 2) vertex coordinates, EPSG:4547 metres."""
    junction: np.ndarray
    """(n,) bool: the vertex is a grid junction."""
    edges: np.ndarray
    """(m, k) int vertex indices."""
    line: np.ndarray
    """(m,) int: the grid line the edge lies on (u-lines first, then v-lines)."""
    position: np.ndarray
    """(m,) int: the edge's place along its line."""
    kind: np.ndarray
    """(m,) object: primary, secondary, tertiary or residential."""
    bridge: np.ndarray
    """(m,) bool: the edge crosses water on a bridge."""
    over_river: np.ndarray
    """(m,) bool: the bridge crosses the river (not a lake)."""
    line_names: list[str]
    """Street name of each grid line."""
    oneway: np.ndarray
    """(m,) bool: a one-way street (a few residential lines), digitised in its direction."""

    @property
    def osm_vertices(self) -> np.ndarray:
        """Which of an edge's vertex slots the OSM streets use (junctions and every 40 m)."""
        k = self.edges.shape[1]
        slots = [0, *range(3, k - 2, 2), k - 1]
        return np.array(sorted(set(slots)), dtype=np.int64)

    @cached_property
    def degree(self) -> np.ndarray:
        """Number of street edges meeting at each vertex (0 for inner vertices)."""
        ends = np.concatenate([self.edges[:, 0], self.edges[:, -1]])
        return np.bincount(ends, minlength=len(self.xy))

    def lines(self) -> np.ndarray:
        """Each edge as a shapely LineString (metres)."""
        m, k = self.edges.shape
        return shapely.linestrings(self.xy[self.edges.ravel()], indices=np.repeat(np.arange(m), k))


@dataclass
class City:
    """The generated district: frame, boundary, water, terrain and streets."""

    size: str
    seed: int
    spec: SizeSpec
    origin: tuple[float, float]
    boundary: shapely.Polygon
    lakes: list[tuple[str, shapely.Polygon]]
    river: tuple[str, shapely.LineString, shapely.Polygon]
    dem: np.ndarray
    dem_transform: Affine
    streets: Streets
    water_distance: np.ndarray = field(repr=False)
    """Distance to the nearest water on the DEM grid, metres."""
    warp: Callable[[np.ndarray, np.ndarray], np.ndarray] = field(repr=False)
    """Grid parameters (u, v) in metres to ground metres, relative to `origin`."""

    @property
    def half(self) -> float:
        """Half the grid's side, metres."""
        return self.spec.blocks * self.spec.block_m / 2

    def grid_polygons(self, u0: np.ndarray, v0: np.ndarray, side: float) -> np.ndarray:
        """Ground polygons (EPSG:4547) of grid-parameter squares with corners (u0, v0)."""
        t = np.arange(0.0, side, STEP_M)
        n = len(t)
        pu = np.concatenate([t, np.full(n, side), side - t, np.zeros(n)])
        pv = np.concatenate([np.zeros(n), t, np.full(n, side), side - t])
        u = (np.asarray(u0, dtype=float)[:, None] + pu[None, :]).ravel()
        v = (np.asarray(v0, dtype=float)[:, None] + pv[None, :]).ravel()
        xy = self.warp(u, v) + np.array(self.origin)
        return shapely.polygons(xy.reshape(len(u0), 4 * n, 2))

    @cached_property
    def to_lonlat(self) -> Transformer:
        """EPSG:4547 metres to lon/lat."""
        return Transformer.from_crs(CRS, "EPSG:4326", always_xy=True)

    @cached_property
    def water(self) -> shapely.Geometry:
        """All water as one geometry."""
        return shapely.union_all([p for _, p in self.lakes] + [self.river[2]])

    def cells(self, xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """DEM rows and columns of points (clipped to the grid)."""
        cols, rows = ~self.dem_transform @ (xy[:, 0], xy[:, 1])
        r = np.clip(np.floor(rows).astype(np.int64), 0, self.dem.shape[0] - 1)
        c = np.clip(np.floor(cols).astype(np.int64), 0, self.dem.shape[1] - 1)
        return r, c

    def elevation(self, xy: np.ndarray) -> np.ndarray:
        """Ground elevation (m) at points, from the DEM's nearest cell."""
        r, c = self.cells(xy)
        return self.dem[r, c].astype(np.float64)

    def distance_to_water(self, xy: np.ndarray) -> np.ndarray:
        """Distance (m) from points to the nearest water, from the DEM grid."""
        r, c = self.cells(xy)
        return self.water_distance[r, c]


def _blob(
    centre: np.ndarray, radius: float, g: np.random.Generator, n: int = 72
) -> shapely.Polygon:
    """An irregular, smooth closed shape: a circle with a few random harmonics."""
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    r = np.full(n, radius)
    for h, amp in ((2, 0.16), (3, 0.12), (5, 0.06)):
        r += radius * g.uniform(0.02, amp) * np.cos(h * t + g.uniform(0, 2 * np.pi))
    xy = centre + np.c_[r * np.cos(t), r * np.sin(t)]
    return shapely.make_valid(shapely.Polygon(xy)).buffer(0)


def _warp(spec: SizeSpec, seed: int):
    """The smooth map from grid parameters (u, v) in metres to ground metres (from centre)."""
    g = rng(seed, "warp")
    theta = np.radians(g.uniform(8, 20))
    c, s = np.cos(theta), np.sin(theta)
    half = spec.blocks * spec.block_m / 2
    amps = g.uniform(25, 55, 4)
    waves = g.uniform(1600, 2800, 4)
    phases = g.uniform(0, 2 * np.pi, 4)

    def warp(u: np.ndarray, v: np.ndarray) -> np.ndarray:
        uu, vv = u - half, v - half
        du = amps[0] * np.sin(2 * np.pi * v / waves[0] + phases[0]) + amps[1] * np.sin(
            2 * np.pi * (u + v) / waves[1] + phases[1]
        )
        dv = amps[2] * np.sin(2 * np.pi * u / waves[2] + phases[2]) + amps[3] * np.sin(
            2 * np.pi * (u - v) / waves[3] + phases[3]
        )
        x, y = uu + du, vv + dv
        return np.stack([c * x - s * y, s * x + c * y], axis=-1)

    return warp


def _edge_offsets(block_m: float) -> np.ndarray:
    """Distances along a block side where the street has vertices."""
    inner = np.arange(STEP_M, block_m - STEP_M / 2, STEP_M)
    return np.concatenate([[0.0, END_M], inner, [block_m - END_M, block_m]])


def _grid(
    spec: SizeSpec, warp
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Vertices and edges of the full grid, before anything is removed.

    Returns xy, junction flags, edges (m, k), line ids and positions along the line.
    """
    n = spec.blocks
    b = spec.block_m
    offs = _edge_offsets(b)
    inner = offs[1:-1]
    k_in = len(inner)
    # Junctions: (n+1) x (n+1) grid points.
    ju, jv = np.meshgrid(np.arange(n + 1) * b, np.arange(n + 1) * b, indexing="ij")
    junction_xy = warp(ju.ravel(), jv.ravel())
    n_j = len(junction_xy)

    def jid(i: np.ndarray, j: np.ndarray) -> np.ndarray:
        return i * (n + 1) + j

    # u-lines: i fixed, v runs; edges between (i, j) and (i, j+1).
    ugrid = np.meshgrid(np.arange(n + 1), np.arange(n), indexing="ij")
    ui, uj = ugrid[0].ravel(), ugrid[1].ravel()
    u_inner = warp(
        np.repeat(ui * b, k_in).astype(float), (uj[:, None] * b + inner[None, :]).ravel()
    )
    # v-lines: j fixed, u runs; edges between (i, j) and (i+1, j).
    vgrid = np.meshgrid(np.arange(n + 1), np.arange(n), indexing="ij")
    vj, vi = vgrid[0].ravel(), vgrid[1].ravel()
    v_inner = warp(
        (vi[:, None] * b + inner[None, :]).ravel(), np.repeat(vj * b, k_in).astype(float)
    )
    xy = np.concatenate([junction_xy, u_inner, v_inner])
    junction = np.zeros(len(xy), dtype=bool)
    junction[:n_j] = True
    m_u, m_v = len(ui), len(vj)
    u_edges = np.column_stack(
        [jid(ui, uj), n_j + np.arange(m_u * k_in).reshape(m_u, k_in), jid(ui, uj + 1)]
    )
    v_edges = np.column_stack(
        [jid(vi, vj), n_j + m_u * k_in + np.arange(m_v * k_in).reshape(m_v, k_in), jid(vi + 1, vj)]
    )
    edges = np.concatenate([u_edges, v_edges])
    line = np.concatenate([ui, (n + 1) + vj])
    position = np.concatenate([uj, vi])
    return xy, junction, edges, line, position


def _kind_of_line(index: np.ndarray) -> np.ndarray:
    """Class of each grid line by its index: arterials every fifth line, collectors between."""
    out = np.full(len(index), RESIDENTIAL, dtype=object)
    out[index % 5 == 2] = TERTIARY
    out[index % 10 == 0] = PRIMARY
    out[index % 10 == 5] = SECONDARY
    return out


def _line_names(n_lines: int, per_axis: int, kinds: np.ndarray, seed: int) -> list[str]:
    g = rng(seed, "names")
    prefixes = list(LOCAL_PREFIXES)
    g.shuffle(prefixes)
    names: list[str] = []
    used: set[str] = set()
    for idx in range(n_lines):
        axis, i = divmod(idx, per_axis)
        if kinds[idx] in (PRIMARY, SECONDARY):
            pool = ARTERIAL_NAMES_U if axis == 0 else ARTERIAL_NAMES_V
            base = pool[(i // 5) % len(pool)]
            name = (
                base if (i // 5) < len(pool) else f"{base}{ORDINALS[(i // 5 // len(pool)) % 10]}段"
            )
        else:
            p = prefixes[(i + axis * 7) % len(prefixes)]
            suffix = "路" if axis == 0 else "街"
            name = (
                f"{p}{ORDINALS[(i // len(prefixes)) % 10]}{suffix}"
                if i >= len(prefixes)
                else f"{p}{suffix}"
            )
        while name in used:
            name = name + "东" if axis == 0 else name + "北"
        used.add(name)
        names.append(name)
    return names


def _water(
    spec: SizeSpec, seed: int, half: float
) -> tuple[list[tuple[str, shapely.Polygon]], tuple]:
    g = rng(seed, "water")
    # The river meanders across the district from west to east.
    xs = np.linspace(-half * 1.3, half * 1.3, 200)
    amp = g.uniform(0.08, 0.14) * half
    wave = g.uniform(0.9, 1.4) * half
    y0 = g.uniform(-0.25, 0.25) * half
    ys = (
        y0
        + amp * np.sin(2 * np.pi * xs / wave + g.uniform(0, 2 * np.pi))
        + 0.3 * amp * np.sin(2 * np.pi * xs / (wave / 2.7) + g.uniform(0, 2 * np.pi))
    )
    centre = shapely.LineString(np.c_[xs, ys])
    width = 70.0 if spec.blocks < 100 else 110.0
    river = centre.buffer(width / 2, quad_segs=4)
    lakes: list[tuple[str, shapely.Polygon]] = []
    tries = 0
    while len(lakes) < spec.lakes and tries < 500:
        tries += 1
        radius = g.uniform(0.09, 0.17) * half * (1.6 if spec.blocks > 100 else 1.0)
        c = g.uniform(-0.85 * half, 0.85 * half, 2)
        blob = _blob(c, radius, g)
        if blob.distance(river) < 150 or any(blob.distance(p) < 200 for _, p in lakes):
            continue
        lakes.append(
            (
                LAKE_NAMES[len(lakes) % len(LAKE_NAMES)]
                + ("" if len(lakes) < len(LAKE_NAMES) else str(len(lakes))),
                blob,
            )
        )
    return lakes, (RIVER_NAME, centre, river)


def _terrain(spec: SizeSpec, seed: int, half: float, water: list[tuple[shapely.Geometry, float]]):
    """DEM (float32 metres) on a square grid over the district, and the distance to water."""
    g = rng(seed, "terrain")
    cell = spec.dem_cell_m
    extent = half * 1.15
    n = int(np.ceil(2 * extent / cell))
    transform = from_origin(-extent, extent, cell, cell)
    cols, rows = np.meshgrid(np.arange(n) + 0.5, np.arange(n) + 0.5)
    x = -extent + cols * cell
    y = extent - rows * cell
    z = 24.0 + 0.0008 * (x + y) / 2
    for _ in range(spec.hills):
        cx, cy = g.uniform(-half, half, 2)
        amp = g.uniform(15, 90)
        sigma = g.uniform(250, 700) * (1.5 if spec.blocks > 100 else 1.0)
        z += amp * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * sigma**2))
    for _ in range(3):
        fx, fy = g.uniform(1 / 1500, 1 / 600, 2)
        z += (
            g.uniform(0.8, 2.0)
            * np.sin(2 * np.pi * fx * x + g.uniform(0, 6.3))
            * np.cos(2 * np.pi * fy * y + g.uniform(0, 6.3))
        )
    z = np.maximum(z, 20.5)  # dry land stands above every water level
    # Water surfaces are flat at their level; the banks rise gently from them.
    dist = np.full(z.shape, np.inf)
    for geom, level in water:
        mask = rasterize([(geom, 1)], out_shape=z.shape, transform=transform, fill=0).astype(bool)
        d = distance_transform_edt(~mask) * cell
        bank = level + 0.5 + d * 0.02
        z = np.where(mask, level, np.minimum(z, np.maximum(bank, level + 0.5)))
        dist = np.minimum(dist, d)
    return z.astype(np.float32), transform, dist.astype(np.float32)


def build_city(size: Size | str = "small", seed: int = 1) -> City:
    """Generate the district for a size and seed; the same pair always gives the same city."""
    if size not in SIZES:
        raise ValueError(f"unknown demo size {size!r}: use small, city or large")
    spec = SIZES[size]
    to_m = Transformer.from_crs("EPSG:4326", CRS, always_xy=True)
    ox_, oy_ = to_m.transform(*CENTRE_LONLAT)
    origin = (round(ox_, 3), round(oy_, 3))
    half = spec.blocks * spec.block_m / 2
    warp = _warp(spec, seed)
    xy, junction, edges, line, position = _grid(spec, warp)
    n_lines_axis = spec.blocks + 1
    line_index = np.where(line < n_lines_axis, line, line - n_lines_axis)
    kind = _kind_of_line(line_index)
    g = rng(seed, "boundary")
    t = np.arange(0.0, 2 * half, STEP_M)
    zero, full = np.zeros(len(t)), np.full(len(t), 2 * half)
    outline = shapely.Polygon(
        warp(
            np.concatenate([t, full, 2 * half - t, zero]),
            np.concatenate([zero, t, full, 2 * half - t]),
        )
    )
    boundary = _blob(np.zeros(2), half * 0.9, g, n=120).intersection(outline.buffer(-30.0))
    lakes, river = _water(spec, seed, half)
    lines = shapely.linestrings(
        xy[edges.ravel()], indices=np.repeat(np.arange(len(edges)), edges.shape[1])
    )
    mids = shapely.points(xy[edges[:, edges.shape[1] // 2]])
    inside = shapely.contains(boundary, mids)
    lake_union = shapely.union_all([p for _, p in lakes]) if lakes else shapely.Polygon()
    in_lake = shapely.intersects(lines, lake_union)
    in_river = shapely.intersects(lines, river[2])
    arterial = np.isin(kind, [PRIMARY, SECONDARY])
    # A bridge spans from bank to bank: both ends on dry land, the river's centre line crossed.
    shore = shapely.union_all([lake_union, river[2]]).buffer(5.0)
    ends_wet = shapely.intersects(shore, shapely.points(xy[edges[:, 0]])) | shapely.intersects(
        shore, shapely.points(xy[edges[:, -1]])
    )
    crosses = shapely.intersects(lines, river[1]) & ~ends_wet
    river_bridge = in_river & crosses & (arterial | (kind == TERTIARY) | (line_index % 3 == 0))
    lake_bridge = in_lake & arterial & ~in_river & ~ends_wet
    keep = inside & (~(in_lake | in_river) | river_bridge | lake_bridge)
    bridge = (river_bridge | lake_bridge)[keep]
    over_river = river_bridge[keep]
    edges, line, position, kind = edges[keep], line[keep], position[keep], kind[keep]
    # Drop unused vertices and renumber.
    used = np.unique(edges)
    remap = np.full(len(xy), -1, dtype=np.int64)
    remap[used] = np.arange(len(used))
    xy, junction, edges = xy[used], junction[used], remap[edges]
    xy = xy + np.array(origin)
    names = _line_names(
        2 * n_lines_axis,
        n_lines_axis,
        _kind_of_line(np.r_[np.arange(n_lines_axis), np.arange(n_lines_axis)]),
        seed,
    )
    one_way_lines = rng(seed, "oneway").random(2 * n_lines_axis) < 0.08
    oneway = (kind == RESIDENTIAL) & one_way_lines[line]
    streets = Streets(
        xy=xy,
        junction=junction,
        edges=edges,
        line=line,
        position=position,
        kind=kind,
        bridge=bridge,
        over_river=over_river,
        line_names=names,
        oneway=oneway,
    )
    shift = shapely.affinity.translate
    lakes_m = [(n, shift(p, *origin)) for n, p in lakes]
    river_m = (river[0], shift(river[1], *origin), shift(river[2], *origin))
    dem, transform, dist = _terrain(
        spec, seed, half, [(p, 19.5) for _, p in lakes] + [(river[2], 17.0)]
    )
    transform = Affine.translation(*origin) @ transform
    return City(
        size=str(size),
        seed=seed,
        spec=spec,
        origin=origin,
        boundary=shift(boundary, *origin),
        lakes=lakes_m,
        river=river_m,
        dem=dem,
        dem_transform=transform,
        streets=streets,
        water_distance=dist,
        warp=warp,
    )
