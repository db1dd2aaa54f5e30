"""The web map's build step (`twin.webmap.copy_web_map`): the map's own files and MapLibre's go
into the build, MapLibre from `web/node_modules` or fetched by `npm ci` when it is missing."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from twin.webmap import (
    FONT_DIST,
    FONT_FILES,
    MAPLIBRE_DIST,
    MAPLIBRE_FILES,
    WebMapBuildError,
    copy_web_map,
    default_web_dir,
)

ROOT = Path(__file__).resolve().parents[2]


def web_sources(web: Path) -> Path:
    web.mkdir(parents=True)
    for name in ("index.html", "map.js", "map.css", "package.json", "package-lock.json"):
        (web / name).write_text(name)
    return web


PACKAGED = [f"{MAPLIBRE_DIST}/{n}" for n in MAPLIBRE_FILES] + [
    f"{FONT_DIST}/{n}" for n in FONT_FILES
]
"""What the build takes from `node_modules`: MapLibre's files and the label font."""


def fake_npm(bin_dir: Path) -> str:
    """An `npm` whose `ci` installs fake MapLibre and font packages in the current folder."""
    bin_dir.mkdir()
    script = bin_dir / "npm"
    lines = [f'mkdir -p "$(dirname {f})"; echo "npm $(basename {f})" > {f}' for f in PACKAGED]
    script.write_text('#!/bin/sh\n[ "$1" = ci ] || exit 3\n' + "\n".join(lines) + "\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return str(script)


def test_the_checkout_serves_its_own_web_folder():
    assert default_web_dir() == ROOT / "web"


def test_copies_the_maps_files_and_maplibres_and_nothing_of_the_build(tmp_path):
    web = web_sources(tmp_path / "web")
    dist = web / MAPLIBRE_DIST
    dist.mkdir(parents=True)
    for name in (*MAPLIBRE_FILES, "maplibre-gl-dev.js", "maplibre-gl.js.map"):
        (dist / name).write_text(f"dist {name}")
    for name in (*FONT_FILES, "ttf/DejaVuSerif.ttf"):
        (web / FONT_DIST / name).parent.mkdir(parents=True, exist_ok=True)
        (web / FONT_DIST / name).write_text(f"font {name}")
    (web / "node_modules" / ".package-lock.json").write_text("{}")
    out = tmp_path / "build" / "twin" / "web"
    written = copy_web_map(web, out, npm="no-npm-needed")
    got = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert got == sorted(["index.html", "map.css", "map.js", *PACKAGED])
    assert sorted(written) == sorted(out / g for g in got)
    assert (out / MAPLIBRE_DIST / "maplibre-gl.js").read_text() == "dist maplibre-gl.js"


def test_runs_npm_ci_when_maplibre_is_not_installed(tmp_path):
    web = web_sources(tmp_path / "web")
    out = tmp_path / "out"
    copy_web_map(web, out, npm=fake_npm(tmp_path / "bin"))
    assert (web / MAPLIBRE_DIST / "maplibre-gl.js").is_file()  # installed where npm ci puts it
    assert (out / MAPLIBRE_DIST / "maplibre-gl.js").read_text() == "npm maplibre-gl.js\n"


def test_without_maplibre_or_npm_the_build_says_why(tmp_path):
    web = web_sources(tmp_path / "web")
    with pytest.raises(WebMapBuildError, match="npm is not on PATH"):
        copy_web_map(web, tmp_path / "out", npm=os.fspath(tmp_path / "no-such-npm"))
    assert not (tmp_path / "out").exists()
