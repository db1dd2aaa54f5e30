"""Who sees what: the policy file, and the view of the layers it gives one caller.

The policy (a TOML file, `TWIN_POLICY`) classifies layers, fields, features matching attribute
values, and areas as public, internal or restricted, optionally naming the departments whose
engineers may see restricted ones:

    [layers.valves]
    classification = "internal"

    [layers.pipes.fields]
    pressure_kpa = "internal"

    [[layers.pipes.rows]]
    match = { network = "gas" }
    classification = "restricted"
    departments = ["gas"]

    [[areas]]
    name = "substation"
    cells = ["C-0203"]        # or bbox = [w, s, e, n], or polygon = { GeoJSON geometry }
    layers = ["pipes"]        # default: every vector layer
    classification = "restricted"

Anonymous callers see public data (or what `anonymous_access` allows); a viewer also internal
data; an engineer also restricted data (only its department's, where a rule names
departments); an admin everything. A key limited to an area sees only the features meeting it.

A `View` is what one caller sees: `View.apply` turns a layer into the layer as that caller may
see it (rows it may not see gone, fields it may not see gone from the schema and the table),
made once per layer version and view and kept with the layer, so every path that reads a layer
through the catalog (items, counts, tiles, queries, search, statistics) answers from the same
filtered layer and cannot leak what another path hides.
"""

from __future__ import annotations

import contextvars
import hashlib
import re
import tomllib
import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import shapely

from layers.layer import SYSTEM_COLUMNS, Layer
from layers.models import Access, LayerSchema, Role


class PolicyError(ValueError):
    """A policy file that cannot be used: `line` is the line at fault (0: unknown)."""

    def __init__(self, message: str, line: int = 0, source: str = "policy") -> None:
        self.line = line
        self.source = source
        where = f"{source}, line {line}" if line else source
        super().__init__(f"{where}: {message}")


@dataclass(frozen=True)
class Rule:
    """A classification, and the departments whose engineers may see it when restricted
    (empty: any engineer's)."""

    classification: Access = Access.PUBLIC
    departments: frozenset[str] = frozenset()


@dataclass(frozen=True)
class RowRule:
    """Features whose attributes match `match` (field -> accepted values) carry `rule`."""

    match: tuple[tuple[str, tuple[Any, ...]], ...]
    rule: Rule


@dataclass(frozen=True)
class AreaRule:
    """Features meeting an area (grid cells, a box or a polygon) of the layers named (None:
    all) carry `rule`."""

    name: str
    cells: tuple[str, ...]
    geometry: shapely.Geometry | None
    layers: frozenset[str] | None
    rule: Rule


@dataclass(frozen=True)
class LayerRules:
    """The policy of one layer."""

    rule: Rule | None = None
    """The layer's own classification (None: as the store has it)."""
    fields: dict[str, Rule] = field(default_factory=dict)
    rows: tuple[RowRule, ...] = ()


@dataclass(frozen=True)
class Policy:
    """The whole policy; `generation` names its content (views of another policy differ)."""

    layers: dict[str, LayerRules] = field(default_factory=dict)
    areas: tuple[AreaRule, ...] = ()
    generation: str = "none"
    source: str = ""

    @classmethod
    def load(cls, path: str | Path) -> Policy:
        """The policy in file `path`; `PolicyError` naming the line at fault."""
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise PolicyError(f"cannot read it: {exc}", 0, str(p)) from None
        return cls.parse(text, str(p))

    @classmethod
    def parse(cls, text: str, source: str = "policy") -> Policy:
        """The policy in TOML `text`; `PolicyError` naming the line at fault."""
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            found = re.search(r"line (\d+)", str(exc))
            raise PolicyError(str(exc), int(found.group(1)) if found else 0, source) from None
        lines = _Lines(text, source)
        unknown = set(data) - {"layers", "areas"}
        if unknown:
            key = sorted(unknown)[0]
            raise lines.error(f"unknown section {key!r}: use [layers.NAME] or [[areas]]", key)
        layers = {}
        for name, body in _table(data.get("layers", {}), lines, "layers").items():
            layers[name] = _layer_rules(name, body, lines)
        areas = tuple(
            _area_rule(i, body, lines) for i, body in enumerate(_list(data.get("areas", []), lines))
        )
        generation = hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]
        return cls(layers, areas, generation, source)


READS: contextvars.ContextVar[set[str] | None] = contextvars.ContextVar("twin_reads", default=None)
"""The collections holding restricted data that the current request was shown (set by whoever
audits the request; `View.apply` adds to it)."""

NO_POLICY = Policy()
"""The policy of a deployment without a policy file: layers as the store classifies them."""


class _Lines:
    """Finds the line of a section or key in the policy text, for error messages."""

    def __init__(self, text: str, source: str) -> None:
        self.lines = text.splitlines()
        self.source = source

    def find(self, *words: str) -> int:
        """The first line holding all `words` in order (1-based; 0 when none does)."""
        for i, line in enumerate(self.lines):
            code = line.split("#", 1)[0]
            at = 0
            for w in words:
                at = code.find(w, at)
                if at < 0:
                    break
                at += len(w)
            else:
                return i + 1
        return 0

    def nth(self, header: str, n: int) -> int:
        """The line of the `n`th (0-based) `[[header]]`."""
        seen = -1
        for i, line in enumerate(self.lines):
            if re.match(rf"\s*\[\[\s*{re.escape(header)}\s*\]\]", line):
                seen += 1
                if seen == n:
                    return i + 1
        return 0

    def after(self, start: int, key: str) -> int:
        """The line of `key =` in the section starting at line `start` (or `start`)."""
        for i in range(start, len(self.lines)):
            line = self.lines[i]
            if i >= start and line.lstrip().startswith("["):
                break
            if re.match(rf"\s*\"?{re.escape(key)}\"?\s*=", line):
                return i + 1
        return start

    def error(self, message: str, *words: str, line: int | None = None) -> PolicyError:
        return PolicyError(message, line if line is not None else self.find(*words), self.source)


def _table(value: Any, lines: _Lines, where: str, line: int | None = None) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise lines.error(f"{where} must be a table", where, line=line)
    return value


def _list(value: Any, lines: _Lines) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise lines.error("areas must be written as [[areas]] tables", "areas")
    return value


def _rule(body: dict[str, Any], lines: _Lines, line: int, what: str) -> Rule:
    unknown = set(body) - {"classification", "departments"}
    if unknown:
        key = sorted(unknown)[0]
        raise lines.error(f"unknown key {key!r} in {what}", line=lines.after(line, key) or line)
    return Rule(
        _classification(body.get("classification", "restricted"), lines, line, what),
        _departments(body.get("departments", []), lines, line, what),
    )


def _classification(value: Any, lines: _Lines, line: int, what: str) -> Access:
    try:
        if not isinstance(value, str):
            raise ValueError(f"classification of {what} must be a string")
        return Access.parse(value)
    except ValueError as exc:
        raise lines.error(f"{what}: {exc}", line=lines.after(line, "classification")) from None


def _departments(value: Any, lines: _Lines, line: int, what: str) -> frozenset[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise lines.error(
            f"departments of {what} must be a list of names", line=lines.after(line, "departments")
        )
    return frozenset(v.strip() for v in value)


def _layer_rules(name: str, body: Any, lines: _Lines) -> LayerRules:
    head = lines.find(f"layers.{name}") or lines.find("layers")
    if not isinstance(body, dict):
        raise lines.error(f"layers.{name} must be a table", line=head)
    unknown = set(body) - {"classification", "departments", "fields", "rows"}
    if unknown:
        key = sorted(unknown)[0]
        raise lines.error(
            f"unknown key {key!r} in layers.{name}: use classification, departments, fields"
            " or rows",
            line=lines.after(head, key),
        )
    own = None
    if "classification" in body or "departments" in body:
        own = _rule(
            {k: body[k] for k in ("classification", "departments") if k in body},
            lines,
            head,
            f"layer {name}",
        )
    fields: dict[str, Rule] = {}
    fhead = lines.find(f"layers.{name}.fields") or head
    raw_fields = body.get("fields", {})
    at_fields = lines.after(head, "fields") if not isinstance(raw_fields, dict) else fhead
    for fname, value in _table(raw_fields, lines, f"layers.{name}.fields", at_fields).items():
        if fname in SYSTEM_COLUMNS:
            raise lines.error(f"{fname} is a system column", line=lines.after(fhead, fname))
        at = lines.after(fhead, fname)
        if isinstance(value, str):
            fields[fname] = Rule(_classification(value, lines, at, f"{name}.{fname}"))
        elif isinstance(value, dict):
            fields[fname] = _rule(value, lines, at, f"field {name}.{fname}")
        else:
            raise lines.error(f"field {name}.{fname}: give a classification or a table", line=at)
    rows = []
    raw_rows = body.get("rows", [])
    if not isinstance(raw_rows, list):
        raise lines.error(f"layers.{name}.rows must be [[layers.{name}.rows]] tables", line=head)
    for i, row in enumerate(raw_rows):
        at = lines.nth(f"layers.{name}.rows", i) or head
        if not isinstance(row, dict):
            raise lines.error(f"layers.{name}.rows must be tables", line=at)
        match = row.get("match")
        if not isinstance(match, dict) or not match:
            raise lines.error(
                f"a row rule of {name} needs match = {{ field = value }}",
                line=lines.after(at, "match"),
            )
        pairs = []
        for fname, want in match.items():
            values = tuple(want) if isinstance(want, list) else (want,)
            if not values or not all(isinstance(v, str | int | float | bool) for v in values):
                raise lines.error(
                    f"match {fname} of a row rule of {name}: give a value or a list of values",
                    line=lines.after(at, "match"),
                )
            pairs.append((fname, values))
        rows.append(
            RowRule(
                tuple(pairs),
                _rule({k: v for k, v in row.items() if k != "match"}, lines, at, f"row of {name}"),
            )
        )
    return LayerRules(own, fields, tuple(rows))


def _area_rule(i: int, body: dict[str, Any], lines: _Lines) -> AreaRule:
    at = lines.nth("areas", i)
    unknown = set(body) - {
        "name",
        "cells",
        "bbox",
        "polygon",
        "layers",
        "classification",
        "departments",
    }
    if unknown:
        key = sorted(unknown)[0]
        raise lines.error(f"unknown key {key!r} in an area", line=lines.after(at, key))
    name = str(body.get("name", f"area {i + 1}"))
    cells = body.get("cells", [])
    if not isinstance(cells, list) or not all(isinstance(c, str) for c in cells):
        raise lines.error(f"cells of {name} must be a list of codes", line=lines.after(at, "cells"))
    geometry = None
    if "bbox" in body:
        box = body["bbox"]
        if (
            not isinstance(box, list)
            or len(box) != 4
            or not all(isinstance(v, int | float) for v in box)
            or not (box[0] < box[2] and box[1] < box[3])
        ):
            raise lines.error(
                f"bbox of {name} must be [west, south, east, north]", line=lines.after(at, "bbox")
            )
        geometry = shapely.box(*box)
    if "polygon" in body:
        try:
            geometry = _polygon(body["polygon"])
        except ValueError as exc:
            raise lines.error(
                f"polygon of {name}: {exc}", line=lines.after(at, "polygon")
            ) from None
    if not cells and geometry is None:
        raise lines.error(f"area {name} needs cells, bbox or polygon", line=at)
    layers = body.get("layers")
    if layers is not None and (
        not isinstance(layers, list) or not all(isinstance(v, str) for v in layers)
    ):
        raise lines.error(
            f"layers of {name} must be a list of names", line=lines.after(at, "layers")
        )
    rule = _rule(
        {k: body[k] for k in ("classification", "departments") if k in body}, lines, at, name
    )
    return AreaRule(
        name, tuple(cells), geometry, None if layers is None else frozenset(layers), rule
    )


def _polygon(value: Any) -> shapely.Geometry:
    """A GeoJSON polygon or multipolygon (lon/lat), valid and non-empty."""
    if not isinstance(value, dict) or value.get("type") not in ("Polygon", "MultiPolygon"):
        raise ValueError("give a GeoJSON Polygon or MultiPolygon")
    try:
        geom = shapely.geometry.shape(value)
    except (ValueError, TypeError, AttributeError, IndexError) as exc:
        raise ValueError(f"not a polygon: {exc}") from None
    if geom.is_empty or not geom.is_valid:
        raise ValueError("the polygon is empty or invalid")
    return geom


def area_geometry(value: Any) -> shapely.Geometry:
    """A key's area (a GeoJSON Polygon/MultiPolygon, or a Feature or FeatureCollection of
    them) as one geometry; ValueError when it is not one."""
    if isinstance(value, dict) and value.get("type") == "FeatureCollection":
        parts = [area_geometry(f) for f in value.get("features") or []]
        if not parts:
            raise ValueError("the area file holds no features")
        return shapely.union_all(parts)
    if isinstance(value, dict) and value.get("type") == "Feature":
        return _polygon(value.get("geometry"))
    return _polygon(value)


# -- the view of one caller ------------------------------------------------------------------


@dataclass(frozen=True)
class Who:
    """What the policy needs to know of a caller."""

    role: Role
    department: str | None = None
    anonymous: Access = Access.PUBLIC
    """What an anonymous caller may see (the deployment's `anonymous_access`)."""

    def clears(self, rule: Rule) -> bool:
        """Whether this caller may see what `rule` classifies."""
        c = rule.classification
        if self.role is Role.ADMIN or c is Access.PUBLIC:
            return True
        if self.role is Role.ANONYMOUS:
            return c <= self.anonymous
        if c is Access.INTERNAL:
            return True
        return self.role >= Role.ENGINEER and (
            not rule.departments or self.department in rule.departments
        )


CellResolver = Callable[[Sequence[str]], shapely.Geometry | None]
"""Grid cell codes -> the union of their geometries (None when the grid is not there)."""


GRIDS = "grids"
CELL_FIELD = "code"


def cell_resolver(grid: Callable[[], Layer | None]) -> CellResolver:
    """Cell codes -> the union of their cells in the layer `grid()` gives (the `grids` layer:
    a cell's code is its `code`)."""

    def resolve(codes: Sequence[str]) -> shapely.Geometry | None:
        layer = grid()
        if layer is None or CELL_FIELD not in layer.attrs.columns:
            return None
        hit = layer.attrs[CELL_FIELD].isin(list(codes)).fillna(False).to_numpy(dtype=bool)
        if not hit.any():
            return None
        return shapely.union_all(layer.geometry[hit])

    return resolve


class View:
    """What one caller may see under one policy: `sees` a layer, `apply` a layer."""

    def __init__(
        self,
        policy: Policy,
        who: Who,
        *,
        area: shapely.Geometry | None = None,
        cells: Sequence[str] = (),
        resolve: CellResolver | None = None,
        key: str = "",
    ) -> None:
        self.policy = policy
        self.who = who
        if cells:
            got = resolve(cells) if resolve is not None else None
            # Cells that are not in the grid limit the key to nothing, never to everything.
            got = got if got is not None else shapely.Polygon()
            area = got if area is None else shapely.union(area, got)
        self.area = area
        self.areas = [(a, _area_of(a, resolve)) for a in policy.areas if not who.clears(a.rule)]
        self.key = key or f"{policy.generation}|{who.role.label}|{who.department}|{who.anonymous}"
        self.everything = area is None and not self.areas and who.role is Role.ADMIN
        """Whether this view hides nothing (an admin without an area limit)."""
        self._limits: dict[str, bool] = {}
        self._reveals: dict[tuple[str, Access], bool] = {}

    def __repr__(self) -> str:
        return f"View({self.key!r})"

    def sees(self, name: str, classification: Access) -> bool:
        """Whether the layer `name` (classified `classification` by the store) is visible."""
        rules = self.policy.layers.get(name)
        if rules is not None and rules.rule is not None:
            return self.who.clears(rules.rule)
        return self.who.clears(Rule(classification))

    def hidden(self, schema: LayerSchema) -> frozenset[str]:
        """The fields of `schema` this caller may not see."""
        rules = self.policy.layers.get(schema.name)
        if rules is None or not rules.fields:
            return frozenset()
        have = {f.name for f in schema.fields}
        return frozenset(n for n, r in rules.fields.items() if n in have and not self.who.clears(r))

    def limits(self, name: str) -> bool:
        """Whether this view may hide some rows or fields of layer `name` (False: `apply`
        gives the layer itself)."""
        got = self._limits.get(name)
        if got is None:
            got = self._limits[name] = self._limit(name)
        return got

    def _limit(self, name: str) -> bool:
        if self.hides_rows(name):
            return True
        rules = self.policy.layers.get(name)
        return (
            not self.everything
            and rules is not None
            and any(not self.who.clears(r) for r in rules.fields.values())
        )

    def reveals(self, name: str, classification: Access) -> bool:
        """Whether this caller is shown restricted data of layer `name` (classified
        `classification` by the store): a restricted layer, or restricted rows, fields or
        areas of it, that it may see."""
        got = self._reveals.get((name, classification))
        if got is None:
            got = self._reveals[(name, classification)] = self._reveal(name, classification)
        return got

    def _reveal(self, name: str, classification: Access) -> bool:
        rules = self.policy.layers.get(name)
        pieces = [Rule(classification)] if rules is None or rules.rule is None else [rules.rule]
        if rules is not None:
            pieces += [r.rule for r in rules.rows]
            pieces += list(rules.fields.values())
        pieces += [a.rule for a in self.policy.areas if a.layers is None or name in a.layers]
        return any(p.classification is Access.RESTRICTED and self.who.clears(p) for p in pieces)

    def hides_rows(self, name: str) -> bool:
        """Whether this view may hide some rows of layer `name` (not only fields)."""
        if self.everything:
            return False
        rules = self.policy.layers.get(name)
        return (
            self.area is not None
            or any(a.layers is None or name in a.layers for a, _ in self.areas)
            or (rules is not None and any(not self.who.clears(r.rule) for r in rules.rows))
        )

    def note(self, name: str, classification: Access) -> None:
        """Count layer `name` among the restricted data this request is shown, when it is
        (the audit log)."""
        reads = READS.get()
        if reads is not None and name not in reads and self.reveals(name, classification):
            reads.add(name)

    def apply(self, layer: Layer) -> Layer:
        """`layer` as this caller may see it (the layer itself when nothing is hidden): made
        once per layer and view."""
        self.note(layer.name, layer.schema.classification)
        if not self.limits(layer.name):
            return layer
        return layer.derived(("view", self.key), lambda: self._filtered(layer))

    def rows(self, layer: Layer) -> np.ndarray:
        """Mask of the rows of `layer` this caller may see."""
        keep = np.ones(len(layer), dtype=bool)
        if not len(layer):
            return keep
        rules = self.policy.layers.get(layer.name)
        if rules is not None:
            for rr in rules.rows:
                if not self.who.clears(rr.rule):
                    keep &= ~_matches(layer, rr.match)
        for a, geom in self.areas:
            if a.layers is None or layer.name in a.layers:
                keep[_meeting(layer, geom)] = False
        if self.area is not None:
            inside = np.zeros(len(layer), dtype=bool)
            inside[_meeting(layer, self.area)] = True
            keep &= inside
        return keep

    def strip_fields(self, layer: Layer) -> Layer:
        """`layer` with every row, without the fields this caller may not see (for answers
        that pick rows themselves, by row number)."""
        if not self.hidden(layer.schema):
            return layer
        return layer.derived(
            ("fields", self.key), lambda: self._strip(layer, np.ones(len(layer), dtype=bool))
        )

    def sift(self, layer: Layer) -> tuple[Layer, np.ndarray]:
        """`layer` (read from the store: a past version, a history) as this caller may see
        it, made anew, and the mask of the rows kept."""
        keep = self.rows(layer)
        return self._strip(layer, keep), keep

    def _filtered(self, layer: Layer) -> Layer:
        held = layer.previous() if layer.previous is not None else None
        before = None if held is None else held.held(("view", self.key))
        kept = self._kept(layer, held, before)
        keep = self.rows(layer) if kept is None else kept
        out = self._strip(layer, keep)
        if out is layer:
            return layer
        out.derived(("kept", self.key), lambda: keep)
        if before is not None:
            out.previous = weakref.ref(before)
            if kept is not None and "tree" in before.__dict__:  # the same rows, where they were
                out.__dict__["tree"] = before.__dict__["tree"]
        return out

    def _kept(self, layer: Layer, held: Layer | None, before: Layer | None) -> np.ndarray | None:
        """The rows of `held`'s view, when `layer` is `held` with values changed in place
        (a batch of readings) that none of this view's rules looks at: the same rows are kept,
        in the same places (None: work them out)."""
        patch = layer.origin
        if before is None or patch is None or patch.base() is not held or not patch.same_geometry:
            return None
        rules = self.policy.layers.get(layer.name)
        looked_at = {f for rr in (rules.rows if rules else ()) for f, _ in rr.match}
        if patch.columns & looked_at:
            return None
        kept: np.ndarray | None = before.held(("kept", self.key))
        return kept

    def _strip(self, layer: Layer, keep: np.ndarray) -> Layer:
        every = bool(keep.all())
        out = layer if every else layer.take(np.flatnonzero(keep))
        hidden = self.hidden(layer.schema)
        if hidden:
            out = out.without_fields(hidden)
            if every and "tree" in layer.__dict__:  # the same rows: the same spatial index
                out.__dict__["tree"] = layer.__dict__["tree"]
        elif out is layer:
            return layer
        out.meta = dict(layer.meta)
        out.seq = layer.seq
        return out


def _area_of(rule: AreaRule, resolve: CellResolver | None) -> shapely.Geometry:
    parts = []
    if rule.cells:
        got = resolve(rule.cells) if resolve is not None else None
        if got is not None:
            parts.append(got)
    if rule.geometry is not None:
        parts.append(rule.geometry)
    return shapely.union_all(parts) if parts else shapely.Polygon()


def _matches(layer: Layer, match: Iterable[tuple[str, tuple[Any, ...]]]) -> np.ndarray:
    """Rows whose every named field takes one of the values (a field the layer lacks matches
    nothing)."""
    hit = np.ones(len(layer), dtype=bool)
    for name, values in match:
        if name not in layer.attrs.columns:
            return np.zeros(len(layer), dtype=bool)
        col = layer.attrs[name]
        hit &= col.isin(list(values)).fillna(False).to_numpy(dtype=bool)
    return hit


def _meeting(layer: Layer, geom: shapely.Geometry) -> np.ndarray:
    """Row numbers of the features of `layer` meeting `geom`."""
    if geom is None or geom.is_empty or not len(layer):
        return np.empty(0, dtype=np.int64)
    return np.asarray(layer.tree.query(geom, predicate="intersects"), dtype=np.int64)
