"""What generation writes besides the images: their file names, ``metadata.jsonl`` and the contact sheet."""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass
class GeneratedImage:
    """One generated picture and everything needed to make it again."""

    path: str
    prompt: str
    negative_prompt: str | None
    seed: int
    steps: int
    guidance: float
    height: int
    width: int
    scheduler: str = "default"
    dtype: str = "fp32"
    attention_path: str | None = None

    def record(self) -> dict:
        """The ``metadata.jsonl`` line: prompt, negative, seed, steps, guidance, scheduler, size, file, ..."""
        data = asdict(self)
        data.update(negative=self.negative_prompt, size=f"{self.width}x{self.height}", file=Path(self.path).name)
        if self.attention_path is None:
            del data["attention_path"]
        return data


def image_name(prompt_index: int, prompt: str, seed: int) -> str:
    """``{prompt index:02d}-{prompt slug}-seed{seed}.png``."""
    slug = re.sub(r"[^a-z0-9]+", "-", prompt.lower()).strip("-")[:48] or "prompt"
    return f"{prompt_index:02d}-{slug}-seed{seed}.png"


def attention_path(image_path: Path) -> Path:
    """Where the attention view of an image goes: ``NAME-attention.png`` beside ``NAME.png``."""
    return image_path.with_name(image_path.stem + "-attention.png")


def append_metadata(out: Path, images: list[GeneratedImage]) -> None:
    """One ``out/metadata.jsonl`` line per image, after those of earlier calls."""
    with open(out / "metadata.jsonl", "a") as f:
        for item in images:
            f.write(json.dumps(item.record()) + "\n")


def free_grid_path(out: Path, overwrite: bool) -> Path:
    """``out/grids/grid.png``; if it exists and may not be replaced, the first free ``grid-2.png``, ...

    (In a subfolder so that ``out/*.png`` stays exactly the generated images.)
    """
    out = out / "grids"
    out.mkdir(exist_ok=True)
    path = out / "grid.png"
    k = 2
    while path.exists() and not overwrite:
        path = out / f"grid-{k}.png"
        k += 1
    return path


def contact_sheet(images: list, captions: list[str], columns: int):
    """The images in a grid (``columns`` wide) with each caption, word-wrapped, in a white band under its image.

    All images must have one size (w, h); the sheet is ``columns * w`` wide and ``rows * (h + band)`` high, where
    the band fits the longest wrapped caption. Captions wrap at spaces to the width they are drawn at and are
    drawn word by word (:func:`figures.draw_words`: the default font's own space is too narrow to see).
    """
    from PIL import Image, ImageDraw

    from ..figures import caption_font, caption_lines, draw_words, line_height

    if not images:
        raise ValueError("no images for the contact sheet")
    w, h = images[0].size
    font = caption_font()
    step = line_height(font)
    wrapped = [caption_lines(caption, max(1, w - 8), font) for caption in captions]
    band = max(len(lines) for lines in wrapped) * step + 8
    columns = max(1, min(columns, len(images)))
    rows = -(-len(images) // columns)
    sheet = Image.new("RGB", (columns * w, rows * (h + band)), "white")
    draw = ImageDraw.Draw(sheet)
    for k, (image, lines) in enumerate(zip(images, wrapped)):
        x, y = (k % columns) * w, (k // columns) * (h + band)
        sheet.paste(image.convert("RGB").resize((w, h)), (x, y))
        for j, line in enumerate(lines):
            draw_words(draw, (x + 4, y + h + 4 + j * step), line, font)
    return sheet
