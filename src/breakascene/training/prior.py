"""Prior preservation's class images (the research code's default, not the paper's): given, or generated once."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..config import ExtractConfig
from ..errors import ConfigError
from ..models.loading import Components


def class_images(config: ExtractConfig, components: Components, folder: Path, device: torch.device) -> torch.Tensor:
    """(N, 3, R, R) class images in [0, 1]: from --class-images, or generated once with the base model.

    Generated images are kept in ``folder`` (inside the run), so a resumed run does not make them again.
    """
    import numpy as np
    from PIL import Image

    from ..images import open_image, to_rgb
    from ..scene_folder import IMAGE_SUFFIXES

    if config.class_images is not None:
        source = Path(config.class_images)
        if not source.is_dir():
            raise ConfigError(f"--class-images {source} is not a folder")
        files = sorted(p for p in source.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[: config.num_class_images or None]
        if not files:
            raise ConfigError(f"--class-images {source} holds no images (.jpg, .png, .webp)")
        if len(files) < config.num_class_images:
            warnings.warn(f"--class-images has {len(files)} images, fewer than --num-class-images {config.num_class_images}")
    else:
        folder.mkdir(parents=True, exist_ok=True)
        files = sorted(folder.glob("*.png"))
        if config.num_class_images - len(files) > 0:
            _generate(config, components, folder, device, start=len(files))
            files = sorted(folder.glob("*.png"))
    images = []
    for path in files:
        image = to_rgb(open_image(path, "class image"))
        side = min(image.size)
        left, top = (image.width - side) // 2, (image.height - side) // 2
        image = image.crop((left, top, left + side, top + side)).resize((config.resolution,) * 2, Image.BICUBIC)
        images.append(torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).float() / 255)
    return torch.stack(images)


def _generate(config: ExtractConfig, components: Components, folder: Path, device: torch.device, start: int) -> None:
    """Writes class images ``start`` .. ``num_class_images - 1`` of ``config.class_prompt`` into ``folder``."""
    pipe = components.family.make_pipeline(components).to(device)
    pipe.set_progress_bar_config(disable=True)
    generator = torch.Generator(device).manual_seed(config.seed)
    for index in tqdm(range(start, config.num_class_images), desc="class images"):
        image = pipe(config.class_prompt, height=config.resolution, width=config.resolution, generator=generator).images[0]
        image.save(folder / f"{index:04d}.png")
