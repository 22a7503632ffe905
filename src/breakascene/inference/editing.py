"""Local editing of another photo with a run's handles: Blended Latent Diffusion (BLD), region by region.

``edit(run, image, [(mask1, prompt1), (mask2, prompt2)])`` changes only the masked regions of ``image``, each
with its own prompt, ONE AFTER THE OTHER: region 2 is edited in the result of region 1 (paper Fig. 12).

What BLD does per region, and who does it here:

* DDIM sampling (50 steps, guidance 7.5 by default) with the run's model; the first ``blend_start`` (25 %) of the
  steps are skipped: sampling starts from the source latents noised to that step (SDEdit-style start). A FLUX.1
  run samples with its own flow-matching Euler sampler and its family's steps and guidance (28 and 3.5 for dev).
* The region mask is brought to the latent grid (nearest) and thresholded at 0.5; after every step the latents
  OUTSIDE it are replaced by the source latents noised to the next timestep (the clean source latents after the
  last step).

diffusers' ``StableDiffusionInpaintPipeline`` does exactly this when its UNet has 4 input channels (a plain text-to-
image UNet, as a run folder has): ``strength = 1 - blend_start`` starts from ``add_noise(source latents, noise,
first kept timestep)`` (``get_timesteps`` keeps ``int(steps * strength)`` steps, so with 50 steps 37 run and 13 are
skipped), its ``mask_processor`` binarises the mask at 0.5 and ``prepare_mask_latents`` resizes it to the latent grid
with nearest interpolation, and its ``num_channels_unet == 4`` branch blends
``(1 - mask) * add_noise(image_latents, noise, t_next) + mask * latents`` after every scheduler step. So this
module builds that pipeline from the run's components (``from_pipe``, no copy of the weights) with a
``DDIMScheduler`` from the run's scheduler config, and writes only what it lacks. For FLUX.1,
``FluxInpaintPipeline`` does the same with a plain (64-input-channel) transformer: it starts from
``scale_noise(source latents, first kept timestep, noise)``, binarises the mask, resizes it to the latent grid
(nearest), packs it 2x2 like the latents, and after every step blends ``(1 - mask) * scale_noise(image_latents,
t_next, noise) + mask * latents`` (the clean source latents after the last step).

What this module adds:

* input handling: the edit image is read like the scene photo (EXIF transpose, any mode -> RGB) but NOT cropped
  to a square: it keeps its own size when both sides are multiples of 8 (16 for FLUX.1, which packs 2x2 latent
  patches), else it is resized (LANCZOS) to the nearest multiples (with a warning), and the outputs have that
  size. A region mask must have the edit image's size; a mask of the same aspect ratio but another size is
  resized (with a warning), any other size is an error;
* background preservation in pixels: decoding changes pixels outside the region too (the VAE round trip is lossy),
  so the decoded result is composited with the region's input image outside the pixel-resolution region mask
  (coverage >= 0.5). Pixels outside every region are therefore exactly those of the input (BLD likewise pastes
  the original background back at the end);
* sequencing: region i is edited in ``edit-{i-1}.png`` (the input photo for region 1) with seed ``seed + i - 1``;
  ``edit-1.png``, ``edit-2.png``, ..., ``final.png`` and ``edit.json`` (regions, prompts, seeds, settings) are written
  to ``out`` (default ``RUN/edits/NNN-<image stem>``, numbered so that a default folder is always a new one). All
  input is checked before anything is written;
* progress: one bar on stderr over the steps that run, of all regions (the inpainting pipeline's own is off).
"""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path
from typing import Sequence, Union

import numpy as np
import torch
from PIL import Image

from ..errors import ConfigError, RunError, SceneError, SceneWarning
from ..images import mask_coverage, open_image, to_rgb
from ..models.loading import check_device
from ..run_folder import check_clear_of_inputs, check_clear_of_run
from ..run_info import RunInfo
from .options import EditOptions, with_family_defaults, with_settings
from .pipeline import load_pipeline
from .progress import StepProgress
from .prompts import check_prompt_handles

__all__ = ["edit", "edit_pipeline", "load_edit_image", "load_region_mask", "next_edit_folder"]

ImageInput = Union[str, Path, Image.Image]
OUTPUT_NAMES = ("final.png", "edit.json")


def _name(source: ImageInput, fallback: str) -> str:
    if isinstance(source, (str, Path)):
        return str(source)
    return getattr(source, "filename", "") or fallback


def load_edit_image(source: ImageInput, multiple: int = 8) -> tuple[Image.Image, tuple[int, int]]:
    """The edit image as RGB at a size whose sides are multiples of ``multiple`` (the model family's
    ``image_side_multiple``); also returns its size as read (w, h)."""
    img = to_rgb(open_image(source, "edit image"))
    size = img.size
    width, height = (max(multiple, int(round(side / multiple)) * multiple) for side in size)
    if (width, height) != size:
        warnings.warn(
            f"edit image {_name(source, 'image')} is {size[0]}x{size[1]}; resized to {width}x{height} "
            f"(both sides must be multiples of {multiple}), so the outputs have that size",
            SceneWarning,
            stacklevel=2,
        )
        img = img.resize((width, height), Image.LANCZOS)
    return img, size


def load_region_mask(source: ImageInput, image_size: tuple[int, int], work_size: tuple[int, int]) -> np.ndarray:
    """A region mask as a (H, W) bool array at ``work_size`` (w, h); ``image_size`` is the edit image as read.

    Raises:
        SceneError: unreadable, a size of another aspect ratio than the edit image, or empty.
    """
    name = _name(source, "region mask")
    img = open_image(source, "region mask")
    coverage = mask_coverage(img)
    mh, mw = coverage.shape
    iw, ih = image_size
    if (mw, mh) != (iw, ih):
        if abs(mw * ih - mh * iw) > max(mw, iw, mh, ih):  # aspect ratios differ by more than a pixel's rounding
            raise SceneError(
                f"region mask {name} is {mw}x{mh} but the edit image is {iw}x{ih}; draw the mask on the edit image"
            )
        warnings.warn(
            f"region mask {name} is {mw}x{mh}, the edit image {iw}x{ih} (same aspect ratio); resizing the mask",
            SceneWarning,
            stacklevel=2,
        )
    if (mw, mh) != tuple(work_size):
        resized = Image.fromarray(coverage.astype(np.float32), mode="F").resize(tuple(work_size), Image.BILINEAR)
        coverage = np.asarray(resized, dtype=np.float32)
    inside = coverage >= 0.5
    if not inside.any():
        raise SceneError(f"region mask {name} is empty (no pixel >= 0.5); paint the region to edit in white")
    return inside


def edit_pipeline(pipe):
    """The family's inpainting pipeline (``StableDiffusionInpaintPipeline``, ``StableDiffusionXLInpaintPipeline``,
    ``FluxInpaintPipeline``) sharing ``pipe``'s components, with the family's editing sampler (DDIM for the UNets,
    BLD's). With a plain text-to-image denoiser each blends the latents inside the mask with the photo's, noised
    to the step's level: Blended Latent Diffusion."""
    from ..models.families.registry import family_of_pipeline

    family = family_of_pipeline(pipe)
    inpaint = family.inpaint_pipeline_class.from_pipe(pipe, scheduler=family.edit_scheduler(pipe.scheduler))
    inpaint.set_progress_bar_config(disable=True)
    return inpaint


def next_edit_folder(edits: Path, stem: str) -> Path:
    """``edits/NNN-<stem>``: NNN one more than the highest number of a ``NNN-...`` folder there (``001`` first).

    So a default output folder is never one that exists, two photos with one name get two folders, and the
    numbers keep the order the edits were made in (a deleted edit's number is not given out again).
    """
    names = [p.name for p in edits.iterdir()] if edits.is_dir() else []
    numbers = [int(m.group(1)) for name in names if (m := re.match(r"(\d+)-", name))]
    return edits / f"{max(numbers, default=0) + 1:03d}-{stem}"


def _make_default_folder(edits: Path, stem: str) -> Path:
    """Creates and returns the next free ``edits/NNN-<stem>``; another edit taking a number first moves it on."""
    edits.mkdir(parents=True, exist_ok=True)
    while True:
        out = next_edit_folder(edits, stem)
        try:
            out.mkdir()
            return out
        except FileExistsError:  # a concurrent edit took that number between the listing and the mkdir
            continue


def _edit_region(
    pipe, image: Image.Image, inside: np.ndarray, prompt: str, *, seed: int, steps: int, guidance: float,
    blend_start: float, callback=None,
) -> Image.Image:
    """One BLD edit of ``image`` inside ``inside`` (bool, image size), composited with ``image`` outside it.

    ``callback``: the pipeline's ``callback_on_step_end`` (a progress bar's), or None.
    """
    width, height = image.size
    mask = Image.fromarray(inside.astype(np.uint8) * 255, mode="L")
    generator = torch.Generator(pipe.device).manual_seed(seed)
    result = pipe(
        prompt=prompt,
        image=image,
        mask_image=mask,
        height=height,
        width=width,
        strength=1.0 - blend_start,
        num_inference_steps=steps,
        guidance_scale=guidance,
        generator=generator,
        callback_on_step_end=callback,
    ).images[0]
    if result.size != image.size:  # not expected: the pipeline works at (height, width)
        result = result.resize(image.size, Image.LANCZOS)
    composite = np.where(inside[..., None], np.asarray(result.convert("RGB")), np.asarray(image))
    return Image.fromarray(composite.astype(np.uint8), mode="RGB")


def edit(
    run: str | Path,
    image: ImageInput,
    regions: Sequence[tuple[ImageInput, str]],
    *,
    options: EditOptions | None = None,
    out: str | Path | None = None,
    overwrite: bool = False,
    pipeline=None,
    device: str | None = None,
    progress: bool = True,
    **settings,
) -> list[Path]:
    """Edits ``image`` region by region with Blended Latent Diffusion; returns the written image paths.

    Args:
        run: a finished run folder.
        image: the photo to edit (path or PIL image).
        regions: ``(mask, prompt)`` pairs, applied in order, each to the previous result.
        options: the sampling settings (:class:`EditOptions`); ``settings``, its field names as keyword
            arguments, replace single ones: ``seed`` (region i, from 1, uses seed ``seed + i - 1``), ``steps``
            (sampling steps, of which the first ``blend_start`` fraction is skipped, 0 <= blend_start < 1),
            ``guidance`` (the guidance scale); ``steps``/``guidance`` None: the run's model family's.
        out: output folder; default a new ``RUN/edits/NNN-<image stem>`` (:func:`next_edit_folder`), never
            refused. An ``out`` given may hold earlier outputs only with ``overwrite``.
        overwrite: replace outputs already in ``out``.
        pipeline: a loaded pipeline of the run (its family's text-to-image or inpainting one); loaded if None.
        device: device to load the pipeline on (when ``pipeline`` is None); checked before anything is loaded.
        progress: one bar on stderr over the denoising steps that run, of all regions
            (``int(steps * (1 - blend_start))`` each), which says what is written after them; False prints
            nothing.

    Returns:
        ``[out/edit-1.png, ..., out/edit-N.png, out/final.png]``; ``out/edit.json`` is written too.

    Raises:
        RunError: the run folder is missing or unfinished, or outputs exist without ``overwrite``.
        ConfigError: no region, an unknown handle in a prompt, a ``device`` this machine lacks, or a number out
            of range.
        SceneError: the image or a mask is missing, unreadable, of the wrong size, or a mask is empty.
    """
    from ..models.families.registry import family_of_pipeline_class

    options = with_settings(options, EditOptions, settings)
    info = RunInfo.read(run)
    family = family_of_pipeline_class(info.pipeline)
    _check_request(regions, options, info.tokens, family)
    if pipeline is None:
        device = check_device(device)
    photo, read_size = load_edit_image(image, family.image_side_multiple)
    masks = [load_region_mask(mask, read_size, photo.size) for mask, _ in regions]
    stem = Path(image).stem if isinstance(image, (str, Path)) else "image"
    edits = Path(run) / "edits"
    planned = Path(out) if out is not None else next_edit_folder(edits, stem)  # made only once the model is loaded
    _check_outputs(planned, run, image, regions, overwrite)

    pipe = edit_pipeline(pipeline if pipeline is not None else load_pipeline(run, device, info=info)[0])
    options = with_family_defaults(options, pipe)
    _check_steps_run(options, family)  # again: the family's steps were not known before loading
    if out is None:
        planned = _make_default_folder(edits, stem)
    else:
        planned.mkdir(parents=True, exist_ok=True)
    steps_run = family.edit_steps_run(options.steps, 1.0 - options.blend_start)  # what the pipeline runs
    with StepProgress(steps_run * len(regions), "edit", enabled=progress) as bar:
        current, paths, records = _edit_regions(pipe, photo, regions, masks, options, planned, steps_run, bar)
        final = planned / "final.png"
        bar.say(f"writing {final.name} and edit.json")
        current.save(final)
        paths.append(final)
        record = {
            "run": str(run), "image": _name(image, "image"), "size": list(photo.size), "input_size": list(read_size),
            "method": f"blended latent diffusion ({type(pipe).__name__}, text-to-image denoiser) + pixel composite",
            "scheduler": type(pipe.scheduler).__name__, "steps": options.steps, "steps_run": steps_run,
            "guidance": options.guidance, "blend_start": options.blend_start, "seed": options.seed, "regions": records,
        }
        (planned / "edit.json").write_text(json.dumps(record, indent=2) + "\n")
    return paths


def _check_request(regions: Sequence[tuple[ImageInput, str]], options: EditOptions, tokens: list[str], family) -> None:
    if not regions:
        raise ConfigError("no region given; add --region MASK PROMPT")
    for _, prompt in regions:
        check_prompt_handles(prompt, tokens)
    if options.steps is not None and options.steps < 1:
        raise ConfigError(f"--steps must be >= 1 (got {options.steps})")
    if not 0.0 <= options.blend_start < 1.0:
        raise ConfigError(f"--blend-start must be in [0, 1) (got {options.blend_start})")
    if options.steps is not None:
        _check_steps_run(options, family)


def _check_steps_run(options: EditOptions, family) -> None:
    if family.edit_steps_run(options.steps, 1.0 - options.blend_start) < 1:
        raise ConfigError(f"--blend-start {options.blend_start} skips all {options.steps} steps; lower it or raise --steps")


def _check_outputs(out: Path, run: str | Path, image: ImageInput, regions: Sequence[tuple[ImageInput, str]],
                   overwrite: bool) -> None:
    """``out`` apart from the run and the inputs, a folder, and free of earlier outputs unless ``overwrite``."""
    check_clear_of_run(out, run)
    check_clear_of_inputs(out, [("photo", image if isinstance(image, (str, Path)) else None)]
                          + [("region mask", m if isinstance(m, (str, Path)) else None) for m, _ in regions])
    names = [f"edit-{i}.png" for i in range(1, len(regions) + 1)] + list(OUTPUT_NAMES)
    if out.exists() and not out.is_dir():
        raise RunError(f"{out} exists and is not a folder; choose another --out")
    clashes = [name for name in names if (out / name).exists()]
    if clashes and not overwrite:  # never for the default folder: next_edit_folder names a new one
        raise RunError(f"{out / clashes[0]} already exists; pass --overwrite or choose another --out")


def _edit_regions(pipe, photo: Image.Image, regions, masks: list[np.ndarray], options: EditOptions, out: Path,
                  steps_run: int, bar: StepProgress) -> tuple[Image.Image, list[Path], list[dict]]:
    """Region i edited in the result of region i - 1 and written as ``edit-i.png``; returns the last result,
    the paths and the regions' ``edit.json`` records."""
    paths, records, current = [], [], photo
    for i, ((mask_source, prompt), inside) in enumerate(zip(regions, masks), start=1):
        region_seed = options.seed + i - 1
        current = _edit_region(
            pipe, current, inside, prompt, seed=region_seed, steps=options.steps, guidance=options.guidance,
            blend_start=options.blend_start, callback=bar.callback(steps_run),
        )
        path = out / f"edit-{i}.png"
        bar.say(f"writing {path.name}")
        current.save(path)
        paths.append(path)
        records.append({"mask": _name(mask_source, f"mask {i}"), "prompt": prompt, "seed": region_seed,
                        "output": path.name, "area": float(inside.mean())})
        bar.resume()
    return current, paths, records
