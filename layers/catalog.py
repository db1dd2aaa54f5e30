"""The catalog: every layer of a store held in memory for serving, loaded at start-up and kept
in step with the store by its change log (`follow`)."""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from layers.errors import UnknownCollection
from layers.layer import UPDATED, VERSION, Layer, coerce
from layers.models import Access, Bounds, Change
from layers.store import RasterInfo, Store

ChangeListener = Callable[[str, Bounds | None], None]
"""Called with a collection name and the box that changed (None: the whole layer)."""
LayerHook = Callable[[Layer], None]
"""Called with a layer about to be served in place of another (to make its derived data)."""


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

    def follow(self) -> list[Change]:
        """Apply the store's changes since the last one applied, feature by feature: each
        collection's changed features are read from the store and patched into its layer (a
        `LAYER` change reloads the collection), the new layer made ready (`prepare`) and
        swapped in, then the listeners told the old and new box of every change. Threads
        calling at once apply each change once."""
        with self._following:
            changes = self.store.changes(self.seq)
            if not changes:
                return []
            groups: dict[str, list[Change]] = {}
            for c in changes:
                groups.setdefault(c.collection, []).append(c)
            for name, group in groups.items():
                held = self._layers.get(name)
                if held is None or any(c.id is None for c in group):
                    self.reload(name, group[-1].seq)
                    continue
                ids = [c.id for c in group if c.id is not None]
                now = _with_state(held, group)
                gone: set[str] = set()
                if now is None:  # read back what the entries do not carry
                    now = self.store.features(name, ids, Access.RESTRICTED)
                    gone = set(ids) - set(now.ids.tolist())
                layer = held.patched(now, gone)
                layer.previous = weakref.ref(held)
                if self.prepare is not None:
                    self.prepare(layer)
                with self._lock:
                    self._layers[name] = layer
                    self._revisions[name] = group[-1].seq
                boxes = dict.fromkeys(b for c in group for b in (c.old, c.new) if b is not None)
                for box in boxes:
                    self.notify(name, box)
            self.seq = changes[-1].seq
            return changes

    def put(self, layer: Layer, changed: Bounds | None = None) -> None:
        """Replace a layer held in memory (after an edit) and tell the listeners what changed."""
        held = self._layers.get(layer.name)
        if held is not None and held is not layer and layer.previous is None:
            layer.previous = weakref.ref(held)
        with self._lock:
            self._layers[layer.name] = layer
            self._revisions[layer.name] = self._revisions.get(layer.name, 0) + 1
        self.notify(layer.name, changed)

    def subscribe(self, listener: ChangeListener) -> None:
        """Call `listener` on every change of a collection."""
        self._listeners.append(listener)

    def unsubscribe(self, listener: ChangeListener) -> None:
        """Stop calling `listener` (an app that stops serving this catalog)."""
        self._listeners.remove(listener)

    def notify(self, name: str, changed: Bounds | None) -> None:
        """Tell every listener that `changed` of collection `name` changed."""
        for listener in list(self._listeners):
            listener(name, changed)

    def revision(self, name: str) -> int:
        """A number that grows with every change of the collection: the store's change-log
        sequence of its last change applied (the same in every process serving the same data),
        or more after a change made here only (`put`)."""
        return self._revisions.get(name, 0)

    def names(self, scope: Access) -> list[str]:
        """Every collection visible at `scope`, vector then raster, sorted."""
        return [*self.layers(scope), *self.rasters(scope)]

    def layers(self, scope: Access) -> dict[str, Layer]:
        """Vector layers visible at `scope`, by name."""
        return {
            n: lyr for n, lyr in sorted(self._layers.items()) if lyr.schema.classification <= scope
        }

    def rasters(self, scope: Access) -> dict[str, RasterInfo]:
        """Raster collections visible at `scope`, by name."""
        return {n: r for n, r in sorted(self._rasters.items()) if r.classification <= scope}

    def layer(self, name: str, scope: Access) -> Layer:
        """One vector layer; `UnknownCollection` when absent or not visible at `scope`."""
        lyr = self._layers.get(name)
        if lyr is None or lyr.schema.classification > scope:
            raise UnknownCollection(name)
        return lyr

    def raster(self, name: str, scope: Access) -> RasterInfo:
        """One raster collection; `UnknownCollection` when absent or not visible."""
        r = self._rasters.get(name)
        if r is None or r.classification > scope:
            raise UnknownCollection(name)
        return r


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
    updated = list(now.attrs[UPDATED])
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
        updated[i] = c.time
    for prop, values in columns.items():
        now.attrs[prop] = coerce(pd.Series(values, dtype=object), fields[prop].type)
    now.attrs[VERSION] = version
    now.attrs[UPDATED] = pd.to_datetime(pd.Series(updated), utc=True).astype("datetime64[ms, UTC]")
    return now


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
