"""The tile cache: stable ETags, exact invalidation at every zoom, no stale puts, LRU bound."""

from __future__ import annotations

import gzip

import morecantile
import numpy as np
import pytest
import shapely

from layers.models import Bounds
from tiles.cache import TileCache, TileKey, etag, pack
from tiles.grid import TMS, Tile


def _fill(
    cache: TileCache, box: Bounds, zooms: range, collections: tuple[str, ...]
) -> list[TileKey]:
    keys = []
    for t in TMS.tiles(*box, zooms=list(zooms)):
        key = TileKey.of(Tile(t.x, t.y, t.z), collections)
        cache.put(key, f"{t.z}/{t.x}/{t.y}".encode() * 10)
        keys.append(key)
    return keys


def test_etag_is_stable_for_identical_content_and_differs_otherwise() -> None:
    a, b = pack(b"\x1a\x05hello"), pack(b"\x1a\x05hello")
    assert a.etag == b.etag == etag(b"\x1a\x05hello")
    assert a.data == b.data  # gzip without a timestamp: same bytes every time
    assert gzip.decompress(a.data) == b"\x1a\x05hello" == a.raw()
    assert pack(b"\x1a\x05hellp").etag != a.etag
    empty = pack(b"")
    assert empty.empty and empty.data == b"" and empty.raw() == b""


def test_invalidation_drops_exactly_the_tiles_the_box_touches() -> None:
    cache = TileCache()
    area = Bounds(114.25, 30.30, 114.40, 30.42)
    keys = _fill(cache, area, range(10, 16), ("pipes",))
    other = _fill(cache, area, range(12, 14), ("parks",))
    both = _fill(cache, area, range(13, 14), ("parks", "pipes"))
    changed = Bounds(114.3301, 30.3502, 114.3309, 30.3511)
    dropped = cache.invalidate("pipes", changed)
    box = shapely.box(*changed)
    expect_gone = set()
    for key in keys + both:
        tb = TMS.bounds(morecantile.Tile(key.x, key.y, key.z))
        if shapely.box(tb.left, tb.bottom, tb.right, tb.top).intersects(box):
            expect_gone.add(key)
    assert len(expect_gone) >= 6  # at least one per zoom 10..15
    assert dropped == len(expect_gone)
    for key in keys + both:
        assert (cache.get(key) is None) == (key in expect_gone), key
    assert all(cache.get(k) is not None for k in other)  # another collection: untouched


def test_a_box_on_a_tile_edge_touches_both_neighbours() -> None:
    cache = TileCache()
    left, right = Tile(100, 200, 9), Tile(101, 200, 9)
    for t in (left, right, Tile(102, 200, 9)):
        cache.put(TileKey.of(t, ["roads"]), b"x")
    edge = TMS.bounds(morecantile.Tile(101, 200, 9)).left
    lat = TMS.bounds(morecantile.Tile(101, 200, 9)).bottom + 0.01
    assert cache.invalidate("roads", Bounds(edge, lat, edge, lat)) == 2
    assert cache.get(TileKey.of(Tile(102, 200, 9), ["roads"])) is not None


def test_none_box_drops_the_whole_collection_and_scope_is_part_of_the_key() -> None:
    cache = TileCache()
    t = Tile(3, 4, 5)
    pub = TileKey.of(t, ["lights"], scope="public")
    internal = TileKey.of(t, ["lights"], scope="internal", filter="status='on'")
    cache.put(pub, b"a")
    cache.put(internal, b"b")
    assert cache.get(pub).raw() == b"a" and cache.get(internal).raw() == b"b"
    assert cache.invalidate("lights", None) == 2
    assert len(cache) == 0 and cache.nbytes == 0


def test_a_tile_rendered_before_a_change_is_not_cached_after_it() -> None:
    cache = TileCache()
    key = TileKey.of(Tile(0, 0, 1), ["pipes"])
    gen = cache.generation(key.collections)
    cache.invalidate("pipes", Bounds(-10, -10, 10, 10))  # the data changes mid-render
    served = cache.put(key, b"stale", generation=gen)
    assert served.raw() == b"stale" and cache.get(key) is None
    fresh = cache.put(key, b"fresh")
    assert cache.get(key) is fresh and fresh.raw() == b"fresh"
    cache.invalidate("pipes", None)
    calls = []
    got = cache.fetch(key, lambda: calls.append(1) or b"fresh")
    again = cache.fetch(key, lambda: calls.append(1) or b"other")
    assert got.raw() == again.raw() == b"fresh" and calls == [1]
    assert cache.hits >= 1


def test_both_encodings_are_kept_and_counted_once_made() -> None:
    rng = np.random.default_rng(1)
    raw = b"\x1a" + rng.integers(0, 4, 5000, dtype=np.uint8).tobytes()  # compressible
    cache = TileCache(level=1)
    key = TileKey.of(Tile(3, 5, 4), ["pipes"])
    tile = cache.put(key, raw)
    assert not tile.compressed and cache.nbytes == len(raw)  # identity clients never gzip
    gz = cache.gzip(key, tile)
    assert gzip.decompress(gz) == raw and len(gz) < len(raw)
    assert cache.get(key).raw() is tile.raw()  # a hit serves the kept raw bytes as they are
    assert cache.gzip(key, cache.get(key)) is gz  # compressed once, then kept
    assert cache.nbytes == len(raw) + len(gz)
    cache.invalidate("pipes", None)
    assert cache.nbytes == 0 and len(cache) == 0


def test_a_tile_from_another_cache_lands_only_on_the_same_data() -> None:
    """Worker processes share rendered tiles; one made before an invalidation is refused."""
    mine, theirs = TileCache(), TileCache()
    key = TileKey.of(Tile(3, 5, 4), ["pipes", "parks"])
    made = pack(b"\x1a\x03abc", 1)
    assert mine.insert(key, made, generation=theirs.generation(key.collections))
    assert mine.get(key) is made and mine.nbytes == made.nbytes
    theirs.invalidate("parks", None)
    other = TileKey.of(Tile(3, 6, 4), ["pipes", "parks"])
    assert not mine.insert(other, made, generation=theirs.generation(other.collections))
    assert mine.get(other) is None
    # Two caches invalidated separately never agree by chance (tokens are not counters).
    mine.invalidate("parks", None)
    assert mine.generation(["parks"]) != theirs.generation(["parks"])


def test_memory_bound_evicts_least_recently_used() -> None:
    rng = np.random.default_rng(0)
    blobs = [rng.integers(0, 256, 3000, dtype=np.uint8).tobytes() for _ in range(10)]
    size = len(blobs[0])
    cache = TileCache(max_bytes=size * 4)
    keys = [TileKey.of(Tile(i, 0, 4), ["pipes"]) for i in range(10)]
    for k, b in zip(keys, blobs, strict=True):
        cache.put(k, b)
        cache.get(keys[0])  # keep the first one in use
    assert cache.nbytes <= size * 4
    assert cache.get(keys[0]) is not None and cache.get(keys[9]) is not None
    assert cache.get(keys[1]) is None


@pytest.mark.parametrize("z", [0, 3, 12, 16])
def test_invalidation_range_matches_morecantile(z: int) -> None:
    from tiles.grid import mercator_box, tile_range

    box = Bounds(114.1, 30.2, 114.6, 30.5)
    x0, y0, x1, y1 = tile_range(mercator_box(box), z)
    tiles = list(TMS.tiles(*box, zooms=[z]))
    assert (x0, x1) == (min(t.x for t in tiles), max(t.x for t in tiles))
    assert (y0, y1) == (min(t.y for t in tiles), max(t.y for t in tiles))


@pytest.mark.parametrize("points", [300, 3000])
def test_many_boxes_at_once_drop_exactly_the_tiles_the_boxes_touch(points: int) -> None:
    """`invalidate_boxes` (a batch of readings' lamps, a few long pipes) against the tiles
    whose lon/lat bounds meet any box, worked out with shapely (more boxes than cached
    tiles at every zoom: each cached tile is tested against the boxes)."""
    area = Bounds(114.25, 30.30, 114.40, 30.42)
    rng = np.random.default_rng(3)
    x = rng.uniform(114.25, 114.40, points)
    y = rng.uniform(30.30, 30.42, points)
    boxes = np.column_stack([x, y, x, y])  # points
    boxes[:5, 2] += 0.05  # and a few long boxes (pipes), wider than many tiles
    cache = TileCache()
    keys = _fill(cache, area, range(11, 17), ("lights",))
    dropped = cache.invalidate_boxes("lights", boxes, revision=7)
    shapes = shapely.envelope(shapely.multipoints(boxes.reshape(-1, 2, 2)))
    tree = shapely.STRtree(shapes)
    expect_gone = set()
    for key in keys:
        tb = TMS.bounds(morecantile.Tile(key.x, key.y, key.z))
        if len(tree.query(shapely.box(tb.left, tb.bottom, tb.right, tb.top), "intersects")):
            expect_gone.add(key)
    gone = {k for k in keys if cache.get(k) is None}
    assert gone == expect_gone and dropped == len(gone) > 300
    assert len(gone) < len(keys)  # not everything
    assert cache.generation(["lights"]) == (7,)


def test_a_changed_tile_is_served_stale_until_drawn_anew() -> None:
    cache = TileCache(refresh_s=60.0)
    key = TileKey.of(Tile(13370, 6780, 14), ["lights"])
    cache.put(key, b"old")
    cache.invalidate("lights", None, revision=2)
    assert cache.get(key) is None  # no longer fresh...
    held = cache.stale(key)
    assert held is not None and held.raw() == b"old"  # ... but served meanwhile
    # Drawn from data that changed again while drawing: kept as the newer stale tile.
    newer = pack(b"newer")
    assert not cache.insert(key, newer, generation=(1,))
    assert cache.stale(key) is newer and cache.get(key) is None
    # Drawn from the data held now: fresh again, nothing stale.
    assert cache.insert(key, pack(b"new"), generation=(2,))
    assert cache.get(key).raw() == b"new" and cache.stale(key) is None
    # Too old to serve: drawn again on the next request (an edit after a quiet while).
    old = TileCache(refresh_s=1e-9)
    old.put(key, b"old")
    old.invalidate("lights", None)
    assert old.stale(key) is None and old.stale(key, any_age=True).raw() == b"old"
    # Without refresh_s, a changed tile is dropped.
    plain = TileCache()
    plain.put(key, b"old")
    plain.invalidate("lights", None)
    assert plain.stale(key, any_age=True) is None and plain.nbytes == 0
