"""Generating with a finished run: the run folder is a stock diffusers pipeline that knows the handles.

:func:`generate` makes ``num_images`` pictures per prompt (image i of every prompt from seed ``seed + i``),
writes them as ``{prompt index:02d}-{slug}-seed{seed}.png``, a contact sheet ``grids/grid.png`` with prompt and seed
under every picture, and one ``metadata.jsonl`` line per picture. :func:`variations` does the same for the
prompt "a photo of <asset0> and <asset1> ..." over the run's handles (the paper's image variations).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import ConfigError, RunError
from ..run_folder import check_clear_of_run
from ..run_info import RunInfo
from .options import VARIATIONS_NUM_IMAGES, GenerationOptions, with_family_defaults, with_settings
from .outputs import GeneratedImage, append_metadata, attention_path, contact_sheet, free_grid_path, image_name
from .pipeline import SCHEDULERS, dtype_name, load_pipeline, resolve_dtype, sampling_scheduler
from .progress import StepProgress, own_bar_off
from .prompts import check_prompt_handles, read_prompts_file, variations_prompt


@dataclass(frozen=True)
class PlannedImage:
    """One picture to make: which prompt, its seed, and the file it is written to."""

    prompt_index: int
    prompt: str
    seed: int
    path: Path


def generate(
    run: str | Path,
    prompts: list[str] | None = None,
    *,
    options: GenerationOptions | None = None,
    out: str | Path | None = None,
    device: str | None = None,
    overwrite: bool = False,
    pipeline=None,
    progress: bool = True,
    prompts_file: str | Path | None = None,
    info: RunInfo | None = None,
    **settings,
) -> list[GeneratedImage]:
    """Generates ``num_images`` pictures per prompt; image i of every prompt uses seed ``seed + i``.

    Files are named ``{prompt index:02d}-{prompt slug}-seed{seed}.png`` in ``out`` (default ``<run>/samples``);
    every image gets a line in ``metadata.jsonl`` there (prompt, negative, seed, steps, guidance, scheduler,
    size, file, ...) and, with ``grid``, all of them go on a contact sheet ``grids/grid.png`` (``grid-2.png``, ... when
    one exists and ``overwrite`` is off) with prompt and seed under each.

    Args:
        prompts: prompts; ``prompts_file`` (one per line, ``#`` comments) adds its prompts after them.
        options: the sampling settings (:class:`GenerationOptions`); ``settings``, its field names as keyword
            arguments (``num_images=4, steps=25``), replace single ones: ``scheduler`` is ``default`` (the run's
            saved scheduler), ``ddim`` or ``dpm`` (DPM-Solver++); ``dtype`` ``fp32``, ``fp16`` (GPU only) or
            ``bf16``; ``batch_size`` the images per pipeline call, each with its own seeded generator (default:
            all images of a prompt in one call on a GPU, one at a time on CPU, where batching gains little;
            batching changes float rounding, so a batched image may differ from the same seed made alone by a
            pixel level); ``attention_maps`` also saves ``<name>-attention.png``, each handle's cross-attention
            over the image (images are then made one at a time).
        progress: one bar on stderr over all denoising steps of all images (``steps * images``), which says
            what is written after the steps (images, attention views, metadata, the contact sheet); False
            prints nothing.
        info: the run's scene.json when the caller has read it already (it is read otherwise).

    Raises:
        RunError: the run folder is missing or unfinished, or an output file exists without ``overwrite``.
        ConfigError: a prompt names a handle the run does not have, an empty prompts file, unknown scheduler
            or dtype, fp16 on CPU, a ``device`` this machine lacks, or a number out of range.
    """
    options = with_settings(options, GenerationOptions, settings)
    info = info if info is not None else RunInfo.read(run)
    _check_family_options(options, info)
    prompts = _checked_prompts(prompts, prompts_file, info.tokens)
    torch_dtype = _checked_dtype(options, pipeline.device if pipeline is not None else device)
    height, width = _image_size(options, info)
    out = Path(out) if out is not None else Path(run) / "samples"
    plan = plan_images(prompts, options, out, run, overwrite)

    pipe = pipeline if pipeline is not None else load_pipeline(run, device, torch_dtype, info=info)[0]
    if pipeline is not None and pipe.dtype != torch_dtype:
        pipe = pipe.to(dtype=torch_dtype)
    options = with_family_defaults(options, pipe)
    out.mkdir(parents=True, exist_ok=True)
    results, pictures = [], []
    sampling = dict(negative_prompt=options.negative, num_inference_steps=options.steps,
                    guidance_scale=options.guidance, height=height, width=width)
    with StepProgress(len(plan) * options.steps, "generate", enabled=progress) as bar, own_bar_off(pipe):
        try:
            with sampling_scheduler(pipe, options.scheduler):
                for chunk in _calls(plan, len(prompts), options, _batch_size(options, pipe)):
                    images, attention = _sample(pipe, chunk, options, sampling, info.tokens, bar)
                    bar.say(f"writing {chunk[0].path.name}" + (f" (+{len(chunk) - 1})" if len(chunk) > 1 else ""))
                    results += _write_images(chunk, images, attention, options, height, width, dtype_name(torch_dtype))
                    pictures += images
                    bar.resume()
        finally:
            bar.say("writing metadata.jsonl")
            append_metadata(out, results)
        if options.grid and pictures:
            _write_contact_sheet(out, results, pictures, options.num_images, overwrite, bar)
    return results


def _checked_prompts(prompts: list[str] | None, prompts_file: str | Path | None, tokens: list[str]) -> list[str]:
    prompts = list(prompts or [])
    if prompts_file is not None:
        prompts += read_prompts_file(prompts_file)
    if not prompts:
        raise ConfigError("no prompt given; pass prompts or --prompts-file")
    for prompt in prompts:
        check_prompt_handles(prompt, tokens)
    return prompts


def run_sampling_defaults(run: str | Path, info: RunInfo | None = None) -> tuple[int, float]:
    """(steps, guidance) that :func:`generate` uses for ``run`` when not told, found without loading its weights
    (for forms that show them): the family's, read from the denoiser config of the run (a full one) or of its
    base model (a LoRA run) where they depend on it (FLUX.1's dev or schnell)."""
    from ..models.families.registry import family_of_run

    info = info if info is not None else RunInfo.read(run)
    return family_of_run(info).run_sampling_defaults(str(run) if info.lora is None else info.base_model)


def _check_family_options(options: GenerationOptions, info: RunInfo) -> None:
    """Options that mean nothing to the run's model family are errors, not silently ignored."""
    from ..models.families.registry import family_of_run

    family_of_run(info).check_sampling_options(options.negative, options.scheduler)


def _checked_dtype(options: GenerationOptions, device) -> torch.dtype:
    """The numbers and names of ``options`` checked; their dtype on ``device`` (checked too, before loading)."""
    if options.num_images < 1 or (options.steps is not None and options.steps < 1):
        raise ConfigError(f"--num-images and --steps must be >= 1 (got {options.num_images} and {options.steps})")
    if options.batch_size is not None and options.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1 (got {options.batch_size})")
    if options.scheduler not in SCHEDULERS:
        raise ConfigError(f"unknown scheduler {options.scheduler!r}; choose one of {', '.join(SCHEDULERS)}")
    return resolve_dtype(options.dtype, device)


def _image_size(options: GenerationOptions, info: RunInfo) -> tuple[int, int]:
    height = options.height or info.resolution
    width = options.width or info.resolution
    if height < 8 or width < 8 or height % 8 or width % 8:
        raise ConfigError(f"--height/--width must be positive multiples of 8 (got {height}x{width})")
    return height, width


def plan_images(prompts: list[str], options: GenerationOptions, out: Path, run: str | Path,
                overwrite: bool) -> list[PlannedImage]:
    """Every picture of the call, prompt by prompt, with its file in ``out``; all output checks done here.

    Raises:
        RunError: ``out`` is inside the run or not a folder, or a file exists without ``overwrite``.
        ConfigError: two prompts give one file name.
    """
    check_clear_of_run(out, run)
    if out.exists() and not out.is_dir():
        raise RunError(f"{out} exists and is not a folder; choose another --out")
    plan = [
        PlannedImage(p, prompt, options.seed + i, out / image_name(p, prompt, options.seed + i))
        for p, prompt in enumerate(prompts)
        for i in range(options.num_images)
    ]
    wanted = [item.path for item in plan]
    if options.attention_maps:
        wanted += [attention_path(path) for path in wanted]
    clashes = [str(path) for path in wanted if path.exists()]
    if clashes and not overwrite:
        raise RunError(f"{clashes[0]} already exists; pass --overwrite or choose another --out/--seed")
    if len(set(wanted)) != len(wanted):
        raise ConfigError("two prompts give the same file name; make them differ or generate them separately")
    return plan


def _batch_size(options: GenerationOptions, pipe) -> int:
    if options.attention_maps:
        return 1
    if options.batch_size is None:
        return 1 if pipe.device.type == "cpu" else options.num_images
    return options.batch_size


def _calls(plan: list[PlannedImage], num_prompts: int, options: GenerationOptions,
           batch_size: int) -> list[list[PlannedImage]]:
    """The plan cut into pipeline calls: a call never mixes prompts, each prompt's images batch_size at a time."""
    n = options.num_images
    return [
        plan[p * n + start : p * n + min(start + batch_size, n)]
        for p in range(num_prompts)
        for start in range(0, n, batch_size)
    ]


def _sample(pipe, chunk: list[PlannedImage], options: GenerationOptions, sampling: dict, tokens: list[str],
            bar: StepProgress):
    """One pipeline call: the chunk's images, each from its own seed; and the attention view (or None)."""
    generators = [torch.Generator(pipe.device).manual_seed(item.seed) for item in chunk]
    prompt = chunk[0].prompt
    if options.attention_maps:
        from .attention_view import attention_view_image, generate_with_attention

        image, maps = generate_with_attention(
            pipe, prompt, tokens, generator=generators[0], on_step_end=bar.callback(options.steps), **sampling
        )
        bar.say("making the attention view")
        return [image], attention_view_image(image, maps)
    images = pipe(
        prompt, num_images_per_prompt=len(chunk), generator=generators if len(chunk) > 1 else generators[0],
        callback_on_step_end=bar.callback(options.steps * len(chunk)), **sampling,  # a step of each image
    ).images
    return images, None


def _write_images(chunk: list[PlannedImage], images: list, attention, options: GenerationOptions, height: int,
                  width: int, dtype: str) -> list[GeneratedImage]:
    written = []
    for planned, image in zip(chunk, images):
        image.save(planned.path)
        item = GeneratedImage(str(planned.path), planned.prompt, options.negative, planned.seed, options.steps,
                              options.guidance, height, width, options.scheduler, dtype)
        if attention is not None:
            item.attention_path = str(attention_path(planned.path))
            attention.save(item.attention_path)
        written.append(item)
    return written


def _write_contact_sheet(out: Path, results: list[GeneratedImage], pictures: list, num_images: int,
                         overwrite: bool, bar: StepProgress) -> None:
    grid_path = free_grid_path(out, overwrite)
    bar.say(f"writing the contact sheet {grid_path.parent.name}/{grid_path.name}")
    columns = num_images if num_images > 1 else min(len(pictures), 4)
    captions = [f"{item.prompt}\nseed {item.seed}" for item in results]
    contact_sheet(pictures, captions, columns).save(grid_path)


def variations(
    run: str | Path, *, num_images: int = VARIATIONS_NUM_IMAGES, with_background: bool = False,
    out: str | Path | None = None, info: RunInfo | None = None, **kwargs,
) -> list[GeneratedImage]:
    """Image variations (paper Sec. 5): ``num_images`` pictures of "a photo of <asset0> and <asset1> ..." over all
    concept handles of the run (and ``<bg>`` too ``with_background``); other keywords as :func:`generate`.

    Output goes to ``<run>/variations`` unless ``out`` is given.
    """
    info = info if info is not None else RunInfo.read(run)
    prompt = variations_prompt(info.tokens, info.background_tokens, with_background)
    out = Path(out) if out is not None else Path(run) / "variations"
    return generate(run, [prompt], num_images=num_images, out=out, info=info, **kwargs)
