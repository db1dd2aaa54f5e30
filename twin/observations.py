"""Readings of the live twin: batches of `{collection, id, time, property, value}` checked one
by one against the layers and their schemas. Each reading lands whole or is rejected with its
place in the batch and the reason; the store keeps every reading as history and makes the
newest of each feature's property (by its time) the feature's state."""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, field
from typing import Any

from layers.catalog import Catalog, Lens
from layers.layer import Layer
from layers.models import FieldType, Reading, parse_utc, utc_stamp
from twin.errors import InvalidParameter

KEYS = ("collection", "id", "time", "property", "value")
_KEYSET = frozenset(KEYS)
FUTURE_S = 300.0
"""A reading stamped further ahead than this (a sensor clock gone wrong) is refused."""


@dataclass
class Batch:
    """A batch of readings checked: those that land and those refused, by index."""

    accepted: list[Reading] = field(default_factory=list)
    rejected: list[dict[str, Any]] = field(default_factory=list)


def readings_of(body: Any, max_readings: int) -> list[Any]:
    """The readings of a request body: a JSON array, or `{"observations": [...]}`."""
    if isinstance(body, dict) and set(body) == {"observations"}:
        body = body["observations"]
    if not isinstance(body, list):
        raise InvalidParameter(
            'send a JSON array of readings (or {"observations": [...]}), each '
            '{"collection", "id", "time", "property", "value"}'
        )
    if len(body) > max_readings:
        raise InvalidParameter(
            f"{len(body)} readings in one batch; at most {max_readings} (TWIN_MAX_READINGS)"
        )
    return body


def check(catalog: Catalog, scope: Lens, items: list[Any], now: dt.datetime) -> Batch:
    """Each reading checked against the layers `scope` may see and their schemas."""
    batch = Batch()
    layers = batch_layers(catalog, scope, items)
    fields = {n: {f.name: f for f in lyr.schema.fields} for n, lyr in layers.items()}
    for i, item in enumerate(items):
        try:
            batch.accepted.append(_reading(layers, fields, item, now))
        except ValueError as exc:
            batch.rejected.append({"index": i, "reason": str(exc)})
    return batch


def batch_layers(catalog: Catalog, scope: Lens, items: list[Any]) -> dict[str, Layer]:
    """The layers a batch names, as `scope` sees them: those held, or (a catalog not holding
    its layers) each holding at least the features the batch names."""
    if catalog.holds:
        return catalog.layers(scope)
    wanted: dict[str, list[str]] = {}
    for item in items:
        if isinstance(item, dict):
            name, fid = item.get("collection"), item.get("id")
            if isinstance(name, str) and isinstance(fid, str):
                wanted.setdefault(name, []).append(fid)
    heads = catalog.heads(scope)
    return {n: catalog.picked(n, scope, ids) for n, ids in wanted.items() if n in heads}


def _reading(
    layers: dict[str, Layer], fields_of: dict[str, dict[str, Any]], item: Any, now: dt.datetime
) -> Reading:
    if not isinstance(item, dict):
        raise ValueError("a reading is an object {collection, id, time, property, value}")
    if item.keys() != _KEYSET:  # one comparison for the readings that are well formed
        missing = [k for k in KEYS if k not in item]
        if missing:
            raise ValueError(f"missing {', '.join(missing)}")
        unknown = sorted(set(item) - _KEYSET)
        raise ValueError(f"unknown member {', '.join(map(repr, unknown))}")
    name, fid, prop = item["collection"], item["id"], item["property"]
    if not isinstance(name, str) or name not in layers:
        raise ValueError(f"no collection {name!r}")
    layer = layers[name]
    if not isinstance(fid, str) or fid not in layer.id_set:
        raise ValueError(f"no feature {fid!r} in {name}")
    fields = fields_of[name]
    if not isinstance(prop, str) or prop not in fields:
        raise ValueError(
            f"{name} has no property {prop!r}; it has {', '.join(sorted(fields))}"[:300]
        )
    time = _time(item["time"], now)
    f = fields[prop]
    return Reading(name, fid, prop, time, field_value(item["value"], f.type, f.choices, f))


def _utc(value: Any, what: str) -> dt.datetime:
    """An ISO 8601 text with its UTC offset, as a UTC time; ValueError saying `what` it is."""
    if not isinstance(value, str):
        raise ValueError(f"{what} an ISO 8601 text with its UTC offset, not {value!r}")
    try:
        return parse_utc(value)
    except ValueError as exc:
        raise ValueError(f"{what} a time with its UTC offset: {exc}") from None


def _time(value: Any, now: dt.datetime) -> dt.datetime:
    t = _utc(value, "time is")
    if (t - now).total_seconds() > FUTURE_S:
        raise ValueError(f"time {value!r} is in the future")
    return t


def field_value(value: Any, ftype: FieldType, choices: tuple[str, ...] | None, f: Any) -> Any:
    """`value` as stored for a field of `ftype`; ValueError naming what is wrong."""
    if value is None:
        return None
    what = f"{f.name} takes"
    if ftype is FieldType.STRING:
        if not isinstance(value, str):
            raise ValueError(f"{what} text, not {value!r}")
        if choices is not None and value not in choices:
            raise ValueError(f"{what} one of {', '.join(choices)}, not {value!r}")
        return value
    if ftype is FieldType.BOOLEAN:
        if not isinstance(value, bool):
            raise ValueError(f"{what} true or false, not {value!r}")
        return value
    if ftype in (FieldType.INTEGER, FieldType.FLOAT):
        number = ftype is FieldType.FLOAT and isinstance(value, int | float)
        if isinstance(value, bool) or not (number or isinstance(value, int)):
            kind = "a number" if ftype is FieldType.FLOAT else "a whole number"
            raise ValueError(f"{what} {kind}, not {value!r}")
        if not math.isfinite(value):
            raise ValueError(f"{what} a finite number, not {value!r}")
        if f.minimum is not None and value < f.minimum:
            raise ValueError(f"{what} at least {f.minimum:g}, not {value!r}")
        if f.maximum is not None and value > f.maximum:
            raise ValueError(f"{what} at most {f.maximum:g}, not {value!r}")
        return value
    if ftype is FieldType.DATE:
        try:
            return dt.date.fromisoformat(value).isoformat()
        except (TypeError, ValueError):
            raise ValueError(f"{what} an ISO 8601 date, not {value!r}") from None
    return utc_stamp(_utc(value, what))
