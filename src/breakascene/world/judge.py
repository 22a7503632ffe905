"""The independent judge of the shapes world: reads objects and the background from a picture's pixels.

Rules on the known palette and patterns, nothing learned, so that no model judges itself:

- **objects**: pixels near one of the four object colours and saturated (background tones are muted), split
  into connected components (parts up to 4 px apart joined, as a texture's marks can cut an object) of at least
  :data:`MIN_AREA` pixels (at 64 px). Closing the gaps and filling the holes gives the object's region, of which
  the colour must cover at least half (scattered pixels are no object), and it must be no larger than
  :data:`MAX_AREA` (a tinted background is no object).
- **shape**: how much of its bounding box the region fills: a square ~1, a circle pi/4, a triangle 1/2.
- **texture**: the white marks inside the region, correlated with each texture as the generator draws it at
  the detected object's place and size (blurred by a pixel, which a generated picture is); solid when there
  are almost no marks.
- **background**: the luminance outside the objects, correlated with each pattern at every phase, quarter by
  quarter (a generated pattern drifts); plain when it hardly varies.

:func:`judge_accuracy` measures the judge itself on fresh generator scenes (docs/evaluation.md has the figures).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from ..segmentation.morphology import connected_components, dilate, erode, fill_holes
from ..shapes_world import COLOURS, SIZE, TEXTURES, WorldObject, texture_marks

MIN_AREA = 30
"""Pixels (at 64 px) a colour blob needs to count as an object: a third of the smallest generated object."""
MAX_AREA = 1600
"""Pixels (at 64 px) above which a blob is no object: the largest the world draws is 32x32 = 1,024."""
TRACE_AREA = 12
"""Pixels of a colour that count as a trace of a concept (the leakage score)."""
_PALETTE = np.array(list(COLOURS.values()), np.float32)
_NAMES = list(COLOURS)


@dataclass(frozen=True)
class SeenObject:
    colour: str
    shape: str
    texture: str
    area: int
    box: tuple  # (top, left, bottom, right), exclusive


@dataclass(frozen=True)
class Reading:
    """What the judge reads in one picture."""

    background: str
    objects: tuple  # of SeenObject, largest first
    colour_area: dict  # colour -> pixels of that colour (traces included)


def _as_array(image) -> np.ndarray:
    """(64, 64, 3) float32 RGB in [0, 255] from a PIL image or an array of any size."""
    if not isinstance(image, Image.Image):
        image = Image.fromarray(np.asarray(image).astype(np.uint8))
    image = image.convert("RGB")
    if image.size != (SIZE, SIZE):
        image = image.resize((SIZE, SIZE), Image.Resampling.BOX)
    return np.asarray(image, np.float32)


def colour_labels(pixels: np.ndarray) -> np.ndarray:
    """(H, W) int: the index of the object colour of each pixel in :data:`COLOURS`, or -1 (not an object colour)."""
    distance = np.linalg.norm(pixels[:, :, None, :] - _PALETTE[None, None], axis=-1)  # (H, W, 4)
    nearest = distance.argmin(-1)
    saturated = pixels.max(-1) - pixels.min(-1) > 80
    return np.where(saturated & (distance.min(-1) < 90), nearest, -1)


def shape_of(region: np.ndarray) -> tuple[str, tuple]:
    rows, cols = np.nonzero(region)
    box = (int(rows.min()), int(cols.min()), int(rows.max()) + 1, int(cols.max()) + 1)
    fill = region.sum() / ((box[2] - box[0]) * (box[3] - box[1]))
    return ("square" if fill > 0.88 else "circle" if fill > 0.66 else "triangle"), box


def _blur(x: np.ndarray) -> np.ndarray:
    padded = np.pad(x, 1, mode="edge")
    return sum(padded[dy:dy + x.shape[0], dx:dx + x.shape[1]] for dy in range(3) for dx in range(3)) / 9


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    denominator = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denominator) if denominator > 0 else 0.0


def texture_of(pixels: np.ndarray, region: np.ndarray, colour: str, shape: str, box: tuple) -> str:
    """The texture inside ``region``: "solid" or the :data:`TEXTURES` entry whose marks correlate best."""
    marks = (np.linalg.norm(pixels - np.array(COLOURS[colour], np.float32), axis=-1) > 90) & region
    inner = region & ~dilate(~region, 1)  # anti-aliased edges are not marks
    if not inner.any() or marks[inner].mean() < 0.06:
        return "solid"
    size = float(max(box[2] - box[0], box[3] - box[1]))
    where = WorldObject(colour, shape, "solid", (box[1] + box[3]) / 2, (box[0] + box[2]) / 2, size)
    observed = _blur(marks.astype(np.float32))[inner]
    scores = {t: _correlation(observed, _blur(texture_marks(t, where, SIZE).astype(np.float32))[inner])
              for t in TEXTURES}
    return max(scores, key=scores.get)


def _pattern(name: str, dy: int, dx: int) -> np.ndarray:
    y, x = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32) + 0.5
    y, x = y + dy, x + dx
    if name == "striped":
        return ((x + y) % 8 < 4).astype(np.float32)
    if name == "checkered":
        return ((np.floor(x / 8) + np.floor(y / 8)) % 2).astype(np.float32)
    return ((((x % 8) - 4) ** 2 + ((y % 8) - 4) ** 2) < 4.0).astype(np.float32)


_QUARTER_PIXELS = 128
"""Background pixels a 32x32 quarter needs to be judged on its own (an eighth of it)."""
_PATTERNS = {
    name: [_pattern(name, dy, dx) for dy in range(8) for dx in (range(1) if name == "striped" else range(8))]
    for name in ("striped", "checkered", "dotted")
}


def background_of(pixels: np.ndarray, outside: np.ndarray) -> str:
    """The background pattern of the ``outside`` pixels: the pattern that correlates most with their luminance,
    or "plain" when the luminance hardly varies or nothing correlates.

    Each 32x32 quarter is correlated at its own best phase, and the quarters' scores are averaged: a generated
    pattern's period drifts a little across the picture, which cancels a whole-picture correlation (stripes
    that are plain to see scored 0.04-0.19 over the whole picture, 0.58-0.72 by quarters).
    """
    luminance = pixels @ np.array([0.299, 0.587, 0.114], np.float32)
    if outside.sum() < 64 or luminance[outside].std() < 10:
        return "plain"
    half = SIZE // 2
    quarters = []
    for top in (0, half):
        for left in (0, half):
            quarter = np.zeros_like(outside)
            quarter[top:top + half, left:left + half] = True
            quarters.append(quarter & outside)
    quarters = [q for q in quarters if q.sum() >= _QUARTER_PIXELS] or [outside]
    # Stripes and checks have two tones either way round; dots are the dark tone on the light one.
    sign = {"striped": 0, "checkered": 0, "dotted": -1}
    scores = {}
    for name, templates in _PATTERNS.items():
        best = []
        for where in quarters:
            correlations = np.array([_correlation(luminance[where], t[where]) for t in templates])
            best.append((correlations * sign[name]).max() if sign[name] else np.abs(correlations).max())
        scores[name] = float(np.mean(best))
    best = max(scores, key=scores.get)
    return best if scores[best] > 0.3 else "plain"


def read(image) -> Reading:
    """Reads a picture of the shapes world (any size; judged at 64 px)."""
    pixels = _as_array(image)
    labels = colour_labels(pixels)
    objects, occupied = [], np.zeros(labels.shape, bool)
    for index, name in enumerate(_NAMES):
        coloured = labels == index
        # Marks can cut an object in parts (stripes run edge to edge): parts 4 px apart or less are one object,
        # and closing the gaps, then filling the holes, gives its region.
        components, count = connected_components(dilate(coloured, 2))
        for k in range(1, count + 1):
            blob = coloured & (components == k)
            if blob.sum() < MIN_AREA:
                continue
            region = fill_holes(erode(dilate(blob, 2), 2) | blob)
            if blob.sum() < 0.5 * region.sum():  # scattered pixels, not an object (marks cover under half)
                continue
            if region.sum() > MAX_AREA:  # a tinted background, not an object
                continue
            shape, box = shape_of(region)
            objects.append(SeenObject(name, shape, texture_of(pixels, region, name, shape, box), int(region.sum()), box))
            occupied |= region
    outside = ~dilate(occupied | (labels >= 0), 2)
    objects.sort(key=lambda o: -o.area)
    areas = {name: int((labels == i).sum()) for i, name in enumerate(_NAMES)}
    return Reading(background_of(pixels, outside), tuple(objects), areas)


def identity(seen: SeenObject | None, target: WorldObject) -> float:
    """How much of a target object a seen one reproduces: the mean of colour, shape and texture matches."""
    if seen is None:
        return 0.0
    return (float(seen.colour == target.colour) + float(seen.shape == target.shape)
            + float(seen.texture == target.texture)) / 3


def best_match(reading: Reading, target: WorldObject) -> SeenObject | None:
    """The seen object that reproduces ``target`` best (the largest among equals); None if nothing was seen."""
    return max(reading.objects, key=lambda o: (identity(o, target), o.area), default=None)
