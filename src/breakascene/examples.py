"""Synthetic example scene (we may not ship real photos): a red ball and a blue box on a meadow.

Everything is drawn with numpy + PIL and is deterministic for a given seed, so the committed
``examples/shapes`` folder can be regenerated bit-for-bit with :func:`write_shapes_example`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from .scene_folder import write_scene_folder

__all__ = ["make_shapes_scene", "write_shapes_example"]

SHAPES_NAMES = ["ball", "box"]

# Shapes are drawn at this multiple of the output size and box-filtered down, for clean edges.
_SUPERSAMPLE = 4


def _polygon_coverage(size: int, points: list[tuple[float, float]]) -> np.ndarray:
    """Anti-aliased coverage ``(size, size)`` float32 in [0, 1] of a polygon given in pixels."""
    big = size * _SUPERSAMPLE
    canvas = Image.new("L", (big, big), 0)
    ImageDraw.Draw(canvas).polygon([(x * _SUPERSAMPLE, y * _SUPERSAMPLE) for x, y in points], fill=255)
    return np.asarray(canvas.resize((size, size), Image.Resampling.BOX), dtype=np.float32) / 255.0


def _loose_mask(coverage: np.ndarray, grow: int) -> Image.Image:
    """Binary mask (mode "L", 0/255) grown by ``grow`` pixels, like a user's quick loose mask."""
    inside = Image.fromarray(((coverage >= 0.5) * 255).astype(np.uint8), mode="L")
    return inside.filter(ImageFilter.MaxFilter(2 * grow + 1))


def make_shapes_scene(
    size: int = 512, seed: int = 0
) -> tuple[Image.Image, list[Image.Image], list[str]]:
    """Draw the synthetic two-concept scene.

    Args:
        size: side of the square photo in pixels (>= 64).
        seed: controls the texture noise and small jitter of positions and colours.

    Returns:
        ``(photo, masks, names)``: an RGB ``size x size`` photo (sky-to-meadow gradient with mild
        noise, a shaded red ball on the left, a blue box with a lighter top face on the right,
        not overlapping, each covering about 10-17 % of the photo); two mode-"L" masks with values
        0/255 that are a few pixels looser than their object; and ``["ball", "box"]``.
    """
    if size < 64:
        raise ValueError(f"size must be >= 64, got {size}")
    rng = np.random.default_rng(seed)
    s = float(size)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5

    # Background: sky fading into a meadow below a slightly soft horizon.
    t = yy / s
    sky = np.stack([0.55 + 0.25 * t, 0.72 + 0.18 * t, 0.95 - 0.05 * t], axis=-1)
    ground = np.stack([0.42 - 0.15 * t, 0.62 - 0.2 * t, 0.30 - 0.1 * t], axis=-1)
    horizon = 0.48 + 0.02 * rng.uniform(-1, 1)
    w_ground = np.clip((t - horizon) / 0.02 + 0.5, 0.0, 1.0)[..., None]
    img = sky * (1 - w_ground) + ground * w_ground

    # Mild texture: coarse blotches plus fine grain, stronger on the ground than in the sky.
    coarse = rng.normal(0, 1, (size // 16 + 1, size // 16 + 1)).astype(np.float32)
    coarse_img = Image.fromarray(coarse, mode="F").resize((size, size), Image.Resampling.BICUBIC)
    texture = np.asarray(coarse_img, dtype=np.float32)[..., None] * (0.012 + 0.03 * w_ground)
    grain = rng.normal(0, 0.008, (size, size, 1)).astype(np.float32)
    img = img + texture + grain

    # Red ball: shaded sphere with a highlight, plus a soft contact shadow on the ground.
    jitter = rng.uniform(-0.015, 0.015, 4) * s
    bx, by, br = 0.27 * s + jitter[0], 0.62 * s + jitter[1], 0.19 * s
    shadow = np.exp(-(((xx - bx - 0.04 * s) / (1.1 * br)) ** 2 + ((yy - by - 0.93 * br) / (0.22 * br)) ** 2))
    img = img * (1 - 0.45 * shadow[..., None])
    dist = np.sqrt((xx - bx) ** 2 + (yy - by) ** 2)
    ball_cov = np.clip(br - dist + 0.5, 0.0, 1.0)
    nx, ny = (xx - bx) / br, (yy - by) / br
    nz = np.sqrt(np.clip(1 - nx**2 - ny**2, 0.0, 1.0))
    light = np.array([-0.45, -0.55, 0.70], dtype=np.float32)
    light /= np.linalg.norm(light)
    lambert = np.clip(nx * light[0] + ny * light[1] + nz * light[2], 0.0, 1.0)
    spec = np.clip(nx * light[0] + ny * light[1] + nz * light[2], 0.0, 1.0) ** 40
    red = np.array([0.80, 0.10, 0.09]) * (1 + 0.08 * rng.uniform(-1, 1))
    ball = red[None, None, :] * (0.25 + 0.85 * lambert[..., None]) + 0.7 * spec[..., None]
    img = img * (1 - ball_cov[..., None]) + ball * ball_cov[..., None]

    # Blue box: front face, lighter top face and darker right face of a simple oblique cube.
    x0, y0 = 0.57 * s + jitter[2], 0.50 * s + jitter[3]
    side, dx, dy = 0.31 * s, 0.08 * s, -0.08 * s
    x1, y1 = x0 + side, y0 + side
    faces = [
        ([(x0, y0), (x1, y0), (x1, y1), (x0, y1)], 1.00),
        ([(x0, y0), (x1, y0), (x1 + dx, y0 + dy), (x0 + dx, y0 + dy)], 1.45),
        ([(x1, y0), (x1 + dx, y0 + dy), (x1 + dx, y1 + dy), (x1, y1)], 0.65),
    ]
    shadow_quad = [(x0 + 0.02 * s, y1), (x1, y1), (x1 + 1.6 * dx, y1 + 0.5 * dx), (x0 + 1.6 * dx, y1 + 0.5 * dx)]
    box_shadow = _polygon_coverage(size, shadow_quad)
    img = img * (1 - 0.35 * box_shadow[..., None])
    blue = np.array([0.16, 0.30, 0.72]) * (1 + 0.08 * rng.uniform(-1, 1))
    box_cov = np.zeros((size, size), dtype=np.float32)
    for points, shade in faces:
        cov = _polygon_coverage(size, points)
        # Slight vertical gradient per face so it does not look flat-filled.
        face = np.clip(blue * shade, 0, 1)[None, None, :] * (1.05 - 0.1 * (yy / s))[..., None]
        img = img * (1 - cov[..., None]) + face * cov[..., None]
        box_cov = np.maximum(box_cov, cov)

    photo = Image.fromarray((np.clip(img, 0.0, 1.0) * 255 + 0.5).astype(np.uint8), mode="RGB")
    grow = max(2, round(0.016 * s))
    masks = [_loose_mask(ball_cov, grow), _loose_mask(box_cov, grow)]
    return photo, masks, list(SHAPES_NAMES)


def write_shapes_example(folder: Union[str, Path]) -> Path:
    """Write ``img.png``, ``mask0.png`` (ball) and ``mask1.png`` (box) into ``folder`` (created).

    Returns the folder as a :class:`~pathlib.Path`.
    """
    folder = Path(folder)
    photo, masks, _ = make_shapes_scene()
    write_scene_folder(folder, photo, masks, overwrite=True)
    return folder
