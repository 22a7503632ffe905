"""Generating with a finished run: the run folder is a stock diffusers pipeline that knows the handles.

:func:`generate` makes ``num_images`` pictures per prompt (image i of every prompt from seed ``seed + i``),
writes them as ``{prompt index:02d}-{slug}-seed{seed}.png``, a contact sheet ``grids/grid.png`` with prompt and seed
under every picture, and one ``metadata.jsonl`` line per picture. :func:`variations` does the same for the
prompt "a photo of <asset0> and <asset1> ..." over the run's handles (the paper's image variations).
"""

from __future__ import annotations

import contextlib
import json
import re
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch

from .errors import ConfigError, RunError, first_line
from .handles import HANDLE_PATTERN
from .models import check_device
from .run_folder import check_clear_of_run, check_pipeline_folder, read_scene_json

SCHEDULERS = ("default", "ddim", "dpm")
"""``default``: the run's saved scheduler; ``ddim``: DDIM from its config (the research code);
``dpm``: DPM-Solver++ (multistep) from its config."""
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


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


def check_prompt_handles(prompt: str, tokens: list[str]) -> list[str]:
    """The handles a prompt uses; raises ConfigError for a ``<name>`` the run does not have."""
    used = HANDLE_PATTERN.findall(prompt)
    unknown = [t for t in used if t not in tokens]
    if unknown:
        raise ConfigError(f"unknown handle {unknown[0]} in {prompt!r}; this run has {', '.join(tokens)}")
    return used


def read_prompts_file(path: str | Path) -> list[str]:
    """One prompt per line; blank lines and lines starting with ``#`` are skipped. Raises ConfigError if none."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"prompts file {path} does not exist")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as error:
        raise ConfigError(f"prompts file {path} is not UTF-8 text ({error.reason})") from error
    prompts = [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
    if not prompts:
        raise ConfigError(f"prompts file {path} holds no prompt (one per line; lines starting with # are comments)")
    return prompts


def _slug(text: str, limit: int = 48) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:limit] or "prompt"


def resolve_dtype(dtype: str | torch.dtype, device: str | torch.device | None) -> torch.dtype:
    """``fp32``/``fp16``/``bf16`` -> torch dtype; fp16 only on a GPU (CPU half-precision kernels are missing).

    ``device`` goes through :func:`models.check_device`, so a device this machine lacks is a ConfigError here,
    before any model is loaded.
    """
    if isinstance(dtype, torch.dtype):
        torch_dtype = dtype
    elif dtype in DTYPES:
        torch_dtype = DTYPES[dtype]
    else:
        raise ConfigError(f"unknown --dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    kind = check_device(device).type
    if torch_dtype == torch.float16 and kind == "cpu":
        raise ConfigError("--dtype fp16 needs a GPU (cuda or mps); on CPU use fp32 (default) or bf16")
    return torch_dtype


def _dtype_name(dtype: torch.dtype) -> str:
    return {v: k for k, v in DTYPES.items()}.get(dtype, str(dtype))


def make_scheduler(name: str, default):
    """The sampling scheduler for ``--scheduler NAME`` built from the run's own (``default``) scheduler config."""
    if name not in SCHEDULERS:
        raise ConfigError(f"unknown scheduler {name!r}; choose one of {', '.join(SCHEDULERS)}")
    if name == "default":
        return default
    if name == "ddim":
        from diffusers import DDIMScheduler

        return DDIMScheduler.from_config(default.config)
    from diffusers import DPMSolverMultistepScheduler

    return DPMSolverMultistepScheduler.from_config(default.config, algorithm_type="dpmsolver++")


def load_pipeline(run: str | Path, device: str | torch.device | None = None, dtype: torch.dtype = torch.float32):
    """Loads a run folder as a ``StableDiffusionPipeline`` on ``device``; returns (pipeline, scene.json dict).

    The pipeline's own progress bar is off (callers count steps themselves, see :class:`StepProgress`).

    Raises:
        ConfigError: ``device`` is not on this machine (checked before anything is loaded).
        RunError: the run folder is missing, unfinished or damaged.
    """
    from diffusers import StableDiffusionPipeline

    target = check_device(device)
    info = read_scene_json(run)
    if info.get("lora"):
        pipe = _load_lora_run(Path(run), info).to(dtype=dtype)
    else:
        check_pipeline_folder(run, "extract the scene again")
        try:
            pipe = StableDiffusionPipeline.from_pretrained(str(run), torch_dtype=dtype, safety_checker=None,
                                                           use_safetensors=True)
        except (OSError, ValueError, RuntimeError) as error:  # a truncated or damaged weights file, a bad config
            raise RunError(f"the run folder {run} could not be loaded ({first_line(error)}); extract the scene again") from error
    pipe = pipe.to(target)
    pipe.set_progress_bar_config(disable=True)
    return pipe, info


def _load_lora_run(run: Path, info: dict):
    """A LoRA run (``extract --lora-rank``): the base model, plus the handles, plus the adapters (fused)."""
    from diffusers import StableDiffusionPipeline

    from .handles import load_handles
    from .models import load_components
    from .run_folder import HANDLES_FILE

    components = load_components(info["base_model"], prediction_type=info.get("prediction_type"))
    pipe = StableDiffusionPipeline(
        **components.pipeline_components(), safety_checker=None, feature_extractor=None, requires_safety_checker=False
    )
    tokens, vectors = load_handles(run / HANDLES_FILE)
    pipe.load_textual_inversion(vectors, token=tokens)
    pipe.load_lora_weights(str(run), weight_name=info["lora"]["weights"])
    pipe.fuse_lora()  # plain weights again: generation runs at the base model's speed
    pipe.unload_lora_weights()
    if info["lora"].get("text_encoder"):
        _merge_text_encoder_lora(pipe.text_encoder, run / info["lora"]["text_encoder"])
    return pipe


def _merge_text_encoder_lora(text_encoder, path: Path) -> None:
    """Adds the run's text-encoder LoRA (peft keys, see ``recipe.add_text_encoder_lora``) and merges it in."""
    from peft.tuners.tuners_utils import BaseTunerLayer
    from safetensors import safe_open
    from safetensors.torch import load_file

    from .recipe import add_text_encoder_lora

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    add_text_encoder_lora(text_encoder, int(meta["rank"]), float(meta["alpha"]))
    unexpected = text_encoder.load_state_dict(load_file(str(path)), strict=False).unexpected_keys
    if unexpected:
        raise RunError(f"{path.name} does not fit the base model's text encoder (e.g. {unexpected[0]})")
    for module in text_encoder.modules():
        if isinstance(module, BaseTunerLayer):
            module.merge()


def contact_sheet(images: list, captions: list[str], columns: int):
    """The images in a grid (``columns`` wide) with each caption, word-wrapped, in a white band under its image.

    All images must have one size (w, h); the sheet is ``columns * w`` wide and ``rows * (h + band)`` high, where
    the band fits the longest wrapped caption. Captions wrap at spaces to the width they are drawn at and are
    drawn word by word (:func:`visualize.draw_words`: the default font's own space is too narrow to see).
    """
    from PIL import Image, ImageDraw

    from .visualize import caption_font, caption_lines, draw_words, line_height

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


@contextlib.contextmanager
def own_bar_off(pipe):
    """The pipeline's own tqdm bar off for a while (:class:`StepProgress` counts the steps); restored after.

    diffusers keeps what ``set_progress_bar_config`` was given in ``pipe._progress_bar_config`` and has no
    getter, so that attribute is read and put back as it was.
    """
    saved = getattr(pipe, "_progress_bar_config", None)
    pipe.set_progress_bar_config(**{**(saved or {}), "disable": True})
    try:
        yield pipe
    finally:
        if saved is None:
            del pipe._progress_bar_config
        else:
            pipe._progress_bar_config = saved


class StepProgress:
    """One tqdm bar (on stderr) over the denoising steps of several pipeline calls, or silence.

    :meth:`callback` gives each call a ``callback_on_step_end`` that advances the bar by the call's ``units``
    (its steps as the user asked for them, times the images it makes together) whatever its scheduler runs:
    PNDM runs steps + 1 timesteps, a second-order scheduler about twice as many, so the advance is scaled by
    ``pipeline.num_timesteps`` and the bar ends at exactly the sum of the calls' units.

    :meth:`say` replaces the description while something slow happens outside the steps (decoding, writing
    files); :meth:`resume` and :meth:`close` put the first one back. Disabled, it prints nothing at all.
    """

    def __init__(self, total: int, desc: str, enabled: bool = True):
        from tqdm.auto import tqdm

        self.desc = desc
        # file=sys.stderr at call time (not tqdm's import-time default), so redirected stderr gets it too
        self.bar = tqdm(total=total, desc=desc, unit="step", disable=not enabled, file=sys.stderr, dynamic_ncols=True)

    def callback(self, units: int) -> Callable:
        """A ``callback_on_step_end`` for one pipeline call worth ``units`` on the bar."""
        done = [0]  # units of this call already on the bar

        def advance(pipeline, step: int, timestep, callback_kwargs: dict) -> dict:
            runs = getattr(pipeline, "num_timesteps", None) or units
            now = min(units, round((step + 1) * units / runs))
            self.bar.update(now - done[0])
            done[0] = now
            if step + 1 >= runs:
                self.say("decoding")  # the VAE runs after the last step, inside the same call
            return {}

        return advance

    def say(self, text: str) -> None:
        """Shows ``text`` as the bar's description (nothing when the bar is disabled)."""
        self.bar.set_description_str(text, refresh=True)

    def resume(self) -> None:
        """Back to the first description, for the next steps."""
        self.say(self.desc)

    def close(self) -> None:
        self.resume()
        self.bar.close()

    def __enter__(self) -> "StepProgress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _free_grid_path(out: Path, overwrite: bool) -> Path:
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


def generate(
    run: str | Path,
    prompts: list[str] | None = None,
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
    scheduler: str = "default",
    dtype: str | torch.dtype = "fp32",
    batch_size: int | None = None,
    prompts_file: str | Path | None = None,
    grid: bool = True,
    attention_maps: bool = False,
) -> list[GeneratedImage]:
    """Generates ``num_images`` pictures per prompt; image i of every prompt uses seed ``seed + i``.

    Files are named ``{prompt index:02d}-{prompt slug}-seed{seed}.png`` in ``out`` (default ``<run>/samples``);
    every image gets a line in ``metadata.jsonl`` there (prompt, negative, seed, steps, guidance, scheduler,
    size, file, ...) and, with ``grid``, all of them go on a contact sheet ``grids/grid.png`` (``grid-2.png``, ... when
    one exists and ``overwrite`` is off) with prompt and seed under each.

    Args:
        prompts: prompts; ``prompts_file`` (one per line, ``#`` comments) adds its prompts after them.
        scheduler: ``default`` (the run's saved scheduler), ``ddim`` or ``dpm`` (DPM-Solver++).
        dtype: ``fp32``, ``fp16`` (GPU only) or ``bf16``.
        batch_size: images per pipeline call, each with its own seeded generator. Default: all images of a
            prompt in one call on a GPU, one at a time on CPU (where batching gains little). Batching changes
            float rounding, so a batched image may differ from the same seed made alone by a pixel level.
        attention_maps: also save ``<name>-attention.png``, each handle's cross-attention over the image
            (images are then made one at a time).
        progress: one bar on stderr over all denoising steps of all images (``steps * images``), which says
            what is written after the steps (images, attention views, metadata, the contact sheet); False
            prints nothing.

    Raises:
        RunError: the run folder is missing or unfinished, or an output file exists without ``overwrite``.
        ConfigError: a prompt names a handle the run does not have, an empty prompts file, unknown scheduler
            or dtype, fp16 on CPU, a ``device`` this machine lacks, or a number out of range.
    """
    info = read_scene_json(run)
    tokens = [h["token"] for h in info["handles"]]
    prompts = list(prompts or [])
    if prompts_file is not None:
        prompts += read_prompts_file(prompts_file)
    if not prompts:
        raise ConfigError("no prompt given; pass prompts or --prompts-file")
    for prompt in prompts:
        check_prompt_handles(prompt, tokens)
    if num_images < 1 or steps < 1:
        raise ConfigError(f"--num-images and --steps must be >= 1 (got {num_images} and {steps})")
    if batch_size is not None and batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1 (got {batch_size})")
    if scheduler not in SCHEDULERS:
        raise ConfigError(f"unknown scheduler {scheduler!r}; choose one of {', '.join(SCHEDULERS)}")
    target = pipeline.device if pipeline is not None else device
    torch_dtype = resolve_dtype(dtype, target)
    height = height or info["resolution"]
    width = width or info["resolution"]
    if height < 8 or width < 8 or height % 8 or width % 8:
        raise ConfigError(f"--height/--width must be positive multiples of 8 (got {height}x{width})")
    out = Path(out) if out is not None else Path(run) / "samples"
    check_clear_of_run(out, run)
    if out.exists() and not out.is_dir():
        raise RunError(f"{out} exists and is not a folder; choose another --out")
    plan = [
        (p, prompt, seed + i, out / f"{p:02d}-{_slug(prompt)}-seed{seed + i}.png")
        for p, prompt in enumerate(prompts)
        for i in range(num_images)
    ]
    wanted = [path for *_, path in plan]
    if attention_maps:
        wanted += [path.with_name(path.stem + "-attention.png") for path in wanted]
    clashes = [str(path) for path in wanted if path.exists()]
    if clashes and not overwrite:
        raise RunError(f"{clashes[0]} already exists; pass --overwrite or choose another --out/--seed")
    if len(set(wanted)) != len(wanted):
        raise ConfigError("two prompts give the same file name; make them differ or generate them separately")

    pipe = pipeline if pipeline is not None else load_pipeline(run, device, torch_dtype)[0]
    if pipeline is not None and pipe.dtype != torch_dtype:
        pipe = pipe.to(dtype=torch_dtype)
    if batch_size is None:
        batch_size = 1 if pipe.device.type == "cpu" or attention_maps else num_images
    if attention_maps:
        batch_size = 1
        from .attention_view import attention_view_image, generate_with_attention
    saved_scheduler = pipe.scheduler
    pipe.scheduler = make_scheduler(scheduler, saved_scheduler)
    dtype_name = _dtype_name(torch_dtype)
    common = dict(
        negative_prompt=negative, num_inference_steps=steps, guidance_scale=guidance, height=height, width=width
    )
    # a pipeline call never mixes prompts: each prompt's images, batch_size at a time
    chunks = [
        plan[p * num_images + start : p * num_images + min(start + batch_size, num_images)]
        for p in range(len(prompts))
        for start in range(0, num_images, batch_size)
    ]
    out.mkdir(parents=True, exist_ok=True)
    results, pictures = [], []
    with StepProgress(len(plan) * steps, "generate", enabled=progress) as bar, own_bar_off(pipe):
        try:
            for chunk in chunks:
                generators = [torch.Generator(pipe.device).manual_seed(s) for _, _, s, _ in chunk]
                prompt = chunk[0][1]
                attention = None
                if attention_maps:
                    image, maps = generate_with_attention(
                        pipe, prompt, tokens, generator=generators[0], on_step_end=bar.callback(steps), **common
                    )
                    images = [image]
                    bar.say("making the attention view")
                    attention = attention_view_image(image, maps)
                else:
                    images = pipe(
                        prompt, num_images_per_prompt=len(chunk),
                        generator=generators if len(chunk) > 1 else generators[0],
                        callback_on_step_end=bar.callback(steps * len(chunk)), **common,  # a step of each image
                    ).images
                bar.say(f"writing {chunk[0][3].name}" + (f" (+{len(chunk) - 1})" if len(chunk) > 1 else ""))
                for (_, _, image_seed, path), image in zip(chunk, images):
                    image.save(path)
                    item = GeneratedImage(
                        str(path), prompt, negative, image_seed, steps, guidance, height, width, scheduler, dtype_name
                    )
                    if attention is not None:
                        item.attention_path = str(path.with_name(path.stem + "-attention.png"))
                        attention.save(item.attention_path)
                    results.append(item)
                    pictures.append(image)
                bar.resume()
        finally:
            pipe.scheduler = saved_scheduler
            bar.say("writing metadata.jsonl")
            with open(out / "metadata.jsonl", "a") as f:
                for item in results:
                    f.write(json.dumps(item.record()) + "\n")
        if grid and pictures:
            grid_path = _free_grid_path(out, overwrite)
            bar.say(f"writing the contact sheet {grid_path.parent.name}/{grid_path.name}")
            columns = num_images if num_images > 1 else min(len(pictures), 4)
            captions = [f"{item.prompt}\nseed {item.seed}" for item in results]
            contact_sheet(pictures, captions, columns).save(grid_path)
    return results


def variations_prompt(tokens: list[str], background_tokens: list[str], with_background: bool = False) -> str:
    """"a photo of <asset0> and <asset1>" over the run's handles in order; ``<bg>`` only ``with_background``."""
    from .union_sampling import build_prompt

    chosen = [t for t in tokens if with_background or t not in background_tokens]
    if not chosen:
        raise ConfigError("this run has no concept handle to make variations of; try --with-background")
    return build_prompt(chosen)


def variations(
    run: str | Path, *, num_images: int = 4, with_background: bool = False, out: str | Path | None = None, **kwargs
) -> list[GeneratedImage]:
    """Image variations (paper Sec. 5): ``num_images`` pictures of "a photo of <asset0> and <asset1> ..." over all
    concept handles of the run (and ``<bg>`` too ``with_background``); other keywords as :func:`generate`.

    Output goes to ``<run>/variations`` unless ``out`` is given.
    """
    info = read_scene_json(run)
    tokens = [h["token"] for h in info["handles"]]
    background = [h["token"] for h in info["handles"] if h.get("background")]
    prompt = variations_prompt(tokens, background, with_background)
    out = Path(out) if out is not None else Path(run) / "variations"
    return generate(run, [prompt], num_images=num_images, out=out, **kwargs)
