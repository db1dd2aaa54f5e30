"""Built-in asset schemas, and custom schemas read from a small TOML file."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

from layers.errors import InvalidSchema
from layers.models import Access, Field, FieldType, GeometryFamily, LayerSchema

S, I, F, B, D = (
    FieldType.STRING,
    FieldType.INTEGER,
    FieldType.FLOAT,
    FieldType.BOOLEAN,
    FieldType.DATE,
)

NETWORKS = ("water", "sewer", "storm", "gas", "heat", "reclaimed")
ASSET_STATUS = ("in_service", "planned", "under_construction", "abandoned", "removed")
GRID_LEVELS = ("district", "street", "community", "cell")

# Columns that usually carry a stable source id, in order of preference.
COMMON_ID_ALIASES = (
    "id",
    "fid",
    "facilityid",
    "assetid",
    "asset_id",
    "globalid",
    "objectid",
    "osmid",
    "osm_id",
)

_INSTALL = (
    "install_year",
    "installyear",
    "installdate",
    "install_date",
    "installationdate",
    "constructiondate",
    "construction_date",
    "year_installed",
    "yearinstalled",
    "install_yr",
    "year_built",
    "yearbuilt",
)
_STATUS = ("status", "lifecyclestatus", "life_cycle_status", "lifecycle_status", "condition_status")
_DEPTH = ("depth_m", "depth", "cover_depth", "burial_depth", "cover_m")

PIPES = LayerSchema(
    name="pipes",
    title="Pipes",
    description="Water, sewer, storm, gas, heat and reclaimed-water mains.",
    geometry=GeometryFamily.LINE,
    id_aliases=("struct_id", "gisid", "pipe_id", "pipeid", "mainid", "segment_id"),
    builtin=True,
    fields=(
        Field(
            "network",
            S,
            "Which network: " + ", ".join(NETWORKS),
            choices=NETWORKS,
            aliases=(
                "network",
                "system",
                "utility",
                "watertype",
                "substance",
                "pipe_type",
                "service",
                "function",
                "subtypename",
                "flowtype",
                "flow_type",
                "struct_type",
            ),
        ),
        Field(
            "material",
            S,
            "Pipe material code (PE, DI, CI, PVC, CONC, ...)",
            aliases=("material", "pipe_material", "mat", "pipe_mat", "matl"),
        ),
        Field(
            "diameter_mm",
            F,
            "Nominal diameter in millimetres",
            minimum=0,
            maximum=10_000,
            aliases=(
                "diameter_mm",
                "diameter",
                "pipe_size",
                "pipesize",
                "dia",
                "size",
                "nominal_diameter",
                "width",
            ),
        ),
        Field(
            "install_year",
            I,
            "Year the pipe was laid",
            minimum=1700,
            maximum=2100,
            aliases=_INSTALL,
        ),
        Field(
            "depth_m",
            F,
            "Depth of cover below ground, metres",
            minimum=0,
            maximum=200,
            aliases=_DEPTH,
        ),
        Field(
            "pressure_zone",
            S,
            "Pressure zone or catchment code",
            aliases=("pressure_zone", "pressurezone", "pzone", "zone"),
        ),
        Field("status", S, "Life-cycle status", choices=ASSET_STATUS, aliases=_STATUS),
    ),
)

VALVES = LayerSchema(
    name="valves",
    title="Valves and fittings",
    description="Network fittings used by isolation traces: valves, hydrants, meters, pumps.",
    geometry=GeometryFamily.POINT,
    id_aliases=("hydrant_id", "valve_id", "valveid", "hydrantid", "struct_id", "gisid"),
    builtin=True,
    fields=(
        Field(
            "kind",
            S,
            "valve, hydrant, meter or pump",
            choices=("valve", "hydrant", "meter", "pump"),
            aliases=("kind", "type", "asset_type", "fitting_type"),
        ),
        Field(
            "network",
            S,
            "Which network the fitting belongs to",
            choices=NETWORKS,
            aliases=("network", "system", "utility", "substance"),
        ),
        Field(
            "normally_open",
            B,
            "Whether the valve is normally open",
            aliases=(
                "normally_open",
                "normallyopen",
                "normal_position",
                "normalposition",
                "normal_state",
                "normalstate",
            ),
        ),
        Field(
            "operable",
            B,
            "Whether the valve can be operated",
            aliases=("operable", "is_operable", "operational"),
        ),
        Field(
            "diameter_mm",
            F,
            "Nominal diameter in millimetres",
            minimum=0,
            maximum=10_000,
            aliases=("diameter_mm", "diameter", "valve_size", "size"),
        ),
        Field("install_year", I, "Year installed", minimum=1700, maximum=2100, aliases=_INSTALL),
        Field("depth_m", F, "Depth below ground, metres", minimum=0, maximum=200, aliases=_DEPTH),
        Field("status", S, "Life-cycle status", choices=ASSET_STATUS, aliases=_STATUS),
    ),
)

ROADS = LayerSchema(
    name="roads",
    title="Roads",
    description="Road centre lines.",
    geometry=GeometryFamily.LINE,
    id_aliases=("street_id", "road_id", "segment_id"),
    builtin=True,
    fields=(
        Field(
            "name",
            S,
            "Street name",
            aliases=(
                "name",
                "street",
                "street_name",
                "streetname",
                "fullname",
                "full_name",
                "label",
                "road_name",
            ),
        ),
        Field(
            "class",
            S,
            "Road class (motorway, primary, residential, ...)",
            aliases=("class", "highway", "road_class", "roadclass", "func_class", "fclass"),
        ),
        Field("lanes", I, "Number of lanes", minimum=0, maximum=20, aliases=("lanes", "num_lanes")),
        Field("surface", S, "Surface (asphalt, concrete, ...)", aliases=("surface",)),
        Field("oneway", B, "One-way street", aliases=("oneway", "one_way")),
        Field("bridge", B, "Carried on a bridge", aliases=("bridge",)),
        Field("tunnel", B, "In a tunnel", aliases=("tunnel",)),
        Field(
            "maxspeed_kmh",
            F,
            "Speed limit, km/h",
            minimum=0,
            maximum=200,
            aliases=("maxspeed_kmh", "maxspeed", "speed_limit"),
        ),
    ),
)

BRIDGES = LayerSchema(
    name="bridges",
    title="Bridges",
    description="Bridges and culverts with their inspection condition.",
    geometry=GeometryFamily.ANY,
    id_aliases=("bridge_id", "structure_id", "bin"),
    builtin=True,
    fields=(
        Field("name", S, "Bridge name", aliases=("name", "bridge_name", "bridgedetails")),
        Field(
            "kind",
            S,
            "Bridge type (road, rail, foot, culvert, ...)",
            aliases=("kind", "type", "bridge_type", "bridge"),
        ),
        Field(
            "length_m",
            F,
            "Length, metres",
            minimum=0,
            maximum=100_000,
            aliases=("length_m", "length", "bridge_length"),
        ),
        Field(
            "spans", I, "Number of spans", minimum=0, maximum=1000, aliases=("spans", "num_spans")
        ),
        Field(
            "condition",
            I,
            "Inspection condition, 1 (good) to 5 (critical)",
            minimum=1,
            maximum=5,
            aliases=("condition", "condition_rating", "rating"),
        ),
        Field(
            "last_inspection",
            D,
            "Date of the last inspection",
            aliases=("last_inspection", "inspection_date", "inspected", "lastinspection"),
        ),
    ),
)

LIGHTS = LayerSchema(
    name="lights",
    title="Street lights",
    description="Street lights with lamp, circuit and live status.",
    geometry=GeometryFamily.POINT,
    id_aliases=("poleid", "pole_id", "light_id", "lightid", "lamp_id"),
    builtin=True,
    fields=(
        Field(
            "lamp_type",
            S,
            "Lamp type (LED, HPS, MH, ...)",
            aliases=("lamp_type", "lamptype", "light_type", "fixturetype", "lamp", "lamp1"),
        ),
        Field(
            "wattage_w",
            F,
            "Lamp power, watts",
            minimum=0,
            maximum=10_000,
            aliases=("wattage_w", "wattage", "watts", "power_w", "power", "lamp_watts"),
        ),
        Field(
            "height_m",
            F,
            "Mounting height, metres",
            minimum=0,
            maximum=100,
            aliases=("height_m", "height", "pole_height", "mounting_height"),
        ),
        Field("circuit", S, "Supply circuit", aliases=("circuit", "circuit_id", "feeder")),
        Field(
            "status",
            S,
            "Live status",
            choices=("on", "off", "fault"),
            aliases=("status", "lamp_status"),
        ),
    ),
)

PARKS = LayerSchema(
    name="parks",
    title="Parks",
    description="Parks and green space.",
    geometry=GeometryFamily.POLYGON,
    id_aliases=("park_id", "parkid", "join_id"),
    builtin=True,
    fields=(
        Field("name", S, "Park name", aliases=("name", "park_name", "parkname", "site_name")),
        Field(
            "area_m2",
            F,
            "Area, square metres (computed on the ground when absent)",
            minimum=0,
            aliases=("area_m2", "area_sqm"),
        ),
        Field(
            "kind",
            S,
            "Kind of green space (park, garden, playground, ...)",
            aliases=("kind", "leisure", "park_type", "parktype", "type"),
        ),
    ),
)

GRIDS = LayerSchema(
    name="grids",
    title="Management grid",
    description="Management cells: district > street > community > cell.",
    geometry=GeometryFamily.POLYGON,
    id_aliases=("grid_id", "cell_id"),
    builtin=True,
    fields=(
        Field(
            "level",
            S,
            "district, street, community or cell",
            choices=GRID_LEVELS,
            aliases=("level", "grid_level"),
        ),
        Field("code", S, "Cell code", aliases=("code", "grid_code", "cell_code", "pcix_no")),
        Field(
            "parent_code",
            S,
            "Code of the enclosing cell",
            aliases=("parent_code", "parent", "parentcode"),
        ),
        Field("name", S, "Name", aliases=("name", "cell_name", "name_1", "name_2", "name_3")),
        Field(
            "responsible_unit",
            S,
            "Who manages the cell",
            aliases=("responsible_unit", "responsible", "unit", "department", "manager"),
        ),
    ),
)

SITES = LayerSchema(
    name="sites",
    title="Construction sites",
    description="Permitted excavations and construction sites.",
    geometry=GeometryFamily.POLYGON,
    id_aliases=("site_id", "siteid"),
    builtin=True,
    fields=(
        Field(
            "permit_id",
            S,
            "Permit number",
            aliases=("permit_id", "permit", "permit_no", "permitnumber", "permit_number"),
        ),
        Field("contractor", S, "Contractor", aliases=("contractor", "company")),
        Field("start_date", D, "Start of works", aliases=("start_date", "startdate", "start")),
        Field("end_date", D, "End of works", aliases=("end_date", "enddate", "end")),
        Field(
            "depth_m",
            F,
            "Excavation depth, metres",
            minimum=0,
            maximum=200,
            aliases=("depth_m", "depth", "excavation_depth"),
        ),
        Field("description", S, "What is being built", aliases=("description", "desc", "work")),
    ),
)

BUILTIN: dict[str, LayerSchema] = {
    s.name: s for s in (PIPES, VALVES, ROADS, BRIDGES, LIGHTS, PARKS, GRIDS, SITES)
}

_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
RESERVED = frozenset({"id", "fid", "geom", "geometry", "source", "_version", "_updated", "_hash"})


def check_name(name: str, what: str = "collection") -> str:
    """`name` when it is a valid lower-case identifier, else `InvalidSchema`."""
    if not _NAME.match(name):
        raise InvalidSchema(
            f"{what} name {name!r} must start with a letter and hold only a-z, 0-9 and _"
        )
    return name


def custom_schema(data: dict[str, Any], *, name: str | None = None) -> LayerSchema:
    """A custom layer's schema from parsed configuration (see `load_schema_file`)."""
    name = check_name(str(name or data.get("name", "")))
    if name in BUILTIN:
        raise InvalidSchema(f"{name!r} is a built-in layer; choose another name")
    fields = []
    raw_fields = data.get("fields", {})
    # Accept both `[fields] diameter_mm = "float"` and `[[fields]] name = ...` shapes.
    if isinstance(raw_fields, dict):
        raw_fields = [
            {"name": k, **(v if isinstance(v, dict) else {"type": v})}
            for k, v in raw_fields.items()
        ]
    seen = set()
    for raw in raw_fields:
        fname = check_name(str(raw.get("name", "")), "field")
        if fname in RESERVED or fname in seen:
            raise InvalidSchema(f"field name {fname!r} is reserved or repeated")
        seen.add(fname)
        try:
            fields.append(Field.from_json({**raw, "name": fname}))
        except ValueError as exc:
            raise InvalidSchema(f"field {fname!r}: {exc}") from None
    try:
        geometry = GeometryFamily(data.get("geometry", "any"))
        classification = Access.parse(data.get("classification", "public"))
    except ValueError as exc:
        raise InvalidSchema(str(exc)) from None
    return LayerSchema(
        name=name,
        title=str(data.get("title") or name),
        description=str(data.get("description", "")),
        geometry=geometry,
        classification=classification,
        id_aliases=tuple(str(a).lower() for a in data.get("id_aliases", ())),
        fields=tuple(fields),
    )


def load_schema_file(path: str | Path, *, name: str | None = None) -> LayerSchema:
    """A custom layer's schema from a TOML file such as::

    name = "power"
    title = "Power network"
    geometry = "any"            # point | line | polygon | any
    classification = "internal"
    [fields]
    voltage_kv = "float"
    operator = { type = "string", aliases = ["owner"] }
    """
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise InvalidSchema(f"cannot read schema file {path}: {exc}") from None
    return custom_schema(data, name=name)


def generic_schema(name: str) -> LayerSchema:
    """A schema for a custom layer created without a schema file: geometry of any kind, no fields."""
    return custom_schema({"name": name, "title": name.replace("_", " ").title()})
