"""Automatic and assisted masks: SAM from points, boxes or a point grid, OWLv2 + SAM from text.

Everything here works on the photo *as displayed* (EXIF-transposed, like :func:`breakascene.scene.load_scene`)
and returns boolean ``(H, W)`` numpy masks at the photo's own size, in the order the prompts were given.

Models come through transformers (``SamModel``/``SamProcessor``, ``Owlv2ForObjectDetection``/
``Owlv2Processor``) and are imported inside functions only, so ``import breakascene`` and ``extract`` with
hand-made masks never load them. Coordinates are pixels of the photo: x to the right, y down, (0, 0) top left.

Prompt syntax (shared by ``break-a-scene masks`` and ``extract``):

* point group: ``x,y`` joined by ``+`` (positive point, on the concept) or ``-`` (negative point, not on
  it); the first point is positive: ``120,80`` or ``120,80+200,90-50,60``. One group gives one mask.
* box: ``x0,y0,x1,y1`` with ``x0 < x1`` and ``y0 < y1``. One box gives one mask.
* text: phrases separated by commas, ``"dog, red shirt"``. One phrase gives one mask.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence, Union

import numpy as np
import torch
from PIL import Image

from .errors import ConfigError, SceneError, first_line

__all__ = [
    "DEFAULT_SAM_MODEL", "DEFAULT_DETECTOR_MODEL", "MAX_CONCEPTS", "Segmenter", "Detector", "load_sam",
    "load_detector", "open_photo", "parse_point_group", "parse_box", "parse_phrases", "phrase_name",
    "check_prompts", "masks_from_points", "masks_from_boxes", "detect", "masks_from_text", "automatic_masks",
]

DEFAULT_SAM_MODEL = "facebook/sam-vit-base"
DEFAULT_DETECTOR_MODEL = "google/owlv2-base-patch16-ensemble"
MAX_CONCEPTS = 8
"""At most this many concepts (masks) per scene: more would not fit union sampling and the GPU budget."""

POINT_FORM = "x,y, or a group like 120,80+200,90-50,60 ('+' adds a point on the concept, '-' one off it)"
BOX_FORM = "x0,y0,x1,y1 in pixels with x0 < x1 and y0 < y1, e.g. 10,20,200,180"

_NUMBER = r"\d+"
_POINT_GROUP = re.compile(rf"^{_NUMBER},{_NUMBER}(?:[+-]{_NUMBER},{_NUMBER})*$")
_POINT = re.compile(rf"([+-]?)({_NUMBER}),({_NUMBER})")
_BOX = re.compile(rf"^({_NUMBER}),({_NUMBER}),({_NUMBER}),({_NUMBER})$")

Point = tuple[int, int, int]  # (x, y, label): label 1 on the concept, 0 off it
Box = tuple[int, int, int, int]


# ----------------------------------------------------------------------------------------------
# parsing


def parse_point_group(text: str) -> list[Point]:
    """``"120,80+200,90-50,60"`` -> ``[(120, 80, 1), (200, 90, 1), (50, 60, 0)]``.

    Raises:
        SceneError: malformed text (the message gives the expected form).
    """
    compact = str(text).replace(" ", "")
    if not _POINT_GROUP.match(compact):
        raise SceneError(f"point {text!r} is malformed; expected {POINT_FORM}")
    return [(int(x), int(y), 0 if sign == "-" else 1) for sign, x, y in _POINT.findall(compact)]


def parse_box(text: str) -> Box:
    """``"10,20,200,180"`` -> ``(10, 20, 200, 180)``.

    Raises:
        SceneError: malformed text or an empty box (the message gives the expected form).
    """
    match = _BOX.match(str(text).replace(" ", ""))
    if not match:
        raise SceneError(f"box {text!r} is malformed; expected {BOX_FORM}")
    x0, y0, x1, y1 = (int(v) for v in match.groups())
    if x0 >= x1 or y0 >= y1:
        raise SceneError(f"box {text!r} is empty; expected {BOX_FORM}")
    return (x0, y0, x1, y1)


def parse_phrases(text: str) -> list[str]:
    """``"dog, red shirt"`` -> ``["dog", "red shirt"]``.

    Raises:
        SceneError: no phrase, an empty phrase between commas, or the same phrase twice.
    """
    phrases = [p.strip() for p in str(text).split(",")]
    if not any(phrases):
        raise SceneError('the text is empty; give phrases separated by commas, e.g. --text "dog, shirt"')
    if not all(phrases):
        raise SceneError(f'{text!r} holds an empty phrase; give phrases separated by commas, e.g. "dog, shirt"')
    lowered = [p.lower() for p in phrases]
    for phrase in phrases:
        if lowered.count(phrase.lower()) > 1:
            raise SceneError(f"the phrase {phrase!r} is given twice; give every concept once")
    return phrases


def phrase_name(phrase: str) -> str:
    """A handle name for a phrase: ``"red shirt"`` -> ``"red_shirt"`` (letters, digits, '_' only, max 32)."""
    name = re.sub(r"[^A-Za-z0-9]+", "_", phrase.strip()).strip("_").lower()
    if not name or not name[0].isalpha():
        name = "c_" + name
    return name[:32].rstrip("_")


def check_prompts(size: tuple[int, int], groups: Sequence[Sequence[Point]] = (), boxes: Sequence[Box] = ()) -> None:
    """Checks that every point and box lies inside a ``(width, height)`` photo and the count of concepts.

    Raises:
        SceneError: a point or box outside the photo, or more than :data:`MAX_CONCEPTS` masks asked for.
    """
    width, height = size
    count = len(groups) + len(boxes)
    if count > MAX_CONCEPTS:
        raise SceneError(f"{count} masks asked for; at most {MAX_CONCEPTS} concepts are supported")
    for group in groups:
        for x, y, _ in group:
            if not (0 <= x < width and 0 <= y < height):
                raise SceneError(
                    f"point {x},{y} is outside the {width}x{height} photo; x must be in 0..{width - 1}, "
                    f"y in 0..{height - 1}"
                )
    for box in boxes:
        x0, y0, x1, y1 = box
        if x1 > width or y1 > height:
            raise SceneError(
                f"box {x0},{y0},{x1},{y1} is outside the {width}x{height} photo; x1 must be <= {width}, "
                f"y1 <= {height}"
            )


def open_photo(path: Union[str, Path, Image.Image]) -> Image.Image:
    """The photo as displayed (EXIF-transposed), RGB; unreadable files raise :class:`SceneError`."""
    from .scene import open_image, to_rgb

    return to_rgb(open_image(path, "image"))


# ----------------------------------------------------------------------------------------------
# models


def _device(device) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _load_error(kind: str, model: str, flag: str, error: Exception) -> ConfigError:
    where = "folder" if Path(model).exists() else "model id"
    if Path(model).exists():
        hint = f"it is not a saved {kind} model ({type(error).__name__}: {first_line(error)})"
    else:
        hint = (
            f"not found locally; the weights must be downloaded once with network access "
            f"(e.g. `hf download {model}`), or point at a local folder with {flag} /path/to/folder"
        )
    return ConfigError(f"cannot load the {kind} {where} {model!r}: {hint}")


@dataclass
class Segmenter:
    """A loaded SAM model and its processor (build with :func:`load_sam`, or pass your own)."""

    model: Any
    processor: Any
    device: torch.device = torch.device("cpu")

    @classmethod
    def load(cls, model: str = DEFAULT_SAM_MODEL, device=None) -> "Segmenter":
        sam, processor = load_sam(model, device)
        return cls(sam, processor, next(sam.parameters()).device)


@dataclass
class Detector:
    """A loaded OWLv2 detector and its processor (build with :func:`load_detector`, or pass your own)."""

    model: Any
    processor: Any
    device: torch.device = torch.device("cpu")

    @classmethod
    def load(cls, model: str = DEFAULT_DETECTOR_MODEL, device=None) -> "Detector":
        owl, processor = load_detector(model, device)
        return cls(owl, processor, next(owl.parameters()).device)


def _load_pair(model_class, processor_class, model: str, what: str, flag: str, device):
    """``(model, processor)`` from a Hub id (cached) or a local folder, in eval mode on ``device``."""
    from .hub import hub_options, not_downloadable

    hub = hub_options(model)
    try:
        loaded = model_class.from_pretrained(model, **hub)
        processor = processor_class.from_pretrained(model, **hub)
    except (OSError, ValueError, KeyError) as error:
        if hub.get("local_files_only"):
            raise not_downloadable(model, flag, f"{what} model") from error
        raise _load_error(what, model, flag, error) from error
    return loaded.to(_device(device)).eval(), processor


def load_sam(model: str = DEFAULT_SAM_MODEL, device=None):
    """``(SamModel, SamProcessor)``. Raises ConfigError (saying how to download it or use a folder) if it cannot load."""
    from transformers import SamModel, SamProcessor

    return _load_pair(SamModel, SamProcessor, model, "SAM", "--sam-model", device)


def load_detector(model: str = DEFAULT_DETECTOR_MODEL, device=None):
    """``(Owlv2ForObjectDetection, Owlv2Processor)``; errors as :func:`load_sam`."""
    from transformers import Owlv2ForObjectDetection, Owlv2Processor

    return _load_pair(Owlv2ForObjectDetection, Owlv2Processor, model, "detector", "--detector-model", device)


def _unpack(obj) -> tuple[Any, Any, torch.device]:
    if isinstance(obj, (Segmenter, Detector)):
        return obj.model, obj.processor, next(obj.model.parameters()).device
    model, processor = obj
    return model, processor, next(model.parameters()).device


# ----------------------------------------------------------------------------------------------
# SAM


class _SamImage:
    """One photo encoded by SAM once; prompts are then decoded against the cached embedding."""

    def __init__(self, image: Image.Image, sam):
        self.model, self.processor, self.device = _unpack(sam)
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


# ----------------------------------------------------------------------------------------------
# OWLv2


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
    model, processor, device = _unpack(detector)
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


# ----------------------------------------------------------------------------------------------
# automatic


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
    are dropped, and :func:`breakascene.mask_tools.select_largest` keeps the largest non-overlapping ones.
    Candidates are compared at a working size (long side <= 256 px); only the chosen ones are upscaled.
    """
    from . import mask_tools

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
    chosen = mask_tools.select_largest(list(candidates[keep]), max_masks, min_area=min_area)
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


# ----------------------------------------------------------------------------------------------
# clean-up and the one entry point of the command line


def refine(
    masks: Sequence[np.ndarray], dilate: int = 0, erode: int = 0, fill_holes: bool = False,
    largest_component: bool = False, labels: Sequence[str] | None = None,
) -> list[np.ndarray]:
    """Applies the clean-up options to every mask, in this order: keep the largest connected component, fill
    holes, erode by ``erode`` px, dilate by ``dilate`` px (erode then dilate = an opening).

    Raises:
        SceneError: a negative size, or a mask that is empty (after the clean-up).
    """
    from . import mask_tools

    for flag, value in (("--dilate", dilate), ("--erode", erode)):
        if value < 0:
            raise SceneError(f"{flag} {value} must be a number of pixels >= 0")
    out = []
    for i, mask in enumerate(masks):
        mask = np.asarray(mask, dtype=bool)
        if largest_component:
            mask = mask_tools.keep_largest_component(mask)
        if fill_holes:
            mask = mask_tools.fill_holes(mask)
        if erode:
            mask = mask_tools.erode(mask, erode)
        if dilate:
            mask = mask_tools.dilate(mask, dilate)
        if not mask.any():
            label = f"mask{i}" + (f" ({labels[i]})" if labels and labels[i] else "")
            after = " after --erode" if erode else ""
            raise SceneError(f"{label} is empty{after}; give another prompt{' or a smaller --erode' if erode else ''}")
        out.append(mask)
    return out


@dataclass
class MaskRequest:
    """What to segment: point groups, boxes, phrases or ``auto`` (points and boxes may be combined)."""

    points: Sequence[str] = ()
    boxes: Sequence[str] = ()
    text: str | None = None
    auto: bool = False
    sam_model: str = DEFAULT_SAM_MODEL
    detector_model: str = DEFAULT_DETECTOR_MODEL
    detection_threshold: float = 0.1
    max_masks: int = 4
    min_area: float = 0.01
    points_per_side: int = 16
    dilate: int = 0
    erode: int = 0
    fill_holes: bool = False
    largest_component: bool = False
    device: str | None = None

    @property
    def given(self) -> bool:
        return bool(self.points or self.boxes or self.text is not None or self.auto)


@dataclass
class MaskResult:
    masks: list[np.ndarray]
    labels: list[str]  # the phrase of a text mask, else ""
    scores: list[float] | None  # detection scores of text masks

    def masks_as_images(self) -> list[Image.Image]:
        """The masks as 8-bit ``L`` images (0 / 255), as :func:`breakascene.scene.load_scene` takes them."""
        return [Image.fromarray(m.astype(np.uint8) * 255, mode="L") for m in self.masks]


def check_request(request: MaskRequest, image_size: tuple[int, int] | None = None):
    """Parses and checks the prompts before any model is loaded; returns ``(groups, boxes, phrases)``."""
    kinds = [bool(request.points or request.boxes), request.text is not None, request.auto]
    if sum(kinds) > 1:
        raise SceneError("give either points/boxes, text or auto masks, not several kinds at once")
    if not any(kinds):
        raise SceneError("nothing to segment; give --point, --box, --text or --auto")
    groups = [parse_point_group(p) for p in request.points]
    boxes = [parse_box(b) for b in request.boxes]
    phrases = parse_phrases(request.text) if request.text is not None else []
    if len(phrases) > MAX_CONCEPTS:
        raise SceneError(f"{len(phrases)} phrases given; at most {MAX_CONCEPTS} concepts are supported")
    if image_size is not None:
        check_prompts(image_size, groups, boxes)
    if request.auto:
        if not 1 <= request.max_masks <= MAX_CONCEPTS:
            raise SceneError(f"--max-masks {request.max_masks} must be between 1 and {MAX_CONCEPTS}")
        if not 0 <= request.min_area < 1:
            raise SceneError(f"--min-area {request.min_area} must be a fraction of the photo in [0, 1)")
    if request.dilate < 0 or request.erode < 0:
        raise SceneError("--dilate and --erode take a number of pixels >= 0")
    if request.detection_threshold < 0 and request.text is not None:
        raise SceneError(f"--detection-threshold {request.detection_threshold} must be >= 0 (scores are in [0, 1])")
    return groups, boxes, phrases


def make_masks(image: Image.Image, request: MaskRequest, sam=None, detector=None) -> MaskResult:
    """Checks the request, loads the models it needs (unless given), segments and cleans up the masks."""
    groups, boxes, phrases = check_request(request, image.size)
    if sam is None:
        sam = Segmenter.load(request.sam_model, request.device)
    scores = None
    labels = [""] * (len(groups) + len(boxes))
    if phrases:
        if detector is None:
            detector = Detector.load(request.detector_model, request.device)
        masks, scores = masks_from_text(image, phrases, detector, sam, request.detection_threshold)
        labels = list(phrases)
    elif request.auto:
        masks = automatic_masks(image, sam, request.max_masks, request.min_area, request.points_per_side)
        labels = [""] * len(masks)
    else:
        masks = masks_from_points(image, groups, sam) + masks_from_boxes(image, boxes, sam)
    masks = refine(masks, request.dilate, request.erode, request.fill_holes, request.largest_component, labels)
    return MaskResult(masks, labels, scores)
