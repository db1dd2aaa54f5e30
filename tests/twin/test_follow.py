"""Every server process follows the store's change log: `twin import` of a corrected file in
another process, while `twin serve --workers 2` runs, is served by both workers within 2 s,
without a restart; the tiles the change touches are made anew, a tile far away keeps its ETag
and stays cached."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import morecantile
import pytest

from tests.twin.worker_fixtures import children, connect_to, get, lookups, serving
from tiles.settings import TileSettings

TMS = morecantile.tms.get("WebMercatorQuad")
Z = 16
# Lights along a street in Jiangxia, Wuhan: one block near, one ~4 km away.
NEAR = [(114.3000 + i * 0.0002, 30.3500) for i in range(10)]
FAR = [(114.3400 + i * 0.0002, 30.3700) for i in range(10)]
FOLLOW_WITHIN_S = 2.0
REFRESH_S = TileSettings().refresh_s


def lights_file(path: Path, rows: list[tuple[str, tuple[float, float], str]]) -> Path:
    features = [
        {
            "type": "Feature",
            "geometry": {"type": "Point", "coordinates": list(xy)},
            "properties": {"PoleID": fid, "status": status, "lamp_type": "LED"},
        }
        for fid, xy, status in rows
    ]
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return path


def twin_import(store: Path, path: Path) -> None:
    cmd = [sys.executable, "-m", "twin.cli", "import", "lights", str(path)]
    done = subprocess.run(
        [*cmd, "--store", str(store), "--source", "survey"], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr


def tile_path(lon: float, lat: float) -> str:
    return tile_path_at((lon, lat), Z)


def tile_path_at(xy: tuple[float, float], z: int) -> str:
    t = TMS.tile(xy[0], xy[1], z)
    return f"/collections/lights/tiles/WebMercatorQuad/{z}/{t.y}/{t.x}"


def etag(conn, path: str) -> str:
    conn.request("GET", path, headers={"Accept-Encoding": "identity"})
    r = conn.getresponse()
    r.read()
    assert r.status == 200, (path, r.status)
    return r.getheader("ETag")


def item(conn, fid: str) -> dict | None:
    """Feature `fid` of the file imported as source `survey` (its id in the store)."""
    status, body = get(conn, f"/collections/lights/items/survey:{fid}")
    return json.loads(body) if status == 200 else None


@pytest.fixture(name="store")
def store_fixture(tmp_path: Path) -> Path:
    rows = [(f"N{i}", xy, "on") for i, xy in enumerate(NEAR)]
    rows += [(f"F{i}", xy, "on") for i, xy in enumerate(FAR)]
    store = tmp_path / "store"
    twin_import(store, lights_file(tmp_path / "survey.geojson", rows))
    return store


def test_an_import_in_another_process_reaches_every_worker(tmp_path: Path, store: Path) -> None:
    with serving(store, 2, tmp_path / "serve.log") as served:
        workers = children(served.proc.pid)
        assert len(workers) == 2
        conns = [connect_to(served.port, pid, workers) for pid in workers]
        near, far = tile_path(*NEAR[3]), tile_path(*FAR[3])
        assert near != far
        before = [(etag(c, near), etag(c, far)) for c in conns]
        for c in conns:
            assert item(c, "N3")["properties"]["status"] == "on"
            assert item(c, "N99") is None
        # A corrected file: N3 has failed and moved 10 m east, N99 is new.
        moved = (NEAR[3][0] + 0.0001, NEAR[3][1])
        fix = lights_file(
            tmp_path / "fix.geojson", [("N3", moved, "fault"), ("N99", NEAR[7], "on")]
        )
        misses = [lookups(c).get("miss", 0) + lookups(c).get("redrawn", 0) for c in conns]
        twin_import(store, fix)
        imported = time.monotonic()
        seen: dict[int, float] = {}
        while len(seen) < len(conns) and time.monotonic() - imported < 10:
            for i, c in enumerate(conns):
                f = item(c, "N99")
                if (
                    i not in seen
                    and f is not None
                    and item(c, "N3")["properties"]["status"] == "fault"
                ):
                    seen[i] = time.monotonic() - imported
            time.sleep(0.02)
        assert sorted(seen) == [0, 1], f"served by workers {sorted(seen)} only"
        assert max(seen.values()) < FOLLOW_WITHIN_S, seen
        for c, (near_before, far_before), drawn in zip(conns, before, misses, strict=True):
            assert item(c, "N3")["geometry"]["coordinates"] == pytest.approx(list(moved))
            assert item(c, "N99")["geometry"]["coordinates"] == pytest.approx(list(NEAR[7]))
            # The tile the change touches, made anew: at once, or (served meanwhile) within
            # TWIN_TILES_REFRESH_S of when it was drawn last.
            deadline = time.monotonic() + REFRESH_S + 1.0
            while etag(c, near) == near_before and time.monotonic() < deadline:
                time.sleep(0.05)
            assert etag(c, near) != near_before
            assert etag(c, far) == far_before  # a tile far away: the same, from the cache
            # Only the near tile was drawn again on each worker (the far one was a hit).
            seen_now = lookups(c)
            assert seen_now.get("miss", 0) + seen_now.get("redrawn", 0) - drawn <= 1
            _, body = get(c, "/metrics")
            assert b"twin_changes_applied_total 2.0" in body
        # After the change the workers' caches agree on its generation (the store's revision),
        # so a tile one worker renders is still handed to the other.
        fresh = tile_path_at(NEAR[5], Z + 1)
        first, second = conns
        before = lookups(second)
        assert etag(first, fresh)
        time.sleep(1.0)
        assert etag(second, fresh)
        after = lookups(second)
        assert after.get("miss", 0) == before.get("miss", 0)
        assert after["hit"] == before.get("hit", 0) + 1
        assert served.proc.poll() is None
