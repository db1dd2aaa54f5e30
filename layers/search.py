"""Text search over a layer's ids and naming texts, one algorithm over two kinds of key store.

The search keys of a feature (`entries`) are its id and searched texts normalised (NFKC,
case-folded: whole texts), and their words (parts split at spaces and punctuation, and every
suffix of a Chinese name starting at a CJK character, so `北路` finds `汤逊湖北路`). Keys are
kept in the order (key, row): a server holding a layer keeps them in two sorted arrays
(`SearchIndex`, binary-searched: microseconds at a million features); a server on PostGIS in a
table beside the layer's (`layers.postgis_search`), written with every change. The ranking
(`layer_hits`: exact before prefix, whole texts before words, shorter first; the segments of
one street as one hit) reads either through the same few questions (`Finder`), so both answer
the same hits in the same order.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from layers.layer import Layer
from layers.models import FieldType, LayerSchema

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

SPLIT = r"[\s,;:/|()\[\]{}<>\"'`~!?@#$%^&*+=\\_.\-，；：、。（）【】《》“”‘’·]+"
SPLIT_RE = re.compile(SPLIT)
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
TOP = "\U0010ffff"
"""After every text starting with a prefix: `prefix + TOP` ends a prefix's range of keys."""
WHOLE, WORD = 0, 1
"""Kinds of key: a whole text, a word of one."""
WINDOW = 4
"""Keys read per hit wanted: a key seen twice is one feature's, so a few more are read."""
COMMON_CAP = 100_000
"""Keys looked at per word and kind when several words must all match."""
MAX_NAMESAKES = 2000
"""Most features of one name gathered into one hit (their box), per key and kind."""


def normalise(text: str) -> str:
    """`text` as it is indexed and looked up: NFKC (full-width letters and digits to ASCII),
    case-folded, runs of spaces as one, trimmed."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def words_of(text: str) -> list[str]:
    """The words of a normalised query (punctuation alone is looked up as it is)."""
    return [w for w in SPLIT_RE.split(text) if w] or [text]


def is_searched(name: str) -> bool:
    """Whether a text column called `name` is searched."""
    if name.startswith(("_", "parent")) or name == "source":
        return False
    return name in NAME_COLUMNS or bool(_NAME_LIKE.search(name))


def searched_fields(schema: LayerSchema) -> tuple[str, ...]:
    """The text fields of `schema` that search looks in, in the schema's order."""
    return tuple(
        f.name for f in schema.fields if f.type is FieldType.STRING and is_searched(f.name)
    )


def searched_columns(layer: Layer) -> tuple[str, ...]:
    """The text columns of `layer` that search looks in (those of its schema it holds)."""
    return tuple(
        c
        for c in searched_fields(layer.schema)
        if c in layer.attrs.columns and pd.api.types.is_string_dtype(layer.attrs[c].dtype)
    )


def labels_of(columns: Sequence[str]) -> tuple[str, ...]:
    """The columns (of searched `columns`) a hit is labelled with, in order of preference."""
    first = [c for c in LABEL_COLUMNS if c in columns]
    return (*first, *(c for c in columns if c.endswith("_id") and c not in first))


# -- keys -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Entries:
    """The search keys of some features: each with its kind (`WHOLE`, `WORD`), the row (or
    stored fid) it belongs to and the column it came from (0: the id, k: searched column k-1)."""

    keys: pa.Array
    kinds: np.ndarray
    rows: np.ndarray
    columns: np.ndarray

    def of_kind(self, kind: int) -> tuple[pa.Array, np.ndarray]:
        """The keys of one kind and their rows."""
        mask = self.kinds == kind
        return self.keys.filter(pa.array(mask)), self.rows[mask]


def entries(ids: np.ndarray, texts: Sequence[np.ndarray], rows: np.ndarray) -> Entries:
    """The keys of features `rows` whose ids are `ids` and whose searched columns hold `texts`
    (one array per column, aligned with `ids`): every normalised non-empty text whole, and its
    words other than itself and its CJK suffixes."""
    rows = np.asarray(rows, dtype=np.int64)
    columns = [_normalised(ids), *(_normalised(t) for t in texts)]
    n = len(rows)
    if not n:
        empty = np.array([], dtype=np.int64)
        return Entries(pa.array([], pa.string()), empty.astype(np.int8), empty, empty)
    whole = pa.concat_arrays(columns)
    owners = np.tile(rows, len(columns))
    sources = np.repeat(np.arange(len(columns), dtype=np.int64), n)
    valid = pc.invert(pc.or_kleene(pc.is_null(whole), pc.equal(whole, ""))).to_numpy(
        zero_copy_only=False
    )
    whole, owners, sources = whole.filter(pa.array(valid)), owners[valid], sources[valid]
    # Words: the parts between spaces and punctuation, other than the whole text itself.
    split = pc.split_pattern_regex(whole, SPLIT)
    parts = pc.list_flatten(split)
    parents = pc.list_parent_indices(split).to_numpy()
    useful = pc.and_(
        pc.not_equal(parts, ""), pc.not_equal(parts, whole.take(pa.array(parents)))
    ).to_numpy(zero_copy_only=False)
    of_words = parents[useful]
    suffixes, of_suffixes = _cjk_suffixes(whole)
    keys = pa.concat_arrays([whole, parts.filter(pa.array(useful)), suffixes])
    at = np.concatenate([np.arange(len(whole)), of_words, of_suffixes])
    kinds = np.zeros(len(at), dtype=np.int8)
    kinds[len(whole) :] = WORD
    return Entries(keys, kinds, owners[at], sources[at])


def _normalised(values: np.ndarray) -> pa.Array:
    """Normalised texts of `values` (None where missing or not text)."""
    out = [normalise(v) if isinstance(v, str) else None for v in values.tolist()]
    return pa.array(out, pa.string())


def _cjk_suffixes(whole: pa.Array) -> tuple[pa.Array, np.ndarray]:
    """Every suffix of a text starting at a CJK character after its first (substrings of
    Chinese names, which have no spaces), with the position of its text."""
    has = pc.match_substring_regex(whole, _CJK_RE2).to_numpy(zero_copy_only=False)
    keys: list[str] = []
    of: list[int] = []
    texts = whole.filter(pa.array(has)).to_pylist()
    for text, i in zip(texts, np.flatnonzero(has).tolist(), strict=True):
        head = text[:_MAX_SUFFIX_CHARS]
        for m in _CJK.finditer(head, 1):
            keys.append(text[m.start() :])
            of.append(i)
    return pa.array(keys, pa.string()), np.asarray(of, dtype=np.int64)


# -- the index of a layer held in memory --------------------------------------------------------


@dataclass(frozen=True)
class _Sorted:
    """Normalised texts in (key, row) order and the row each came from."""

    keys: np.ndarray
    rows: np.ndarray

    @classmethod
    def of(cls, keys: pa.Array, rows: np.ndarray) -> _Sorted:
        table = pa.table({"k": keys, "r": pa.array(np.asarray(rows, dtype=np.int64))})
        order = pc.sort_indices(table, sort_keys=[("k", "ascending"), ("r", "ascending")])
        order = order.to_numpy()
        return cls(
            keys.take(order).to_numpy(zero_copy_only=False).astype(object),
            np.asarray(rows, dtype=np.int64)[order],
        )

    def span(self, prefix: str) -> tuple[int, int]:
        """The positions of the keys starting with `prefix`."""
        lo = int(np.searchsorted(self.keys, prefix, "left"))
        hi = int(np.searchsorted(self.keys, prefix + TOP, "left"))
        return lo, hi

    def equal(self, key: str) -> tuple[int, int]:
        """The positions of the keys equal to `key`."""
        lo = int(np.searchsorted(self.keys, key, "left"))
        return lo, int(np.searchsorted(self.keys, key, "right"))

    def without(self, drop: np.ndarray) -> _Sorted:
        """These entries less those of the rows marked in `drop` (a mask over rows)."""
        keep = ~drop[self.rows]
        return _Sorted(self.keys[keep], self.rows[keep])

    def merged(self, other: _Sorted) -> _Sorted:
        """These entries and `other`'s (of rows these have none of), still in (key, row)
        order."""
        if not len(other.keys):
            return self
        lo = np.searchsorted(self.keys, other.keys, "left")
        hi = np.searchsorted(self.keys, other.keys, "right")
        at = lo.copy()
        for i in np.flatnonzero(hi > lo).tolist():  # a key held already: placed by its row
            at[i] += int(np.searchsorted(self.rows[lo[i] : hi[i]], other.rows[i]))
        return _Sorted(np.insert(self.keys, at, other.keys), np.insert(self.rows, at, other.rows))


@dataclass(frozen=True)
class SearchIndex:
    """One layer's search index: whole texts and words, each sorted by (key, row)."""

    columns: tuple[str, ...]
    whole: _Sorted
    words: _Sorted

    @property
    def labels(self) -> tuple[str, ...]:
        """The columns a hit is labelled with, in order of preference."""
        return labels_of(self.columns)

    @classmethod
    def build(cls, layer: Layer, rows: np.ndarray | None = None) -> SearchIndex:
        """The index of `layer` (of its `rows` only, when given)."""
        columns = searched_columns(layer)
        rows = np.arange(len(layer)) if rows is None else np.asarray(rows, dtype=np.int64)
        got = entries(
            layer.ids[rows], [layer.attrs[c].to_numpy(dtype=object)[rows] for c in columns], rows
        )
        return cls(columns, _Sorted.of(*got.of_kind(WHOLE)), _Sorted.of(*got.of_kind(WORD)))

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

    def sorted(self, kind: int) -> _Sorted:
        """The keys of one kind."""
        return self.whole if kind == WHOLE else self.words


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


# -- the questions a search asks of its keys ---------------------------------------------------


class Finder(Protocol):
    """The keys and features of one layer as a search reads them. Rows are numbers in the
    layer's stored order (row positions, or the store's fids): keys are in (key, row) order."""

    columns: tuple[str, ...]
    """The searched columns the caller sees."""

    def first(self, kind: int, prefix: str, n: int) -> tuple[list[str], list[int]]:
        """The first `n` keys of `kind` starting with `prefix` and their rows."""
        ...

    def common(self, words: Sequence[str], cap: int, limit: int) -> list[int]:
        """The first `limit` rows (ascending) found, for every one of `words`, among the rows
        of the first `cap` keys of either kind starting with it."""
        ...

    def equal(self, texts: Sequence[str], cap: int) -> dict[str, np.ndarray]:
        """For each of `texts`, the rows (ascending, each once) of the first `cap` keys of
        either kind equal to it."""
        ...

    def features(self, rows: Sequence[int], columns: Sequence[str]) -> tuple[list, list[list]]:
        """The ids of `rows` and the values of `columns` (each a list aligned with `rows`)."""
        ...

    def boxes(self, rows: np.ndarray) -> np.ndarray:
        """The boxes of `rows` (lon/lat, `(k, 4)`, NaN where without geometry)."""
        ...


class LayerFinder:
    """A `Finder` over a layer held in memory and its `SearchIndex`."""

    def __init__(self, layer: Layer) -> None:
        self.layer = layer
        self.index = index_of(layer)
        self.columns = self.index.columns

    def first(self, kind: int, prefix: str, n: int) -> tuple[list[str], list[int]]:
        s = self.index.sorted(kind)
        lo, hi = s.span(prefix)
        return s.keys[lo : min(hi, lo + n)].tolist(), s.rows[lo : min(hi, lo + n)].tolist()

    def common(self, words: Sequence[str], cap: int, limit: int) -> list[int]:
        common: np.ndarray | None = None
        for word in sorted(words, key=len, reverse=True):
            hits = []
            for s in (self.index.whole, self.index.words):
                lo, hi = s.span(word)
                hits.append(s.rows[lo : min(hi, lo + cap)])
            rows = np.unique(np.concatenate(hits))
            common = rows if common is None else np.intersect1d(common, rows, assume_unique=True)
            if not len(common):
                return []
        return [] if common is None else common[:limit].tolist()

    def equal(self, texts: Sequence[str], cap: int) -> dict[str, np.ndarray]:
        out = {}
        for text in texts:
            found = []
            for s in (self.index.whole, self.index.words):
                lo, hi = s.equal(text)
                found.append(s.rows[lo : min(hi, lo + cap)])
            out[text] = np.unique(np.concatenate(found))
        return out

    def features(self, rows: Sequence[int], columns: Sequence[str]) -> tuple[list, list[list]]:
        at = np.asarray(rows, dtype=np.int64)
        ids = [v.item() if isinstance(v, np.generic) else v for v in self.layer.ids[at]]
        return ids, [self.layer.json_column(c).values(at) for c in columns]

    def boxes(self, rows: np.ndarray) -> np.ndarray:
        if not len(self.layer):
            return np.empty((0, 4))
        return self.layer.boxes()[np.asarray(rows, dtype=np.int64)]


# -- ranking ----------------------------------------------------------------------------------


class Found(NamedTuple):
    """A feature matching a query: rank (0 a whole text equal to it, 1 a whole text starting
    with it, 2 a word equal to it, 3 a word starting with it, 4 every query word starting one
    of its words), row and the text matched."""

    rank: int
    row: int
    key: str


def find(finder: Finder, text: str, words: Sequence[str], limit: int) -> list[Found]:
    """Up to `limit` rows matching the query (normalised `text`, its `words`), best first."""
    found: list[Found] = []
    seen: set[int] = set()
    for kind, ranks in ((WHOLE, (0, 1)), (WORD, (2, 3))):
        # Key order puts the shortest (exact) key first.
        keys, rows = finder.first(kind, text, WINDOW * limit)
        for key, row in zip(keys, rows, strict=True):
            if row in seen:
                continue
            seen.add(row)
            found.append(Found(ranks[0] if key == text else ranks[1], row, key))
        if len(found) >= limit:
            break
    if len(words) > 1 and len(found) < limit:
        for row in finder.common(words, COMMON_CAP, limit):
            if row not in seen:
                seen.add(row)
                found.append(Found(4, row, " ".join(words)))
    found.sort(key=lambda f: (f.rank, len(f.key), f.key))
    return found[:limit]


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


def best(hits: Iterable[Hit], limit: int) -> list[Hit]:
    """The first `limit` of `hits` in rank order: rank, shorter match, match, collection, id
    (a total order: the best of several layers' best is the best of them all)."""
    return sorted(hits, key=lambda h: (h.rank, len(h.matched), h.matched, h.collection, str(h.id)))[
        :limit
    ]


def layer_hits(
    finder: Finder, collection: str, text: str, words: Sequence[str], limit: int
) -> list[Hit]:
    """Up to `limit` hits of one layer for the query (normalised `text`, its `words`): the
    features `find` gives, those of one name (the segments of a street) as one hit."""
    found = find(finder, text, words, limit)
    if not found:
        return []
    columns = finder.columns
    labels = labels_of(columns)
    named = "name" in columns
    wanted = [*labels, *([] if not named or "name" in labels else ["name"])]
    ids, values = finder.features([f.row for f in found], wanted)
    by_column = dict(zip(wanted, values, strict=True))
    names = by_column["name"] if named else [None] * len(found)
    groups = _namesakes(finder, found, names)
    kept = [g for g in groups if g is not None and len(g)]
    rows = [np.array([f.row for f in found], dtype=np.int64), *kept]
    boxed = np.unique(np.concatenate(rows))
    boxes = finder.boxes(boxed)
    done: set[int] = set()
    seen_labels: set[str] = set()
    hits = []
    for i, f in enumerate(found):
        if f.row in done:
            continue
        group = groups[i]
        if group is None or not len(group):
            group = np.array([f.row], dtype=np.int64)
        else:
            done.update(group.tolist())
        label = _label([by_column[c][i] for c in labels], ids[i])
        if len(group) > 1 and f.key in SPLIT_RE.split(normalise(label)):
            label = f.key  # the street, not the first segment's several names
        if len(group) > 1 and label in seen_labels:
            continue
        seen_labels.add(label)
        box = _box(boxes[np.searchsorted(boxed, group)])
        hits.append(Hit(collection, ids[i], label, f.key, f.rank, box, len(group)))
    return hits


def _label(values: Sequence[Any], fid: Any) -> str:
    """A readable label of one feature: the first of its label columns' texts, else its id."""
    for value in values:
        if isinstance(value, str) and value.strip():
            return value
    return str(fid)


def _namesakes(finder: Finder, found: list[Found], names: list[Any]) -> list[np.ndarray | None]:
    """For each found feature, the rows named as it is: those of the same `name`, and when its
    key is a whole part of that name (`丰收路` of `凤凰街;丰收路`), those whose name has that
    part too (the segments of one street under their several names). None for a feature
    without a name."""
    looked: list[list[str] | None] = []
    for f, name in zip(found, names, strict=True):
        if not isinstance(name, str) or not name.strip():
            looked.append(None)
            continue
        norm = normalise(name)
        parts = {p for p in SPLIT_RE.split(norm) if p}
        looked.append([norm, f.key] if f.key in parts and f.key != norm else [norm])
    texts = list(dict.fromkeys(t for ts in looked if ts for t in ts))
    if not texts:
        return [None] * len(found)
    equal = finder.equal(texts, MAX_NAMESAKES)
    candidates = [
        None if ts is None else np.unique(np.concatenate([equal[t] for t in ts])) for ts in looked
    ]
    every = np.unique(np.concatenate([c for c in candidates if c is not None]))
    _, (their,) = finder.features(every.tolist(), ["name"])
    normal = np.array([normalise(n) if isinstance(n, str) else "" for n in their], dtype=object)
    out: list[np.ndarray | None] = []
    for ts, rows in zip(looked, candidates, strict=True):
        if ts is None or rows is None:
            out.append(None)
            continue
        wanted = set(ts)
        of = normal[np.searchsorted(every, rows)]
        same = np.array([n in wanted or bool(wanted & set(SPLIT_RE.split(n))) for n in of], bool)
        out.append(rows[same])
    return out


def _box(boxes: np.ndarray) -> tuple[float, float, float, float] | None:
    with np.errstate(invalid="ignore"):
        box = (
            np.nanmin(boxes[:, 0]),
            np.nanmin(boxes[:, 1]),
            np.nanmax(boxes[:, 2]),
            np.nanmax(boxes[:, 3]),
        )
    return None if any(v != v for v in box) else tuple(float(v) for v in box)  # type: ignore[return-value]


def search_layers(
    layers: dict[str, Layer], text: str, words: Sequence[str], limit: int
) -> list[Hit]:
    """Up to `limit` hits of layers held in memory, best first."""
    hits: list[Hit] = []
    for name, layer in layers.items():
        if len(layer):
            hits += layer_hits(LayerFinder(layer), name, text, words, limit)
    return best(hits, limit)
