"""GeoJSON bytes for pages of features, written once without a round trip through dicts."""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import numpy as np
import shapely

from layers.layer import Layer, json_text, object_template
from twin import budget


@lru_cache(maxsize=256)
def _template(properties: tuple[str, ...], members: tuple[str, ...]) -> str:
    """A Feature to fill (with `%`) with its id, geometry, property values and member values."""
    more = "".join("," + json_text(m).replace("%", "%%") + ":%s" for m in members)
    return (
        '{"type":"Feature","id":%s,"geometry":%s,"properties":'
        + object_template(properties)
        + more
        + "}"
    )


def features_json(
    layer: Layer,
    rows: np.ndarray | Sequence[int],
    geometry: np.ndarray,
    members: Sequence[tuple[str, list[str]]] = (),
) -> list[str]:
    """One GeoJSON Feature text per row; `geometry` holds the rows' geometries, already in the
    answer's CRS, and `members` more top-level members: a name and each row's JSON text."""
    if len(rows) == 0:
        return []
    rows = np.asarray(rows, dtype=np.int64)
    # A coordinate takes at least a dozen bytes of text: a page of huge shapes is refused
    # before it is written.
    budget.check_answer(int(shapely.get_num_coordinates(geometry).sum()) * 12)
    budget.check("writing the answer")
    names = layer.property_names()
    template = _template(tuple(names), tuple(name for name, _ in members))
    # Every text is spliced as it is, one `%` per feature: the page is serialised once.
    geoms = ["null" if g is None else g for g in shapely.to_geojson(geometry).tolist()]
    columns = [layer.json_column(c).texts(rows) for c in names]
    more = [texts for _, texts in members]
    return [
        template % values
        for values in zip(layer.id_texts(rows), geoms, *columns, *more, strict=True)
    ]


def feature_collection(features: list[str], members: dict[str, Any]) -> bytes:
    """A FeatureCollection holding `features` (texts) and the other `members` given."""
    head = json_text({"type": "FeatureCollection", **members})[:-1]
    budget.check_answer(len(head) + sum(map(len, features)))
    return f'{head},"features":[{",".join(features)}]}}'.encode()


def feature(text: str, members: dict[str, Any]) -> bytes:
    """One Feature text with extra top-level `members` (links)."""
    return f"{text[:-1]},{json_text(members)[1:]}".encode()
