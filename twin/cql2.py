"""CQL2 filters (OGC API Features Part 3): parse text or JSON, evaluate over a whole layer at once.

Parsing is the `cql2` library's (it reads both encodings into canonical CQL2 JSON); this module
checks the tree against the layer's queryables and evaluates it with pandas and shapely over all
rows in one pass, with SQL's three-valued logic (a comparison with a null is unknown, and unknown
rows are not selected, also under NOT). Distances in `S_DWITHIN` are metres on the ground.

Supported: `AND`, `OR`, `NOT`, `=`, `<>`, `<`, `<=`, `>`, `>=`, `LIKE`, `BETWEEN`, `IN`,
`IS NULL`, `CASEI`, the spatial predicates `S_INTERSECTS`, `S_DISJOINT`, `S_EQUALS`,
`S_TOUCHES`, `S_WITHIN`, `S_OVERLAPS`, `S_CROSSES`, `S_CONTAINS` and `S_DWITHIN`.
"""

from __future__ import annotations

import json
import operator
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal, TypeAlias

import cql2 as _cql2
import numpy as np
import pandas as pd
import shapely
import shapely.geometry

from layers import where
from layers.errors import Uncompiled
from layers.layer import SOURCE, Layer
from layers.models import Bounds, FieldType, LayerSchema
from layers.where import SpatialOp
from twin import budget
from twin.errors import InvalidParameter, LimitExceeded

FilterLang = Literal["cql2-text", "cql2-json"]
MAX_FILTER_CHARS = 100_000
LIMIT_SETTINGS = {
    "depth": "TWIN_FILTER_MAX_DEPTH",
    "nodes": "TWIN_FILTER_MAX_NODES",
    "wildcards": "TWIN_FILTER_MAX_WILDCARDS",
}
GEOMETRY_NAMES = ("geometry", "geom")
"""Names a filter may use for a feature's geometry."""

_COMPARE: dict[str, Callable[[Any, Any], Any]] = {
    "=": operator.eq,
    "<>": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}
# CQL2 spatial operator -> (STRtree predicate for "feature OP literal", its converse).
# `tree.query(g, p)` selects tree features f with p(g, f), so the predicate is stated from
# the literal's side.
_SPATIAL: dict[str, str] = {
    "s_intersects": "intersects",
    "s_touches": "touches",
    "s_overlaps": "overlaps",
    "s_crosses": "crosses",
    "s_within": "contains",
    "s_contains": "within",
}
_CONVERSE = {"s_within": "s_contains", "s_contains": "s_within"}
_UNITS = {
    "m": 1.0,
    "meter": 1.0,
    "meters": 1.0,
    "metre": 1.0,
    "metres": 1.0,
    "km": 1000.0,
    "kilometer": 1000.0,
    "kilometers": 1000.0,
    "kilometre": 1000.0,
    "kilometres": 1000.0,
    "ft": 0.3048,
    "feet": 0.3048,
    "foot": 0.3048,
    "mi": 1609.344,
    "miles": 1609.344,
}
_KIND = {
    FieldType.STRING: "string",
    FieldType.INTEGER: "number",
    FieldType.FLOAT: "number",
    FieldType.BOOLEAN: "boolean",
    FieldType.DATE: "date",
    FieldType.DATETIME: "datetime",
}


@dataclass(frozen=True)
class Limits:
    """How big a filter may be: checked on its text before any parser sees it, and again on the
    tree, so a hostile filter costs a linear scan and a 400 naming the limit."""

    max_depth: int = 32
    """Deepest nesting: parentheses, chained NOTs, CQL2-JSON operators."""
    max_nodes: int = 5_000
    """Most terms: operators, properties and values (a geometry literal's numbers not counted)."""
    max_wildcards: int = 32
    """Most `%` and `_` wildcards in one LIKE pattern (after merging runs of `%`)."""

    @staticmethod
    def over(what: str, limit: int, unit: str, found: int | None = None) -> LimitExceeded:
        """The error of a filter over one of the limits (`found`: how far over, when known)."""
        count = f"{found} {unit}, " if found is not None else f"more {unit} than allowed: "
        return LimitExceeded(
            f"filter: {count}the maximum is {limit} ({LIMIT_SETTINGS[what]}); simplify the filter"
        )


# cql2-text tokens: quoted strings and identifiers, words, numbers, parentheses, the rest.
_TEXT_TOKEN = re.compile(
    r"""'(?:[^']|'')*'?|"(?:[^"]|"")*"?|(?P<word>[A-Za-z_][\w.:]*)|(?P<num>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)|(?P<open>\()|(?P<close>\))|[^\s]"""
)
_GEOMETRY_WORDS = frozenset(
    {
        "POINT",
        "LINESTRING",
        "POLYGON",
        "MULTIPOINT",
        "MULTILINESTRING",
        "MULTIPOLYGON",
        "GEOMETRYCOLLECTION",
        "BBOX",
        "ENVELOPE",
        "Z",
    }
)


def check_text(text: str, limits: Limits) -> None:
    """`LimitExceeded` when a cql2-text filter nests deeper or holds more terms than `limits`
    allow; one pass of a tokenizing regex, before the parser (whose recursion a deep filter
    would overflow)."""
    # Per open parenthesis: the depth outside it, and whether it holds a geometry literal.
    stack: list[tuple[int, bool]] = []
    depth = nots = nodes = deepest = 0
    literal = geometry_next = False
    for m in _TEXT_TOKEN.finditer(text):
        kind = m.lastgroup
        if kind == "open":
            stack.append((depth + nots, literal))
            depth, nots = depth + nots + 1, 0
            literal = literal or geometry_next
            deepest = max(deepest, depth)
            if deepest > limits.max_depth:
                raise limits.over("depth", limits.max_depth, "levels of nesting")
        elif kind == "close":
            if stack:
                depth, literal = stack.pop()
            nots = 0
        else:
            word = m.group().upper() if kind == "word" else ""
            geometry_next = word in _GEOMETRY_WORDS
            if word == "NOT":
                nots += 1
                if depth + nots > limits.max_depth:
                    raise limits.over("depth", limits.max_depth, "levels of nesting")
            else:
                nots = 0
            if not (literal and kind == "num") and m.group() != ",":
                nodes += 1
                if nodes > limits.max_nodes:
                    raise limits.over("nodes", limits.max_nodes, "terms")


_JSON_OPEN = frozenset("[{")
_JSON_CLOSE = frozenset("]}")
_JSON_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"?|[\[\]{}]')


def check_json_text(text: str, limits: Limits) -> None:
    """`LimitExceeded` when a cql2-json filter's brackets nest deeper than `limits` allow (each
    CQL2 operator takes two levels, a geometry's coordinates up to four more); one regex pass
    before any JSON parser recurses into it."""
    allowed = 2 * limits.max_depth + 6
    depth = 0
    for m in _JSON_TOKEN.finditer(text):
        ch = m.group()
        if ch in _JSON_OPEN:
            depth += 1
            if depth > allowed:
                raise limits.over("depth", limits.max_depth, "levels of nesting")
        elif ch in _JSON_CLOSE:
            depth -= 1


def check_tree(tree: Any, limits: Limits) -> None:
    """`LimitExceeded` when a parsed filter holds more terms (operators, properties, values) or
    nests deeper than `limits` allow; walked without recursion, a literal (a geometry, a time)
    is one term."""
    nodes = 0
    todo: list[tuple[Any, int]] = [(tree, 0)]
    while todo:
        node, depth = todo.pop()
        if isinstance(node, list):
            todo.extend((v, depth) for v in node)
            continue
        nodes += 1
        if nodes > limits.max_nodes:
            raise limits.over("nodes", limits.max_nodes, "terms")
        if depth > limits.max_depth:
            raise limits.over("depth", limits.max_depth, "levels of nesting")
        if isinstance(node, dict) and "op" in node:
            todo.append((node.get("args"), depth + 1))


Kleene: TypeAlias = Any
"""A pandas nullable boolean array (Kleene logic: NA & False is False, NA | True is True)."""
GeometryConverter = Callable[[shapely.Geometry], shapely.Geometry]


@dataclass(frozen=True)
class Filter:
    """A parsed CQL2 filter: canonical CQL2 JSON (also its cache key) and the property names used."""

    ast: Any
    key: str
    properties: frozenset[str]

    def check(self, schema: LayerSchema) -> None:
        """`InvalidParameter` when the filter names a property the layer does not have."""
        known = queryable_names(schema)
        unknown = sorted(self.properties - known)
        if unknown:
            raise InvalidParameter(
                f"filter names unknown propert{'y' if len(unknown) == 1 else 'ies'} "
                f"{', '.join(unknown)}; the queryables of {schema.name!r} are "
                f"{', '.join(sorted(known))}"
            )


def queryable_names(schema: LayerSchema) -> set[str]:
    """Property names a filter on `schema` may use."""
    return {*schema.field_names, "id", SOURCE, *GEOMETRY_NAMES}


def parse(
    text: str,
    lang: str = "cql2-text",
    *,
    geometry_to_lonlat: GeometryConverter | None = None,
    limits: Limits | None = None,
) -> Filter:
    """Parse a CQL2 filter; `InvalidParameter` naming the problem when it is not valid CQL2,
    `LimitExceeded` when it is bigger than `limits` allow (checked before parsing).

    `geometry_to_lonlat` converts geometry literals given in another CRS (`filter-crs`).
    """
    limits = limits or Limits()
    if lang not in ("cql2-text", "cql2-json"):
        raise InvalidParameter(f"filter-lang {lang!r} is not supported: use cql2-text or cql2-json")
    if len(text) > MAX_FILTER_CHARS:
        raise InvalidParameter(f"filter is longer than {MAX_FILTER_CHARS} characters")
    if not text.strip():
        raise InvalidParameter("filter is empty")
    if lang == "cql2-text":
        check_text(text, limits)
    else:
        check_json_text(text, limits)
    try:
        if lang == "cql2-text":
            tree = _cql2.parse_text(text).to_json()
        else:
            # Read for its structure only: cql2's `validate` compiles a JSON schema on every
            # call (35 ms); the evaluator checks operators, arities and types itself. cql2's own
            # JSON can move a coordinate by one ulp; the client's numbers are kept.
            _cql2.parse_json(text)
            tree = json.loads(text)
    except Exception as exc:
        raise InvalidParameter(f"filter is not valid {lang}: {_first_lines(str(exc))}") from None
    check_tree(tree, limits)
    props: set[str] = set()
    ast = _prepare(tree, props, geometry_to_lonlat or (lambda g: g), limits)
    return Filter(ast, json.dumps(tree, sort_keys=True, separators=(",", ":")), frozenset(props))


def _first_lines(message: str) -> str:
    lines = [ln.strip() for ln in message.strip().splitlines() if ln.strip()]
    # cql2's parser errors draw the position with ascii art; keep the position and expectation.
    pos = next((ln for ln in lines if ln.startswith("-->")), "")
    expected = next((ln.lstrip("= ") for ln in lines if ln.startswith("=")), "")
    if pos or expected:
        return f"at {pos.removeprefix('-->').strip()}: {expected}".strip(": ")
    return " ".join(lines)[:300]


def _prepare(node: Any, props: set[str], convert: GeometryConverter, limits: Limits) -> Any:
    """Lower-case the operators, turn geometry literals into shapely, collect property names,
    check LIKE patterns against `limits`."""
    if isinstance(node, dict):
        if "property" in node:
            props.add(str(node["property"]))
            return node
        if "op" in node:
            op = str(node["op"]).lower()
            args = node.get("args", [])
            if not isinstance(args, list):
                raise InvalidParameter(f"filter: arguments of {op!r} must be a list")
            if op == "envelope":
                return _Geom(convert(_bbox(args)))
            if op == "s_dwithin" and len(args) == 4:
                # The unit is written as a bare word, which the parser reads as a property.
                unit = args[3].get("property") if isinstance(args[3], dict) else args[3]
                head = [_prepare(a, props, convert, limits) for a in args[:3]]
                return {"op": op, "args": [*head, str(unit)]}
            if op == "like" and len(args) == 2:
                pattern = args[1]
                while isinstance(pattern, dict) and pattern.get("args"):
                    pattern = pattern["args"][0]  # CASEI('...'), LOWER('...')
                if isinstance(pattern, str):
                    like_regex(pattern, limits.max_wildcards)  # over the limit: refused here
            return {"op": op, "args": [_prepare(a, props, convert, limits) for a in args]}
        if "bbox" in node:
            return _Geom(convert(_bbox(node["bbox"])))
        if "type" in node and ("coordinates" in node or "geometries" in node):
            try:
                geom = shapely.geometry.shape(node)
            except Exception as exc:
                raise InvalidParameter(f"filter holds an invalid geometry: {exc}") from None
            return _Geom(convert(geom))
        if "timestamp" in node:
            return _Time(_timestamp(node["timestamp"]), "datetime")
        if "date" in node:
            return _Time(_timestamp(node["date"]).tz_localize(None).normalize(), "date")
        if "interval" in node:
            raise InvalidParameter("filter: temporal intervals are not supported")
        raise InvalidParameter(f"filter holds an expression CQL2 does not define: {node}")
    if isinstance(node, list):
        return [_prepare(a, props, convert, limits) for a in node]
    return node


def _bbox(values: Any) -> shapely.Geometry:
    try:
        v = [float(x) for x in values]
    except (TypeError, ValueError):
        raise InvalidParameter("filter: a bbox needs 4 or 6 numbers") from None
    if len(v) == 6:
        v = [v[0], v[1], v[3], v[4]]
    if len(v) != 4 or not np.isfinite(v).all():
        raise InvalidParameter("filter: a bbox needs 4 or 6 finite numbers")
    if v[0] > v[2] or v[1] > v[3]:
        raise InvalidParameter("filter: a bbox's minimum is above its maximum")
    return shapely.box(*v)


def _timestamp(value: Any) -> pd.Timestamp:
    try:
        t = pd.Timestamp(str(value))
    except (ValueError, TypeError):
        raise InvalidParameter(f"filter: {value!r} is not a date or time") from None
    if t is pd.NaT:
        raise InvalidParameter(f"filter: {value!r} is not a date or time")
    return t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC")


@dataclass(frozen=True)
class _Geom:
    geom: shapely.Geometry


@dataclass(frozen=True)
class _Time:
    value: pd.Timestamp
    kind: str


@dataclass
class _Operand:
    """A value during evaluation: one per row (`column`) or one for all (`scalar`)."""

    kind: str  # string, number, boolean, date, datetime, geometry, null
    column: Any = None  # a pd.Series (an expression of `layers.where` when lowering)
    scalar: Any = None
    geometry_column: bool = False

    @property
    def is_column(self) -> bool:
        return self.column is not None


def evaluate(
    flt: Filter,
    layer: Layer,
    rows: np.ndarray | None = None,
    *,
    within: Callable[[Layer, shapely.Geometry, float, np.ndarray | None], np.ndarray] | None = None,
) -> np.ndarray:
    """Boolean mask over `rows` (default: every row) of the features `flt` selects.

    `within(layer, geometry, distance_m, rows)` returns the rows within a distance in metres;
    it defaults to `twin.metric.within`.
    """
    flt.check(layer.schema)
    ev = _Evaluator(layer, rows, within)
    return np.asarray(ev.predicate(flt.ast).fillna(False), dtype=bool)


class _Evaluator:
    def __init__(
        self,
        layer: Layer,
        rows: np.ndarray | None,
        within: Callable[..., np.ndarray] | None,
    ) -> None:
        self.layer = layer
        self.rows = None if rows is None else np.asarray(rows, dtype=np.int64)
        self.n = len(layer) if rows is None else len(self.rows)  # type: ignore[arg-type]
        self._within = within
        self._columns: dict[str, pd.Series] = {}

    # -- operands ---------------------------------------------------------------------------

    def column(self, name: str) -> _Operand:
        schema = self.layer.schema
        if name in GEOMETRY_NAMES:
            return _Operand("geometry", geometry_column=True)
        if name not in self._columns:
            if name == "id":
                values = pd.Series(self.layer.ids, dtype=pd.StringDtype(na_value=pd.NA))
            else:
                values = self.layer.attrs[name]
            if self.rows is not None:
                values = values.iloc[self.rows]
            self._columns[name] = values.reset_index(drop=True)
        kind = (
            _KIND[schema.field(name).type] if name in schema.field_names else "string"
        )  # id and source are strings
        return _Operand(kind, column=self._columns[name])

    def operand(self, node: Any) -> _Operand:
        if isinstance(node, dict) and "property" in node:
            return self.column(str(node["property"]))
        if isinstance(node, dict) and "op" in node:
            op, args = node["op"], node["args"]
            if op in ("casei", "lower", "upper") and len(args) == 1:
                inner = self.operand(args[0])
                if inner.kind != "string":
                    raise InvalidParameter(f"filter: {op.upper()} needs a string")
                if inner.is_column:
                    return _Operand("string", column=self.casefold(inner.column))
                return _Operand("string", scalar=str(inner.scalar).casefold())
            return _Operand("boolean", column=self.as_value(self.predicate(node)))
        if isinstance(node, _Geom):
            return _Operand("geometry", scalar=node.geom)
        if isinstance(node, _Time):
            return _Operand(node.kind, scalar=node.value)
        if node is None:
            return _Operand("null")
        if isinstance(node, bool):
            return _Operand("boolean", scalar=node)
        if isinstance(node, int | float):
            return _Operand("number", scalar=float(node))
        if isinstance(node, str):
            return _Operand("string", scalar=node)
        raise InvalidParameter(f"filter: {node!r} cannot be used as a value here")

    # -- predicates -------------------------------------------------------------------------

    def full(self, value: Any) -> Kleene:
        return pd.array([value] * self.n, dtype="boolean")

    def predicate(self, node: Any) -> Kleene:
        if isinstance(node, bool):
            return self.full(node)
        if isinstance(node, dict) and "property" in node:
            opnd = self.column(str(node["property"]))
            if opnd.kind != "boolean":
                raise InvalidParameter(f"filter: property {node['property']!r} is not boolean")
            return self.truth(opnd.column)
        if not (isinstance(node, dict) and "op" in node):
            raise InvalidParameter(f"filter: {node!r} is not a condition")
        op, args = node["op"], node["args"]
        budget.check("evaluating the filter")
        if op in ("and", "or"):
            if len(args) < 2:
                raise InvalidParameter(f"filter: {op.upper()} needs at least two conditions")
            out = self.predicate(args[0])
            for a in args[1:]:
                p = self.predicate(a)
                out = self.both(out, p) if op == "and" else self.either(out, p)
            return out
        if op == "not":
            self._arity(op, args, 1)
            return self.negate(self.predicate(args[0]))
        if op in _COMPARE:
            self._arity(op, args, 2)
            return self.compare(op, self.operand(args[0]), self.operand(args[1]))
        if op == "like":
            return self.like(args)
        if op == "between":
            self._arity(op, args, 3)
            value = self.operand(args[0])
            return self.both(
                self.compare(">=", value, self.operand(args[1])),
                self.compare("<=", value, self.operand(args[2])),
            )
        if op == "in":
            return self.isin(args)
        if op == "isnull":
            return self.isnull(args)
        if op == "s_dwithin":
            return self.dwithin(args)
        if op in _SPATIAL or op in ("s_disjoint", "s_equals"):
            return self.spatial(op, args)
        raise InvalidParameter(f"filter: operator or function {op!r} is not supported")

    def isnull(self, args: list) -> Kleene:
        self._arity("IS NULL", args, 1)
        value = self.operand(args[0])
        if value.geometry_column:
            g = self._geometry()
            return pd.array(shapely.is_missing(g) | shapely.is_empty(g), dtype="boolean")
        if value.is_column:
            return pd.array(value.column.isna().to_numpy(), dtype="boolean")
        return self.full(value.kind == "null")

    # -- what lowering (`_Lowering`) does otherwise -----------------------------------------

    def both(self, a: Kleene, b: Kleene) -> Kleene:
        return a & b

    def either(self, a: Kleene, b: Kleene) -> Kleene:
        return a | b

    def negate(self, a: Kleene) -> Kleene:
        return ~a

    def truth(self, column: pd.Series) -> Kleene:
        """A boolean property as a condition."""
        return column.astype("boolean").array

    def as_value(self, condition: Kleene) -> Any:
        """A condition as a boolean value (a column)."""
        return pd.Series(condition)

    def casefold(self, column: pd.Series) -> Any:
        return column.str.casefold()

    def time_column(self, o: _Operand, target: str, op: str) -> Any:
        """A date, date-time (or string: refused) column compared as a `target`."""
        col = o.column
        if o.kind == "date" and target == "datetime":
            return col.dt.tz_localize("UTC")
        if o.kind == "datetime" and target == "date":
            return col.dt.tz_convert("UTC").dt.tz_localize(None).dt.normalize()
        if o.kind == "string":
            raise InvalidParameter(f"filter: {op} compares a string property with a date")
        return col

    @staticmethod
    def _arity(op: str, args: list, n: int) -> None:
        if len(args) != n:
            raise InvalidParameter(f"filter: {op.upper()} takes {n} argument(s), not {len(args)}")

    def _coerce_pair(self, a: _Operand, b: _Operand, op: str) -> tuple[Any, Any]:
        """Values of two operands in comparable form; `InvalidParameter` when they are not."""
        kinds = {a.kind, b.kind}
        if "geometry" in kinds:
            raise InvalidParameter(
                f"filter: {op} cannot compare geometries; use a spatial operator"
            )
        if kinds <= {"date", "datetime", "string"} and kinds & {"date", "datetime"}:
            # Dates compare as dates (a date property against a time compares the time's UTC
            # date), times as UTC instants; a string literal is read as either.
            date_column = any(o.is_column and o.kind == "date" for o in (a, b))
            target = "date" if date_column or "datetime" not in kinds else "datetime"
            return self._time_value(a, target, op), self._time_value(b, target, op)
        if len(kinds) > 1:
            raise InvalidParameter(
                f"filter: {op} compares a {a.kind} with a {b.kind}; compare values of the same type"
            )
        return self._value(a), self._value(b)

    def _value(self, o: _Operand) -> Any:
        if o.is_column:
            assert o.column is not None
            return o.column
        return o.scalar

    def _time_value(self, o: _Operand, target: str, op: str) -> Any:
        if o.is_column:
            return self.time_column(o, target, op)
        value = o.scalar if o.kind != "string" else _timestamp(o.scalar)
        if value.tzinfo is None:  # a date (`DATE(...)`): the instant its UTC day starts
            value = value.tz_localize("UTC")
        if target == "date":
            return value.tz_convert("UTC").tz_localize(None).normalize()
        return value

    def compare(self, op: str, a: _Operand, b: _Operand) -> Kleene:
        if "null" in (a.kind, b.kind):
            return self.full(None)  # a comparison with NULL is unknown
        left, right = self._coerce_pair(a, b, op)
        if not a.is_column and not b.is_column:
            return self.full(bool(_COMPARE[op](left, right)))
        result = _COMPARE[op](left, right)
        return self._kleene(result, left, right)

    def _kleene(self, result: Any, *inputs: Any) -> Kleene:
        """`result` as a nullable boolean array, unknown wherever an input column is null."""
        out = pd.array(np.asarray(pd.Series(result).fillna(False), dtype=bool), dtype="boolean")
        missing = np.zeros(self.n, dtype=bool)
        for v in inputs:
            if isinstance(v, pd.Series):
                missing |= v.isna().to_numpy()
        out[missing] = pd.NA
        return out

    def like(self, args: list) -> Kleene:
        self._arity("LIKE", args, 2)
        value, pattern = self.operand(args[0]), self.operand(args[1])
        if value.kind != "string" or pattern.kind != "string" or pattern.is_column:
            raise InvalidParameter("filter: LIKE needs a string property and a string pattern")
        regex = like_regex(str(pattern.scalar))
        if not value.is_column:
            return self.full(bool(regex.fullmatch(str(value.scalar))))
        return self.like_column(value.column, regex, str(pattern.scalar))

    def like_column(self, column: pd.Series, regex: re.Pattern[str], pattern: str) -> Kleene:
        matched, missing = like_mask(column, regex)
        out = pd.array(matched, dtype="boolean")
        out[missing] = pd.NA
        return out

    def isin(self, args: list) -> Kleene:
        self._arity("IN", args, 2)
        value = self.operand(args[0])
        if not isinstance(args[1], list) or not args[1]:
            raise InvalidParameter("filter: IN needs a non-empty list of values")
        items = [self.operand(v) for v in args[1]]
        if any(i.is_column for i in items):
            raise InvalidParameter("filter: the list of IN holds literal values only")
        out = self.full(False)
        for item in items:
            budget.check("evaluating the filter")
            out = self.either(out, self.compare("=", value, item))
        return out

    # -- spatial ----------------------------------------------------------------------------

    def _geometry(self) -> np.ndarray:
        g = self.layer.geometry
        return g if self.rows is None else g[self.rows]

    def _mask_of(self, hits: np.ndarray) -> Kleene:
        hits = np.asarray(hits, dtype=np.int64)
        if self.rows is None:
            mask = np.zeros(self.n, dtype=bool)
            mask[hits] = True
        else:
            mask = np.isin(self.rows, hits)
        return pd.array(mask, dtype="boolean")

    def _spatial_args(self, op: str, args: list) -> tuple[str, shapely.Geometry]:
        """(operator stated as 'feature OP literal', the literal geometry)."""
        a, b = self.operand(args[0]), self.operand(args[1])
        if a.geometry_column and b.kind == "geometry" and not b.geometry_column:
            return op, b.scalar
        if b.geometry_column and a.kind == "geometry" and not a.geometry_column:
            return _CONVERSE.get(op, op), a.scalar
        raise InvalidParameter(
            f"filter: {op.upper()} needs the geometry property and one geometry literal"
        )

    def spatial(self, op: str, args: list) -> Kleene:
        self._arity(op, args, 2)
        op, geom = self._spatial_args(op, args)
        if op == "s_disjoint":
            return ~self._mask_of(self.layer.query(geom, "intersects"))
        if op == "s_equals":
            cand = self.layer.query(geom, None)
            hits = cand[shapely.equals(self.layer.geometry[cand], geom)]
            return self._mask_of(hits)
        return self._mask_of(self.layer.query(geom, _SPATIAL[op]))

    def dwithin(self, args: list) -> Kleene:
        if len(args) not in (3, 4):
            raise InvalidParameter("filter: S_DWITHIN takes a geometry, a geometry and a distance")
        _, geom = self._spatial_args("s_dwithin", args[:2])
        dist = self.operand(args[2])
        if dist.kind != "number" or dist.is_column:
            raise InvalidParameter("filter: the distance of S_DWITHIN must be a number (metres)")
        factor = 1.0
        if len(args) == 4:
            unit = args[3]
            factor = _UNITS.get(str(unit).lower(), 0.0)
            if not factor:
                raise InvalidParameter(f"filter: unknown distance unit {unit!r}; use metres")
        distance_m = float(dist.scalar) * factor
        if not np.isfinite(distance_m) or distance_m < 0:
            raise InvalidParameter("filter: the distance of S_DWITHIN must be 0 or more metres")
        return self.near(geom, distance_m)

    def near(self, geom: shapely.Geometry, distance_m: float) -> Kleene:
        """The features within `distance_m` metres of `geom`."""
        within = self._within
        if within is None:
            from twin.metric import within as metric_within

            def within(layer: Layer, g: Any, d: float, rows: Any) -> np.ndarray:
                return metric_within(layer, g, d, rows)[0]

        return self._mask_of(within(self.layer, geom, distance_m, self.rows))


_LIKE_CHUNK = 4096
"""Distinct values matched by a LIKE between two checks of the request's deadline."""


@lru_cache(maxsize=256)
def like_regex(pattern: str, max_wildcards: int | None = None) -> re.Pattern[str]:
    """A CQL2 LIKE pattern (`%` any run, `_` one character, `\\` escapes) as a regex that matches
    in time linear in the value for each part of the pattern, however many `%` it holds.

    Runs of `%` are merged; the parts between them hold no `%` and so have a fixed length, and
    the leftmost match of each middle part is the one to take (a later one leaves less room
    for the rest), so each is matched in an atomic group that never backtracks; only the last
    part is tried against the end. `LimitExceeded` when the pattern holds more than
    `max_wildcards` wildcards."""
    parts: list[list[str]] = [[]]
    wildcards, escaped = 0, False
    for ch in pattern:
        if escaped:
            parts[-1].append(re.escape(ch))
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == "%":
            if parts[-1] or len(parts) == 1:
                parts.append([])
                wildcards += 1
        elif ch == "_":
            parts[-1].append(".")
            wildcards += 1
        else:
            parts[-1].append(re.escape(ch))
    if escaped:
        parts[-1].append(re.escape("\\"))
    if max_wildcards is not None and wildcards > max_wildcards:
        raise Limits.over("wildcards", max_wildcards, "wildcards in a LIKE pattern", wildcards)
    texts = ["".join(p) for p in parts]
    if len(texts) == 1:
        return re.compile(texts[0], re.S)
    middle = "".join(f"(?>.*?{t})" for t in texts[1:-1] if t)
    return re.compile(f"{texts[0]}{middle}.*{texts[-1]}", re.S)


def like_mask(values: pd.Series, regex: re.Pattern[str]) -> tuple[np.ndarray, np.ndarray]:
    """Which `values` match `regex` whole, and which are null: each distinct value matched
    once, checking the request's deadline between chunks."""
    codes, uniques = pd.factorize(values)
    texts = [str(u) for u in uniques]
    matched = np.zeros(len(texts) + 1, dtype=bool)  # the last entry: null (code -1)
    for start in range(0, len(texts), _LIKE_CHUNK):
        budget.check("matching a LIKE pattern")
        chunk = texts[start : start + _LIKE_CHUNK]
        matched[start : start + len(chunk)] = [regex.fullmatch(t) is not None for t in chunk]
    return matched[codes], codes < 0


# -- lowering: the filter as a store answers it in one query ------------------------------------

_SPATIAL_OPS: dict[str, SpatialOp] = {
    "s_intersects": "intersects",
    "s_disjoint": "disjoint",
    "s_equals": "equals",
    "s_touches": "touches",
    "s_within": "within",
    "s_overlaps": "overlaps",
    "s_crosses": "crosses",
    "s_contains": "contains",
}


def lower(flt: Filter, schema: LayerSchema) -> where.Expr:
    """`flt` over a layer of `schema` as a typed expression (`layers.where`) that a store
    compiles to one query: the evaluator run over no rows but on expressions, so the checks,
    the errors and every choice of type and conversion are the evaluator's own.

    `InvalidParameter` as `evaluate` raises it; `Uncompiled` for what the expression cannot
    say exactly (`CASEI`, `LOWER`, `UPPER`: Unicode case folding; an instant finer than a
    microsecond), which is then evaluated in memory."""
    flt.check(schema)
    expr: where.Expr = _Lowering(schema).predicate(flt.ast)
    return expr


def scalar(value: Any) -> where.Scalar:
    """A value of the evaluator as a literal of `layers.where` (`Uncompiled` for an instant
    finer than the microseconds a database keeps)."""
    if isinstance(value, pd.Timestamp):
        if value.nanosecond:
            raise Uncompiled("an instant finer than a microsecond")
        if value.tzinfo is None:
            return value.date()
        return value.tz_convert("UTC").to_pydatetime()
    if value is None or isinstance(value, str | bool | float):
        return value
    if isinstance(value, int | np.integer | np.floating):
        return float(value)
    raise Uncompiled(f"a value {value!r}")


class _Lowering(_Evaluator):
    """The evaluator over expressions: each condition becomes a `layers.where.Expr`."""

    def __init__(self, schema: LayerSchema) -> None:
        self.schema = schema
        self.rows = None
        self.n = 0
        self._within = None
        self._columns = {}

    def column(self, name: str) -> _Operand:
        if name in GEOMETRY_NAMES:
            return _Operand("geometry", geometry_column=True)
        if name in self.schema.field_names:
            ftype = self.schema.field(name).type
            return _Operand(_KIND[ftype], column=where.Column(name, ftype))
        return _Operand("string", column=where.Column(name, FieldType.STRING))  # id, source

    def full(self, value: Any) -> Any:
        return where.Value(value)

    def both(self, a: Any, b: Any) -> Any:
        return where.All((*_parts(a, where.All), *_parts(b, where.All)))

    def either(self, a: Any, b: Any) -> Any:
        items = [  # IN starts from false
            x
            for x in (*_parts(a, where.AnyOf), *_parts(b, where.AnyOf))
            if not (isinstance(x, where.Value) and x.value is False)
        ]
        if len(items) > 1:
            return where.AnyOf(tuple(items))
        return items[0] if items else where.Value(False)

    def negate(self, a: Any) -> Any:
        return where.Not(a)

    def truth(self, column: Any) -> Any:
        return column

    def as_value(self, condition: Any) -> Any:
        return condition

    def casefold(self, column: Any) -> Any:
        raise Uncompiled("Unicode case folding (CASEI, LOWER, UPPER)")

    def time_column(self, o: _Operand, target: str, op: str) -> Any:
        if o.kind == "date" and target == "datetime":
            return where.AsTime(o.column, "instant")
        if o.kind == "datetime" and target == "date":
            return where.AsTime(o.column, "date")
        if o.kind == "string":
            raise InvalidParameter(f"filter: {op} compares a string property with a date")
        return o.column

    def compare(self, op: str, a: _Operand, b: _Operand) -> Any:
        if "null" in (a.kind, b.kind):
            return where.Value(None)
        left, right = self._coerce_pair(a, b, op)
        if not a.is_column and not b.is_column:
            return where.Value(bool(_COMPARE[op](left, right)))
        return where.Compare(op, _expr(left), _expr(right))  # type: ignore[arg-type]

    def isnull(self, args: list) -> Any:
        self._arity("IS NULL", args, 1)
        value = self.operand(args[0])
        if value.geometry_column:
            return where.NoGeometry()
        if value.is_column:
            return where.IsNull(value.column)
        return where.Value(value.kind == "null")

    def like_column(self, column: Any, regex: re.Pattern[str], pattern: str) -> Any:
        return where.Like(column, pattern)

    def spatial(self, op: str, args: list) -> Any:
        self._arity(op, args, 2)
        op, geom = self._spatial_args(op, args)
        return where.Spatial(_SPATIAL_OPS[op], shapely.to_wkb(geom))

    def near(self, geom: shapely.Geometry, distance_m: float) -> Any:
        from twin.metric import LOCAL_EXTENT_DEG, check_distance, check_geometry, search_area

        geom, distance_m = check_geometry(geom), check_distance(distance_m)
        if distance_m == 0 and not isinstance(geom, shapely.Point):
            return where.Spatial("intersects", shapely.to_wkb(geom))  # as `metric.within`
        area = search_area(geom, distance_m).boxes
        boxes = tuple(Bounds(*b) for b in shapely.bounds(area).tolist())
        minx, miny, maxx, maxy = shapely.bounds(geom).tolist()
        straight = max(maxx - minx, maxy - miny) <= LOCAL_EXTENT_DEG  # see `metric.frame`
        return where.DWithin(shapely.to_wkb(geom), distance_m, boxes, straight)


def _parts(node: Any, kind: type[where.All | where.AnyOf]) -> tuple[Any, ...]:
    """The conditions of `node` when it is a `kind` (All, AnyOf) itself, else `node`."""
    return tuple(node.items) if isinstance(node, kind) else (node,)


def _expr(value: Any) -> where.Expr:
    """An operand of a comparison: an expression, or a literal value."""
    if isinstance(value, where.Expr):
        return value
    return where.Value(scalar(value))
