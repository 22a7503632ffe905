"""``break-a-scene generate`` and ``variations``: images from a finished run's handles."""

from __future__ import annotations

import argparse

from ..inference.options import SD_GUIDANCE, SD_STEPS, VARIATIONS_NUM_IMAGES, GenerationOptions
from .arguments import finite_float
from .shared import common_options

DEFAULTS = GenerationOptions()


def generation_options() -> argparse.ArgumentParser:
    """Flags shared by ``generate`` and ``variations``."""
    common = argparse.ArgumentParser(add_help=False)
    g = common.add_argument_group("generation")
    g.add_argument("--num-images", type=int, default=None,
                   help=f"images per prompt (default: {DEFAULTS.num_images}; variations: {VARIATIONS_NUM_IMAGES})")
    g.add_argument("--seed", type=int, default=DEFAULTS.seed,
                   help=f"seed of the first image; image i uses seed+i (default: {DEFAULTS.seed})")
    g.add_argument("--steps", type=int, help=f"denoising steps (default: the model's: {SD_STEPS} for SD and SDXL, "
                   "28 for FLUX.1-dev, 4 for FLUX.1-schnell)")
    g.add_argument("--guidance", type=finite_float, help=f"guidance scale (default: the model's: {SD_GUIDANCE} for SD "
                   "and SDXL, 3.5 for FLUX.1-dev (its distilled guidance), 0 for FLUX.1-schnell)")
    g.add_argument("--negative", help="negative prompt")
    g.add_argument("--scheduler", default=DEFAULTS.scheduler, metavar="{default,ddim,dpm}",
                   help="sampler: default (the run's saved scheduler), ddim (DDIM, as the research code), "
                   f"dpm (DPM-Solver++ multistep) (default: {DEFAULTS.scheduler})")
    g.add_argument("--height", type=int, help="image height in px (default: the run's resolution)")
    g.add_argument("--width", type=int, help="image width in px (default: the run's resolution)")
    g.add_argument("--dtype", default=DEFAULTS.dtype, metavar="{fp32,fp16,bf16}",
                   help=f"weights and compute precision; fp16 needs a GPU (default: {DEFAULTS.dtype})")
    g.add_argument("--batch-size", type=int, metavar="N", help="images per pipeline call, each with its own seed "
                   "(default: all images of a prompt on a GPU, 1 on CPU)")
    g.add_argument("--attention-maps", action="store_true",
                   help="also save NAME-attention.png: where each handle of the prompt looks in the image")
    g.add_argument("--no-grid", dest="grid", action="store_false", help="do not write the contact sheet grids/grid.png")
    g.add_argument("--device", help="cuda, mps or cpu (default: cuda if available, else mps, else cpu)")
    g.add_argument("--overwrite", action="store_true", help="replace images of the same prompt and seed (and grid.png)")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    return common


def options_from(args, num_images: int) -> GenerationOptions:
    """The flags of :func:`generation_options` as :class:`GenerationOptions` (``num_images`` unless
    ``--num-images`` is given)."""
    return GenerationOptions(
        num_images=args.num_images or num_images, seed=args.seed, steps=args.steps, guidance=args.guidance,
        negative=args.negative, height=args.height, width=args.width, scheduler=args.scheduler, dtype=args.dtype,
        batch_size=args.batch_size, grid=args.grid, attention_maps=args.attention_maps,
    )


def add_generate_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "generate", parents=[common_options(), generation_options()], help="generate images with a finished run's handles",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Generate images from prompts that use the run's handles. Every image is saved as "
        "NN-prompt-seedS.png (NN: the prompt's index), all of them on a contact sheet with prompt and "
        "seed under each in grids/grid.png, and one line per image in metadata.jsonl.\n\nexamples:\n"
        '  break-a-scene generate RUN "a photo of <asset0> at the beach" --num-images 4\n'
        '  break-a-scene generate RUN "a photo of a car at <bg>"          (a new object in the learned background)\n'
        "  break-a-scene generate RUN --prompts-file prompts.txt --scheduler dpm --steps 25",
    )
    p.add_argument("run", help="a finished run folder (written by extract)")
    p.add_argument("prompts", nargs="*", help='prompt(s), e.g. "a photo of <asset0> at the beach"')
    p.add_argument("--prompts-file", metavar="FILE", help="more prompts, one per line (lines starting with # are comments)")
    p.add_argument("--out", help="folder for the images, grids/grid.png and metadata.jsonl (default: RUN/samples)")
    p.set_defaults(func=run_generate)
    return p


def run_generate(args) -> int:
    from ..errors import ConfigError
    from ..handles import HANDLE_PATTERN, handles_meant
    from ..inference.generation import generate
    from ..inference.prompts import read_prompts_file
    from ..run_info import RunInfo

    info = RunInfo.read(args.run)  # once: generate() gets it too
    tokens = info.tokens
    prompts = list(args.prompts) + (read_prompts_file(args.prompts_file) if args.prompts_file else [])
    if not prompts:
        raise ConfigError("no prompt given; pass prompts after RUN or --prompts-file FILE")
    for prompt in prompts:  # before the wait, so that a mistyped prompt can be stopped at once
        if not HANDLE_PATTERN.search(prompt):
            meant = handles_meant(prompt, tokens)
            hint = f"; did you mean {' or '.join(meant)}?" if meant else ""
            print(f"note: {prompt!r} uses no handle, so it shows what the fine-tuned model makes of plain text{hint}")
    images = generate(args.run, prompts, options=options_from(args, DEFAULTS.num_images), out=args.out,
                      device=args.device, overwrite=args.overwrite, progress=not args.quiet, info=info)
    for image in images:
        print(image.path)
    return 0


def add_variations_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "variations", parents=[common_options(), generation_options()],
        help='image variations: "a photo of <asset0> and <asset1> ..." over all concept handles',
        description='Image variations of the whole scene: generate "a photo of <asset0> and <asset1> and ..." '
        "with every concept handle of the run, in the run's order. The background handle <bg> is left out "
        "unless --with-background. Images, grids/grid.png and metadata.jsonl go to RUN/variations unless --out.",
    )
    p.add_argument("run", help="a finished run folder (written by extract)")
    p.add_argument("--with-background", action="store_true", help="also put <bg> in the prompt (last)")
    p.add_argument("--out", help="folder for the images, grids/grid.png and metadata.jsonl (default: RUN/variations)")
    p.set_defaults(func=run_variations)
    return p


def run_variations(args) -> int:
    from ..inference.generation import variations

    options = options_from(args, VARIATIONS_NUM_IMAGES)
    images = variations(args.run, num_images=options.num_images, with_background=args.with_background,
                        options=options, out=args.out, device=args.device, overwrite=args.overwrite,
                        progress=not args.quiet)
    if images:
        print(f"prompt: {images[0].prompt}")
    for image in images:
        print(image.path)
    return 0

