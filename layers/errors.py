"""Errors raised by the layers package; the HTTP layer maps each to a status code."""


class LayersError(Exception):
    """Root of every error the layers package raises on purpose."""


class UnknownCollection(LayersError):
    """No such collection, or none the caller may see (the two are indistinguishable on purpose)."""

    def __init__(self, name: str) -> None:
        super().__init__(f"unknown collection {name!r}")
        self.name = name


class UnknownFeature(LayersError):
    """No feature with that id in the collection."""

    def __init__(self, collection: str, fid: str) -> None:
        super().__init__(f"collection {collection!r} has no feature {fid!r}")
        self.collection = collection
        self.fid = fid


class InvalidSchema(LayersError):
    """A custom schema, or data offered against a schema, that cannot be used."""


class PreconditionFailed(LayersError):
    """A conditional change found the feature in another state than the caller expected (a
    stale ETag, or an id that exists already): nothing was changed."""


class StoreError(LayersError):
    """The store could not be opened or written; nothing was changed."""


class Uncompiled(LayersError):
    """A selection the store cannot answer in one query (`Store.select`): the caller reads
    the layer and selects in memory instead."""
