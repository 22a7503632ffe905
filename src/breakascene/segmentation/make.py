"""The one entry point of ``break-a-scene masks``, ``extract`` and the web app: a :class:`MaskRequest` -> masks.

:func:`make_masks` checks the request, loads the models it needs, segments (SAM from points or boxes, OWLv2 + SAM
from text, or SAM's automatic masks) and cleans the masks up (:func:`refine`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence, Union

import numpy as np
from PIL import Image

from ..errors import SceneError
from . import morphology
from .loading import load_detector, load_sam
from .owl import masks_from_text
from .prompts import MaskRequest, check_request
from .sam import automatic_masks, masks_from_boxes, masks_from_points

__all__ = ["open_photo", "refine", "MaskResult", "make_masks"]


def open_photo(path: Union[str, Path, Image.Image]) -> Image.Image:
    """The photo as displayed (EXIF-transposed), RGB; unreadable files raise :class:`SceneError`."""
    from ..images import open_image, to_rgb

    return to_rgb(open_image(path, "image"))


def refine(
    masks: Sequence[np.ndarray], dilate: int = 0, erode: int = 0, fill_holes: bool = False,
    largest_component: bool = False, labels: Sequence[str] | None = None,
) -> list[np.ndarray]:
    """Applies the clean-up options to every mask, in this order: keep the largest connected component, fill
    holes, erode by ``erode`` px, dilate by ``dilate`` px (erode then dilate = an opening).

    Raises:
        SceneError: a negative size, or a mask that is empty (after the clean-up).
    """
    for flag, value in (("--dilate", dilate), ("--erode", erode)):
        if value < 0:
            raise SceneError(f"{flag} {value} must be a number of pixels >= 0")
    out = []
    for i, mask in enumerate(masks):
        mask = np.asarray(mask, dtype=bool)
        if largest_component:
            mask = morphology.keep_largest_component(mask)
        if fill_holes:
            mask = morphology.fill_holes(mask)
        if erode:
            mask = morphology.erode(mask, erode)
        if dilate:
            mask = morphology.dilate(mask, dilate)
        if not mask.any():
            label = f"mask{i}" + (f" ({labels[i]})" if labels and labels[i] else "")
            after = " after --erode" if erode else ""
            raise SceneError(f"{label} is empty{after}; give another prompt{' or a smaller --erode' if erode else ''}")
        out.append(mask)
    return out


@dataclass
class MaskResult:
    masks: list[np.ndarray]
    labels: list[str]  # the phrase of a text mask, else ""
    scores: list[float] | None  # detection scores of text masks

    def masks_as_images(self) -> list[Image.Image]:
        """The masks as 8-bit ``L`` images (0 / 255), as :func:`breakascene.scene.load_scene` takes them."""
        return [Image.fromarray(m.astype(np.uint8) * 255, mode="L") for m in self.masks]


def make_masks(image: Image.Image, request: MaskRequest, sam=None, detector=None) -> MaskResult:
    """Checks the request, loads the models it needs (unless given), segments and cleans up the masks."""
    groups, boxes, phrases = check_request(request, image.size)
    if sam is None:
        sam = load_sam(request.sam_model, request.device)
    scores = None
    labels = [""] * (len(groups) + len(boxes))
    if phrases:
        if detector is None:
            detector = load_detector(request.detector_model, request.device)
        masks, scores = masks_from_text(image, phrases, detector, sam, request.detection_threshold)
        labels = list(phrases)
    elif request.auto:
        masks = automatic_masks(image, sam, request.max_masks, request.min_area, request.points_per_side)
        labels = [""] * len(masks)
    else:
        masks = masks_from_points(image, groups, sam) + masks_from_boxes(image, boxes, sam)
    masks = refine(masks, request.dilate, request.erode, request.fill_holes, request.largest_component, labels)
    return MaskResult(masks, labels, scores)
