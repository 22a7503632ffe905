"""Pictures for people: each handle's attention map next to its mask, and the text helpers for captions.

Text is drawn with Pillow's default font. Since Pillow 10.1 that is FreeType's Aileron at 10 px, whose space
is 2 px wide: drawn as one string, "a photo of" reads "a photoof". So captions are drawn word by word with
:func:`word_gap` pixels between words, and wrapped (:func:`wrap_caption`) by the width they are drawn at.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

TILE = 192  # pixels per tile side: big enough to read a 16x16 map, small enough to keep files light
LABEL_WIDTH = 150  # the text column on the left of the attention figure
TITLE_BAND = 24  # the attention figure's column titles, above the first row
COLUMN_TITLES = ("handle", "photo, mask lit", "mask", "attention map")


def heat_colors(values: torch.Tensor) -> Image.Image:
    """(H, W) values in [0, 1] -> an RGB heat map of the same size (black -> red -> yellow -> white)."""
    v = values.detach().float().clamp(0, 1).cpu().numpy()
    rgb = np.stack([np.clip(3 * v, 0, 1), np.clip(3 * v - 1, 0, 1), np.clip(3 * v - 2, 0, 1)], axis=-1)
    return Image.fromarray((rgb * 255).astype(np.uint8))


def heatmap(values: torch.Tensor, size: int = TILE) -> Image.Image:
    """(h, w) values in [0, 1] -> a ``size`` x ``size`` heat map, nearest-upsampled so each cell stays visible."""
    return heat_colors(values).resize((size, size), Image.NEAREST)


# ------------------------------------------------------------------------------------------
# text


def caption_font():
    """The font of every caption: Pillow's default (FreeType Aileron 10 px, or the old bitmap font)."""
    return ImageFont.load_default()


def word_gap(font) -> float:
    """Pixels between two drawn words: the font's own space, but at least a third of its size (see the module)."""
    size = getattr(font, "size", 10)
    return max(font.getlength(" "), math.ceil(size / 3))


def wrap_caption(text: str, max_width: float, measure: Callable[[str], float], gap: float) -> list[str]:
    """``text`` as lines no wider than ``max_width``, broken at spaces; ``\\n`` starts a new line.

    A line's width is the sum of ``measure(word)`` plus ``gap`` between words (what :func:`draw_words` draws);
    runs of spaces count as one. A word wider than a whole line is cut where it has to be. An empty paragraph
    stays an empty line.
    """
    lines: list[str] = []
    for paragraph in text.split("\n"):
        line: list[str] = []
        width = 0.0
        for word in paragraph.split():
            for piece in _cut_word(word, max_width, measure):
                extra = measure(piece) + (gap if line else 0)
                if line and width + extra > max_width:
                    lines.append(" ".join(line))
                    line, width, extra = [], 0.0, measure(piece)
                line.append(piece)
                width += extra
        lines.append(" ".join(line))
    return lines


def _cut_word(word: str, max_width: float, measure: Callable[[str], float]) -> list[str]:
    """``word`` in pieces that each fit ``max_width`` (a single character always counts as fitting)."""
    pieces, piece = [], ""
    for char in word:
        if piece and measure(piece + char) > max_width:
            pieces.append(piece)
            piece = ""
        piece += char
    return pieces + [piece]


def caption_lines(text: str, max_width: float, font=None) -> list[str]:
    """:func:`wrap_caption` with ``font``'s own widths (default :func:`caption_font`)."""
    font = font or caption_font()
    return wrap_caption(text, max_width, font.getlength, word_gap(font))


def draw_words(draw: ImageDraw.ImageDraw, xy: tuple[float, float], text: str, font=None, fill="black") -> float:
    """Draws ``text`` at ``xy`` (left, top of the line) word by word, :func:`word_gap` apart; returns its width."""
    font = font or caption_font()
    x, y = xy
    top = font.getbbox("Ag")[1]  # draw.text puts the ascender line at y; this puts the ink's top there
    gap = word_gap(font)
    for k, word in enumerate(text.split()):
        if k:
            x += gap
        draw.text((x, y - top), word, fill=fill, font=font)
        x += font.getlength(word)
    return x - xy[0]


def line_height(font=None) -> int:
    """Pixels from one caption line to the next."""
    font = font or caption_font()
    _, top, _, bottom = font.getbbox("Ag")
    return (bottom - top) + 4


# ------------------------------------------------------------------------------------------
# the attention figure


def score_caption(score: float, chance: float) -> str:
    """"0.14 (chance 0.14)": a map's mass inside its mask next to what uniform attention would give there.

    Uniform attention puts the mask's area fraction inside the mask, so a score near ``chance`` means the
    handle does not look at its concept (an untrained model); near 1 means it looks only there.
    """
    return f"{score:.2f} (chance {chance:.2f})"


def attention_figure(
    image: torch.Tensor, maps: torch.Tensor, masks: torch.Tensor, labels: list[str], scores: list[float] | None = None
) -> Image.Image:
    """Column titles, then one row per handle: the photo with the mask lit, the mask, and the attention map.

    The figure is ``LABEL_WIDTH + 3 * TILE`` wide and ``TITLE_BAND + K * TILE`` high.

    Args:
        image: (3, H, W) float in [0, 1].
        maps: (K, h, w) attention maps, each scaled to [0, 1] by its maximum for display.
        masks: (K, H, W) float masks in {0, 1}.
        labels: K strings, e.g. the handle tokens.
        scores: optional K numbers written under the label: the map's mass inside its own mask, shown with
            chance (the mask's area fraction, see :func:`score_caption`).
    """
    from .attention import normalize_maps

    maps = normalize_maps(maps.float())
    photo = Image.fromarray((image.permute(1, 2, 0).clamp(0, 1).cpu().numpy() * 255).astype(np.uint8))
    photo = photo.resize((TILE, TILE), Image.BILINEAR)
    figure = Image.new("RGB", (LABEL_WIDTH + 3 * TILE, TITLE_BAND + len(labels) * TILE), "white")
    draw = ImageDraw.Draw(figure)
    font = caption_font()
    lefts = (8, LABEL_WIDTH + 4, LABEL_WIDTH + TILE + 4, LABEL_WIDTH + 2 * TILE + 4)
    for left, title in zip(lefts, COLUMN_TITLES):
        draw_words(draw, (left, (TITLE_BAND - line_height(font)) // 2 + 2), title, font)
    step = line_height(font) + 4
    for row, label in enumerate(labels):
        top = TITLE_BAND + row * TILE
        mask = masks[row].float().cpu()
        mask_small = Image.fromarray((mask.numpy() * 255).astype(np.uint8)).resize((TILE, TILE), Image.NEAREST)
        shaded = Image.composite(photo, Image.blend(photo, Image.new("RGB", photo.size, "black"), 0.7), mask_small)
        figure.paste(shaded, (LABEL_WIDTH, top))
        figure.paste(mask_small.convert("RGB"), (LABEL_WIDTH + TILE, top))
        figure.paste(heatmap(maps[row]), (LABEL_WIDTH + 2 * TILE, top))
        draw_words(draw, (8, top + 8), label, font)
        if scores is not None:
            draw_words(draw, (8, top + 8 + step), "inside own mask:", font)
            draw_words(draw, (8, top + 8 + 2 * step), score_caption(scores[row], float(mask.mean())), font)
    return figure
