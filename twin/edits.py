"""Edits of single features (OGC API Features Part 4): a GeoJSON Feature checked against the
layer's schema (extras included) and turned into a one-feature layer the store writes, and
RFC 7396 merge patches applied to a stored feature."""

from __future__ import annotations

import uuid
from typing import Any

import numpy as np
import pandas as pd

from layers.layer import SOURCE, Head, Layer, coerce, empty_attrs
from twin import queries
from twin.errors import InvalidParameter
from twin.observations import field_value

MAX_ID_CHARS = 256
"""Longest feature id an edit may give."""
SOURCE_API = "api"
"""The source of features created through the API."""


def feature_of(
    layer: Head, body: Any, fid: str | None, *, max_vertices: int, source: str = SOURCE_API
) -> Layer:
    """The one-feature layer a GeoJSON Feature `body` describes (id `fid`, or the body's, or a
    new one); `InvalidParameter` naming each thing wrong with it."""
    if not isinstance(body, dict) or body.get("type") != "Feature":
        raise InvalidParameter(
            'send a GeoJSON Feature: {"type": "Feature", "geometry": ..., "properties": {...}}'
        )
    unknown = sorted(set(body) - {"type", "id", "geometry", "properties", "links", "collection"})
    if unknown:
        raise InvalidParameter(f"unknown member {', '.join(map(repr, unknown))} of the Feature")
    given = body.get("id")
    if given is not None and not isinstance(given, str | int):
        raise InvalidParameter("the Feature's id must be a string or a number")
    if fid is not None and given is not None and str(given) != fid:
        raise InvalidParameter(f"the Feature's id {given!r} is not the id in the path {fid!r}")
    fid = fid if fid is not None else str(given) if given is not None else uuid.uuid4().hex
    if len(fid) > MAX_ID_CHARS:
        raise InvalidParameter(f"a feature id has at most {MAX_ID_CHARS} characters")
    geom = queries.parse_geometry(body.get("geometry"), max_vertices=max_vertices)
    family = layer.schema.geometry
    if not family.accepts(geom.geom_type):
        raise InvalidParameter(
            f"{layer.name} holds {family.value} geometries, not a {geom.geom_type}"
        )
    props = body.get("properties") or {}
    if not isinstance(props, dict):
        raise InvalidParameter("the Feature's properties must be an object")
    fields = {f.name: f for f in layer.schema.fields}
    unknown = sorted(set(props) - set(fields) - {"id", SOURCE})
    if unknown:
        raise InvalidParameter(
            f"{layer.name} has no propert{'y' if len(unknown) == 1 else 'ies'} "
            f"{', '.join(map(repr, unknown))}; it has {', '.join(sorted(fields))}"[:400]
        )
    attrs = empty_attrs(layer.schema, 1)
    problems = []
    for name, value in props.items():
        if name not in fields:
            continue
        f = fields[name]
        try:
            attrs[name] = coerce(pd.Series([field_value(value, f.type, f.choices, f)]), f.type)
        except (ValueError, TypeError) as exc:
            problems.append(str(exc))
    if problems:
        raise InvalidParameter("; ".join(problems))
    attrs[SOURCE] = (
        attrs[SOURCE].astype(object).fillna(props.get(SOURCE) or source).astype(attrs[SOURCE].dtype)
    )
    ids, geoms = np.array([fid], dtype=object), np.array([geom], dtype=object)
    return Layer(layer.schema, ids, geoms, attrs, dict(layer.meta))


def merged(current: dict[str, Any], patch: Any) -> dict[str, Any]:
    """The GeoJSON Feature `current` with the merge patch `patch` applied (RFC 7396: a null
    property is set to null; geometry replaced when given)."""
    if not isinstance(patch, dict):
        raise InvalidParameter('send a JSON merge patch: {"properties": {...}, "geometry": ...}')
    unknown = sorted(set(patch) - {"type", "properties", "geometry", "id"})
    if unknown:
        raise InvalidParameter(f"unknown member {', '.join(map(repr, unknown))} of the patch")
    props = patch.get("properties", {})
    if not isinstance(props, dict):
        raise InvalidParameter("the patch's properties must be an object")
    out = dict(current)
    out["properties"] = {**current.get("properties", {}), **props}
    if "geometry" in patch:
        out["geometry"] = patch["geometry"]
    return out
