"""Build step of the wheel: it carries the planners' web map (its own files and the MapLibre
files it loads, from `web/node_modules` or fetched from npm by `npm ci` now), so that an
installed twin serves `/web/` without a checkout. Everything else is in pyproject.toml."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent


def _webmap() -> ModuleType:
    """`twin/webmap.py`, loaded by path: the package's dependencies are not installed yet."""
    spec = importlib.util.spec_from_file_location("_twin_webmap", ROOT / "twin" / "webmap.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class BuildPyWithWebMap(build_py):
    """`build_py` that also copies the web map into the build's `twin/web/` (package data).
    An editable install serves the checkout's `web/` instead, so it copies nothing."""

    def run(self) -> None:
        """Build the Python packages, then the web map beside them."""
        super().run()
        if getattr(self, "editable_mode", False):
            return
        webmap = _webmap()
        try:
            webmap.copy_web_map(ROOT / "web", Path(self.build_lib) / "twin" / "web")
        except webmap.WebMapBuildError as exc:
            raise SystemExit(f"error: the wheel needs the web map: {exc}") from None


if __name__ == "__main__":
    setup(cmdclass={"build_py": BuildPyWithWebMap})
