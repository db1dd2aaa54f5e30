"""Everything requests need made before the server says it is healthy: the tile arrays and
spatial indexes of every layer, the projections metres are measured in, the rasters `at`
samples, the pipe network traces walk, the grid statistics of every level and the JSON texts of
every attribute. Made lazily, the first query after start-up paid 50-830 ms for them."""

from __future__ import annotations

import logging
import time

import shapely

from layers.catalog import Catalog
from layers.layer import Layer
from layers.models import Access
from layers.schemas import GRID_LEVELS
from tiles.prepared import prepare
from twin import metric, network, queries, search, stats
from twin.errors import TwinError
from twin.settings import QuerySettings

log = logging.getLogger(__name__)

EVERYTHING = Access.RESTRICTED
"""Warm-up makes what any caller may need: the derived data is shared by every scope."""


def warm(
    catalog: Catalog,
    settings: QuerySettings | None = None,
    rasters: queries.RasterReader | None = None,
) -> Catalog:
    """`catalog` with everything its requests need made now rather than on the first request
    that needs it (seconds at 1M features); what is already made is kept."""
    settings = settings or QuerySettings()
    started = time.perf_counter()
    if not catalog.holds:  # windows are read as they are asked for
        metric.area_m2(shapely.box(0.0, 0.0, 1e-3, 1e-3))
        return catalog
    layers = catalog.layers(EVERYTHING)
    for layer in layers.values():
        warm_layer(layer)
    metric.area_m2(shapely.box(0.0, 0.0, 1e-3, 1e-3))  # its equal-area transformer, made once
    warm_queries(catalog, settings, rasters)
    log.info("warmed %d layers in %.2f s", len(layers), time.perf_counter() - started)
    return catalog


def warm_layer(layer: Layer) -> None:
    """One layer's tile arrays, spatial index, search index, attribute JSON texts and the
    transverse Mercator zone its buffers are drawn in (a projection costs ~0.4 s to make the
    first time)."""
    prepare(layer)
    search.index_of(layer)
    stats.share_unchanged(layer)
    _ = layer.tree
    _ = layer.row_numbers  # readings look their features up in it
    for name in layer.attrs.columns:
        layer.json_column(name)
    if layer.bounds is not None:
        minx, miny, maxx, maxy = layer.bounds
        metric.projection(metric.zone_epsg((minx + maxx) / 2, (miny + maxy) / 2))


def warm_queries(
    catalog: Catalog,
    settings: QuerySettings,
    rasters: queries.RasterReader | None = None,
    changed: set[str] | None = None,
) -> None:
    """What the query API makes once: each raster opened (or read into memory) with its
    transformer, buried assets' depths, the grid's cells, the pipe network, and the unfiltered
    statistics of every grid level; of the `changed` collections only, when named (after a
    change: the rest is made already)."""

    def fresh(*names: str) -> bool:
        return changed is None or any(n in changed for n in names)

    if not catalog.holds:  # made as the queries needing them ask
        return
    everything = catalog.layers(EVERYTHING)
    grid = everything.get(queries.GRIDS)
    # A new grid counts every layer again.
    layers = {n: lyr for n, lyr in everything.items() if fresh(n, queries.GRIDS)}
    # Any point will do (outside a raster it samples nothing): the middle of the city.
    box = next((lyr.bounds for lyr in everything.values() if lyr.bounds is not None), (0,) * 4)
    middle = shapely.Point((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)
    for info in catalog.rasters(EVERYTHING).values():
        if rasters is not None and fresh(info.name):
            rasters.values(info, middle, "bilinear", max_memory=settings.raster_memory_bytes)
    for layer in layers.values():
        if queries.is_buried(layer):
            layer.floats(queries.DEPTH)  # whether a dig reaches it, how deep below ground
    if grid is not None and fresh(queries.GRIDS):
        queries.cell_records(grid)
    pipes = everything.get("pipes")
    if pipes is not None and len(pipes) and fresh("pipes", "valves"):
        network.network_for(
            pipes,
            everything.get("valves"),
            snap_m=settings.network_snap_m,
            attach_m=settings.network_attach_m,
        )
    if grid is not None and any(n != queries.GRIDS for n in layers):
        # Per level, every layer's statistics: those of the unchanged ones are held.
        for level in GRID_LEVELS:
            try:
                stats.cell_stats(catalog, EVERYTHING, level)
            except TwinError as e:  # a grid without that level: nothing to make
                log.debug("no statistics at level %s: %s", level, e)
