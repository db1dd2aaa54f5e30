"""The `twin` command line: import, inspect, export, serve."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    name="twin",
    help="Digital-twin map server for a city's municipal assets.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

StoreOption = Annotated[
    Path,
    typer.Option(
        "--store",
        envvar="TWIN_STORE",
        help="Store directory (holds twin.gpkg and rasters/).",
        show_default=True,
    ),
]
DEFAULT_STORE = Path("twin-data")


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print one clear message to stderr and return the Exit to raise."""
    typer.echo(f"twin: {message}", err=True)
    return typer.Exit(code)


@app.command()
def serve(
    store: StoreOption = DEFAULT_STORE,
    host: Annotated[
        str | None, typer.Option(help="Address to listen on (default 127.0.0.1, TWIN_HOST).")
    ] = None,
    port: Annotated[
        int | None, typer.Option(help="Port to listen on (default 8000, TWIN_PORT).")
    ] = None,
) -> None:
    """Serve the store: OGC API Features and Tiles, TileJSON, style, queries."""
    from layers.errors import StoreError
    from layers.settings import StoreSettings
    from twin.server import serve as run_server
    from twin.settings import ServerSettings

    if not (store / "twin.gpkg").exists():
        raise fail(f"no store at {store}: import data first (twin import ...) or run twin demo")
    try:
        settings = ServerSettings()
        if host is not None:
            settings.host = host
        if port is not None:
            settings.port = port
    except ValueError as exc:
        raise fail(f"bad server settings: {exc}") from None
    try:
        run_server(settings, StoreSettings(store=store))
    except StoreError as exc:
        raise fail(str(exc)) from None


tiles_app = typer.Typer(help="Vector tiles for static hosting.", no_args_is_help=True)
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
) -> None:
    """Write a PMTiles archive holding the same vector tiles the server serves."""
    from layers.errors import LayersError
    from layers.gpkg import GeoPackageStore
    from layers.models import Access
    from tiles.errors import TilesError
    from tiles.export import export_pmtiles
    from tiles.settings import TileSettings

    if path.suffix.lower() != ".pmtiles":
        raise fail(f"{path}: the archive name must end in .pmtiles")
    if not (store / "twin.gpkg").exists():
        raise fail(f"no store at {store}: import data first (twin import ...) or run twin demo")
    try:
        access = Access.parse(scope)
        db = GeoPackageStore(store, create=False)
        try:
            visible = db.layers(access)
            names = (
                [c.strip() for c in collections.split(",") if c.strip()]
                if collections
                else list(visible)
            )
            unknown = [n for n in names if n not in visible]
            if unknown:
                raise fail(f"unknown collection(s): {', '.join(unknown)}")
            layers = [(db.load(n, access), None) for n in names]
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


if __name__ == "__main__":  # pragma: no cover
    app()
