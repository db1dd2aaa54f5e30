"""The catalog: every layer of a store held in memory for serving, built once at start-up."""

from __future__ import annotations

import threading
from collections.abc import Callable

from layers.errors import UnknownCollection
from layers.layer import Layer
from layers.models import Access, Bounds
from layers.store import RasterInfo, Store

ChangeListener = Callable[[str, Bounds | None], None]
"""Called with a collection name and the box that changed (None: the whole layer)."""


class Catalog:
    """In-memory layers and raster handles over a `Store`, filtered by the caller's scope."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._lock = threading.Lock()
        self._layers: dict[str, Layer] = {}
        self._rasters: dict[str, RasterInfo] = {}
        self._revisions: dict[str, int] = {}
        self._listeners: list[ChangeListener] = []
        self.reload()

    def reload(self, name: str | None = None) -> None:
        """Re-read one collection (or all) from the store and tell the listeners."""
        everything = Access.RESTRICTED
        if name is None:
            layers = {n: self.store.load(n, everything) for n in self.store.layers(everything)}
            rasters = self.store.rasters(everything)
            with self._lock:
                self._layers, self._rasters = layers, rasters
                for n in [*layers, *rasters]:
                    self._revisions[n] = self._revisions.get(n, 0) + 1
            changed = [*layers, *rasters]
        else:
            rasters = self.store.rasters(everything)
            with self._lock:
                if name in rasters:
                    self._rasters[name] = rasters[name]
                elif name in self.store.layers(everything):
                    self._layers[name] = self.store.load(name, everything)
                else:
                    self._layers.pop(name, None)
                    self._rasters.pop(name, None)
                self._revisions[name] = self._revisions.get(name, 0) + 1
            changed = [name]
        for n in changed:
            self.notify(n, None)

    def put(self, layer: Layer, changed: Bounds | None = None) -> None:
        """Replace a layer held in memory (after an edit) and tell the listeners what changed."""
        with self._lock:
            self._layers[layer.name] = layer
            self._revisions[layer.name] = self._revisions.get(layer.name, 0) + 1
        self.notify(layer.name, changed)

    def subscribe(self, listener: ChangeListener) -> None:
        """Call `listener` on every change of a collection."""
        self._listeners.append(listener)

    def notify(self, name: str, changed: Bounds | None) -> None:
        """Tell every listener that `changed` of collection `name` changed."""
        for listener in list(self._listeners):
            listener(name, changed)

    def revision(self, name: str) -> int:
        """A number that grows with every change of the collection (for cache keys)."""
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
