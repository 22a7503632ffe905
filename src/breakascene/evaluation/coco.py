"""``eval build-scenes``: COCO images and instance masks -> square scene folders (paper Sec. 4.1, App. B.2).

The rules, in the order they are applied to each image (all of them pure functions below, tested):

1. The largest centred square of the image is the crop (the same square ``load_scene`` cuts).
2. An annotation is a candidate concept unless it is a crowd annotation (``iscrowd``: 1) or of a class without
   individual identity (:data:`DROPPED_CLASSES`). Instance annotations are COCO's "thing" classes only.
3. Its mask, cut to the crop, must cover at least ``min_fraction`` (15 %) of the crop.
4. Concepts must be of distinct classes: of several qualifying segments of one class the largest is kept.
5. At most ``max_concepts`` concepts, the largest first (the paper reports the method for up to 4).
6. An image is eligible with at least two concepts, and only if their union leaves some background (the
   ``<bg>`` handle needs a non-empty complement).

``num`` eligible images are chosen with ``random.Random(seed).sample`` from the eligible ones sorted by image id,
so the same annotations, seed and rules always give the same scenes. Each scene folder holds ``img.png`` (the
crop at the photo's own pixel size), ``mask0.png``, ``mask1.png``, ... (8-bit, 0/255, largest concept first) and
``classes.json`` (class names and COCO ids): exactly what ``extract`` and ``load_scene_folder`` read.
"""

from __future__ import annotations

import hashlib
import json
import random
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import ConfigError, RunError, SceneError
from ..run_folder import check_clear_of_inputs, written_atomically
from ..scene_folder import write_scene_folder
from .common import write_json_atomic

DROPPED_CLASSES = ("orange", "banana", "broccoli", "carrot", "zebra", "giraffe")
"""COCO classes whose instances have no individual identity (App. B.2): never concepts."""
MIN_FRACTION = 0.15
MAX_CONCEPTS = 4
SCENE_CLASSES_FILE = "classes.json"
SCENES_INDEX_FILE = "index.json"


@dataclass
class Concept:
    """One concept of a scene: a COCO instance annotation cut to the square crop."""

    annotation_id: int
    category_id: int
    class_name: str
    fraction: float  # of the crop's area
    mask: np.ndarray = field(repr=False)  # (S, S) bool, in crop pixels


@dataclass
class Candidate:
    """An image with its crop box and chosen concepts (largest first)."""

    image_id: int
    file_name: str
    width: int
    height: int
    box: tuple[int, int, int, int]  # (left, top, right, bottom) in image pixels
    concepts: list[Concept]


# ----------------------------------------------------------------------------------------------------------
# annotation formats


def load_annotations(path: str | Path) -> dict:
    """Reads a COCO instances JSON (``images``, ``annotations``, ``categories``); ConfigError if it is not one."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--coco-annotations {path} does not exist (e.g. annotations/instances_val2017.json)")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ConfigError(f"--coco-annotations {path} is not JSON ({error})") from error
    missing = [k for k in ("images", "annotations", "categories") if not isinstance(data, dict) or k not in data]
    if missing:
        raise ConfigError(f"--coco-annotations {path} is not a COCO instances file (no {', '.join(missing)})")
    return data


def annotation_mask(segmentation, height: int, width: int) -> np.ndarray:
    """A COCO ``segmentation`` -> ``(height, width)`` bool mask, through pycocotools.

    Handles the three COCO forms: a list of polygons ``[[x0, y0, x1, y1, ...], ...]``, uncompressed RLE
    ``{"size": [h, w], "counts": [int, ...]}`` (crowd annotations) and compressed RLE (``counts`` a string).
    """
    from pycocotools import mask as mask_utils

    if isinstance(segmentation, list):
        polygons = [p for p in segmentation if len(p) >= 6]  # a polygon needs 3 points
        if not polygons:
            return np.zeros((height, width), bool)
        rle = mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
    elif isinstance(segmentation, dict) and isinstance(segmentation.get("counts"), list):
        rle = mask_utils.frPyObjects(segmentation, height, width)
    elif isinstance(segmentation, dict) and isinstance(segmentation.get("counts"), (str, bytes)):
        counts = segmentation["counts"]
        rle = {"size": segmentation["size"], "counts": counts.encode() if isinstance(counts, str) else counts}
    else:
        raise ConfigError(f"unknown COCO segmentation form: {type(segmentation).__name__}")
    return mask_utils.decode(rle).astype(bool)


def centre_square(width: int, height: int) -> tuple[int, int, int, int]:
    """The largest centred square ``(left, top, right, bottom)``: the same box ``scene.load_scene`` cuts."""
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return (left, top, left + side, top + side)


# ----------------------------------------------------------------------------------------------------------
# the rules


def select_concepts(
    annotations: list[dict],
    class_names: dict[int, str],
    width: int,
    height: int,
    *,
    min_fraction: float = MIN_FRACTION,
    dropped: tuple[str, ...] = DROPPED_CLASSES,
    max_concepts: int = MAX_CONCEPTS,
) -> tuple[tuple[int, int, int, int], list[Concept]]:
    """Rules 1-5 of the module docstring for one image's annotations.

    Returns:
        The crop box and the chosen concepts, largest first; masks are ``(S, S)`` bool in crop pixels.
    """
    box = centre_square(width, height)
    left, top, right, bottom = box
    side = right - left
    best: dict[int, Concept] = {}
    for ann in sorted(annotations, key=lambda a: a["id"]):
        name = class_names.get(ann["category_id"])
        if name is None or ann.get("iscrowd", 0) or name in dropped:
            continue
        # COCO's own area is that of the whole segment; a segment far too small can be skipped undecoded.
        if "area" in ann and ann["area"] < 0.9 * min_fraction * side * side:
            continue
        mask = annotation_mask(ann["segmentation"], height, width)[top:bottom, left:right]
        fraction = float(mask.sum()) / (side * side)
        if fraction < min_fraction:
            continue
        cat = ann["category_id"]
        if cat not in best or fraction > best[cat].fraction:
            best[cat] = Concept(int(ann["id"]), int(cat), name, fraction, mask)
    concepts = sorted(best.values(), key=lambda c: (-c.fraction, c.annotation_id))[:max_concepts]
    return box, concepts


def is_eligible(concepts: list[Concept]) -> bool:
    """Rule 6: at least two concepts (distinct classes by construction), and some background left."""
    if len(concepts) < 2:
        return False
    union = np.logical_or.reduce([c.mask for c in concepts])
    return not bool(union.all())


def eligible_candidates(data: dict, **rules) -> list[Candidate]:
    """Every eligible image of a COCO instances dict, sorted by image id (``rules``: see :func:`select_concepts`)."""
    class_names = {int(c["id"]): str(c["name"]) for c in data["categories"]}
    by_image: dict[int, list[dict]] = {}
    for ann in data["annotations"]:
        by_image.setdefault(int(ann["image_id"]), []).append(ann)
    candidates = []
    for info in sorted(data["images"], key=lambda i: i["id"]):
        anns = by_image.get(int(info["id"]), [])
        if len(anns) < 2:
            continue
        box, concepts = select_concepts(anns, class_names, int(info["width"]), int(info["height"]), **rules)
        if is_eligible(concepts):
            candidates.append(
                Candidate(int(info["id"]), str(info["file_name"]), int(info["width"]), int(info["height"]), box, concepts)
            )
    return candidates


def choose(candidates: list[Candidate], num: int, seed: int) -> list[Candidate]:
    """``num`` of the candidates (all if fewer), chosen by ``random.Random(seed)``: deterministic."""
    if num >= len(candidates):
        return list(candidates)
    return random.Random(seed).sample(candidates, num)


def scene_id(image_id: int) -> str:
    return f"coco-{image_id:012d}"


# ----------------------------------------------------------------------------------------------------------
# writing the scenes


def write_scene(candidate: Candidate, images_dir: Path, folder: Path) -> dict:
    """Writes one scene folder (img.png, mask*.png, classes.json) and returns its classes.json dict."""
    from PIL import Image

    path = Path(images_dir) / candidate.file_name
    if not path.is_file():
        raise SceneError(f"COCO image {path} not found; --coco-images must be the folder holding {candidate.file_name}")
    with Image.open(path) as opened:
        # COCO's masks are drawn on the stored pixels (no EXIF rotation), so the image is used exactly as stored.
        photo = opened.convert("RGB")
    if photo.size != (candidate.width, candidate.height):
        raise SceneError(
            f"{path} is {photo.size[0]}x{photo.size[1]} but the annotations say {candidate.width}x{candidate.height}"
        )
    write_scene_folder(folder, photo.crop(candidate.box), [concept.mask for concept in candidate.concepts])
    info = {
        "scene": scene_id(candidate.image_id),
        "image_id": candidate.image_id,
        "file_name": candidate.file_name,
        "crop_box": list(candidate.box),
        "classes": [c.class_name for c in candidate.concepts],
        "category_ids": [c.category_id for c in candidate.concepts],
        "annotation_ids": [c.annotation_id for c in candidate.concepts],
        "fractions": [round(c.fraction, 4) for c in candidate.concepts],
    }
    write_json_atomic(folder / SCENE_CLASSES_FILE, info)
    return info


def build_scenes(
    annotations: str | Path,
    images_dir: str | Path,
    out: str | Path,
    *,
    num: int = 50,
    seed: int = 0,
    min_fraction: float = MIN_FRACTION,
    max_concepts: int = MAX_CONCEPTS,
    overwrite: bool = False,
) -> list[dict]:
    """Builds ``num`` scene folders under ``out`` (see the module docstring) plus ``out/index.json``.

    ``out`` appears only complete: everything is written to ``out.partial`` and renamed at the end.

    Raises:
        ConfigError: bad numbers or annotations file. RunError: ``out`` exists without ``overwrite``.
        SceneError: no eligible image, or a chosen image missing from ``images_dir``.
    """
    if num < 1:
        raise ConfigError(f"--num must be >= 1, got {num}")
    if not 0 < min_fraction < 1:
        raise ConfigError(f"--min-fraction must be in (0, 1), got {min_fraction}")
    if max_concepts < 2:
        raise ConfigError(f"--max-concepts must be >= 2, got {max_concepts}")
    out, images_dir = Path(out), Path(images_dir)
    check_clear_of_inputs(out, [("COCO annotation file", annotations), ("COCO image folder", images_dir)])
    if out.exists() and not overwrite:
        raise RunError(f"{out} already exists; pass --overwrite to replace it or choose another --out")
    if not images_dir.is_dir():
        raise ConfigError(f"--coco-images {images_dir} is not a folder")
    data = load_annotations(annotations)
    candidates = eligible_candidates(data, min_fraction=min_fraction, max_concepts=max_concepts)
    if not candidates:
        raise SceneError(f"no image of {annotations} passes the rules (two distinct classes each >= {min_fraction:.0%})")
    chosen = choose(candidates, num, seed)
    if len(chosen) < num:
        warnings.warn(f"only {len(chosen)} images pass the rules; writing {len(chosen)} scenes instead of {num}")

    with written_atomically(out) as partial:
        infos = [write_scene(c, images_dir, partial / scene_id(c.image_id)) for c in chosen]
        write_json_atomic(
            partial / SCENES_INDEX_FILE,
            {
                "format": "break-a-scene eval scenes",
                "annotations": str(annotations),
                "annotations_sha256": hashlib.sha256(Path(annotations).read_bytes()).hexdigest(),
                "seed": seed,
                "num": num,
                "rules": {
                    "min_fraction": min_fraction,
                    "max_concepts": max_concepts,
                    "dropped_classes": list(DROPPED_CLASSES),
                    "crowd": "ignored",
                    "crop": "largest centred square",
                },
                "eligible": len(candidates),
                "scenes": [info["scene"] for info in infos],
            },
        )
    return infos
