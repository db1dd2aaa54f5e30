"""The `twin` command line: import, inspect, export, serve."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from typer.core import TyperGroup

if TYPE_CHECKING:
    from layers.models import LayerSchema
    from layers.store import Store


class _Commands(TyperGroup):
    """`twin --help` listing each command with its whole first sentence, wrapped (click would
    cut it at the terminal's width)."""

    def format_commands(self, ctx: Any, formatter: Any) -> None:  # typer's own click types
        """The Commands section of the help."""
        rows = []
        for name in self.list_commands(ctx):
            command = self.get_command(ctx, name)
            if command is not None and not command.hidden:
                rows.append((name, command.get_short_help_str(limit=300)))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


app = typer.Typer(
    name="twin",
    cls=_Commands,
    help="Digital-twin map server for a city's municipal assets.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain help: flags shown as flags, not as `--json <bool>`
)

_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+)://")
"""A store given as a URL (`postgresql://...`)."""

StoreRef = Path | str
"""A store: a directory (the embedded GeoPackage store) or a database URL."""


def store_ref(value: str | Path) -> StoreRef:
    """A store as given: a URL stays text (a `Path` would fold its `//`), anything else is a
    directory."""
    text = str(value)
    return text if _URL.match(text) else Path(text)


def _store_path(
    ctx: typer.Context, param: typer.CallbackParam, value: str | None
) -> StoreRef | None:
    """The store a command works on: its own `--store`, else the one given before the command
    (`twin --store PATH COMMAND`), else `TWIN_STORE` or the default."""
    source = ctx.get_parameter_source(param.name or "store")
    if ctx.parent is not None and source is not None and source.name in ("DEFAULT", "ENVIRONMENT"):
        given = ctx.find_root().params.get("store")
        if given is not None:
            return store_ref(given)
    return None if value is None else store_ref(value)


StoreOption = Annotated[
    str,
    typer.Option(
        "--store",
        envvar="TWIN_STORE",
        help="Store: a directory (holds twin.gpkg and rasters/) or a PostgreSQL + PostGIS URL "
        "(postgresql://...); also `twin --store STORE COMMAND`.",
        show_default=True,
        callback=_store_path,
    ),
]
DEFAULT_STORE = "twin-data"
HostOption = Annotated[
    str | None, typer.Option(help="Address to listen on (default 127.0.0.1, TWIN_HOST).")
]
PortOption = Annotated[
    int | None, typer.Option(help="Port to listen on (default 8000, TWIN_PORT).")
]


PolicyOption = Annotated[
    Path | None,
    typer.Option(
        "--policy",
        envvar="TWIN_POLICY",
        help="Policy file (TOML) whose rules the output follows (default TWIN_POLICY).",
    ),
]


RoleOption = Annotated[
    str,
    typer.Option(
        help="Write what a caller of this role may see under the policy: anonymous (up to "
        "--scope where there is one), viewer, engineer or admin (everything)."
    ),
]
DepartmentOption = Annotated[str | None, typer.Option(help="The caller's department.")]


def _view(policy: Path | None, role: str, department: str | None, anonymous: str, db: Any) -> Any:
    """The policy's view for a caller of `role` (what an export may hold) over store `db`."""
    from layers.models import Access, Role
    from layers.policy import GRIDS, NO_POLICY, Policy, PolicyError, View, Who, cell_resolver

    try:
        rules = NO_POLICY if policy is None else Policy.load(policy)
        who = Who(Role.parse(role), department, Access.parse(anonymous))
    except (PolicyError, ValueError) as exc:
        raise fail(str(exc)) from None
    grids = db.layers(Access.RESTRICTED)
    return View(
        rules,
        who,
        resolve=cell_resolver(
            lambda: db.load(GRIDS, Access.RESTRICTED) if GRIDS in grids else None
        ),
    )


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print one clear message to stderr and return the Exit to raise."""
    typer.echo(f"twin: {message}", err=True)
    return typer.Exit(code)


@app.callback()
def main(
    store: Annotated[
        str | None,
        typer.Option(
            "--store",
            help="Store for the command: a directory or a postgresql:// URL (its own --store "
            "wins; default TWIN_STORE or twin-data).",
            callback=_store_path,
        ),
    ] = None,
) -> None:
    """Digital-twin map server for a city's municipal assets."""


@app.command("import")
def import_(
    collection: Annotated[
        str,
        typer.Argument(
            help="Layer to import into: pipes, valves, roads, bridges, lights, parks, grids, "
            "sites, or a new custom layer's name."
        ),
    ],
    path: Annotated[
        Path, typer.Argument(help="Any vector file GDAL reads (a zipped shapefile too).")
    ],
    store: StoreOption = DEFAULT_STORE,
    crs: Annotated[
        str | None,
        typer.Option(help="CRS of the coordinates if the file declares none or a wrong one."),
    ] = None,
    coords: Annotated[
        str, typer.Option(help="Offsets to undo: wgs84 (none), gcj02 (Amap, Tencent), bd09.")
    ] = "wgs84",
    encoding: Annotated[
        str | None, typer.Option(help="Text encoding of undeclared attributes, e.g. gbk.")
    ] = None,
    layer: Annotated[str | None, typer.Option(help="Layer of a multi-layer file.")] = None,
    map_: Annotated[
        list[str] | None,
        typer.Option("--map", help="COLUMN=FIELD: read FIELD from COLUMN (COLUMN= drops it)."),
    ] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="FIELD=VALUE for every imported feature.")
    ] = None,
    drop: Annotated[
        list[str] | None,
        typer.Option(
            "--drop",
            help="COLUMN to leave out (every other column no field takes is kept as an extra).",
        ),
    ] = None,
    replace: Annotated[
        bool, typer.Option("--replace", help="Also remove this source's features the file lacks.")
    ] = False,
    source: Annotated[
        str | None, typer.Option(help="Dataset name kept on each feature (default: file stem).")
    ] = None,
    id_column: Annotated[
        str | None, typer.Option(help="Column of stable feature ids (default: found by name).")
    ] = None,
    schema: Annotated[Path | None, typer.Option(help="TOML schema of a custom layer.")] = None,
    new_layer: Annotated[
        bool,
        typer.Option(
            "--new-layer",
            help="COLLECTION may be a new custom layer, its fields taken from the file's columns "
            "(without it, a name that is neither built in nor in the store is refused).",
        ),
    ] = False,
    classification: Annotated[
        str | None, typer.Option(help="Layer classification: public, internal or restricted.")
    ] = None,
    user: Annotated[
        str | None, typer.Option(envvar="TWIN_USER", help="Who imports (default: login name).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Import a file into a layer, atomically, and print what landed, was repaired or rejected."""
    import json

    from importers.errors import ImporterError
    from importers.options import ImportOptions, parse_pairs
    from importers.pipeline import import_file
    from layers.errors import LayersError
    from layers.settings import StoreSettings, open_store

    try:
        options = ImportOptions(
            crs=crs,
            coords=coords,  # type: ignore[arg-type]  # checked by ImportOptions
            encoding=encoding,
            layer=layer,
            mapping=parse_pairs(map_ or [], "--map"),
            constants=parse_pairs(set_ or [], "--set"),
            drop=tuple(drop or ()),
            mode="replace" if replace else "upsert",
            source=source,
            id_column=id_column,
            schema_file=schema,
            classification=classification,
        )
        if not path.exists():
            raise fail(f"no such file: {path}")
        if not (new_layer or schema is not None):
            _check_collection(store, collection)
        db = open_store(StoreSettings(store=store))
        try:
            report = import_file(db, collection, path, options, user=user or _login())
        finally:
            db.close()
    except typer.Exit:  # a user mistake already told in one line
        raise
    except (ImporterError, LayersError) as exc:
        raise fail(str(exc)) from None
    except OSError as exc:  # the file or the store cannot be read or written: say which
        raise fail(f"{exc.filename or path}: {exc.strerror or exc}") from None
    except Exception as exc:  # a bug, not bad input: still one line, and the store is intact
        if os.environ.get("TWIN_DEBUG"):
            raise
        raise fail(
            f"import failed ({type(exc).__name__}: {exc}); nothing was written. "
            "Run with TWIN_DEBUG=1 for the traceback, and please report it.",
            code=2,
        ) from None
    typer.echo(
        json.dumps(report.as_dict(), ensure_ascii=False, indent=2) if as_json else report.text()
    )


def _check_collection(store: StoreRef, collection: str) -> None:
    """Refuse an import into a layer that is neither built in nor in the store (which is left
    untouched): most likely a typo or another word for a built-in one (`lamps` for `lights`)."""
    from layers.models import Access
    from layers.schemas import BUILTIN

    known = dict(BUILTIN)
    if collection not in known and _holds_store(store):
        db = _existing_store(store)
        try:
            known |= {name: info.schema for name, info in db.layers(Access.RESTRICTED).items()}
        finally:
            db.close()
    if collection in known:
        return
    guess = suggest_layer(collection, known.values())
    raise fail(
        f"no layer {collection!r}: "
        + (f"did you mean {guess}? " if guess else f"the layers are {', '.join(known)}. ")
        + "To make a new layer add --new-layer (fields from the file's columns) "
        "or --schema FILE.toml"
    )


def suggest_layer(name: str, schemas: Iterable[LayerSchema]) -> str | None:
    """The known layer `name` most likely means: the one whose name is spelt nearly so, else
    one with such a word in its title or description (`lamps` -> lights, `hydrants` -> valves);
    None when nothing is close."""
    import difflib

    schemas = list(schemas)
    words = {re.sub(r"[^a-z]", "", s.title.lower()): s.name for s in schemas}  # streetlights
    for text in ("title", "description"):
        for s in schemas:
            for word in re.findall(r"[a-z]{4,}", getattr(s, text).lower()):
                words.setdefault(word, s.name)
    for vocabulary in ({s.name: s.name for s in schemas}, words):
        close = difflib.get_close_matches(name.lower(), list(vocabulary), n=1, cutoff=0.75)
        if close:
            return vocabulary[close[0]]
    return None


def _login() -> str:
    """The login name of whoever runs the command (recorded in the import history)."""
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "twin"


def _existing_store(store: StoreRef) -> Store:
    """The store at `store`, or one clear message when there is none."""
    from layers.errors import LayersError
    from layers.settings import StoreSettings, open_store

    try:
        return open_store(StoreSettings(store=store), create=False)
    except LayersError as exc:
        raise fail(f"{exc}: import data first (twin import ...) or run twin demo") from None


def _holds_store(store: StoreRef) -> bool:
    """Whether there is a store at `store` (nothing is made)."""
    from layers.errors import LayersError
    from layers.settings import StoreSettings, open_store

    try:
        open_store(StoreSettings(store=store), create=False).close()
    except LayersError:
        return False
    return True


@app.command("layers")
def layers_(
    store: StoreOption = DEFAULT_STORE,
    as_json: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
) -> None:
    """List what the store holds: counts, bounds, classification and the last import."""
    import json

    from layers.models import Access

    db = _existing_store(store)
    try:
        vectors = db.layers(Access.RESTRICTED)
        rasters = db.rasters(Access.RESTRICTED)
        last: dict[str, object] = {}
        for record in db.history():
            last.setdefault(record.collection, record)
    finally:
        db.close()
    rows = []
    for name, info in vectors.items():
        rec = last.get(name)
        rows.append(
            {
                "name": name,
                "title": info.schema.title,
                "kind": "vector",
                "geometry": info.schema.geometry.value,
                "classification": info.schema.classification.label,
                "features": info.count,
                "bounds": list(info.bounds) if info.bounds else None,
                "last_change": info.last_change,
                "last_import": _record_json(rec),
            }
        )
    for name, r in rasters.items():
        rows.append(
            {
                "name": name,
                "title": r.title,
                "kind": "raster",
                "classification": r.classification.label,
                "path": r.location,
                "last_import": _record_json(last.get(name)),
            }
        )
    if as_json:
        typer.echo(json.dumps(rows, ensure_ascii=False, indent=2))
        return
    if not rows:
        typer.echo(f"{store}: no layers yet (twin import COLLECTION FILE)")
    for row in rows:
        typer.echo(_layer_text(row))


def _record_json(record: object) -> dict | None:
    if record is None:
        return None
    from layers.models import ImportRecord

    assert isinstance(record, ImportRecord)
    return {
        "time": record.time.isoformat(timespec="seconds").replace("+00:00", "Z"),
        "user": record.user,
        "source": record.source,
        "path": record.details.get("path"),
        "mode": record.mode,
        "added": record.added,
        "updated": record.updated,
        "unchanged": record.unchanged,
        "removed": record.removed,
        "rejected": record.rejected,
        "repaired": record.repaired,
    }


def _layer_text(row: dict) -> str:
    if row["kind"] == "raster":
        head = f"{row['name']}  raster  {row['classification']}  {row['path']}"
    else:
        b = row["bounds"]
        where = f"{b[0]:.5f},{b[1]:.5f} .. {b[2]:.5f},{b[3]:.5f}" if b else "no extent"
        head = (
            f"{row['name']}  {row['features']:,} features  {row['geometry']}  "
            f"{row['classification']}  bounds {where}"
        )
    rec = row["last_import"]
    if rec is None:
        return head
    what = (
        f"{rec['added']:,} added, {rec['updated']:,} updated, {rec['unchanged']:,} unchanged, "
        f"{rec['removed']:,} removed, {rec['rejected']:,} rejected"
    )
    return f"{head}\n    last import {rec['time']} by {rec['user']}: {rec['source']} ({rec['mode']}) {what}"


@app.command("export")
def export_(
    collection: Annotated[str, typer.Argument(help="Layer to export.")],
    path: Annotated[
        Path, typer.Argument(help="File to write: .gpkg, .geojson or .fgb (by its suffix).")
    ],
    store: StoreOption = DEFAULT_STORE,
    role: RoleOption = "admin",
    department: DepartmentOption = None,
    policy: PolicyOption = None,
) -> None:
    """Write a layer to a GeoPackage, GeoJSON or FlatGeobuf file (lon/lat, EPSG:4326), as a
    caller of `--role` may see it."""
    from importers.errors import ImporterError
    from importers.export import export_layer
    from layers.errors import LayersError
    from layers.models import Access

    db = _existing_store(store)
    try:
        view = _view(policy, role, department, "public", db)
        result = export_layer(db, collection, path, scope=Access.RESTRICTED, view=view)
    except (ImporterError, LayersError) as exc:
        raise fail(str(exc)) from None
    finally:
        db.close()
    typer.echo(
        f"wrote {result.features:,} features of {collection} to {result.path} ({result.driver})"
    )


@app.command()
def serve(
    store: StoreOption = DEFAULT_STORE,
    host: HostOption = None,
    port: PortOption = None,
    workers: Annotated[
        int,
        typer.Option(
            min=1,
            max=64,
            envvar="TWIN_WORKERS",
            help="Worker processes, forked after loading so they share the layers in memory; "
            "each renders tiles on its own core. More than one serves a read-only snapshot: "
            "an edit reaches only the worker that took it.",
        ),
    ] = 1,
) -> None:
    """Serve the store: OGC API Features and Tiles, TileJSON, style, queries."""
    from layers.errors import StoreError
    from layers.settings import StoreSettings
    from twin.server import serve as run_server
    from twin.settings import ServerSettings

    _existing_store(store).close()
    try:
        settings = ServerSettings()
        if host is not None:
            settings.host = host
        if port is not None:
            settings.port = port
    except ValueError as exc:
        raise fail(f"bad server settings: {exc}") from None
    if settings.policy is not None:
        from layers.policy import Policy, PolicyError

        try:
            Policy.load(settings.policy)
        except PolicyError as exc:
            raise fail(f"TWIN_POLICY: {exc}") from None
    try:
        run_server(settings, StoreSettings(store=store), workers=workers)
    except StoreError as exc:
        raise fail(str(exc)) from None
    except OSError as exc:
        raise fail(f"cannot serve on {settings.host}:{settings.port}: {exc}") from None


@app.command("migrate")
def migrate_(store: StoreOption = DEFAULT_STORE) -> None:
    """Create the store's tables, or bring them up to this twin's version. For a PostgreSQL +
    PostGIS database (`--store postgresql://USER@HOST/DB`); a directory is made ready by any
    command. A store newer than this twin is refused."""
    from layers.errors import LayersError
    from layers.settings import StoreSettings, open_store

    try:
        db = open_store(StoreSettings(store=store), create=True)
    except LayersError as exc:
        raise fail(str(exc)) from None
    try:
        migrate = getattr(db, "migrate", None)
        version = migrate() if callable(migrate) else None
    except LayersError as exc:
        raise fail(str(exc)) from None
    finally:
        db.close()
    where = db.location
    typer.echo(f"store {where} is ready" + (f" (schema version {version})" if version else ""))


def _transfer(source: StoreRef, target: StoreRef) -> None:
    from importers.transfer import copy_store
    from layers.errors import LayersError
    from layers.settings import StoreSettings, open_store

    if str(source) == str(target):
        raise fail("the source and the target are the same store")
    src = _existing_store(source)
    try:
        try:
            dst = open_store(StoreSettings(store=target), create=True)
        except LayersError as exc:
            raise fail(str(exc)) from None
        try:
            done = copy_store(src, dst, user=_login(), told=typer.echo)
        except LayersError as exc:
            raise fail(f"{exc} (the layers told above were copied)") from None
        finally:
            dst.close()
    finally:
        src.close()
    n = sum(done.layers.values())
    typer.echo(
        f"copied {len(done.layers)} layers ({n:,} features) and {len(done.rasters)} rasters "
        f"from {source} to {target}"
    )


@app.command("export-store")
def export_store_(
    target: Annotated[str, typer.Argument(help="The store to copy into: a directory or URL.")],
    store: StoreOption = DEFAULT_STORE,
) -> None:
    """Copy every layer and raster into another store (a directory or a database URL). The
    embedded store into PostgreSQL + PostGIS (made ready as by `twin migrate`) or back; each
    layer lands whole, histories stay where they are."""
    _transfer(store, store_ref(target))


@app.command("import-store")
def import_store_(
    source: Annotated[str, typer.Argument(help="The store to copy from: a directory or URL.")],
    store: StoreOption = DEFAULT_STORE,
) -> None:
    """Copy every layer and raster of another store into this one (see export-store)."""
    _transfer(store_ref(source), store)


keys_app = typer.Typer(
    cls=_Commands,
    help="API keys: each with a role, optionally a department, an area and an expiry.",
    no_args_is_help=True,
)
app.add_typer(keys_app, name="keys")


def _key_ring(store: StoreRef) -> Any:
    """The key ring the servers of `store` use (`twin.access.open_key_ring`)."""
    from twin.access import open_key_ring
    from twin.settings import ServerSettings

    _existing_store(store).close()
    root = store if isinstance(store, Path) else None
    database = store if isinstance(store, str) else None
    return open_key_ring(ServerSettings().keys_file, root, database)


@keys_app.command("add")
def keys_add(
    name: Annotated[str, typer.Argument(help="The key's name (who holds it), unique.")],
    role: Annotated[
        str,
        typer.Option(
            help="viewer (reads internal data), engineer (also restricted "
            "data of its department, and changes data), admin (everything)."
        ),
    ],
    store: StoreOption = DEFAULT_STORE,
    department: Annotated[
        str | None, typer.Option(help="The department (restricted rules may name it).")
    ] = None,
    cells: Annotated[
        str | None,
        typer.Option(help="Comma-separated grid cell codes the key is limited to."),
    ] = None,
    area: Annotated[
        Path | None,
        typer.Option(help="GeoJSON file of the polygon(s) the key is limited to (lon/lat)."),
    ] = None,
    expires: Annotated[
        str | None, typer.Option(help="Last day the key works (YYYY-MM-DD, UTC) or a time.")
    ] = None,
) -> None:
    """Make an API key and print it once (only its hash is kept): send it as
    `Authorization: Bearer <key>`."""
    import json

    from layers.keys import KeyRefused
    from layers.policy import area_geometry

    shape = None
    if area is not None:
        try:
            doc = json.loads(area.read_text(encoding="utf-8"))
            shape = shapely_mapping(area_geometry(doc))
        except (OSError, ValueError) as exc:
            raise fail(f"--area {area}: {exc}") from None
    codes = [c.strip() for c in (cells or "").split(",") if c.strip()]
    ring = _key_ring(store)
    try:
        key, secret = ring.add(
            name, role, department=department, cells=codes, area=shape, expires=expires
        )
    except KeyRefused as exc:
        raise fail(str(exc)) from None
    limits = []
    if key.department:
        limits.append(f"department {key.department}")
    if key.cells:
        limits.append(f"cells {','.join(key.cells)}")
    if key.area:
        limits.append("an area")
    if key.expires:
        limits.append(f"until {key.expires}")
    typer.echo(
        f"key {key.name} ({key.role.label}{', ' if limits else ''}{', '.join(limits)}); "
        "shown once, keep it safe:",
        err=True,
    )
    typer.echo(secret)


def shapely_mapping(geom: Any) -> dict:
    import shapely.geometry

    return dict(shapely.geometry.mapping(geom))


@keys_app.command("list")
def keys_list(
    store: StoreOption = DEFAULT_STORE,
    as_json: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
) -> None:
    """List the keys (never their secrets): name, role, department, limits, expiry, state."""
    import datetime as dt
    import json

    keys = _key_ring(store).keys()
    if as_json:
        typer.echo(json.dumps([k.as_json() for k in keys], indent=2))
        return
    now = dt.datetime.now(dt.UTC)
    for k in keys:
        state = f"revoked {k.revoked}" if k.revoked else ("expired" if k.expired(now) else "active")
        limits = ",".join(k.cells) if k.cells else ("area" if k.area else "-")
        typer.echo(
            f"{k.name:<24} {k.role.label:<9} {k.department or '-':<14} {limits:<16} "
            f"{k.expires or 'no expiry':<26} {state}"
        )
    if not keys:
        typer.echo("no keys: twin keys add NAME --role viewer|engineer|admin", err=True)


@keys_app.command("revoke")
def keys_revoke(
    name: Annotated[str, typer.Argument(help="The key to revoke.")],
    store: StoreOption = DEFAULT_STORE,
) -> None:
    """Revoke a key: refused (401) from the next request on, by every server process."""
    if not _key_ring(store).revoke(name):
        raise fail(f"no active key named {name!r} (twin keys list)")
    typer.echo(f"key {name} revoked")


policy_app = typer.Typer(cls=_Commands, help="The access policy file.", no_args_is_help=True)
app.add_typer(policy_app, name="policy")


@policy_app.command("check")
def policy_check(
    path: Annotated[Path, typer.Argument(help="The policy file (TOML) to check.")],
) -> None:
    """Check a policy file: prints what it classifies, or the line at fault (exit 1)."""
    from layers.policy import Policy, PolicyError

    try:
        policy = Policy.load(path)
    except PolicyError as exc:
        raise fail(str(exc)) from None
    for name, rules in sorted(policy.layers.items()):
        own = "as stored" if rules.rule is None else rules.rule.classification.label
        typer.echo(
            f"layer {name}: {own}; {len(rules.fields)} field rule(s), {len(rules.rows)} row rule(s)"
        )
    for a in policy.areas:
        typer.echo(f"area {a.name}: {a.rule.classification.label}")
    typer.echo(f"ok ({policy.generation})")


tiles_app = typer.Typer(
    cls=_Commands, help="Vector tiles for static hosting.", no_args_is_help=True
)
app.add_typer(tiles_app, name="tiles")


@tiles_app.command("export")
def tiles_export(
    path: Annotated[Path, typer.Argument(help="Archive to write (.pmtiles).")],
    store: StoreOption = DEFAULT_STORE,
    collections: Annotated[
        str | None,
        typer.Option(help="Comma-separated collections (default: every vector collection)."),
    ] = None,
    minzoom: Annotated[int, typer.Option(help="Lowest zoom written.")] = 0,
    maxzoom: Annotated[int, typer.Option(help="Highest zoom written; clients overzoom.")] = 14,
    scope: Annotated[
        str, typer.Option(help="Classification the archive may hold: public, internal, restricted.")
    ] = "public",
    role: RoleOption = "anonymous",
    department: DepartmentOption = None,
    policy: PolicyOption = None,
) -> None:
    """Write a PMTiles archive holding the same vector tiles the server serves to a caller of
    `--role` (by default an anonymous one: a public archive, for static hosting)."""
    from layers.errors import LayersError
    from layers.models import Access
    from tiles.errors import TilesError
    from tiles.export import export_pmtiles
    from tiles.settings import TileSettings

    if path.suffix.lower() != ".pmtiles":
        raise fail(f"{path}: the archive name must end in .pmtiles")
    try:
        db = _existing_store(store)
        try:
            view = _view(policy, role, department, scope, db)
            visible = {
                n: info
                for n, info in db.layers(Access.RESTRICTED).items()
                if view.sees(n, info.schema.classification)
            }
            names = (
                [c.strip() for c in collections.split(",") if c.strip()]
                if collections
                else list(visible)
            )
            unknown = [n for n in names if n not in visible]
            if unknown:
                raise fail(f"unknown collection(s): {', '.join(unknown)}")
            layers = [(view.sift(db.load(n, Access.RESTRICTED))[0], None) for n in names]
        finally:
            db.close()
        report = export_pmtiles(
            path,
            layers,
            minzoom=minzoom,
            maxzoom=maxzoom,
            settings=TileSettings(),
            progress=lambda z, n: typer.echo(f"zoom {z}: {n} tiles"),
        )
    except (ValueError, LayersError, TilesError) as exc:
        raise fail(str(exc)) from None
    typer.echo(f"wrote {report.tiles} tiles ({report.bytes} bytes) to {report.path}")


@app.command("import-osm")
def import_osm_(
    path: Annotated[
        Path, typer.Argument(help="OpenStreetMap extract: .osm, .osm.bz2 or .osm.pbf.")
    ],
    store: StoreOption = DEFAULT_STORE,
    only: Annotated[
        str | None,
        typer.Option(
            "--layers",
            help="Comma-separated layers to import (default: roads, bridges, lights, parks, "
            "pipes, valves, power).",
        ),
    ] = None,
    replace: Annotated[
        bool, typer.Option("--replace", help="Also remove this source's features the file lacks.")
    ] = False,
    source: Annotated[
        str | None, typer.Option(help="Dataset name kept on each feature (default: file name).")
    ] = None,
    user: Annotated[
        str | None, typer.Option(envvar="TWIN_USER", help="Who imports (default: login name).")
    ] = None,
) -> None:
    """Import roads (and the road graph), bridges, lights, parks, pipes, hydrants and power."""
    from importers.errors import ImporterError
    from importers.osm import LAYERS, read_osm, write_extract
    from layers.errors import LayersError
    from layers.settings import StoreSettings, open_store

    layers = tuple(x.strip() for x in only.split(",") if x.strip()) if only else LAYERS
    try:
        extract = read_osm(path, layers=layers)  # read and check before the store is touched
        if not extract.frames:
            raise fail(f"{path.name}: no roads or mapped assets to import")
        db = open_store(StoreSettings(store=store))
        try:
            report = write_extract(
                db,
                extract,
                user=user or _login(),
                source=source,
                mode="replace" if replace else "upsert",
            )
        finally:
            db.close()
    except (ImporterError, LayersError) as exc:
        raise fail(str(exc)) from None
    typer.echo(report.text())


@app.command("import-raster")
def import_raster_(
    collection: Annotated[str, typer.Argument(help="Raster collection name, e.g. dem.")],
    path: Annotated[
        str,
        typer.Argument(
            help="GeoTIFF, SRTM .hgt (zipped too), or any raster GDAL reads; or the URL of a "
            "Cloud-Optimised GeoTIFF (https://, s3://), which a PostGIS store registers where "
            "it is (every server reads it there) and the embedded store copies in."
        ),
    ],
    store: StoreOption = DEFAULT_STORE,
    crs: Annotated[
        str | None, typer.Option(help="CRS of the raster when the file declares none.")
    ] = None,
    title: Annotated[str | None, typer.Option(help="Title shown in the catalogue.")] = None,
    classification: Annotated[
        str, typer.Option(help="Collection classification: public, internal or restricted.")
    ] = "public",
    user: Annotated[
        str | None, typer.Option(envvar="TWIN_USER", help="Who imports (default: login name).")
    ] = None,
) -> None:
    """Store a raster (a DEM, imagery) as a Cloud-Optimised GeoTIFF collection."""
    from importers.errors import ImporterError
    from importers.raster import check_raster, import_raster, link_raster
    from layers.errors import LayersError
    from layers.models import Access
    from layers.settings import StoreSettings, open_store
    from layers.store import is_remote

    try:
        access = Access.parse(classification)
    except ValueError as exc:
        raise fail(str(exc)) from None
    linked = is_remote(path)
    if linked and crs:
        raise fail("--crs is for a local file: a raster read over the network must declare its CRS")
    try:
        if not linked:
            check_raster(path, crs=crs)  # refuse bad input before the store is touched
        db = open_store(StoreSettings(store=store))
        try:
            if linked:
                report = link_raster(
                    db, collection, path, user=user or _login(), title=title,
                    classification=access,
                )  # fmt: skip
            else:
                report = import_raster(
                    db,
                    collection,
                    path,
                    user=user or _login(),
                    title=title,
                    crs=crs,
                    classification=access,
                )
        finally:
            db.close()
    except (ImporterError, LayersError) as exc:
        raise fail(str(exc)) from None
    typer.echo("\n".join(report.lines()))


@app.command("demo")
def demo_(
    store: StoreOption = DEFAULT_STORE,
    host: HostOption = None,
    port: PortOption = None,
    size: Annotated[
        str, typer.Option(help="small (a 2 km district), city (8 km) or large (~1M pipes).")
    ] = "small",
    seed: Annotated[int, typer.Option(help="Same seed, same city, same file bytes.")] = 1,
    no_serve: Annotated[
        bool, typer.Option("--no-serve", help="Build the store, then stop instead of serving.")
    ] = False,
) -> None:
    """Build the demo twin (a generated district of Jiangxia, Wuhan) into an empty store, then
    serve it. No network needed."""
    from importers.demo import build_demo, is_empty
    from importers.demo_city import SIZES
    from importers.errors import ImporterError
    from layers.errors import LayersError
    from layers.settings import StoreSettings, open_store

    if size not in SIZES:
        raise fail(f"--size {size!r}: use small, city or large")
    try:
        db = open_store(StoreSettings(store=store))
        try:
            if is_empty(db):
                report = build_demo(db, size=size, seed=seed, user=_login(), progress=typer.echo)
                typer.echo(report.text())
            elif no_serve:
                typer.echo(f"{store} already holds data: left as it is")
            else:
                typer.echo(f"{store} already holds data: serving it as it is")
        finally:
            db.close()
    except (ImporterError, LayersError) as exc:
        raise fail(str(exc)) from None
    if not no_serve:
        serve(store=store, host=host, port=port)


if __name__ == "__main__":  # pragma: no cover
    app()
