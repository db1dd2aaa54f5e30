"""Domain types shared by every layer: access levels, fields, schemas, import records."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from enum import IntEnum, StrEnum
from typing import Any, NamedTuple, Self


class _Named(IntEnum):
    """An ordered choice written by its lower-case name in configuration and on the wire;
    each kind says what it is called (`_what`) and which members may be written (`_offered`)."""

    @classmethod
    def _what(cls) -> str:
        return cls.__name__.lower()

    @classmethod
    def _offered(cls) -> list[Self]:
        return list(cls)

    @classmethod
    def parse(cls, value: str | int | _Named) -> Self:
        """The member of its name (any case) or number."""
        if isinstance(value, cls):
            return value
        if isinstance(value, int):
            return cls(value)
        try:
            return cls[str(value).strip().upper()]
        except KeyError:
            names = [m.label for m in cls._offered()]
            choices = ", ".join(names[:-1]) + " or " + names[-1]
            raise ValueError(f"unknown {cls._what()} {value!r}: use {choices}") from None

    @property
    def label(self) -> str:
        """Lower-case name, as written in configuration and on the wire."""
        return self.name.lower()


class Access(_Named):
    """A caller's scope, and a layer's classification: a caller sees layers at or below its scope."""

    PUBLIC = 0
    INTERNAL = 1
    RESTRICTED = 2

    @classmethod
    def _what(cls) -> str:
        return "access level"


class Role(_Named):
    """What a caller is: anonymous (no key), or a key's role. Each role may do what the ones
    below it may: a viewer reads internal data, an engineer also restricted data (of its
    department, where a rule names departments) and writes, an admin everything."""

    ANONYMOUS = 0
    VIEWER = 1
    ENGINEER = 2
    ADMIN = 3

    @classmethod
    def _offered(cls) -> list[Role]:
        return [r for r in cls if r is not cls.ANONYMOUS]  # a key's roles


class FieldType(StrEnum):
    """Attribute types a layer schema can declare."""

    STRING = "string"
    INTEGER = "integer"
    FLOAT = "float"
    BOOLEAN = "boolean"
    DATE = "date"
    DATETIME = "datetime"


class GeometryFamily(StrEnum):
    """The geometry a layer holds; multi-part variants of the family are accepted too."""

    POINT = "point"
    LINE = "line"
    POLYGON = "polygon"
    ANY = "any"

    def accepts(self, geom_type: str) -> bool:
        """Whether a shapely `geom_type` belongs to this family."""
        allowed = {
            GeometryFamily.POINT: {"Point", "MultiPoint"},
            GeometryFamily.LINE: {"LineString", "MultiLineString"},
            GeometryFamily.POLYGON: {"Polygon", "MultiPolygon"},
        }
        if self is GeometryFamily.ANY:
            return geom_type != "GeometryCollection"
        return geom_type in allowed[self]


@dataclass(frozen=True)
class Field:
    """One typed attribute of a layer; units are part of the name (`diameter_mm`)."""

    name: str
    type: FieldType
    description: str = ""
    choices: tuple[str, ...] | None = None
    minimum: float | None = None
    maximum: float | None = None
    aliases: tuple[str, ...] = ()
    extra: bool = False
    """A source column no schema field took, kept under its own name (typed from its values)."""

    def to_json(self) -> dict[str, Any]:
        """Plain-JSON form, as stored in the store's layer table and custom schema files."""
        out: dict[str, Any] = {"name": self.name, "type": self.type.value}
        if self.extra:
            out["extra"] = True
        if self.description:
            out["description"] = self.description
        if self.choices is not None:
            out["choices"] = list(self.choices)
        if self.minimum is not None:
            out["minimum"] = self.minimum
        if self.maximum is not None:
            out["maximum"] = self.maximum
        if self.aliases:
            out["aliases"] = list(self.aliases)
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Field:
        """Inverse of `to_json`."""
        choices = data.get("choices")
        return cls(
            name=str(data["name"]),
            type=FieldType(data.get("type", "string")),
            description=str(data.get("description", "")),
            choices=tuple(str(c) for c in choices) if choices is not None else None,
            minimum=data.get("minimum"),
            maximum=data.get("maximum"),
            aliases=tuple(str(a) for a in data.get("aliases", ())),
            extra=bool(data.get("extra", False)),
        )


@dataclass(frozen=True)
class LayerSchema:
    """What a layer holds: its geometry family and typed attributes."""

    name: str
    title: str
    geometry: GeometryFamily
    fields: tuple[Field, ...]
    description: str = ""
    classification: Access = Access.PUBLIC
    id_aliases: tuple[str, ...] = ()
    builtin: bool = False

    def field(self, name: str) -> Field:
        """The field called `name` (KeyError when there is none)."""
        for f in self.fields:
            if f.name == name:
                return f
        raise KeyError(name)

    @property
    def field_names(self) -> list[str]:
        """Attribute names in schema order."""
        return [f.name for f in self.fields]

    @property
    def extras(self) -> tuple[Field, ...]:
        """The extra attributes: source columns kept beside the declared fields."""
        return tuple(f for f in self.fields if f.extra)

    def declared(self) -> LayerSchema:
        """This schema without its extra attributes."""
        return dataclasses.replace(self, fields=tuple(f for f in self.fields if not f.extra))

    def with_extras(self, extras: Iterable[Field]) -> LayerSchema:
        """The declared fields of this schema followed by `extras` (replacing its own)."""
        own = tuple(f for f in self.fields if not f.extra)
        return dataclasses.replace(self, fields=own + tuple(extras))

    def keeping_extras(self, stored: LayerSchema) -> LayerSchema:
        """This schema with the extras of `stored` (the same layer as stored) that it lacks
        appended: a file without a column keeps the column, and its values, in the layer."""
        have = {f.name.casefold() for f in self.fields}
        kept = tuple(f for f in stored.extras if f.name.casefold() not in have)
        return dataclasses.replace(self, fields=self.fields + kept) if kept else self

    def to_json(self) -> dict[str, Any]:
        """Plain-JSON form of the schema."""
        return {
            "name": self.name,
            "title": self.title,
            "description": self.description,
            "geometry": self.geometry.value,
            "classification": self.classification.label,
            "id_aliases": list(self.id_aliases),
            "builtin": self.builtin,
            "fields": [f.to_json() for f in self.fields],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LayerSchema:
        """Inverse of `to_json`."""
        return cls(
            name=str(data["name"]),
            title=str(data.get("title") or data["name"]),
            description=str(data.get("description", "")),
            geometry=GeometryFamily(data.get("geometry", "any")),
            classification=Access.parse(data.get("classification", "public")),
            id_aliases=tuple(data.get("id_aliases", ())),
            builtin=bool(data.get("builtin", False)),
            fields=tuple(Field.from_json(f) for f in data.get("fields", ())),
        )


@dataclass(frozen=True)
class Thinning:
    """What a tile below the detail zoom draws of a layer, so that a store need not read more
    (`Store.window`): every point, but of the lines and polygons at least `min_size` across
    (the larger side of their box, EPSG:3857 metres) only the `most` most important, by the
    `priority` field when the layer is a built-in one holding it (the rank of `classes`, else
    larger values first; missing last), then by size (the diagonal of the box, larger first),
    then in stored order."""

    min_size: float
    most: int
    priority: str | None = None
    classes: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Match:
    """Of a window, only the features whose text field `field` holds one of `values` (None:
    holds no value), so that a store need not read more (`Store.window`)."""

    field: str
    values: tuple[str | None, ...]


class Bounds(NamedTuple):
    """A bounding box in lon/lat (CRS84) unless stated otherwise."""

    minx: float
    miny: float
    maxx: float
    maxy: float

    @classmethod
    def union(cls, boxes: Iterable[Bounds | None]) -> Bounds | None:
        """The box covering every given box (None ones skipped); None when there is none."""
        present = [b for b in boxes if b is not None]
        if not present:
            return None
        return cls(
            min(b.minx for b in present),
            min(b.miny for b in present),
            max(b.maxx for b in present),
            max(b.maxy for b in present),
        )

    def meets(self, other: Bounds) -> bool:
        """Whether the two boxes share a point (edges included)."""
        return not (
            self.minx > other.maxx
            or self.maxx < other.minx
            or self.miny > other.maxy
            or self.maxy < other.miny
        )


@dataclass(frozen=True)
class WriteResult:
    """What one atomic write changed, by feature id."""

    added: int = 0
    updated: int = 0
    unchanged: int = 0
    removed: int = 0


def parse_utc(text: str) -> dt.datetime:
    """An ISO 8601 time with its UTC offset (`Z` too), as UTC; ValueError saying what is wrong
    ("not ISO 8601", "no UTC offset")."""
    try:
        t = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{text!r} is not ISO 8601") from None
    if t.tzinfo is None:
        raise ValueError(f"{text!r} has no UTC offset (add Z or +08:00)")
    try:
        return t.astimezone(dt.UTC)
    except OverflowError:
        raise ValueError(f"{text!r} is out of range in UTC") from None


def utc_stamp(t: dt.datetime) -> str:
    """A UTC time as the store writes times: ISO 8601 to the millisecond, with `Z`; such
    texts sort as their times."""
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


def feature_etag(version: int, updated: str) -> str:
    """The strong ETag of a stored feature's state: its version and when it was recorded."""
    return f'"{version}-{updated}"'


class ChangeKind(StrEnum):
    """What one entry of the change log did."""

    ADDED = "added"
    UPDATED = "updated"
    REMOVED = "removed"
    LAYER = "layer"
    """The whole collection: a large import, a new schema, a raster, a dropped layer."""


class Change(NamedTuple):
    """One entry of a store's change log: the one source of "what changed since N" (a named
    tuple: followers read tens of thousands a second).

    Feature entries name the feature (`id`) with the box of its geometry before (`old`) and
    after (`new`) the change; a `LAYER` entry has no id and no boxes: the whole collection."""

    seq: int
    collection: str
    id: str | None
    kind: ChangeKind
    old: Bounds | None
    new: Bounds | None
    user: str
    time: dt.datetime
    why: str
    properties: tuple[str, ...] | None = None
    """The properties an update changed (`geometry` when it moved); None: all of them."""
    state: dict[str, Any] | None = None
    """The values it set, when the entry carries them (a reading): the feature is then the
    one before with these values, its version one more and recorded at `time`."""


@dataclass
class Observed:
    """What a batch of readings did: how many features' state it changed, and the newest
    change-log entry once it landed (its entries are the `changed` ones up to it)."""

    changed: int
    revision: int
    runs: list[StateRun] = field(default_factory=list)
    """The entries it wrote, a run per collection (what its event streams are sent)."""


class StateRun(NamedTuple):
    """Entries of the change log written together by a batch of readings: feature `ids[k]`
    of `collection` took the values `sets[k]` (`{property: value}`) in entry `seq + k`, one
    more version each, recorded at `time`."""

    seq: int
    collection: str
    ids: list[str]
    sets: list[dict[str, Any]]
    user: str
    time: dt.datetime

    @property
    def last(self) -> int:
        """The sequence number of its last entry."""
        return self.seq + len(self.ids) - 1

    def after(self, seq: int) -> StateRun:
        """Without its entries up to `seq`."""
        cut = min(max(0, seq - self.seq + 1), len(self.ids))
        return self._replace(seq=self.seq + cut, ids=self.ids[cut:], sets=self.sets[cut:])

    def changes(self, boxes: Sequence[Bounds | None]) -> list[Change]:
        """Its entries as one `Change` each, `boxes[k]` entry k's feature's box (before and
        after: a reading moves nothing)."""
        return [
            Change(
                self.seq + k,
                self.collection,
                fid,
                ChangeKind.UPDATED,
                box,
                box,
                self.user,
                self.time,
                "reading",
                tuple(sets),
                sets,
            )
            for k, (fid, sets, box) in enumerate(zip(self.ids, self.sets, boxes, strict=True))
        ]


class Reading(NamedTuple):
    """One observation of a feature's property at a time (a lamp's status, a pipe's pressure);
    `value` is already of the field's type (numbers, text, booleans, ISO dates as text). A
    named tuple: a batch makes thousands."""

    collection: str
    id: str
    property: str
    time: dt.datetime
    value: Any


@dataclass
class Readings:
    """A batch of readings column by column, each reading's time as the store writes times
    (`utc_stamp`): what the check of a batch gives and a store writes, without an object or a
    time per reading (a batch holds thousands)."""

    collection: list[str]
    id: list[str]
    property: list[str]
    time: list[str]
    value: list[Any]

    @classmethod
    def of(cls, readings: Readings | Sequence[Reading]) -> Readings:
        """`readings` as columns (themselves when they are)."""
        if isinstance(readings, Readings):
            return readings
        if not readings:
            return cls([], [], [], [], [])
        c, fid, p, t, v = (list(col) for col in zip(*readings, strict=True))
        return cls(c, fid, p, [utc_stamp(x) for x in t], v)

    def __len__(self) -> int:
        return len(self.id)

    def newest(self) -> dict[tuple[str, str, str], int]:
        """Per (collection, id, property), in the order first met, the position of its newest
        reading (by time; the later in the batch on a tie)."""
        keys = list(zip(self.collection, self.id, self.property, strict=True))
        stamps = self.time
        if all(map(str.__le__, stamps, stamps[1:])):  # in time order, as a batch mostly is
            return dict(zip(keys, range(len(keys)), strict=True))
        # By time, a stable sort: the last of a key is its newest, the later one on a tie; the
        # keys keep the place they were first met.
        order = sorted(range(len(keys)), key=stamps.__getitem__)
        out = dict.fromkeys(keys, 0)
        out.update(zip(map(keys.__getitem__, order), order, strict=True))
        return out

    def history(self, *more: Sequence[Any]) -> Iterator[tuple[Any, ...]]:
        """Each reading as a history row: collection, id, property, time, value as JSON text,
        then its values of the columns `more` (as a store adds them)."""
        return zip(
            self.collection,
            self.id,
            self.property,
            self.time,
            self.texts(),
            *more,
            strict=True,
        )

    def texts(self) -> list[str]:
        """Each value as JSON text (`json.dumps`), in one call where it can be."""
        values = self.value
        if not values:
            return []
        kinds = set(map(type, values))
        if kinds <= _PLAIN:
            # Numbers, true, false and null: no ", " inside one, so the array's text splits.
            return json.dumps(values)[1:-1].split(", ")
        if kinds <= _TEXT:  # texts repeat (a status): each encoded once
            distinct = {v: json.dumps(v) for v in set(values)}
            return list(map(distinct.__getitem__, values))
        texts: dict[tuple[type, Any], str] = {}  # 1, 1.0 and true apart

        def text(v: Any) -> str:
            key = (type(v), v)
            got = texts.get(key)
            if got is None:
                got = texts[key] = json.dumps(v)
            return got

        return list(map(text, values))


_PLAIN = {int, float, bool, type(None)}
_TEXT = {str, type(None)}


@dataclass(frozen=True)
class ImportRecord:
    """One entry of a store's import history."""

    collection: str
    time: dt.datetime
    user: str
    source: str
    mode: str
    added: int
    updated: int
    unchanged: int
    removed: int
    rejected: int = 0
    repaired: int = 0
    details: dict[str, Any] = field(default_factory=dict)
