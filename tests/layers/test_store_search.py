"""Search in the stores: each backend's `Store.search` answers what the ranking of
`layers.search` answers over the same layers loaded whole (the embedded way), after writes,
readings, deletions, a replace, a column turned to text and with fields left out; the hits
worked out by hand where they are short. The PostGIS store keeps exactly the keys
`layers.search.entries` makes of its stored rows, and a database of schema version 1 gets
them on `twin migrate`."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import shapely

from layers.errors import StoreError
from layers.layer import Layer
from layers.models import Field, FieldType, GeometryFamily, LayerSchema, Reading
from layers.search import Hit, entries, normalise, search_layers, searched_fields, words_of
from tests.layers.test_store_contract import ALL, T0, lamps, layer, store  # noqa: F401

PLACES = LayerSchema(
    name="places",
    title="Places",
    geometry=GeometryFamily.LINE,
    fields=(
        Field("name", FieldType.STRING),
        Field("code", FieldType.STRING),
        Field("kind", FieldType.STRING),
    ),
)
QUERIES = (
    "汤逊湖北路",
    "北路",
    "丰收路",
    "丰收",
    "湖",
    "main street",
    "Main",
    "st main",
    "ab-1",
    "AB",
    "p",
    "7",
    "lot-7",
    "gh\\2",
    "ｌｏｔ",
    "湖 路",
    ";;",
)


def places(ids: list[str], xs: list[float], names: list[Any], codes: list[Any]) -> Layer:
    lines = [shapely.LineString([(x, 30.35), (x + 0.001, 30.351)]) for x in xs]
    return layer(PLACES, lines, ids, name=names, code=codes, kind=["street"] * len(ids))


def look(opened: Any, q: str, limit: int = 10, hidden: frozenset[str] = frozenset()) -> list[Hit]:
    """`Store.search` for `q` over every layer (the fields `hidden` left out), checked against
    the ranking over the layers loaded whole."""
    text = normalise(q)
    words = words_of(text)
    names = list(opened.layers(ALL))
    got = opened.search({n: hidden for n in names}, text, words, limit)
    whole = {n: opened.load(n, ALL).without_fields(hidden) for n in names}
    assert got == search_layers(whole, text, words, limit), q
    return got


def every_query(opened: Any, hidden: frozenset[str] = frozenset()) -> int:
    """Every query at several limits answered alike; how many hits in all."""
    found = 0
    for q in QUERIES:
        for limit in (1, 3, 10):
            found += len(look(opened, q, limit, hidden))
    if hasattr(opened, "_pool"):
        assert stored_keys(opened) == made_keys(opened)
    return found


def made_keys(opened: Any) -> Counter:
    """The keys `entries` makes of each stored layer, as (layer, id, kind, key, column)."""
    out: Counter = Counter()
    for name in opened.layers(ALL):
        lyr = opened.load(name, ALL)
        columns = searched_fields(lyr.schema)
        got = entries(
            lyr.ids, [lyr.attrs[c].to_numpy(dtype=object) for c in columns], np.arange(len(lyr))
        )
        of = [None, *columns]
        out.update(
            (name, lyr.ids[r], k, key, of[c])
            for r, k, key, c in zip(
                got.rows.tolist(),
                got.kinds.tolist(),
                got.keys.to_pylist(),
                got.columns.tolist(),
                strict=True,
            )
        )
    return out


def stored_keys(opened: Any) -> Counter:
    """The keys the PostGIS store keeps, as (layer, id, kind, key, column)."""
    from psycopg import sql

    out: Counter = Counter()
    with opened._cursor() as cur:
        for name in opened.layers(ALL):
            cur.execute(
                sql.SQL(
                    "SELECT s.layer, t.id, s.kind, s.key, s.col FROM twin_search s "
                    "JOIN {t} t ON t.fid = s.fid WHERE s.layer = %s"
                ).format(t=sql.Identifier("layers", name)),
                (name,),
            )
            out.update(cur.fetchall())
        cur.execute("SELECT count(*) FROM twin_search")
        (count,) = cur.fetchone()
    assert count == sum(out.values())  # no key of a feature or layer that is gone
    return out


def test_search_answers_as_the_layers_held_after_every_change(store: Any) -> None:  # noqa: F811
    store.write(
        places(
            ["p1", "p2", "p3", "p4", "p5", "p6"],
            [114.30, 114.31, 114.32, 114.33, 114.34, 114.35],
            ["汤逊湖北路", "丰收路;汤逊湖北路", "Main Street", "main st", None, "丰收路"],
            ["AB-1", "AB-2", "CD-1", "GH\\2", "AB-10", "EF-1"],  # a backslash too
        ),
        source="survey",
        user="u",
    )
    store.write(lamps(["L1", "L2"], [114.30, 114.31], ["on", "off"]), source="f", user="u")
    assert every_query(store) > 40
    # A street under several names is one hit, its box theirs all (worked out by hand).
    (hit,) = look(store, "汤逊湖北路")
    assert (hit.id, hit.rank, hit.count, hit.label) == ("p1", 0, 2, "汤逊湖北路")
    assert hit.bbox == (114.30, 30.35, 114.31 + 0.001, 30.351)
    assert [(h.id, h.count) for h in look(store, "丰收路")] == [("p6", 2)]
    assert [h.id for h in look(store, "main street")] == ["p3"]

    # A reading sets a searched text: the feature is found by its new name only.
    at = T0 + dt.timedelta(minutes=5)
    store.observe([Reading("places", "p3", "name", at, "丰收路")], user="gw")
    assert every_query(store) > 40
    assert look(store, "main street") == []
    # p3 and p6 are both named so: the first in stored order is the hit.
    assert [(h.id, h.count) for h in look(store, "丰收路")] == [("p3", 3)]

    # A deleted feature is found no more.
    store.delete_features("places", ["p6"], user="u", source="api")
    every_query(store)
    assert {h.id for h in look(store, "丰收路")} <= {"p2", "p3"}
    assert look(store, "丰收路")[0].count == 2

    # A replace removes the source's features it lacks.
    assert [h.id for h in look(store, "ab-10")] == ["p5"]
    kept = store.load("places", ALL).take([0, 1, 2, 3])
    store.write(kept, source="survey", user="u", mode="replace")
    every_query(store)
    assert look(store, "ab-10") == []

    # An extra of numbers, later of texts: the column turns to text and is searched (`*_no`),
    # the values written before included.
    numbered = PLACES.with_extras([Field("plot_no", FieldType.INTEGER, extra=True)])
    line = [shapely.LineString([(114.36, 30.35), (114.361, 30.351)])]
    store.write(layer(numbered, line, ["p7"], plot_no=[7]), source="plots", user="u")
    assert look(store, "7") == []
    texts = PLACES.with_extras([Field("plot_no", FieldType.STRING, extra=True)])
    store.write(layer(texts, line, ["p8"], plot_no=["LOT-7"]), source="plots", user="u")
    assert every_query(store) > 40
    assert [h.id for h in look(store, "ｌｏｔ-7")] == ["p8"]
    assert [(h.id, h.rank) for h in look(store, "7")] == [("p7", 0), ("p8", 2)]

    # Fields left out (a caller who may not see them): their texts find nothing, and label
    # nothing.
    every_query(store, hidden=frozenset({"name"}))
    assert look(store, "汤逊湖", hidden=frozenset({"name"})) == []
    (p1,) = look(store, "p1", hidden=frozenset({"name"}))
    assert (p1.label, p1.count) == ("AB-1", 1)

    # A dropped layer leaves no key behind.
    store.drop("places")
    every_query(store)
    assert [h.collection for h in look(store, "l")] == ["lamps", "lamps"]


@pytest.mark.postgis
def test_an_older_database_gets_its_search_keys_on_migrate(pg_url: str, tmp_path: Path) -> None:
    import psycopg
    from typer.testing import CliRunner

    from layers.postgis import SCHEMA_VERSION, PostGISStore
    from twin.cli import app as cli

    made = PostGISStore(pg_url, raster_dir=tmp_path)
    made.write(
        places(["p1", "p2"], [114.30, 114.31], ["汤逊湖北路", "丰收路;汤逊湖北路"], ["A", "B"]),
        source="s",
        user="u",
    )
    made.write(lamps(["L1"], [114.30], ["on"]), source="f", user="u")
    answers = {q: look(made, q) for q in QUERIES}
    assert sum(map(len, answers.values())) >= 7
    made.close()
    # The database as schema version 1 left it: the layers, no keys.
    with psycopg.connect(pg_url, autocommit=True) as db:
        db.execute("DROP TABLE twin_search")
        db.execute("UPDATE twin_schema_version SET version = 1")
    older = f"older than this twin's {SCHEMA_VERSION}: run `twin migrate`"
    with pytest.raises(StoreError, match=older):
        PostGISStore(pg_url, raster_dir=tmp_path, create=False)
    r = CliRunner().invoke(cli, ["migrate", "--store", pg_url])
    assert r.exit_code == 0 and f"schema version {SCHEMA_VERSION}" in r.output, r.output
    opened = PostGISStore(pg_url, raster_dir=tmp_path, create=False)
    try:
        assert stored_keys(opened) == made_keys(opened)
        assert {q: look(opened, q) for q in QUERIES} == answers
    finally:
        opened.close()
