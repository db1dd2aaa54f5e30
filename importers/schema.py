"""Schemas for custom layers: from a TOML file, from the store, or inferred from a file's columns."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pandas as pd

from importers.errors import InvalidOption
from layers.errors import InvalidSchema, UnknownCollection
from layers.models import Access, Field, FieldType, GeometryFamily, LayerSchema
from layers.schemas import BUILTIN, RESERVED, check_name, load_schema_file
from layers.store import Store

_NOT_IDENT = re.compile(r"[^a-z0-9_]+")


def _field_name(column: str, taken: set[str], i: int) -> str:
    """A valid field name for a source column (`Pipe Size` -> `pipe_size`)."""
    name = _NOT_IDENT.sub("_", column.strip().lower()).strip("_")
    if not name or not name[0].isalpha():
        name = f"field_{name}" if name else f"field_{i + 1}"
    name = name[:63]
    if name in RESERVED:
        name = f"{name}_1"
    base, k = name, 2
    while name in taken:
        name = f"{base[:60]}_{k}"
        k += 1
    taken.add(name)
    return name


def _field_type(values: pd.Series) -> FieldType:
    dt = values.dtype
    if pd.api.types.is_bool_dtype(dt):
        return FieldType.BOOLEAN
    if pd.api.types.is_integer_dtype(dt):
        return FieldType.INTEGER
    if pd.api.types.is_float_dtype(dt):
        return FieldType.FLOAT
    if pd.api.types.is_datetime64_any_dtype(dt):
        return FieldType.DATETIME
    return FieldType.STRING


def infer_schema(
    name: str,
    frame: pd.DataFrame,
    *,
    geometry: GeometryFamily = GeometryFamily.ANY,
    skip: tuple[str, ...] = (),
) -> LayerSchema:
    """A custom schema with one field per source column, typed by the column's dtype.

    Each field keeps its source column name as an alias, so re-imports map it again.
    """
    taken: set[str] = set()
    fields = []
    for i, col in enumerate(c for c in frame.columns if c != "geometry" and c not in skip):
        fname = _field_name(str(col), taken, i)
        fields.append(Field(fname, _field_type(frame[col]), aliases=(str(col),)))
    return LayerSchema(
        name=name,
        title=name.replace("_", " ").title(),
        geometry=geometry,
        fields=tuple(fields),
    )


def schema_for(
    store: Store, collection: str, *, schema_file: Path | None, classification: str | None
) -> LayerSchema | None:
    """The schema an import into `collection` writes: a schema file, a built-in schema, or the
    stored one; None for a new custom layer (its schema is inferred from the file)."""
    try:
        check_name(collection)
    except InvalidSchema as exc:
        raise InvalidOption(str(exc)) from None
    stored: LayerSchema | None
    try:
        stored = store.schema(collection, Access.RESTRICTED)
    except UnknownCollection:
        stored = None
    if schema_file is not None:
        if collection in BUILTIN:
            raise InvalidOption(
                f"{collection!r} is a built-in layer; a schema file is for custom ones"
            )
        try:
            schema = load_schema_file(schema_file, name=collection)
        except InvalidSchema as exc:
            raise InvalidOption(str(exc)) from None
    elif collection in BUILTIN:
        schema = BUILTIN[collection]
        if stored is not None:  # keep a classification set by an earlier import
            schema = dataclasses.replace(schema, classification=stored.classification)
    elif stored is not None:
        schema = stored
    else:
        return None
    return with_classification(schema, classification)


def with_classification(schema: LayerSchema, classification: str | None) -> LayerSchema:
    """`schema` with the classification asked for, if any."""
    if classification is None:
        return schema
    return dataclasses.replace(schema, classification=Access.parse(classification))
