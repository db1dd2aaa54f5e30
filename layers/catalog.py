"""The catalog: every layer of a store held in memory for serving, loaded at start-up and kept
in step with the store by its change log (`follow`)."""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import replace
from typing import Any, NamedTuple, TypeVar, overload

import numpy as np
import pandas as pd

from layers.errors import Uncompiled, UnknownCollection
from layers.layer import UPDATED, VERSION, Head, Layer, LayerHead, coerce
from layers.life import temporal_extent
from layers.models import Access, Bounds, Change, LayerSchema, Match, StateRun, Thinning
from layers.policy import View
from layers.search import Hit, best, search_layers
from layers.store import RasterInfo, Store
from layers.where import Where

ChangeListener = Callable[[str, np.ndarray | None], None]
"""Called with a collection name and the boxes that changed, lon/lat, `(k, 4)` (None: the
whole layer)."""
Lens = Access | View
"""What a read is seen through: a caller's `View` (rows, fields and layers it may see), or an
`Access` level (whole layers at or below it: `Access.RESTRICTED` for everything)."""
LayerHook = Callable[[Layer], None]
"""Called with a layer about to be served in place of another (to make its derived data)."""


_NONE = object()
MEMO_KEEP = 256
"""Results a catalog keeps made (`Catalog.memo`)."""
T = TypeVar("T")


class AppliedRun(NamedTuple):
    """A run of readings' entries as applied: each entry's feature's box (lon/lat, `(k, 4)`,
    NaN where the feature is not held)."""

    run: StateRun
    boxes: np.ndarray

    @property
    def seq(self) -> int:
        return self.run.seq

    @property
    def last(self) -> int:
        return self.run.last

    def before(self, seq: int) -> AppliedRun:
        """Without its entries after `seq` (which must be inside it)."""
        keep = max(0, seq - self.run.seq + 1)
        run = self.run._replace(ids=self.run.ids[:keep], sets=self.run.sets[:keep])
        return AppliedRun(run, self.boxes[:keep])

    def after(self, seq: int) -> AppliedRun:
        """Without its entries up to `seq` (which must be inside it)."""
        cut = max(0, seq - self.run.seq + 1)
        return AppliedRun(self.run.after(seq), self.boxes[cut:])

    def changes(self) -> list[Change]:
        """Its entries as one `Change` each."""
        boxes = [None if np.isnan(b[0]) else Bounds(*b) for b in self.boxes.tolist()]
        return self.run.changes(boxes)


Part = Change | AppliedRun
"""What `follow` applied, in the order of the log: a feature's change, or a run of readings'."""


class Applied(Sequence[Change]):
    """The changes a `follow` applied, oldest first: one `Change` per feature changed, the
    entries of readings kept column-wise (`parts`) and made `Change`s only when asked for
    (tens of thousands a second go to the event streams as they are)."""

    def __init__(self, parts: list[Part]) -> None:
        self.parts = parts

    def __len__(self) -> int:
        return sum(1 if isinstance(p, Change) else len(p.run.ids) for p in self.parts)

    def __iter__(self) -> Iterator[Change]:
        for p in self.parts:
            if isinstance(p, Change):
                yield p
            else:
                yield from p.changes()

    @overload
    def __getitem__(self, i: int) -> Change: ...

    @overload
    def __getitem__(self, i: slice) -> list[Change]: ...

    def __getitem__(self, i: int | slice) -> Change | list[Change]:
        return list(self)[i]

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Sequence):
            return list(self) == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def collections(self) -> set[str]:
        """The collections changed."""
        return {p.collection if isinstance(p, Change) else p.run.collection for p in self.parts}


class Catalog:
    """In-memory layers and raster handles over a `Store`, filtered by the caller's scope."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._lock = threading.Lock()
        self._following = threading.Lock()
        self._layers: dict[str, Layer] = {}
        self._rasters: dict[str, RasterInfo] = {}
        self._revisions: dict[str, int] = {}
        self._listeners: list[ChangeListener] = []
        self._memo: dict[Hashable, Any] = {}
        self.prepare: LayerHook | None = None
        """Made ready before a changed layer is served (the server's warm-up of one layer)."""
        self.seq = 0
        """The newest change-log entry applied: what is held is the store as of then (or
        later)."""
        self.reload()

    def reload(self, name: str | None = None, seq: int | None = None) -> None:
        """Re-read one collection (or all) from the store and tell the listeners; `seq` is the
        change-log entry that asked for it (the collection's revision from then on)."""
        everything = Access.RESTRICTED
        if name is None:
            # Read before the layers: a change landing meanwhile is applied again by `follow`.
            seq = self.store.revision()
            layers = {n: self.store.load(n, everything) for n in self.store.layers(everything)}
            self.seq = max(self.seq, seq)
            rasters = self.store.rasters(everything)
            with self._lock:
                self._layers, self._rasters = layers, rasters
                for n in [*layers, *rasters]:
                    self._revisions[n] = max(self._revisions.get(n, 0) + 1, self.seq)
            changed = [*layers, *rasters]
        else:
            rasters = self.store.rasters(everything)
            loaded = None
            if name not in rasters and name in self.store.layers(everything):
                loaded = self.store.load(name, everything)
                held = self._layers.get(name)
                loaded.previous = None if held is None else weakref.ref(held)
                if self.prepare is not None:
                    self.prepare(loaded)
            with self._lock:
                if name in rasters:
                    self._rasters[name] = rasters[name]
                elif loaded is not None:
                    self._layers[name] = loaded
                else:
                    self._layers.pop(name, None)
                    self._rasters.pop(name, None)
                self._revisions[name] = max(self._revisions.get(name, 0) + 1, seq or 0)
            changed = [name]
        for n in changed:
            self.notify(n, None)

    def follow(self) -> Applied:
        """Apply the store's changes since the last one applied, feature by feature: the
        values a run of readings set are written into a new layer column-wise, other changed
        features read from the store and patched in (a `LAYER` change reloads the collection);
        the new layer is made ready (`prepare`) and swapped in, then the listeners are told
        the old and new box of every change. Returns the changes, one per feature changed.
        Threads calling at once apply each change once."""
        with self._following:
            entries = self.store.log(self.seq)
            if not entries:
                return Applied([])
            groups: dict[str, list[Change | StateRun]] = {}
            for e in entries:
                groups.setdefault(e.collection, []).append(e)
            parts: list[Part] = []
            for name, group in groups.items():
                parts += self._follow(name, group)
            self.seq = max(self.seq, max(_last(e) for e in entries))
            parts.sort(key=lambda p: p.seq)
            return Applied(parts)

    def _follow(self, name: str, group: list[Change | StateRun]) -> list[Part]:
        """One collection's entries applied (see `follow`)."""
        last = _last(group[-1])
        held = self._layers.get(name)
        if held is None or any(isinstance(e, Change) and e.id is None for e in group):
            self.reload(name, last)
            now = self._layers.get(name)
            return [_part(e, now) for e in group]
        # Entries the layer holds already (read from the store after they were written).
        group = [e for e in (_after(e, held.seq) for e in group) if e is not None]
        if not group:
            return []
        layer = held
        applied: list[Part] = []
        for run in _runs(group):
            if isinstance(run[0], StateRun):
                layer, done = _with_runs(layer, run)  # type: ignore[arg-type]
            else:
                layer, done = self._with_changes(name, layer, run)  # type: ignore[arg-type]
            applied += done
        layer.previous = weakref.ref(held)
        layer.seq = last
        if self.prepare is not None:
            self.prepare(layer)
        with self._lock:
            self._layers[name] = layer
            self._revisions[name] = last
        changed = _boxes_of(applied)
        if len(changed):
            self.notify(name, changed)
        return applied

    def _with_changes(
        self, name: str, held: Layer, group: list[Change]
    ) -> tuple[Layer, list[Part]]:
        """Feature entries applied: the features read back from the store and patched in."""
        ids = list(dict.fromkeys(c.id for c in group if c.id is not None))
        now = _with_state(held, group)
        gone: set[str] = set()
        if now is None:  # read back what the entries do not carry
            now = self.store.features(name, ids, Access.RESTRICTED)
            gone = set(ids) - set(now.ids.tolist())
        return held.patched(now, gone), list(group)

    def read_back(self, since: int, limit: int) -> list[Part]:
        """Entries of the store's log after `since` (at most `limit` rows of it) as `follow`
        gives them, a reading's box that of its feature as served now (for event streams
        resuming from before what this process holds in memory)."""
        out: list[Part] = []
        for e in self.store.log(since, limit):
            out.append(_part(e, self._layers.get(e.collection)))
        return out

    def boxed(self, run: StateRun) -> AppliedRun | None:
        """A run of readings with each entry's feature's box as served now, before the run is
        applied here (for event streams); None when a feature is not held."""
        layer = self._layers.get(run.collection)
        rows = layer.rows_of(run.ids) if layer is not None and len(layer) else None
        return _known(_applied(run, layer, rows))

    def put(self, layer: Layer, changed: Bounds | None = None) -> None:
        """Replace a layer held in memory (after an edit) and tell the listeners what changed."""
        held = self._layers.get(layer.name)
        if held is not None and held is not layer and layer.previous is None:
            layer.previous = weakref.ref(held)
        with self._lock:
            self._layers[layer.name] = layer
            self._revisions[layer.name] = self._revisions.get(layer.name, 0) + 1
        self.notify(layer.name, None if changed is None else np.array([changed], dtype=float))

    def subscribe(self, listener: ChangeListener) -> None:
        """Call `listener` on every change of a collection."""
        self._listeners.append(listener)

    def unsubscribe(self, listener: ChangeListener) -> None:
        """Stop calling `listener` (an app that stops serving this catalog)."""
        self._listeners.remove(listener)

    def notify(self, name: str, changed: np.ndarray | None) -> None:
        """Tell every listener that the boxes `changed` of collection `name` changed."""
        for listener in list(self._listeners):
            listener(name, changed)

    def revision(self, name: str) -> int:
        """A number that grows with every change of the collection: the store's change-log
        sequence of its last change applied (the same in every process serving the same data),
        or more after a change made here only (`put`)."""
        return self._revisions.get(name, 0)

    def names(self, scope: Lens) -> list[str]:
        """Every collection visible at `scope`, vector then raster, sorted."""
        return [*self.heads(scope), *self.rasters(scope)]

    def layers(self, scope: Lens) -> dict[str, Layer]:
        """Vector layers visible at `scope`, by name, each as the scope may see it (a caller's
        `View` hides rows and fields; an `Access` level whole layers only)."""
        if isinstance(scope, Access):
            return {
                n: lyr
                for n, lyr in sorted(self._layers.items())
                if lyr.schema.classification <= scope
            }
        return {
            n: scope.apply(lyr)
            for n, lyr in sorted(self._layers.items())
            if scope.sees(n, lyr.schema.classification)
        }

    def visible(self, scope: Lens, names: Sequence[str] | None = None) -> list[str]:
        """The vector layers visible at `scope`, sorted (or `names`, each checked:
        `UnknownCollection` for one absent or not visible)."""
        if names is None:
            return [
                n
                for n, lyr in sorted(self._layers.items())
                if sees(scope, n, lyr.schema.classification)
            ]
        for n in names:
            lyr = self._layers.get(n)
            if lyr is None or not sees(scope, n, lyr.schema.classification):
                raise UnknownCollection(n)
        return list(names)

    def search(
        self, scope: Lens, names: Sequence[str], text: str, words: Sequence[str], limit: int
    ) -> list[Hit]:
        """Up to `limit` hits of layers `names` (visible at `scope`) for a normalised query
        `text` and its `words`, best first (`layers.search`), as `scope` sees the layers."""
        layers = {n: self.layer(n, scope) for n in names}
        return search_layers(layers, text, words, limit)

    def rasters(self, scope: Lens) -> dict[str, RasterInfo]:
        """Raster collections visible at `scope`, by name."""
        return {n: r for n, r in sorted(self._rasters.items()) if sees(scope, n, r.classification)}

    def layer(self, name: str, scope: Lens) -> Layer:
        """One vector layer as `scope` may see it; `UnknownCollection` when absent or not
        visible at `scope` (alike)."""
        lyr = self._layers.get(name)
        if lyr is None or not sees(scope, name, lyr.schema.classification):
            raise UnknownCollection(name)
        return lyr if isinstance(scope, Access) else scope.apply(lyr)

    holds = True
    """Whether every layer is held in memory (else windows are read from the store)."""

    def memo(self, key: Hashable, make: Callable[[], T]) -> T:
        """`make()`, kept under `key` (which names the revisions it rests on) with the few
        hundred most lately made."""
        with self._lock:
            found = self._memo.get(key, _NONE)
        if found is not _NONE:
            return found
        value = make()
        with self._lock:
            self._memo[key] = value
            while len(self._memo) > MEMO_KEEP:
                self._memo.pop(next(iter(self._memo)))
        return value

    def around(
        self,
        name: str,
        scope: Lens,
        bbox: Bounds | None,
        thin: Thinning | None = None,
        match: Match | None = None,
    ) -> Layer:
        """A layer holding at least every feature of `name` whose box meets `bbox` (None:
        every feature; with `thin`, of its lines and polygons those a tile below the detail
        zoom keeps; with `match`, of those the ones it matches), in stored order, as `scope`
        may see it: what a tile or a query there reads. Here, the layer held."""
        return self.layer(name, scope)

    def picked(self, name: str, scope: Lens, ids: Sequence[str]) -> Layer:
        """A layer holding at least the features `ids` of `name` (those that exist), as
        `scope` may see it. Here, the layer held."""
        return self.layer(name, scope)

    def head(self, name: str, scope: Lens) -> Head:
        """What describes a vector layer (name, schema, metadata, bounds, count) without its
        features; `UnknownCollection` when absent or not visible."""
        return self.layer(name, scope)

    def heads(self, scope: Lens) -> dict[str, Head]:
        """`head` of every vector layer visible at `scope`, by name."""
        return dict(self.layers(scope))

    def page(self, name: str, scope: Lens, limit: int, offset: int) -> tuple[Layer, int] | None:
        """Features `offset` to `offset + limit` of `name` as `scope` sees it, in stored order,
        and how many it sees; None when the layer held is to be paged instead (here)."""
        return None

    def select(
        self, name: str, scope: Lens, where: Where, limit: int, offset: int
    ) -> tuple[Layer, int] | None:
        """Features `offset` to `offset + limit`, in stored order, of those of `name` that
        `scope` sees and that meet `where`, and how many do, as the store answers them in one
        query; None when they are to be selected in memory instead (here: the layer held)."""
        return None

    def chunks(self, name: str, scope: Lens, where: Where | None = None) -> Iterator[Layer]:
        """`name` as `scope` sees it, in stored order, a chunk at a time (here: one, the layer
        held); with `where`, at least the features meeting it (the caller still selects)."""
        yield self.layer(name, scope)

    def temporal(self, name: str, scope: Lens) -> list[str | None] | None:
        """The temporal extent of a vector layer as `scope` sees it (`layers.life`)."""
        return temporal_extent(self.layer(name, scope))

    def raster(self, name: str, scope: Lens) -> RasterInfo:
        """One raster collection; `UnknownCollection` when absent or not visible."""
        r = self._rasters.get(name)
        if r is None or not sees(scope, name, r.classification):
            raise UnknownCollection(name)
        return r


def sift(scope: Lens, layer: Layer) -> tuple[Layer, np.ndarray]:
    """A layer read from the store (a past version, a feature's history) as `scope` may see
    it, and the mask of its rows kept (the caller must have checked the collection is
    visible)."""
    if isinstance(scope, Access):
        return layer, np.ones(len(layer), dtype=bool)
    return scope.sift(layer)


def hidden_fields(scope: Lens, schema: LayerSchema) -> frozenset[str]:
    """The fields of `schema` that `scope` may not see."""
    return frozenset() if isinstance(scope, Access) else scope.hidden(schema)


def lens_key(scope: Lens) -> str:
    """Text naming what `scope` sees (the same for callers who see the same)."""
    return scope.label if isinstance(scope, Access) else scope.key


def sees(scope: Lens, name: str, classification: Access) -> bool:
    """Whether a collection `name` classified `classification` is visible at `scope`."""
    if isinstance(scope, Access):
        return classification <= scope
    return scope.sees(name, classification)


def _boxes_of(parts: list[Part]) -> np.ndarray:
    """The distinct boxes (lon/lat, `(k, 4)`) the applied `parts` touch, before and after."""
    boxes = [
        np.array([b for b in (p.old, p.new) if b is not None], dtype=float).reshape(-1, 4)
        if isinstance(p, Change)
        else p.boxes[~np.isnan(p.boxes[:, 0])]
        for p in parts
    ]
    return np.unique(np.concatenate(boxes), axis=0) if boxes else np.empty((0, 4))


def _last(entry: Change | StateRun) -> int:
    return entry.last if isinstance(entry, StateRun) else entry.seq


def _after(entry: Change | StateRun, seq: int) -> Change | StateRun | None:
    """`entry` without what is up to `seq` (None: all of it)."""
    if _last(entry) <= seq:
        return None
    if isinstance(entry, StateRun):
        return entry.after(seq)
    return entry


def _runs(group: list[Change | StateRun]) -> list[list[Change | StateRun]]:
    """`group` cut where its entries go from runs of readings to other entries or back."""
    out: list[list[Change | StateRun]] = []
    for e in group:
        if out and isinstance(out[-1][0], StateRun) == isinstance(e, StateRun):
            out[-1].append(e)
        else:
            out.append([e])
    return out


def _part(entry: Change | StateRun, layer: Layer | None) -> Part:
    """An entry as applied, a reading's box that of its feature in `layer`."""
    if isinstance(entry, Change):
        return entry
    rows = layer.rows_of(entry.ids) if layer is not None and len(layer) else None
    return _applied(entry, layer, rows)


def _applied(run: StateRun, layer: Layer | None, rows: np.ndarray | None) -> AppliedRun:
    boxes = np.full((len(run.ids), 4), np.nan)
    if layer is not None and rows is not None:
        known = rows >= 0
        boxes[known] = layer.boxes()[rows[known]]
    return AppliedRun(run, boxes)


def _known(run: AppliedRun) -> AppliedRun | None:
    """`run`, when the box of every entry's feature is known."""
    return None if np.isnan(run.boxes[:, 0]).any() else run


def _with_runs(held: Layer, runs: list[StateRun]) -> tuple[Layer, list[Part]]:
    """Runs of readings applied column-wise: each entry sets its values, one more version,
    recorded at its run's time (what the store lays over the stored rows)."""
    ids = [fid for r in runs for fid in r.ids]
    rows = held.rows_of(ids) if len(held) else np.full(len(ids), -1)
    n = len(held)
    counts = np.zeros(n, dtype=np.int64)
    stamps = np.full(n, np.iinfo(np.int64).min, dtype=np.int64)
    per: dict[str, dict[int, Any]] = {}
    fields = set(held.schema.field_names)
    k = 0
    for r in runs:
        ms = int(r.time.timestamp() * 1000 + 0.5)
        part = rows[k : k + len(r.ids)]
        k += len(r.ids)
        known = part[part >= 0]
        np.add.at(counts, known, 1)
        stamps[known] = np.maximum(stamps[known], ms)
        for row, sets in zip(part.tolist(), r.sets, strict=True):
            if row < 0:
                continue
            for p, v in sets.items():
                if p in fields:
                    per.setdefault(p, {})[row] = v  # a later one wins
    values = {
        p: (np.fromiter(got.keys(), dtype=np.int64, count=len(got)), list(got.values()))
        for p, got in per.items()
    }
    layer = held.with_state(values, counts, stamps) if counts.any() else held
    out: list[Part] = []
    k = 0
    for r in runs:
        out.append(_applied(r, layer, rows[k : k + len(r.ids)]))
        k += len(r.ids)
    return layer, out


def _with_state(held: Layer, group: list[Change]) -> Layer | None:
    """The features a run of entries that carry their values (readings) changed, as they are
    after them: each entry sets its values, one more version, recorded at its time. None when
    an entry carries no values or names a feature or property `held` lacks."""
    if any(c.state is None or c.id is None for c in group):
        return None
    order = list(dict.fromkeys(str(c.id) for c in group))
    rows = held.row_of.get_indexer(order)
    if (rows < 0).any():
        return None
    now = held.take(rows)
    fields = {f.name: f for f in held.schema.fields}
    where = {fid: i for i, fid in enumerate(order)}
    columns: dict[str, list[Any]] = {}
    version = now.attrs[VERSION].to_numpy(dtype=np.int64).copy()
    # Milliseconds since the epoch: pandas converting a list of mixed timestamps took 6 us each.
    updated = now.attrs[UPDATED].to_numpy(dtype="datetime64[ms]").astype(np.int64)
    stamps: dict[Any, int] = {}
    for c in group:
        i = where[str(c.id)]
        for prop, value in (c.state or {}).items():
            if prop not in fields:
                return None
            if prop not in columns:
                col = now.attrs[prop].astype(object)
                columns[prop] = col.where(col.notna(), None).tolist()
            columns[prop][i] = value
        version[i] += 1
        ms = stamps.get(c.time)
        if ms is None:
            ms = stamps[c.time] = int(c.time.timestamp() * 1000 + 0.5)
        updated[i] = ms
    for prop, values in columns.items():
        now.attrs[prop] = coerce(pd.Series(values, dtype=object), fields[prop].type)
    now.attrs[VERSION] = version
    now.attrs[UPDATED] = pd.Series(updated.astype("datetime64[ms]")).dt.tz_localize("UTC")
    return now


class WindowCatalog(Catalog):
    """A catalog that holds no layer, over a database store: a tile or a query reads the
    features of its window from the store (`around`), collection documents come from the
    store's list of layers (`head`), and what still needs a whole layer (`layer`: searches,
    statistics, filters without a box) reads it into a cache of `whole` layers, the
    least lately used dropped first and a layer dropped when it changes. Following the change
    log applies nothing in memory: it tells the listeners (tiles, events) what changed where."""

    holds = False
    chunk_size = 50_000
    """Features read at a time by a scan of a whole layer (`chunks`)."""

    def __init__(self, store: Store, whole: int = 2) -> None:
        self._heads: dict[str, LayerHead] = {}
        self._whole: OrderedDict[str, Layer] = OrderedDict()
        self._keep = whole
        self._stale_heads: set[str] = set()
        super().__init__(store)

    def reload(self, name: str | None = None, seq: int | None = None) -> None:
        """Re-read the list of layers (one collection, or all, changed as a whole)."""
        everything = Access.RESTRICTED
        if name is None:
            seq = self.store.revision()
        infos = self.store.layers(everything)
        rasters = self.store.rasters(everything)
        heads = {n: LayerHead(i.schema, i.meta, i.bounds, i.count) for n, i in infos.items()}
        changed = [*heads, *rasters] if name is None else [name]
        with self._lock:
            if name is None:
                self.seq = max(self.seq, seq or 0)
            self._heads, self._rasters = heads, rasters
            self._stale_heads.clear()
            for n in changed:
                self._revisions[n] = max(self._revisions.get(n, 0) + 1, seq or self.seq)
                self._whole.pop(n, None)
        for n in changed:
            self.notify(n, None)

    def _follow(self, name: str, group: list[Change | StateRun]) -> list[Part]:
        """One collection's entries, told to the listeners with the boxes they touch (a
        reading's box read from the store): nothing is held to apply them to."""
        last = _last(group[-1])
        if any(isinstance(e, Change) and e.id is None for e in group):
            self.reload(name, last)
            return [self._part(e) for e in group]
        done = [self._part(e) for e in group]
        with self._lock:
            self._whole.pop(name, None)
            self._revisions[name] = max(self._revisions.get(name, 0), last)
            if any(isinstance(p, Change) for p in done):
                self._stale_heads.add(name)  # a count or bounds may have changed
        changed = _boxes_of(done)
        if len(changed):
            self.notify(name, changed)
        return done

    def _part(self, entry: Change | StateRun) -> Part:
        if isinstance(entry, Change):
            return entry
        try:
            boxes = self.store.boxes(entry.collection, entry.ids)
        except UnknownCollection:
            boxes = np.full((len(entry.ids), 4), np.nan)
        return AppliedRun(entry, boxes)

    def read_back(self, since: int, limit: int) -> list[Part]:
        return [self._part(e) for e in self.store.log(since, limit)]

    def boxed(self, run: StateRun) -> AppliedRun | None:
        done = self._part(run)
        return _known(done) if isinstance(done, AppliedRun) else None

    def put(self, layer: Layer, changed: Bounds | None = None) -> None:
        """A layer changed here: forget what is cached of it and tell the listeners."""
        with self._lock:
            self._whole.pop(layer.name, None)
            self._stale_heads.add(layer.name)
            self._revisions[layer.name] = self._revisions.get(layer.name, 0) + 1
        self.notify(layer.name, None if changed is None else np.array([changed], dtype=float))

    def _head(self, name: str) -> LayerHead | None:
        if name in self._stale_heads:
            info = self.store.layers(Access.RESTRICTED).get(name)
            with self._lock:
                self._stale_heads.discard(name)
                if info is None:
                    self._heads.pop(name, None)
                else:
                    self._heads[name] = LayerHead(info.schema, info.meta, info.bounds, info.count)
        return self._heads.get(name)

    def _visible(self, name: str, scope: Lens) -> LayerHead:
        head = self._head(name)
        if head is None or not sees(scope, name, head.schema.classification):
            raise UnknownCollection(name)
        return head

    def head(self, name: str, scope: Lens) -> Head:
        return self._seen(self._visible(name, scope), scope)

    def heads(self, scope: Lens) -> dict[str, Head]:
        return {
            n: self._seen(h, scope)
            for n in sorted(self._heads)
            if (h := self._head(n)) is not None and sees(scope, n, h.schema.classification)
        }

    def _seen(self, head: LayerHead, scope: Lens) -> Head:
        """`head` as `scope` sees the layer: its schema without the fields hidden; a view
        hiding rows counts and bounds what it sees of the whole layer."""
        if isinstance(scope, Access):
            return head
        scope.note(head.name, head.schema.classification)
        if not scope.limits(head.name):
            return head
        if scope.hides_rows(head.name):
            return self.layer(head.name, scope)
        hidden = scope.hidden(head.schema)
        fields = tuple(f for f in head.schema.fields if f.name not in hidden)
        return replace(head, schema=replace(head.schema, fields=fields))

    def temporal(self, name: str, scope: Lens) -> list[str | None] | None:
        head = self._visible(name, scope)
        if not isinstance(scope, Access) and scope.hides_rows(name):
            return temporal_extent(self.layer(name, scope))
        key = ("temporal", name, self._revisions.get(name, 0))
        return self.memo(key, lambda: self.store.temporal(head.name))

    def page(self, name: str, scope: Lens, limit: int, offset: int) -> tuple[Layer, int] | None:
        self._visible(name, scope)
        if not isinstance(scope, Access) and scope.hides_rows(name):
            return None  # which rows it sees is worked out over the whole layer
        got, count = self.store.page(name, Access.RESTRICTED, limit, offset)
        return self._through(got, scope), count

    def select(
        self, name: str, scope: Lens, where: Where, limit: int, offset: int
    ) -> tuple[Layer, int] | None:
        self._visible(name, scope)
        if not isinstance(scope, Access) and scope.hides_rows(name):
            return None  # which rows it sees is worked out over the whole layer
        try:
            got, count = self.store.select(name, Access.RESTRICTED, where, limit, offset)
        except Uncompiled:
            return None
        return self._through(got, scope), count

    def chunks(self, name: str, scope: Lens, where: Where | None = None) -> Iterator[Layer]:
        self._visible(name, scope)
        with self._lock:
            whole = self._whole.get(name)
        if whole is not None or (not isinstance(scope, Access) and scope.hides_rows(name)):
            yield self.layer(name, scope)  # held a while anyway / its view is of the whole
            return
        for chunk in self.store.chunks(name, Access.RESTRICTED, self.chunk_size, where):
            yield self._through(chunk, scope)

    def _through(self, layer: Layer, scope: Lens) -> Layer:
        return layer if isinstance(scope, Access) else scope.apply(layer)

    def around(
        self,
        name: str,
        scope: Lens,
        bbox: Bounds | None,
        thin: Thinning | None = None,
        match: Match | None = None,
    ) -> Layer:
        if bbox is None:
            return self.layer(name, scope)
        self._visible(name, scope)
        with self._lock:
            whole = self._whole.get(name)
        if whole is not None:  # held for a while anyway
            return self._through(whole, scope)
        if thin is not None and not isinstance(scope, Access) and scope.hides_rows(name):
            thin = None  # the most important of what the caller sees may lie further down
        window = self.store.window(name, bbox, Access.RESTRICTED, thin, match)
        return self._through(window, scope)

    def picked(self, name: str, scope: Lens, ids: Sequence[str]) -> Layer:
        self._visible(name, scope)
        return self._through(self.store.features(name, ids, Access.RESTRICTED), scope)

    def layer(self, name: str, scope: Lens) -> Layer:
        self._visible(name, scope)
        with self._lock:
            whole = self._whole.get(name)
            if whole is not None:
                self._whole.move_to_end(name)
            revision = self._revisions.get(name, 0)
        if whole is None:
            whole = self.store.load(name, Access.RESTRICTED)
            with self._lock:
                if self._revisions.get(name, 0) == revision:  # not changed meanwhile
                    self._whole[name] = whole
                    while len(self._whole) > self._keep:
                        self._whole.popitem(last=False)
        return self._through(whole, scope)

    def layers(self, scope: Lens) -> dict[str, Layer]:
        return {n: self.layer(n, scope) for n in self.heads(scope)}

    def visible(self, scope: Lens, names: Sequence[str] | None = None) -> list[str]:
        if names is None:
            return [
                n
                for n in sorted(self._heads)
                if (h := self._head(n)) is not None and sees(scope, n, h.schema.classification)
            ]
        for n in names:
            self._visible(n, scope)
        return list(names)

    def search(
        self, scope: Lens, names: Sequence[str], text: str, words: Sequence[str], limit: int
    ) -> list[Hit]:
        """The store searches its table of keys (`Store.search`), leaving out the fields
        `scope` hides; a layer of which `scope` hides rows is read whole and searched in
        memory (which rows it sees is worked out over the whole layer)."""
        pushed: dict[str, frozenset[str]] = {}
        held: dict[str, Layer] = {}
        for n in names:
            head = self._visible(n, scope)
            if isinstance(scope, Access):
                pushed[n] = frozenset()
            elif scope.hides_rows(n):
                held[n] = self.layer(n, scope)
            else:
                scope.note(n, head.schema.classification)
                pushed[n] = scope.hidden(head.schema) if scope.limits(n) else frozenset()
        hits = self.store.search(pushed, text, words, limit) if pushed else []
        return best([*hits, *search_layers(held, text, words, limit)], limit)


class _AsOfStore:
    """A store as it was recorded at one instant, read only (`Catalog.as_of`)."""

    def __init__(self, store: Store, time: str) -> None:
        self.store, self.time = store, time
        self.location = f"{store.location} as of {time}"

    def layers(self, scope: Access) -> Any:
        return self.store.layers(scope)

    def rasters(self, scope: Access) -> dict[str, RasterInfo]:
        return self.store.rasters(scope)

    def load(self, name: str, scope: Access) -> Layer:
        return self.store.as_of(name, self.time, scope)

    def revision(self) -> int:
        return 0

    def changes(self, since: int, limit: int = 0) -> list[Change]:
        return []

    def log(self, since: int, limit: int = 0) -> list[Change | StateRun]:
        return []


class Snapshots:
    """Catalogs of the store as recorded at past instants (`asof=`), the newest few kept:
    what was recorded at an instant already past never changes."""

    def __init__(self, catalog: Catalog, keep: int = 4) -> None:
        self.catalog = catalog
        self.keep = keep
        self._held: OrderedDict[str, Catalog] = OrderedDict()
        self._lock = threading.Lock()

    def at(self, time: str) -> Catalog:
        """The catalog as the store recorded it at `time` (ISO, UTC, milliseconds)."""
        with self._lock:
            got = self._held.get(time)
            if got is None:
                got = Catalog(_AsOfStore(self.catalog.store, time))  # type: ignore[arg-type]
                self._held[time] = got
                while len(self._held) > self.keep:
                    self._held.popitem(last=False)
            else:
                self._held.move_to_end(time)
            return got
