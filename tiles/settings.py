"""Settings of the tile engine: encoding, generalisation policy, budgets and the cache."""

from __future__ import annotations

from collections.abc import Iterable

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class TileSettings(BaseSettings):
    """How vector tiles are cut, generalised and cached (env prefix `TWIN_TILES_`).

    A "pixel" is 1/512 of a tile's width: MapLibre draws vector tiles 512 px wide.
    """

    model_config = SettingsConfigDict(env_prefix="TWIN_TILES_", extra="ignore")

    extent: int = Field(
        default=4096, ge=256, le=65536, description="MVT extent (units per tile side)"
    )
    buffer: int = Field(
        default=256,
        ge=0,
        le=4096,
        description="Extent units kept around the tile (PostGIS default)",
    )
    detail_zoom: int = Field(
        default=14,
        ge=0,
        le=30,
        description="From this zoom on a tile holds every feature with every vertex; below it "
        "features are simplified, thinned, and points clustered",
    )
    maxzoom: int = Field(
        default=16,
        ge=0,
        le=24,
        description="Highest zoom announced in TileJSON; clients overzoom beyond",
    )
    simplify_px: float = Field(
        default=0.5, ge=0, description="Simplification tolerance below detail_zoom"
    )
    min_size_px: float = Field(
        default=1.0,
        ge=0,
        description="Lines and polygons smaller than this are dropped below detail_zoom",
    )
    cluster_px: int = Field(
        default=8,
        ge=1,
        le=512,
        description="Points closer than this grid cell are merged below detail_zoom",
    )
    refresh_s: float = Field(
        default=1.0,
        ge=0,
        description="A cached tile whose data changed is drawn again at most this often: "
        "until then, and while it is drawn anew, the one held is served (live readings "
        "change every tile many times a second); 0: drawn again on the next request",
    )
    max_features: int = Field(
        default=4096,
        ge=1,
        description="Most features one layer keeps in a tile below detail_zoom: one per 8x8 "
        "pixels on average (64 x 64 cells of a 512 px tile); denser is unreadable",
    )
    max_bytes: int = Field(
        default=500_000,
        ge=1_000,
        description="Byte budget of one tile (uncompressed), all layers together",
    )
    render_concurrency: int = Field(
        default=1,
        ge=1,
        le=64,
        description="Tiles one process renders at once; more threads only fight over the GIL "
        "(measured: 8 concurrent renders cost 1.5x the CPU per tile of one at a time)",
    )
    minzoom: dict[str, int] = Field(
        default_factory=dict,
        description="Per-collection minzoom overrides, e.g. TWIN_TILES_MINZOOM='{\"pipes\": 8}'",
    )
    properties: dict[str, list[str]] = Field(
        default_factory=dict,
        description="Per-collection attributes tiles carry besides `id`, e.g. "
        'TWIN_TILES_PROPERTIES=\'{"lights": ["status", "lamp_type"]}\'; a collection not named '
        "carries every attribute, the extras kept from its source files included (these are "
        "the first left out of a tile over max_bytes)",
    )
    gzip_level: int = Field(
        default=1,
        ge=1,
        le=9,
        description="gzip level of cached tiles (level 1: a third of the CPU of level 6 for nearly "
        "the same size); exports use level 9",
    )
    cache_bytes: int = Field(
        default=256 * 1024 * 1024,
        ge=0,
        description="Memory the tile cache may hold (raw tiles and, once made, their gzip bytes)",
    )
    cache_control: str = Field(
        default="public, max-age=60",
        description="Cache-Control header for tiles (the HTTP layer uses it)",
    )

    def tile_keys(self, collection: str, names: Iterable[str]) -> list[str]:
        """Which of a collection's attribute `names` its tiles carry (`properties` narrows)."""
        wanted = self.properties.get(collection)
        return [n for n in names if wanted is None or n in wanted]
