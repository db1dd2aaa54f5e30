"""Which features of a layer one request selects, as a store answers it in one query.

A `Where` is the store-level form of an items request's conditions: the box, equality of
properties with values already typed, the `datetime` interval (matched against each feature's
life, `layers.life`) and a CQL2 filter lowered to a small typed expression tree (`Expr`), whose
operand types and conversions are already decided (by `twin.cql2.lower`, with the same rules as
the in-memory evaluator), so a store only translates it. Conditions are combined with SQL's
three-valued logic: a feature is selected when every condition is true.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Literal, TypeAlias

from layers.models import Bounds, FieldType

Scalar: TypeAlias = str | float | bool | dt.date | dt.datetime | None
"""A literal value: text, a number, a truth value, a date, a UTC instant (aware), or null."""
CompareOp = Literal["=", "<>", "<", "<=", ">", ">="]
SpatialOp = Literal[
    "intersects", "disjoint", "equals", "touches", "within", "overlaps", "crosses", "contains"
]
"""A spatial relation, stated from the feature's side: `within` is 'the feature lies within
the literal'."""


@dataclass(frozen=True)
class Column:
    """A property of the feature: a field of the schema, `id` or `source` (both text)."""

    name: str
    type: FieldType


@dataclass(frozen=True)
class Value:
    """A literal value."""

    value: Scalar


@dataclass(frozen=True)
class AsTime:
    """A date-time column as its UTC calendar date (`to` `date`), or a date column as the
    instant its UTC day starts (`to` `instant`)."""

    of: Expr
    to: Literal["date", "instant"]


@dataclass(frozen=True)
class Compare:
    """`left op right`; unknown when either is null."""

    op: CompareOp
    left: Expr
    right: Expr


@dataclass(frozen=True)
class Like:
    """`value LIKE pattern`, the pattern in CQL2's syntax (`%`, `_`, `\\` escapes the next
    character; a lone trailing `\\` is itself), matched against the whole text."""

    value: Expr
    pattern: str


@dataclass(frozen=True)
class IsNull:
    """Whether a property is null (never unknown)."""

    of: Expr


@dataclass(frozen=True)
class NoGeometry:
    """Whether the feature's geometry is missing or empty (never unknown)."""


@dataclass(frozen=True)
class Spatial:
    """`feature op literal` for the geometry literal `wkb` (lon/lat); false, never unknown,
    for a feature without geometry."""

    op: SpatialOp
    wkb: bytes


@dataclass(frozen=True)
class DWithin:
    """Whether the feature lies within `distance_m` metres on the ground (geodesic, WGS 84) of
    the geometry literal `wkb` (lon/lat). Every such feature's box meets one of `boxes`."""

    wkb: bytes
    distance_m: float
    boxes: tuple[Bounds, ...]
    straight: bool = True
    """Whether the literal's edges are taken as straight lines on the lon/lat plane (as the
    in-memory measure takes those of a small shape), else as geodesics (a wide one)."""


@dataclass(frozen=True)
class All:
    """Every condition (SQL AND)."""

    items: tuple[Expr, ...]


@dataclass(frozen=True)
class AnyOf:
    """One of the conditions (SQL OR)."""

    items: tuple[Expr, ...]


@dataclass(frozen=True)
class Not:
    """SQL NOT: unknown stays unknown."""

    of: Expr


Expr: TypeAlias = (
    Column
    | Value
    | AsTime
    | Compare
    | Like
    | IsNull
    | NoGeometry
    | Spatial
    | DWithin
    | All
    | AnyOf
    | Not
)


@dataclass(frozen=True)
class Equals:
    """`field = value` of an items request's `name=value` (the value typed as the field);
    false, not unknown, when the field is null."""

    name: str
    type: FieldType
    value: Scalar


@dataclass(frozen=True)
class Where:
    """The conditions of one items request, all of which a feature must meet."""

    bbox: Bounds | None = None
    """The feature meets this box (lon/lat)."""
    equals: tuple[Equals, ...] = ()
    interval: tuple[dt.datetime | None, dt.datetime | None] | None = None
    """The feature's life (`layers.life`) meets this closed interval of UTC instants (None:
    open-ended)."""
    filter: Expr | None = None
    """A CQL2 filter, true for the feature."""

    def columns(self) -> set[str]:
        """Every property the conditions name (to be checked against the stored schema)."""
        names = {e.name for e in self.equals}
        todo: list[Expr] = [] if self.filter is None else [self.filter]
        while todo:
            node = todo.pop()
            if isinstance(node, Column):
                names.add(node.name)
            elif isinstance(node, AsTime | IsNull | Not):
                todo.append(node.of)
            elif isinstance(node, Compare):
                todo += [node.left, node.right]
            elif isinstance(node, Like):
                todo.append(node.value)
            elif isinstance(node, All | AnyOf):
                todo += node.items
        return names
