"""The vectorised encoder against mapbox-vector-tile, the reference encoder, tile by tile."""

from __future__ import annotations

import math
from typing import Any

import mapbox_vector_tile
import numpy as np
import pytest
import shapely

from layers.models import Bounds
from tiles.encode import Properties, encode_layer, varints, zigzag
from tiles.grid import Tile, xy_bounds

TILE = Tile(13394, 6871, 14)
BOUNDS = xy_bounds(TILE)
W = BOUNDS.maxx - BOUNDS.minx
RNG_SEED = 20240601

# The reference encoder calls a shapely function it deprecated itself.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:mapbox_vector_tile.*")


def _xy(rng: np.random.Generator, n: int, margin: float = 0.05) -> np.ndarray:
    """Random points in the tile (plus a margin, as a buffer would keep)."""
    u = rng.uniform(-margin, 1 + margin, (n, 2))
    return np.column_stack([BOUNDS.minx + u[:, 0] * W, BOUNDS.miny + u[:, 1] * W])


def _walk(rng: np.random.Generator, k: int, step: float) -> np.ndarray:
    start = _xy(rng, 1)[0]
    return start + np.cumsum(rng.normal(0, step, (k, 2)), axis=0)


def _star(rng: np.random.Generator, centre: np.ndarray, radius: float, k: int = 9) -> np.ndarray:
    ang = np.sort(rng.uniform(0, 2 * np.pi, k))
    r = radius * rng.uniform(0.5, 1.0, k)
    ring = centre + np.column_stack([np.cos(ang) * r, np.sin(ang) * r])
    return np.vstack([ring, ring[:1]])


def points(rng: np.random.Generator) -> list[Any]:
    return list(shapely.points(_xy(rng, 40)))


def multipoints(rng: np.random.Generator) -> list[Any]:
    out = []
    for _ in range(20):
        pts = _xy(rng, int(rng.integers(1, 6)))
        if rng.random() < 0.3:  # a repeated point: kept, as the reference keeps it
            pts = np.vstack([pts, pts[:1]])
        out.append(shapely.multipoints(pts))
    return out


def lines(rng: np.random.Generator) -> list[Any]:
    out = [shapely.linestrings(_walk(rng, int(rng.integers(2, 25)), W / 20)) for _ in range(30)]
    # Consecutive points closer than a tile unit collapse when rounded.
    p = _xy(rng, 1)[0]
    out.append(shapely.linestrings([p, p + W / 1e5, p + W / 10, p + W / 10 + W / 1e6]))
    return out


def multilines(rng: np.random.Generator) -> list[Any]:
    out = []
    for _ in range(20):
        parts = [
            _walk(rng, int(rng.integers(2, 10)), W / 30) for _ in range(int(rng.integers(1, 4)))
        ]
        if rng.random() < 0.3:  # a part that collapses to one point is left out
            p = _xy(rng, 1)[0]
            parts.append(np.array([p, p + W / 1e6]))
        out.append(shapely.multilinestrings([shapely.linestrings(p) for p in parts]))
    return out


def polygons_with_holes(rng: np.random.Generator) -> list[Any]:
    out = []
    for _ in range(25):
        c = _xy(rng, 1, margin=-0.2)[0]
        shell = _star(rng, c, W / 8)
        holes = []
        if rng.random() < 0.6:
            holes.append(_star(rng, c, W / 40)[::-1])
        poly = shapely.Polygon(shell, holes)
        if rng.random() < 0.5:
            poly = shapely.Polygon(shell[::-1], [h[::-1] for h in holes])  # any orientation in
        out.append(poly)
    # Clockwise rectangle with a counter-clockwise hole.
    out.append(
        shapely.Polygon(
            [
                (BOUNDS.minx, BOUNDS.miny),
                (BOUNDS.minx + W / 2, BOUNDS.miny),
                (BOUNDS.minx + W / 2, BOUNDS.miny + W / 2),
                (BOUNDS.minx, BOUNDS.miny + W / 2),
            ],
            [
                [
                    (BOUNDS.minx + W / 8, BOUNDS.miny + W / 8),
                    (BOUNDS.minx + W / 4, BOUNDS.miny + W / 8),
                    (BOUNDS.minx + W / 4, BOUNDS.miny + W / 4),
                ]
            ],
        )
    )
    return out


def multipolygons(rng: np.random.Generator) -> list[Any]:
    out = []
    for _ in range(15):
        parts = []
        for _ in range(int(rng.integers(1, 4))):
            c = _xy(rng, 1, margin=-0.1)[0]
            parts.append(shapely.Polygon(_star(rng, c, W / 30)))
        out.append(shapely.MultiPolygon(parts))
    return out


def mixed(rng: np.random.Generator) -> list[Any]:
    return points(rng)[:5] + lines(rng)[:5] + polygons_with_holes(rng)[:5] + multipoints(rng)[:3]


CASES = {
    "points": points,
    "multipoints": multipoints,
    "lines": lines,
    "multilines": multilines,
    "polygons_with_holes": polygons_with_holes,
    "multipolygons": multipolygons,
    "mixed": mixed,
}


def _props(rng: np.random.Generator, n: int) -> dict[str, list[Any]]:
    """Columns of every MVT value type, with nulls, shared values and 1 == 1.0 collisions."""
    words = ["main", "valve", "水管", "", "PE", "DI"]
    return {
        "name": [
            None if rng.random() < 0.2 else words[int(rng.integers(len(words)))] for _ in range(n)
        ],
        "ok": [None if rng.random() < 0.2 else bool(rng.random() < 0.5) for _ in range(n)],
        "count": [None if rng.random() < 0.2 else int(rng.integers(-3, 4)) for _ in range(n)],
        "big": [int(rng.integers(0, 2**62)) * (-1 if rng.random() < 0.5 else 1) for _ in range(n)],
        "size": [
            None if rng.random() < 0.2 else float(rng.choice([1.0, 2.5, -0.125, 3.0, 1e300]))
            for _ in range(n)
        ],
    }


def _reference(geoms: list[Any], columns: dict[str, list[Any]], ids: list[int | None]) -> bytes:
    feats = []
    for i, g in enumerate(geoms):
        props = {k: v[i] for k, v in columns.items() if v[i] is not None}
        f: dict[str, Any] = {"geometry": g, "properties": props}
        if ids[i] is not None:
            f["id"] = ids[i]
        feats.append(f)
    return mapbox_vector_tile.encode(
        [{"name": "assets", "features": feats}],
        default_options={"quantize_bounds": tuple(BOUNDS), "extents": 4096},
    )


def _ours(
    geoms: list[Any], columns: dict[str, list[Any]], ids: list[int | None], **kw: Any
) -> bytes:
    return encode_layer(
        "assets",
        np.array(geoms, dtype=object),
        bounds=BOUNDS,
        extent=4096,
        ids=np.array([-1 if i is None else i for i in ids], dtype=np.int64),
        properties=Properties.from_columns(columns),
        **kw,
    )


@pytest.mark.parametrize("case", sorted(CASES))
def test_tiles_are_byte_identical_to_mapbox_vector_tile(case: str) -> None:
    rng = np.random.default_rng([RNG_SEED, sorted(CASES).index(case)])
    geoms = CASES[case](rng)
    columns = _props(rng, len(geoms))
    ids = [None if rng.random() < 0.25 else int(rng.integers(0, 2**40)) for _ in geoms]
    ref = _reference(geoms, columns, ids)
    ours = _ours(geoms, columns, ids)
    assert mapbox_vector_tile.decode(ours) == mapbox_vector_tile.decode(ref)
    assert ours == ref
    # Not vacuous: the tile holds what was asked for.
    decoded = mapbox_vector_tile.decode(ours)["assets"]["features"]
    assert len(decoded) >= len(geoms) - 3
    assert {f["id"] for f in decoded if f["id"]} <= {i for i in ids if i is not None}


def test_transform_maps_lonlat_into_the_tile_like_a_pre_projected_reference() -> None:
    rng = np.random.default_rng(7)
    merc = lines(rng) + polygons_with_holes(rng)

    def to_lonlat(c: np.ndarray) -> np.ndarray:
        lon = np.degrees(c[:, 0] / 6378137.0)
        lat = np.degrees(2 * np.arctan(np.exp(c[:, 1] / 6378137.0)) - np.pi / 2)
        return np.column_stack([lon, lat])

    def to_merc(c: np.ndarray) -> np.ndarray:
        x = np.radians(c[:, 0]) * 6378137.0
        y = np.log(np.tan(np.pi / 4 + np.radians(c[:, 1]) / 2)) * 6378137.0
        return np.column_stack([x, y])

    lonlat = list(shapely.transform(np.array(merc, dtype=object), to_lonlat))
    back = list(shapely.transform(np.array(lonlat, dtype=object), to_merc))
    cols: dict[str, list[Any]] = {"k": [1] * len(merc)}
    ids: list[int | None] = list(range(len(merc)))
    assert _ours(lonlat, cols, ids, transform=to_merc) == _reference(back, cols, ids)


@pytest.mark.parametrize(
    "geom",
    [
        shapely.Point(),
        shapely.LineString(),
        shapely.Polygon(),
        None,
        # Collapses to a single point once rounded to the grid: nothing to draw.
        shapely.LineString(
            [(BOUNDS.minx + 10, BOUNDS.miny + 10), (BOUNDS.minx + 10.01, BOUNDS.miny + 10)]
        ),
        shapely.box(BOUNDS.minx + 10, BOUNDS.miny + 10, BOUNDS.minx + 10.02, BOUNDS.miny + 10.02),
    ],
    ids=[
        "empty-point",
        "empty-line",
        "empty-polygon",
        "missing",
        "line-to-point",
        "polygon-to-point",
    ],
)
def test_empty_and_degenerate_geometries_are_left_out(geom: Any) -> None:
    good = shapely.Point(BOUNDS.minx + W / 2, BOUNDS.miny + W / 2)
    geoms = [geom, good]
    cols: dict[str, list[Any]] = {"name": ["gone", "kept"]}
    ids: list[int | None] = [1, 2]
    ours = _ours(geoms, cols, ids)
    feats = [
        {"geometry": g, "properties": {"name": n}, "id": i}
        for g, n, i in zip(geoms, cols["name"], ids, strict=True)
        if g is not None
    ]
    ref = mapbox_vector_tile.encode(
        [{"name": "assets", "features": feats}],
        default_options={"quantize_bounds": tuple(BOUNDS), "extents": 4096},
    )
    assert ours == ref
    decoded = mapbox_vector_tile.decode(ours)["assets"]["features"]
    assert [f["properties"] for f in decoded] == [{"name": "kept"}]
    assert decoded[0]["geometry"] == {"type": "Point", "coordinates": [2048, 2048]}


def test_flat_rings_decode_identically() -> None:
    """Rings with no area once rounded: oriented by signed area here, by GEOS there; their
    direction differs, but decoders drop zero-area rings, so the tiles decode the same."""
    x0, y0 = BOUNDS.minx + W / 4, BOUNDS.miny + W / 4
    u = W / 4096
    flat_hole = shapely.Polygon(
        [(x0, y0), (x0 + 400 * u, y0), (x0 + 400 * u, y0 + 400 * u), (x0, y0 + 400 * u)],
        [[(x0 + 10 * u, y0 + 10 * u), (x0 + 50 * u, y0 + 10 * u), (x0 + 90 * u, y0 + 10.2 * u)]],
    )
    flat_shell = shapely.Polygon([(x0, y0), (x0 + 100 * u, y0), (x0 + 200 * u, y0 + 0.1 * u)])
    geoms = [flat_hole, flat_shell]
    cols: dict[str, list[Any]] = {"k": ["a", "b"]}
    ids: list[int | None] = [1, 2]
    ours = mapbox_vector_tile.decode(_ours(geoms, cols, ids))
    ref = mapbox_vector_tile.decode(_reference(geoms, cols, ids))
    assert ours == ref
    assert ours["assets"]["features"][0]["geometry"]["type"] == "Polygon"


def test_nan_properties_are_left_out_and_numbers_keep_their_type() -> None:
    geoms = [shapely.Point(BOUNDS.minx + 1, BOUNDS.miny + 1)] * 3
    cols = {"x": [math.nan, 2.0, 3.5], "n": [1, None, 7]}
    decoded = mapbox_vector_tile.decode(_ours(geoms, cols, [1, 2, 3]))["assets"]["features"]
    assert [f["properties"] for f in decoded] == [{"n": 1}, {"x": 2.0}, {"x": 3.5, "n": 7}]
    assert isinstance(decoded[1]["properties"]["x"], float)


def test_varints_and_zigzag_match_the_protobuf_rules() -> None:
    values = np.array(
        [0, 1, 127, 128, 300, 16383, 16384, 2**32 - 1, 2**63, 2**64 - 1], dtype=np.uint64
    )
    expected = b""
    for v in values.tolist():
        while v >= 0x80:
            expected += bytes([(v & 0x7F) | 0x80])
            v >>= 7
        expected += bytes([v])
    assert varints(values) == expected
    assert zigzag(np.array([0, -1, 1, -2, 2, -(2**31), 2**31 - 1])).tolist() == [
        0,
        1,
        2,
        3,
        4,
        2**32 - 1,
        2**32 - 2,
    ]


def test_empty_input_gives_no_layer() -> None:
    assert encode_layer("assets", np.array([], dtype=object), bounds=Bounds(0, 0, 1, 1)) == b""
