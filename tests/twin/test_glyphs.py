"""`GET /fonts/{fontstack}/{range}.pbf`: the label glyphs the style names, drawn by the server
from its own fonts, as protocol buffers MapLibre reads (read back here with a plain decoder)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import ImageFont

from tests.twin.query_fixtures import demo_store_fixture, query_app  # noqa: F401  (fixture)
from twin import glyphs


def _fields(data: bytes) -> list[tuple[int, int | bytes]]:
    """(field number, value) of a protocol buffer message: varints and length-delimited."""
    out, i = [], 0
    while i < len(data):
        key, i = _varint(data, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(data, i)
            out.append((number, value))
        elif wire == 2:
            size, i = _varint(data, i)
            out.append((number, data[i : i + size]))
            i += size
        else:
            raise AssertionError(f"unexpected wire type {wire}")
    return out


def _varint(data: bytes, i: int) -> tuple[int, int]:
    shift = value = 0
    while True:
        byte = data[i]
        i += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, i


def _unzigzag(n: int) -> int:
    return (n >> 1) ^ -(n & 1)


def decode(data: bytes) -> tuple[str, str, dict[int, dict]]:
    ((number, stack),) = _fields(data)
    assert number == 1 and isinstance(stack, bytes)
    name = rng = ""
    found: dict[int, dict] = {}
    for n, v in _fields(stack):
        if n == 1:
            name = bytes(v).decode()  # type: ignore[arg-type]
        elif n == 2:
            rng = bytes(v).decode()  # type: ignore[arg-type]
        elif n == 3:
            g = dict(_fields(v))  # type: ignore[arg-type]
            found[int(g[1])] = {  # type: ignore[arg-type]
                "bitmap": g.get(2, b""),
                "width": g[3],
                "height": g[4],
                "left": _unzigzag(g[5]),  # type: ignore[arg-type]
                "top": _unzigzag(g[6]),  # type: ignore[arg-type]
                "advance": g[7],
            }
    return name, rng, found


@pytest.fixture(scope="module")
def client(demo_store: Path):
    with TestClient(query_app(demo_store)) as c:
        yield c


def test_the_style_names_the_servers_own_glyphs(client):
    style = client.get("/style.json").json()
    assert style["glyphs"] == "http://testserver/fonts/{fontstack}/{range}.pbf"
    stacks = {
        tuple(lyr["layout"]["text-font"]) for lyr in style["layers"] if lyr["type"] == "symbol"
    }
    assert stacks == {tuple(glyphs_font())}


def glyphs_font() -> list[str]:
    from twin.style import FONT

    return FONT


def test_latin_glyphs_are_signed_distance_fields_of_the_fonts_outlines(client):
    # The project's own font draws Latin, whatever the machine has (npm ci installs it).
    assert glyphs._fonts()[0].path == str(glyphs.BUNDLED_FONT)
    r = client.get("/fonts/Noto%20Sans%20Regular/0-255.pbf")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/x-protobuf"
    name, rng, found = decode(r.content)
    assert (name, rng) == ("Noto Sans Regular", "0-255")
    assert {ord(c) for c in "ADN0123456789 !×"} <= set(found)
    assert not set(range(32)) & set(found)  # control characters draw nothing
    font = ImageFont.truetype(glyphs._fonts()[0].path, glyphs.SIZE)
    for ch in "ADNx0!":
        g = found[ord(ch)]
        w, h = g["width"], g["height"]
        field = np.frombuffer(g["bitmap"], dtype=np.uint8).reshape(h + 6, w + 6)
        # The ink box is the font's own (FreeType's bounding box at 24 px), the advance too.
        left, top, right, bottom = font.getbbox(ch)
        assert (w, h) == (right - left, bottom - top), ch
        assert g["advance"] == round(font.getlength(ch))
        # Inside the outline is above the edge value (192), the border around it below.
        coverage = np.asarray(font.getmask(ch), dtype=np.uint8).reshape(h, w)
        inside = field[3:-3, 3:-3][coverage > 200]
        assert (inside >= 192).all(), ch
        assert field[0].max() < 192 and field[-1].max() < 192, ch


def test_a_range_with_no_glyphs_is_empty_and_no_range_is_404(client):
    r = client.get("/fonts/Noto%20Sans%20Regular/57344-57599.pbf")  # private use area
    assert r.status_code == 200
    assert decode(r.content)[2] == {}
    for missing in ("1-256", "0-300", "0-0", "1114112-1114367"):
        r = client.get(f"/fonts/Noto%20Sans%20Regular/{missing}.pbf")
        assert r.status_code == 404, missing
        assert r.json()["code"] == "NotFound"
    for bad in ("abc", "0-255-1"):
        r = client.get(f"/fonts/Noto%20Sans%20Regular/{bad}.pbf")
        assert r.status_code == 400, bad
        assert r.json()["code"] == "InvalidParameter"
    r = client.get(f"/fonts/{'x' * 201}/0-255.pbf")
    assert r.status_code == 400 and r.json()["code"] == "InvalidParameter"
