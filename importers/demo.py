"""`twin demo`: a generated district of Jiangxia, Wuhan, imported through the real importers.

`build_demo` generates the city for a size and seed (`demo_city`, `demo_assets`), writes it as
ordinary files (`demo_files`: streets as OSM XML, assets as GeoPackages in EPSG:4547, the
terrain as a GeoTIFF) under `<store>/demo-source/`, then imports each file the way a user
would: `import_osm` for the streets (roads, bridges and the road graph), `import_file` for
every asset GeoPackage, `import_raster` for the DEM. No network is needed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from importers.demo_assets import build_assets
from importers.demo_city import SIZES, build_city
from importers.demo_files import write_all
from importers.errors import InvalidOption
from importers.options import ImportOptions
from importers.osm import OsmReport, import_osm
from importers.pipeline import import_file
from importers.raster import RasterReport, import_raster
from importers.report import ImportReport
from layers.models import Access
from layers.store import Store

SOURCE_DIR = "demo-source"
"""Where, inside the store directory, the demo's source files are written."""
DEM = "dem"
WATER = "water"
ATTRIBUTION = "Generated demo data (twin), not a survey of Jiangxia"


@dataclass
class DemoReport:
    """What the demo build wrote and imported."""

    size: str
    seed: int
    directory: Path
    files: dict[str, Path]
    osm: OsmReport | None = None
    layers: dict[str, ImportReport] = field(default_factory=dict)
    dem: RasterReport | None = None
    seconds: dict[str, float] = field(default_factory=dict)

    def counts(self) -> dict[str, int]:
        """Features imported per layer."""
        out = {k: r.imported for k, r in (self.osm.layers.items() if self.osm else [])}
        out.update({k: r.imported for k, r in self.layers.items()})
        return out

    def text(self) -> str:
        """A short summary for the command line."""
        lines = [f"demo city: Jiangxia district ({self.size}, seed {self.seed})"]
        lines.append(f"  source files in {self.directory}")
        for name, n in self.counts().items():
            lines.append(f"  {name:<8} {n:>9,} features")
        if self.dem is not None:
            lines.append(
                f"  {DEM:<8} {self.dem.width} x {self.dem.height} cells, "
                f"{self.dem.minimum:.1f} .. {self.dem.maximum:.1f} m"
            )
        lines.append("  took " + ", ".join(f"{k} {v:.1f} s" for k, v in self.seconds.items()))
        return "\n".join(lines)


def is_empty(store: Store) -> bool:
    """Whether a store holds no collection at all."""
    return not store.layers(Access.RESTRICTED) and not store.rasters(Access.RESTRICTED)


def write_demo_files(directory: Path, size: str = "small", seed: int = 1) -> dict[str, Path]:
    """Generate the city and write its source files; the same size and seed give the same bytes."""
    if size not in SIZES:
        raise InvalidOption(f"unknown demo size {size!r}: use small, city or large")
    city = build_city(size, seed)
    return write_all(city, build_assets(city), directory)


def build_demo(
    store: Store,
    *,
    size: str = "small",
    seed: int = 1,
    user: str = "demo",
    directory: Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> DemoReport:
    """Generate the demo city's files and import them into `store` through the importers."""
    say = progress or (lambda _msg: None)
    directory = directory or Path(store.location) / SOURCE_DIR
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    say(f"generating the {size} demo city (seed {seed}) into {directory}")
    files = write_demo_files(directory, size, seed)
    seconds["generate"] = time.perf_counter() - t0
    report = DemoReport(size=size, seed=seed, directory=directory, files=files)
    t0 = time.perf_counter()
    say("importing streets.osm (roads, bridges, road graph)")
    report.osm = import_osm(
        store,
        files["streets"],
        user=user,
        source="jiangxia_streets",
        meta={"attribution": ATTRIBUTION},
    )
    for name in ("pipes", "valves", "lights", "parks", "grids", "sites", WATER):
        say(f"importing {files[name].name}")
        report.layers[name] = import_file(store, name, files[name], ImportOptions(), user=user)
    say("importing dem.tif")
    report.dem = import_raster(
        store, DEM, files["dem"], user=user, title="Terrain (DEM)", attribution=ATTRIBUTION
    )
    seconds["import"] = time.perf_counter() - t0
    report.seconds = seconds
    return report
