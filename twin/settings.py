"""Settings of the server and its queries: one class per concern, env prefix `TWIN_`."""

from __future__ import annotations

from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from layers.models import Access
from twin.webmap import default_web_dir


class ServerSettings(BaseSettings):
    """The HTTP server: address, default caller scope, paging limits."""

    model_config = SettingsConfigDict(env_prefix="TWIN_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = 8000
    anonymous_access: str = "public"
    """What a caller without a key may see: public (the default), internal or restricted
    (everything: a closed deployment with no keys)."""
    policy: Path | None = None
    """The policy file (TOML) classifying layers, fields, features and areas; reloaded when it
    changes. None: layers as the store classifies them, every field shown."""
    policy_check_s: float = 1.0
    """How often a server looks whether the policy file changed, seconds."""
    keys_file: Path | None = None
    """The key ring and audit log (SQLite); None: `access.sqlite` in the store's directory."""
    items_default_limit: int = 100
    items_max_limit: int = 10_000
    public_url: str = ""
    """Base URL clients reach the server at (behind a proxy); empty: taken from each request."""
    cors_origins: list[str] = ["*"]
    """Origins (`https://map.city.gov`) whose pages may read the API from a browser; `*`: any
    (credentials are never allowed, so a page must send a key itself); empty: none."""
    gzip_level: int = 4
    """gzip level of JSON answers (tiles are compressed once by the tile cache)."""
    loop: Literal["asyncio", "uvloop"] = "asyncio"
    """The event loop of `twin serve`. asyncio answers connections in turn; uvloop answers
    more per second but, when the server is saturated, leaves some connections waiting for
    seconds (a health check on a new connection: 7.7 s, against 0.2 s with asyncio)."""
    max_readings: int = 10_000
    """Most readings in one `POST /twin/observations` (its body may hold 300 bytes per
    reading)."""
    max_feature_bytes: int = 2**20
    """Largest body of a feature edit (POST, PUT, PATCH), bytes (parsing JSON holds the
    interpreter: a megabyte takes ~30 ms)."""
    max_feature_vertices: int = 25_000
    """Most vertices of an edited feature's geometry."""
    max_streams: int = 256
    """Most `/events` streams one worker holds open; more are answered 503."""
    max_lag: int = 5_000
    """Most change-log entries a worker may be behind the store before it takes another batch
    of readings: a batch waits (up to its deadline) until the worker has applied what came
    before, so readings land no faster than every worker serves them."""
    follow_interval_s: float = 0.2
    """How often each server process looks for changes in the store's change log (an import
    by another process, an edit through another worker) and applies them; 0: never (a
    snapshot)."""
    extra_crs: list[int] = []
    """EPSG codes offered besides CRS84, 4326, 4490, 3857 and the CGCS2000 GK zones."""
    web_dir: Path = Field(default_factory=default_web_dir)
    """The planners' web map: the checkout's `web/` (MapLibre installed there by `npm ci`), else
    the copy the installed package carries."""

    @field_validator("anonymous_access")
    @classmethod
    def _known_scope(cls, value: str) -> str:
        return Access.parse(value).label

    @field_validator("cors_origins")
    @classmethod
    def _origins(cls, value: list[str]) -> list[str]:
        # A browser's Origin is scheme://host[:port] and nothing more: one written with a
        # path or a trailing slash would never match.
        out = []
        for origin in value:
            origin = origin.strip().rstrip("/")
            parts = urlsplit(origin)
            if origin != "*" and (
                parts.scheme not in ("http", "https") or not parts.netloc or parts.path
            ):
                raise ValueError(
                    f"CORS origin {origin!r} is not scheme://host[:port] (or *), "
                    "e.g. https://map.city.gov"
                )
            out.append(origin)
        return out


class GuardSettings(BaseSettings):
    """What one request may cost a worker, and how many a worker holds at once. Each limit is
    checked before the expensive part; over it the request is answered 4xx naming the limit
    (503 with `Retry-After` when the worker is full), within milliseconds."""

    model_config = SettingsConfigDict(env_prefix="TWIN_", extra="ignore")

    request_timeout_s: float = 10.0
    """Wall-clock budget of one request, seconds: past it the work is stopped and the request
    answered 400 `TimeLimitExceeded`."""
    max_in_flight: int = 16
    """Requests one worker works on at once; more are answered 503 with `Retry-After` at once
    (`/healthz`, `/metrics` and cached tiles are always answered)."""
    work_threads: int = 4
    """Threads one worker runs request work in at once (queries, filters, tile rendering);
    admitted requests beyond them wait their turn without holding the GIL. GEOS and numpy
    release it, Python does not: more threads than this only take it from the event loop,
    which answers cached tiles and /healthz."""
    retry_after_s: int = 1
    """The `Retry-After` of a 503 answered when the worker is full, seconds."""
    filter_max_depth: int = 32
    """Deepest nesting of a CQL2 filter (parentheses, NOTs, JSON levels)."""
    filter_max_nodes: int = 5_000
    """Most terms (operators, properties, values) a CQL2 filter may hold."""
    filter_max_wildcards: int = 32
    """Most `%` and `_` wildcards of one LIKE pattern."""
    max_answer_bytes: int = 256 * 2**20
    """Largest JSON answer, bytes: a bigger one is refused (ask for fewer features)."""


class LimitSettings(BaseSettings):
    """How many requests a caller may make (`twin.limits`): a token bucket per caller, per
    worker process, refilled at `rate_*` requests a second up to `burst_*` held; over it a
    request is answered 429 with `Retry-After`. Anonymous callers have a bucket per client
    address (per /64 for IPv6), a key one of its own. A rate of 0 is no limit. The defaults
    never trouble a map session (a map pulls ~50 tiles at once)."""

    model_config = SettingsConfigDict(env_prefix="TWIN_", extra="ignore")

    rate_anonymous: float = Field(default=50.0, ge=0)
    """Requests a second a caller without a key may make, per client address; 0: no limit."""
    burst_anonymous: int = Field(default=200, ge=1)
    """Requests a caller without a key may make at once before `rate_anonymous` holds."""
    rate_viewer: float = Field(default=100.0, ge=0)
    """Requests a second of a viewer's key; 0: no limit."""
    burst_viewer: int = Field(default=400, ge=1)
    """Requests a viewer's key may make at once."""
    rate_engineer: float = Field(default=200.0, ge=0)
    """Requests a second of an engineer's key; 0: no limit."""
    burst_engineer: int = Field(default=800, ge=1)
    """Requests an engineer's key may make at once."""
    rate_admin: float = Field(default=0.0, ge=0)
    """Requests a second of an admin's key; 0: no limit."""
    burst_admin: int = Field(default=800, ge=1)
    """Requests an admin's key may make at once (when `rate_admin` is not 0)."""
    rate_max_buckets: int = Field(default=65_536, ge=1)
    """Most callers a worker keeps a bucket for (~300 bytes each); a bucket idle long enough
    to be full again is dropped, the oldest first when there are more than this."""


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
    max_candidates: int = 2_000_000
    """Most features one query may examine (summed over the layers searched)."""
    max_work: int = 20_000_000
    """Most shape-distance work one query may do: candidates examined times the vertices of
    the query shape (after merging points that lie closer than a thousandth of the buffer)."""
    trace_snap_m: float = 50.0
    """A trace from a point starts on the nearest gravity pipe within this distance."""
