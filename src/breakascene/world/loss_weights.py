"""The weights of ``world train``'s denoising loss: per picture (by noise level) and per latent pixel (objects
against background). Small and pure, tested in tests/test_world.py."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..shapes_world import SIZE


def object_boxes(scenes, margin: float = 2.0) -> torch.Tensor:
    """(B, 1, 64, 64) float32: 1 on the pixels within ``margin`` pixels of an object's bounding box, else 0.

    The box holds every pixel where a circle, a square and a triangle of that place and size differ.
    """
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32) + 0.5
    boxes = np.zeros((len(scenes), 1, SIZE, SIZE), np.float32)
    for i, scene in enumerate(scenes):
        for o in scene.objects:
            half = o.size / 2 + margin
            boxes[i, 0] = np.maximum(boxes[i, 0], (np.abs(xx - o.cx) < half) & (np.abs(yy - o.cy) < half))
    return torch.from_numpy(boxes)


def object_pixel_weights(boxes: torch.Tensor, object_weight: float) -> torch.Tensor:
    """(B, 1, 32, 32) latent-pixel weights of the loss, each picture's averaging 1: ``object_weight`` times more
    on the objects' :func:`object_boxes` (B, 1, 64, 64) than on the background.

    Why: a circle and a square of one size differ on 2-3 % of a picture's pixels, a stripe pattern covers all
    of them, so under a uniform loss the shape words get a sliver of the gradient. Measured (docs/evaluation.md):
    a weight of 5 draws the asked shape more often (34 % -> 45 %) and a stray second object more often too
    (one object 75 % -> 65 %), so the shipped weights were trained without it (``object_weight`` 1).
    """
    weights = 1 + (object_weight - 1) * F.avg_pool2d(boxes, 2)  # the VAE halves
    return weights / weights.mean(dim=(1, 2, 3), keepdim=True)


def snr_weights(snr: torch.Tensor, gamma: float) -> torch.Tensor:
    """Weights (B,) of the v-MSE that weight the error of the clean latent by ``min(snr, gamma) + 1``.

    Min-SNR-gamma alone weights it by ``min(snr, gamma)``: about 0.03 at t = 900 of the cosine schedule, so the
    noisiest steps, the only ones where the caption decides which background, colour and shape appear (later
    the noisy latent shows them), hardly trained, and the model learned to denoise patterns without reading
    their words. The ``+ 1`` gives those steps the weight of a plain x0 loss; v-MSE is ``(snr + 1)`` times the
    x0 error, hence the division.
    """
    return (torch.clamp(snr, max=gamma) + 1) / (snr + 1)
