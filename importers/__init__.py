"""Importers: city files (any GDAL format), OpenStreetMap extracts and rasters into a store.

Every vector import ends in `importers.pipeline.ingest` (files enter through
`importers.pipeline.import_file`), which maps, cleans, repairs and identifies the features and
writes them atomically, returning an `importers.report.ImportReport`.
"""
