"""A picture of concept masks on their photo, for a person to check them at a glance."""

from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..errors import SceneError
from .morphology import MaskInput, as_bool_masks, bounding_box, erode

__all__ = ["PALETTE", "preview"]

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
    bools = as_bool_masks(masks)
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
        box = bounding_box(m)
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
