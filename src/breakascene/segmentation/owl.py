"""Text masks: OWLv2 finds the best box of every phrase, and SAM segments inside it.

``detector`` is a :class:`~breakascene.segmentation.loading.LoadedModel` or an
``(Owlv2ForObjectDetection, Owlv2Processor)`` pair; boxes are photo pixels ``(x0, y0, x1, y1)``.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from PIL import Image

from ..errors import SceneError
from .loading import LoadedModel
from .prompts import MAX_CONCEPTS, Box
from .sam import masks_from_boxes

__all__ = ["detect", "masks_from_text"]


def _owl_pixels(image: Image.Image, processor) -> torch.Tensor:
    """OWLv2's input: the photo padded to a square (bottom/right, black) and resized; normalised.

    Uses the processor's own resize when it can; its PIL backend needs scipy, so without scipy the pad and
    resize are done with Pillow (bilinear with antialiasing) and only rescale + normalise are left to it.
    """
    image_processor = processor.image_processor
    try:
        return image_processor(images=image, return_tensors="pt")["pixel_values"]
    except ImportError:
        pass
    side = max(image.size)
    square = Image.new("RGB", (side, side), (0, 0, 0))
    square.paste(image, (0, 0))
    size = image_processor.size
    height = size["height"] if "height" in size and size["height"] else size["shortest_edge"]
    width = size["width"] if "width" in size and size["width"] else height
    resized = square.resize((width, height), Image.Resampling.BILINEAR)
    return image_processor(images=resized, do_pad=False, do_resize=False, return_tensors="pt")["pixel_values"]


def detect(
    image: Image.Image, phrases: Sequence[str], detector, threshold: float = 0.1
) -> list[tuple[str, float, Box]]:
    """The best-scoring box of every phrase: ``[(phrase, score, (x0, y0, x1, y1)), ...]`` in phrase order.

    A phrase's score is OWLv2's sigmoid class score of its best query; boxes are photo pixels, clipped.

    Raises:
        SceneError: a phrase whose best score is below ``threshold`` (named, with its best score).
    """
    if len(phrases) > MAX_CONCEPTS:
        raise SceneError(f"{len(phrases)} phrases given; at most {MAX_CONCEPTS} concepts are supported")
    loaded = LoadedModel.of(detector)
    model, processor, device = loaded.model, loaded.processor, loaded.device
    pixels = _owl_pixels(image, processor).to(device)
    text = processor.tokenizer(list(phrases), padding="max_length", truncation=True, return_tensors="pt")
    with torch.no_grad():
        out = model(
            input_ids=text["input_ids"].to(device), attention_mask=text["attention_mask"].to(device),
            pixel_values=pixels,
        )
    scores = torch.sigmoid(out.logits[0].float().cpu())  # (queries, phrases)
    boxes = out.pred_boxes[0].float().cpu()  # (queries, 4) cx, cy, w, h relative to the padded square
    width, height = image.size
    side = max(width, height)
    found = []
    for i, phrase in enumerate(phrases):
        best = int(scores[:, i].argmax())
        score = float(scores[best, i])
        if score < threshold:
            raise SceneError(
                f"no {phrase!r} found in the photo (best score {score:.2f} < --detection-threshold {threshold:g}); "
                f"try another phrase, a lower --detection-threshold, or --point/--box"
            )
        cx, cy, w, h = (float(v) * side for v in boxes[best])
        x0, y0 = int(np.clip(np.floor(cx - w / 2), 0, width - 1)), int(np.clip(np.floor(cy - h / 2), 0, height - 1))
        x1, y1 = int(np.clip(np.ceil(cx + w / 2), x0 + 1, width)), int(np.clip(np.ceil(cy + h / 2), y0 + 1, height))
        found.append((phrase, score, (x0, y0, x1, y1)))
    return found


def masks_from_text(
    image: Image.Image, phrases: Sequence[str], detector, sam, threshold: float = 0.1
) -> tuple[list[np.ndarray], list[float]]:
    """One mask per phrase: OWLv2's best box for it, segmented by SAM. Returns ``(masks, scores)`` in order."""
    found = detect(image, phrases, detector, threshold)
    masks = masks_from_boxes(image, [box for _, _, box in found], sam)
    return masks, [score for _, score, _ in found]
