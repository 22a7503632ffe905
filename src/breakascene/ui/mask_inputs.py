"""Masks from what the page sends: brush layers of an image editor and uploaded mask files -> ``(H, W)`` bool
masks; and the masks' image and area/overlap lines for the page."""

from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image

from ..errors import SceneError


def mask_from_layer(layer: np.ndarray) -> np.ndarray:
    """A painted editor layer -> where it was painted.

    Args:
        layer: ``(H, W, 4)`` uint8 RGBA (alpha 0 where nothing was painted, as the image editor sends it), or
            ``(H, W)`` / ``(H, W, 3)`` for a layer without alpha, where any non-black pixel counts as paint.

    Returns:
        ``(H, W)`` bool: alpha >= 128 (half-covered brush edges count, fainter anti-aliasing does not).
    """
    layer = np.asarray(layer)
    if layer.ndim == 3 and layer.shape[-1] == 4:
        return layer[..., 3] >= 128
    if layer.ndim == 3:
        return layer.max(axis=-1) >= 128
    if layer.ndim == 2:
        return layer >= 128
    raise SceneError(f"a painted layer must be (H, W, 4), got shape {layer.shape}")


def masks_from_layers(layers: Sequence[np.ndarray] | None, size: tuple[int, int]) -> list[np.ndarray]:
    """The editor's layers -> one ``(H, W)`` bool mask per painted layer, at the photo's ``size`` (w, h).

    Layers with no paint are skipped (the editor always has one, even before painting); a layer of another
    size than the photo (the editor's canvas) is resized with nearest-neighbour sampling.

    Raises:
        SceneError: no layer holds any paint.
    """
    masks = []
    for layer in layers or []:
        if layer is None:
            continue
        mask = mask_from_layer(layer)
        if not mask.any():
            continue
        if (mask.shape[1], mask.shape[0]) != tuple(size):
            mask = np.asarray(Image.fromarray(mask).resize(tuple(size), Image.NEAREST))
        masks.append(mask)
    if not masks:
        raise SceneError("nothing is painted: paint each concept on its own layer (add layers in the layer menu, "
                         "bottom right of the editor)")
    return masks


def masks_from_files(paths: Sequence[str] | None, size: tuple[int, int]) -> list[np.ndarray]:
    """Uploaded mask files (in upload order) -> ``(H, W)`` bool masks (coverage >= 0.5), the photo's ``size``.

    The files are only read: their names are never used to write anything.

    Raises:
        SceneError: no file, an unreadable file, a mask of another size than the photo, or an empty mask.
    """
    from ..images import read_mask

    if not paths:
        raise SceneError("no mask files uploaded: add one black-and-white mask per concept (white = concept)")
    masks = []
    for i, path in enumerate(paths):
        mask = read_mask(path) >= 0.5
        if (mask.shape[1], mask.shape[0]) != tuple(size):
            raise SceneError(
                f"mask file {i + 1} is {mask.shape[1]}x{mask.shape[0]} but the photo is {size[0]}x{size[1]}; "
                "masks must have the photo's size"
            )
        if not mask.any():
            raise SceneError(f"mask file {i + 1} is empty (all black); white marks the concept")
        masks.append(mask)
    return masks


def mask_image(mask: np.ndarray) -> Image.Image:
    """``(H, W)`` bool -> 8-bit ``L`` image, 0 / 255 (what ``load_scene`` and ``edit`` take)."""
    return Image.fromarray(np.asarray(mask, dtype=np.uint8) * 255, mode="L")


def describe_masks(masks: Sequence[np.ndarray], labels: Sequence[str]) -> str:
    """Area and overlaps of the masks as lines (:func:`breakascene.segmentation.stats.describe_stats`), for the page."""
    from ..segmentation.stats import describe_stats, mask_stats

    stats, overlap = mask_stats(list(masks), list(labels))
    return "\n".join(describe_stats(stats, overlap))
