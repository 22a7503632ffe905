"""Reading photos and masks: any Pillow mode, EXIF orientation applied, every failure one SceneError.

A mask is read as soft coverage in [0, 1] (:func:`mask_coverage`); a pixel belongs to the concept when its
coverage is >= 0.5. :mod:`breakascene.scene` builds a scene from these; editing and prior preservation read
their images through them too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import SceneError, first_line

ImageInput = Union[str, Path, Image.Image]

ALPHA_MODES = ("RGBA", "LA")
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")




def describe_source(source: ImageInput, fallback: str) -> str:
    if isinstance(source, (str, Path)):
        return Path(source).name
    name = getattr(source, "filename", "") or ""
    return Path(name).name if name else fallback


def open_image(source: ImageInput, what: str) -> Image.Image:
    """Open (and fully decode) an image, EXIF-transposed; every failure becomes one SceneError."""
    if isinstance(source, Image.Image):
        img = source
    elif isinstance(source, (str, Path)):
        path = Path(source)
        if not path.exists():
            raise SceneError(f"{what} file not found: {path}; check the path")
        if not path.is_file():
            raise SceneError(f"{what} {path} is not a file; give the path of an image file")
        try:
            img = Image.open(path)
            img.load()
        except Image.DecompressionBombError:
            raise SceneError(
                f"{what} {path} has more pixels than Pillow decodes safely (a decompression bomb, or a huge "
                "image); scale it down below 89 megapixels"
            ) from None
        except UnidentifiedImageError:
            raise SceneError(
                f"{what} {path} is not an image Pillow can read; save it as PNG or JPEG"
            ) from None
        except OSError as exc:
            raise SceneError(
                f"{what} {path} could not be read ({first_line(exc)}); re-save it as PNG or JPEG"
            ) from None
    else:
        raise SceneError(
            f"{what} must be a file path or a PIL image, got {type(source).__name__}"
        )
    try:
        transposed = ImageOps.exif_transpose(img)
    except Exception:  # noqa: BLE001 - a broken EXIF block must not make the photo unusable
        transposed = None
    return transposed if transposed is not None else img


def _int_scale(arr: np.ndarray) -> float:
    # Mode "I"/"F" has no fixed range in practice: 16-bit PNGs decode to "I" on some Pillow
    # versions, arrays saved from numpy are often 0/1 or 0/255.  Pick the smallest usual range.
    peak = float(arr.max()) if arr.size else 0.0
    for full in (1.0, 255.0, 65535.0):
        if peak <= full:
            return full
    return peak


def _luminance(img: Image.Image) -> np.ndarray:
    rgb = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    return rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)


def mask_coverage(img: Image.Image) -> np.ndarray:
    """Soft coverage ``(H, W)`` float32 in [0, 1] of an already opened/transposed mask image."""
    mode = img.mode
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        mode = img.mode
    elif mode in ("PA", "RGBa", "La"):
        img = img.convert("RGBA")
        mode = img.mode
    if mode == "1":
        cov = np.asarray(img, dtype=np.float32)
    elif mode == "L":
        cov = np.asarray(img, dtype=np.float32) / 255.0
    elif mode in SIXTEEN_BIT_MODES:
        cov = np.asarray(img).astype(np.float32) / 65535.0
    elif mode in ("I", "F"):
        arr = np.asarray(img).astype(np.float64)
        cov = (arr / _int_scale(arr)).astype(np.float32)
    elif mode in ALPHA_MODES:
        alpha = np.asarray(img.getchannel("A"), dtype=np.float32) / 255.0
        # A non-constant alpha is how paint programs store a cut-out: it is the mask.  A constant
        # alpha carries no shape, so the mask must be painted in the colour channels.
        if alpha.size and float(alpha.max()) != float(alpha.min()):
            cov = alpha
        else:
            cov = _luminance(img.convert("RGB") if mode != "LA" else img.convert("L"))
    else:  # RGB, CMYK, YCbCr, ...
        cov = _luminance(img)
    return np.clip(cov, 0.0, 1.0).astype(np.float32, copy=False)


def read_mask(path_or_image: ImageInput) -> np.ndarray:
    """Read a mask as soft coverage.

    Returns ``(H, W)`` float32 in ``[0, 1]`` (after EXIF transpose).  Any Pillow mode works:
    ``1``/``L``/``P``/``RGB`` use luminance; 16-bit ``I;16*`` is divided by 65535; ``I``/``F``
    by the smallest of 1, 255, 65535 that holds the maximum; modes with alpha (``RGBA``,
    ``LA``, ``PA``) use the alpha channel when it is not constant, otherwise luminance.
    A pixel belongs to the concept when its coverage is >= 0.5.

    Raises:
        SceneError: the file is missing or not a readable image.
    """
    return mask_coverage(open_image(path_or_image, "mask"))


def to_rgb(img: Image.Image) -> Image.Image:
    """Photo in any mode -> RGB; transparency is composited on white."""
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ALPHA_MODES or img.mode in ("PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if img.mode in SIXTEEN_BIT_MODES or img.mode in ("I", "F"):
        # Pillow's own conversion clips high-bit-depth values at 255 instead of scaling them.
        arr = np.asarray(img).astype(np.float64)
        full = 65535.0 if img.mode in SIXTEEN_BIT_MODES else _int_scale(arr)
        grey = np.clip(arr / full * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(grey, mode="L").convert("RGB")
    return img.convert("RGB")
