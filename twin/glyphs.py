"""Map label glyphs as MapLibre asks for them: 256 codepoints at a time, each glyph a signed
distance field (SDF) of its outline at 24 px with a 3 px border, in the protocol buffer layout
of the glyph ranges (`glyphs.proto`), drawn from the font the project carries (DejaVu Sans,
from npm like MapLibre) and, for what it lacks, fonts on this machine (Pillow's FreeType).

So the style can name a glyph URL of the server's own: no label needs another host. Fonts are
looked up in `FONT_FILES` order, the first holding a codepoint draws it; a range none holds is
an empty (valid) range.
"""

from __future__ import annotations

import functools
import unicodedata
from pathlib import Path

import numpy as np
from PIL import ImageFont
from scipy import ndimage

from twin.webmap import FONT_DIST, default_web_dir

SIZE = 24
"""Glyphs are drawn at 24 px (what MapLibre scales from)."""
BORDER = 3
"""Pixels of field around each glyph's ink."""
RADIUS = 8.0
CUTOFF = 0.25
"""The field spans `RADIUS` px each way; the outline is at 1 - `CUTOFF` of 255 (192)."""
BASELINE = 26
"""Ink top above the baseline, less this, is a glyph's `top` (as server glyphs put it)."""

BUNDLED_FONT = default_web_dir() / FONT_DIST / "ttf" / "DejaVuSans.ttf"
"""The font the project carries (from npm, in the wheel too): Latin and symbols always draw."""
FONT_FILES = (
    str(BUNDLED_FONT),
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/noto/NotoSans-Regular.ttf",
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
)
"""Fonts glyphs are drawn from, first first (Latin and symbols, then CJK)."""
_MISSING = "\U0010fffd"  # a private codepoint no font draws: its bitmap is the font's .notdef


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(number: int, value: int | bytes, *, signed: bool = False) -> bytes:
    if isinstance(value, bytes):
        return _varint(number << 3 | 2) + _varint(len(value)) + value
    if signed:
        value = (value << 1) ^ (value >> 63)  # zigzag
    return _varint(number << 3) + _varint(value)


@functools.lru_cache(maxsize=8)
def _fonts() -> tuple[ImageFont.FreeTypeFont, ...]:
    out = []
    for name in FONT_FILES:
        if Path(name).is_file():
            try:
                out.append(ImageFont.truetype(name, SIZE, layout_engine=ImageFont.Layout.BASIC))
            except OSError:
                continue
    return tuple(out)


def _ink(font: ImageFont.FreeTypeFont, ch: str) -> tuple[np.ndarray, int, int] | None:
    """The glyph's coverage (0-255), its left and its ink top above the baseline."""
    mask, (left, top) = font.getmask2(ch, mode="L")
    w, h = mask.size
    if w == 0 or h == 0:
        return np.zeros((0, 0), dtype=np.uint8), 0, 0
    ascent, _ = font.getmetrics()
    return np.asarray(mask, dtype=np.uint8).reshape(h, w), left, ascent - top


@functools.lru_cache(maxsize=16)
def _notdef(index: int) -> bytes:
    got = _ink(_fonts()[index], _MISSING)
    return b"" if got is None else got[0].tobytes()


def sdf(coverage: np.ndarray) -> np.ndarray:
    """The signed distance field of a glyph's coverage, with `BORDER` px around it."""
    padded = np.pad(coverage, BORDER)
    inside = padded >= 128
    if not inside.any():
        return np.zeros(padded.shape, dtype=np.uint8)
    outside_d = ndimage.distance_transform_edt(~inside)
    inside_d = ndimage.distance_transform_edt(inside)
    signed = np.where(inside, 0.5 - inside_d, outside_d - 0.5)
    value = 255.0 * (1.0 - CUTOFF) - signed * (255.0 / RADIUS)
    return np.clip(np.round(value), 0, 255).astype(np.uint8)


def _glyph(codepoint: int) -> bytes | None:
    ch = chr(codepoint)
    if unicodedata.category(ch) in ("Cc", "Cs", "Co", "Cn"):
        return None  # controls, surrogates, private and unassigned codepoints: nothing to draw
    for i, font in enumerate(_fonts()):
        try:
            got = _ink(font, ch)
        except (OSError, RuntimeError, ValueError):
            continue
        if got is None:
            continue
        coverage, left, top = got
        if codepoint != 0x20 and coverage.size and coverage.tobytes() == _notdef(i):
            continue  # this font has no such glyph
        advance = round(font.getlength(ch))
        if not coverage.size and advance == 0:
            continue
        h, w = coverage.shape
        parts = [
            _field(1, codepoint),
            _field(2, sdf(coverage).tobytes()) if coverage.size else b"",
            _field(3, w),
            _field(4, h),
            _field(5, left, signed=True),
            _field(6, top - BASELINE, signed=True),
            _field(7, advance),
        ]
        return b"".join(parts)
    return None


@functools.lru_cache(maxsize=64)
def glyph_range(fontstack: str, start: int) -> bytes:
    """The glyph range `start`..`start`+255 (a multiple of 256) for `fontstack`, as the
    protocol buffer MapLibre reads."""
    end = start + 255
    glyphs = [g for g in map(_glyph, range(start, end + 1)) if g is not None]
    stack = b"".join(
        [
            _field(1, fontstack.encode()),
            _field(2, f"{start}-{end}".encode()),
            *(_field(3, g) for g in glyphs),
        ]
    )
    return _field(1, stack)
