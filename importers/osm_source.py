"""Reading an OpenStreetMap extract (.osm, .osm.bz2, .osm.pbf) into what osmnx can load.

One pyosmium pass finds the ways whose nodes are all in the extract (a clipped extract
has ways running off its edge, which osmnx refuses) and the elements the twin's layers
want; a second pass writes two small OSM XML files, as an Overpass query would answer:
the road ways with their nodes (for the graph) and the tagged assets with every node and
member way they need (for the features). What was left out is counted for the report.
"""

from __future__ import annotations

import bz2
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import osmium

from importers.errors import EmptySource, UnreadableFile

TagSpec = Mapping[str, bool | tuple[str, ...]]
"""Wanted tags: key -> True (any value but `no`) or the accepted values."""

# osmnx's "all" network filter: every highway in use, areas excepted (drivable and walkable).
ROAD_EXCLUDED = frozenset(
    {
        "abandoned",
        "construction",
        "no",
        "planned",
        "platform",
        "proposed",
        "raceway",
        "razed",
        "rest_area",
        "services",
    }
)
# Relation types osmnx builds geometries for.
AREA_RELATIONS = frozenset({"multipolygon", "boundary"})
SUFFIXES = (".osm", ".osm.bz2", ".osm.pbf", ".pbf", ".osm.gz", ".xml", ".xml.bz2")


def is_road(tags: Mapping[str, str]) -> bool:
    """Whether a way with these tags belongs to the road graph (osmnx's "all" network)."""
    highway = tags.get("highway")
    return highway is not None and highway not in ROAD_EXCLUDED and tags.get("area") != "yes"


def matches(tags: Mapping[str, str], spec: TagSpec) -> bool:
    """Whether tags satisfy any of the spec's key/value conditions."""
    for key, wanted in spec.items():
        value = tags.get(key)
        if value is None:
            continue
        if wanted is True:
            if value != "no":
                return True
        elif wanted is not False and value in wanted:
            return True
    return False


@dataclass
class Dropped:
    """What a clipped extract could not give whole."""

    ways: int = 0
    """Ways referring to nodes the extract lacks."""
    relations: int = 0
    """Area relations (multipolygons, boundaries) with member ways missing or cut."""
    by_layer: dict[str, int] = field(default_factory=dict)
    """Of those, how many each layer would have received."""
    examples: list[str] = field(default_factory=list)
    """A few of the dropped elements, as `way/123`."""

    def __bool__(self) -> bool:
        return bool(self.ways or self.relations)

    def describe(self) -> str:
        """One line for the import report."""
        parts = []
        if self.ways:
            parts.append(f"{self.ways} ways with nodes outside the extract")
        if self.relations:
            parts.append(f"{self.relations} area relations with missing members")
        text = "dropped " + " and ".join(parts)
        if self.by_layer:
            text += " (" + ", ".join(f"{k} {v}" for k, v in sorted(self.by_layer.items())) + ")"
        if self.examples:
            text += "; e.g. " + ", ".join(self.examples)
        return text


@dataclass(frozen=True)
class Prepared:
    """The extract split into osmnx-ready XML files, with what was left out."""

    source: Path
    roads_xml: Path | None
    features_xml: Path | None
    ways: int
    relations: int
    road_ways: int
    feature_elements: int
    dropped: Dropped


def _check(path: Path) -> None:
    if not path.exists():
        raise UnreadableFile(f"no such file: {path}")
    if path.is_dir():
        raise UnreadableFile(f"{path} is a directory, not an OSM file")
    if path.stat().st_size == 0:
        raise EmptySource(f"{path.name} is empty (0 bytes)")
    name = path.name.lower()
    if not name.endswith(SUFFIXES):
        raise UnreadableFile(
            f"{path.name}: an OpenStreetMap extract must end in .osm, .osm.bz2 or .osm.pbf"
        )
    if name.endswith(".bz2"):
        # libosmium reports a damaged bzip2 stream only as it meets it; test it up front so
        # the message says what is wrong.
        try:
            with bz2.open(path) as fh:
                while fh.read(1 << 22):
                    pass
        except (OSError, EOFError, ValueError) as exc:
            raise UnreadableFile(f"{path.name} is not a valid bzip2 file: {exc}") from None


def _write(source: Path, target: Path, wanted: dict[Any, set[int]]) -> None:
    """Write the wanted elements of each type, with every element they refer to, as XML."""
    entities = osmium.osm.NOTHING
    reader_filters = []
    for entity, ids in wanted.items():
        entities |= entity
        only = osmium.filter.IdFilter(ids)
        only.enable_for(entity)
        reader_filters.append(only)
    reader = osmium.FileProcessor(str(source), entities)
    for only in reader_filters:
        reader = reader.with_filter(only)
    with osmium.BackReferenceWriter(
        str(target), ref_src=str(source), overwrite=True, remove_tags=False
    ) as writer:
        for obj in reader:
            writer.add(obj)


def _has_nodes(path: Path) -> bool:
    try:
        return any(True for _ in osmium.FileProcessor(str(path), osmium.osm.NODE))
    except (RuntimeError, ValueError, OSError) as exc:
        raise _unreadable(path, exc) from None


def _unreadable(path: Path, exc: Exception) -> UnreadableFile:
    text = (str(exc).strip() or type(exc).__name__).splitlines()[0]
    return UnreadableFile(f"cannot read {path.name} as OpenStreetMap data: {text}")


def prepare(path: str | Path, workdir: Path, layers: Mapping[str, TagSpec]) -> Prepared:
    """Split the extract at `path` into a roads XML and a features XML under `workdir`.

    `layers` names the tags each asset layer wants; ways missing nodes and area relations
    missing member ways are left out and counted.
    """
    path = Path(path)
    _check(path)
    feature_spec: dict[str, bool | tuple[str, ...]] = {}
    for spec in layers.values():
        for key, wanted in spec.items():
            old = feature_spec.get(key, ())
            if wanted is True or old is True:
                feature_spec[key] = True
            else:
                assert isinstance(old, tuple) and isinstance(wanted, tuple)
                feature_spec[key] = tuple(sorted({*old, *wanted}))
    keep: dict[str, set[int]] = {"n": set(), "w": set(), "r": set()}
    roads: set[int] = set()
    present_ways: set[int] = set()
    dropped = Dropped()
    n_ways = n_rel = 0

    def tally(tags: Mapping[str, str], road: bool, ref: str) -> None:
        if road:
            dropped.by_layer["roads"] = dropped.by_layer.get("roads", 0) + 1
        for layer, spec in layers.items():
            if matches(tags, spec):
                dropped.by_layer[layer] = dropped.by_layer.get(layer, 0) + 1
        if len(dropped.examples) < 5:
            dropped.examples.append(ref)

    entities = osmium.osm.NODE | osmium.osm.WAY | osmium.osm.RELATION
    try:
        # Untagged nodes only matter for the way locations: they stop before Python.
        untagged_nodes = osmium.filter.EmptyTagFilter()
        untagged_nodes.enable_for(osmium.osm.NODE)
        reader = (
            osmium.FileProcessor(str(path), entities).with_locations().with_filter(untagged_nodes)
        )
        for obj in reader:
            if isinstance(obj, osmium.osm.Node):
                if matches(dict(obj.tags), feature_spec):
                    keep["n"].add(obj.id)
            elif isinstance(obj, osmium.osm.Way):
                n_ways += 1
                tags = dict(obj.tags)
                road = is_road(tags)
                if not all(n.location.valid() for n in obj.nodes):
                    dropped.ways += 1
                    tally(tags, road, f"way/{obj.id}")
                    continue
                present_ways.add(obj.id)
                if len(obj.nodes) < 2:
                    continue
                if road:
                    roads.add(obj.id)
                if matches(tags, feature_spec):
                    keep["w"].add(obj.id)
            elif isinstance(obj, osmium.osm.Relation):
                n_rel += 1
                tags = dict(obj.tags)
                if tags.get("type") not in AREA_RELATIONS or not matches(tags, feature_spec):
                    continue
                if any(m.type == "w" and m.ref not in present_ways for m in obj.members):
                    dropped.relations += 1
                    tally(tags, False, f"relation/{obj.id}")
                    continue
                keep["r"].add(obj.id)
    except (RuntimeError, ValueError, OSError) as exc:
        raise _unreadable(path, exc) from None
    if n_ways + n_rel + len(keep["n"]) == 0 and not _has_nodes(path):
        raise EmptySource(f"{path.name} holds no OpenStreetMap elements")

    roads_xml = workdir / "roads.osm" if roads else None
    features_xml = workdir / "features.osm" if any(keep.values()) else None
    try:
        if roads_xml is not None:
            _write(path, roads_xml, {osmium.osm.WAY: roads})
        if features_xml is not None:
            # Member ways of kept relations come from the back references; the ones cut
            # by the clip were excluded above together with their relations.
            _write(
                path,
                features_xml,
                {
                    osmium.osm.NODE: keep["n"],
                    osmium.osm.WAY: keep["w"],
                    osmium.osm.RELATION: keep["r"],
                },
            )
    except (RuntimeError, ValueError, OSError) as exc:
        raise _unreadable(path, exc) from None
    return Prepared(
        source=path,
        roads_xml=roads_xml,
        features_xml=features_xml,
        ways=n_ways,
        relations=n_rel,
        road_ways=len(roads),
        feature_elements=sum(len(v) for v in keep.values()),
        dropped=dropped,
    )
