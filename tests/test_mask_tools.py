"""Tests for breakascene.segmentation.morphology, .stats and .preview (mask clean-up, checks, preview and saving),
on hand-built arrays."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from breakascene.errors import SceneError
from breakascene.segmentation.morphology import (
    connected_components,
    dilate,
    erode,
    fill_holes,
    keep_largest_component,
    remove_overlaps,
    select_largest,
    threshold,
)
from breakascene.segmentation.preview import PALETTE, preview
from breakascene.segmentation.stats import MaskStats, describe_stats, mask_stats


def _box(h: int, w: int, top: int, left: int, bottom: int, right: int) -> np.ndarray:
    """(h, w) bool, True on rows top..bottom-1 and columns left..right-1."""
    m = np.zeros((h, w), dtype=bool)
    m[top:bottom, left:right] = True
    return m


def _disc(size: int, cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


# ------------------------------------------------------------------------------------------
# single masks


def test_threshold_soft_mask():
    cov = np.array([[0.0, 0.49, 0.5], [0.51, 1.0, 0.2]], dtype=np.float32)
    assert threshold(cov).tolist() == [[False, False, True], [True, True, False]]
    assert threshold(cov, 0.2).tolist() == [[False, True, True], [True, True, True]]
    assert threshold(cov).dtype == bool


def test_dilate_point_is_exact_disc():
    m = np.zeros((21, 21), dtype=bool)
    m[10, 10] = True
    for r in (0, 1, 2, 5):
        assert (dilate(m, r) == _disc(21, 10, 10, r)).all()
    assert dilate(m, 1).sum() == 5  # the plus shape: the radius-1 disc has no corners
    assert dilate(m, 0) is not m  # a copy, never the caller's array


def test_dilate_and_erode_square():
    m = _box(40, 40, 10, 10, 30, 30)  # 20 x 20
    grown = dilate(m, 3)
    rows, cols = np.nonzero(grown)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (7, 32, 7, 32)
    # Square grown by a disc: 26x26 minus the four rounded corners (each 3x3 corner box minus the
    # quarter-disc offsets (a, b) with a, b in 1..3 and a^2 + b^2 <= 9: (1,1), (1,2), (2,1), (2,2)).
    assert grown.sum() == 26 * 26 - 4 * (9 - 4)
    shrunk = erode(m, 3)
    assert (shrunk == _box(40, 40, 13, 13, 27, 27)).all()
    assert (erode(grown, 3) == m).all()  # the closing of a convex shape is itself
    assert not erode(m, 10).any()


def test_erode_keeps_the_image_border():
    m = _box(20, 20, 10, 0, 20, 20)  # bottom half, cut by the frame on three sides
    assert (erode(m, 2) == _box(20, 20, 12, 0, 20, 20)).all()


def test_closing_fills_small_gap():
    m = _box(30, 30, 5, 5, 25, 12) | _box(30, 30, 5, 14, 25, 25)  # two blocks, 2 px apart
    assert connected_components(m)[1] == 2
    closed = erode(dilate(m, 2), 2)
    assert connected_components(closed)[1] == 1
    gap = _box(30, 30, 5, 12, 25, 14)
    assert closed[6:24, 12:14].all()  # the disc rounds off the gap's two end rows only
    assert not (closed & ~m & ~gap).any()  # nothing added outside the gap


def test_fill_holes_ring_and_open_u():
    ring = _disc(41, 20, 20, 12) & ~_disc(41, 20, 20, 6)
    assert (fill_holes(ring) == _disc(41, 20, 20, 12)).all()
    u = _box(20, 20, 0, 4, 16, 16) & ~_box(20, 20, 0, 8, 12, 12)  # a U open at the top edge
    assert (fill_holes(u) == u).all()
    assert not fill_holes(np.zeros((5, 5), dtype=bool)).any()
    assert fill_holes(np.ones((5, 5), dtype=bool)).all()


def test_fill_holes_diagonal_wall_closes():
    # Diamond ring: 8-connected wall, the inside touches the outside only diagonally.
    m = np.zeros((9, 9), dtype=bool)
    for y, x in [(2, 4), (3, 3), (3, 5), (4, 2), (4, 6), (5, 3), (5, 5), (6, 4)]:
        m[y, x] = True
    filled = fill_holes(m)
    assert filled[4, 4] and filled[3, 4] and filled[4, 3]
    assert filled.sum() == m.sum() + 5


def test_connected_components_count_and_connectivity():
    m = np.zeros((8, 10), dtype=bool)
    m[0, 0] = m[1, 1] = True  # diagonal touch: one component
    m[5:7, 2:4] = True
    m[0:8, 8] = True
    labels, n = connected_components(m)
    assert n == 3 and labels.dtype == np.int32 and labels.shape == m.shape
    assert labels[0, 0] == labels[1, 1] == 1  # numbered in raster order of first pixel
    assert labels[0, 8] == 2 and labels[5, 2] == 3
    assert (labels[~m] == 0).all() and (labels[m] > 0).all()
    assert connected_components(m, connectivity=4)[1] == 4
    assert connected_components(np.zeros((3, 3), dtype=bool))[1] == 0


def test_connected_components_large_maze_is_fast():
    import time

    m = np.zeros((1024, 1024), dtype=bool)
    m[::2] = True  # serpentine: one long path through every row
    m[1::4, -1] = True
    m[3::4, 0] = True
    start = time.perf_counter()
    labels, n = connected_components(m)
    assert n == 1 and (labels[m] == 1).all()
    checker = (np.add.outer(np.arange(1024), np.arange(1024)) % 2) == 0
    assert connected_components(checker)[1] == 1
    assert time.perf_counter() - start < 2.0


def test_keep_largest_component():
    small = _box(30, 30, 0, 0, 3, 3)
    big = _box(30, 30, 10, 10, 20, 20)
    assert (keep_largest_component(small | big) == big).all()
    assert not keep_largest_component(np.zeros((4, 4), dtype=bool)).any()


# ------------------------------------------------------------------------------------------
# sets of masks


def test_remove_overlaps_first_wins():
    a = _box(10, 10, 0, 0, 6, 6)
    b = _box(10, 10, 3, 3, 10, 10)
    out = remove_overlaps([a, b])
    assert (out[0] == a).all()
    assert (out[1] == (b & ~a)).all()
    out = remove_overlaps([b, a])
    assert (out[0] == b).all() and (out[1] == (a & ~b)).all()
    assert not (out[0] & out[1]).any()


def test_select_largest():
    h = w = 100
    big = _box(h, w, 0, 0, 50, 50)  # 25 %
    part_of_big = _box(h, w, 0, 0, 40, 40)  # 16 %, entirely inside big
    mid = _box(h, w, 60, 60, 90, 90)  # 9 %
    touching = _box(h, w, 55, 0, 85, 20)  # 6 %, no overlap
    tiny = _box(h, w, 95, 95, 98, 98)  # 0.09 % < 1 %
    masks = [tiny, mid, part_of_big, big, touching]
    assert select_largest(masks, k=3) == [3, 1, 4]
    assert select_largest(masks, k=2) == [3, 1]
    assert select_largest(masks, k=3, non_overlapping=False) == [3, 2, 1]
    assert select_largest(masks, k=10, min_area=0.0) == [3, 1, 4, 0]
    # 10 % of the candidate's own area is allowed, more is not.
    edge = _box(h, w, 40, 45, 60, 55)  # 200 px, 5x10 = 50 px (25 %) inside big
    grazing = _box(h, w, 48, 40, 58, 60)  # 200 px, 2x10 = 20 px (10 %) inside big
    assert select_largest([big, edge], k=2) == [0]
    assert select_largest([big, grazing], k=2) == [0, 1]
    assert select_largest([edge], k=0) == []


def test_mask_stats_against_hand_values():
    a = _box(10, 20, 0, 0, 5, 10)  # 50 px = 25 %
    b = _box(10, 20, 2, 5, 10, 15)  # 80 px = 40 %; a & b = rows 2..4 x cols 5..9 = 15 px
    empty = np.zeros((10, 20), dtype=bool)
    stats, overlap = mask_stats([a, b, empty], ["dog", "shirt", "nothing"])
    assert stats[0] == MaskStats("dog", 0.25, (0, 0, 10, 5))
    assert stats[1] == MaskStats("shirt", 0.40, (5, 2, 15, 10))
    assert stats[2] == MaskStats("nothing", 0.0, None)
    expected = np.array([[1.0, 15 / 50, 0.0], [15 / 80, 1.0, 0.0], [0.0, 0.0, 0.0]])
    np.testing.assert_allclose(overlap, expected)


def test_describe_stats_lines_and_warnings():
    size = 200
    dog = _box(size, size, 20, 20, 120, 120)  # 25 %
    dog_again = _box(size, size, 20, 20, 120, 118)  # IoU 0.98 with dog
    shirt = _box(size, size, 100, 50, 160, 150)  # overlaps dog partially
    speck = _box(size, size, 190, 190, 195, 195)  # 25 px = 0.0625 %
    names = ["dog", "dog2", "shirt", "speck"]
    stats, overlap = mask_stats([dog, dog_again, shirt, speck], names)
    lines = describe_stats(stats, overlap, names)
    assert lines[0] == "mask0 (dog): 25.0 % of the image"
    warnings = [l for l in lines if l.startswith("warning: ")]
    assert any("mask3 (speck)" in l and "tiny" in l and "hard to learn" in l for l in warnings)
    assert any(
        "mask0 (dog) and mask1 (dog2) look like the same object (IoU 0.98)" in l for l in warnings
    )
    assert not any("shirt" in l for l in warnings)  # a partial overlap is allowed ...
    # ... but still reported.
    assert any(l.startswith("overlap: ") and "mask0 (dog) and mask2 (shirt)" in l for l in lines)
    assert not any("speck" in l and l.startswith("overlap") for l in lines)

    huge = np.ones((10, 10), dtype=bool)
    stats, overlap = mask_stats([huge], ["mask0"])
    lines = describe_stats(stats, overlap, ["mask0"])
    assert lines[0] == "mask0: 100.0 % of the image"
    assert any(l.startswith("warning: mask0 covers 100.0 %") for l in lines)


# ------------------------------------------------------------------------------------------
# output


def test_preview_colours_and_darkening():
    h, w = 120, 160
    photo = Image.fromarray(np.full((h, w, 3), 200, dtype=np.uint8))
    a = _box(h, w, 40, 20, 100, 70)
    b = _box(h, w, 40, 90, 100, 140)
    out = preview(photo, [a, b], ["dog", "cat"])
    assert out.mode == "RGB" and out.size == (w, h)
    px = np.asarray(out)
    # Bottom edges of the boxes: outline rows, far from the labels drawn above the top-left.
    assert tuple(px[99, 45]) == PALETTE[0] and tuple(px[98, 45]) == PALETTE[0]
    assert tuple(px[99, 115]) == PALETTE[1]
    assert tuple(px[70, 20]) == PALETTE[0]  # left edge
    assert PALETTE[0] != PALETTE[1]
    assert (px[110, 5] < 200).all() and (px[5, 155] < 200).all()  # far outside: darker
    inside = px[70, 45].astype(int)  # translucent fill: tinted towards red, not opaque
    assert inside[0] > inside[1] and tuple(inside) != PALETTE[0]
    # Label text in the mask's colour sits near its top-left corner.
    # Label text (anti-aliased, so near the colour) on a dark box just above the top-left corner.
    above = px[20:40, 20:70].astype(int)
    assert (above == 0).all(axis=-1).any()
    assert (np.abs(above - np.array(PALETTE[0])).max(axis=-1) <= 20).any()


def test_preview_palette_distinct_and_cycles():
    assert len(PALETTE) >= 8 and len(set(PALETTE)) == len(PALETTE)
    n = len(PALETTE) + 1
    h, w = 20, 20 * n
    masks = [_box(h, w, 5, 20 * i + 2, 15, 20 * i + 18) for i in range(n)]
    px = np.asarray(preview(Image.new("RGB", (w, h), "gray"), masks, [""] * n))
    for i in range(n):
        assert tuple(px[14, 20 * i + 10]) == PALETTE[i % len(PALETTE)]


def test_preview_rejects_wrong_size_mask():
    with pytest.raises(SceneError):
        preview(Image.new("RGB", (10, 10)), [np.zeros((10, 12), dtype=bool)], ["x"])


def test_float_masks_accepted():
    cov = _box(10, 10, 2, 2, 8, 8).astype(np.float32) * 0.9
    assert (dilate(cov, 0) == (cov >= 0.5)).all()
    stats, _ = mask_stats([cov, (cov * 255).astype(np.uint8)], ["a", "b"])
    assert stats[0].area == stats[1].area == 0.36
