"""The MapLibre style of the twin: a colour and width per asset kind and status.

Pure: it takes the visible layers and rasters and URLs, and returns the style document. Every
vector layer reads the composite tile source, whose `promoteId` is the feature id, so a map can
highlight a feature with `setFeatureState({source: "twin", sourceLayer, id}, {selected: true})`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from layers.layer import Head
from layers.models import GeometryFamily
from layers.store import RasterInfo

SOURCE = "twin"
HIGHLIGHT = "#ff00ff"
"""A feature picked on the map (feature state `selected`)."""
FOUND = "#7b2cbf"
"""A feature a tool found: a trace's valves and pipes, a query's answer (feature state `hit`)."""
FONT = ["Noto Sans Regular"]
"""The labels' font stack: its glyphs come from the server (`/fonts/...`, `twin.glyphs`), but
for Chinese, Japanese and Korean, which MapLibre draws in the browser from local fonts."""

# Okabe–Ito colours (apart for the common colour-vision deficiencies), one family per network;
# valves take their network's colour, their kind is told by the symbol, their state by its ring.
NETWORK_COLOURS: dict[str, str] = {
    "water": "#0072b2",
    "sewer": "#8e5a2d",
    "storm": "#009e73",
    "gas": "#e69f00",
    "heat": "#d55e00",
    "reclaimed": "#cc79a7",
}
NETWORK_OFFSETS: dict[str, float] = {
    "water": -4.5,
    "sewer": -1.5,
    "storm": 1.5,
    "gas": 4.5,
    "heat": 7.5,
    "reclaimed": -7.5,
}
"""Pixels each network is drawn beside the street's line at zoom 18 (less further out), so the
mains laid along one street read as a bundle of parallel lines, not one line of five colours."""
NETWORK_TITLES: dict[str, tuple[str, str]] = {
    "water": ("Water", "给水"),
    "sewer": ("Sewer", "污水"),
    "storm": ("Storm water", "雨水"),
    "gas": ("Gas", "燃气"),
    "heat": ("District heat", "热力"),
    "reclaimed": ("Reclaimed water", "再生水"),
}
LIGHT_COLOURS = {"on": "#f0e442", "off": "#9e9e9e", "fault": "#ffffff"}
FAULT_COLOUR = "#d55e00"
"""The ring and mark of a lamp out (its fill is white: a lamp with a fault mark)."""
VALVE_KINDS: dict[str, tuple[str, str]] = {
    "valve": ("Valve", "阀门"),
    "hydrant": ("Hydrant", "消火栓"),
    "meter": ("Meter", "水表/计量"),
    "pump": ("Pump", "泵站"),
}
ROAD_COLOURS = {
    "motorway": "#f7c873",
    "trunk": "#fad99a",
    "primary": "#fce7b9",
    "secondary": "#fffbe6",
    "tertiary": "#ffffff",
}
ROAD_WIDTHS = {"motorway": 3.0, "trunk": 2.6, "primary": 2.2, "secondary": 1.8, "tertiary": 1.4}
# Red-yellow-blue (diverging, colour-blind safe): 1 good .. 5 poor.
CONDITION_COLOURS = {1: "#2c7bb6", 2: "#abd9e9", 3: "#ffffbf", 4: "#fdae61", 5: "#d7191c"}
GRID_WIDTHS = {"district": 3.0, "street": 2.0, "community": 1.2, "cell": 0.6}
GRID_COLOUR = "#5e4fa2"
GRID_LABEL_ZOOMS = {
    "district": (0, 13),
    "street": (13, 14.5),
    "community": (14.5, 16),
    "cell": (16, 24),
}
"""The zooms between which each grid level's names are shown (coarser levels further out)."""
WATER_FILL, WATER_LINE = "#a6cee3", "#5b9bc8"
PARK_FILL, PARK_LINE = "#c7e3b0", "#7fb069"
SITE_LINE = "#444444"
CUSTOM_COLOUR = "#7570b3"
RETIRED = ["abandoned", "removed"]


def _match(prop: str, table: Mapping[Any, Any], default: Any) -> list:
    expr: list[Any] = ["match", ["coalesce", ["get", prop], ""]]
    for k, v in table.items():
        expr += [k, v]
    return [*expr, default]


def _selected(colour: Any, found: Any = FOUND) -> list:
    """`colour`, or the highlight colour while the feature's state is `selected` (picked), or
    `found` while it is `hit` (found by a tool)."""
    return [
        "case",
        ["boolean", ["feature-state", "selected"], False],
        HIGHLIGHT,
        ["boolean", ["feature-state", "hit"], False],
        found,
        colour,
    ]


def _state_width(width: Any, extra: float = 3.0) -> list:
    """`width` (not zoom-based), wider by `extra` while the feature is picked or found."""
    return ["case", _LIT, ["+", width, extra], width]


_LIT = [
    "any",
    ["boolean", ["feature-state", "selected"], False],
    ["boolean", ["feature-state", "hit"], False],
]


def _by_zoom(low: Any, high: Any, z0: float = 10, z1: float = 18) -> list:
    return ["interpolate", ["linear"], ["zoom"], z0, low, z1, high]


def _layer(id: str, kind: str, source_layer: str, minzoom: float, **parts: Any) -> dict:
    out: dict[str, Any] = {
        "id": id,
        "type": kind,
        "source": SOURCE,
        "source-layer": source_layer,
        "minzoom": minzoom,
    }
    out.update({k.replace("_", "-"): v for k, v in parts.items() if v is not None})
    return out


def _line(id: str, source_layer: str, minzoom: float, paint: dict, **parts: Any) -> dict:
    """A line layer with round caps and joins."""
    layout = {"line-cap": "round", "line-join": "round"}
    return _layer(id, "line", source_layer, minzoom, layout=layout, paint=paint, **parts)


def _label(
    id: str, source_layer: str, minzoom: float, text: Any, colour: str, **extra: Any
) -> dict:
    """A label layer: `text` in `colour` with a white halo, in the local fonts."""
    layout = {
        "text-field": text,
        "text-font": FONT,
        "text-size": extra.pop("size", 12),
        "text-max-width": 8,
        **extra.pop("layout", {}),
    }
    paint = {"text-color": colour, "text-halo-color": "#ffffff", "text-halo-width": 1.4}
    return _layer(id, "symbol", source_layer, minzoom, layout=layout, paint=paint, **extra)


def _pipes(name: str, z: int) -> list[dict]:
    colour = _match("network", NETWORK_COLOURS, "#888888")
    offset = _match("network", NETWORK_OFFSETS, 0)
    # Width grows with zoom and with the pipe's diameter (150 mm when unknown).
    diameter = ["/", ["coalesce", ["get", "diameter_mm"], 150], 300]
    wide = ["+", 1.2, ["min", ["*", 2.5, diameter], 4]]
    width = _by_zoom(0.7, wide, 12, 18)
    retired = ["in", ["coalesce", ["get", "status"], ""], ["literal", RETIRED]]
    common = {"line-offset": _by_zoom(["*", 0.15, offset], offset, 13, 18)}
    # A pipe a tool found keeps its network's colour inside a halo; a picked one turns magenta.
    picked = ["case", ["boolean", ["feature-state", "selected"], False], HIGHLIGHT, colour]
    return [
        _line(
            f"{name}-halo",
            name,
            z,
            {
                "line-color": _selected(FOUND),
                "line-width": _by_zoom(4.7, ["+", 6, wide], 12, 18),
                "line-opacity": ["case", _LIT, 0.75, 0.0],
                **common,
            },
        ),
        _layer(
            f"{name}-retired",
            "line",
            name,
            z,
            filter=retired,
            paint={
                "line-color": picked,
                "line-width": width,
                "line-opacity": 0.6,
                "line-dasharray": [2, 2],
                **common,
            },
        ),
        _line(
            name,
            name,
            z,
            {"line-color": picked, "line-width": width, **common},
            filter=["!", retired],
        ),
    ]


def _pipe_labels(name: str, z: int) -> list[dict]:
    text = [
        "concat",
        [
            "case",
            ["has", "diameter_mm"],
            ["concat", "DN", ["to-string", ["get", "diameter_mm"]]],
            "",
        ],
        " ",
        ["coalesce", ["get", "material"], ""],
    ]
    return [
        _label(
            f"{name}-label",
            name,
            max(z, 17),
            text,
            "#333333",
            size=10,
            layout={"symbol-placement": "line", "text-offset": [0, 0.8], "symbol-spacing": 300},
        )
    ]


def _valves(name: str, z: int) -> list[dict]:
    colour = _match("network", NETWORK_COLOURS, "#888888")
    kind = ["coalesce", ["get", "kind"], "valve"]
    radius = _match("kind", {"hydrant": 5.5, "pump": 7, "meter": 3.5}, 4.5)
    # valve: a dot of its network's colour; hydrant: a ring of it; meter: small dark-ringed
    # dot; pump: large dark-ringed dot. A valve that cannot be worked is crossed out (label).
    fill = ["case", ["==", kind, "hydrant"], "#ffffff", colour]
    ring = _match("kind", {"hydrant": colour, "meter": "#222222", "pump": "#222222"}, "#ffffff")
    ring_width = _match("kind", {"hydrant": 2.5, "meter": 1.5, "pump": 2.5}, 1.2)
    return [
        _layer(
            name,
            "circle",
            name,
            z,
            paint={
                "circle-color": _selected(fill),
                "circle-radius": _by_zoom(["*", 0.35, radius], radius, 13, 18),
                "circle-stroke-color": _selected(ring),
                "circle-stroke-width": _by_zoom(
                    _state_width(["*", 0.4, ring_width], 2.5), _state_width(ring_width, 2.5), 13, 18
                ),
            },
        ),
        _label(
            f"{name}-inoperable",
            name,
            max(z, 15),
            "×",
            "#000000",
            size=16,
            filter=["==", ["get", "operable"], False],
            layout={"text-allow-overlap": True, "text-ignore-placement": True},
        ),
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
                "circle-color": _selected(_match("status", LIGHT_COLOURS, "#dddddd")),
                "circle-radius": [
                    "interpolate",
                    ["linear"],
                    ["zoom"],
                    13,
                    ["case", fault, 2.5, 1],
                    16,
                    ["case", fault, 5, 2.8],
                    18,
                    ["case", fault, 8, 5],
                ],
                "circle-stroke-color": _selected(["case", fault, FAULT_COLOUR, "#555555"]),
                "circle-stroke-width": _by_zoom(
                    ["case", fault, 1.5, 0.3], ["case", fault, 2.5, 0.8], 13, 17
                ),
            },
        ),
        _label(
            f"{name}-fault",
            name,
            max(z, 14),
            "!",
            FAULT_COLOUR,
            size=_by_zoom(9, 14, 14, 18),
            filter=fault,
            layout={"text-allow-overlap": True, "text-ignore-placement": True},
        ),
    ]


def _roads(name: str, z: int) -> list[dict]:
    factor = _match("class", ROAD_WIDTHS, 1.0)
    return [
        _line(
            f"{name}-casing",
            name,
            z,
            {
                "line-color": "#c9c2b6",
                "line-width": _by_zoom(["*", 1.4, factor], ["*", 14.0, factor], 10, 18),
            },
        ),
        _line(
            name,
            name,
            z,
            {
                "line-color": _selected(_match("class", ROAD_COLOURS, "#ffffff")),
                "line-width": _by_zoom(["*", 0.8, factor], ["*", 12.0, factor], 10, 18),
            },
        ),
    ]


def _road_labels(name: str, z: int) -> list[dict]:
    return [
        _label(
            f"{name}-label",
            name,
            max(z, 13),
            ["get", "name"],
            "#3d3d3d",
            size=_by_zoom(11, 14, 13, 18),
            layout={"symbol-placement": "line", "symbol-spacing": 400},
        )
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
            paint={"fill-color": _selected(colour), "fill-opacity": 0.6},
        ),
        _layer(
            f"{name}-casing",
            "line",
            name,
            z,
            paint={"line-color": "#333333", "line-width": _by_zoom(3, 9, 10, 18)},
        ),
        _layer(
            name,
            "line",
            name,
            z,
            paint={"line-color": _selected(colour), "line-width": _by_zoom(1.8, 6, 10, 18)},
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
                "fill-color": _selected(PARK_FILL),
                "fill-outline-color": PARK_LINE,
                "fill-opacity": 0.85,
            },
        )
    ]


def _park_labels(name: str, z: int) -> list[dict]:
    return [_label(f"{name}-label", name, max(z, 14), ["get", "name"], "#2f5d1f", size=11)]


def _water(name: str, z: int) -> list[dict]:
    return [
        _layer(
            f"{name}-fill",
            "fill",
            name,
            z,
            paint={"fill-color": _selected(WATER_FILL), "fill-outline-color": WATER_LINE},
        ),
        _layer(
            f"{name}-line",
            "line",
            name,
            z,
            paint={"line-color": _selected(WATER_LINE), "line-width": _by_zoom(1, 3, 10, 18)},
        ),
    ]


def _water_labels(name: str, z: int) -> list[dict]:
    return [_label(f"{name}-label", name, z, ["get", "name"], "#1f5f99", size=13)]


def _grids(name: str, z: int) -> list[dict]:
    shaded = ["boolean", ["feature-state", "shaded"], False]
    return [
        # Transparent but there: a click inside a cell finds it. A statistic shades it.
        _layer(
            f"{name}-fill",
            "fill",
            name,
            z,
            paint={
                "fill-color": [
                    "interpolate",
                    ["linear"],
                    ["number", ["feature-state", "shade"], 0],
                    0,
                    "#f7fcb9",
                    0.5,
                    "#fd8d3c",
                    1,
                    "#bd0026",
                ],
                "fill-opacity": ["case", shaded, 0.6, 0.0],
            },
        ),
        _layer(
            name,
            "line",
            name,
            z,
            paint={
                "line-color": _selected(GRID_COLOUR),
                "line-width": _state_width(_match("level", GRID_WIDTHS, 1.0), 2),
                "line-dasharray": [4, 2],
                "line-opacity": 0.7,
            },
        ),
    ]


def _grid_labels(name: str, z: int) -> list[dict]:
    out = []
    for level, (low, high) in GRID_LABEL_ZOOMS.items():
        label = _label(
            f"{name}-label-{level}",
            name,
            max(z, low),
            ["get", "name"],
            GRID_COLOUR,
            size=12 if level != "district" else 15,
            filter=["==", ["get", "level"], level],
        )
        label["maxzoom"] = high
        out.append(label)
    return out


def _sites(name: str, z: int) -> list[dict]:
    return [
        _layer(
            f"{name}-fill",
            "fill",
            name,
            z,
            paint={"fill-color": _selected("#bdbdbd"), "fill-opacity": 0.35},
        ),
        _layer(
            name,
            "line",
            name,
            z,
            paint={"line-color": _selected(SITE_LINE), "line-width": 2, "line-dasharray": [3, 1.5]},
        ),
    ]


def _site_labels(name: str, z: int) -> list[dict]:
    return [_label(f"{name}-label", name, max(z, 15), ["get", "permit_id"], SITE_LINE, size=10)]


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


Make = Callable[[str, int], list[dict]]
BUILTIN_STYLES: dict[str, Make] = {
    "pipes": _pipes,
    "valves": _valves,
    "lights": _lights,
    "roads": _roads,
    "bridges": _bridges,
    "parks": _parks,
    "grids": _grids,
    "sites": _sites,
}
BASE_STYLES: dict[str, Make] = {"water": _water}
"""Layers drawn as the base map by their name, built in or not (the demo's lakes and river)."""
LABELS: dict[str, Make] = {
    "water": _water_labels,
    "parks": _park_labels,
    "roads": _road_labels,
    "grids": _grid_labels,
    "sites": _site_labels,
    "pipes": _pipe_labels,
}
"""Label layers, drawn above every layer (text before symbols of assets would hide them)."""
# Drawing order, bottom to top: the base (water, parks, roads), areas, networks, points.
ORDER = ("water", "parks", "roads", "grids", "sites", "bridges", "pipes", "valves", "lights")

GROUPS: tuple[tuple[str, str, str, tuple[str, ...]], ...] = (
    ("networks", "Underground networks", "地下管网", ("pipes", "valves")),
    ("transport", "Transport", "交通", ("roads", "bridges")),
    ("lighting", "Lighting", "照明", ("lights",)),
    ("green", "Green space and water", "绿地与水系", ("parks", "water")),
    ("management", "Management", "网格管理", ("grids", "sites")),
)
"""The layer panel's groups: id, English and Chinese titles, collections (others: `other`)."""


def legend(layers: Mapping[str, Head]) -> dict[str, list[dict[str, Any]]]:
    """What each visible layer's symbols mean, from the same tables the layers are drawn
    with: per collection, entries of a swatch (`line`, `circle`, `ring`, `fill`, `mark`),
    its colours and a label in English and Chinese; `filter` names the property and value an
    entry stands for (the panel's per-network toggles use it)."""

    def entry(kind: str, en: str, zh: str, **more: Any) -> dict[str, Any]:
        return {"swatch": kind, "label": {"en": en, "zh": zh}, **more}

    out: dict[str, list[dict[str, Any]]] = {}
    nets = [(n, c, *NETWORK_TITLES[n]) for n, c in NETWORK_COLOURS.items()]
    if "pipes" in layers:
        out["pipes"] = [
            entry("line", en, zh, colour=c, filter=["network", n]) for n, c, en, zh in nets
        ] + [entry("dash", "Abandoned", "废弃", colour="#888888")]
    if "valves" in layers:
        out["valves"] = [
            entry("circle", "Valve", "阀门", colour="#0072b2", stroke="#ffffff"),
            entry("ring", "Hydrant", "消火栓", colour="#ffffff", stroke="#0072b2"),
            entry("circle", "Meter", "计量表", colour="#0072b2", stroke="#222222", size=7),
            entry("circle", "Pump", "泵", colour="#0072b2", stroke="#222222", size=14),
            entry("mark", "Cannot be operated", "不可操作", colour="#000000", text="×"),
        ]
    if "lights" in layers:
        out["lights"] = [
            entry("circle", "On", "亮", colour=LIGHT_COLOURS["on"], stroke="#555555"),
            entry("circle", "Off", "灭", colour=LIGHT_COLOURS["off"], stroke="#555555"),
            entry("mark", "Fault", "故障", colour=FAULT_COLOUR, stroke=FAULT_COLOUR, text="!"),
        ]
    if "roads" in layers:
        out["roads"] = [entry("line", "Road", "道路", colour="#ffffff", stroke="#c9c2b6")]
    if "bridges" in layers:
        words = {1: ("1 good", "1 良好"), 3: ("3 fair", "3 一般"), 5: ("5 poor", "5 差")}
        out["bridges"] = [entry("line", *words[k], colour=CONDITION_COLOURS[k]) for k in (1, 3, 5)]
    if "parks" in layers:
        out["parks"] = [entry("fill", "Park", "公园绿地", colour=PARK_FILL, stroke=PARK_LINE)]
    if "water" in layers:
        out["water"] = [entry("fill", "Water", "水体", colour=WATER_FILL, stroke=WATER_LINE)]
    if "grids" in layers:
        out["grids"] = [entry("dash", "Grid cell", "网格", colour=GRID_COLOUR)]
    if "sites" in layers:
        out["sites"] = [entry("fill", "Site", "工地", colour="#bdbdbd", stroke=SITE_LINE)]
    return out


def style(
    layers: Mapping[str, Head],
    rasters: Mapping[str, RasterInfo],
    *,
    tilejson_url: str,
    raster_tiles_url: Callable[[str, str], str],
    minzoom: Callable[[Head], int],
    name: str = "twin",
    glyphs_url: str | None = None,
) -> dict[str, Any]:
    """The MapLibre style drawing `layers` (composite tiles) over `rasters` (colour relief
    under a hillshade), labels on top; its metadata holds the layer panel's groups and the
    legend (`legend`)."""
    sources: dict[str, Any] = {SOURCE: {"type": "vector", "url": tilejson_url, "promoteId": "id"}}
    out_layers: list[dict] = [
        {"id": "background", "type": "background", "paint": {"background-color": "#f2efe9"}}
    ]
    for rname, info in rasters.items():
        for kind, src, paint in (
            ("relief", f"raster-{rname}-relief", {"raster-opacity": 0.35}),
            ("hillshade", f"raster-{rname}", {"raster-opacity": 0.75, "raster-contrast": 0.2}),
        ):
            sources[src] = {
                "type": "raster",
                "tiles": [raster_tiles_url(rname, kind)],
                "tileSize": 256,
            }
            if info.meta.get("attribution"):
                sources[src]["attribution"] = info.meta["attribution"]
            out_layers.append(
                {
                    "id": src,
                    "type": "raster",
                    "source": src,
                    "metadata": {"twin:raster": rname, "twin:kind": kind},
                    "paint": paint,
                }
            )
    rank = {n: i for i, n in enumerate(ORDER)}
    ordered = sorted(layers, key=lambda n: (rank.get(n, -1), n))
    labels: list[dict] = []
    for lname in ordered:
        layer = layers[lname]
        z = minzoom(layer)
        make = BUILTIN_STYLES.get(lname) if layer.schema.builtin else None
        make = make or BASE_STYLES.get(lname)
        out_layers += make(lname, z) if make else _custom(lname, z, layer.schema.geometry)
        if lname in LABELS and (layer.schema.builtin or lname in BASE_STYLES):
            labels += LABELS[lname](lname, z)
    groups = []
    for gid, en, zh, members in GROUPS:
        held = [n for n in members if n in layers]
        if held:
            groups.append({"id": gid, "title": {"en": en, "zh": zh}, "collections": held})
    others = [n for n in ordered if not any(n in g[3] for g in GROUPS)]
    if others:
        groups.append(
            {"id": "other", "title": {"en": "Other", "zh": "其他"}, "collections": others}
        )
    out: dict[str, Any] = {
        "version": 8,
        "name": name,
        "metadata": {
            "twin:layers": list(ordered),
            "twin:groups": groups,
            "twin:legend": legend(layers),
            "twin:networks": {
                n: {"colour": c, "title": dict(zip(("en", "zh"), NETWORK_TITLES[n], strict=True))}
                for n, c in NETWORK_COLOURS.items()
            },
            "twin:rasters": list(rasters),
        },
        "sources": sources,
        "layers": [*out_layers, *labels],
    }
    if glyphs_url:
        out["glyphs"] = glyphs_url
    return out
