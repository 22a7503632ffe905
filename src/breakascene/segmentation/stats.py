"""What a person needs to judge concept masks: area, box and pairwise overlap, and lines that warn about
empty, tiny or huge masks and about two proposals for one object.

Masks are ``(H, W)`` and may be anything :func:`breakascene.segmentation.morphology.as_bool_mask` takes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..scene import TINY_MASK_FRACTION
from .morphology import MaskInput, as_bool_masks, bounding_box

__all__ = ["MaskStats", "mask_stats", "describe_stats"]

# A mask covering more than this fraction of the image leaves almost nothing for the background.
HUGE_MASK_FRACTION = 0.9
# Two masks with an IoU above this are almost surely two proposals for one object.
SAME_OBJECT_IOU = 0.9


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
    bools = as_bool_masks(masks)
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
    stats = [MaskStats(str(n), float(a / total), bounding_box(m)) for n, a, m in zip(names, areas, bools)]
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
