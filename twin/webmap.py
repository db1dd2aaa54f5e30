"""The planners' web map as files: which files it is made of, where they are (a checkout's
`web/`, MapLibre installed there by `npm ci`, or the copy the wheel carries in `twin/web/`), and
the build step that makes that copy.

Standard library only: the build (`setup.py`) loads this file before anything is installed.
"""

from __future__ import annotations

import shutil
import subprocess
from importlib import resources
from pathlib import Path

MAPLIBRE_DIST = "node_modules/maplibre-gl/dist"
"""Where `npm ci` puts MapLibre's distribution, relative to the web map's folder; the installed
copy keeps the same layout."""

MAPLIBRE_URL = "/web/vendor/maplibre-gl"
"""Where the server serves `MAPLIBRE_DIST` (the web map and the HTML pages load it there)."""

PAGE_MAP_URL = "/web/page.js"
"""The script drawing the small map of the HTML pages (`twin.routes.html`), one of the map's
files: a file, so that the pages need no inline script."""

MAPLIBRE_FILES = ("maplibre-gl.js", "maplibre-gl.css", "LICENSE.txt")
"""MapLibre's files the map loads (see `web/index.html`), and its licence."""

FONT_DIST = "node_modules/dejavu-fonts-ttf"
"""Where `npm ci` puts the label font the server draws glyphs from (`twin.glyphs`), so that
labels never depend on the fonts a machine happens to have."""

FONT_FILES = ("ttf/DejaVuSans.ttf", "LICENSE")
"""The font's files the wheel carries (relative to `FONT_DIST`), and its licence."""

MAP_SUFFIXES = frozenset({".html", ".js", ".css", ".svg", ".png", ".ico", ".woff2"})
"""Kinds of file the web map is made of; `package.json`, lock files and `node_modules/` are
the build's, not the map's, and are never served."""


class WebMapBuildError(Exception):
    """The web map cannot be put into a build: MapLibre (or the label font) is not installed
    and npm cannot fetch it."""


def map_files(web_dir: Path) -> list[Path]:
    """The map's own files: those directly in `web_dir` whose suffix is one of `MAP_SUFFIXES`."""
    return sorted(p for p in web_dir.iterdir() if p.is_file() and p.suffix in MAP_SUFFIXES)


def default_web_dir() -> Path:
    """The checkout's `web/` when twin runs from a checkout, else the copy inside the installed
    package (`twin/web/`)."""
    checkout = Path(__file__).resolve().parents[1]
    if (checkout / "pyproject.toml").is_file() and (checkout / "web" / "index.html").is_file():
        return checkout / "web"
    return Path(str(resources.files("twin") / "web"))


def copy_web_map(web_dir: Path, target: Path, *, npm: str = "npm") -> list[Path]:
    """Copy the map's own files and the MapLibre files it loads from `web_dir` into `target`
    (same layout), running `npm ci` in `web_dir` first when MapLibre is not installed there;
    returns the files written. Raises `WebMapBuildError` when MapLibre cannot be had."""
    needed = [MAPLIBRE_DIST + "/" + name for name in MAPLIBRE_FILES]
    needed += [FONT_DIST + "/" + name for name in FONT_FILES]
    if not all((web_dir / name).is_file() for name in needed):
        _npm_ci(web_dir, npm)
    missing = [name for name in needed if not (web_dir / name).is_file()]
    if missing:
        raise WebMapBuildError(f"`npm ci` in {web_dir} did not install {', '.join(missing)}")
    pairs = [(p, target / p.name) for p in map_files(web_dir)]
    pairs += [(web_dir / name, target / name) for name in needed]
    for source, copy in pairs:
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, copy)
    return [copy for _, copy in pairs]


def _npm_ci(web_dir: Path, npm: str) -> None:
    """Install the map's npm packages (MapLibre) as `package-lock.json` pins them."""
    exe = shutil.which(npm)
    if exe is None:
        raise WebMapBuildError(
            f"MapLibre is not installed in {web_dir / 'node_modules'} and npm is not on PATH: "
            "install Node.js and npm (the build fetches MapLibre from the npm registry)"
        )
    done = subprocess.run(
        [exe, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
        cwd=web_dir,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise WebMapBuildError(f"`npm ci` in {web_dir} failed: {done.stderr.strip()[-2000:]}")
