"""The import report: what was read, what landed, what was repaired or rejected, what was kept."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from importers.cleaning import ValueNote
from layers.layer import json_value

# How many rejected or repaired records the text report lists one by one.
LISTED = 20


@dataclass(frozen=True)
class RowNote:
    """One record rejected or repaired: its number in the file (1-based), why, its source id.

    `reason` is shared by every record rejected for the same cause (the report counts them
    by it); `detail`, when there is one, says it for this record with its own numbers.
    """

    row: int
    reason: str
    source_id: str | None = None
    detail: str | None = None

    @property
    def words(self) -> str:
        """Why, for this record: `coordinate 1e+308 is out of range`, or the shared reason."""
        return self.detail or self.reason

    def text(self) -> str:
        """`record 12 (FACILITYID SL1477613): empty geometry`."""
        sid = f" ({self.source_id})" if self.source_id else ""
        return f"record {self.row}{sid}: {self.words}"

    def as_dict(self) -> dict[str, Any]:
        """`{"row", "reason", "source_id"}`, the reason in this record's own words."""
        return {"row": self.row, "reason": self.words, "source_id": self.source_id}


@dataclass
class ImportReport:
    """Everything one import did. `landed` is true when the write happened."""

    collection: str
    source: str
    user: str
    path: str | None = None
    driver: str | None = None
    layer: str | None = None
    crs: str | None = None
    coords: str = "wgs84"
    id_column: str | None = None
    mode: str = "upsert"
    read: int = 0
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    removed: int = 0
    rejected: list[RowNote] = field(default_factory=list)
    repaired: list[RowNote] = field(default_factory=list)
    normalised: dict[str, int] = field(default_factory=dict)
    fields: dict[str, str] = field(default_factory=dict)
    """schema field -> source column it was read from"""
    constants: dict[str, Any] = field(default_factory=dict)
    computed: dict[str, str] = field(default_factory=dict)
    """schema field -> how it was computed, for the features that lacked it"""
    cleaned: list[ValueNote] = field(default_factory=list)
    extra_columns: dict[str, str] = field(default_factory=dict)
    """source column -> the extra attribute keeping it (its own name unless it had to change)"""
    dropped_columns: list[str] = field(default_factory=list)
    """source columns dropped on purpose (`--drop`, `--map COLUMN=`)"""
    warnings: list[str] = field(default_factory=list)
    """what the user should know landed differently from the file (no attributes, ...)"""
    notes: list[str] = field(default_factory=list)
    landed: bool = False

    @property
    def imported(self) -> int:
        """Features of the file now in the layer: added, updated or unchanged."""
        return self.added + self.updated + self.unchanged

    def rejected_by_reason(self) -> dict[str, int]:
        """How many records were rejected for each reason."""
        out: dict[str, int] = {}
        for r in self.rejected:
            out[r.reason] = out.get(r.reason, 0) + 1
        return out

    def summary(self) -> dict[str, Any]:
        """The short form kept in the store's import history."""
        return {
            "path": self.path,
            "driver": self.driver,
            "layer": self.layer,
            "crs": self.crs,
            "coords": self.coords,
            "ids": self.id_column,
            "read": self.read,
            "rejected": len(self.rejected),
            "repaired": len(self.repaired),
            "rejected_by_reason": self.rejected_by_reason(),
            "extra_columns": dict(self.extra_columns),
            "dropped_columns": list(self.dropped_columns),
            "warnings": self.warnings,
        }

    def as_dict(self) -> dict[str, Any]:
        """Plain-JSON form, every rejected and repaired record included."""
        return {
            "collection": self.collection,
            "source": self.source,
            "user": self.user,
            "path": self.path,
            "driver": self.driver,
            "layer": self.layer,
            "crs": self.crs,
            "coords": self.coords,
            "id_column": self.id_column,
            "mode": self.mode,
            "landed": self.landed,
            "read": self.read,
            "imported": self.imported,
            "added": self.added,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "removed": self.removed,
            "rejected": [r.as_dict() for r in self.rejected],
            "repaired": [r.as_dict() for r in self.repaired],
            "normalised": dict(self.normalised),
            "fields": dict(self.fields),
            "constants": {k: json_value(v) for k, v in self.constants.items()},
            "computed": dict(self.computed),
            "cleaned": [
                {"field": c.field, "message": c.message, "count": c.count, "examples": c.examples}
                for c in self.cleaned
            ],
            "extra_columns": dict(self.extra_columns),
            "dropped_columns": list(self.dropped_columns),
            "warnings": list(self.warnings),
            "notes": list(self.notes),
        }

    def text(self) -> str:
        """The report as the CLI prints it."""
        where = self.path or "data"
        how = ", ".join(x for x in (self.driver, f"layer {self.layer}" if self.layer else "") if x)
        lines = [
            f"{self.collection} <- {where}"
            + (f" ({how})" if how else "")
            + f", source {self.source!r}",
            f"  read        {self.read:,} records",
        ]
        if self.landed:
            lines.append(
                f"  imported    {self.imported:,}: {self.added:,} added, {self.updated:,} updated, "
                f"{self.unchanged:,} unchanged"
                + (f"; {self.removed:,} removed" if self.mode == "replace" else "")
            )
        else:
            lines.append("  imported    nothing")
        for warning in self.warnings:
            lines.append(f"  warning     {warning}")
        lines.append(f"  rejected    {len(self.rejected):,}")
        lines += _listed(self.rejected)
        lines.append(f"  repaired    {len(self.repaired):,}")
        lines += _listed(self.repaired)
        for what, n in self.normalised.items():
            lines.append(f"  normalised  {what}: {n:,}")
        if self.crs:
            moved = "" if self.coords == "wgs84" else f"; {self.coords.upper()} offsets undone"
            lines.append(f"  coordinates {self.crs}{moved}")
        if self.id_column:
            lines.append(f"  ids         from {self.id_column}")
        if self.fields:
            lines.append(
                "  fields      " + ", ".join(f"{k} <- {v}" for k, v in self.fields.items())
            )
        if self.constants:
            lines.append(
                "  set         "
                + ", ".join(f"{k} = {json_value(v)}" for k, v in self.constants.items())
            )
        for k, how in self.computed.items():
            lines.append(f"  computed    {k}: {how}")
        for c in self.cleaned:
            lines.append(f"  cleaned     {c.text()}")
        if self.extra_columns:
            lines.append(
                "  kept as extra: "
                + ", ".join(
                    c if c == name else f"{c} as {name}" for c, name in self.extra_columns.items()
                )
            )
        if self.dropped_columns:
            lines.append("  dropped     " + ", ".join(self.dropped_columns))
        for note in self.notes:
            lines.append(f"  note        {note}")
        return "\n".join(lines)


def _listed(rows: list[RowNote]) -> list[str]:
    out = [f"    {r.text()}" for r in rows[:LISTED]]
    if len(rows) > LISTED:
        out.append(f"    ... and {len(rows) - LISTED:,} more (--json lists them all)")
    return out
