"""What to segment, as the user writes it: point groups, boxes and phrases, parsed and checked before any model loads.

Coordinates are pixels of the photo *as displayed*: x to the right, y down, (0, 0) top left.

Prompt syntax (shared by ``break-a-scene masks`` and ``extract``):

* point group: ``x,y`` joined by ``+`` (positive point, on the concept) or ``-`` (negative point, not on
  it); the first point is positive: ``120,80`` or ``120,80+200,90-50,60``. One group gives one mask.
* box: ``x0,y0,x1,y1`` with ``x0 < x1`` and ``y0 < y1``. One box gives one mask.
* text: phrases separated by commas, ``"dog, red shirt"``. One phrase gives one mask.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

from ..errors import SceneError
from .loading import DEFAULT_DETECTOR_MODEL, DEFAULT_SAM_MODEL

__all__ = [
    "MAX_CONCEPTS", "Point", "Box", "parse_point_group", "parse_box", "parse_phrases", "phrase_name",
    "check_prompts", "MaskRequest", "check_request",
]

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
