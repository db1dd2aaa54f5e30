"""The installed package is the whole product: the project's sdist holds what a wheel needs, and
the wheel built from it, installed in a fresh venv, runs `twin demo` and serves the web map (its
own files and MapLibre's, the same bytes as the checkout's) from outside any checkout."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
from pathlib import Path

import httpx
import pytest

from tests.conftest import needs
from tests.twin.serve_fixtures import free_port, wait_healthy
from twin.webmap import FONT_DIST, MAPLIBRE_DIST

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
WEB = ROOT / "web"
SOURCES = ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md")
PACKAGES = ("twin", "layers", "tiles", "importers")


def run(*args: str | Path, cwd: Path, env: dict[str, str] | None = None) -> str:
    """Run a command; fail the test with its output when it fails."""
    done = subprocess.run(
        [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, f"{args}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def source_tree(dst: Path) -> Path:
    """A copy of the project's sources (the working tree, without builds, caches or the venv)."""
    dst.mkdir()
    for name in SOURCES:
        shutil.copy2(ROOT / name, dst / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "node_modules")
    for name in (*PACKAGES, "web"):
        shutil.copytree(ROOT / name, dst / name, ignore=ignore)
    return dst


def clean_env() -> dict[str, str]:
    """This environment without the settings that would point the server at the checkout."""
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("TWIN_") and k not in ("PYTHONPATH", "VIRTUAL_ENV")
    }


def test_the_installed_wheel_serves_the_web_map(tmp_path):
    needs((WEB / MAPLIBRE_DIST / "maplibre-gl.js").is_file(), "the web map's npm packages")
    needs(importlib.util.find_spec("build") is not None, "the `build` package")
    py = sys.executable

    # The sdist holds the web map's sources, not node_modules.
    src = source_tree(tmp_path / "src")
    run(py, "-m", "build", "--sdist", "--outdir", tmp_path / "sdist", src, cwd=tmp_path)
    (sdist,) = (tmp_path / "sdist").glob("twin-*.tar.gz")
    with tarfile.open(sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
        tar.extractall(tmp_path / "unpacked", filter="data")
    assert {"setup.py", "web/index.html", "web/map.js", "web/package-lock.json"} <= names
    assert not any(n.startswith("web/node_modules") for n in names)

    # The wheel from the unpacked sdist; MapLibre from the checkout's npm install (the build
    # runs `npm ci` when it is absent: tests/twin/test_webmap.py).
    (unpacked,) = (tmp_path / "unpacked").iterdir()
    (unpacked / "web" / "node_modules").symlink_to(WEB / "node_modules")
    run(py, "-m", "pip", "wheel", "--no-deps", "-q", "-w", tmp_path / "dist", unpacked,
        cwd=tmp_path)  # fmt: skip
    (wheel,) = (tmp_path / "dist").glob("twin-*.whl")

    # A fresh venv with only the wheel installed; its dependencies are the project venv's
    # (a .pth line adds that site-packages after the new venv's own, where twin is).
    venv = tmp_path / "venv"
    run(py, "-m", "venv", "--without-pip", venv, cwd=tmp_path)
    vpy = venv / "bin" / "python"
    run(py, "-m", "pip", "--python", vpy, "install", "-q", "--no-deps", "--no-index", wheel,
        cwd=tmp_path)  # fmt: skip
    purelib = run(vpy, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])",
                  cwd=tmp_path).strip()  # fmt: skip
    deps = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (Path(purelib) / "_project_deps.pth").write_text("\n".join(sorted(deps)) + "\n")

    outside = tmp_path / "elsewhere"
    outside.mkdir()
    env = clean_env()
    where = run(vpy, "-c", "import twin; print(twin.__file__)", cwd=outside, env=env)
    assert Path(where.strip()).is_relative_to(venv)

    twin = venv / "bin" / "twin"
    run(twin, "demo", "--no-serve", "--store", outside / "store", cwd=outside, env=env)
    port = free_port()
    proc = subprocess.Popen(
        [twin, "serve", "--store", outside / "store", "--port", str(port)],
        cwd=outside,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_healthy(proc, port, "the installed twin serve")
        base = f"http://127.0.0.1:{port}"
        for path, file in [
            ("/web/", WEB / "index.html"),
            ("/web/map.js", WEB / "map.js"),
            ("/web/map.css", WEB / "map.css"),
            ("/web/vendor/maplibre-gl/maplibre-gl.js", WEB / MAPLIBRE_DIST / "maplibre-gl.js"),
            ("/web/vendor/maplibre-gl/maplibre-gl.css", WEB / MAPLIBRE_DIST / "maplibre-gl.css"),
        ]:
            res = httpx.get(base + path)
            assert res.status_code == 200, path
            assert res.content == file.read_bytes(), path
        for path in ("/web/package.json", "/web/node_modules/maplibre-gl/dist/maplibre-gl.js"):
            assert httpx.get(base + path).status_code == 404, path
        # The label font travels in the wheel: glyphs are drawn from the installed copy.
        installed = Path(where.strip()).parent / "web" / FONT_DIST / "ttf" / "DejaVuSans.ttf"
        assert installed.read_bytes() == (WEB / FONT_DIST / "ttf" / "DejaVuSans.ttf").read_bytes()
        latin = httpx.get(base + "/fonts/Noto%20Sans%20Regular/0-255.pbf")
        assert latin.status_code == 200 and len(latin.content) > 10_000
        assert (
            httpx.get(base + "/collections/pipes/items", params={"limit": 1}).json()[
                "numberMatched"
            ]
            > 0
        )
    finally:
        proc.terminate()
        proc.wait(timeout=30)
