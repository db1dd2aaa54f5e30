"""A whole twin moved from one store to another (`twin export-store`, `twin import-store`):
the embedded GeoPackage store to PostgreSQL + PostGIS and back, through the store protocol
only, so any two backends will do."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from layers.models import Access
from layers.store import RasterInfo, Store

EVERYTHING = Access.RESTRICTED


@dataclass
class Transfer:
    """What a move copied: features per vector layer, and the rasters."""

    layers: dict[str, int] = field(default_factory=dict)
    rasters: list[str] = field(default_factory=list)


def copy_store(
    source: Store,
    target: Store,
    *,
    user: str,
    told: Callable[[str], None] = lambda _: None,
) -> Transfer:
    """Every vector layer (schema, classification, extras, metadata, every feature with its
    source) and every raster of `source` written into `target`, a layer at a time: each lands
    whole or not at all (an existing layer of the same name is upserted). Histories (versions,
    readings, the change log) stay with the source."""
    done = Transfer()
    for name, held in source.layers(EVERYTHING).items():
        layer = source.load(name, EVERYTHING)
        target.write(
            layer,
            source="store-transfer",
            user=user,
            meta=dict(held.meta),
            files=source.files(name),  # a road graph moves with its roads
        )
        done.layers[name] = len(layer)
        told(f"{name}: {len(layer):,} features")
    for name, info in source.rasters(EVERYTHING).items():
        target.put_raster(
            RasterInfo(name, info.title, info.uri, info.classification, dict(info.meta)),
            user=user,
            source="store-transfer",
        )
        done.rasters.append(name)
        told(f"{name}: raster")
    return done
