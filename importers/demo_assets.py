"""The demo city's other assets: street lights, parks, the management grid, construction
sites and the water, laid on its streets and blocks (EPSG:4547 frames), and `build_assets`,
which gathers them with the pipe network of `demo_network`.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely

from importers.demo_city import (
    CRS,
    LOCAL_PREFIXES,
    PRIMARY,
    RESIDENTIAL,
    SECONDARY,
    TERTIARY,
    City,
    rng,
)
from importers.demo_network import (
    farthest_points,
    frame,
    ids,
    perpendicular,
    pipes_and_fittings,
    radius,
)

REFERENCE_DATE = dt.date(2025, 3, 1)
"""Dates in the demo are laid out from this day, so the same seed gives the same files."""

JIEDAO = (
    "纸坊街道", "藏龙岛街道", "庙山街道", "五里界街道", "金口街道", "郑店街道", "乌龙泉街道",
    "山坡街道", "流芳街道", "法泗街道", "安山街道", "湖泗街道", "舒安街道", "金港街道", "豹澥街道",
)  # fmt: skip
COMMUNITY_SUFFIXES = ("", "新村", "花园", "东", "西", "南", "北", "家园", "苑", "里")
CONTRACTORS = (
    "中建三局集团有限公司", "武汉市政建设集团有限公司", "中铁十一局集团有限公司",
    "湖北省工业建筑集团有限公司", "武汉市水务建设工程有限公司", "武汉天然气工程有限公司",
)  # fmt: skip
WORKS = (
    ("给水管网改造", "water"), ("雨污分流改造", "sewer"), ("雨水管道疏浚", "storm"),
    ("燃气管道更新", "gas"), ("道路大修及管线迁改", "water"), ("供热管网接驳", "heat"),
)  # fmt: skip


@dataclass
class Assets:
    """Every demo layer as a frame in EPSG:4547, plus the water."""

    pipes: gpd.GeoDataFrame
    valves: gpd.GeoDataFrame
    lights: gpd.GeoDataFrame
    parks: gpd.GeoDataFrame
    grids: gpd.GeoDataFrame
    sites: gpd.GeoDataFrame
    water: gpd.GeoDataFrame

    def frames(self) -> dict[str, gpd.GeoDataFrame]:
        """Layer name -> frame, in import order."""
        return {
            "pipes": self.pipes,
            "valves": self.valves,
            "lights": self.lights,
            "parks": self.parks,
            "grids": self.grids,
            "sites": self.sites,
            "water": self.water,
        }


# -- street lights ----------------------------------------------------------------------------


def lights(city: City) -> gpd.GeoDataFrame:
    """Street lights every ~32 m: one side of local streets, both sides of the larger ones."""
    s = city.streets
    g = rng(city.seed, "lights")
    lines = s.lines()
    along = np.array([15.0, 47.0, 79.0, 111.0, 143.0])
    big = np.isin(s.kind, [PRIMARY, SECONDARY, TERTIARY])
    rows, at, side = [], [], []
    for k, t in enumerate(along):
        every = np.arange(len(lines))
        rows.append(every)
        at.append(np.full(len(every), t))
        side.append(np.where(s.line % 2 == 0, 1.0, -1.0))
        both = np.flatnonzero(big)
        rows.append(both)
        at.append(np.full(len(both), t + (16.0 if k < len(along) - 1 else -16.0)))
        side.append(np.where(s.line[both] % 2 == 0, -1.0, 1.0))
    r = np.concatenate(rows)
    order = np.lexsort([np.concatenate(at), r])
    r, t, sd = r[order], np.concatenate(at)[order], np.concatenate(side)[order]
    t = np.minimum(t, shapely.length(lines[r]) - 2.0)
    kind = s.kind[r]
    offset = np.select([np.isin(kind, [PRIMARY, SECONDARY]), kind == TERTIARY], [10.0, 7.0], 5.5)
    xy = perpendicular(lines[r], t, sd, offset)
    n = len(r)
    old = radius(city, xy) < 0.4
    u = g.random(n)
    lamp = np.where(u < np.where(old, 0.45, 0.85), "LED", np.where(u < 0.95, "HPS", "MH")).astype(
        object
    )
    watts = {
        "LED": {PRIMARY: 150.0, SECONDARY: 150.0, TERTIARY: 100.0, RESIDENTIAL: 60.0},
        "HPS": {PRIMARY: 250.0, SECONDARY: 250.0, TERTIARY: 150.0, RESIDENTIAL: 100.0},
        "MH": {PRIMARY: 250.0, SECONDARY: 150.0, TERTIARY: 150.0, RESIDENTIAL: 100.0},
    }
    wattage = np.array([watts[lt][k] for lt, k in zip(lamp, kind, strict=True)])
    height = np.select([np.isin(kind, [PRIMARY, SECONDARY]), kind == TERTIARY], [12.0, 10.0], 8.0)
    circuit = np.array(
        [
            f"JX-{line:03d}-{pos // 4:02d}"
            for line, pos in zip(s.line[r].tolist(), s.position[r].tolist(), strict=True)
        ],
        dtype=object,
    )
    v = g.random(n)
    status = np.where(v < 0.95, "on", np.where(v < 0.98, "off", "fault")).astype(object)
    return frame(
        {
            "light_id": ids("L", n),
            "lamp_type": lamp,
            "wattage_w": wattage,
            "height_m": height,
            "circuit": circuit,
            "status": status,
        },
        shapely.points(xy),
    )


# -- parks, grid, sites, water ----------------------------------------------------------------


def parks(city: City) -> gpd.GeoDataFrame:
    """Blocks left as parks: more of them by the water."""
    g = rng(city.seed, "parks")
    n = city.spec.blocks
    b = city.spec.block_m
    bi, bj = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    blocks = city.grid_polygons(bi.ravel() * b, bj.ravel() * b, b)
    centre = shapely.get_coordinates(shapely.centroid(blocks))
    inside = shapely.contains(city.boundary, shapely.points(centre))
    near_water = city.distance_to_water(centre) < 250
    chosen = inside & (g.random(len(blocks)) < np.where(near_water, 0.3, 0.05))
    shapes = shapely.difference(
        shapely.buffer(blocks[chosen], -8.0, join_style="mitre"), city.water.buffer(10.0)
    )
    shapes = np.array([_largest(p) for p in shapes], dtype=object)
    ok = shapely.area(shapes) > 5000
    shapes, centre = shapes[ok], centre[chosen][ok]
    near = city.distance_to_water(centre) < 250
    kinds = np.where(
        g.random(len(shapes)) < 0.75,
        "park",
        np.where(g.random(len(shapes)) < 0.6, "garden", "square"),
    )
    prefixes = list(LOCAL_PREFIXES)
    names = []
    used: set[str] = set()
    for i, (k, wet) in enumerate(zip(kinds.tolist(), near.tolist(), strict=True)):
        if wet:
            base = _nearest_water_name(city, centre[i]) + ("湿地公园" if k == "park" else "公园")
        else:
            base = (
                prefixes[(i * 7 + city.seed) % len(prefixes)]
                + {"park": "公园", "garden": "花园", "square": "广场"}[k]
            )
        name, m = base, 2
        while name in used:
            name, m = f"{base}{m}号", m + 1
        used.add(name)
        names.append(name)
    return frame(
        {"park_id": ids("PK", len(shapes), 4), "name": names, "kind": kinds.astype(object)},
        shapes,
    )


def _largest(geom: shapely.Geometry) -> shapely.Geometry:
    if isinstance(geom, shapely.MultiPolygon):
        return max(geom.geoms, key=lambda p: p.area)
    return geom


def _nearest_water_name(city: City, xy: np.ndarray) -> str:
    pt = shapely.Point(xy)
    named = [*city.lakes, (city.river[0], city.river[2])]
    return min(named, key=lambda nw: nw[1].distance(pt))[0]


def grids(city: City) -> gpd.GeoDataFrame:
    """The management grid: district > street (街道) > community (社区) > cell (网格).

    Cells are 2 x 2 blocks cut to the district; communities 3 x 3 cells; streets group
    communities around a few seats. Each level is the union of the one below, so the
    levels nest exactly and the cells cover the district without overlap.
    """
    n = city.spec.blocks
    b = city.spec.block_m
    side = 2 * b
    m = int(np.ceil(n / 2))
    mesh = np.meshgrid(np.arange(m), np.arange(m), indexing="ij")
    ci, cj = mesh[0].ravel(), mesh[1].ravel()
    raw = city.grid_polygons(ci * side, cj * side, side)
    cells = shapely.intersection(raw, city.boundary)
    cells = np.array([_largest(c) for c in cells], dtype=object)
    ok = shapely.area(cells) > 1.0
    cells, ci, cj = cells[ok], ci[ok], cj[ok]
    community_key = (ci // 3) * (m // 3 + 1) + cj // 3
    keys, community_of = np.unique(community_key, return_inverse=True)
    communities = np.array(
        [shapely.union_all(cells[community_of == c]) for c in range(len(keys))], dtype=object
    )
    centres = shapely.get_coordinates(shapely.point_on_surface(communities))
    n_streets = {"small": 3, "city": 6}.get(city.size, 15)
    seats = centres[farthest_points(centres, n_streets)]
    street_of = np.argmin(
        np.hypot(centres[:, None, 0] - seats[None, :, 0], centres[:, None, 1] - seats[None, :, 1]),
        axis=1,
    )
    used_streets = np.unique(street_of)
    district = "420115"
    rows: list[dict] = [
        {
            "grid_id": district,
            "level": "district",
            "code": district,
            "parent_code": "420100",
            "name": "江夏区",
            "responsible_unit": "武汉市江夏区人民政府",
            "geometry": city.boundary,
        }
    ]
    prefixes = list(LOCAL_PREFIXES)
    rng(city.seed, "communities").shuffle(prefixes)
    community_count = 0
    for si, street in enumerate(used_streets.tolist(), start=1):
        s_code = f"{district}{si:03d}"
        s_name = JIEDAO[(si - 1) % len(JIEDAO)] + ("" if si <= len(JIEDAO) else str(si))
        members = np.flatnonzero(street_of == street)
        rows.append(
            {
                "grid_id": s_code,
                "level": "street",
                "code": s_code,
                "parent_code": district,
                "name": s_name,
                "responsible_unit": f"{s_name}办事处",
                "geometry": shapely.union_all(communities[members]),
            }
        )
        for ki, c in enumerate(members.tolist(), start=1):
            c_code = f"{s_code}{ki:03d}"
            p = prefixes[community_count % len(prefixes)]
            suffix = COMMUNITY_SUFFIXES[
                (community_count // len(prefixes)) % len(COMMUNITY_SUFFIXES)
            ]
            c_name = f"{p}{suffix}社区"
            community_count += 1
            rows.append(
                {
                    "grid_id": c_code,
                    "level": "community",
                    "code": c_code,
                    "parent_code": s_code,
                    "name": c_name,
                    "responsible_unit": f"{c_name}居民委员会",
                    "geometry": communities[c],
                }
            )
            for li, cell in enumerate(np.flatnonzero(community_of == c).tolist(), start=1):
                code = f"{c_code}{li:03d}"
                rows.append(
                    {
                        "grid_id": code,
                        "level": "cell",
                        "code": code,
                        "parent_code": c_code,
                        "name": f"{c_name}第{li}网格",
                        "responsible_unit": f"{c_name}网格工作站",
                        "geometry": cells[cell],
                    }
                )
    frame = pd.DataFrame(rows)
    return gpd.GeoDataFrame(frame, geometry="geometry", crs=CRS)


def sites(city: City) -> gpd.GeoDataFrame:
    """A few permitted excavations over the mains, along the streets."""
    s = city.streets
    g = rng(city.seed, "sites")
    candidates = np.flatnonzero(~s.bridge)
    pick = np.sort(g.choice(candidates, size=min(city.spec.sites, len(candidates)), replace=False))
    lines = s.lines()[pick]
    length = g.uniform(24, 60, len(pick))
    width = g.uniform(8, 14, len(pick))
    mid = shapely.length(lines) / 2
    a = shapely.get_coordinates(shapely.line_interpolate_point(lines, mid - length / 2))
    b = shapely.get_coordinates(shapely.line_interpolate_point(lines, mid + length / 2))
    d = b - a
    d /= np.hypot(d[:, 0], d[:, 1])[:, None]
    nrm = np.c_[-d[:, 1], d[:, 0]] * (width / 2)[:, None]
    rings = np.stack([a + nrm, b + nrm, b - nrm, a - nrm, a + nrm], axis=1)
    start = np.array(
        [REFERENCE_DATE + dt.timedelta(days=int(x)) for x in g.integers(-120, 120, len(pick))]
    )
    end = np.array(
        [
            d0 + dt.timedelta(days=int(x))
            for d0, x in zip(start, g.integers(30, 240, len(pick)), strict=True)
        ]
    )
    works = [WORKS[int(i)] for i in g.integers(len(WORKS), size=len(pick))]
    return frame(
        {
            "site_id": ids("S", len(pick), 4),
            "permit_id": [f"JXJZ-{d0.year}-{i:04d}" for i, d0 in enumerate(start, start=1)],
            "contractor": [
                CONTRACTORS[int(i)] for i in g.integers(len(CONTRACTORS), size=len(pick))
            ],
            "start_date": [d0.isoformat() for d0 in start],
            "end_date": [d1.isoformat() for d1 in end],
            "depth_m": np.round(g.uniform(1.5, 6.0, len(pick)), 1),
            "description": [
                f"{s.line_names[ln]}{w}"
                for ln, (w, _) in zip(s.line[pick].tolist(), works, strict=True)
            ],
        },
        shapely.polygons(rings),
    )


def water(city: City) -> gpd.GeoDataFrame:
    """Lakes and the river, for the map."""
    names = [n for n, _ in city.lakes] + [city.river[0]]
    shapes = np.array(
        [p for _, p in city.lakes] + [city.river[2].intersection(city.boundary.buffer(500))],
        dtype=object,
    )
    return frame(
        {
            "water_id": ids("WB", len(names), 3),
            "name": names,
            "kind": ["lake"] * len(city.lakes) + ["river"],
            "level_m": [19.5] * len(city.lakes) + [17.0],
        },
        shapes,
    )


def build_assets(city: City) -> Assets:
    """Every asset layer of the city."""
    pipes, valves = pipes_and_fittings(city)
    return Assets(
        pipes=pipes,
        valves=valves,
        lights=lights(city),
        parks=parks(city),
        grids=grids(city),
        sites=sites(city),
        water=water(city),
    )
