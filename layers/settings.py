"""Where the store lives and which backend holds it."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic_settings import BaseSettings, SettingsConfigDict

from layers.gpkg import GeoPackageStore


class StoreSettings(BaseSettings):
    """Store location: `TWIN_STORE` (a directory for the embedded GeoPackage store)."""

    model_config = SettingsConfigDict(env_prefix="TWIN_", extra="ignore")

    store: Path = Path("twin-data")
    backend: Literal["gpkg"] = "gpkg"


def open_store(settings: StoreSettings, *, create: bool = True) -> GeoPackageStore:
    """The store the settings name (the embedded GeoPackage store for now)."""
    return GeoPackageStore(settings.store, create=create)
