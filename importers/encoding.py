"""Text encodings: decode attribute bytes whose encoding is undeclared, wrong or mixed.

Files are read either normally (GDAL decodes using the declared encoding) or, when the
encoding is unknown or the normal read fails, as *raw*: every byte mapped to the Latin-1
character of the same number, which loses nothing. Raw strings are then decoded here one
distinct value at a time, choosing between UTF-8, GBK and Latin-1 by what the bytes can be:

- valid UTF-8 that decodes to plausible text wins (random GBK or Latin-1 bytes are almost
  never valid multi-byte UTF-8);
- otherwise GBK when the bytes decode and most characters are common (GB2312) Chinese;
- otherwise Windows-1252 / Latin-1, GDAL's own default for undeclared shapefiles.

A declared or requested encoding is tried first. Normally-read text is also checked for the
one mix-up that can be undone reliably: UTF-8 that was read as Latin-1 somewhere upstream.
"""

from __future__ import annotations

import codecs
from collections import Counter
from collections.abc import Callable, Hashable

import numpy as np
import pandas as pd

_GB = {"gbk", "gb2312", "gb18030", "hz"}
_SINGLE_BYTE_WEST = {"iso8859-1", "cp1252"}


def codec_name(encoding: str) -> str:
    """The canonical Python codec name of `encoding` (`cp936` -> `gbk`)."""
    return codecs.lookup(encoding).name


def _plausible_utf8(text: str) -> bool:
    """Whether decoded UTF-8 looks like text rather than an accident of other bytes."""
    wide = [ord(c) for c in text if ord(c) >= 0x80]
    if not wide:
        return True
    if any(c < 0xA0 for c in wide):  # C1 control characters: not text
        return False
    # A 3-byte character, or letters of the Latin, Greek and Cyrillic blocks: real UTF-8.
    # Two-byte sequences decoding to Hebrew, Arabic, ... are the typical accident of GBK pairs.
    return any(c >= 0x800 for c in wide) or all(c < 0x250 or 0x370 <= c < 0x530 for c in wide)


def _plausible_gb(text: str) -> bool:
    """Whether GBK-decoded text is mostly common Chinese (characters of GB2312)."""
    wide = [c for c in text if ord(c) >= 0x80]
    if not wide:
        return True
    common = 0
    for c in wide:
        try:
            c.encode("gb2312")
            common += 1
        except UnicodeEncodeError:
            pass
    return common * 2 >= len(wide)


def _try(raw: bytes, codec: str) -> str | None:
    try:
        return raw.decode(codec)
    except UnicodeDecodeError:
        return None


def decode_bytes(raw: bytes, preferred: str | None = None) -> tuple[str, str]:
    """Decode one value's bytes; returns the text and the codec that was used.

    `preferred` (a declared or requested encoding) is tried first when its result is
    plausible; UTF-8 next, then GBK, then Windows-1252, then Latin-1 (which never fails).
    """
    if raw.isascii():
        return raw.decode("ascii"), "ascii"
    pref = codec_name(preferred) if preferred else None
    if pref in _GB:
        text = _try(raw, "gb18030")
        if text is not None and _plausible_gb(text):
            return text, "gbk"
    elif pref is not None and pref != "utf-8":
        text = _try(raw, pref)
        if text is not None and pref not in _SINGLE_BYTE_WEST:
            return text, pref
    text = _try(raw, "utf-8")
    if text is not None and (pref == "utf-8" or _plausible_utf8(text)):
        return text, "utf-8"
    if pref is not None and pref not in _GB:
        text = _try(raw, pref)
        if text is not None:
            return text, pref
    text = _try(raw, "gb18030")
    if text is not None and (_plausible_gb(text) or pref in _GB):
        return text, "gbk"
    text = _try(raw, "cp1252")
    if text is not None:
        return text, "cp1252"
    return raw.decode("latin-1"), "latin-1"


def from_raw(text: str, preferred: str | None = None) -> tuple[str, str]:
    """Decode a string read as raw Latin-1 (one character per byte)."""
    return decode_bytes(text.encode("latin-1"), preferred)


def undo_latin1_mojibake(text: str) -> tuple[str, str]:
    """Undo UTF-8 that was decoded as Latin-1 (`æ­¦æ±` -> `武汉`); other text is returned as is."""
    if text.isascii() or max(map(ord, text)) > 0xFF:
        return text, "ascii" if text.isascii() else "utf-8"
    fixed = _try(text.encode("latin-1"), "utf-8")
    if fixed is not None and fixed != text and _plausible_utf8(fixed):
        return fixed, "utf-8 read as latin-1"
    return text, "latin-1"


def _map_unique(
    values: pd.Series, fix: Callable[[str], tuple[str, str]], used: Counter[str]
) -> pd.Series:
    """Apply `fix` to each distinct string of `values` (a Python loop over distinct values only)."""
    codes, uniques = pd.factorize(values, use_na_sentinel=True)
    if len(uniques) == 0:
        return values
    counts = np.bincount(codes[codes >= 0], minlength=len(uniques))
    fixed: list[Hashable] = []
    changed = False
    for u, n in zip(uniques, counts.tolist(), strict=True):
        if isinstance(u, bytes):
            u = u.decode("latin-1")
        if not isinstance(u, str) or u.isascii():
            fixed.append(u)
            continue
        new, codec = fix(u)
        used[codec] += n
        changed = changed or new != u
        fixed.append(new)
    if not changed:
        return values
    arr = np.array(fixed, dtype=object)
    out = np.where(codes >= 0, arr[np.clip(codes, 0, None)], None)
    return pd.Series(out, index=values.index, dtype=object).astype(values.dtype)


def fix_text(
    frame: pd.DataFrame, *, raw: bool, preferred: str | None = None
) -> tuple[pd.DataFrame, Counter[str]]:
    """Decode or repair every text column and column name of `frame`.

    With `raw`, the frame was read as raw Latin-1 and every value is decoded; otherwise only
    UTF-8-read-as-Latin-1 mojibake is undone. Returns the new frame and how many values each
    codec decoded (`{"gbk": 12, "utf-8": 3}`), ASCII not counted.
    """
    used: Counter[str] = Counter()

    def fix(text: str) -> tuple[str, str]:
        return from_raw(text, preferred) if raw else undo_latin1_mojibake(text)

    out = frame
    for col in frame.columns:
        s = frame[col]
        if s.dtype == object or isinstance(s.dtype, pd.StringDtype):
            new = _map_unique(s, fix, used)
            if new is not s:
                if out is frame:
                    out = frame.copy()
                out[col] = new
    renames = {}
    for col in frame.columns:
        if isinstance(col, str) and not col.isascii():
            new_name, _ = fix(col)
            if new_name != col:
                renames[col] = new_name
    if renames:
        out = out.rename(columns=renames)
    return out, used


def describe(used: Counter[str]) -> str | None:
    """A one-line note of which encodings decoded the text, or None when all was plain."""
    parts = [f"{codec} ({n} values)" for codec, n in used.most_common() if codec != "ascii"]
    return "text decoded as " + ", ".join(parts) if parts else None
