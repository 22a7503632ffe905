"""Generating with a finished run: the run folder is a stock diffusers pipeline that knows the handles."""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .errors import ConfigError, RunError
from .handles import HANDLE_PATTERN
from .models import default_device
from .run_folder import read_scene_json


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


def check_prompt_handles(prompt: str, tokens: list[str]) -> list[str]:
    """The handles a prompt uses; raises ConfigError for a ``<name>`` the run does not have."""
    used = HANDLE_PATTERN.findall(prompt)
    unknown = [t for t in used if t not in tokens]
    if unknown:
        raise ConfigError(f"unknown handle {unknown[0]} in {prompt!r}; this run has {', '.join(tokens)}")
    return used


def _slug(text: str, limit: int = 48) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:limit] or "prompt"


def load_pipeline(run: str | Path, device: str | torch.device | None = None, dtype: torch.dtype = torch.float32):
    """Loads a run folder as a ``StableDiffusionPipeline`` on ``device``; returns (pipeline, scene.json dict)."""
    from diffusers import StableDiffusionPipeline

    info = read_scene_json(run)
    pipe = StableDiffusionPipeline.from_pretrained(str(run), torch_dtype=dtype, safety_checker=None)
    pipe = pipe.to(torch.device(device) if device else default_device())
    pipe.set_progress_bar_config(disable=True)
    return pipe, info


def generate(
    run: str | Path,
    prompts: list[str],
    *,
    num_images: int = 1,
    seed: int = 0,
    steps: int = 50,
    guidance: float = 7.5,
    negative: str | None = None,
    height: int | None = None,
    width: int | None = None,
    out: str | Path | None = None,
    device: str | None = None,
    overwrite: bool = False,
    pipeline=None,
    progress: bool = True,
) -> list[GeneratedImage]:
    """Generates ``num_images`` pictures per prompt; image i of every prompt uses seed ``seed + i``.

    Files are named ``{prompt index:02d}-{prompt slug}-seed{seed}.png`` in ``out`` (default ``<run>/samples``),
    and every image gets a line in ``metadata.jsonl`` there (prompt, seed, steps, guidance, size).

    Raises:
        RunError: the run folder is missing or unfinished, or an output file exists without ``overwrite``.
        ConfigError: a prompt names a handle the run does not have, or a number is out of range.
    """
    info = read_scene_json(run)
    tokens = [h["token"] for h in info["handles"]]
    if not prompts:
        raise ConfigError("no prompt given")
    for prompt in prompts:
        check_prompt_handles(prompt, tokens)
    if num_images < 1 or steps < 1:
        raise ConfigError(f"--num-images and --steps must be >= 1 (got {num_images} and {steps})")
    height = height or info["resolution"]
    width = width or info["resolution"]
    if height % 8 or width % 8:
        raise ConfigError(f"--height/--width must be multiples of 8 (got {height}x{width})")
    out = Path(out) if out is not None else Path(run) / "samples"
    plan = [
        (prompt, seed + i, out / f"{p:02d}-{_slug(prompt)}-seed{seed + i}.png")
        for p, prompt in enumerate(prompts)
        for i in range(num_images)
    ]
    clashes = [str(path) for _, _, path in plan if path.exists()]
    if clashes and not overwrite:
        raise RunError(f"{clashes[0]} already exists; pass --overwrite or choose another --out/--seed")

    pipe = pipeline if pipeline is not None else load_pipeline(run, device)[0]
    out.mkdir(parents=True, exist_ok=True)
    results = []
    from tqdm.auto import tqdm

    for prompt, image_seed, path in tqdm(plan, desc="generate", unit="image", disable=not progress):
        generator = torch.Generator(pipe.device).manual_seed(image_seed)
        image = pipe(
            prompt,
            negative_prompt=negative,
            num_inference_steps=steps,
            guidance_scale=guidance,
            height=height,
            width=width,
            generator=generator,
        ).images[0]
        image.save(path)
        results.append(GeneratedImage(str(path), prompt, negative, image_seed, steps, guidance, height, width))
    with open(out / "metadata.jsonl", "a") as f:
        for item in results:
            f.write(json.dumps(asdict(item)) + "\n")
    return results
