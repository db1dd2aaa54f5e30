"""China's web-map offsets: GCJ-02 (Gaode/Amap, Tencent, Google China) and BD-09 (Baidu).

Both are deliberate, non-linear shifts of WGS84 by up to several hundred metres. The forward
formulas are public; their inverses have no closed form, so they are solved here by fixed-point
iteration until the forward image matches to 1e-10 degrees (about 0.01 mm), all vectorised
over numpy arrays. Points outside mainland China carry no offset and are left unchanged, as
every GCJ-02 implementation does.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import shapely

_A = 6378245.0  # Krasovsky 1940 semi-major axis, as the GCJ-02 formula uses
_EE = 0.00669342162296594323  # its first eccentricity squared
_X_PI = np.pi * 3000.0 / 180.0
_TOL = 1e-10
_MAX_ITER = 50


def in_china(lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
    """Whether points fall in the box where the GCJ-02 offset applies."""
    return (lon >= 72.004) & (lon <= 137.8347) & (lat >= 0.8293) & (lat <= 55.8271)


def _dlat(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    r = -100.0 + 2.0 * x + 3.0 * y + 0.2 * y * y + 0.1 * x * y + 0.2 * np.sqrt(np.abs(x))
    r += (20.0 * np.sin(6.0 * x * np.pi) + 20.0 * np.sin(2.0 * x * np.pi)) * 2.0 / 3.0
    r += (20.0 * np.sin(y * np.pi) + 40.0 * np.sin(y / 3.0 * np.pi)) * 2.0 / 3.0
    r += (160.0 * np.sin(y / 12.0 * np.pi) + 320.0 * np.sin(y * np.pi / 30.0)) * 2.0 / 3.0
    return r


def _dlon(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    r = 300.0 + x + 2.0 * y + 0.1 * x * x + 0.1 * x * y + 0.1 * np.sqrt(np.abs(x))
    r += (20.0 * np.sin(6.0 * x * np.pi) + 20.0 * np.sin(2.0 * x * np.pi)) * 2.0 / 3.0
    r += (20.0 * np.sin(x * np.pi) + 40.0 * np.sin(x / 3.0 * np.pi)) * 2.0 / 3.0
    r += (150.0 * np.sin(x / 12.0 * np.pi) + 300.0 * np.sin(x / 30.0 * np.pi)) * 2.0 / 3.0
    return r


def wgs84_to_gcj02(lon: np.ndarray, lat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """GCJ-02 coordinates of WGS84 points (the forward, published formula)."""
    lon = np.asarray(lon, dtype=float)
    lat = np.asarray(lat, dtype=float)
    dlat = _dlat(lon - 105.0, lat - 35.0)
    dlon = _dlon(lon - 105.0, lat - 35.0)
    rad = lat / 180.0 * np.pi
    magic = 1 - _EE * np.sin(rad) ** 2
    sqrt_magic = np.sqrt(magic)
    dlat = (dlat * 180.0) / ((_A * (1 - _EE)) / (magic * sqrt_magic) * np.pi)
    dlon = (dlon * 180.0) / (_A / sqrt_magic * np.cos(rad) * np.pi)
    inside = in_china(lon, lat)
    return np.where(inside, lon + dlon, lon), np.where(inside, lat + dlat, lat)


def gcj02_to_bd09(lon: np.ndarray, lat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """BD-09 coordinates of GCJ-02 points (Baidu's forward formula)."""
    lon = np.asarray(lon, dtype=float)
    lat = np.asarray(lat, dtype=float)
    z = np.sqrt(lon * lon + lat * lat) + 0.00002 * np.sin(lat * _X_PI)
    theta = np.arctan2(lat, lon) + 0.000003 * np.cos(lon * _X_PI)
    return z * np.cos(theta) + 0.0065, z * np.sin(theta) + 0.006


def _invert(forward, lon: np.ndarray, lat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Solve forward(x) = (lon, lat) for x by fixed-point iteration (the offsets are smooth
    and small, so each step shrinks the error by orders of magnitude)."""
    lon = np.asarray(lon, dtype=float)
    lat = np.asarray(lat, dtype=float)
    x, y = lon.copy(), lat.copy()
    for _ in range(_MAX_ITER):
        fx, fy = forward(x, y)
        dx, dy = fx - lon, fy - lat
        x -= dx
        y -= dy
        err = np.maximum(np.abs(dx), np.abs(dy))
        if not np.any(err[np.isfinite(err)] > _TOL):
            break
    return x, y


def gcj02_to_wgs84(lon: np.ndarray, lat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """WGS84 coordinates of GCJ-02 points (the inverse, solved to 1e-10 degrees)."""
    return _invert(wgs84_to_gcj02, lon, lat)


def bd09_to_gcj02(lon: np.ndarray, lat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """GCJ-02 coordinates of BD-09 points (the inverse, solved to 1e-10 degrees)."""
    return _invert(gcj02_to_bd09, lon, lat)


def bd09_to_wgs84(lon: np.ndarray, lat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """WGS84 coordinates of BD-09 points."""
    return gcj02_to_wgs84(*bd09_to_gcj02(lon, lat))


def undo_offsets(geometry: np.ndarray, coords: Literal["gcj02", "bd09"]) -> np.ndarray:
    """Geometries in GCJ-02 or BD-09 moved back to WGS84, every vertex at once."""
    inverse = gcj02_to_wgs84 if coords == "gcj02" else bd09_to_wgs84

    def move(xy: np.ndarray) -> np.ndarray:
        x, y = inverse(xy[:, 0], xy[:, 1])
        return np.column_stack([x, y])

    return shapely.transform(np.asarray(geometry, dtype=object), move)
