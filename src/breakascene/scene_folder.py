"""The scene-folder layout: the one way a photo and its concept masks are written to disk, and read back.

    img.<ext>        the photo; written as img.png (or a copy of the user's file, keeping its suffix); read from
                     .jpg, .jpeg, .png, .webp or .bmp
    mask0.png ...    one mask per concept, in concept order: 8-bit, white = concept (read: .png, .jpg, .jpeg,
                     numbered mask0, mask1, ..., mask10 after mask9; a bare mask.png comes first)
    mask_names.txt   optional: "mask0.png<TAB>name" per line, the concepts' names
    background.png   optional: the <bg> mask a run trained on (a run's scene/ copy); never read as a concept

``extract DIR`` reads this layout (:func:`find_scene_files`, through ``scene.load_scene_folder``); ``masks``,
``eval build-scenes``, the web app, the built-in example and every run's ``scene/`` folder write it
(:func:`write_scene_folder`), so any of them can be handed back to ``extract``.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence, Union

import numpy as np
from PIL import Image, ImageOps

from .errors import SceneError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
MASK_SUFFIXES = (".png", ".jpg", ".jpeg")
MASK_NAME = re.compile(r"^mask(\d*)$", re.IGNORECASE)
NAMES_FILE = "mask_names.txt"
BACKGROUND_FILE = "background.png"

MaskLike = Union[np.ndarray, Image.Image]


@dataclass
class SceneFiles:
    """The files of one scene folder: the photo, the concept masks in order, and their names if recorded."""

    photo: Path
    masks: list[Path]
    names: list[str] | None


def is_scene_file(path: Path) -> bool:
    """Whether ``path`` is part of the layout (a photo, a mask, the names file or the background mask)."""
    return (
        (path.stem.lower() == "img" and path.suffix.lower() in IMAGE_SUFFIXES)
        or (MASK_NAME.match(path.stem) is not None and path.suffix.lower() in MASK_SUFFIXES)
        or path.name in (NAMES_FILE, BACKGROUND_FILE)
    )


def _mask_number(path: Path) -> int:
    digits = MASK_NAME.match(path.stem).group(1)  # type: ignore[union-attr]
    return int(digits) if digits else -1


def find_scene_files(folder: Union[str, Path]) -> SceneFiles:
    """The photo and masks of a scene folder, masks ordered by their number.

    Raises:
        SceneError: the folder is missing, has no or several ``img.*``, no masks, two masks with one number, or
            a damaged ``mask_names.txt``.
    """
    folder = Path(folder)
    if not folder.exists():
        raise SceneError(f"scene folder not found: {folder}; check the path")
    if not folder.is_dir():
        raise SceneError(f"{folder} is not a folder; give a folder with img.* and mask*.png")
    files = sorted(p for p in folder.iterdir() if p.is_file())
    photos = [p for p in files if p.stem.lower() == "img" and p.suffix.lower() in IMAGE_SUFFIXES]
    if not photos:
        raise SceneError(f"no img.* in {folder}; put the photo there as img.jpg, img.png, img.webp or img.bmp")
    if len(photos) > 1:
        raise SceneError(f"several photos in {folder} ({', '.join(p.name for p in photos)}); keep exactly one img.* file")
    masks = [p for p in files if MASK_NAME.match(p.stem) and p.suffix.lower() in MASK_SUFFIXES]
    if not masks:
        raise SceneError(f"no mask files in {folder}; add one mask0.png, mask1.png, ... per concept")
    masks.sort(key=lambda p: (_mask_number(p), p.name))
    for a, b in zip(masks, masks[1:]):
        if _mask_number(a) == _mask_number(b):
            raise SceneError(f"{a.name} and {b.name} in {folder} have the same number; keep one of them")
    return SceneFiles(photos[0], masks, _read_names(folder / NAMES_FILE, masks))


def _read_names(path: Path, masks: list[Path]) -> list[str] | None:
    if not path.is_file():
        return None
    by_file = {}
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        file, sep, name = line.partition("\t")
        if not sep or not name.strip():
            raise SceneError(f"{path} line {number} is not 'mask0.png<TAB>name'; fix or delete the file")
        by_file[file.strip()] = name.strip()
    names = [by_file.get(m.name) for m in masks]
    return names if all(names) else None  # names for only some masks name nothing reliably


def _mask_image(mask: MaskLike) -> Image.Image:
    """A mask as 8-bit L, 0/255: booleans, {0, 1} floats or coverage in [0, 1] (inside: >= 0.5), or an image."""
    if isinstance(mask, Image.Image):
        return mask if mask.mode == "L" else mask.convert("L")
    array = np.asarray(mask)
    if array.ndim != 2:
        raise ValueError(f"a mask must be (H, W), got {array.shape}")
    inside = array if array.dtype == bool else array.astype(np.float32) >= 0.5
    return Image.fromarray(inside.astype(np.uint8) * 255, mode="L")


def write_scene_folder(
    folder: Union[str, Path],
    photo: Union[Image.Image, str, Path],
    masks: Sequence[MaskLike],
    names: Sequence[str] | None = None,
    *,
    background: MaskLike | None = None,
    overwrite: bool = False,
) -> SceneFiles:
    """Writes a scene folder (module docstring): ``img.*``, ``mask0.png`` ..., and ``mask_names.txt`` if ``names``.

    Args:
        photo: a PIL image (saved as ``img.png``) or the path of the user's photo (copied byte for byte, keeping
            its suffix, so a JPEG is not re-encoded).
        masks: one (H, W) mask per concept, in order: booleans, floats in [0, 1] (inside: >= 0.5) or images.
        names: one name per mask, recorded in ``mask_names.txt``.
        background: the ``<bg>`` mask as trained, written as ``background.png`` (a run's ``scene/`` folder).
        overwrite: replace the layout's files already in ``folder``. Without it, any of them there is an error.
            Either way the folder ends up holding exactly this scene's layout files (other files are kept).

    Raises:
        SceneError: ``folder`` is a file, or already holds layout files and ``overwrite`` is off.
    """
    folder = Path(folder)
    if names is not None and len(names) != len(masks):
        raise ValueError(f"{len(masks)} masks but {len(names)} names")
    if folder.exists() and not folder.is_dir():
        raise SceneError(f"{folder} exists and is not a folder; choose another folder")
    held = sorted(p for p in folder.iterdir() if p.is_file() and is_scene_file(p)) if folder.is_dir() else []
    if held and not overwrite:
        listed = ", ".join(p.name for p in held[:4]) + (" ..." if len(held) > 4 else "")
        raise SceneError(f"{folder} already holds {listed}; choose another folder or pass --overwrite")
    folder.mkdir(parents=True, exist_ok=True)
    source = None if isinstance(photo, Image.Image) else Path(photo)
    suffix = source.suffix.lower() if source is not None and source.suffix.lower() in IMAGE_SUFFIXES else ".png"
    target = folder / f"img{suffix}"
    for old in held:  # the new set replaces the old one entirely: no stale mask may be read along with it
        if source is None or old.resolve() != source.resolve():
            old.unlink()
    if source is None:
        photo.convert("RGB").save(target)
    elif suffix == source.suffix.lower():
        if source.resolve() != target.resolve():
            shutil.copyfile(source, target)
    else:  # a photo format outside the layout's suffixes: stored as PNG, turned as displayed (masks are drawn so)
        with Image.open(source) as opened:
            ImageOps.exif_transpose(opened).convert("RGB").save(target)
    paths = []
    for i, mask in enumerate(masks):
        paths.append(folder / f"mask{i}.png")
        _mask_image(mask).save(paths[-1])
    if names is not None:
        (folder / NAMES_FILE).write_text("".join(f"{p.name}\t{n}\n" for p, n in zip(paths, names)), encoding="utf-8")
    if background is not None:
        _mask_image(background).save(folder / BACKGROUND_FILE)
    return SceneFiles(target, paths, list(names) if names is not None else None)
