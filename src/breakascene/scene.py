"""Scene input: one photo plus one loose mask per concept, brought to the model resolution.

Geometry (identical for the photo and every mask):

1. ``PIL.ImageOps.exif_transpose`` is applied, so a phone photo and a mask drawn on the photo
   *as displayed* line up.  After this step every mask must have exactly the photo's size.
2. The largest centred square is cut out of the photo (``Scene.crop_box``, original pixels) and
   scaled so its side equals ``resolution`` -- i.e. the short side is scaled to ``resolution``
   and the long side is centre-cropped.  The photo is resampled with LANCZOS; each mask's soft
   coverage in [0, 1] is resampled with BILINEAR over the very same box and then thresholded at
   0.5, so photo and masks get the same geometric transform and the same rounding.

Masks may be PNG or JPEG in any Pillow mode.  A pixel is *inside* a concept when its coverage is
>= 0.5 (see :func:`read_mask`); soft or JPEG-noisy edges are therefore fine.  Masks may overlap.

Problems the user must fix raise :class:`~breakascene.errors.SceneError` (one line, says what is
wrong and how to fix it).  Suspicious but usable input (a concept partly cut away by the crop, a
concept covering < 1 % of the square) emits :class:`~breakascene.errors.SceneWarning`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence, Union

import numpy as np
import torch
from PIL import Image

from .errors import ConfigError, SceneError, SceneWarning
from .images import ImageInput, describe_source, mask_coverage, open_image, to_rgb
from .scene_folder import find_scene_files, write_scene_folder

__all__ = ["Scene", "load_scene", "load_scene_folder"]


# Fraction of a mask's pixels the centre crop may remove before we warn.
CROP_WARN_FRACTION = 0.01
# A concept smaller than this fraction of the square is hard to learn; warn but go on.
TINY_MASK_FRACTION = 0.01
# A concept larger than this fraction of the square is more likely an inverted mask (white background).
LARGE_MASK_FRACTION = 0.8
# A mask whose pixels are more than this fraction neither black nor white (10-90 %) is more likely a photo.
GREY_MASK_FRACTION = 0.25
PHOTO_SHADES = 32  # ... in more than this many shades of grey


@dataclass
class Scene:
    """A photo and its concept masks, ready for training.

    Attributes:
        image: ``(3, R, R)`` float32 RGB in ``[0, 1]``, already resized and centre-cropped.
        masks: ``(K, R, R)`` float32 in ``{0., 1.}``, one per concept, transformed exactly like
            ``image``; masks may overlap.
        mask_names: ``K`` labels used in messages (the mask file names, e.g. ``"mask0.png"``).
        original_size: ``(width, height)`` of the photo after EXIF transpose, before resizing.
        crop_box: ``(left, top, right, bottom)`` in original pixels of the square that became
            ``image``.
    """

    image: torch.Tensor
    masks: torch.Tensor
    mask_names: list[str]
    original_size: tuple[int, int]
    crop_box: tuple[int, int, int, int]

    def __post_init__(self) -> None:
        # Catch programming errors early (e.g. a hand-built Scene), not user input problems.
        if self.image.ndim != 3 or self.image.shape[0] != 3 or self.image.shape[1] != self.image.shape[2]:
            raise ValueError(f"Scene.image must be (3, R, R), got {tuple(self.image.shape)}")
        r = self.image.shape[1]
        if self.masks.ndim != 3 or tuple(self.masks.shape[1:]) != (r, r):
            raise ValueError(f"Scene.masks must be (K, {r}, {r}), got {tuple(self.masks.shape)}")
        if len(self.mask_names) != self.masks.shape[0]:
            raise ValueError(
                f"Scene has {self.masks.shape[0]} masks but {len(self.mask_names)} mask names"
            )

    @property
    def resolution(self) -> int:
        """Side ``R`` of the square image and masks, in pixels."""
        return int(self.image.shape[-1])

    @property
    def num_concepts(self) -> int:
        """Number of concept masks ``K``."""
        return int(self.masks.shape[0])

    def fingerprint(self) -> dict:
        """Content hashes (sha256) of the image and of each mask *as used* (after resize and crop): what a
        checkpoint records, so that ``--resume`` can refuse to continue on another photo or other masks."""
        return {
            "image": tensor_digest(self.image),
            "masks": [tensor_digest(m) for m in self.masks],
            "mask_names": list(self.mask_names),
        }

    def background_mask(self) -> torch.Tensor:
        """``(R, R)`` float32 in ``{0., 1.}``: 1 where no concept mask is set (``1 - union``)."""
        if self.num_concepts == 0:
            return torch.ones(self.resolution, self.resolution, dtype=torch.float32)
        union = self.masks.amax(dim=0)
        return (1.0 - union).to(torch.float32)

    def save(
        self,
        folder: Union[str, Path],
        names: Sequence[str] | None = None,
        *,
        background: torch.Tensor | None = None,
        overwrite: bool = False,
    ) -> None:
        """Writes the scene exactly as used, as a scene folder (``img.png``, ``mask0.png`` ...; see
        ``scene_folder``), which ``load_scene_folder(folder, resolution)`` reads back unchanged.

        Args:
            names: the concepts' names, recorded in ``mask_names.txt``.
            background: (R, R) the ``<bg>`` mask as trained, written as ``background.png``.
            overwrite: replace a scene already in ``folder``.
        """
        pixels = (self.image.detach().cpu().clamp(0, 1) * 255.0).round().to(torch.uint8)
        photo = Image.fromarray(pixels.permute(1, 2, 0).numpy(), mode="RGB")
        masks = [m.numpy() for m in self.masks.detach().cpu()]
        bg = background.detach().cpu().numpy() if background is not None else None
        write_scene_folder(folder, photo, masks, names, background=bg, overwrite=overwrite)


def tensor_digest(tensor: torch.Tensor) -> str:
    """sha256 of a tensor's shape, dtype and values."""
    import hashlib

    t = tensor.detach().cpu().contiguous()
    digest = hashlib.sha256(f"{tuple(t.shape)} {t.dtype}".encode())
    digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def _looks_like_a_photo(cov: np.ndarray) -> bool:
    """Many pixels neither black nor white, in many shades: a photo, not a mask (whose grey is at edges, or in a
    handful of levels)."""
    grey = (cov > 0.1) & (cov < 0.9)
    return float(grey.mean()) > GREY_MASK_FRACTION and len(np.unique(np.round(cov[grey] * 255))) > PHOTO_SHADES



def _same_file(a: Union[str, Path], b: Union[str, Path]) -> bool:
    """Whether two paths name one file, or two files with the same bytes."""
    a, b = Path(a), Path(b)
    try:
        return a.resolve() == b.resolve() or (a.stat().st_size == b.stat().st_size and a.read_bytes() == b.read_bytes())
    except OSError:
        return False



# --------------------------------------------------------------------------------------------
# building a scene


def _centre_square(width: int, height: int) -> tuple[int, int, int, int]:
    side = min(width, height)
    left = (width - side) // 2
    top = (height - side) // 2
    return (left, top, left + side, top + side)


def load_scene(
    image: ImageInput,
    masks: Sequence[ImageInput],
    resolution: int,
) -> Scene:
    """Load a photo and its concept masks and bring them to ``resolution x resolution``.

    Args:
        image: path or PIL image of the photo, any size/mode/orientation.  Transparent pixels are
            composited on white; 16-bit greyscale is scaled to 8 bits.
        masks: one path or PIL image per concept, drawn on the photo as displayed, same size.
        resolution: side ``R`` of the output square (the model resolution).

    Returns:
        A :class:`Scene` with ``image`` ``(3, R, R)`` in [0, 1] and ``masks`` ``(K, R, R)`` in
        {0, 1}; see the module docstring for the exact geometry.

    Raises:
        SceneError: missing/unreadable files, no masks, a mask of another size than the photo, a
            mask that is empty (before or after the crop) or covers the whole square.

    Warns:
        SceneWarning: the centre crop removes more than 1 % of a mask's pixels, or a mask covers
            less than 1 % of the square.
    """
    if isinstance(resolution, bool) or not isinstance(resolution, (int, np.integer)) or resolution < 8:
        raise ConfigError(f"resolution must be an integer >= 8, got {resolution!r}")
    if isinstance(masks, (str, Path, Image.Image)):
        masks = [masks]
    masks = list(masks)
    if not masks:
        raise SceneError("no masks given; give one mask image per concept (white = concept)")

    photo = open_image(image, "image")
    width, height = photo.size
    box = _centre_square(width, height)
    r = int(resolution)
    rgb = to_rgb(photo).resize((r, r), Image.Resampling.LANCZOS, box=box)
    image_t = torch.from_numpy(np.asarray(rgb, dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()

    names: list[str] = []
    tensors: list[torch.Tensor] = []
    # Collected and emitted only once every mask is valid, so a fatal error is never preceded
    # by warnings about masks the user has to redo anyway.
    pending: list[str] = []
    for i, source in enumerate(masks):
        name = describe_source(source, f"mask{i}")
        names.append(name)
        mask_img = open_image(source, "mask")
        if mask_img.size != (width, height):
            raise SceneError(_size_mismatch(name, mask_img.size, image, photo.size))
        cov = mask_coverage(mask_img)
        pending += _mask_mistakes(name, cov, source, image)
        binary, notes = _square_mask(name, cov, box, r)
        pending += notes
        tensors.append(torch.from_numpy(binary.astype(np.float32)))

    for message in pending:
        warnings.warn(SceneWarning(message), stacklevel=2)

    return Scene(
        image=image_t,
        masks=torch.stack(tensors),
        mask_names=names,
        original_size=(width, height),
        crop_box=box,
    )


def _size_mismatch(name: str, mask_size: tuple[int, int], image: ImageInput, photo_size: tuple[int, int]) -> str:
    """The error for a mask of another size than the photo, with a hint when the photo's EXIF rotation is why."""
    (mw, mh), (width, height) = mask_size, photo_size
    raw_size = image.size if isinstance(image, Image.Image) else None
    if raw_size is None and isinstance(image, (str, Path)):
        try:
            with Image.open(image) as unrotated:
                raw_size = unrotated.size
        except OSError:
            raw_size = None
    hint = ""
    if raw_size is not None and raw_size != photo_size and mask_size == raw_size:
        hint = " (the photo is rotated by its EXIF orientation tag; draw the mask on the photo as displayed)"
    return (f"{name} is {mw}x{mh} but the image {describe_source(image, 'the image')} is {width}x{height}; "
            f"masks must be drawn on the same photo at the same size{hint}")


def _mask_mistakes(name: str, cov: np.ndarray, source: ImageInput, image: ImageInput) -> list[str]:
    """SceneError for a mask with nothing inside; warnings for a mask that is the photo or looks like one.

    Args:
        cov: (H, W) float32 soft coverage in [0, 1].
    """
    if not (cov >= 0.5).any():
        peak = float(cov.max()) if cov.size else 0.0
        if peak > 0.05:  # drawn, but in a dark colour: masks are read by brightness
            raise SceneError(
                f"{name} has no white pixels (its brightest is {peak:.0%} grey; a mask is read by brightness, "
                "white = concept, black = not, so a red or blue mask counts as dark); paint the concept white"
            )
        raise SceneError(
            f"{name} is empty (no pixel with coverage >= 0.5); paint the concept white on black"
        )
    if isinstance(source, (str, Path)) and isinstance(image, (str, Path)) and _same_file(source, image):
        return [f"{name} is the photo itself, not a mask; give a black-and-white mask of the concept"]
    if _looks_like_a_photo(cov):
        return [
            f"{name} does not look like a mask ({float(((cov > 0.1) & (cov < 0.9)).mean()):.0%} of its pixels "
            "are neither black nor white: a photo?); a mask is white on the concept and black elsewhere"
        ]
    return []


def _square_mask(name: str, cov: np.ndarray, box: tuple[int, int, int, int], r: int) -> tuple[np.ndarray, list[str]]:
    """The mask cut to the centre square and resized like the photo: ((r, r) bool, warnings).

    Raises SceneError when nothing of the concept survives the crop or the resize, or it covers everything.
    """
    left, top, right, bottom = box
    inside = cov >= 0.5
    kept = int(inside[top:bottom, left:right].sum())
    if kept == 0:
        raise SceneError(
            f"{name} is empty after the centre crop to a square (the concept lies outside "
            f"the crop box {box}); crop the photo to a square containing the concept yourself"
        )
    cut = 1.0 - kept / int(inside.sum())

    resized = Image.fromarray(cov, mode="F").resize((r, r), Image.Resampling.BILINEAR, box=box)
    binary = np.asarray(resized, dtype=np.float32) >= 0.5
    area = int(binary.sum())
    if area == 0:
        raise SceneError(
            f"{name} is empty after resizing to {r}x{r} (the concept is too thin or small); "
            "draw a looser mask or use a higher resolution"
        )
    if area == r * r:
        raise SceneError(
            f"{name} covers the whole image; a concept mask must leave some background"
        )
    notes = []
    if cut > CROP_WARN_FRACTION:
        notes.append(
            f"the centre crop to a square removes {cut:.0%} of {name}; "
            "crop the photo to a square yourself so the whole concept stays in"
        )
    fraction = area / (r * r)
    if fraction > LARGE_MASK_FRACTION:
        notes.append(
            f"{name} covers {fraction:.0%} of the {r}x{r} image: is it inverted? A mask is white on the concept "
            "and black elsewhere"
        )
    if fraction < TINY_MASK_FRACTION:
        notes.append(
            f"{name} covers only {fraction:.2%} of the {r}x{r} image; such a small concept "
            "is hard to learn, crop the photo closer around it or draw a looser mask"
        )
    return binary, notes


def load_scene_folder(folder: Union[str, Path], resolution: int) -> Scene:
    """Load a scene from a folder holding one ``img.*`` and the masks ``mask*.png/jpg`` (``scene_folder``).

    ``img`` may be ``.jpg/.jpeg/.png/.webp/.bmp``.  Masks are ordered by the number in their
    name (``mask2`` before ``mask10``; a bare ``mask.png`` comes first).  See :func:`load_scene`
    for the returned shapes, errors and warnings.
    """
    files = find_scene_files(folder)
    return load_scene(files.photo, files.masks, resolution)
