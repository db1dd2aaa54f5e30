"""Where the store lives and which backend holds it."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from layers.catalog import Catalog, WindowCatalog
from layers.gpkg import GeoPackageStore
from layers.store import Store

if TYPE_CHECKING:
    from layers.postgis import PostGISStore

URL_SCHEMES = ("postgresql://", "postgres://")


def is_database_url(location: str | Path) -> bool:
    """Whether a store location names a PostgreSQL database rather than a directory."""
    return isinstance(location, str) and location.startswith(URL_SCHEMES)


class StoreSettings(BaseSettings):
    """Store location: `TWIN_STORE`, a directory for the embedded GeoPackage store or a
    `postgresql://user@host:port/db` URL for the PostGIS store (`pip install twin[postgis]`)."""

    model_config = SettingsConfigDict(env_prefix="TWIN_", extra="ignore")

    # A URL is kept as it was given (a Path would fold its `//`); anything else is a Path.
    store: Path | str = Path("twin-data")
    backend: Literal["gpkg", "postgis"] = "gpkg"
    """Informative: the backend follows from `store`."""
    raster_dir: Path | None = None
    """Where the PostGIS store keeps its COG rasters (`TWIN_RASTER_DIR`); None: a folder per
    database under `~/.local/share/twin/rasters`. The embedded store keeps them beside its file."""
    replica: str | None = Field(
        default=None, validation_alias=AliasChoices("replica", "twin_store_replica")
    )
    """A streaming replica of the PostGIS store's database (`TWIN_STORE_REPLICA`, a
    `postgresql://` URL) that serves reads once it has replayed what they must see; writes, and
    reads it cannot serve yet, go to `store`."""
    replica_max_lag_s: float = 5.0
    """How far behind the replica may fall before reads leave it (`TWIN_REPLICA_MAX_LAG_S`)."""
    hold_layers: bool | None = None
    """Whether a server holds every layer in memory (`TWIN_HOLD_LAYERS`). None: the embedded
    store's are held (served from memory); the PostGIS store's are not (a tile or a query
    reads its window from the database, so a server's memory stays flat as the data grows)."""
    whole_layers: int = 2
    """A server that does not hold its layers keeps this many whole layers read for what
    still needs one (searches; `TWIN_WHOLE_LAYERS`)."""

    @property
    def holds(self) -> bool:
        """Whether servers hold every layer (see `hold_layers`)."""
        return self.backend == "gpkg" if self.hold_layers is None else self.hold_layers

    def model_post_init(self, __context: object) -> None:
        """A location that is not a database URL is a directory."""
        if isinstance(self.store, str) and not is_database_url(self.store):
            self.store = Path(self.store)
        if is_database_url(self.store):
            self.backend = "postgis"
        if self.replica is not None and not is_database_url(self.replica):
            raise ValueError(
                f"TWIN_STORE_REPLICA must be a postgresql:// URL, not {self.replica!r}"
            )


def open_store(settings: StoreSettings, *, create: bool = True) -> GeoPackageStore | PostGISStore:
    """The store the settings name: PostGIS for a `postgresql://` URL, else the embedded
    GeoPackage store in that directory."""
    if is_database_url(settings.store):
        from layers.postgis import PostGISStore  # psycopg: an optional extra

        return PostGISStore(
            str(settings.store),
            create=create,
            raster_dir=settings.raster_dir,
            replica=settings.replica,
            replica_max_lag_s=settings.replica_max_lag_s,
        )
    return GeoPackageStore(settings.store, create=create)


def open_catalog(settings: StoreSettings, store: Store | None = None) -> Catalog:
    """The catalog a server serves the store from: every layer held in memory, or (see
    `StoreSettings.hold_layers`) windows read from the store as tiles and queries ask."""
    store = store if store is not None else open_store(settings)
    if settings.holds:
        return Catalog(store)
    return WindowCatalog(store, whole=settings.whole_layers)
