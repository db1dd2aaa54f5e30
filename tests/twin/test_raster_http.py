"""Raster collections over HTTP: a real DEM as hillshade and colour-relief PNG map tiles."""

from __future__ import annotations

import io

import morecantile
import numpy as np
import pytest
import rasterio
from fastapi.testclient import TestClient
from PIL import Image
from rasterio.shutil import copy as rio_copy

from layers.gpkg import GeoPackageStore
from layers.store import RasterInfo
from tests.conftest import shared
from tests.twin.serve_fixtures import app_for
from tiles.raster import render_raster_tile

TMS = morecantile.tms.get("WebMercatorQuad")


@pytest.fixture(scope="module")
def dem_store(tmp_path_factory):
    src = shared("dem/pysheds_dem.tif")
    work = tmp_path_factory.mktemp("dem")
    cog = work / "dem_cog.tif"
    rio_copy(str(src), str(cog), driver="COG")
    store = GeoPackageStore(work / "store")
    info = store.put_raster(
        RasterInfo("dem", "Elevation", cog, meta={"attribution": "HydroSHEDS"}),
        user="tests",
        source="pysheds_dem.tif",
    )
    store.close()
    with rasterio.open(src) as ds:
        bounds = tuple(ds.bounds)
    return work / "store", info.path, bounds


def test_dem_collection_and_map_tiles(dem_store):
    path, cog, (left, bottom, right, top) = dem_store
    with TestClient(app_for(path)) as c:
        col = c.get("/collections/dem").json()
        assert col["dataType"] == "map"
        assert col["extent"]["spatial"]["bbox"][0] == pytest.approx([left, bottom, right, top])
        sets = c.get("/collections/dem/map/tiles").json()["tilesets"][0]
        assert set(sets["styles"]) == {"hillshade", "relief"}
        t = TMS.tile((left + right) / 2, (bottom + top) / 2, 11)
        url = f"/collections/dem/map/tiles/WebMercatorQuad/{t.z}/{t.y}/{t.x}"
        for style in ("hillshade", "relief"):
            r = c.get(url, params={"style": style})
            assert r.status_code == 200 and r.headers["content-type"] == "image/png"
            # The server answers exactly what the engine draws for the same tile and style.
            assert r.content == render_raster_tile(cog, t, style)
            img = np.asarray(Image.open(io.BytesIO(r.content)).convert("RGBA"))
            assert img.shape == (256, 256, 4) and img[128, 128, 3] == 255
            again = c.get(
                url, params={"style": style}, headers={"If-None-Match": r.headers["etag"]}
            )
            assert again.status_code == 304
        hill = np.asarray(Image.open(io.BytesIO(c.get(url).content)).convert("RGBA"))
        relief = c.get(url, params={"style": "relief"}).content
        assert not np.array_equal(hill, np.asarray(Image.open(io.BytesIO(relief)).convert("RGBA")))
        far = TMS.tile(100.0, 10.0, 11)
        r = c.get(f"/collections/dem/map/tiles/WebMercatorQuad/11/{far.y}/{far.x}")
        assert r.status_code == 204
        r = c.get(url, params={"style": "psychedelic"})
        assert r.status_code == 400 and "style" in r.json()["description"]
        assert c.get("/collections/dem/map/tiles/WebMercatorQuad/40/0/0").status_code == 404
        assert c.get("/collections/dem/items").status_code == 404
        st = c.get("/style.json").json()
        assert st["sources"]["raster-dem"]["tiles"][0].endswith("?style=hillshade")
