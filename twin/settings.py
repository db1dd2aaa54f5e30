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


class QuerySettings(BaseSettings):
    """Limits of the spatial query API; each answered 4xx with what was too big."""

    model_config = SettingsConfigDict(env_prefix="TWIN_QUERY_", extra="ignore")

    max_radius_m: float = 5_000.0
    max_results: int = 10_000
    max_vertices: int = 10_000
    max_body_bytes: int = 1_000_000
