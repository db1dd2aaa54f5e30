"""The store protocol: where layers persist. The GeoPackage store is the embedded default."""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np

from layers.errors import StoreError
from layers.layer import Layer
from layers.models import (
    Access,
    Bounds,
    Change,
    ImportRecord,
    LayerSchema,
    Match,
    Observed,
    Reading,
    Readings,
    StateRun,
    Thinning,
    WriteResult,
)
from layers.search import Hit
from layers.where import Where

WriteMode = Literal["upsert", "replace"]
"""`upsert` adds and updates by id; `replace` also removes the source's features absent from it."""


@dataclass(frozen=True)
class RasterInfo:
    """A raster collection: a Cloud-Optimised GeoTIFF the store refers to by `uri`.

    `uri` is a local file (the store's own copy) or what GDAL reads over the network
    (`https://...`, `s3://...`, `/vsicurl/...`): servers on other machines read the raster
    there. `bounds` (lon/lat) and `version` are what the store recorded when the raster was
    put in: nothing needs to open the file to place it on a map, and caches of what was read
    from it follow `version`, which changes whenever the raster is replaced."""

    name: str
    title: str
    uri: str | Path
    classification: Access = Access.PUBLIC
    meta: dict[str, Any] = field(default_factory=dict)
    bounds: Bounds | None = None
    version: str = ""

    @property
    def location(self) -> str:
        """`uri` as the text rasterio opens."""
        return str(self.uri)

    @property
    def remote(self) -> bool:
        """Whether the raster is read over the network (not a file of this machine)."""
        return is_remote(self.location)

    @property
    def path(self) -> Path:
        """The local file of the raster; `StoreError` for one read over the network."""
        if self.remote:
            raise StoreError(f"raster {self.name!r} is read from {self.location}, not a file")
        return Path(self.uri)


def is_remote(uri: str) -> bool:
    """Whether `uri` names a raster read over the network (a URL or a GDAL network path)."""
    return "://" in uri or uri.startswith(("/vsicurl", "/vsis3", "/vsigs", "/vsiaz", "/vsiadls"))


@dataclass(frozen=True)
class LayerInfo:
    """What the store knows of a vector layer without loading it."""

    schema: LayerSchema
    count: int
    bounds: Bounds | None
    last_change: str | None
    meta: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Store(Protocol):
    """Persistent layers. Every read takes the caller's scope and hides what it may not see."""

    location: str

    def layers(self, scope: Access) -> dict[str, LayerInfo]:
        """Vector layers visible at `scope`, by name."""
        ...

    def rasters(self, scope: Access) -> dict[str, RasterInfo]:
        """Raster collections visible at `scope`, by name."""
        ...

    def schema(self, name: str, scope: Access) -> LayerSchema:
        """The schema of one layer; `UnknownCollection` when absent or not visible."""
        ...

    def load(self, name: str, scope: Access) -> Layer:
        """The whole layer, read into memory."""
        ...

    def register(self, schema: LayerSchema, meta: dict[str, Any] | None = None) -> None:
        """Create the layer (or extend it with new fields) so it can be written."""
        ...

    def write(
        self,
        layer: Layer,
        *,
        mode: WriteMode = "upsert",
        source: str,
        user: str,
        details: dict[str, Any] | None = None,
        meta: dict[str, Any] | None = None,
        expect: dict[str, str | None] | None = None,
        files: Mapping[str, bytes] | None = None,
    ) -> WriteResult:
        """Apply `layer`'s features atomically: all land, or nothing changes (with `expect`:
        only if the features it names have those ETags, None: absent; else
        `PreconditionFailed`).

        `meta` (attribution, licence, ...) is merged into the layer's stored metadata. The
        layer's extra attributes are a union over writes: extras stored before that
        `layer.schema` lacks stay in the schema, with their values (null on new features).
        `files` (name -> bytes: the road graph of an OSM import) are kept with the layer in the
        same transaction, each replacing the layer's file of that name.
        """
        ...

    def files(self, name: str) -> dict[str, bytes]:
        """The files kept with layer `name` (see `write`), by name; none for an unknown one."""
        ...

    def delete_features(
        self,
        name: str,
        ids: list[str],
        *,
        user: str,
        source: str,
        expect: dict[str, str | None] | None = None,
    ) -> int:
        """Remove features by id atomically (with `expect`, only if in those states)."""
        ...

    def put_raster(self, info: RasterInfo, *, user: str, source: str) -> RasterInfo:
        """Move a finished COG into the store and register it atomically."""
        ...

    def window(
        self,
        name: str,
        bbox: Bounds,
        scope: Access,
        thin: Thinning | None = None,
        match: Match | None = None,
    ) -> Layer:
        """The features whose box meets `bbox` (lon/lat), in the layer's stored order: what a
        server that does not hold the layer reads for a tile or a query there; with `thin`
        (a tile below the detail zoom), at least the lines and polygons it keeps; with `match`,
        at least those it matches (a network trace reads one network)."""
        ...

    def page(self, name: str, scope: Access, limit: int, offset: int) -> tuple[Layer, int]:
        """Features `offset` to `offset + limit` of the layer in stored order, and how many
        it holds (items paged without conditions, for a server not holding the layer)."""
        ...

    def select(
        self, name: str, scope: Access, where: Where, limit: int, offset: int
    ) -> tuple[Layer, int]:
        """Features `offset` to `offset + limit`, in stored order, of those meeting `where`,
        and how many do, answered by the store in one query (items selected by a server not
        holding the layer); `Uncompiled` when it cannot say `where` exactly (the caller then
        selects in memory from `chunks`)."""
        ...

    def chunks(
        self, name: str, scope: Access, size: int, where: Where | None = None
    ) -> Iterator[Layer]:
        """The whole layer in stored order, `size` features at a time, from one snapshot
        (items filtered over a whole layer a server does not hold); with `where`, at least
        the features meeting it (a store may leave the selecting to the caller)."""
        ...

    def temporal(self, name: str) -> list[str | None] | None:
        """The layer's temporal extent: [first, last] instant of its features' lives (see
        `layers.life`; last None while one of known start has no end); None when none is
        known."""
        ...

    def boxes(self, name: str, ids: Sequence[str]) -> np.ndarray:
        """The boxes (lon/lat, `(k, 4)`) of features `ids`, NaN for those absent or without
        geometry."""
        ...

    def features(self, name: str, ids: Sequence[str], scope: Access) -> Layer:
        """The stored features of `ids` (those that exist), in the layer's stored order."""
        ...

    def search(
        self, layers: Mapping[str, Collection[str]], text: str, words: Sequence[str], limit: int
    ) -> list[Hit]:
        """Up to `limit` hits of the layers named for a normalised query `text` and its
        `words`, best first, as `layers.search` ranks them over the layers held; each layer is
        named with the fields its search leaves out (those a caller may not see)."""
        ...

    def observe(self, readings: Readings | Sequence[Reading], *, user: str) -> Observed:
        """Keep the readings (as `Reading`s or as columns) as history; the newest of each
        feature's property (by its time) becomes its state, one change-log entry per feature
        changed."""
        ...

    def settle(self, history: bool = True) -> int:
        """Fold what was written append-only into the stored features, and with `history`
        into the indexed history (a server calls it now and then; reads do what they need
        themselves). Returns how much it folded."""
        ...

    def as_of(self, name: str, time: str, scope: Access, ids: list[str] | None = None) -> Layer:
        """The layer (or features `ids`) as recorded at `time` (ISO, UTC, milliseconds)."""
        ...

    def versions(self, name: str, fid: str, scope: Access) -> tuple[Layer, list[tuple]]:
        """Every earlier version of a feature, oldest first, and when, by whom, why each
        ended."""
        ...

    def readings(
        self,
        collection: str,
        fid: str,
        *,
        start: str | None = None,
        end: str | None = None,
        limit: int = -1,
        offset: int = 0,
        hidden: Sequence[str] = (),
    ) -> tuple[list[tuple[str, str, Any, str, str]], int]:
        """A page of one feature's readings (property, time, value, received, user), oldest
        first, and how many there are in all (the readings of properties `hidden` left out)."""
        ...

    def revision(self) -> int:
        """The sequence number of the newest change-log entry (0: none yet)."""
        ...

    def changes(self, since: int, limit: int = 100_000) -> list[Change]:
        """Change-log entries after `since`, oldest first, at most `limit`."""
        ...

    def log(self, since: int, limit: int = 100_000) -> list[Change | StateRun]:
        """The change log after `since` as written: the entries of a batch of readings as one
        `StateRun` (what a follower applies column-wise)."""
        ...

    def history(self, collection: str | None = None) -> list[ImportRecord]:
        """Import history, newest first."""
        ...

    def close(self) -> None:
        """Release the store's handles."""
        ...
