"""Shared fixtures: the real datasets in ../shared/data (skipped cleanly when absent), stores."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("TWIN_SHARED_DATA", ROOT.parent / "shared" / "data"))


def shared(relative: str) -> Path:
    """Path of a file in ../shared/data; skips the test when it is not there."""
    path = SHARED_DATA / relative
    if not path.exists():
        pytest.skip(f"shared dataset {relative} is not available")
    return path


def needs(present: bool, what: str) -> None:
    """Skip the test when a tool it drives (`what`) is not installed, unless the tools must be
    there: `.ci/run` sets TWIN_TEST_REQUIRE_TOOLS=1 after installing them, so that a broken
    install fails instead of passing as skips."""
    if present:
        return
    if os.environ.get("TWIN_TEST_REQUIRE_TOOLS") == "1":
        pytest.fail(f"{what} is not installed (TWIN_TEST_REQUIRE_TOOLS=1)")
    pytest.skip(f"{what} is not installed (.ci/setup --test installs it)")


@pytest.fixture
def store_dir(tmp_path: Path) -> Path:
    """A fresh, empty store directory."""
    return tmp_path / "store"


@pytest.fixture
def store(store_dir: Path):
    """A fresh embedded GeoPackage store."""
    from layers.gpkg import GeoPackageStore

    s = GeoPackageStore(store_dir)
    yield s
    s.close()
