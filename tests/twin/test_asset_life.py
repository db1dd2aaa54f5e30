"""`datetime` on asset layers matches each asset's life (installed → removed), as OGC API
Features defines it for a feature's temporal properties, and the collection's temporal extent
says the same."""

from __future__ import annotations

import numpy as np
import pandas as pd
import shapely
from fastapi.testclient import TestClient

from layers.layer import UPDATED
from layers.schemas import PIPES, custom_schema
from tests.twin.query_fixtures import (  # noqa: F401  (fixtures)
    demo_client_fixture,
    demo_pipes_fixture,
    demo_store_fixture,
    make_layer,
)
from twin.select import Selection, life, parse_datetime, select


def _matched(client: TestClient, collection: str, when: str) -> tuple[int, set[str]]:
    r = client.get(f"/collections/{collection}/items", params={"datetime": when, "limit": 10000})
    assert r.status_code == 200, r.text
    body = r.json()
    return body["numberMatched"], {f["id"] for f in body["features"]}


def test_demo_pipes_laid_in_1996_exist_in_2020(demo_client, demo_pipes) -> None:
    year = demo_pipes.attrs["install_year"]
    laid_1996 = set(demo_pipes.ids[np.asarray((year == 1996).fillna(False), dtype=bool)].tolist())
    assert laid_1996
    n, got = _matched(demo_client, "pipes", "2020-01-01T00:00:00Z")
    want = set(demo_pipes.ids[np.asarray((year <= 2020).fillna(False), dtype=bool)].tolist())
    assert got == want and n == len(want) and laid_1996 <= got
    # Not yet laid in 1995; laid during 1996, so there in mid-1996 and in any interval over it.
    assert not laid_1996 & _matched(demo_client, "pipes", "1995-12-31T23:59:59Z")[1]
    assert laid_1996 <= _matched(demo_client, "pipes", "1996-06-01")[1]
    assert laid_1996 <= _matched(demo_client, "pipes", "1990-01-01/1996-01-01")[1]
    assert not laid_1996 & _matched(demo_client, "pipes", "../1995-12-31")[1]
    later = set(demo_pipes.ids[np.asarray((year > 2020).fillna(False), dtype=bool)].tolist())
    assert later and not later & got


def test_demo_collection_temporal_extent_is_the_assets_lives(demo_client, demo_pipes) -> None:
    body = demo_client.get("/collections/pipes").json()
    first = int(demo_pipes.attrs["install_year"].min())
    assert body["extent"]["temporal"]["interval"] == [[f"{first}-01-01T00:00:00Z", None]]


def test_an_assets_life_ends_at_its_removal() -> None:
    geoms = [shapely.LineString([(0, 0), (0.001, 0)])] * 4
    layer = make_layer(
        PIPES,
        geoms,
        ["live", "removed", "abandoned", "unknown"],
        install_year=[1996, 1980, 1990, None],
        status=["in_service", "removed", "abandoned", "in_service"],
    )
    changed = pd.Timestamp("2015-03-01T00:00:00Z")
    layer.attrs[UPDATED] = pd.Series([changed] * 4, dtype="datetime64[ms, UTC]")

    def at(when: str) -> set[str]:
        return set(layer.ids[select(layer, Selection(interval=parse_datetime(when)))].tolist())

    # Removed or abandoned with no date: ended before the twin recorded it so (its last change).
    assert at("2020-01-01T00:00:00Z") == {"live"}
    assert at("2000-01-01T00:00:00Z") == {"live", "removed", "abandoned"}
    assert at("1985-06-01") == {"removed"}
    assert life(layer).kind == "life"
    # With a removal year in the schema (a custom layer), the life ends with that year.
    schema = custom_schema(
        {
            "name": "mains",
            "geometry": "line",
            "fields": {"install_year": "integer", "removed_year": "integer"},
        }
    )
    mains = make_layer(schema, geoms[:2], ["a", "b"], install_year=[1970, 1970])
    mains.attrs["removed_year"] = pd.array([1999, None], dtype="Int64")
    rows = select(mains, Selection(interval=parse_datetime("2005-01-01T00:00:00Z")))
    assert mains.ids[rows].tolist() == ["b"]
    rows = select(mains, Selection(interval=parse_datetime("1999-12-31T12:00:00Z")))
    assert mains.ids[rows].tolist() == ["a", "b"]
