"""The MapLibre style of every layer the caller may see."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Request
from fastapi.responses import Response

from tiles.generalise import minzoom
from twin.access import Scope
from twin.dependencies import CatalogDep
from twin.glyphs import glyph_range
from twin.routes.links import url
from twin.routes.responses import responses
from twin.routes.tiles import TMS_ID, TilesDep
from twin.style import style

router = APIRouter(tags=["Styles"])


@router.get("/style.json", summary="MapLibre style", responses=responses())
def style_json(request: Request, catalog: CatalogDep, scope: Scope, tiles: TilesDep) -> dict:
    """A MapLibre style drawing every layer the caller may see, coloured by kind and status."""
    return style(
        catalog.heads(scope),
        catalog.rasters(scope),
        tilejson_url=url(request, f"/tiles/{TMS_ID}/tilejson.json"),
        raster_tiles_url=lambda name, kind: url(
            request, f"/collections/{name}/map/tiles/{TMS_ID}/{{z}}/{{y}}/{{x}}?style={kind}"
        ),
        minzoom=lambda layer: minzoom(layer, tiles.settings),
        glyphs_url=url(request, "/fonts/{fontstack}/{range}.pbf"),
    )


@router.get(
    "/fonts/{fontstack}/{codepoints}.pbf",
    summary="Label glyphs",
    response_class=Response,
    responses=responses(400, 404, what="Glyph signed distance fields (protocol buffer)"),
)
def glyphs_pbf(
    fontstack: Annotated[
        str, Path(description="Font stack (comma-separated font names).", max_length=200)
    ],
    codepoints: Annotated[
        str, Path(description="Range of 256 codepoints, e.g. `0-255`.", pattern=r"^\d+-\d+$")
    ],
) -> Response:
    """The glyphs of 256 codepoints as the style's labels draw them (MapLibre's `glyphs` URL),
    drawn from the server's own fonts; a range no font holds is empty."""
    start, end = (int(v) for v in codepoints.split("-"))
    if start % 256 or end != start + 255 or end > 0x10FFFF:
        raise HTTPException(404, f"there is no glyph range {codepoints} (0-255, 256-511, ...)")
    return Response(
        glyph_range(fontstack, start),
        media_type="application/x-protobuf",
        headers={"Cache-Control": "public, max-age=86400"},
    )
