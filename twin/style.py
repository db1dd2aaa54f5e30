"""The MapLibre style of the twin: a colour and width per asset kind and status.

Pure: it takes the visible layers and rasters and URLs, and returns the style document. Every
vector layer reads the composite tile source, whose `promoteId` is the feature id, so a map can
highlight a feature with `setFeatureState({source: "twin", sourceLayer, id}, {selected: true})`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from layers.layer import Layer
from layers.models import GeometryFamily
from layers.store import RasterInfo

SOURCE = "twin"
HIGHLIGHT = "#ff00ff"

NETWORK_COLOURS: dict[str, str] = {
    "water": "#1f78b4",
    "sewer": "#8c510a",
    "storm": "#35978f",
    "gas": "#e6ab02",
    "heat": "#e31a1c",
    "reclaimed": "#984ea3",
}
LIGHT_COLOURS = {"on": "#ffd92f", "off": "#636363", "fault": "#e41a1c"}
VALVE_COLOURS = {"valve": "#1f78b4", "hydrant": "#e41a1c", "meter": "#4daf4a", "pump": "#984ea3"}
ROAD_COLOURS = {
    "motorway": "#e892a2",
    "trunk": "#f9b29c",
    "primary": "#fcd6a4",
    "secondary": "#f7fabf",
    "tertiary": "#ffffff",
}
ROAD_WIDTHS = {"motorway": 3.0, "trunk": 2.6, "primary": 2.2, "secondary": 1.8, "tertiary": 1.4}
CONDITION_COLOURS = {1: "#1a9641", 2: "#a6d96a", 3: "#fdae61", 4: "#f46d43", 5: "#d7191c"}
GRID_WIDTHS = {"district": 3.0, "street": 2.0, "community": 1.2, "cell": 0.6}
CUSTOM_COLOUR = "#7570b3"
RETIRED = ["abandoned", "removed"]


def _match(prop: str, table: Mapping[Any, Any], default: Any) -> list:
    expr: list[Any] = ["match", ["coalesce", ["get", prop], ""]]
    for k, v in table.items():
        expr += [k, v]
    return [*expr, default]


def _selected(colour: Any) -> list:
    """`colour`, or the highlight colour while the feature's state is `selected`."""
    return ["case", ["boolean", ["feature-state", "selected"], False], HIGHLIGHT, colour]


def _by_zoom(low: Any, high: Any, z0: int = 10, z1: int = 18) -> list:
    return ["interpolate", ["linear"], ["zoom"], z0, low, z1, high]


def _layer(id: str, kind: str, source_layer: str, minzoom: int, **parts: Any) -> dict:
    out: dict[str, Any] = {
        "id": id,
        "type": kind,
        "source": SOURCE,
        "source-layer": source_layer,
        "minzoom": minzoom,
    }
    out.update({k.replace("_", "-"): v for k, v in parts.items() if v is not None})
    return out


def _pipes(name: str, z: int) -> list[dict]:
    colour = _match("network", NETWORK_COLOURS, "#888888")
    # Width grows with zoom and with the pipe's diameter (150 mm when unknown).
    diameter = ["/", ["coalesce", ["get", "diameter_mm"], 150], 300]
    width = _by_zoom(0.6, ["+", 1.5, ["min", ["*", 4, diameter], 8]], 10, 18)
    retired = ["in", ["coalesce", ["get", "status"], ""], ["literal", RETIRED]]
    return [
        _layer(
            f"{name}-retired",
            "line",
            name,
            z,
            filter=retired,
            paint={
                "line-color": _selected(colour),
                "line-width": width,
                "line-opacity": 0.5,
                "line-dasharray": [2, 2],
            },
        ),
        _layer(
            name,
            "line",
            name,
            z,
            filter=["!", retired],
            layout={"line-cap": "round", "line-join": "round"},
            paint={"line-color": _selected(colour), "line-width": width},
        ),
    ]


def _valves(name: str, z: int) -> list[dict]:
    inoperable = ["==", ["get", "operable"], False]
    return [
        _layer(
            name,
            "circle",
            name,
            z,
            paint={
                "circle-color": _selected(_match("kind", VALVE_COLOURS, "#1f78b4")),
                "circle-radius": _by_zoom(2, 6, 12, 18),
                "circle-stroke-color": ["case", inoperable, "#e41a1c", "#ffffff"],
                "circle-stroke-width": ["case", inoperable, 2, 1],
            },
        )
    ]


def _lights(name: str, z: int) -> list[dict]:
    fault = ["==", ["get", "status"], "fault"]
    return [
        _layer(
            name,
            "circle",
            name,
            z,
            paint={
                "circle-color": _selected(_match("status", LIGHT_COLOURS, "#bdbdbd")),
                "circle-radius": _by_zoom(["case", fault, 3, 1.5], ["case", fault, 8, 5], 12, 18),
                "circle-stroke-color": "#333333",
                "circle-stroke-width": ["case", fault, 1.5, 0.5],
            },
        )
    ]


def _roads(name: str, z: int) -> list[dict]:
    factor = _match("class", ROAD_WIDTHS, 1.0)
    return [
        _layer(
            f"{name}-casing",
            "line",
            name,
            z,
            layout={"line-cap": "round", "line-join": "round"},
            paint={
                "line-color": "#9e9e9e",
                "line-width": _by_zoom(["*", 1.0, factor], ["*", 9.0, factor], 8, 18),
            },
        ),
        _layer(
            name,
            "line",
            name,
            z,
            layout={"line-cap": "round", "line-join": "round"},
            paint={
                "line-color": _selected(_match("class", ROAD_COLOURS, "#ffffff")),
                "line-width": _by_zoom(["*", 0.6, factor], ["*", 7.0, factor], 8, 18),
            },
        ),
    ]


def _bridges(name: str, z: int) -> list[dict]:
    colour = _match("condition", CONDITION_COLOURS, "#8d8d8d")
    polygon = ["==", ["geometry-type"], "Polygon"]
    return [
        _layer(
            f"{name}-fill",
            "fill",
            name,
            z,
            filter=polygon,
            paint={"fill-color": _selected(colour), "fill-opacity": 0.5},
        ),
        _layer(
            name,
            "line",
            name,
            z,
            paint={"line-color": _selected(colour), "line-width": _by_zoom(1.5, 5, 10, 18)},
        ),
    ]


def _parks(name: str, z: int) -> list[dict]:
    return [
        _layer(
            name,
            "fill",
            name,
            z,
            paint={
                "fill-color": _selected("#b8e0a8"),
                "fill-outline-color": "#6a9f58",
                "fill-opacity": 0.7,
            },
        )
    ]


def _grids(name: str, z: int) -> list[dict]:
    return [
        _layer(
            name,
            "line",
            name,
            z,
            paint={
                "line-color": _selected("#6b6bd6"),
                "line-width": _match("level", GRID_WIDTHS, 1.0),
                "line-dasharray": [4, 2],
                "line-opacity": 0.8,
            },
        )
    ]


def _sites(name: str, z: int) -> list[dict]:
    return [
        _layer(
            f"{name}-fill",
            "fill",
            name,
            z,
            paint={"fill-color": _selected("#ff8c00"), "fill-opacity": 0.3},
        ),
        _layer(
            name,
            "line",
            name,
            z,
            paint={"line-color": _selected("#d95f02"), "line-width": 2, "line-dasharray": [3, 1]},
        ),
    ]


def _custom(name: str, z: int, family: GeometryFamily) -> list[dict]:
    out = []
    if family in (GeometryFamily.POLYGON, GeometryFamily.ANY):
        out.append(
            _layer(
                f"{name}-fill",
                "fill",
                name,
                z,
                filter=["==", ["geometry-type"], "Polygon"],
                paint={"fill-color": _selected(CUSTOM_COLOUR), "fill-opacity": 0.3},
            )
        )
    if family in (GeometryFamily.LINE, GeometryFamily.POLYGON, GeometryFamily.ANY):
        out.append(
            _layer(
                f"{name}-line",
                "line",
                name,
                z,
                filter=["!=", ["geometry-type"], "Point"],
                paint={"line-color": _selected(CUSTOM_COLOUR), "line-width": 1.5},
            )
        )
    if family in (GeometryFamily.POINT, GeometryFamily.ANY):
        out.append(
            _layer(
                f"{name}-point",
                "circle",
                name,
                z,
                filter=["==", ["geometry-type"], "Point"],
                paint={
                    "circle-color": _selected(CUSTOM_COLOUR),
                    "circle-radius": _by_zoom(2, 6, 12, 18),
                    "circle-stroke-color": "#ffffff",
                    "circle-stroke-width": 1,
                },
            )
        )
    return out


BUILTIN_STYLES: dict[str, Callable[[str, int], list[dict]]] = {
    "pipes": _pipes,
    "valves": _valves,
    "lights": _lights,
    "roads": _roads,
    "bridges": _bridges,
    "parks": _parks,
    "grids": _grids,
    "sites": _sites,
}
# Drawing order, bottom to top: areas, then networks, then point assets.
ORDER = ("parks", "grids", "sites", "roads", "bridges", "pipes", "valves", "lights")


def style(
    layers: Mapping[str, Layer],
    rasters: Mapping[str, RasterInfo],
    *,
    tilejson_url: str,
    raster_tiles_url: Callable[[str, str], str],
    minzoom: Callable[[Layer], int],
    name: str = "twin",
) -> dict[str, Any]:
    """The MapLibre style drawing `layers` (composite tiles) over `rasters` (hillshade)."""
    sources: dict[str, Any] = {SOURCE: {"type": "vector", "url": tilejson_url, "promoteId": "id"}}
    out_layers: list[dict] = [
        {"id": "background", "type": "background", "paint": {"background-color": "#f4f1ea"}}
    ]
    for rname, info in rasters.items():
        src = f"raster-{rname}"
        sources[src] = {
            "type": "raster",
            "tiles": [raster_tiles_url(rname, "hillshade")],
            "tileSize": 256,
        }
        if info.meta.get("attribution"):
            sources[src]["attribution"] = info.meta["attribution"]
        out_layers.append(
            {"id": src, "type": "raster", "source": src, "paint": {"raster-opacity": 0.5}}
        )
    rank = {n: i for i, n in enumerate(ORDER)}
    ordered = sorted(layers, key=lambda n: (rank.get(n, -1) if layers[n].schema.builtin else -1, n))
    for lname in ordered:
        layer = layers[lname]
        z = minzoom(layer)
        make = BUILTIN_STYLES.get(lname) if layer.schema.builtin else None
        out_layers += make(lname, z) if make else _custom(lname, z, layer.schema.geometry)
    return {
        "version": 8,
        "name": name,
        "metadata": {"twin:layers": list(ordered)},
        "sources": sources,
        "layers": out_layers,
    }
