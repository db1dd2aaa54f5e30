"""Coordinate transformers every thread can use at once without paying to make them.

pyproj makes a transformer's PROJ object anew in each thread that uses it, by the same search
of the PROJ database `Transformer.from_crs` does: 0.17-0.19 s for a CGCS2000 one, paid by every
worker thread on its first query. The one operation it settles on, remade from its pipeline
text, costs 0.1 ms per thread and gives the same coordinates. Where PROJ keeps several
operations to choose between point by point (a datum shift by grids), the searched transformer
is kept as it is.
"""

from __future__ import annotations

from functools import lru_cache

from pyproj import CRS, Transformer


@lru_cache(maxsize=256)
def transformer(
    src: str | int | CRS, dst: str | int | CRS, *, always_xy: bool = True
) -> Transformer:
    """The transformer from `src` to `dst` (lon/lat order for geographic CRSs unless
    `always_xy` is false), cheap to use from any thread; for `transform` only: bounds need
    the CRS-aware transformer (`Transformer.from_crs`)."""
    searched = Transformer.from_crs(src, dst, always_xy=always_xy)
    definition = searched.definition
    if not definition or definition.startswith("unavailable"):
        return searched
    return Transformer.from_pipeline(definition)
