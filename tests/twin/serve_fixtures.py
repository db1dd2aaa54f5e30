"""Fixtures of the HTTP server tests: a store holding real and messy layers, apps, a live server."""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import geopandas as gpd
import httpx
import numpy as np
import pandas as pd
import pytest
import shapely
import uvicorn

from layers.gpkg import GeoPackageStore
from layers.layer import SOURCE, Layer, coerce, empty_attrs
from layers.models import LayerSchema
from layers.schemas import LIGHTS, PIPES, SITES, custom_schema
from layers.settings import StoreSettings
from tests.conftest import shared
from twin.app import create_app
from twin.settings import LimitSettings, ServerSettings

STREETLIGHTS = "cambridge_ma/INFRA_StreetLights.geojson"
SECRET = custom_schema(
    {
        "name": "secret_valves",
        "title": "Secret valves",
        "geometry": "point",
        "classification": "restricted",
        "fields": {"code": "string"},
    }
)


def make_layer(schema: LayerSchema, geometry: Any, ids: Any, **columns: Any) -> Layer:
    """A layer of `schema` with the given lon/lat geometries, ids and attribute columns."""
    geometry = np.asarray(geometry, dtype=object)
    attrs = empty_attrs(schema, len(geometry))
    for name, values in columns.items():
        attrs[name] = coerce(pd.Series(list(values)), schema.field(name).type)
    return Layer(schema, np.asarray(ids, dtype=object), geometry, attrs)


def light_status(n: int) -> list[str | None]:
    """A deterministic, messy live status: faults, lamps off, and unknown (null) ones."""
    i = np.arange(n)
    status = np.where(i % 13 == 0, "fault", np.where(i % 7 == 0, "off", "on")).astype(object)
    status[i % 17 == 5] = None
    return status.tolist()


def streetlights_frame() -> gpd.GeoDataFrame:
    """The real Cambridge street lights, as geopandas reads them (skips when absent)."""
    return gpd.read_file(shared(STREETLIGHTS))


def lights_layer(df: gpd.GeoDataFrame) -> Layer:
    """The street lights as a `lights` layer: PoleID as id, description as lamp type."""
    n = len(df)
    return make_layer(
        LIGHTS,
        df.geometry.to_numpy(),
        df["PoleID"].astype(str).to_numpy(),
        lamp_type=df["Description"].where(df["Description"].notna(), None),
        wattage_w=(df["NumLamps"] * 50.0).where(df["NumLamps"].notna(), None),
        circuit=[f"C{s}" if s == s else None for s in df["Street_ID"]],
        status=light_status(n),
    )


def wuhan_pipes(n: int = 300) -> Layer:
    """Generated pipes in Wuhan (for the CGCS2000 Gauss–Krüger CRS), with messy attributes."""
    rng = np.random.default_rng(7)
    x0 = 114.25 + rng.random(n) * 0.15
    y0 = 30.45 + rng.random(n) * 0.12
    dx, dy = rng.normal(0, 0.002, n), rng.normal(0, 0.002, n)
    coords = np.stack([np.c_[x0, y0], np.c_[x0 + dx / 2, y0 + dy / 3], np.c_[x0 + dx, y0 + dy]], 1)
    geoms = shapely.linestrings(coords)
    nets = np.array(["water", "sewer", "storm", "gas", None], dtype=object)[np.arange(n) % 5]
    diam = np.round(rng.choice([100, 150, 200, 300, 600], n) * 1.0, 1).astype(object)
    diam[np.arange(n) % 11 == 3] = None
    years = (1960 + np.arange(n) % 60).astype(object)
    years[np.arange(n) % 9 == 2] = None
    mats = np.array(["PE", "DI", "CI", "PVC", "pe", None], dtype=object)[np.arange(n) % 6]
    layer = make_layer(
        PIPES,
        geoms,
        [f"wh-{i:04d}" for i in range(n)],
        network=nets,
        diameter_mm=diam,
        install_year=years,
        material=mats,
        status=["in_service"] * (n - 3) + ["abandoned", "planned", None],
    )
    layer.attrs[SOURCE] = coerce(["wuhan-gen"] * n, PIPES.field("material").type)
    return layer


def sites_layer() -> Layer:
    """Four construction sites with start and end dates, one still open-ended."""
    boxes = [shapely.box(114.30 + i * 0.01, 30.50, 114.305 + i * 0.01, 30.505) for i in range(4)]
    return make_layer(
        SITES,
        boxes,
        ["s1", "s2", "s3", "s4"],
        permit_id=["P1", "P2", "P3", "P4"],
        start_date=["2024-01-10", "2024-03-01", "2024-06-15", "2023-11-01"],
        end_date=["2024-02-20", "2024-05-31", None, "2023-12-31"],
    )


def secret_layer() -> Layer:
    """A restricted custom layer that public callers must never see."""
    return make_layer(
        SECRET,
        shapely.points([[-71.11, 42.37], [114.3, 30.5]]),
        ["k1", "k2"],
        code=["A", "B"],
    )


def fill_store(path: Path, layers: list[Layer]) -> Path:
    """A GeoPackage store at `path` holding `layers`."""
    store = GeoPackageStore(path)
    try:
        for layer in layers:
            store.write(layer, source="test", user="tests")
    finally:
        store.close()
    return path


@pytest.fixture(scope="session", name="served_store")
def served_store_fixture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store with the real Cambridge street lights, Wuhan pipes, sites and a secret layer."""
    layers = [lights_layer(streetlights_frame()), wuhan_pipes(), sites_layer(), secret_layer()]
    return fill_store(tmp_path_factory.mktemp("served") / "store", layers)


def app_for(store: Path, **settings: Any):
    """The app over `store` with the given server settings (environment ignored), and no rate
    limit (a test sends every request from one address; the limits' own tests set them)."""
    return create_app(
        ServerSettings(_env_file=None, **settings),  # type: ignore[call-arg]
        StoreSettings(_env_file=None, store=store),  # type: ignore[call-arg]
        limit_settings=NO_LIMITS,
    )


NO_LIMITS = LimitSettings(
    _env_file=None,  # type: ignore[call-arg]
    rate_anonymous=0,
    rate_viewer=0,
    rate_engineer=0,
    rate_admin=0,
)


def wait_healthy(proc: subprocess.Popen, port: int, what: str, timeout_s: float = 60) -> None:
    """Wait until the server process `proc` answers /healthz on `port`; fail with its output if
    it exits first, or after `timeout_s` (a guard against a hang, not a speed test)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
        assert time.monotonic() < deadline, f"{what} did not come up"
        time.sleep(0.2)


def free_port() -> int:
    """A TCP port nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LiveServer:
    """A real uvicorn server in a thread, for real HTTP clients (GDAL, OWSLib)."""

    def __init__(self, app: Any) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        self.server = app.state.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the server did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


@pytest.fixture(scope="session", name="live_server")
def live_server_fixture(served_store: Path) -> Iterator[LiveServer]:
    """The served store behind a real uvicorn server on a free port."""
    with LiveServer(app_for(served_store)) as server:
        yield server


def write_key(store: Path, role: str = "engineer") -> dict[str, str]:
    """Headers carrying a new key of `role` for the store at `store` (changing data needs an
    engineer's or an admin's key)."""
    import uuid

    from layers.keys import KeyRing

    _, secret = KeyRing.beside(store).add(f"tests-{role}-{uuid.uuid4().hex[:8]}", role)
    return {"Authorization": f"Bearer {secret}"}
