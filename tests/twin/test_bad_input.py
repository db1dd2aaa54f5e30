"""Bad input answers 4xx JSON naming the problem: never a 500, never a stack trace."""

from __future__ import annotations

import random
import string
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient

from tests.twin.serve_fixtures import (
    app_for,
    served_store_fixture,  # noqa: F401  (fixture)
)

ITEMS = "/collections/lights/items"


@pytest.fixture(scope="module")
def client(served_store):
    with TestClient(app_for(served_store), raise_server_exceptions=False) as c:
        yield c


def assert_clean_error(r, status: int | tuple[int, ...], *needles: str) -> None:
    statuses = (status,) if isinstance(status, int) else status
    assert r.status_code in statuses, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert set(body) == {"code", "description"}
    text = body["description"].lower()
    for needle in needles:
        assert needle.lower() in text, (needle, body)
    assert "traceback" not in r.text.lower() and 'file "' not in r.text.lower()


@pytest.mark.parametrize(
    ("path", "params", "status", "needles"),
    [
        (ITEMS, {"bbox": "-71.1,42.4,-71.2,42.3"}, 400, ["bbox", "minimum"]),
        (ITEMS, {"bbox": "a,b,c,d"}, 400, ["bbox", "numbers"]),
        (ITEMS, {"bbox": "1,2,3"}, 400, ["bbox"]),
        (ITEMS, {"bbox": "nan,1,2,3"}, 400, ["bbox", "finite"]),
        (ITEMS, {"bbox": "-200,0,10,10"}, 400, ["bbox", "longitude"]),
        (ITEMS, {"bbox-crs": "EPSG:4326"}, 400, ["bbox-crs"]),
        (ITEMS, {"limit": "-1"}, 400, ["limit"]),
        (ITEMS, {"limit": "0"}, 400, ["limit"]),
        (ITEMS, {"limit": "ten"}, 400, ["limit"]),
        (ITEMS, {"offset": "-5"}, 400, ["offset"]),
        (ITEMS, {"crs": "EPSG:999999"}, 400, ["crs", "999999"]),
        (ITEMS, {"crs": "EPSG:4326x"}, 400, ["crs"]),
        (ITEMS, {"bbox": "0,0,1,1", "bbox-crs": "urn:nope"}, 400, ["bbox-crs"]),
        (ITEMS, {"filter": "status = = 'x'"}, 400, ["filter", "cql2-text"]),
        (ITEMS, {"filter": "nosuch = 1"}, 400, ["nosuch"]),
        (ITEMS, {"filter": "{", "filter-lang": "cql2-json"}, 400, ["cql2-json"]),
        (ITEMS, {"filter": "status = 'on'", "filter-lang": "sql"}, 400, ["filter-lang"]),
        (ITEMS, {"filter": "status = 'on'", "filter-crs": "EPSG:1"}, 400, ["filter-crs"]),
        (ITEMS, {"datetime": "yesterday"}, 400, ["datetime"]),
        (ITEMS, {"datetime": "2024-05-01/2024-01-01"}, 400, ["datetime", "after"]),
        (ITEMS, {"datetime": "a/b/c"}, 400, ["datetime"]),
        (ITEMS, {"colour": "red"}, 400, ["colour"]),
        (ITEMS, {"wattage_w": "bright"}, 400, ["wattage_w", "float"]),
        (ITEMS, {"f": "xml"}, 400, ["f="]),
        ("/collections/nope", {}, 404, ["nope"]),
        ("/collections/nope/items", {}, 404, ["nope"]),
        ("/collections/nope/queryables", {}, 404, ["nope"]),
        ("/collections/lights/items/no-such-pole", {}, 404, ["no-such-pole"]),
        ("/no/such/path", {}, 404, []),
    ],
)
def test_bad_parameters_are_named(client, path, params, status, needles):
    assert_clean_error(client.get(path, params=params), status, *needles)


def test_wrong_method_is_json_too(client):
    r = client.post("/collections")
    assert_clean_error(r, 405)


def test_fuzzed_values_never_answer_500(client):
    rng = random.Random(4)
    alphabet = string.printable + "éß中文\u200b\x00"
    odd = ["", " ", "1e309", "-0", "NaN", "Infinity", "9" * 400, "%", "'", '"', "\\", "()", "[]"]
    odd += ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 40))) for _ in range(40)]
    names = ["bbox", "bbox-crs", "limit", "offset", "crs", "filter", "datetime", "status"]
    names += ["filter-lang", "wattage_w"]
    for value in odd:
        for name in names:
            r = client.get(ITEMS, params={name: value})
            assert r.status_code < 500, (name, value, r.text)
            if r.status_code >= 400:
                assert set(r.json()) == {"code", "description"}, (name, value)
        r = client.get(f"/collections/{quote(value, safe='')}/items")
        assert r.status_code < 500, (value, r.text)


def test_an_unexpected_failure_is_a_json_500_without_a_trace(served_store):
    app = app_for(served_store)

    def boom() -> dict:
        raise RuntimeError("secret internals /etc/passwd")

    app.add_api_route("/boom", boom)
    with TestClient(app, raise_server_exceptions=False) as c:
        r = c.get("/boom")
    assert r.status_code == 500
    assert r.json() == {
        "code": "ServerError",
        "description": "the server failed to answer; see its log",
    }
    assert "secret" not in r.text and "Traceback" not in r.text
