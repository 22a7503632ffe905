"""``break-a-scene extract``: learn one handle per masked concept (and ``<bg>``) from one photo."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..config import DEFAULT_MODEL, PRESETS, ExtractConfig
from ..errors import BreakASceneError
from ..run_folder import check_clear_of_inputs
from .arguments import finite_float
from .shared import (
    MEMORY_FIELDS, POINT_HELP, common_options, local_models, mask_request, memory_options, report_masks,
    segment_options, write_masks,
)


def _paper(field: str) -> str:
    return f"(default: {getattr(ExtractConfig(), field)})"


def add_extract_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "extract",
        parents=[common_options(), segment_options("--text-masks")],
        help="learn one handle per masked concept (and <bg>) from one photo",
        description="Learn a text handle for every masked concept of one photo (Break-A-Scene). Defaults are "
        "the paper's: SD 2.1-base, 400 steps of handles only at 5e-4, then 400 steps of handles + UNet + text "
        "encoder at 2e-6, masked diffusion loss + 0.01 x cross-attention loss, union sampling, a <bg> handle.",
    )
    p.add_argument("input", help="a folder holding img.* and mask*.png, or a photo (then give --mask per concept)")
    p.add_argument("--mask", action="append", default=None, metavar="PNG", help="a concept's mask (repeat per concept)")
    p.add_argument("--text-masks", metavar='"PHRASE, PHRASE"', help='make the masks of a photo with OWLv2 + SAM, '
                   'one per comma-separated phrase; handles are named after the phrases (unless --names)')
    p.add_argument("--points", nargs="+", metavar="X,Y[+X,Y|-X,Y...]", help="make the masks of a photo with SAM, one per "
                   "point group: " + POINT_HELP)
    p.add_argument("--boxes", nargs="+", metavar="X0,Y0,X1,Y1", help="make the masks of a photo with SAM, one per box")
    p.add_argument("--out", required=True, help="run folder to write; it appears only when the run has finished "
                   "(masks made by --text-masks/--points/--boxes are saved in its masks/ folder)")
    p.add_argument("--names", nargs="+", help="handle names, one per mask: --names dog shirt gives <dog> <shirt>")
    p.add_argument("--init-words", nargs="+", help="a word per mask to start each handle from (default: its name, else a "
                   "rare word of the vocabulary; builtin:shapes: 'object')")
    p.add_argument("--no-background", dest="background", action="store_false", default=None, help="do not learn the <bg> handle")
    p.add_argument("--model", help="SD 1.x/2.x or SDXL (detected): Hub id, diffusers folder, .safetensors file, "
                   "builtin:shapes (a small model that knows the shapes world; its scaled settings become the defaults), "
                   f"builtin:tiny or builtin:tiny-sdxl (random) (default: {DEFAULT_MODEL})")
    p.add_argument("--vae", metavar="ID_OR_PATH", help="replace the model's VAE: a Hub id, a diffusers folder or a "
                   ".safetensors file, e.g. madebyollin/sdxl-vae-fp16-fix for SDXL in fp16 (recorded in scene.json)")
    p.add_argument("--resolution", type=int, help="square size the photo is resized and centre-cropped to (default: the "
                   "model's native size where known without loading it: 512 for SD 2.1-base, 768 for SD 2.1, 1024 for "
                   "SDXL, 64 for builtin:shapes, 128 for builtin:tiny; else 512)")
    p.add_argument("--prediction-type", choices=["epsilon", "v_prediction"], help="what the UNet predicts; by default "
                   "the model's scheduler says, and for a single .safetensors file it is detected from the file "
                   "(SD 2.x-base: epsilon, SD 2.x 768: v_prediction)")
    p.add_argument("--phase1-steps", type=int, help=f"steps training only the handles {_paper('phase1_steps')}")
    p.add_argument("--phase2-steps", type=int, help=f"steps training handles + UNet + text encoder {_paper('phase2_steps')}")
    p.add_argument("--phase1-lr", type=finite_float, help=f"phase-1 learning rate {_paper('phase1_lr')}")
    p.add_argument("--phase2-lr", type=finite_float, help=f"phase-2 learning rate {_paper('phase2_lr')}")
    p.add_argument("--lambda-attn", type=finite_float, help=f"weight of the cross-attention loss {_paper('lambda_attn')}")
    p.add_argument("--normalize-by-mask-area", action="store_true", default=None, help="average the masked loss over the mask, not the whole latent")
    p.add_argument("--seed", type=int, help=f"random seed of the whole run {_paper('seed')}")
    p.add_argument("--device", help="cuda, cuda:1, mps or cpu (default: cuda if available, else mps, else cpu)")
    memory_options(p)
    p.add_argument("--prior-preservation", action="store_true", default=None, help="add DreamBooth's class-image loss (research code's default)")
    p.add_argument("--class-prompt", help=f"prompt of the class images {_paper('class_prompt')}")
    p.add_argument("--class-images", metavar="DIR", help="use the images in DIR instead of generating class images")
    p.add_argument("--num-class-images", type=int, help=f"how many class images {_paper('num_class_images')}")
    p.add_argument("--preset", choices=PRESETS, default="paper", help="paper (default) or official: the research code's optimiser and prior preservation")
    p.add_argument("--no-phase1", dest="phase1", action="store_false", default=None, help="ablation: skip phase 1")
    p.add_argument("--no-masked-loss", dest="masked_loss", action="store_false", default=None, help="ablation: plain, unmasked diffusion loss")
    p.add_argument("--no-attention-loss", dest="attention_loss", action="store_false", default=None, help="ablation: no cross-attention loss")
    sampling = p.add_mutually_exclusive_group()
    sampling.add_argument("--no-union-sampling", dest="subset_sampling", action="store_const", const="single", default=None,
                          help="ablation (the paper's): one handle per step, drawn uniformly, instead of a random union")
    sampling.add_argument("--subset-sampling", choices=["union", "single", "all"], help="which handles a step trains: union "
                   "(a random subset, the method), single (= --no-union-sampling) or all (every handle every step; not "
                   "in the paper) (default: union)")
    p.add_argument("--attention-reduction", choices=["sum", "mean"], help="combine the sampled handles' attention "
                   f"errors by sum (the research code's, for which lambda 0.01 was chosen) or mean {_paper('attention_reduction')}")
    p.add_argument("--checkpoint-every", type=int, help="save a resumable checkpoint every N steps (default: 0, never)")
    p.add_argument("--report-to", choices=["tensorboard", "wandb"], help="also log every step's losses to TensorBoard "
                   "(OUT/logs/tensorboard) or Weights & Biases (accelerate's trackers; pip install tensorboard or wandb); "
                   "OUT/logs/train.jsonl is always written")
    p.add_argument("--resume", action="store_true", help="continue the interrupted run in OUT.partial from its last checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT folder")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run_extract)
    return p


def _print_low_vram_choices(args) -> None:
    from ..models.loading import model_family
    from ..training.memory import low_vram_options, machine_facts

    family = model_family(args.model or DEFAULT_MODEL)
    options, notes = low_vram_options(*machine_facts(args.device), family=family)
    print("--low-vram chose: " + "; ".join(notes), file=sys.stderr)
    overridden = sorted(name for name in options if getattr(args, name, None) is not None)
    if overridden:
        print("  (your own " + ", ".join("--" + n.replace("_", "-") for n in overridden) + " replaced its choice)", file=sys.stderr)


def _shapes_settings(overrides: dict) -> dict:
    """builtin:shapes' scaled settings for every one the user did not give, printed."""
    from ..models.shapes import SCALED_SETTINGS

    taken = {k: v for k, v in SCALED_SETTINGS.items() if overrides.get(k) is None}
    if taken:
        print("builtin:shapes' scaled settings: " + ", ".join(f"{k}={v}" for k, v in taken.items()), file=sys.stderr)
    return {**overrides, **taken}


def _family_settings(model: str, overrides: dict) -> dict:
    """The model family's training defaults (FLUX.1: LoRA rank 16 in phase 2) for every one the user did not give,
    printed; a ``--prediction-type`` the family cannot take is refused first."""
    from ..models.loading import model_family

    family = model_family(model)
    if family is None:
        return overrides
    family.check_prediction_type(overrides.get("prediction_type"))
    taken = {k: v for k, v in family.training_defaults.items() if overrides.get(k) is None}
    if taken and family.training_defaults_note:
        print(family.training_defaults_note, file=sys.stderr)
    return {**overrides, **taken}


def run_extract(args) -> int:
    from ..training.recipe import extract
    from ..scene import load_scene, load_scene_folder

    fields = (
        "model vae resolution prediction_type names init_words background phase1_steps phase2_steps phase1_lr phase2_lr lambda_attn "
        "normalize_by_mask_area seed device prior_preservation class_prompt "
        "class_images num_class_images phase1 masked_loss attention_loss subset_sampling attention_reduction "
        "checkpoint_every report_to"
    ).split() + MEMORY_FIELDS
    if args.resolution is None:  # the model's native size where it can be told without loading it
        from ..models.loading import check_model_reference, default_resolution

        check_model_reference(args.model or DEFAULT_MODEL)
        args.resolution = default_resolution(args.model or DEFAULT_MODEL)
    from ..training.memory import with_low_vram

    from ..models.shapes import SHAPES_MODEL_ID

    overrides = {name: getattr(args, name) for name in fields}
    if (args.model or DEFAULT_MODEL) == SHAPES_MODEL_ID:
        overrides = _shapes_settings(overrides)
    overrides = _family_settings(args.model or DEFAULT_MODEL, overrides)
    config = ExtractConfig.from_preset(args.preset, **with_low_vram(overrides))
    if args.low_vram:
        _print_low_vram_choices(args)
    source = Path(args.input)
    if not source.exists():
        raise BreakASceneError(f"{source} not found; give a folder with img.* and mask*.png, or a photo plus --mask")
    check_clear_of_inputs(args.out, [("scene folder" if source.is_dir() else "photo", source)]
                          + [("mask", mask) for mask in args.mask or []] + local_models(args))
    made = None
    segmenting = bool(args.text_masks is not None or args.points or args.boxes)
    if source.is_dir():
        if args.mask or segmenting:
            flag = "--mask" if args.mask else "--text-masks/--points/--boxes"
            raise BreakASceneError(f"{source} is a folder (masks come from its mask*.png); drop {flag} or give a photo")
        scene = load_scene_folder(source, config.resolution)
    elif segmenting:
        if args.mask:
            raise BreakASceneError("give either --mask files or --text-masks/--points/--boxes, not both")
        made, photo, scene = _segment_for_extract(args, source, config)
        config = _named_after_phrases(args, config, made)
    else:
        if not args.mask:
            raise BreakASceneError(f"no masks for {source}: add --mask PNG per concept, or give a folder with mask*.png")
        scene = load_scene(source, args.mask, config.resolution)
    save_masks = None
    if made is not None:  # saved inside the run folder before it appears, never after
        def save_masks(folder: Path) -> None:
            write_masks(folder / "masks", source, photo, made, overwrite=True)
    result = extract(scene, config, args.out, overwrite=args.overwrite, resume=args.resume,
                     progress=not args.quiet, write_extra=save_masks)
    print(f"handles {' '.join(result.tokens)} written to {result.out}")
    scores = result.attention_scores.get(config.phases[-1].name)
    if scores:
        inside = ", ".join(f"{t} {row[i]:.2f}" for i, (t, row) in enumerate(zip(result.tokens, scores)))
        print(f"attention inside own mask: {inside}  (maps in {result.out / 'attention'})")
    print(f'try: break-a-scene generate {result.out} "a photo of {result.tokens[0]} at the beach"')
    return 0


def _segment_for_extract(args, source: Path, config):
    """Makes the masks of extract's --text-masks/--points/--boxes: all checks first, then the models."""
    from ..errors import RunError
    from ..scene import load_scene
    from ..segmentation.make import make_masks, open_photo
    from ..segmentation.prompts import check_request

    request = mask_request(args, args.points, args.boxes, args.text_masks)
    check_request(request)
    config.validate()
    out = Path(args.out)
    if out.exists() and not args.overwrite and not args.resume:
        raise RunError(f"{out} already exists; pass --overwrite to replace it or choose another --out")
    photo = open_photo(source)
    made = make_masks(photo, request)
    report_masks(made, made.labels)
    return made, photo, load_scene(source, made.masks_as_images(), config.resolution)


def _named_after_phrases(args, config, made):
    """Handles of text masks are named after their phrases ("red shirt" -> <red_shirt>) unless --names is given."""
    import dataclasses

    from ..segmentation.prompts import phrase_name

    if args.names is not None or not any(made.labels):
        return config
    names = [phrase_name(p) for p in made.labels]
    init_words = config.init_words if config.init_words is not None else list(made.labels)
    return dataclasses.replace(config, names=names, init_words=init_words)

