"""OpenStreetMap tag values into typed attributes: lanes, speeds, diameters, dates, voltages.

OSM values are free text (`"2;3"`, `"30 mph"`, `'4"'`, `"110000;20000"`), and osmnx's graph
simplification turns the values of merged ways into lists. Each parser takes either, and
returns None for what it cannot read rather than guessing.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from typing import Any

_NUMBER = re.compile(r"[-+]?\d+(?:[.,]\d+)?")
_MPH = 1.609344
_INCH_MM = 25.4


def values(raw: Any) -> list[str]:
    """The distinct non-empty values of a tag, splitting OSM's `;` lists, in order."""
    if raw is None or (isinstance(raw, float) and math.isnan(raw)):
        return []
    items = raw if isinstance(raw, list | tuple) else [raw]
    out: list[str] = []
    for item in items:
        if item is None or (isinstance(item, float) and math.isnan(item)):
            continue
        for part in str(item).split(";"):
            part = part.strip()
            if part and part not in out:
                out.append(part)
    return out


def text(raw: Any) -> str | None:
    """A tag as one string; several values are joined with `;` as OSM writes them."""
    vals = values(raw)
    return ";".join(vals) if vals else None


def first(raw: Any) -> str | None:
    """The first value of a tag."""
    vals = values(raw)
    return vals[0] if vals else None


def flag(raw: Any) -> bool | None:
    """A yes/no-style tag as a boolean: any value but `no`/`false`/`0` counts as yes."""
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, list):
        flags = [flag(v) for v in raw]
        return any(bool(f) for f in flags) if any(f is not None for f in flags) else None
    vals = values(raw)
    if not vals:
        return None
    return any(v.lower() not in ("no", "false", "0") for v in vals)


def number(raw: Any) -> float | None:
    """The largest number found in a tag's values (`"2;3"` -> 3, `"3.5 m"` -> 3.5)."""
    found = [float(m.replace(",", ".")) for v in values(raw) for m in _NUMBER.findall(v)]
    return max(found) if found else None


def integer(raw: Any) -> int | None:
    """The largest whole number in a tag (`lanes`, `cables`); None for fractions."""
    n = number(raw)
    return int(n) if n is not None and float(n).is_integer() else None


def speed_kmh(raw: Any) -> float | None:
    """`maxspeed` in km/h: `50`, `30 mph`, lists; None for `none`, `walk`, `RO:urban`..."""
    best: float | None = None
    for v in values(raw):
        m = _NUMBER.match(v.strip())
        if not m:
            continue
        kmh = float(m.group().replace(",", "."))
        if "mph" in v.lower():
            kmh *= _MPH
        best = kmh if best is None else max(best, kmh)
    return round(best, 1) if best is not None else None


def _measure(
    raw: Any, factors: tuple[tuple[tuple[str, ...], float], ...], default: float
) -> float | None:
    """The first number of a tag times the factor of the unit written after it."""
    for v in values(raw):
        m = _NUMBER.search(v)
        if not m:
            continue
        x = float(m.group().replace(",", "."))
        unit = v[m.end() :].strip().lower()
        factor = next((f for prefixes, f in factors if unit.startswith(prefixes)), default)
        return round(x * factor, 3)
    return None


def length_mm(raw: Any) -> float | None:
    """A diameter in millimetres: OSM's default unit is mm; inches (`4"`), cm and m convert."""
    return _measure(
        raw, ((("mm",), 1.0), (('"', "in", "″"), _INCH_MM), (("cm",), 10.0), (("m",), 1000.0)), 1.0
    )


def metres(raw: Any) -> float | None:
    """A length or height in metres (`"5"`, `"5 m"`, `"16'"` feet)."""
    return _measure(raw, ((("'", "ft", "′"), 0.3048),), 1.0)


def voltage_kv(raw: Any) -> float | None:
    """The highest voltage of a `voltage` tag (volts, `;`-separated), in kV."""
    v = number(raw)
    return v / 1000.0 if v is not None else None


def date(raw: Any) -> dt.date | None:
    """An ISO date (`2021-06-01`, `2021-06`, `2021`) as a date; None otherwise."""
    for v in values(raw):
        m = re.fullmatch(r"(\d{4})(?:-(\d{2}))?(?:-(\d{2}))?", v)
        if m:
            try:
                return dt.date(int(m.group(1)), int(m.group(2) or 1), int(m.group(3) or 1))
            except ValueError:
                continue
    return None


# Condition words mapped to the 1 (good) .. 5 (critical) inspection scale.
_CONDITION = {
    "excellent": 1,
    "very_good": 1,
    "good": 2,
    "fair": 3,
    "satisfactory": 3,
    "poor": 4,
    "bad": 4,
    "deficient": 4,
    "very_bad": 5,
    "critical": 5,
    "failed": 5,
}


def condition(raw: Any) -> int | None:
    """An inspection condition 1..5 from a digit or a word (good, fair, poor, critical)."""
    for v in values(raw):
        key = v.strip().lower().replace(" ", "_")
        if key in _CONDITION:
            return _CONDITION[key]
        if key.isdigit() and 1 <= int(key) <= 5:
            return int(key)
    return None
