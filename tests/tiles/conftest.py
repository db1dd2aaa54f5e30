"""Small layers built at test time for the tile engine's tests."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from layers.layer import Layer, coerce, empty_attrs
from layers.models import LayerSchema


def make_layer(
    schema: LayerSchema,
    geoms: Sequence[Any],
    ids: Sequence[str] | None = None,
    **columns: Sequence[Any],
) -> Layer:
    """A `Layer` of `schema` from lon/lat geometries and attribute columns (others left null)."""
    n = len(geoms)
    attrs = empty_attrs(schema, n)
    for name, values in columns.items():
        attrs[name] = coerce(pd.Series(list(values), dtype=object), schema.field(name).type)
    fids = np.array([str(i) for i in (ids if ids is not None else range(1, n + 1))], dtype=object)
    return Layer(schema, fids, np.array(list(geoms), dtype=object), attrs)
