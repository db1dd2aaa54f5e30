"""Stable feature ids, so that importing a file again updates features instead of adding twins.

In order of preference: the column named with `--id-column`; a column named by the schema's
`id_aliases`, then by `layers.schemas.COMMON_ID_ALIASES`; the format's own stored feature id
(a GeoPackage primary key, an Esri OBJECTID); and, without any of those, an id made from the
record's content. A candidate column with empty or repeated values is passed over, and the
report says so. Content ids keep identical records apart by their order of appearance: one
source record is one feature.

Every id is prefixed with the source name (`toronto-mains:SL1477613`), so two cities'
files that both number their pipes 1, 2, 3 do not overwrite each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import shapely

from importers.errors import InvalidOption
from importers.mapping import column_key
from layers.models import LayerSchema
from layers.schemas import COMMON_ID_ALIASES

CONTENT = "content"
"""`IdChoice.column` when ids were made from each record's content."""


@dataclass
class IdChoice:
    """The ids of every row and where they came from."""

    ids: np.ndarray
    """One id per source row (object array of str); rows in `rejected` hold None."""
    column: str
    """The source column, the format's id column, or `CONTENT`."""
    rejected: dict[int, str] = field(default_factory=dict)
    """row -> reason, for rows of an explicit `--id-column` that cannot give an id"""
    notes: list[str] = field(default_factory=list)


def as_id_text(values: pd.Series | np.ndarray) -> pd.Series:
    """Ids as text: whole numbers without `.0`, text stripped; empty -> NA."""
    s = pd.Series(values).reset_index(drop=True)
    if pd.api.types.is_bool_dtype(s.dtype):
        s = s.astype(object)
    if pd.api.types.is_float_dtype(s.dtype):
        whole = s.dropna()
        if (whole == np.round(whole)).all() and (whole.abs() < 2**53).all():
            s = s.astype("Int64")
    if pd.api.types.is_integer_dtype(s.dtype):
        out = s.astype("string")
    else:
        out = s.astype(object).where(s.notna(), None).astype("string").str.strip()
    return out.mask(out == "")


def _problems(ids: pd.Series, raw: pd.Series | None = None) -> tuple[int, int]:
    """How many ids are empty, and how many repeat an earlier one.

    Whole-number source values (`raw`) are checked as numbers, which is faster than as text
    and gives the same answer.
    """
    if raw is not None and pd.api.types.is_integer_dtype(raw.dtype):
        ids = raw
    empty = int(ids.isna().sum())
    repeated = int(ids[ids.notna()].duplicated().sum()) if empty else int(ids.duplicated().sum())
    return empty, repeated


def _prefixed(ids: pd.Series, prefix: str) -> np.ndarray:
    """Ids as an object array of str (None where empty), each prefixed with `prefix:`."""
    text = ids.to_numpy(dtype=object, na_value=None)
    if prefix:
        head = prefix + ":"
        text = np.array([None if t is None else head + t for t in text.tolist()], dtype=object)
    return text


def content_ids(frame: pd.DataFrame, geometry: np.ndarray) -> np.ndarray:
    """Ids from each record's attributes and geometry; repeats get `-2`, `-3`, ..."""
    attrs = frame.drop(columns=[c for c in frame.columns if c == "geometry"])
    h = pd.util.hash_array(
        np.asarray(shapely.to_wkb(geometry, byte_order=1, output_dimension=2), dtype=object),
        categorize=False,
    )
    if attrs.shape[1]:
        ha = pd.util.hash_pandas_object(attrs.astype(str), index=False).to_numpy(np.uint64)
        with np.errstate(over="ignore"):
            h = h * np.uint64(0x9E3779B97F4A7C15) ^ ha
    hexes = pd.Series(h).map("{:016x}".format)
    seen = hexes.groupby(hexes).cumcount().to_numpy()
    out = hexes.to_numpy(dtype=object)
    again = seen > 0
    out[again] = out[again] + "-" + (seen[again] + 1).astype(str).astype(object)
    return out


def choose_ids(
    frame: pd.DataFrame,
    schema: LayerSchema,
    geometry: np.ndarray,
    *,
    prefix: str,
    explicit: str | None = None,
    fid: np.ndarray | None = None,
    fid_column: str | None = None,
) -> IdChoice:
    """Ids for every row of `frame` (see the module docstring for the order of preference)."""
    columns = [str(c) for c in frame.columns if c != "geometry"]
    if explicit:
        col = next((c for c in columns if column_key(c) == column_key(explicit)), None)
        if col is None:
            raise InvalidOption(
                f"--id-column {explicit}: the file has no such column; its columns are "
                + ", ".join(columns)
            )
        ids = as_id_text(frame[col])
        rejected = {int(i): f"no id: {col} is empty" for i in np.flatnonzero(ids.isna())}
        first = pd.Series(np.arange(len(ids))).groupby(ids.fillna("\0")).transform("first")
        dup = ids.notna() & ids.duplicated()
        for i in np.flatnonzero(dup):
            rejected[int(i)] = f"id {ids.iloc[i]!r} of {col} repeats row {int(first.iloc[i]) + 1}"
        out = _prefixed(ids.mask(dup), prefix)
        return IdChoice(out, col, rejected)
    notes: list[str] = []
    wanted = [*schema.id_aliases, *COMMON_ID_ALIASES]
    seen: set[str] = set()
    for alias in wanted:
        for col in columns:
            if col in seen or column_key(col) != column_key(alias):
                continue
            seen.add(col)
            ids = as_id_text(frame[col])
            empty, repeated = _problems(ids, frame[col])
            if not empty and not repeated:
                return IdChoice(_prefixed(ids, prefix), col, notes=notes)
            what = " and ".join(
                x
                for x in (
                    f"{empty:,} empty" if empty else "",
                    f"{repeated:,} repeated" if repeated else "",
                )
                if x
            )
            notes.append(f"ids not taken from {col}: it has {what} values")
    if fid is not None and len(fid) == len(frame):
        ids = as_id_text(pd.Series(fid))
        if _problems(ids, pd.Series(fid)) == (0, 0):
            return IdChoice(_prefixed(ids, prefix), fid_column or "fid", notes=notes)
    notes.append(
        "no id column: ids made from each record's content (a changed record gets a new id; "
        "use --replace to drop the old one)"
    )
    ids = pd.Series(content_ids(frame, geometry), dtype="string")
    return IdChoice(_prefixed(ids, prefix), CONTENT, notes=notes)
