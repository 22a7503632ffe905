"""Pictures for people: each handle's attention map next to its mask."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw

TILE = 192  # pixels per tile side: big enough to read a 16x16 map, small enough to keep files light


def heat_colors(values: torch.Tensor) -> Image.Image:
    """(H, W) values in [0, 1] -> an RGB heat map of the same size (black -> red -> yellow -> white)."""
    v = values.detach().float().clamp(0, 1).cpu().numpy()
    rgb = np.stack([np.clip(3 * v, 0, 1), np.clip(3 * v - 1, 0, 1), np.clip(3 * v - 2, 0, 1)], axis=-1)
    return Image.fromarray((rgb * 255).astype(np.uint8))


def heatmap(values: torch.Tensor, size: int = TILE) -> Image.Image:
    """(h, w) values in [0, 1] -> a ``size`` x ``size`` heat map, nearest-upsampled so each cell stays visible."""
    return heat_colors(values).resize((size, size), Image.NEAREST)


def attention_figure(
    image: torch.Tensor, maps: torch.Tensor, masks: torch.Tensor, labels: list[str], scores: list[float] | None = None
) -> Image.Image:
    """One row per handle: the photo with the mask shaded, the mask, and the handle's attention map.

    Args:
        image: (3, H, W) float in [0, 1].
        maps: (K, h, w) attention maps, each scaled to [0, 1] by its maximum for display.
        masks: (K, H, W) float masks in {0, 1}.
        labels: K strings, e.g. the handle tokens.
        scores: optional K numbers written under the label (e.g. the map's mass inside its own mask).
    """
    from .attention import normalize_maps

    maps = normalize_maps(maps.float())
    photo = Image.fromarray((image.permute(1, 2, 0).clamp(0, 1).cpu().numpy() * 255).astype(np.uint8))
    photo = photo.resize((TILE, TILE), Image.BILINEAR)
    label_width = 150
    figure = Image.new("RGB", (label_width + 3 * TILE, len(labels) * TILE), "white")
    draw = ImageDraw.Draw(figure)
    for row, label in enumerate(labels):
        top = row * TILE
        mask = masks[row].float().cpu()
        mask_small = Image.fromarray((mask.numpy() * 255).astype(np.uint8)).resize((TILE, TILE), Image.NEAREST)
        shaded = Image.composite(photo, Image.blend(photo, Image.new("RGB", photo.size, "black"), 0.7), mask_small)
        figure.paste(shaded, (label_width, top))
        figure.paste(mask_small.convert("RGB"), (label_width + TILE, top))
        figure.paste(heatmap(maps[row]), (label_width + 2 * TILE, top))
        draw.text((8, top + 8), label, fill="black")
        if scores is not None:
            draw.text((8, top + 28), f"inside own mask: {scores[row]:.2f}", fill="black")
    return figure
