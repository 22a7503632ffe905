"""The shapes world: a procedural scene generator in which the method can be measured.

A scene is 1-3 flat objects (a coloured circle, square or triangle) on a background (striped, checkered,
dotted or plain, in two muted tones), drawn with numpy + PIL and deterministic for a seed. Its caption is plain
English: ``a photo of a red circle and a blue square on a striped background``.

The built-in model ``builtin:shapes`` is trained from scratch on such scenes with *solid* objects only. The
benchmark's objects carry a **texture** (white stripes, dots, a ring or a cross) that the model never saw and has
no word for: the "novel concepts" that only a handle can bring back. The judge (``breakascene.world.judge``)
reads colour, shape, texture and background from pixels, which is possible because the palette is known:
object colours are saturated, background tones are not.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

COLOURS = {"red": (215, 45, 45), "green": (45, 170, 70), "blue": (45, 85, 220), "yellow": (230, 200, 35)}
SHAPES = ("circle", "square", "triangle")
BACKGROUNDS = ("striped", "checkered", "dotted", "plain")
TEXTURES = ("stripes", "dots", "ring", "cross")
"""The novel objects' marks, never in the base model's training data."""
SOLID = "solid"
MARK = (245, 245, 245)  # the colour of a texture's marks
# Muted tones (low saturation, so that no background pixel is taken for an object); a pattern pairs a light
# tone with a dark one.
LIGHT_TONES = ((200, 200, 200), (215, 200, 170), (190, 175, 140), (175, 185, 195))
DARK_TONES = ((70, 70, 70), (115, 90, 72), (95, 105, 125), (45, 45, 52))
SIZE = 64
"""The world's native image size; the generator draws any multiple of 16 from 64 up."""

GENERIC_OBJECT = "object"
"""The word a caption uses for an object whose shape it does not name; the handles' init word in this world."""
TEMPLATE_WORDS = ("a", "an", "photo", "of", "and", "on", "background", GENERIC_OBJECT)
WORDS = (*TEMPLATE_WORDS, *COLOURS, *SHAPES, *BACKGROUNDS)
"""Every word of every caption: the tokenizer of ``builtin:shapes`` has a whole-word token for each."""

OBJECT_SIZES = {1: (22, 32), 2: (18, 27), 3: (15, 21)}
"""Bounding-box side of each object, drawn uniformly in ``(low, high)`` pixels at :data:`SIZE`, by object count."""

_SUPERSAMPLE = 4  # drawn this many times larger, then box-filtered down: clean edges


@dataclass(frozen=True)
class WorldObject:
    colour: str
    shape: str
    texture: str  # SOLID, or one of TEXTURES
    cx: float  # centre and bounding-box side, in pixels at SIZE
    cy: float
    size: float


@dataclass(frozen=True)
class WorldScene:
    background: str
    tones: tuple  # ((r, g, b), (r, g, b)): the pattern's light and dark tone (plain: the first)
    phase: tuple  # (dy, dx) pixels at SIZE: where the pattern starts
    objects: tuple  # of WorldObject, left to right

    def caption(self) -> str:
        """``a photo of a red circle and a blue square on a striped background`` (objects left to right)."""
        return caption([f"{o.colour} {o.shape}" for o in self.objects], self.background)


def caption(objects: list[str], background: str | None) -> str:
    """The world's one template: ``a photo of a X and a Y on a B background`` (``background`` None: no "on ...")."""
    described = " and ".join(("an " if o[0] in "aeiou" else "a ") + o if not o.startswith("<") else o for o in objects)
    return f"a photo of {described}" + (f" on a {background} background" if background else "")


def random_scene(
    rng: np.random.Generator,
    *,
    num_objects: int | None = None,
    textured: bool = False,
    background: str | None = None,
    distinct_shapes: bool = False,
    object_sizes: dict | None = None,
) -> WorldScene:
    """Draws a scene: 1-3 objects of distinct colours, placed without overlap.

    Args:
        num_objects: 1, 2 or 3; None: drawn uniformly.
        textured: every object carries a texture from :data:`TEXTURES` (distinct within the scene); else all solid.
        background: one of :data:`BACKGROUNDS`; None: drawn uniformly.
        distinct_shapes: no two objects share a shape (the benchmark's scenes, so that each is told apart).
        object_sizes: ``{count: (low, high)}`` object sides in pixels; None: :data:`OBJECT_SIZES`.
    """
    count = int(num_objects or rng.integers(1, 4))
    background = background or str(rng.choice(BACKGROUNDS))
    light = np.array(LIGHT_TONES[rng.integers(len(LIGHT_TONES))]) + rng.integers(-8, 9, 3)
    dark = np.array(DARK_TONES[rng.integers(len(DARK_TONES))]) + rng.integers(-8, 9, 3)
    tones = (tuple(int(v) for v in light), tuple(int(v) for v in dark))
    if background == "plain" and rng.random() < 0.5:
        tones = tones[::-1]  # a plain background is light or dark
    phase = (int(rng.integers(0, 16)), int(rng.integers(0, 16)))
    colours = rng.permutation(list(COLOURS))[:count]
    shapes = rng.permutation(SHAPES)[:count] if distinct_shapes else rng.choice(SHAPES, count)
    textures = rng.permutation(TEXTURES)[:count] if textured else [SOLID] * count
    low, high = (object_sizes or OBJECT_SIZES)[count]
    for _ in range(1000):
        sizes = rng.uniform(low, high, count)
        centres = [rng.uniform(s / 2 + 2, SIZE - s / 2 - 2, 2) for s in sizes]
        if all(
            max(abs(a[0] - b[0]), abs(a[1] - b[1])) > (sa + sb) / 2 + 3
            for i, (a, sa) in enumerate(zip(centres, sizes))
            for b, sb in zip(centres[i + 1:], sizes[i + 1:])
        ):
            break
    objects = sorted(
        (WorldObject(str(c), str(s), str(t), float(p[0]), float(p[1]), float(z))
         for c, s, t, p, z in zip(colours, shapes, textures, centres, sizes)),
        key=lambda o: o.cx,
    )
    return WorldScene(background, tones, phase, tuple(objects))


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates ``(y, x)`` of a ``size`` canvas, in units of :data:`SIZE` pixels."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    scale = SIZE / size
    return (yy + 0.5) * scale, (xx + 0.5) * scale


def _background(scene: WorldScene, size: int) -> np.ndarray:
    """(size, size, 3) float32 in [0, 255]. Stripes: diagonal, period 8 px; checks: 8 px; dots: r 2 px every 8."""
    yy, xx = _grid(size)
    y, x = yy + scene.phase[0], xx + scene.phase[1]
    if scene.background == "striped":
        dark = (x + y) % 8 < 4
    elif scene.background == "checkered":
        dark = (np.floor(x / 8) + np.floor(y / 8)) % 2 == 1
    elif scene.background == "dotted":
        dark = ((x % 8) - 4) ** 2 + ((y % 8) - 4) ** 2 < 2.0**2
    else:
        dark = np.zeros_like(x, dtype=bool)
    light, tone = np.array(scene.tones[0], np.float32), np.array(scene.tones[1], np.float32)
    return np.where(dark[..., None], tone, light)


def _shape_coverage(obj: WorldObject, size: int) -> np.ndarray:
    """The object's anti-aliased coverage at ``size``: (size, size) float32 in [0, 1]."""
    big, k = size * _SUPERSAMPLE, size * _SUPERSAMPLE / SIZE
    canvas = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(canvas)
    half, cx, cy = obj.size / 2 * k, obj.cx * k, obj.cy * k
    box = [cx - half, cy - half, cx + half, cy + half]
    if obj.shape == "circle":
        draw.ellipse(box, fill=255)
    elif obj.shape == "square":
        draw.rectangle(box, fill=255)
    else:
        draw.polygon([(cx, cy - half), (cx - half, cy + half), (cx + half, cy + half)], fill=255)
    return np.asarray(canvas.resize((size, size), Image.Resampling.BOX), dtype=np.float32) / 255.0


def texture_marks(texture: str, obj: WorldObject, size: int) -> np.ndarray:
    """Where a texture's white marks are, inside the object's box: (size, size) bool at ``size``."""
    yy, xx = _grid(size)
    dy, dx = yy - obj.cy, xx - obj.cx
    if texture == "stripes":  # horizontal bands, period 6 px
        return (dy + 100.0) % 6 < 2.5
    if texture == "dots":  # dots of radius 1.4 px every 6 px
        return ((dx + 100.0) % 6 - 3) ** 2 + ((dy + 100.0) % 6 - 3) ** 2 < 1.4**2
    if texture == "ring":
        radius = np.sqrt(dx**2 + dy**2) / (obj.size / 2)
        return (radius > 0.28) & (radius < 0.5)
    if texture == "cross":
        arm, width = 0.36 * obj.size, 1.6
        return ((np.abs(dx) < width) & (np.abs(dy) < arm)) | ((np.abs(dy) < width) & (np.abs(dx) < arm))
    return np.zeros_like(xx, dtype=bool)


def render(scene: WorldScene, size: int = SIZE) -> tuple[Image.Image, list[np.ndarray]]:
    """Draws ``scene``: an RGB ``size x size`` image and each object's coverage (size, size) float32 in [0, 1]."""
    if size < SIZE or size % 16:
        raise ValueError(f"size must be a multiple of 16 from {SIZE} up, got {size}")
    img = _background(scene, size)
    coverages = []
    for obj in scene.objects:
        cover = _shape_coverage(obj, size)
        colour = np.array(COLOURS[obj.colour], np.float32)
        fill = np.where(texture_marks(obj.texture, obj, size)[..., None], np.array(MARK, np.float32), colour)
        img = img * (1 - cover[..., None]) + fill * cover[..., None]
        coverages.append(cover)
    return Image.fromarray(np.clip(img + 0.5, 0, 255).astype(np.uint8), mode="RGB"), coverages


def loose_mask(coverage: np.ndarray, grow: int) -> Image.Image:
    """A user's quick mask: the object grown by ``grow`` pixels (mode "L", 0/255)."""
    inside = Image.fromarray(((coverage >= 0.5) * 255).astype(np.uint8), mode="L")
    return inside.filter(ImageFilter.MaxFilter(2 * grow + 1)) if grow else inside


def ground_truth(scene: WorldScene, mask_files: list[str]) -> dict:
    """The JSON of a benchmark scene: background, caption and each object's colour, shape, texture and mask."""
    return {
        "background": scene.background,
        "caption": scene.caption(),
        "tones": [list(t) for t in scene.tones],
        "phase": list(scene.phase),
        "objects": [{**asdict(o), "mask": m} for o, m in zip(scene.objects, mask_files)],
        "size": SIZE,
    }


GROUND_TRUTH_FILE = "world.json"


def scene_from_ground_truth(data: dict) -> WorldScene:
    """The :class:`WorldScene` that :func:`ground_truth` wrote (so a scene folder can be redrawn exactly)."""
    objects = tuple(WorldObject(**{k: o[k] for k in ("colour", "shape", "texture", "cx", "cy", "size")})
                    for o in data["objects"])
    return WorldScene(data["background"], tuple(tuple(t) for t in data["tones"]), tuple(data["phase"]), objects)


def read_ground_truth(folder: Union[str, Path]) -> WorldScene:
    return scene_from_ground_truth(json.loads((Path(folder) / GROUND_TRUTH_FILE).read_text()))
