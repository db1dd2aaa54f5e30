"""Settings of the server and its queries: one class per concern, env prefix `TWIN_`."""

from __future__ import annotations

from pathlib import Path

from pydantic import field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from layers.models import Access


class ServerSettings(BaseSettings):
    """The HTTP server: address, default caller scope, paging limits."""

    model_config = SettingsConfigDict(env_prefix="TWIN_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = 8000
    anonymous_access: str = "public"
    """Scope of a caller without credentials: public, internal or restricted."""
    items_default_limit: int = 100
    items_max_limit: int = 10_000
    public_url: str = ""
    """Base URL clients reach the server at (behind a proxy); empty: taken from each request."""
    cors_origins: list[str] = ["*"]
    """Origins allowed to read the API from a browser on another site."""
    gzip_level: int = 4
    """gzip level of JSON answers (tiles are compressed once by the tile cache)."""
    extra_crs: list[int] = []
    """EPSG codes offered besides CRS84, 4326, 4490, 3857 and the CGCS2000 GK zones."""
    web_dir: Path = Path(__file__).resolve().parents[1] / "web"
    """The planners' web map (static files, MapLibre installed there by `npm ci`)."""

    @field_validator("anonymous_access")
    @classmethod
    def _known_scope(cls, value: str) -> str:
        return Access.parse(value).label


class QuerySettings(BaseSettings):
    """Limits of the spatial query API; each answered 4xx with what was too big."""

    model_config = SettingsConfigDict(env_prefix="TWIN_QUERY_", extra="ignore")

    max_radius_m: float = 5_000.0
    """Largest radius, tolerance, buffer or distance a query may ask for, metres."""
    max_results: int = 10_000
    """Largest `limit` a query may ask for."""
    default_results: int = 100
    """Features returned when a query names no `limit`."""
    max_vertices: int = 10_000
    """Most vertices a posted shape may have."""
    max_body_bytes: int = 1_000_000
    """Largest request body, bytes."""
    dem_collection: str = "dem"
    """Raster collection holding ground elevation, for the depth of buried assets."""
    raster_memory_bytes: int = 256 * 2**20
    """Rasters whose bands fit in this many bytes are read into memory once and sampled there by
    `at` (0: always read from the file)."""
    network_snap_m: float = 0.5
    """Pipe ends, valves and fittings closer than this are joined into one network node."""
    network_attach_m: float = 30.0
    """Hydrants and meters serve the nearest pipe of their network within this distance."""
    trace_snap_m: float = 50.0
    """A trace from a point starts on the nearest gravity pipe within this distance."""
