"""The MapLibre style of every layer the caller may see."""

from __future__ import annotations

from fastapi import APIRouter, Request

from tiles.generalise import minzoom
from twin.access import Scope
from twin.dependencies import CatalogDep
from twin.routes.links import url
from twin.routes.responses import responses
from twin.routes.tiles import TMS_ID, TilesDep
from twin.style import style

router = APIRouter(tags=["Styles"])


@router.get("/style.json", summary="MapLibre style", responses=responses())
def style_json(request: Request, catalog: CatalogDep, scope: Scope, tiles: TilesDep) -> dict:
    """A MapLibre style drawing every layer the caller may see, coloured by kind and status."""
    return style(
        catalog.layers(scope),
        catalog.rasters(scope),
        tilejson_url=url(request, f"/tiles/{TMS_ID}/tilejson.json"),
        raster_tiles_url=lambda name, kind: url(
            request, f"/collections/{name}/map/tiles/{TMS_ID}/{{z}}/{{y}}/{{x}}?style={kind}"
        ),
        minzoom=lambda layer: minzoom(layer, tiles.settings),
    )
