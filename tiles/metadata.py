"""What a client needs to know of each tile layer: TileJSON 3.0.0 `vector_layers` entries."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from layers.layer import Head
from layers.models import FieldType, GeometryFamily
from tiles.generalise import minzoom
from tiles.prepared import COUNT_PROPERTY, ID_PROPERTY
from tiles.settings import TileSettings

MVT_TYPES: dict[FieldType, str] = {
    FieldType.STRING: "String",
    FieldType.INTEGER: "Number",
    FieldType.FLOAT: "Number",
    FieldType.BOOLEAN: "Boolean",
    FieldType.DATE: "String",
    FieldType.DATETIME: "String",
}
"""How each schema field type appears in a tile (dates as ISO 8601 text)."""


@dataclass(frozen=True)
class VectorLayer:
    """One MVT layer of the tiles: its id (the collection id), fields and zoom range."""

    id: str
    description: str
    minzoom: int
    maxzoom: int
    geometry: GeometryFamily
    fields: dict[str, str] = field(default_factory=dict)
    """Property name -> "String" | "Number" | "Boolean", as tippecanoe and tipg write it."""

    def tilejson(self) -> dict[str, Any]:
        """The TileJSON 3.0.0 `vector_layers` entry."""
        return {
            "id": self.id,
            "description": self.description,
            "minzoom": self.minzoom,
            "maxzoom": self.maxzoom,
            "fields": dict(self.fields),
        }


def vector_layer(layer: Head, settings: TileSettings | None = None) -> VectorLayer:
    """The `vector_layers` entry of a collection: `id` first, then the fields its tiles carry
    (extras included, as `TileSettings.properties` narrows them), and
    `point_count` for point layers (cluster points below the detail zoom carry it)."""
    settings = settings or TileSettings()
    schema = layer.schema
    fields = {ID_PROPERTY: "String"}
    carried = set(settings.tile_keys(schema.name, schema.field_names))
    fields.update({f.name: MVT_TYPES[f.type] for f in schema.fields if f.name in carried})
    if schema.geometry in (GeometryFamily.POINT, GeometryFamily.ANY):
        fields[COUNT_PROPERTY] = "Number"
    lo = minzoom(layer, settings)
    return VectorLayer(
        id=schema.name,
        description=schema.description or schema.title,
        minzoom=lo,
        maxzoom=max(lo, settings.maxzoom),
        geometry=schema.geometry,
        fields=fields,
    )
