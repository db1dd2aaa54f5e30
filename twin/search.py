"""Text search over the layers: ids, names, street names and address-like text.

Each layer holds a `SearchIndex` (made once with the layer, kept with it through
`Layer.derived`): two sorted arrays of normalised texts, whole texts and their words (parts
split at spaces and punctuation, and every suffix of a Chinese name starting at a CJK
character, so `北路` finds `汤逊湖北路`), each with the row it came from. A prefix query is
two binary searches per array and a slice: microseconds at a million features. A layer made
from an earlier one by changing rows in place (a reading, an edit) takes the earlier index
when no indexed text changed, and patches only the changed rows' entries otherwise.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import shapely

from layers.layer import Layer
from twin.errors import InvalidParameter

MAX_QUERY_CHARS = 200
"""The longest query text (characters, after trimming)."""
MAX_WORDS = 8
"""Most words one query may hold."""

NAME_COLUMNS = (
    "name",
    "code",
    "permit_id",
    "address",
    "street",
    "description",
    "contractor",
    "responsible_unit",
    "circuit",
)
"""Text columns searched in every layer holding them (besides the feature id)."""
_NAME_LIKE = re.compile(r"(^|_)(id|no|name|code|address|addr|street|label|ref)$")
"""Names of other text columns (extras included) that are searched: `pipe_id`, `road_name`."""
LABEL_COLUMNS = ("name", "code", "permit_id", "description")
"""The column a hit is labelled with, the first a feature has a value in (else an `*_id`
column, else its id)."""

_SPLIT = r"[\s,;:/|()\[\]{}<>\"'`~!?@#$%^&*+=\\_.\-，；：、。（）【】《》“”‘’·]+"
_SPLIT_RE = re.compile(_SPLIT)
_CJK_RANGES = (
    (0x3040, 0x30FF),
    (0x3400, 0x4DBF),
    (0x4E00, 0x9FFF),
    (0xAC00, 0xD7AF),
    (0xF900, 0xFAFF),
)
"""Kana, CJK ideographs and Hangul: scripts written without spaces between words."""
_CJK = re.compile("[" + "".join(f"{chr(a)}-{chr(b)}" for a, b in _CJK_RANGES) + "]")
_CJK_RE2 = "[" + "".join(f"\\x{{{a:x}}}-\\x{{{b:x}}}" for a, b in _CJK_RANGES) + "]"
_MAX_SUFFIX_CHARS = 32
"""CJK suffixes are made of the first this many characters of a text (names, not essays)."""
_TOP = "\U0010ffff"
_WHOLE, _WORD = 0, 1


def normalise(text: str) -> str:
    """`text` as it is indexed and looked up: NFKC (full-width letters and digits to ASCII),
    case-folded, runs of spaces as one, trimmed."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def check_query(q: str) -> tuple[str, list[str]]:
    """The normalised query and its words; `InvalidParameter` for an empty or too long one."""
    if len(q.strip()) > MAX_QUERY_CHARS:
        raise InvalidParameter(f"q is longer than {MAX_QUERY_CHARS} characters")
    text = normalise(q)
    if not text:
        raise InvalidParameter("q is empty: give an id, a name or a street to search for")
    # Punctuation alone (`-`, `;`) is looked up as it is: no word of it, so little is found.
    words = [w for w in _SPLIT_RE.split(text) if w] or [text]
    if len(words) > MAX_WORDS:
        raise InvalidParameter(f"q has {len(words)} words; at most {MAX_WORDS} are searched")
    return text, words


def searched_columns(layer: Layer) -> tuple[str, ...]:
    """The text columns of `layer` that search looks in."""
    out = []
    for name in layer.attrs.columns:
        if name.startswith(("_", "parent")) or name == "source":
            continue
        if not pd.api.types.is_string_dtype(layer.attrs[name].dtype):
            continue
        if name in NAME_COLUMNS or _NAME_LIKE.search(name):
            out.append(name)
    return tuple(out)


@dataclass(frozen=True)
class _Sorted:
    """Normalised texts in sorted order and the row each came from."""

    keys: np.ndarray
    rows: np.ndarray

    @classmethod
    def of(cls, keys: pa.Array, rows: np.ndarray) -> _Sorted:
        order = pc.sort_indices(keys).to_numpy()
        return cls(
            keys.take(order).to_numpy(zero_copy_only=False).astype(object),
            rows[order].astype(np.int64),
        )

    def span(self, prefix: str) -> tuple[int, int]:
        """The positions of the keys starting with `prefix`."""
        lo = int(np.searchsorted(self.keys, prefix, "left"))
        hi = int(np.searchsorted(self.keys, prefix + _TOP, "left"))
        return lo, hi

    def without(self, drop: np.ndarray) -> _Sorted:
        """These entries less those of the rows marked in `drop` (a mask over rows)."""
        keep = ~drop[self.rows]
        return _Sorted(self.keys[keep], self.rows[keep])

    def merged(self, other: _Sorted) -> _Sorted:
        """These entries and `other`'s, still in order."""
        if not len(other.keys):
            return self
        at = np.searchsorted(self.keys, other.keys, "left")
        return _Sorted(np.insert(self.keys, at, other.keys), np.insert(self.rows, at, other.rows))


@dataclass(frozen=True)
class SearchIndex:
    """One layer's search index: whole texts and words, sorted, with their rows."""

    columns: tuple[str, ...]
    whole: _Sorted
    words: _Sorted

    @property
    def labels(self) -> tuple[str, ...]:
        """The columns a hit is labelled with, in order of preference."""
        first = [c for c in LABEL_COLUMNS if c in self.columns]
        return (*first, *(c for c in self.columns if c.endswith("_id") and c not in first))

    @classmethod
    def build(cls, layer: Layer, rows: np.ndarray | None = None) -> SearchIndex:
        """The index of `layer` (of its `rows` only, when given)."""
        columns = searched_columns(layer)
        rows = np.arange(len(layer)) if rows is None else np.asarray(rows, dtype=np.int64)
        texts: list[pa.Array] = [_normalised(layer.ids[rows])]
        texts += [_normalised(layer.attrs[c].to_numpy(dtype=object)[rows]) for c in columns]
        owners = np.concatenate([rows] * len(texts)) if len(rows) else rows
        whole = pa.concat_arrays(texts) if len(rows) else pa.array([], pa.string())
        valid = pc.invert(pc.or_kleene(pc.is_null(whole), pc.equal(whole, ""))).to_numpy(
            zero_copy_only=False
        )
        whole, owners = whole.filter(pa.array(valid)), owners[valid]
        # Words: the parts between spaces and punctuation, other than the whole text itself.
        split = pc.split_pattern_regex(whole, _SPLIT)
        parts = pc.list_flatten(split)
        parents = pc.list_parent_indices(split).to_numpy()
        useful = pc.and_(
            pc.not_equal(parts, ""), pc.not_equal(parts, whole.take(pa.array(parents)))
        ).to_numpy(zero_copy_only=False)
        word_keys = [parts.filter(pa.array(useful))]
        word_rows = [owners[parents[useful]]]
        suffix_keys, suffix_rows = _cjk_suffixes(whole, owners)
        word_keys.append(pa.array(suffix_keys, pa.string()))
        word_rows.append(np.asarray(suffix_rows, dtype=np.int64))
        return cls(
            columns,
            _Sorted.of(whole, owners),
            _Sorted.of(pa.concat_arrays(word_keys), np.concatenate(word_rows)),
        )

    def patched(self, layer: Layer, rows: np.ndarray) -> SearchIndex:
        """This index with the entries of `rows` made again from `layer` (same rows)."""
        drop = np.zeros(len(layer), dtype=bool)
        drop[rows] = True
        fresh = SearchIndex.build(layer, rows)
        return SearchIndex(
            self.columns,
            self.whole.without(drop).merged(fresh.whole),
            self.words.without(drop).merged(fresh.words),
        )

    def find(self, text: str, words: list[str], limit: int) -> list[tuple[int, int, str]]:
        """Up to `limit` rows matching the query, best first, each as (rank, row, matched
        text): rank 0 a whole text equal to the query, 1 a whole text starting with it, 2 a
        word equal to it, 3 a word starting with it; with several words, 4: a feature each
        of whose words starts one of its words."""
        found: list[tuple[int, int, str]] = []
        seen: set[int] = set()
        for index, ranks in ((self.whole, (0, 1)), (self.words, (2, 3))):
            lo, hi = index.span(text)
            # Lexicographic order puts the shortest (exact) key first; a key seen twice is
            # one feature's, so a few more than `limit` are read.
            for key, row in zip(
                index.keys[lo : min(hi, lo + 4 * limit)].tolist(),
                index.rows[lo : min(hi, lo + 4 * limit)].tolist(),
                strict=True,
            ):
                if row in seen:
                    continue
                seen.add(row)
                found.append((ranks[0] if key == text else ranks[1], row, key))
            if len(found) >= limit:
                break
        if len(words) > 1 and len(found) < limit:
            for row in self._all_words(words, limit):
                if row not in seen:
                    seen.add(row)
                    found.append((4, row, " ".join(words)))
        found.sort(key=lambda f: (f[0], len(f[2]), f[2]))
        return found[:limit]

    def _all_words(self, words: list[str], limit: int, cap: int = 100_000) -> list[int]:
        """Rows each of whose query words starts one of their texts or words (at most `cap`
        candidates per word are looked at)."""
        common: np.ndarray | None = None
        for word in sorted(words, key=len, reverse=True):
            hits = []
            for index in (self.whole, self.words):
                lo, hi = index.span(word)
                hits.append(index.rows[lo : min(hi, lo + cap)])
            rows = np.unique(np.concatenate(hits))
            common = rows if common is None else np.intersect1d(common, rows, assume_unique=True)
            if not len(common):
                return []
        return [] if common is None else common[:limit].tolist()


def _normalised(values: np.ndarray) -> pa.Array:
    """Normalised texts of `values` (None where missing or not text)."""
    out = [normalise(v) if isinstance(v, str) else None for v in values.tolist()]
    return pa.array(out, pa.string())


def _cjk_suffixes(whole: pa.Array, owners: np.ndarray) -> tuple[list[str], list[int]]:
    """Every suffix of a text starting at a CJK character after its first (substrings of
    Chinese names, which have no spaces), with its row."""
    has = pc.match_substring_regex(whole, _CJK_RE2).to_numpy(zero_copy_only=False)
    keys: list[str] = []
    rows: list[int] = []
    texts = whole.filter(pa.array(has)).to_pylist()
    for text, row in zip(texts, owners[has].tolist(), strict=True):
        head = text[:_MAX_SUFFIX_CHARS]
        for m in _CJK.finditer(head, 1):
            keys.append(text[m.start() :])
            rows.append(row)
    return keys, rows


def index_of(layer: Layer) -> SearchIndex:
    """The search index of `layer`, made once and kept with it: taken from the layer it was
    made from when no searched text changed, patched when some did."""
    return layer.derived(("search",), lambda: _made(layer))


def _made(layer: Layer) -> SearchIndex:
    origin = layer.origin
    base = origin.base() if origin is not None else None
    held = base.held(("search",)) if base is not None else None
    if origin is None or not isinstance(held, SearchIndex):
        return SearchIndex.build(layer)
    if not set(held.columns) & origin.columns:
        return held
    return held.patched(layer, origin.rows)


def label_of(layer: Layer, index: SearchIndex, row: int) -> str:
    """A readable label of one feature: its name (or code, permit, own id), else its id."""
    for name in index.labels:
        value = layer.json_column(name).values(np.array([row]))[0]
        if isinstance(value, str) and value.strip():
            return value
    return str(layer.ids[row])


@dataclass(frozen=True)
class Hit:
    """One search result: a feature, or the features of one name in a layer (the segments of a
    street) as one, with their count and the box around them all."""

    collection: str
    id: Any
    label: str
    matched: str
    rank: int
    bbox: tuple[float, float, float, float] | None
    count: int = 1

    def to_json(self) -> dict[str, Any]:
        """The hit as a GeoJSON Feature (no geometry: `bbox` says where it is)."""
        return {
            "type": "Feature",
            "collection": self.collection,
            "id": self.id,
            "label": self.label,
            "bbox": None if self.bbox is None else list(self.bbox),
            "geometry": None,
            "properties": {
                "label": self.label,
                "matched": self.matched,
                "rank": self.rank,
                "features": self.count,
            },
        }


MAX_NAMESAKES = 2000
"""Most features of one name gathered into one hit (their box)."""


def _namesakes(layer: Layer, index: SearchIndex, row: int, key: str) -> np.ndarray | None:
    """The rows of `layer` named as `row` is: those of the same `name`, and when `key` is a
    whole part of that name (`丰收路` of `凤凰街;丰收路`), those whose name has that part too
    (the segments of one street under their several names). None when `row` has no name."""
    if "name" not in index.columns:
        return None
    column = layer.json_column("name")
    name = column.values(np.array([row]))[0]
    if not isinstance(name, str) or not name.strip():
        return None
    norm = normalise(name)
    parts = {p for p in _SPLIT_RE.split(norm) if p}
    looked = [norm, key] if key in parts and key != norm else [norm]
    found = []
    for text in looked:
        for sorted_ in (index.whole, index.words):
            lo = int(np.searchsorted(sorted_.keys, text, "left"))
            hi = int(np.searchsorted(sorted_.keys, text, "right"))
            found.append(sorted_.rows[lo : min(hi, lo + MAX_NAMESAKES)])
    rows = np.unique(np.concatenate(found))
    names = [normalise(n) if isinstance(n, str) else "" for n in column.values(rows)]
    wanted = set(looked)
    same = np.array(
        [n in wanted or bool(wanted & set(_SPLIT_RE.split(n))) for n in names], dtype=bool
    )
    return rows[same]


def _box(layer: Layer, rows: np.ndarray) -> tuple[float, float, float, float] | None:
    b = shapely.bounds(layer.geometry[rows])
    with np.errstate(invalid="ignore"):
        box = (np.nanmin(b[:, 0]), np.nanmin(b[:, 1]), np.nanmax(b[:, 2]), np.nanmax(b[:, 3]))
    return None if any(v != v for v in box) else tuple(float(v) for v in box)  # type: ignore[return-value]


def search(
    layers: Mapping[str, Layer], q: str, limit: int, collections: Iterable[str] | None = None
) -> list[Hit]:
    """Up to `limit` features of `layers` (or of those named) matching `q`, best first: exact
    before prefix, whole names before words, shorter before longer. Features of one layer
    sharing a name (the segments of a street) are one hit."""
    text, words = check_query(q)
    names = list(layers) if collections is None else list(collections)
    hits: list[Hit] = []
    for name in names:
        layer = layers[name]
        if not len(layer):
            continue
        index = index_of(layer)
        done: set[int] = set()
        labels: set[str] = set()
        for rank, row, key in index.find(text, words, limit):
            if row in done:
                continue
            group = _namesakes(layer, index, row, key)
            if group is None or not len(group):
                group = np.array([row], dtype=np.int64)
            else:
                done.update(group.tolist())
            label = label_of(layer, index, row)
            if len(group) > 1 and key in _SPLIT_RE.split(normalise(label)):
                label = key  # the street, not the first segment's several names
            if len(group) > 1 and label in labels:
                continue
            labels.add(label)
            fid = layer.ids[row]
            fid = fid.item() if isinstance(fid, np.generic) else fid
            hits.append(Hit(name, fid, label, key, rank, _box(layer, group), len(group)))
    hits.sort(key=lambda h: (h.rank, len(h.matched), h.matched, h.collection, str(h.id)))
    return hits[:limit]
