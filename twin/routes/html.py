"""HTML pages for browsers: the documents the JSON routes answer, made readable.

Every route that answers links also answers `f=html` (or a browser's Accept header, see
`twin.dependencies.wants_html`) with a page made here from the very document or GeoJSON it would
answer otherwise: its links, a table of what it holds and, for features, a small map drawn by
the project's own MapLibre under /web/ (never a CDN). Each JSON document links its page
(`alternate`, text/html) and each page its JSON. Everything taken from the data is escaped.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from html import escape
from typing import Any
from urllib.parse import quote

import numpy as np
import shapely
from fastapi import Request
from fastapi.responses import HTMLResponse, JSONResponse

from twin.routes.links import HTML, JSON, link, request_url, url
from twin.webmap import MAPLIBRE_URL, PAGE_MAP_URL

VARY = {"Vary": "Accept"}
"""Answers chosen by the Accept header say so, for caches."""

MAIN_COLUMNS = 8
"""Properties shown in an items page's table (every one is on each item's page)."""

UNITS: dict[str, str] = {
    "_mm": "mm",
    "_m": "m",
    "_km": "km",
    "_m2": "m²",
    "_m3": "m³",
    "_kpa": "kPa",
    "_mpa": "MPa",
    "_w": "W",
    "_kw": "kW",
    "_kv": "kV",
    "_pct": "%",
    "_deg": "°",
    "_s": "s",
}
"""Units of fields named by their suffix (`diameter_mm`), shown beside their values."""

Crumbs = Sequence[tuple[str, str]]
"""(label, href) of the pages above this one."""

_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:1em 2em;color:#222;max-width:72em}
nav{margin-bottom:.5em}nav a{margin-right:.3em}
table{border-collapse:collapse;margin:.5em 0}
th,td{border:1px solid #ccc;padding:2px 6px;text-align:left;vertical-align:top}
th{background:#f3f3f3;font-weight:600}.null{color:#999}.unit{color:#666}
#map{width:100%;max-width:48em;height:320px;border:1px solid #ccc;margin:.5em 0}
.paging a{margin-right:1em}code{font-size:90%}
"""


# -- negotiation ------------------------------------------------------------------------------


def alternate(request: Request, html: bool, json_type: str = JSON) -> dict[str, Any]:
    """The link to this answer in the other encoding: the HTML page from the JSON document,
    the JSON (of `json_type`) from the page."""
    if html:
        return link(request_url(request, drop=("f",)), "alternate", json_type, "As JSON")
    return link(request_url(request, f="html"), "alternate", HTML, "This document as HTML")


def html_answer(page: str) -> HTMLResponse:
    """A page, marked as chosen by the Accept header."""
    return HTMLResponse(page, headers=VARY)


def negotiate(
    request: Request,
    html: bool,
    doc: dict[str, Any],
    title: str,
    crumbs: Crumbs = (),
    pages: Crumbs = (),
    media_type: str = JSON,
) -> HTMLResponse | JSONResponse:
    """`doc` with its `alternate` link added, as its HTML page (`document_page`) or as JSON."""
    doc.setdefault("links", []).append(alternate(request, html, media_type))
    if html:
        return html_answer(document_page(request, doc, title, crumbs, pages))
    return JSONResponse(doc, media_type=media_type, headers=VARY)


def html_url(request: Request, path: str) -> str:
    """Absolute URL of the HTML page of server path `path`."""
    return url(request, f"{path}?f=html")


def collection_crumbs(request: Request, collection: str, title: str) -> list[tuple[str, str]]:
    """The pages above a collection's pages: the collections, then the collection."""
    return [
        ("Collections", html_url(request, "/collections")),
        (title, html_url(request, f"/collections/{quote(collection, safe='')}")),
    ]


# -- pages ------------------------------------------------------------------------------------


def document_page(
    request: Request, doc: dict[str, Any], title: str, crumbs: Crumbs = (), pages: Crumbs = ()
) -> str:
    """Any JSON document as a page: its description, the HTML `pages` it leads to, its links and
    a table of its other members."""
    body = []
    if doc.get("description"):
        body.append(f"<p>{_text(doc['description'])}</p>")
    if pages:
        body.append(_link_list(pages))
    rest = {k: v for k, v in doc.items() if k not in ("links", "title", "description")}
    if rest:
        body.append(_value(rest))
    body.append(_links(doc.get("links", [])))
    return _page(request, title, "".join(body), crumbs)


def collections_page(request: Request, doc: dict[str, Any]) -> str:
    """The collections as a table, each leading to its page and its features' page."""
    rows = []
    for c in doc["collections"]:
        path = f"/collections/{quote(c['id'], safe='')}"
        items = (
            f'<a href="{_text(html_url(request, path + "/items"))}">features</a>'
            if c.get("itemType") == "feature"
            else ""
        )
        rows.append(
            f'<tr><td><a href="{_text(html_url(request, path))}">{_text(c["id"])}</a></td>'
            f"<td>{_text(c.get('title', ''))}</td><td>{_text(c.get('itemType', ''))}</td>"
            f"<td>{_text(c.get('numberOfFeatures', ''))}</td><td>{items}</td></tr>"
        )
    table = (
        "<table><tr><th>id</th><th>title</th><th>type</th><th>features</th><th></th></tr>"
        + "".join(rows)
        + "</table>"
    )
    return _page(request, "Collections", table + _links(doc["links"]))


def items_page(
    request: Request,
    collection: str,
    title: str,
    doc: dict[str, Any],
    lonlat: np.ndarray,
    offset: int,
) -> str:
    """A page of features: where it stands in the matches, paging links, a map of its features
    (`lonlat`: their geometries in lon/lat) and a table of their main properties."""
    features = doc["features"]
    n, matched = len(features), doc["numberMatched"]
    shown = f"features {offset + 1}–{offset + n} of {matched}" if n else f"no feature of {matched}"
    links = {lk["rel"]: lk for lk in doc["links"]}
    paging = [
        f'<a rel="{rel}" href="{_text(links[rel]["href"])}">{label}</a>'
        for rel, label in (("prev", "« previous"), ("next", "next »"))
        if rel in links
    ]
    json_href = links["self"]["href"]
    names = _main_columns(features)
    head = "".join(f"<th>{_name(p)}</th>" for p in ("id", *names))
    rows = [
        f'<tr><td><a href="{_text(_item_url(request, collection, f["id"]))}">'
        f"{_text(f['id'])}</a></td>"
        + "".join(_cell(f["properties"].get(p)) for p in names)
        + "</tr>"
        for f in features
    ]
    body = (
        f'<p>{_text(shown)} · <a href="{_text(json_href)}">GeoJSON</a></p>'
        f'<p class="paging">{"".join(paging)}</p>'
        + _map(request, [f["id"] for f in features], lonlat)
        + f"<table><tr>{head}</tr>{''.join(rows)}</table>"
        + f'<p class="paging">{"".join(paging)}</p>'
        + _links(doc["links"])
    )
    crumbs = collection_crumbs(request, collection, title)
    return _page(request, f"{title}: features", body, crumbs, _map_head(request, features))


def item_page(
    request: Request, collection: str, title: str, doc: dict[str, Any], lonlat: np.ndarray
) -> str:
    """One feature: a map of it, every property in a table, and its links."""
    fid = doc["id"]
    rows = [f"<tr><th>id</th><td>{_text(fid)}</td></tr>"] + [
        f"<tr><th>{_name(p)}</th>{_cell(v)}</tr>" for p, v in doc["properties"].items()
    ]
    json_href = next(lk["href"] for lk in doc["links"] if lk["rel"] == "self")
    items = html_url(request, f"/collections/{quote(collection, safe='')}/items")
    body = (
        f'<p><a href="{_text(json_href)}">GeoJSON</a> · '
        f'<a href="{_text(items)}">all features of {_text(title)}</a></p>'
        + _map(request, [fid], lonlat)
        + f"<table>{''.join(rows)}</table>"
        + _links(doc["links"])
    )
    crumbs = [*collection_crumbs(request, collection, title), ("features", items)]
    return _page(request, f"{title} {fid}", body, crumbs, _map_head(request, [fid]))


# -- pieces -----------------------------------------------------------------------------------


def _page(request: Request, title: str, body: str, crumbs: Crumbs = (), head: str = "") -> str:
    trail = [("twin", html_url(request, "/")), *crumbs]
    nav = " › ".join(f'<a href="{_text(href)}">{_text(label)}</a>' for label, href in trail)
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        "<link rel='icon' href='data:,'>"
        f"<title>{_text(title)}</title><style>{_CSS}</style>{head}</head><body>"
        f"<nav>{nav}</nav><h1>{_text(title)}</h1>{body}</body></html>"
    )


def _text(value: Any) -> str:
    """`value` as escaped text (quotes too: it may land in an attribute)."""
    return escape(value if isinstance(value, str) else _plain(value), quote=True)


def _plain(value: Any) -> str:
    """A property value as the JSON shows it, strings without quotes."""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)


def unit(name: str) -> str | None:
    """The unit a field's name ends with (`depth_m`: m), or None."""
    low = name.lower()
    return next((u for suffix, u in UNITS.items() if low.endswith(suffix)), None)


def _name(name: str) -> str:
    u = unit(name)
    return _text(name) + (f' <span class="unit">({_text(u)})</span>' if u else "")


def _cell(value: Any) -> str:
    if value is None:
        return '<td class="null">–</td>'
    return f"<td>{_text(value)}</td>"


def _main_columns(features: list[dict[str, Any]]) -> list[str]:
    """The first `MAIN_COLUMNS` properties holding a value in some feature of the page."""
    names: dict[str, bool] = {}
    for f in features:
        for k, v in f["properties"].items():
            names[k] = names.get(k, False) or v is not None
    return [k for k, held in names.items() if held][:MAIN_COLUMNS]


def _item_url(request: Request, collection: str, fid: Any) -> str:
    return html_url(
        request, f"/collections/{quote(collection, safe='')}/items/{quote(str(fid), safe='')}"
    )


def _links(links: list[dict[str, Any]]) -> str:
    if not links:
        return ""
    rows = []
    for lk in links:
        label = _text(lk.get("title") or lk["href"])
        target = (
            f"<code>{_text(lk['href'])}</code>"
            if lk.get("templated")
            else f'<a href="{_text(lk["href"])}">{label}</a>'
        )
        rows.append(
            f"<tr><td>{target}</td><td>{_text(lk['rel'])}</td><td>{_text(lk['type'])}</td></tr>"
        )
    return (
        "<h2>Links</h2><table><tr><th>link</th><th>rel</th><th>type</th></tr>"
        + "".join(rows)
        + "</table>"
    )


def _link_list(pages: Crumbs) -> str:
    items = "".join(f'<li><a href="{_text(href)}">{_text(label)}</a></li>' for label, href in pages)
    return f"<ul>{items}</ul>"


def _value(value: Any) -> str:
    """A JSON value as nested tables and lists."""
    if isinstance(value, dict):
        rows = "".join(
            f"<tr><th>{_text(k)}</th><td>{_links_or_value(k, v)}</td></tr>"
            for k, v in value.items()
        )
        return f"<table>{rows}</table>"
    if isinstance(value, list):
        if any(isinstance(v, dict | list) for v in value):
            return "".join(_value(v) for v in value)
        return "<ul>" + "".join(f"<li>{_text(v)}</li>" for v in value) + "</ul>"
    if value is None:
        return '<span class="null">–</span>'
    return _text(value)


def _links_or_value(key: str, value: Any) -> str:
    if key == "links" and isinstance(value, list):
        return _links(value).removeprefix("<h2>Links</h2>")
    return _value(value)


def _map(request: Request, ids: Sequence[Any], lonlat: np.ndarray) -> str:
    """A small map of the features `ids` (geometries `lonlat`) over the server's own style,
    drawn by MapLibre from /web/; nothing when the web map is not installed."""
    if not _map_head(request, ids):
        return ""
    geoms = shapely.to_geojson(lonlat).tolist()
    data = (
        '{"type":"FeatureCollection","features":['
        + ",".join(
            f'{{"type":"Feature","properties":{{"id":{json.dumps(str(i))}}},'
            f'"geometry":{"null" if g is None else g}}}'
            for i, g in zip(ids, geoms, strict=True)
        )
        + "]}"
    )
    box = shapely.total_bounds(lonlat)
    options = {
        "style": url(request, "/style.json"),
        "bounds": box.tolist() if np.isfinite(box).all() else None,
    }
    return (
        '<div id="map"></div>'
        f'<script type="application/json" id="map-data">{_script_json(data)}</script>'
        f'<script type="application/json" id="map-options">'
        f"{_script_json(json.dumps(options))}</script>"
        f'<script src="{_text(url(request, PAGE_MAP_URL))}"></script>'
    )


def _map_head(request: Request, shown: Sequence[Any]) -> str:
    """MapLibre's script and stylesheet, from /web/, when there is something to map and the
    web map is installed."""
    if not getattr(request.app.state, "web_map", False) or len(shown) == 0:
        return ""
    lib = _text(url(request, MAPLIBRE_URL))
    return (
        f'<link rel="stylesheet" href="{lib}/maplibre-gl.css">'
        f'<script src="{lib}/maplibre-gl.js"></script>'
    )


def _script_json(text: str) -> str:
    """JSON text that cannot end the <script> element holding it."""
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
