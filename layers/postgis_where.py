"""A selection (`layers.where.Where`) as the condition of one SQL query over a layer's table.

Every value of the request is a bound parameter (named `%(pN)s` placeholders): the SQL text
holds only this module's own words, the table's column names (as identifiers, each checked
against the stored schema first) and constants of the code. The condition means what the
in-memory evaluator (`twin.cql2`, `twin.select`) means, row by row:

- SQL's three-valued logic is the evaluator's Kleene logic; a spatial predicate is never
  unknown (a feature without geometry meets nothing), `IS NULL` never either;
- text compares by code point (`COLLATE "C"`: UTF-8 bytes sort as code points), `LIKE` matches
  the whole text character by character (the CQL2 pattern rewritten with explicit escapes);
- numbers compare as doubles, as pandas compares an integer column with a float; date-times
  compare at the milliseconds the in-memory layer holds (`date_trunc`);
- `datetime` matches each feature's life by the rules of `layers.life` (`life_bounds`, also
  the temporal extent's);
- the spatial predicates are GEOS's, as shapely's; `S_DWITHIN` measures on the WGS 84
  spheroid (`ST_DWithin` of geographies), both shapes first cut into pieces of at most
  `PIECE_DEG` so that PostGIS's great-circle edges follow the stored straight lon/lat edges
  (the in-memory measure) to well under a millimetre; what remains apart is how each finds
  the nearest points (on the sphere here, in a local plane there): a feature lying within a
  millimetre of the distance may be counted by one and not the other.
"""

from __future__ import annotations

from typing import Any

import shapely
from psycopg import sql

from layers.errors import Uncompiled
from layers.layer import SOURCE, UPDATED
from layers.life import ENDED, life_fields
from layers.models import Bounds, Field, FieldType, LayerSchema
from layers.where import (
    All,
    AnyOf,
    AsTime,
    Column,
    Compare,
    DWithin,
    Expr,
    IsNull,
    Like,
    NoGeometry,
    Not,
    Scalar,
    Spatial,
    Value,
    Where,
)

PIECE_DEG = 0.0005
"""Longest edge (degrees on the lon/lat plane, about 50 m) of the shapes `S_DWITHIN` measures."""

_COMPARE = {op: sql.SQL(op) for op in ("=", "<>", "<", "<=", ">", ">=")}
_SPATIAL = {
    "intersects": sql.SQL("ST_Intersects"),
    "equals": sql.SQL("ST_Equals"),
    "touches": sql.SQL("ST_Touches"),
    "within": sql.SQL("ST_Within"),
    "overlaps": sql.SQL("ST_Overlaps"),
    "crosses": sql.SQL("ST_Crosses"),
    "contains": sql.SQL("ST_Contains"),
}
_GEOM = sql.Identifier("geom")
_HAS_GEOMETRY = sql.SQL("NOT ST_IsEmpty(geom)")
_TIMES = (FieldType.DATE, FieldType.DATETIME, FieldType.INTEGER)


def life_instant(f: Field, *, end: bool) -> sql.Composable:
    """A date, date-time or year field as the UTC instant its life starts or ends at (as
    `layers.life.times` reads it: a year or a day ends on its last millisecond)."""
    c = sql.Identifier(f.name)
    if f.type is FieldType.INTEGER:
        year = sql.SQL("(CASE WHEN {c} BETWEEN 1678 AND 2261 THEN {c} END)").format(c=c)
        if end:
            return sql.SQL(
                "make_timestamptz({y}::int + 1, 1, 1, 0, 0, 0, 'UTC') - interval '1 millisecond'"
            ).format(y=year)
        return sql.SQL("make_timestamptz({y}::int, 1, 1, 0, 0, 0, 'UTC')").format(y=year)
    if f.type is FieldType.DATE:
        day = sql.SQL("({c}::timestamp AT TIME ZONE 'UTC')").format(c=c)
        if end:
            return sql.SQL("({d} + interval '1 day' - interval '1 millisecond')").format(d=day)
        return day
    return _milliseconds(c)


def life_bounds(schema: LayerSchema) -> tuple[sql.Composable, sql.Composable, str]:
    """SQL of the instants each feature's life starts and ends at (`layers.life.life`: null
    where unknown), and its kind; the end may name the parameter `%(ended)s`, the statuses
    of an ended life (`ENDED_PARAMS`)."""
    fields = life_fields(schema)
    updated = _milliseconds(sql.Identifier(UPDATED))
    if fields.kind == "changed" or fields.start is None:
        return updated, updated, fields.kind
    start = life_instant(fields.start, end=False)
    end: sql.Composable = (
        sql.SQL("NULL::timestamptz") if fields.end is None else life_instant(fields.end, end=True)
    )
    # `life` reads `status.isin(ENDED)`: never true of a column that is not text.
    if fields.status and schema.field("status").type is FieldType.STRING:
        end = sql.SQL(
            "(CASE WHEN {e} IS NULL AND status = ANY(%(ended)s) THEN {u} ELSE {e} END)"
        ).format(e=end, u=updated)
    return start, end, fields.kind


ENDED_PARAMS = {"ended": list(ENDED)}
"""The parameters `life_bounds` may name."""


def _milliseconds(c: sql.Composable) -> sql.Composable:
    """An instant column at the milliseconds a layer in memory holds."""
    return sql.SQL("date_trunc('milliseconds', {c})").format(c=c)


class Compiled:
    """The condition of a `Where` over a layer of `schema`, and its parameters by name."""

    def __init__(self, where: Where, schema: LayerSchema) -> None:
        self.schema = schema
        self.params: dict[str, Any] = dict(ENDED_PARAMS)
        self._fields = {f.name: f.type for f in schema.fields}
        self._fields.setdefault("id", FieldType.STRING)
        self._fields.setdefault(SOURCE, FieldType.STRING)
        unknown = where.columns() - set(self._fields)
        if unknown:  # the caller's schema is not the stored one: let it scan instead
            raise Uncompiled(f"no column {sorted(unknown)[0]!r} in {schema.name!r}")
        parts: list[sql.Composable] = []
        if where.bbox is not None:
            box = self._box(where.bbox)
            parts.append(sql.SQL("geom && {b} AND ST_Intersects(geom, {b})").format(b=box))
        for eq in where.equals:
            col = self._column(Column(eq.name, eq.type))
            value = self._value(eq.value, eq.type)
            parts.append(sql.SQL("coalesce({c} = {v}, false)").format(c=col, v=value))
        if where.interval is not None:
            parts.append(self._interval(*where.interval))
        if where.filter is not None:
            parts += [sql.SQL("geom && {b}").format(b=self._box(b)) for b in _boxes(where.filter)]
            parts.append(sql.SQL("coalesce({f}, false)").format(f=self.expr(where.filter)))
        self.sql: sql.Composable = (
            sql.SQL(" AND ").join(sql.SQL("({})").format(p) for p in parts)
            if parts
            else sql.SQL("true")
        )

    # -- values -----------------------------------------------------------------------------

    def bind(self, value: Any) -> sql.Placeholder:
        """A placeholder for `value`, a parameter of the query."""
        name = f"p{len(self.params)}"
        self.params[name] = value
        return sql.Placeholder(name)

    def _value(self, value: Scalar, ftype: FieldType | None = None) -> sql.Composable:
        if value is None:
            return sql.SQL("NULL")
        if isinstance(value, bool):
            cast = "boolean"
        elif isinstance(value, int) and ftype is FieldType.INTEGER:
            cast = "numeric"  # exact, however large
        elif isinstance(value, int | float):
            value, cast = float(value), "float8"
        elif isinstance(value, str):
            cast = "text"
        elif hasattr(value, "tzinfo"):  # datetime.datetime: aware, UTC
            cast = "timestamptz"
        else:
            cast = "date"
        return sql.SQL("{p}::{t}").format(p=self.bind(value), t=sql.SQL(cast))

    def _box(self, b: Bounds) -> sql.Composable:
        return sql.SQL("ST_MakeEnvelope({}, {}, {}, {}, 4326)").format(
            *(self.bind(float(v)) for v in b)
        )

    def _literal(self, wkb: bytes) -> sql.Composable:
        return sql.SQL("ST_GeomFromWKB({w}, 4326)").format(w=self.bind(wkb))

    def _column(self, c: Column) -> sql.Composable:
        stored = self._fields[c.name]
        if stored is not c.type:
            raise Uncompiled(f"{c.name!r} is stored as {stored.value}, not {c.type.value}")
        ident = sql.Identifier(c.name)
        if c.type is FieldType.DATETIME:
            return _milliseconds(ident)
        if c.type is FieldType.STRING:
            return sql.SQL('({} COLLATE "C")').format(ident)
        return ident

    # -- conditions -------------------------------------------------------------------------

    def expr(self, node: Expr) -> sql.Composable:
        """SQL of one expression of a filter."""
        if isinstance(node, Column):
            return self._column(node)
        if isinstance(node, Value):
            return self._value(node.value)
        if isinstance(node, AsTime) and node.to == "date":
            return sql.SQL("(({x}) AT TIME ZONE 'UTC')::date").format(x=self.expr(node.of))
        if isinstance(node, AsTime):
            return sql.SQL("(({x})::timestamp AT TIME ZONE 'UTC')").format(x=self.expr(node.of))
        if isinstance(node, Compare):
            return sql.SQL("({l} {op} {r})").format(
                l=self.expr(node.left), op=_COMPARE[node.op], r=self.expr(node.right)
            )
        if isinstance(node, Like):
            return sql.SQL("({v} LIKE {p})").format(
                v=self.expr(node.value), p=self.bind(like_pattern(node.pattern))
            )
        if isinstance(node, IsNull):
            return sql.SQL("(({x}) IS NULL)").format(x=self.expr(node.of))
        if isinstance(node, NoGeometry):
            return sql.SQL("(geom IS NULL OR ST_IsEmpty(geom))")
        if isinstance(node, Spatial):
            return self._spatial(node)
        if isinstance(node, DWithin):
            return self._dwithin(node)
        if isinstance(node, All | AnyOf):
            joint = sql.SQL(" AND " if isinstance(node, All) else " OR ")
            return sql.SQL("({})").format(joint.join(self.expr(x) for x in node.items))
        if isinstance(node, Not):
            return sql.SQL("(NOT {x})").format(x=self.expr(node.of))
        raise Uncompiled(f"an expression {type(node).__name__}")

    def _spatial(self, node: Spatial) -> sql.Composable:
        lit = self._literal(node.wkb)
        if node.op == "disjoint":
            meets = sql.SQL("ST_Intersects(geom, {g})").format(g=lit)
            return sql.SQL("(NOT coalesce({h} AND {m}, false))").format(h=_HAS_GEOMETRY, m=meets)
        test = sql.SQL("{f}(geom, {g})").format(f=_SPATIAL[node.op], g=lit)
        return sql.SQL("coalesce({h} AND {t}, false)").format(h=_HAS_GEOMETRY, t=test)

    def _dwithin(self, node: DWithin) -> sql.Composable:
        boxes = sql.SQL(" OR ").join(
            sql.SQL("geom && {b}").format(b=self._box(b)) for b in node.boxes
        )
        piece = self.bind(PIECE_DEG)
        lit = self._literal(node.wkb)
        if node.straight:
            lit = sql.SQL("ST_Segmentize({g}, {s})").format(g=lit, s=piece)
        near = sql.SQL(
            "ST_DWithin(ST_Segmentize(geom, {s})::geography, {g}::geography, {d}, true)"
        ).format(s=piece, g=lit, d=self.bind(float(node.distance_m)))
        return sql.SQL("coalesce(({b}) AND {h} AND {n}, false)").format(
            b=boxes, h=_HAS_GEOMETRY, n=near
        )

    def _interval(self, lo: Any, hi: Any) -> sql.Composable:
        fields = life_fields(self.schema)
        for f in (fields.start, fields.end):
            if f is not None and f.type not in _TIMES:
                raise Uncompiled(f"a life read from {f.name!r}, a {f.type.value} field")
        start, end, _ = life_bounds(self.schema)
        parts = [sql.SQL("({s} IS NOT NULL OR {e} IS NOT NULL)").format(s=start, e=end)]
        if lo is not None:
            parts.append(sql.SQL("({e} IS NULL OR {e} >= {lo})").format(e=end, lo=self._value(lo)))
        if hi is not None:
            parts.append(
                sql.SQL("({s} IS NULL OR {s} <= {hi})").format(s=start, hi=self._value(hi))
            )
        return sql.SQL(" AND ").join(parts)


def _boxes(node: Expr) -> list[Bounds]:
    """Boxes every feature `node` selects meets (for the spatial index): of the spatial
    conditions among its top-level AND."""
    items = node.items if isinstance(node, All) else (node,)
    out: list[Bounds] = []
    for x in items:
        if isinstance(x, DWithin) and len(x.boxes) == 1:
            out.append(x.boxes[0])
        elif isinstance(x, Spatial) and x.op != "disjoint":
            g = shapely.from_wkb(x.wkb)
            if not g.is_empty:
                out.append(Bounds(*shapely.bounds(g).tolist()))
    return out


def like_pattern(pattern: str) -> str:
    """A CQL2 LIKE pattern as a PostgreSQL one (escape `\\`) matching the same texts: `%`, `_`
    and `\\` escape the next character; a lone trailing `\\` stands for itself."""
    out: list[str] = []
    escaped = False
    for ch in pattern:
        if escaped:
            out.append("\\" + ch if ch in "%_\\" else ch)
            escaped = False
        elif ch == "\\":
            escaped = True
        else:
            out.append(ch)
    if escaped:
        out.append("\\\\")
    return "".join(out)
