"""Settings of the server and its queries: one class per concern, env prefix `TWIN_`."""

from __future__ import annotations

from pydantic_settings import BaseSettings, SettingsConfigDict


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
    tile_max_age_s: int = 60
    """`Cache-Control: max-age` of vector and raster tiles."""
    gzip_level: int = 4
    """gzip level of JSON answers (tiles are compressed once by the tile cache)."""
    extra_crs: list[int] = []
    """EPSG codes offered besides CRS84, 4326, 4490, 3857 and the CGCS2000 GK zones."""


class QuerySettings(BaseSettings):
    """Limits of the spatial query API; each answered 4xx with what was too big."""

    model_config = SettingsConfigDict(env_prefix="TWIN_QUERY_", extra="ignore")

    max_radius_m: float = 5_000.0
    max_results: int = 10_000
    max_vertices: int = 10_000
    max_body_bytes: int = 1_000_000
