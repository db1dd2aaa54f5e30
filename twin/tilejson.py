"""TileJSON 3.0.0 and OGC tileset documents of vector tiles, from the layers they hold."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from layers.layer import Head
from layers.models import Bounds
from tiles import grid
from tiles.metadata import vector_layer
from tiles.settings import TileSettings

TMS_URI = "http://www.opengis.net/def/tilematrixset/OGC/1.0/WebMercatorQuad"
WORLD = Bounds(-180.0, -85.0511287798066, 180.0, 85.0511287798066)


def _attribution(layers: Mapping[str, Head]) -> str | None:
    seen = dict.fromkeys(
        str(lyr.meta["attribution"]) for lyr in layers.values() if lyr.meta.get("attribution")
    )
    return "; ".join(seen) or None


def tilejson(
    base_url: str, layers: Mapping[str, Head], path: str, settings: TileSettings, *, name: str
) -> dict[str, Any]:
    """TileJSON 3.0.0 of the tiles under `path` (`{path}/{z}/{y}/{x}`) holding `layers`."""
    entries = [vector_layer(lyr, settings).tilejson() for lyr in layers.values()]
    bounds = Bounds.union(lyr.bounds for lyr in layers.values()) or WORLD
    lo = min((e["minzoom"] for e in entries), default=0)
    doc: dict[str, Any] = {
        "tilejson": "3.0.0",
        "name": name,
        "scheme": "xyz",
        "tiles": [f"{base_url}{path}/{{z}}/{{y}}/{{x}}"],
        "minzoom": lo,
        "maxzoom": settings.maxzoom,
        "bounds": list(bounds),
        "center": [
            (bounds.minx + bounds.maxx) / 2,
            (bounds.miny + bounds.maxy) / 2,
            max(lo, min(settings.maxzoom, 14)),
        ],
        "vector_layers": entries,
    }
    attribution = _attribution(layers)
    if attribution:
        doc["attribution"] = attribution
    return doc


def _limits(bounds: Bounds, lo: int, hi: int) -> list[dict[str, Any]]:
    """The rows and columns of every zoom that cover `bounds` (OGC tileMatrixSetLimits)."""
    box = grid.mercator_box(bounds)
    out = []
    for z in range(lo, hi + 1):
        x0, y0, x1, y1 = grid.tile_range(box, z)
        out.append(
            {
                "tileMatrix": str(z),
                "minTileRow": y0,
                "maxTileRow": y1,
                "minTileCol": x0,
                "maxTileCol": x1,
            }
        )
    return out


def tileset_document(
    base_url: str,
    layers: Mapping[str, Head],
    path: str,
    settings: TileSettings,
    *,
    title: str,
    links: list[dict[str, Any]],
) -> dict[str, Any]:
    """OGC API Tiles tileset metadata of the vector tiles under `path`."""
    bounds = Bounds.union(lyr.bounds for lyr in layers.values()) or WORLD
    entries = [vector_layer(lyr, settings).tilejson() for lyr in layers.values()]
    lo = min((e["minzoom"] for e in entries), default=0)
    doc: dict[str, Any] = {
        "title": title,
        "dataType": "vector",
        "crs": "http://www.opengis.net/def/crs/EPSG/0/3857",
        "tileMatrixSetURI": TMS_URI,
        "boundingBox": {
            "lowerLeft": [bounds.minx, bounds.miny],
            "upperRight": [bounds.maxx, bounds.maxy],
            "crs": "http://www.opengis.net/def/crs/OGC/1.3/CRS84",
        },
        "tileMatrixSetLimits": _limits(bounds, lo, settings.maxzoom),
        "layers": [
            {
                "id": e["id"],
                "title": layers[e["id"]].schema.title,
                "dataType": "vector",
                "minTileMatrix": str(e["minzoom"]),
                "maxTileMatrix": str(e["maxzoom"]),
                "propertiesSchema": {
                    "type": "object",
                    "properties": {
                        k: {"type": v.lower() if v != "Number" else "number"}
                        for k, v in e["fields"].items()
                    },
                },
            }
            for e in entries
        ],
        "links": links,
    }
    attribution = _attribution(layers)
    if attribution:
        doc["attribution"] = attribution
    return doc
