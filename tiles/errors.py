"""Errors raised by the tiles package; the HTTP layer maps each to a status code."""


class TilesError(Exception):
    """Root of every error the tiles package raises on purpose."""


class TileOutOfMatrix(TilesError):
    """A z/x/y that is not in the WebMercatorQuad tile matrix set (answer 404)."""

    def __init__(self, z: int, x: int, y: int, reason: str) -> None:
        super().__init__(f"tile {z}/{x}/{y} is outside the WebMercatorQuad matrix: {reason}")
        self.z, self.x, self.y = z, x, y


class InvalidTileRequest(TilesError):
    """Tile parameters that cannot be used: an unknown raster style, a bad zoom range (answer 400)."""


class RasterError(TilesError):
    """A raster collection that cannot be read or rendered (answer 404 for the tile, logged)."""
