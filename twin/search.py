"""Text search over the layers: ids, names, street names and address-like text.

The keys and the ranking are `layers.search`'s (one algorithm over a layer held in memory or
the store's table of keys); here the query is checked (a 400 for one that cannot be searched)
and a search runs over layers held (`search`) or over a catalog (`search_catalog`: the store
answers for the layers it does not hold).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from layers.catalog import Catalog, Lens
from layers.layer import Layer
from layers.search import (
    SPLIT as _SPLIT,
)
from layers.search import (
    Hit,
    SearchIndex,
    index_of,
    normalise,
    search_layers,
    searched_columns,
    words_of,
)
from twin.errors import InvalidParameter

__all__ = [
    "MAX_QUERY_CHARS",
    "MAX_WORDS",
    "_SPLIT",
    "Hit",
    "SearchIndex",
    "check_query",
    "index_of",
    "normalise",
    "search",
    "search_catalog",
    "searched_columns",
]

MAX_QUERY_CHARS = 200
"""The longest query text (characters, after trimming)."""
MAX_WORDS = 8
"""Most words one query may hold."""


def check_query(q: str) -> tuple[str, list[str]]:
    """The normalised query and its words; `InvalidParameter` for an empty or too long one."""
    if len(q.strip()) > MAX_QUERY_CHARS:
        raise InvalidParameter(f"q is longer than {MAX_QUERY_CHARS} characters")
    text = normalise(q)
    if not text:
        raise InvalidParameter("q is empty: give an id, a name or a street to search for")
    words = words_of(text)
    if len(words) > MAX_WORDS:
        raise InvalidParameter(f"q has {len(words)} words; at most {MAX_WORDS} are searched")
    return text, words


def search(
    layers: Mapping[str, Layer], q: str, limit: int, collections: Iterable[str] | None = None
) -> list[Hit]:
    """Up to `limit` features of `layers` held in memory (or of those named) matching `q`, best
    first: exact before prefix, whole names before words, shorter before longer. Features of
    one layer sharing a name (the segments of a street) are one hit."""
    text, words = check_query(q)
    names = list(layers) if collections is None else list(collections)
    return search_layers({n: layers[n] for n in names}, text, words, limit)


def search_catalog(
    catalog: Catalog, scope: Lens, q: str, limit: int, collections: Sequence[str] | None = None
) -> list[Hit]:
    """`search` over the layers of `catalog` that `scope` sees (or of `collections`, each
    checked first: `UnknownCollection` for one it does not see)."""
    names = catalog.visible(scope, collections)
    text, words = check_query(q)
    return catalog.search(scope, names, text, words, limit)
