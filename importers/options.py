"""What a caller can ask of an import: `ImportOptions`, the one settings object of the pipeline."""

from __future__ import annotations

import codecs
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args

from importers.errors import InvalidOption
from layers.models import Access
from layers.store import WriteMode

Coords = Literal["wgs84", "gcj02", "bd09"]
"""Which datum offset the coordinates carry: none, China's GCJ-02, or Baidu's BD-09."""


@dataclass(frozen=True)
class ImportOptions:
    """Options of one import; every field has a default that suits a plain file.

    - `crs`: the coordinates' CRS when the file does not declare one (or declares it wrongly),
      anything pyproj reads (`EPSG:4547`, `4490`, a WKT string).
    - `layer` and `encoding` concern reading a file (`import_file`); everything else applies
      to `ingest` as well.
    - `coords`: `gcj02` or `bd09` undoes the Chinese web-map offsets to WGS84.
    - `encoding`: text encoding of the attributes (`gbk`), for files that do not declare it.
    - `layer`: which layer of a multi-layer file (GeoPackage, KML, a zip) to read.
    - `mapping`: source column -> schema field, on top of the schema's aliases (an empty
      field name drops the column).
    - `drop`: source columns left out on purpose (every other column no field takes is kept
      as an extra attribute).
    - `constants`: schema field -> value given to every feature (`network=sewer`).
    - `mode`: `upsert` adds and updates by id; `replace` also removes this source's features
      that the new file no longer has.
    - `source`: the dataset's name, stored on every feature (default: the file's stem;
      `ingest` takes it as an argument instead).
    - `id_column`: the source column holding stable feature ids (default: found by alias).
    - `id_prefix`: put before every id to keep sources apart (default: the source name;
      `""` for none).
    - `schema_file`: a TOML schema for a custom layer (see `layers.schemas.load_schema_file`).
    - `classification`: public, internal or restricted, for the layer as a whole.
    """

    crs: str | None = None
    coords: Coords = "wgs84"
    encoding: str | None = None
    layer: str | None = None
    mapping: Mapping[str, str] = field(default_factory=dict)
    drop: tuple[str, ...] = ()
    constants: Mapping[str, str] = field(default_factory=dict)
    mode: WriteMode = "upsert"
    source: str | None = None
    id_column: str | None = None
    id_prefix: str | None = None
    schema_file: Path | None = None
    classification: str | None = None

    def __post_init__(self) -> None:
        if self.coords not in get_args(Coords):
            raise InvalidOption(f"--coords {self.coords!r}: use one of wgs84, gcj02, bd09")
        if self.mode not in ("upsert", "replace"):
            raise InvalidOption(f"unknown import mode {self.mode!r}: use upsert or replace")
        if self.encoding is not None:
            try:
                codecs.lookup(self.encoding)
            except LookupError:
                raise InvalidOption(
                    f"--encoding {self.encoding!r} is not a known encoding"
                ) from None
        if self.classification is not None:
            try:
                Access.parse(self.classification)
            except ValueError as exc:
                raise InvalidOption(str(exc)) from None
        if self.source is not None and not self.source.strip():
            raise InvalidOption("the source name must not be blank")


def parse_pairs(values: Iterable[str], option: str) -> dict[str, str]:
    """`{"a": "b"}` from `["a=b"]`, as given to `--map` and `--set`; `InvalidOption` otherwise."""
    out: dict[str, str] = {}
    for raw in values:
        key, sep, value = raw.partition("=")
        if not sep or not key.strip():
            raise InvalidOption(f"{option} {raw!r}: write it as NAME=VALUE")
        out[key.strip()] = value.strip()
    return out
