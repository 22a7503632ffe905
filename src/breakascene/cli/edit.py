"""``break-a-scene edit``: edit regions of another photo with a run's handles (Blended Latent Diffusion)."""

from __future__ import annotations

import argparse

from ..inference.options import SD_GUIDANCE, SD_STEPS, EditOptions
from .arguments import finite_float
from .shared import common_options

DEFAULTS = EditOptions()


def add_edit_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "edit",
        parents=[common_options()],
        help="edit regions of another photo with a run's handles (Blended Latent Diffusion)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Edit masked regions of a photo, each with its own prompt, one after the other (region 2 is "
        "edited in the result of region 1), with Blended Latent Diffusion: DDIM, the first --blend-start of the "
        "steps skipped, latents outside the region replaced by the noised photo's at every step, and the pixels "
        "outside the region copied from the input at the end. A mask is white where to edit and has the photo's "
        "size. Writes edit-1.png, edit-2.png, ..., final.png and edit.json.\n\nexample:\n"
        '  break-a-scene edit RUN photo.jpg --region dog.png "a photo of <asset0>" --region sky.png "a photo of <bg>"',
    )
    p.add_argument("run", help="a finished run folder (written by extract)")
    p.add_argument("image", help="the photo to edit (kept at its size, rounded to multiples of 8; 16 for FLUX.1)")
    p.add_argument("--region", nargs=2, action="append", required=True, metavar=("MASK", "PROMPT"),
                   help="a region mask and the prompt for it (repeat; applied in order)")
    p.add_argument("--out", help="output folder (default: a new numbered folder RUN/edits/NNN-<image stem>)")
    p.add_argument("--seed", type=int, default=DEFAULTS.seed,
                   help=f"seed of region 1; region i uses seed+i-1 (default: {DEFAULTS.seed})")
    p.add_argument("--steps", type=int, help=f"sampling steps, DDIM for SD and SDXL (default: the model's: {SD_STEPS} "
                   "for SD and SDXL, 28 for FLUX.1-dev, 4 for FLUX.1-schnell)")
    p.add_argument("--guidance", type=finite_float, help=f"guidance scale (default: the model's: {SD_GUIDANCE} for SD "
                   "and SDXL, 3.5 for FLUX.1-dev, 0 for FLUX.1-schnell)")
    p.add_argument("--blend-start", type=finite_float, default=DEFAULTS.blend_start,
                   help=f"fraction of the steps skipped: start from the photo noised to that step (default: {DEFAULTS.blend_start})")
    p.add_argument("--device", help="cuda, mps or cpu (default: cuda if available, else mps, else cpu)")
    p.add_argument("--overwrite", action="store_true", help="replace outputs already in the output folder")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run_edit)
    return p


def run_edit(args) -> int:
    from ..inference.editing import edit

    options = EditOptions(seed=args.seed, steps=args.steps, guidance=args.guidance, blend_start=args.blend_start)
    paths = edit(
        args.run, args.image, [tuple(region) for region in args.region], options=options, out=args.out,
        overwrite=args.overwrite, device=args.device, progress=not args.quiet,
    )
    for path in paths:
        print(path)
    return 0

