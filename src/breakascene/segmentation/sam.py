"""SAM masks from point groups, boxes or a grid of points over the whole photo.

Everything here works on the photo *as displayed* (EXIF-transposed, like :func:`breakascene.scene.load_scene`)
and returns boolean ``(H, W)`` numpy masks at the photo's own size, in the order the prompts were given.
``sam`` is a :class:`~breakascene.segmentation.loading.LoadedModel` or a ``(SamModel, SamProcessor)`` pair.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from PIL import Image

from ..errors import SceneError
from .loading import LoadedModel
from .morphology import select_largest
from .prompts import MAX_CONCEPTS, Box, Point, check_prompts

__all__ = ["masks_from_points", "masks_from_boxes", "automatic_masks"]


class _SamImage:
    """One photo encoded by SAM once; prompts are then decoded against the cached embedding."""

    def __init__(self, image: Image.Image, sam):
        loaded = LoadedModel.of(sam)
        self.model, self.processor, self.device = loaded.model, loaded.processor, loaded.device
        self.image = image
        inputs = self.processor(images=image, return_tensors="pt")
        self.original_size = [int(v) for v in inputs["original_sizes"][0]]  # (h, w)
        self.reshaped_size = [int(v) for v in inputs["reshaped_input_sizes"][0]]
        with torch.no_grad():
            self.embeddings = self.model.get_image_embeddings(inputs["pixel_values"].to(self.device))

    def scale(self, coords: np.ndarray) -> torch.Tensor:
        """Photo pixel coordinates (..., 2 or 4, x first) -> the model's resized-input coordinates."""
        (h, w), (rh, rw) = self.original_size, self.reshaped_size
        factors = np.array([rw / w, rh / h] * (coords.shape[-1] // 2), dtype=np.float32)
        return torch.from_numpy(coords.astype(np.float32) * factors).to(self.device)

    def decode(self, multimask: bool, **prompts) -> tuple[torch.Tensor, torch.Tensor]:
        """Low-resolution mask logits ``(P, C, h, w)`` and predicted IoUs ``(P, C)`` for a batch of prompts."""
        with torch.no_grad():
            out = self.model(image_embeddings=self.embeddings, multimask_output=multimask, **prompts)
        return out.pred_masks[0].float().cpu(), out.iou_scores[0].float().cpu()

    def upscale(self, logits: torch.Tensor, size: tuple[int, int] | None = None) -> np.ndarray:
        """``(P, h, w)`` logits -> ``(P, H, W)`` bool masks at the photo's size (or ``size`` = (h, w))."""
        original = [list(size)] if size is not None else [self.original_size]
        masks = self.processor.post_process_masks(
            [logits[:, None]], original, [self.reshaped_size], mask_threshold=0.0, binarize=True
        )[0]
        return masks[:, 0].numpy().astype(bool)


def _best(logits: torch.Tensor, iou: torch.Tensor) -> torch.Tensor:
    """``(P, C, h, w)``, ``(P, C)`` -> ``(P, h, w)``: per prompt the output with the highest predicted IoU."""
    best = iou.argmax(dim=1)
    return logits[torch.arange(len(best)), best]


def masks_from_points(image: Image.Image, groups: Sequence[Sequence[Point]], sam) -> list[np.ndarray]:
    """One bool ``(H, W)`` mask per point group (``(x, y, label)``, label 1 on / 0 off the concept), in order.

    Each group is decoded with SAM's three multimask outputs and the one with the highest predicted IoU is kept.
    """
    check_prompts(image.size, groups=groups)
    if not groups:
        return []
    encoded = _SamImage(image, sam)
    masks = []
    for group in groups:
        coords = np.array([[[[x, y] for x, y, _ in group]]])  # (1, 1, n, 2)
        labels = torch.tensor([[[label for _, _, label in group]]], device=encoded.device)
        logits, iou = encoded.decode(True, input_points=encoded.scale(coords), input_labels=labels)
        masks.append(encoded.upscale(_best(logits, iou))[0])
    return masks


def masks_from_boxes(image: Image.Image, boxes: Sequence[Box], sam) -> list[np.ndarray]:
    """One bool ``(H, W)`` mask per ``(x0, y0, x1, y1)`` box, in order (SAM's single output: a box is unambiguous)."""
    check_prompts(image.size, boxes=boxes)
    if not boxes:
        return []
    encoded = _SamImage(image, sam)
    coords = np.array([[list(b) for b in boxes]])  # (1, B, 4)
    logits, iou = encoded.decode(False, input_boxes=encoded.scale(coords))
    return list(encoded.upscale(_best(logits, iou)))


def automatic_masks(
    image: Image.Image,
    sam,
    max_masks: int = 4,
    min_area: float = 0.01,
    points_per_side: int = 16,
    batch_size: int = 64,
    max_area: float = 0.95,
) -> list[np.ndarray]:
    """The ``max_masks`` largest non-overlapping segments SAM finds from a grid of single-point prompts.

    Every grid point gives a candidate (SAM's output with the highest predicted IoU); candidates covering less
    than ``min_area`` or more than ``max_area`` of the photo (that is the background, which ``<bg>`` learns)
    are dropped, and :func:`breakascene.segmentation.morphology.select_largest` keeps the largest
    non-overlapping ones.
    Candidates are compared at a working size (long side <= 256 px); only the chosen ones are upscaled.
    """
    if not 1 <= max_masks <= MAX_CONCEPTS:
        raise SceneError(f"--max-masks {max_masks} must be between 1 and {MAX_CONCEPTS}")
    if not 0 <= min_area < 1:
        raise SceneError(f"--min-area {min_area} must be a fraction of the photo in [0, 1)")
    if points_per_side < 1:
        raise SceneError(f"points per side {points_per_side} must be >= 1")
    encoded = _SamImage(image, sam)
    width, height = image.size
    steps = (np.arange(points_per_side) + 0.5) / points_per_side
    grid = np.array([[x * width, y * height] for y in steps for x in steps], dtype=np.float32)
    scale = 256 / max(width, height)
    work = (max(1, round(height * scale)), max(1, round(width * scale)))
    logits, small = [], []
    for start in range(0, len(grid), batch_size):
        chunk = grid[start : start + batch_size]
        points = encoded.scale(chunk[None, :, None, :])  # (1, P, 1, 2)
        labels = torch.ones((1, len(chunk), 1), dtype=torch.long, device=encoded.device)
        chunk_logits, iou = encoded.decode(True, input_points=points, input_labels=labels)
        best = _best(chunk_logits, iou)
        logits.append(best)
        small.append(encoded.upscale(best, work))
    logits_t, candidates = torch.cat(logits), np.concatenate(small)
    areas = candidates.reshape(len(candidates), -1).mean(axis=1)
    keep = np.flatnonzero((areas >= max(min_area, 1e-9)) & (areas <= max_area))
    if len(keep) == 0:
        raise SceneError(
            f"SAM found no segment covering between {min_area:g} and {max_area:g} of the photo; "
            f"lower --min-area or give --point/--box prompts"
        )
    chosen = select_largest(list(candidates[keep]), max_masks, min_area=min_area)
    indices = [int(keep[i]) for i in chosen]
    full = encoded.upscale(logits_t[indices])
    # Make the full-size masks disjoint too (upscaling can re-create thin overlaps at the seams).
    taken = np.zeros(full.shape[1:], dtype=bool)
    result = []
    for mask in full:
        mask = mask & ~taken
        taken |= mask
        result.append(mask)
    return result
