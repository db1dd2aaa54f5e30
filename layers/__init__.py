"""Asset schemas, in-memory layers, the catalog and the stores that persist them."""
