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


if __name__ == "__main__":  # pragma: no cover
    app()
