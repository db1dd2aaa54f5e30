"""OpenStreetMap extracts into the twin: the road graph and the mapped assets, through osmnx.

`read_osm` turns an extract into one frame per layer, ready for the import pipeline:

- `roads`: the routable road graph (osmnx, every highway in use, simplified) as undirected
  street segments with name, class, lanes, surface, oneway, bridge/tunnel flags, speed;
- `bridges` (`bridge=*`), `lights` (`highway=street_lamp`), `parks` (`leisure=park` and
  similar areas), `pipes` (`man_made=pipeline`, network from `substance`), `valves`
  (`emergency=fire_hydrant`) and the custom `power` layer (`power=*`).

`import_osm` writes them through `importers.pipeline.ingest` with the OSM attribution in
each layer's metadata, and keeps the directed road graph as GraphML in the store with the
`roads` layer, in the same transaction as its roads (`graphs/<source>.graphml`, each edge
carrying the `road_id` of its `roads` feature) for network queries; `load_road_graph` reads
them back as one graph.
"""

from __future__ import annotations

import contextlib
import re
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import geopandas as gpd
import networkx as nx
import numpy as np
import osmnx as ox
import pandas as pd
import shapely
from pyproj import Geod

from importers import osm_tags as tag
from importers.errors import ImporterError
from importers.options import ImportOptions
from importers.osm_source import Dropped, Prepared, TagSpec, matches, prepare
from importers.pipeline import ingest
from importers.report import ImportReport
from layers.layer import coerce
from layers.models import GeometryFamily, LayerSchema
from layers.schemas import BRIDGES, LIGHTS, PARKS, PIPES, ROADS, VALVES, custom_schema
from layers.store import Store, WriteMode

ATTRIBUTION = "© OpenStreetMap contributors, ODbL"
OSM_META = {
    "attribution": ATTRIBUTION,
    "license": "ODbL-1.0",
    "license_url": "https://opendatacommons.org/licenses/odbl/1-0/",
}
GRAPH_DIR = "graphs"
ID_PREFIX = "osm"
"""Stored ids are `osm:way/123`, `osm:node/45`, and `osm:<from>-<to>-<key>` for roads."""
_GEOD = Geod(ellps="WGS84")

POWER = custom_schema(
    {
        "name": "power",
        "title": "Power network",
        "description": "Power lines, towers, poles, substations and cabinets from OpenStreetMap.",
        "geometry": "any",
        "fields": [
            {
                "name": "kind",
                "type": "string",
                "description": "power=* (line, tower, substation, ...)",
            },
            {"name": "name", "type": "string"},
            {"name": "ref", "type": "string", "description": "Operator's reference"},
            {"name": "operator", "type": "string"},
            {
                "name": "voltage_kv",
                "type": "float",
                "description": "Highest voltage, kV",
                "minimum": 0,
            },
            {"name": "cables", "type": "integer", "minimum": 0},
            {"name": "circuits", "type": "integer", "minimum": 0},
            {"name": "frequency_hz", "type": "float", "minimum": 0},
        ],
    }
)
"""The custom `power` layer's schema."""

PARK_LEISURE = ("park", "garden", "nature_reserve", "dog_park", "common", "recreation_ground")
PARK_LANDUSE = ("recreation_ground", "village_green")

LAYER_TAGS: dict[str, TagSpec] = {
    "bridges": {"bridge": True},
    "lights": {"highway": ("street_lamp",)},
    "parks": {"leisure": PARK_LEISURE, "landuse": PARK_LANDUSE},
    "pipes": {"man_made": ("pipeline",)},
    "valves": {"emergency": ("fire_hydrant",)},
    "power": {"power": True},
}
"""The OSM tags each asset layer takes (True: any value but `no`)."""

SCHEMAS: dict[str, LayerSchema] = {
    "roads": ROADS,
    "bridges": BRIDGES,
    "lights": LIGHTS,
    "parks": PARKS,
    "pipes": PIPES,
    "valves": VALVES,
    "power": POWER,
}
LAYERS = tuple(SCHEMAS)

# Pipeline `substance` (or the older `type`) values -> the pipes layer's networks.
NETWORK_OF_SUBSTANCE = {
    "water": "water",
    "drinking_water": "water",
    "potable_water": "water",
    "gas": "gas",
    "natural_gas": "gas",
    "lpg": "gas",
    "heat": "heat",
    "hot_water": "heat",
    "steam": "heat",
    "district_heating": "heat",
    "sewage": "sewer",
    "wastewater": "sewer",
    "waste_water": "sewer",
    "rainwater": "storm",
    "stormwater": "storm",
    "storm_water": "storm",
    "reclaimed_water": "reclaimed",
}
_FOOT = {"footway", "path", "pedestrian", "steps", "cycleway", "bridleway", "corridor"}
# Way tags osmnx copies onto graph edges; `surface` is added for the roads layer.
_EDGE_TAGS = ("surface",)


@dataclass
class OsmExtract:
    """An extract read into one frame per layer, plus the directed road graph."""

    source: str
    frames: dict[str, gpd.GeoDataFrame]
    graph: nx.MultiDiGraph | None
    prepared: Prepared
    skipped: dict[str, dict[str, int]] = field(default_factory=dict)
    """Per layer, elements left out and why (a lamp drawn as an area...)."""

    @property
    def dropped(self) -> Dropped:
        """What the extract could not give whole (clipped ways and relations)."""
        return self.prepared.dropped


@contextlib.contextmanager
def _osmnx_settings() -> Iterator[None]:
    """osmnx offline, with the extra way tags the roads layer needs, restored afterwards."""
    saved = (ox.settings.useful_tags_way, ox.settings.use_cache, ox.settings.log_console)
    ox.settings.useful_tags_way = sorted({*ox.settings.useful_tags_way, *_EDGE_TAGS})
    ox.settings.use_cache = False
    ox.settings.log_console = False
    try:
        yield
    finally:
        ox.settings.useful_tags_way, ox.settings.use_cache, ox.settings.log_console = saved


# -- roads --------------------------------------------------------------------------------


def road_graph(roads_xml: Path) -> nx.MultiDiGraph:
    """The directed, simplified road graph of an XML file holding only road ways."""
    with _osmnx_settings():
        return ox.graph_from_xml(roads_xml, bidirectional=False, simplify=True, retain_all=True)


def _edge_line(graph: nx.MultiDiGraph, u: int, v: int, data: dict) -> np.ndarray:
    geom = data.get("geometry")
    if geom is not None:
        return np.asarray(geom.coords)
    a, b = graph.nodes[u], graph.nodes[v]
    return np.array([[a["x"], a["y"]], [b["x"], b["y"]]])


def _osmids(value: Any) -> frozenset:
    return frozenset(value) if isinstance(value, list) else frozenset([value])


def roads_frame(graph: nx.MultiDiGraph) -> gpd.GeoDataFrame:
    """One road feature per street segment (osmnx's undirected view of the graph).

    Each directed edge of `graph` gets the `road_id` of the segment it runs along (the id
    the `roads` feature is stored under), so routes found on the graph map back to roads.
    """
    with _osmnx_settings():
        undirected = ox.convert.to_undirected(graph)
    edges = ox.graph_to_gdfs(undirected, nodes=False, fill_edge_geometry=True)
    ids = [
        f"{d['from']}-{d['to']}-{k}"
        for (_, _, k), d in zip(edges.index, edges[["from", "to"]].to_dict("records"), strict=True)
    ]
    # Tie every directed edge to its segment: same endpoints, same OSM ways, same line
    # (one way or the other). A Python loop: edge lists are short per node pair.
    segments: dict[frozenset, list[tuple[str, frozenset, np.ndarray]]] = {}
    for rid, ((u, v, _), osmid, geom) in zip(
        ids, zip(edges.index, edges["osmid"], edges.geometry, strict=True), strict=True
    ):
        segments.setdefault(frozenset((u, v)), []).append(
            (rid, _osmids(osmid), np.asarray(geom.coords))
        )
    for u, v, data in graph.edges(data=True):
        line = _edge_line(graph, u, v, data)
        own = _osmids(data.get("osmid"))
        same_line = [
            (rid, osmids)
            for rid, osmids, coords in segments.get(frozenset((u, v)), [])
            if coords.shape == line.shape
            and (np.array_equal(coords, line) or np.array_equal(coords[::-1], line))
        ]
        # osmnx keeps one segment for opposite edges of differing ways on the same line.
        best = [rid for rid, osmids in same_line if osmids == own] or [r for r, _ in same_line]
        if best:
            data["road_id"] = f"{ID_PREFIX}:{best[0]}"  # the id the roads feature is stored under
    column = edges.get
    none = pd.Series([None] * len(edges), index=edges.index, dtype=object)
    return typed(
        ROADS,
        ids,
        {
            "name": (column("name", none)).map(tag.text),
            "class": (column("highway", none)).map(tag.first),
            "lanes": (column("lanes", none)).map(tag.integer),
            "surface": (column("surface", none)).map(tag.first),
            "oneway": (column("oneway", none)).map(tag.flag),
            "bridge": (column("bridge", none)).map(tag.flag).fillna(False),
            "tunnel": (column("tunnel", none)).map(tag.flag).fillna(False),
            "maxspeed_kmh": (column("maxspeed", none)).map(tag.speed_kmh),
        },
        edges.geometry,
    )


# -- tagged assets ------------------------------------------------------------------------


def load_features(features_xml: Path) -> gpd.GeoDataFrame:
    """Every tagged element of the features file, one column per tag (osmnx)."""
    with _osmnx_settings():
        try:
            gdf = ox.features_from_xml(features_xml)
        except ox._errors.InsufficientResponseError:
            return gpd.GeoDataFrame({"geometry": []}, geometry="geometry", crs="EPSG:4326")
    return gdf


def _col(df: pd.DataFrame, *names: str) -> pd.Series:
    """The first of `names` present as a column, the later ones filling its gaps."""
    out = pd.Series([None] * len(df), index=df.index, dtype=object)
    for name in reversed(names):
        if name in df.columns:
            s = df[name].astype(object)
            out = s.where(s.notna(), out)
    return out


def _ids(df: pd.DataFrame) -> list[str]:
    return [f"{element}/{osmid}" for element, osmid in df.index]


def typed(
    schema: LayerSchema, ids: list[str], columns: dict[str, Any], geometry: Any
) -> gpd.GeoDataFrame:
    """A lon/lat frame of `id` and the schema's fields that hold values, in their dtypes."""
    data = {"id": pd.Series(ids, dtype=object)}
    for name, values in columns.items():
        column = coerce(pd.Series(list(values), dtype=object), schema.field(name).type)
        if column.notna().any():  # a tag the extract never uses is not offered at all
            data[name] = column
    return gpd.GeoDataFrame(
        pd.DataFrame(data), geometry=np.asarray(geometry, dtype=object), crs="EPSG:4326"
    )


def _geodesic_length(geoms: np.ndarray) -> list[float | None]:
    lines = shapely.get_type_id(geoms) <= 5  # points and lines have a length, areas do not
    out: list[float | None] = [None] * len(geoms)
    for i in np.flatnonzero(lines & (shapely.get_type_id(geoms) != 0)).tolist():
        out[i] = round(_GEOD.geometry_length(geoms[i]), 2)
    return out


def _bridge_kind(row: Mapping[str, Any]) -> str:
    value = tag.first(row.get("bridge")) or "yes"
    if value in ("aqueduct", "culvert", "boardwalk", "cantilever", "covered", "movable", "trestle"):
        return value
    if tag.first(row.get("railway")):
        return "rail"
    highway = tag.first(row.get("highway"))
    if highway in _FOOT:
        return "foot"
    if highway:
        return "road"
    if tag.first(row.get("waterway")) or tag.first(row.get("man_made")) == "pipeline":
        return "utility"
    return value if value not in ("yes", "viaduct") else "bridge"


def bridges_frame(df: pd.DataFrame) -> gpd.GeoDataFrame:
    """`bridge=*` elements as bridges: name, kind, length on the ground, inspection data."""
    rows = df.drop(columns="geometry").to_dict("records")
    return typed(
        BRIDGES,
        _ids(df),
        {
            "name": _col(df, "bridge:name", "name").map(tag.text),
            "kind": [_bridge_kind(r) for r in rows],
            "length_m": _geodesic_length(df.geometry.to_numpy()),
            "spans": _col(df, "bridge:spans", "spans").map(tag.integer),
            "condition": _col(df, "bridge:condition", "condition").map(tag.condition),
            "last_inspection": _col(df, "check_date", "inspection_date", "survey:date").map(
                tag.date
            ),
        },
        df.geometry,
    )


def lights_frame(df: pd.DataFrame) -> gpd.GeoDataFrame:
    """`highway=street_lamp` nodes as street lights."""
    return typed(
        LIGHTS,
        _ids(df),
        {
            "lamp_type": _col(df, "light:method", "lamp_type").map(tag.first),
            "wattage_w": _col(df, "light:power", "lamp:power").map(tag.number),
            "height_m": _col(df, "light:height", "height").map(tag.metres),
            "circuit": _col(df, "light:circuit", "circuit").map(tag.first),
            "status": _col(df, "light:status").map(tag.first),
        },
        df.geometry,
    )


def parks_frame(df: pd.DataFrame) -> gpd.GeoDataFrame:
    """Park-like areas as parks, with their area on the ground."""
    areas = [abs(_GEOD.geometry_area_perimeter(g)[0]) for g in df.geometry]
    return typed(
        PARKS,
        _ids(df),
        {
            "name": _col(df, "name").map(tag.text),
            "area_m2": [round(a, 1) for a in areas],
            "kind": _col(df, "leisure", "landuse").map(tag.first),
        },
        df.geometry,
    )


def _network(raw: Any) -> str | None:
    for value in tag.values(raw):
        net = NETWORK_OF_SUBSTANCE.get(value.lower())
        if net:
            return net
    return None


def pipes_frame(df: pd.DataFrame) -> gpd.GeoDataFrame:
    """`man_made=pipeline` lines as pipes, the network read from `substance` (or `type`)."""
    return typed(
        PIPES,
        _ids(df),
        {
            "network": [
                _network(s) or _network(t)
                for s, t in zip(_col(df, "substance"), _col(df, "type"), strict=True)
            ],
            "material": _col(df, "material").map(tag.first),
            "diameter_mm": _col(df, "diameter").map(tag.length_mm),
            "install_year": _col(df, "start_date")
            .map(tag.date)
            .map(lambda d: d.year if d else None),
            "depth_m": _col(df, "depth").map(tag.metres),
            "pressure_zone": _col(df, "pressure_zone").map(tag.first),
            "status": [None] * len(df),
        },
        df.geometry,
    )


def valves_frame(df: pd.DataFrame) -> gpd.GeoDataFrame:
    """`emergency=fire_hydrant` nodes as hydrants of the water network."""
    return typed(
        VALVES,
        _ids(df),
        {
            "kind": ["hydrant"] * len(df),
            "network": ["water"] * len(df),
            "normally_open": [None] * len(df),
            "operable": [None] * len(df),
            "diameter_mm": _col(df, "fire_hydrant:diameter", "diameter").map(tag.length_mm),
            "install_year": _col(df, "start_date")
            .map(tag.date)
            .map(lambda d: d.year if d else None),
            "depth_m": [None] * len(df),
            "status": [None] * len(df),
        },
        df.geometry,
    )


def power_frame(df: pd.DataFrame) -> gpd.GeoDataFrame:
    """`power=*` elements for the custom power layer."""
    return typed(
        POWER,
        _ids(df),
        {
            "kind": _col(df, "power").map(tag.first),
            "name": _col(df, "name").map(tag.text),
            "ref": _col(df, "ref").map(tag.text),
            "operator": _col(df, "operator").map(tag.text),
            "voltage_kv": _col(df, "voltage").map(tag.voltage_kv),
            "cables": _col(df, "cables").map(tag.integer),
            "circuits": _col(df, "circuits").map(tag.integer),
            "frequency_hz": _col(df, "frequency").map(tag.number),
        },
        df.geometry,
    )


FRAMES: dict[str, Callable[[pd.DataFrame], gpd.GeoDataFrame]] = {
    "bridges": bridges_frame,
    "lights": lights_frame,
    "parks": parks_frame,
    "pipes": pipes_frame,
    "valves": valves_frame,
    "power": power_frame,
}


def _layer_rows(features: gpd.GeoDataFrame, layer: str) -> np.ndarray:
    """Which feature rows carry the layer's tags (the same test the pre-filter used)."""
    spec = LAYER_TAGS[layer]
    keys = [k for k in spec if k in features.columns]
    if not keys:
        return np.zeros(len(features), dtype=bool)
    tags = features[keys].astype(object)
    return np.array(
        [
            matches({k: v for k, v in row.items() if isinstance(v, str)}, spec)
            for row in tags.to_dict("records")
        ],
        dtype=bool,
    )


def split_features(
    features: gpd.GeoDataFrame,
) -> tuple[dict[str, gpd.GeoDataFrame], dict[str, dict[str, int]]]:
    """Frames per asset layer from osmnx's features, and what each layer had to leave out."""
    frames: dict[str, gpd.GeoDataFrame] = {}
    skipped: dict[str, dict[str, int]] = {}
    for layer, make in FRAMES.items():
        subset = features[_layer_rows(features, layer)] if len(features) else features
        family = SCHEMAS[layer].geometry
        if len(subset) and family is not GeometryFamily.ANY:
            fits = subset.geometry.geom_type.map(family.accepts).to_numpy(dtype=bool)
            if not fits.all():
                kinds = subset.geometry.geom_type[~fits].value_counts()
                skipped[layer] = {
                    f"{k} where a {family.value} is needed": int(n) for k, n in kinds.items()
                }
            subset = subset[fits]
        if len(subset):
            frames[layer] = make(subset)
    return frames, skipped


def read_osm(
    path: str | Path, *, workdir: Path | None = None, layers: tuple[str, ...] = LAYERS
) -> OsmExtract:
    """Read an OSM extract into one frame per layer (see the module docstring)."""
    path = Path(path)
    unknown = set(layers) - set(LAYERS)
    if unknown:
        raise ImporterError(
            f"unknown OSM layer(s) {sorted(unknown)}: choose from {', '.join(LAYERS)}"
        )
    with contextlib.ExitStack() as stack:
        if workdir is None:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="twin-osm-")))
        wanted = {k: v for k, v in LAYER_TAGS.items() if k in layers}
        prepared = prepare(path, workdir, wanted)
        frames: dict[str, gpd.GeoDataFrame] = {}
        graph = None
        if "roads" in layers and prepared.roads_xml is not None:
            graph = road_graph(prepared.roads_xml)
            if len(graph.edges):
                frames["roads"] = roads_frame(graph)
        skipped: dict[str, dict[str, int]] = {}
        if wanted and prepared.features_xml is not None:
            found, skipped = split_features(load_features(prepared.features_xml))
            frames.update({k: v for k, v in found.items() if k in layers})
    return OsmExtract(
        source=source_name(path), frames=frames, graph=graph, prepared=prepared, skipped=skipped
    )


def source_name(path: Path) -> str:
    """The dataset name of an extract: its file name without the OSM suffixes."""
    name = path.name
    for suffix in (".bz2", ".gz", ".pbf", ".osm", ".xml"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
    return name or path.name


# -- the road graph in the store ----------------------------------------------------------


def graph_name(source: str) -> str:
    """The name the road graph of one OSM source is kept under with the `roads` layer."""
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", source).strip("._") or "osm"
    return f"{GRAPH_DIR}/{slug}.graphml"


def graphml(graph: nx.MultiDiGraph) -> bytes:
    """`graph` as GraphML (osmnx's own writing, read back by `load_road_graph`)."""
    with tempfile.TemporaryDirectory(prefix="twin-graph-") as tmp:
        path = Path(tmp) / "graph.graphml"
        with _osmnx_settings():
            ox.save_graphml(graph, path)
        return path.read_bytes()


def load_road_graph(store: Store) -> nx.MultiDiGraph | None:
    """Every road graph kept in a store, composed into one routable graph (None if none)."""
    kept = store.files("roads")
    texts = [
        data.decode("utf-8") for name, data in sorted(kept.items()) if name.startswith(GRAPH_DIR)
    ]
    if not texts:
        return None
    with _osmnx_settings():
        graphs = [ox.load_graphml(graphml_str=text) for text in texts]
    return graphs[0] if len(graphs) == 1 else nx.compose_all(graphs)


# -- import -------------------------------------------------------------------------------


@dataclass
class OsmReport:
    """What an OSM import did, layer by layer."""

    path: str
    source: str
    layers: dict[str, ImportReport]
    dropped: Dropped
    skipped: dict[str, dict[str, int]]
    graph: str | None
    """The name the road graph is kept under with the `roads` layer (None: none kept)."""
    graph_size: tuple[int, int] = (0, 0)
    attribution: str = ATTRIBUTION

    @property
    def imported(self) -> int:
        """Features now in the store from this extract, over every layer."""
        return sum(r.imported for r in self.layers.values())

    def text(self) -> str:
        """The report as `twin import-osm` prints it."""
        lines = [f"OpenStreetMap extract {self.path} (source {self.source!r}, {self.attribution})"]
        if self.dropped:
            lines.append("  " + self.dropped.describe())
        for layer, why in self.skipped.items():
            lines.append(
                f"  {layer}: left out " + ", ".join(f"{n} {what}" for what, n in why.items())
            )
        if self.graph is not None:
            lines.append(
                f"  road graph: {self.graph_size[0]:,} nodes, {self.graph_size[1]:,} directed "
                f"edges, kept with the roads as {self.graph}"
            )
        if not self.layers:
            lines.append("  no roads or mapped assets found")
        for report in self.layers.values():
            lines.append(report.text())
        return "\n".join(lines)


def import_osm(
    store: Store,
    path: str | Path,
    *,
    user: str,
    layers: tuple[str, ...] = LAYERS,
    source: str | None = None,
    mode: WriteMode = "upsert",
    meta: dict[str, Any] | None = None,
) -> OsmReport:
    """Import an OSM extract's roads (and road graph) and mapped assets into `store`.

    Everything is read and checked before the first write, so a file that cannot be read
    leaves the store unchanged; each layer then lands atomically. Ids are the OSM element
    (`osm:way/123`) or, for roads, the graph edge (`osm:<from>-<to>-<key>`), so importing a
    newer extract updates features in place.
    """
    extract = read_osm(path, layers=layers)
    return write_extract(store, extract, user=user, source=source, mode=mode, meta=meta)


def write_extract(
    store: Store,
    extract: OsmExtract,
    *,
    user: str,
    source: str | None = None,
    mode: WriteMode = "upsert",
    meta: dict[str, Any] | None = None,
) -> OsmReport:
    """Write an extract read by `read_osm` into `store`, layer by layer, with its road graph.

    `meta` replaces the OpenStreetMap attribution for data that is not from OSM (the demo).
    """
    source = source or extract.source
    options = ImportOptions(id_column="id", id_prefix=ID_PREFIX, mode=mode, source=source)
    graph_file = None
    if extract.graph is not None and "roads" in extract.frames:
        graph_file = graph_name(source)
    reports: dict[str, ImportReport] = {}
    for layer in LAYERS:
        frame = extract.frames.get(layer)
        if frame is None or not len(frame):
            continue
        layer_meta = dict(OSM_META if meta is None else meta)
        files = None
        if layer == "roads" and graph_file is not None and extract.graph is not None:
            layer_meta["graph"] = graph_file
            files = {graph_file: graphml(extract.graph)}  # lands with the roads, or neither
        reports[layer] = ingest(
            store,
            SCHEMAS[layer],
            frame,
            options,
            source=source,
            user=user,
            meta=layer_meta,
            files=files,
        )
    graph = extract.graph
    return OsmReport(
        path=str(extract.prepared.source),
        source=source,
        layers=reports,
        dropped=extract.dropped,
        skipped=extract.skipped,
        graph=graph_file if graph_file is not None and "roads" in reports else None,
        graph_size=(len(graph), len(graph.edges)) if graph is not None else (0, 0),
        attribution=str((OSM_META if meta is None else meta).get("attribution", "")),
    )
