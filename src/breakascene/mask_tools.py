"""Clean-up, checks and pictures for concept masks, before they are handed to training.

Automatic masks (SAM, OWLv2) and hand-drawn ones share the same defects: speckles and holes,
several near-identical proposals for one object, slivers too small to learn a handle from.
Break-A-Scene learns one handle per mask, so every defect here becomes a bad handle later; these
helpers fix what can be fixed, say what cannot, and draw a preview a person can judge at a glance.

Everything is a pure function on numpy arrays.  A mask is ``(H, W)`` bool (True = inside the
concept) unless a docstring says otherwise; functions that take masks also accept float coverage
in ``[0, 1]`` (inside where >= 0.5, as :func:`breakascene.scene.read_mask`), integer 0/1 or
0/255 masks.  Only numpy, torch-free and scipy-free, so the CLI stays light:

* morphology uses an exact disc (all offsets with ``dy**2 + dx**2 <= r**2``), built as the union
  of shifted horizontal runs, each run a prefix-sum window -- O(r * H * W), no r**2 kernel;
* connected components label horizontal runs and join runs of neighbouring rows with a
  vectorised union-find (min-label hooking + pointer jumping), ~0.1 s for 1024 x 1024.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from breakascene.errors import SceneError
from breakascene.scene import TINY_MASK_FRACTION

__all__ = [
    "PALETTE",
    "MaskStats",
    "connected_components",
    "describe_stats",
    "dilate",
    "erode",
    "fill_holes",
    "keep_largest_component",
    "mask_stats",
    "preview",
    "remove_overlaps",
    "select_largest",
    "threshold",
]

# A mask covering more than this fraction of the image leaves almost nothing for the background.
HUGE_MASK_FRACTION = 0.9
# Two masks with an IoU above this are almost surely two proposals for one object.
SAME_OBJECT_IOU = 0.9
# select_largest: a candidate sharing more than this fraction of its own area with a chosen
# mask is mostly that mask again (a part of it, or a duplicate proposal).
SELECT_OVERLAP_FRACTION = 0.1

# Distinct on both light and dark photos and for the common colour-vision deficiencies
# (Sasha Trubetskoy's "20 distinct colours", first ten); cycled when there are more masks.
PALETTE: tuple[tuple[int, int, int], ...] = (
    (230, 25, 75),  # red
    (60, 180, 75),  # green
    (255, 225, 25),  # yellow
    (0, 130, 200),  # blue
    (245, 130, 48),  # orange
    (145, 30, 180),  # purple
    (70, 240, 240),  # cyan
    (240, 50, 230),  # magenta
    (210, 245, 60),  # lime
    (250, 190, 212),  # pink
)

# preview(): photo brightness kept outside every mask, the fill's opacity, the outline's width.
_DARKEN = 0.55
_FILL_ALPHA = 0.3
_OUTLINE_PX = 2

MaskInput = np.ndarray


# --------------------------------------------------------------------------------------------
# helpers


def _as_bool(mask: MaskInput) -> np.ndarray:
    """Any mask-like ``(H, W)`` array -> bool ``(H, W)`` (floats: >= 0.5; ints: 0/1 or 0/255)."""
    arr = np.asarray(mask)
    if arr.ndim != 2:
        raise ValueError(f"a mask must be (H, W), got shape {arr.shape}")
    if arr.dtype == bool:
        return arr
    if np.issubdtype(arr.dtype, np.floating):
        return arr >= 0.5
    # Integers: 0/1 masks and 0/255 PNGs both occur; a 0/1 mask never exceeds 1.
    return arr >= 128 if arr.size and arr.max() > 1 else arr >= 1


def _as_bool_list(masks: Sequence[MaskInput]) -> list[np.ndarray]:
    out = [_as_bool(m) for m in masks]
    for m in out[1:]:
        if m.shape != out[0].shape:
            raise ValueError(f"masks have different sizes: {out[0].shape} and {m.shape}")
    return out


def _disc_half_widths(radius: int) -> np.ndarray:
    """Half width of the disc's row at each ``dy`` in ``-radius..radius``: ``(2r+1,)`` int."""
    dy = np.arange(-radius, radius + 1)
    return np.floor(np.sqrt(radius * radius - dy * dy) + 1e-9).astype(np.int64)


def _dilate_rows(mask: np.ndarray, half: int) -> np.ndarray:
    """OR over the window ``[x - half, x + half]`` of each row (outside the image is empty)."""
    if half == 0:
        return mask.copy()
    h, w = mask.shape
    # Prefix sums with a zero column in front: count in [a, b) = c[b] - c[a].
    c = np.zeros((h, w + 1), dtype=np.int32)
    np.cumsum(mask, axis=1, out=c[:, 1:])
    x = np.arange(w)
    lo = np.clip(x - half, 0, w)
    hi = np.clip(x + half + 1, 0, w)
    return (c[:, hi] - c[:, lo]) > 0


def _runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Horizontal runs of True in raster order: ``(rows, starts, ends)``, ends exclusive, int64."""
    h, w = mask.shape
    padded = np.zeros((h, w + 2), dtype=np.int8)
    padded[:, 1:-1] = mask
    d = np.diff(padded, axis=1)  # (H, W+1): +1 where a run starts, -1 just after it ends
    rows, starts = np.nonzero(d == 1)
    _, ends = np.nonzero(d == -1)
    return rows.astype(np.int64), starts.astype(np.int64), ends.astype(np.int64)


def _union_find(n: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Component representative (smallest member index) of each of ``n`` nodes joined by edges u-v."""
    lab = np.arange(n, dtype=np.int64)
    if u.size == 0:
        return lab
    while True:
        lu, lv = lab[u], lab[v]
        differ = lu != lv
        if not differ.any():
            return lab
        lu, lv = lu[differ], lv[differ]
        low = np.minimum(lu, lv)
        # Hook both roots onto the smaller one; lab[i] <= i always holds, so no cycles can form.
        np.minimum.at(lab, lu, low)
        np.minimum.at(lab, lv, low)
        while True:  # pointer jumping: every node points straight at its root again
            nxt = lab[lab]
            if np.array_equal(nxt, lab):
                break
            lab = nxt


def _bbox(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return (int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1)


# --------------------------------------------------------------------------------------------
# single masks


def threshold(coverage: np.ndarray, level: float = 0.5) -> np.ndarray:
    """``(H, W)`` float coverage in ``[0, 1]`` -> ``(H, W)`` bool, inside where ``coverage >= level``.

    ``level=0.5`` is the rule :func:`breakascene.scene.read_mask` documents for loaded masks.
    """
    arr = np.asarray(coverage)
    if arr.ndim != 2:
        raise ValueError(f"coverage must be (H, W), got shape {arr.shape}")
    return arr >= level


def dilate(mask: MaskInput, pixels: int) -> np.ndarray:
    """Grow ``mask`` by a disc of radius ``pixels``: ``(H, W)`` bool -> ``(H, W)`` bool.

    A pixel is inside when some inside pixel lies within Euclidean distance ``pixels`` (exactly:
    ``dy**2 + dx**2 <= pixels**2``).  ``pixels=0`` returns an unchanged copy.
    """
    mask = _as_bool(mask)
    pixels = int(pixels)
    if pixels < 0:
        raise ValueError(f"pixels must be >= 0, got {pixels}")
    if pixels == 0 or not mask.any():
        return mask.copy()
    h, w = mask.shape
    halves = _disc_half_widths(pixels)
    # One horizontal dilation per distinct row width of the disc, then shift each row into place.
    by_half = {int(half): _dilate_rows(mask, int(half)) for half in np.unique(halves)}
    out = np.zeros_like(mask)
    for dy, half in zip(range(-pixels, pixels + 1), halves):
        if abs(dy) >= h:
            continue
        grown = by_half[int(half)]
        # out[y] |= grown[y - dy]
        if dy >= 0:
            out[dy:] |= grown[: h - dy]
        else:
            out[: h + dy] |= grown[-dy:]
    return out


def erode(mask: MaskInput, pixels: int) -> np.ndarray:
    """Shrink ``mask`` by a disc of radius ``pixels``: ``(H, W)`` bool -> ``(H, W)`` bool.

    The dual of :func:`dilate`: a pixel stays inside when every pixel of the image within distance
    ``pixels`` is inside.  The image border does *not* erode: a concept cut by the frame goes on
    beyond it, so e.g. a table running off the bottom edge keeps its bottom rows.
    """
    mask = _as_bool(mask)
    return ~dilate(~mask, pixels)


def fill_holes(mask: MaskInput) -> np.ndarray:
    """Make every background region not connected to the image border inside: ``(H, W)`` bool.

    The background is flooded with 4-connectivity -- the counterpart of the 8-connected
    foreground -- so a ring closed only by a diagonal step still counts as closed.  A region that
    reaches the border (a U open to the edge) stays outside.
    """
    mask = _as_bool(mask)
    labels, n = connected_components(~mask, connectivity=4)
    if n == 0:
        return mask.copy()
    border = np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])
    outside = np.zeros(n + 1, dtype=bool)
    outside[border] = True
    outside[0] = False  # label 0 is the mask itself
    return ~outside[labels]


def connected_components(mask: MaskInput, connectivity: int = 8) -> tuple[np.ndarray, int]:
    """Label the connected regions of ``mask``.

    Args:
        mask: ``(H, W)`` bool.
        connectivity: 8 (default: diagonal neighbours touch) or 4.

    Returns:
        ``(labels, n)``: ``labels`` is ``(H, W)`` int32, 0 outside, ``1..n`` numbered in raster
        order of each component's first pixel.
    """
    mask = _as_bool(mask)
    if connectivity not in (4, 8):
        raise ValueError(f"connectivity must be 4 or 8, got {connectivity}")
    h, w = mask.shape
    labels = np.zeros((h, w), dtype=np.int32)
    rows, starts, ends = _runs(mask)
    n_runs = rows.size
    if n_runs == 0:
        return labels, 0
    # Runs in raster order have increasing keys row * stride + x, so each run's neighbours in
    # the next row are one contiguous slice found by binary search.
    stride = w + 2
    start_keys = rows * stride + starts
    end_keys = rows * stride + ends
    reach = 1 if connectivity == 8 else 0  # 8-connectivity also joins runs touching diagonally
    below = (rows + 1) * stride
    lo = np.searchsorted(end_keys, below + starts + 1 - reach, side="left")
    hi = np.searchsorted(start_keys, below + ends - 1 + reach, side="right")
    counts = np.maximum(hi - lo, 0)
    u = np.repeat(np.arange(n_runs), counts)
    first = np.repeat(lo - np.cumsum(counts) + counts, counts)
    v = first + np.arange(u.size)
    roots = _union_find(n_runs, u, v)
    # The root is the component's first run, so sorted unique roots are in raster order.
    uniq, run_labels = np.unique(roots, return_inverse=True)
    labels[mask] = np.repeat(run_labels.astype(np.int32) + 1, ends - starts)
    return labels, int(uniq.size)


def keep_largest_component(mask: MaskInput) -> np.ndarray:
    """Keep only the largest 8-connected region of ``mask`` (the first one on a tie): ``(H, W)`` bool."""
    mask = _as_bool(mask)
    labels, n = connected_components(mask)
    if n <= 1:
        return mask.copy()
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    sizes[0] = 0
    return labels == int(np.argmax(sizes))


# --------------------------------------------------------------------------------------------
# sets of masks


def remove_overlaps(masks: Sequence[MaskInput]) -> list[np.ndarray]:
    """Make ``K`` masks disjoint: a pixel stays only in the first mask that has it.

    Overlaps are legal for training (a dog and its shirt); use this only when the concepts must
    partition the image, and order the masks by priority first.
    """
    taken: np.ndarray | None = None
    out = []
    for m in _as_bool_list(masks):
        out.append(m.copy() if taken is None else m & ~taken)
        taken = m.copy() if taken is None else taken | m
    return out


def select_largest(
    masks: Sequence[MaskInput], k: int, min_area: float = 0.01, non_overlapping: bool = True
) -> list[int]:
    """Indices of up to ``k`` masks to keep from a list of proposals, largest first.

    Args:
        masks: ``K`` masks ``(H, W)``.
        k: how many to keep at most.
        min_area: smallest area kept, as a fraction of the image (smaller ones are too small to
            learn a handle from).
        non_overlapping: skip a candidate when more than 10 % of its own area lies inside one
            already chosen mask (a part of it or a duplicate proposal).

    Returns:
        Indices into ``masks``, in order of decreasing area (ties: lower index first).
    """
    bools = _as_bool_list(masks)
    if not bools or k <= 0:
        return []
    total = bools[0].size
    areas = np.array([int(m.sum()) for m in bools])
    order = sorted(range(len(bools)), key=lambda i: (-areas[i], i))
    chosen: list[int] = []
    for i in order:
        if len(chosen) >= k:
            break
        if areas[i] == 0 or areas[i] < min_area * total:
            break  # sorted by area: every later one is smaller still
        if non_overlapping and any(
            np.count_nonzero(bools[i] & bools[j]) > SELECT_OVERLAP_FRACTION * areas[i] for j in chosen
        ):
            continue
        chosen.append(i)
    return chosen


@dataclass
class MaskStats:
    """What a person needs to judge one mask.

    Attributes:
        name: the mask's label (e.g. ``"dog"`` or ``"mask0.png"``).
        area: fraction of the image inside the mask, in ``[0, 1]``.
        bbox: ``(left, top, right, bottom)`` in pixels, right/bottom exclusive (PIL's box
            convention); ``None`` for an empty mask.
    """

    name: str
    area: float
    bbox: tuple[int, int, int, int] | None


def mask_stats(masks: Sequence[MaskInput], names: Sequence[str]) -> tuple[list[MaskStats], np.ndarray]:
    """Area, box and pairwise overlap of ``K`` masks.

    Returns:
        ``(stats, overlap)``: ``K`` :class:`MaskStats`, and ``(K, K)`` float64 with
        ``overlap[i, j] = |Mi & Mj| / |Mi|`` -- the fraction of mask ``i`` that lies in mask
        ``j`` (not symmetric; the diagonal is 1, and the row of an empty mask is 0).
    """
    bools = _as_bool_list(masks)
    if len(names) != len(bools):
        raise ValueError(f"{len(bools)} masks but {len(names)} names")
    if not bools:
        return [], np.zeros((0, 0))
    k = len(bools)
    inter = np.zeros((k, k), dtype=np.float64)  # pixel counts; pairwise so memory stays O(H * W)
    for i in range(k):
        inter[i, i] = np.count_nonzero(bools[i])
        for j in range(i + 1, k):
            inter[i, j] = inter[j, i] = np.count_nonzero(bools[i] & bools[j])
    areas = np.diag(inter).copy()
    overlap = np.divide(inter, areas[:, None], out=np.zeros_like(inter), where=areas[:, None] > 0)
    total = bools[0].size
    stats = [MaskStats(str(n), float(a / total), _bbox(m)) for n, a, m in zip(names, areas, bools)]
    return stats, overlap


def _label(i: int, name: str) -> str:
    return f"mask{i}" if not name or name == f"mask{i}" else f"mask{i} ({name})"


def describe_stats(
    stats: Sequence[MaskStats], overlap: np.ndarray, names: Sequence[str] | None = None
) -> list[str]:
    """Human-readable lines about the masks of :func:`mask_stats`.

    One line per mask (``"mask0 (dog): 12.3 % of the image"``), then ``"warning: ..."`` lines for
    empty, tiny (< 1 %) or huge (> 90 %) masks and for pairs that look like the same object
    (IoU > 0.9), and ``"overlap: ..."`` lines for other overlapping pairs -- these are allowed
    (a dog and its shirt) but worth knowing.  ``names`` defaults to the stats' names.
    """
    names = [s.name for s in stats] if names is None else list(names)
    labels = [_label(i, n) for i, n in enumerate(names)]
    lines = [f"{lab}: {100 * s.area:.1f} % of the image" for lab, s in zip(labels, stats)]
    for lab, s in zip(labels, stats):
        if s.area == 0:
            lines.append(f"warning: {lab} is empty: draw or pick a mask that covers the concept")
        elif s.area < TINY_MASK_FRACTION:
            lines.append(
                f"warning: {lab} is tiny ({100 * s.area:.2f} % of the image): hard to learn; "
                "use a closer crop of the photo if you can"
            )
        elif s.area > HUGE_MASK_FRACTION:
            lines.append(
                f"warning: {lab} covers {100 * s.area:.1f} % of the image: nearly everything, "
                "so it is probably the background or several concepts at once"
            )
    k = len(stats)
    for i in range(k):
        for j in range(i + 1, k):
            # Intersection as a fraction of the image, from either side of the (asymmetric) matrix.
            inter = float(overlap[i, j]) * stats[i].area
            if inter <= 0:
                continue
            union = stats[i].area + stats[j].area - inter
            iou = inter / union if union > 0 else 0.0
            if iou > SAME_OBJECT_IOU:
                lines.append(
                    f"warning: {labels[i]} and {labels[j]} look like the same object (IoU {iou:.2f}); "
                    "keep only one of them"
                )
            else:
                lines.append(
                    f"overlap: {labels[i]} and {labels[j]} share {100 * overlap[i, j]:.1f} % of "
                    f"{labels[i]} and {100 * overlap[j, i]:.1f} % of {labels[j]} (allowed, e.g. an "
                    "object and its clothing)"
                )
    return lines


# --------------------------------------------------------------------------------------------
# output


def _font(size: int) -> ImageFont.ImageFont:
    try:  # Pillow >= 10.1 scales its built-in font; older ones only have the fixed bitmap font
        return ImageFont.load_default(size=size)
    except TypeError:
        return ImageFont.load_default()


def preview(image: Image.Image, masks: Sequence[MaskInput], labels: Sequence[str]) -> Image.Image:
    """The photo with every mask drawn on it, for a person to check the masks at a glance.

    Outside every mask the photo is darkened; each mask gets a translucent fill, a 2 px outline
    (just inside its edge) and its label near its top-left corner, all in its own colour from
    :data:`PALETTE` (cycled), the label on a dark box.  Fills are drawn first and outlines on
    top, so every outline stays visible where masks overlap.

    Args:
        image: the photo, any mode, size ``(W, H)``.
        masks: ``K`` masks ``(H, W)``.
        labels: ``K`` strings.

    Returns:
        RGB image of size ``(W, H)``.
    """
    bools = _as_bool_list(masks)
    if len(labels) != len(bools):
        raise ValueError(f"{len(bools)} masks but {len(labels)} labels")
    rgb = image.convert("RGB")
    w, h = rgb.size
    for i, m in enumerate(bools):
        if m.shape != (h, w):
            raise SceneError(
                f"mask {i} is {m.shape[1]}x{m.shape[0]} but the photo is {w}x{h}; "
                "masks must have the photo's size"
            )
    out = np.asarray(rgb).astype(np.float32)
    if bools:
        anywhere = np.logical_or.reduce(bools)
        out[~anywhere] *= _DARKEN
    colours = [np.array(PALETTE[i % len(PALETTE)], dtype=np.float32) for i in range(len(bools))]
    for m, c in zip(bools, colours):
        out[m] = (1 - _FILL_ALPHA) * out[m] + _FILL_ALPHA * c
    for m, c in zip(bools, colours):
        out[m & ~erode(m, _OUTLINE_PX)] = c
        # erode() keeps the image border, so outline a mask where the frame cuts it as well.
        edge = np.ones_like(m)
        edge[_OUTLINE_PX:-_OUTLINE_PX, _OUTLINE_PX:-_OUTLINE_PX] = False
        out[m & edge] = c
    result = Image.fromarray(np.clip(out + 0.5, 0, 255).astype(np.uint8), mode="RGB")
    draw = ImageDraw.Draw(result)
    font = _font(max(12, min(w, h) // 30))
    for m, c, text in zip(bools, colours, labels):
        box = _bbox(m)
        if box is None or not text:
            continue
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        tw, th = right - left + 4, bottom - top + 4
        # Just above the mask's corner when there is room, so the label hides none of the mask.
        x = min(max(box[0], 0), max(w - tw, 0))
        y = box[1] - th if box[1] - th >= 0 else min(box[1], max(h - th, 0))
        draw.rectangle((x, y, x + tw - 1, y + th - 1), fill=(0, 0, 0))
        draw.text((x + 2 - left, y + 2 - top), text, fill=tuple(int(v) for v in c), font=font)
    return result
