"""The ``break-a-scene`` command: thin adapters from flags to the library (``extract``, ``masks``, ``generate``, ``env``).

Bad input ends with one line on stderr and exit status 2; an unexpected failure with one line and status 1
(``--debug`` shows the traceback); Ctrl-C with status 130 and a hint to ``--resume``.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

# Keep the libraries from importing bitsandbytes, which prints on import, until 8-bit Adam is asked for (importing
# the package has already quietened their import-time chatter: breakascene.quiet).
from . import optional_bnb  # noqa: E402

optional_bnb.hide()

from .arguments import EXIT_BAD_INPUT, OneLineErrorParser, finite_float  # noqa: E402
from .config import DEFAULT_MODEL, PRESETS, ExtractConfig  # noqa: E402
from .errors import BreakASceneError  # noqa: E402
from .run_folder import check_clear_of_inputs  # noqa: E402

EXIT_INTERRUPTED = 130


def _paper(field: str) -> str:
    return f"(default: {getattr(ExtractConfig(), field)})"


def _common() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show full tracebacks instead of one-line errors")
    return common


POINT_HELP = (
    "a point x,y in photo pixels (x right, y down) gives one mask; join points with '+' (on the concept) or "
    "'-' (off it) for one mask from several: 120,80+200,90-50,60"
)
BOX_HELP = "a box x0,y0,x1,y1 in photo pixels gives one mask"


def _segment_options(text_flag: str) -> argparse.ArgumentParser:
    """Flags shared by ``masks`` and ``extract``: which models, detection threshold, mask clean-up."""
    from .segment import DEFAULT_DETECTOR_MODEL, DEFAULT_SAM_MODEL

    common = argparse.ArgumentParser(add_help=False)
    g = common.add_argument_group("automatic masks")
    g.add_argument("--sam-model", default=DEFAULT_SAM_MODEL, metavar="ID_OR_DIR",
                   help=f"SAM model: Hub id (e.g. facebook/sam-vit-large, -huge) or local folder (default: {DEFAULT_SAM_MODEL})")
    g.add_argument("--detector-model", default=DEFAULT_DETECTOR_MODEL, metavar="ID_OR_DIR",
                   help=f"OWLv2 detector for {text_flag}: Hub id or local folder (default: {DEFAULT_DETECTOR_MODEL})")
    g.add_argument("--detection-threshold", type=finite_float, default=0.1,
                   help=f"a phrase of {text_flag} whose best box scores below this is an error (default: 0.1)")
    g.add_argument("--dilate", type=int, default=0, metavar="N", help="grow every mask by N px")
    g.add_argument("--erode", type=int, default=0, metavar="N", help="shrink every mask by N px (before --dilate)")
    g.add_argument("--fill-holes", action="store_true", help="fill holes inside every mask")
    g.add_argument("--largest-component", action="store_true", help="keep only the largest connected piece of every mask")
    return common


def _mask_request(args, points=(), boxes=(), text=None, auto=False):
    from .segment import MaskRequest

    return MaskRequest(
        points=points or (), boxes=boxes or (), text=text, auto=auto, sam_model=args.sam_model,
        detector_model=args.detector_model, detection_threshold=args.detection_threshold,
        max_masks=getattr(args, "max_masks", 4), min_area=getattr(args, "min_area", 0.01),
        points_per_side=getattr(args, "points_per_side", 16), dilate=args.dilate, erode=args.erode,
        fill_holes=args.fill_holes, largest_component=args.largest_component, device=args.device,
    )


def _report_masks(result, names: list[str]) -> None:
    """Scores of text masks, then mask_tools' stats lines (warnings on stderr)."""
    from .mask_tools import describe_stats, mask_stats

    for label, score in zip(result.labels, result.scores or []):
        print(f"{label}: score {score:.2f}")
    stats, overlap = mask_stats(result.masks, names)
    for line in describe_stats(stats, overlap):
        print(line, file=sys.stderr if line.startswith("warning:") else sys.stdout)


def _write_masks(folder: Path, photo_path: Path, photo, result, overwrite: bool) -> None:
    """A scene folder (img.<suffix>: the photo, copied; mask0.png ...; mask_names.txt for text masks) plus
    preview.png."""
    from .mask_tools import preview
    from .scene_folder import write_scene_folder

    names = result.labels if any(result.labels) else None
    write_scene_folder(folder, photo_path, result.masks, names, overwrite=overwrite)
    labels = [f"mask{i}" + (f" {n}" if n else "") for i, n in enumerate(result.labels)]
    preview(photo, result.masks, labels).save(folder / "preview.png")


def add_masks_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "masks",
        parents=[_common(), _segment_options("--text")],
        help="make concept masks with SAM from points, boxes, text (OWLv2) or automatically",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Make one mask per concept of a photo with SAM, from clicked points, boxes, phrases (OWLv2 "
        "finds each phrase's best box) or automatically. DIR receives mask0.png, mask1.png, ... (8-bit, the "
        "photo's size), a copy of the photo as img.<suffix> and preview.png, so `break-a-scene extract DIR` "
        "works directly. Coordinates are pixels of the photo as displayed: x to the right, y down, 0,0 top "
        "left.\n\nexamples:\n"
        "  break-a-scene masks photo.jpg --point 120,80 --point 300,200 --out scene\n"
        "  break-a-scene masks photo.jpg --point 120,80+200,90-50,60 --out scene   (2 points on, 1 off)\n"
        "  break-a-scene masks photo.jpg --box 10,20,200,180 --out scene\n"
        '  break-a-scene masks photo.jpg --text "dog, red shirt" --out scene\n'
        "  break-a-scene masks photo.jpg --auto --max-masks 3 --out scene\n\n"
        "Models are downloaded from the Hub once (network needed); offline, give a local folder "
        "(--sam-model /path/to/folder).",
    )
    p.add_argument("input", metavar="IMAGE", help="the photo")
    p.add_argument("--point", action="append", metavar="X,Y[+X,Y|-X,Y...]", help=POINT_HELP + " (repeat per mask)")
    p.add_argument("--box", action="append", metavar="X0,Y0,X1,Y1", help=BOX_HELP + " (repeat per mask)")
    p.add_argument("--text", metavar='"PHRASE, PHRASE"', help='comma-separated phrases, one mask each: "dog, red shirt"')
    p.add_argument("--auto", action="store_true", help="SAM on a grid of points; keep the largest non-overlapping segments")
    p.add_argument("--max-masks", type=int, default=4, metavar="K", help="--auto: keep at most K masks (default: 4)")
    p.add_argument("--min-area", type=finite_float, default=0.01, help="--auto: smallest segment, fraction of the photo (default: 0.01)")
    p.add_argument("--points-per-side", type=int, default=16, help="--auto: grid of N x N points (default: 16)")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the masks, the photo copy and preview.png")
    p.add_argument("--device", help="cuda, mps or cpu (default: cuda if available, else cpu)")
    p.add_argument("--overwrite", action="store_true", help="replace masks and photo already in DIR")
    p.set_defaults(func=run_masks)
    return p


def _check_mask_folder(out: Path, overwrite: bool) -> None:
    from .errors import RunError
    from .scene_folder import is_scene_file

    if out.exists() and not out.is_dir():
        raise RunError(f"{out} exists and is not a folder; choose another --out")
    if out.is_dir() and not overwrite:
        held = sorted(p.name for p in out.iterdir() if is_scene_file(p) or p.name == "preview.png")
        if held:
            raise RunError(f"{out} already holds {', '.join(held[:4])}; choose another --out or pass --overwrite")


def run_masks(args) -> int:
    from .segment import check_request, make_masks, open_photo

    source, out = Path(args.input), Path(args.out)
    request = _mask_request(args, args.point, args.box, args.text, args.auto)
    check_request(request)  # malformed prompts fail before the photo or any model is opened
    check_clear_of_inputs(out, [("photo", source)] + _local_models(args))
    photo = open_photo(source)
    _check_mask_folder(out, args.overwrite)
    result = make_masks(photo, request)
    _report_masks(result, result.labels)
    if out.exists():  # a folder of the user's: only the layout's files (and preview.png) are replaced
        _write_masks(out, source, photo, result, args.overwrite)
    else:
        from .run_folder import written_atomically

        with written_atomically(out) as partial:
            _write_masks(partial, source, photo, result, args.overwrite)
    print(f"{len(result.masks)} masks written to {out} (check {out / 'preview.png'}); "
          f"next: break-a-scene extract {out} --out RUN")
    return 0


def add_extract_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "extract",
        parents=[_common(), _segment_options("--text-masks")],
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
    p.add_argument("--init-words", nargs="+", help="a word per mask to start each handle from (default: its name, or 'object')")
    p.add_argument("--no-background", dest="background", action="store_false", default=None, help="do not learn the <bg> handle")
    p.add_argument("--model", help=f"Hub id, diffusers folder, .safetensors file, or builtin:tiny (default: {DEFAULT_MODEL})")
    p.add_argument("--resolution", type=int, help="square size the photo is resized and centre-cropped to (default: the "
                   "model's native size where known without loading it: 512 for SD 2.1-base, 768 for SD 2.1, 128 for "
                   "builtin:tiny; else 512)")
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
    _memory_options(p)
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


def _memory_options(p: argparse.ArgumentParser) -> None:
    """Speed and memory flags, shared by ``extract`` and ``bench`` (docs/performance.md has their costs)."""
    g = p.add_argument_group("speed and memory")
    g.add_argument("--mixed-precision", choices=["no", "fp16", "bf16"], help="autocast compute in bf16/fp16; weights that "
                   "never train in the run are stored in it, what trains stays fp32 (default: no)")
    g.add_argument("--gradient-checkpointing", action="store_true", default=None, help="recompute activations in backward to save memory")
    g.add_argument("--use-8bit-adam", action="store_true", default=None, help="8-bit Adam from bitsandbytes (CUDA only): 4x smaller optimiser state")
    g.add_argument("--lora-rank", type=int, metavar="R", help="phase 2 trains rank-R LoRA adapters (peft) instead of the whole "
                   "UNet: small output, far less memory; not the paper's method (default: 0, full fine-tuning)")
    g.add_argument("--lora-alpha", type=finite_float, help="LoRA scale numerator (default: the rank)")
    g.add_argument("--lora-text-encoder", action="store_true", default=None, help="with --lora-rank: LoRA on the text encoder too")
    g.add_argument("--compile", action="store_true", default=None, help="torch.compile the UNet (slow first steps, faster after; GPU)")
    g.add_argument("--no-tf32", dest="allow_tf32", action="store_false", default=None, help="strict fp32 matmuls on Ampere+ GPUs (TF32 is on by default)")
    g.add_argument("--low-vram", action="store_true", default=None, help="pick the options that fit a 12 GB GPU (bf16, "
                   "gradient checkpointing, 8-bit Adam, frozen text encoder in phase 2); prints what it chose; flags given "
                   "explicitly win")


MEMORY_FIELDS = "mixed_precision gradient_checkpointing use_8bit_adam lora_rank lora_alpha lora_text_encoder compile allow_tf32 low_vram".split()


def _print_low_vram_choices(args) -> None:
    from .config import low_vram_options, machine_facts

    options, notes = low_vram_options(*machine_facts(args.device))
    print("--low-vram chose: " + "; ".join(notes), file=sys.stderr)
    overridden = sorted(name for name in options if getattr(args, name, None) is not None)
    if overridden:
        print("  (your own " + ", ".join("--" + n.replace("_", "-") for n in overridden) + " replaced its choice)", file=sys.stderr)


def run_extract(args) -> int:
    from .recipe import extract
    from .scene import load_scene, load_scene_folder

    fields = (
        "model resolution prediction_type names init_words background phase1_steps phase2_steps phase1_lr phase2_lr lambda_attn "
        "normalize_by_mask_area seed device prior_preservation class_prompt "
        "class_images num_class_images phase1 masked_loss attention_loss subset_sampling attention_reduction "
        "checkpoint_every report_to"
    ).split() + MEMORY_FIELDS
    if args.resolution is None:  # the model's native size where it can be told without loading it
        from .models import check_model_reference, default_resolution

        check_model_reference(args.model or DEFAULT_MODEL)
        args.resolution = default_resolution(args.model or DEFAULT_MODEL)
    config = ExtractConfig.from_preset(args.preset, **{name: getattr(args, name) for name in fields})
    if args.low_vram:
        _print_low_vram_choices(args)
    source = Path(args.input)
    if not source.exists():
        raise BreakASceneError(f"{source} not found; give a folder with img.* and mask*.png, or a photo plus --mask")
    check_clear_of_inputs(args.out, [("scene folder" if source.is_dir() else "photo", source)]
                          + [("mask", mask) for mask in args.mask or []] + _local_models(args))
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
    write_masks = None
    if made is not None:  # saved inside the run folder before it appears, never after
        def write_masks(folder: Path) -> None:
            _write_masks(folder / "masks", source, photo, made, overwrite=True)
    result = extract(scene, config, args.out, overwrite=args.overwrite, resume=args.resume,
                     progress=not args.quiet, write_extra=write_masks)
    print(f"handles {' '.join(result.tokens)} written to {result.out}")
    scores = result.attention_scores.get(config.phases[-1][0])
    if scores:
        inside = ", ".join(f"{t} {row[i]:.2f}" for i, (t, row) in enumerate(zip(result.tokens, scores)))
        print(f"attention inside own mask: {inside}  (maps in {result.out / 'attention'})")
    print(f'try: break-a-scene generate {result.out} "a photo of {result.tokens[0]} at the beach"')
    return 0


def _local_models(args) -> list[tuple[str, Path]]:
    """The model folders or files of the command that exist on disk (Hub ids are not paths)."""
    found = []
    for what, name in (("model", "model"), ("SAM model", "sam_model"), ("detector model", "detector_model")):
        value = getattr(args, name, None)
        if value and Path(value).expanduser().exists():
            found.append((what, Path(value).expanduser()))
    return found


def _segment_for_extract(args, source: Path, config):
    """Makes the masks of extract's --text-masks/--points/--boxes: all checks first, then the models."""
    from .errors import RunError
    from .scene import load_scene
    from .segment import check_request, make_masks, open_photo

    request = _mask_request(args, args.points, args.boxes, args.text_masks)
    check_request(request)
    config.validate()
    out = Path(args.out)
    if out.exists() and not args.overwrite and not args.resume:
        raise RunError(f"{out} already exists; pass --overwrite to replace it or choose another --out")
    photo = open_photo(source)
    made = make_masks(photo, request)
    _report_masks(made, made.labels)
    return made, photo, load_scene(source, made.masks_as_images(), config.resolution)


def _named_after_phrases(args, config, made):
    """Handles of text masks are named after their phrases ("red shirt" -> <red_shirt>) unless --names is given."""
    import dataclasses

    from .segment import phrase_name

    if args.names is not None or not any(made.labels):
        return config
    names = [phrase_name(p) for p in made.labels]
    init_words = config.init_words if config.init_words is not None else list(made.labels)
    return dataclasses.replace(config, names=names, init_words=init_words)


def _generation_options() -> argparse.ArgumentParser:
    """Flags shared by ``generate`` and ``variations``."""
    common = argparse.ArgumentParser(add_help=False)
    g = common.add_argument_group("generation")
    g.add_argument("--num-images", type=int, default=None, help="images per prompt (default: 1; variations: 4)")
    g.add_argument("--seed", type=int, default=0, help="seed of the first image; image i uses seed+i (default: 0)")
    g.add_argument("--steps", type=int, default=50, help="denoising steps (default: 50)")
    g.add_argument("--guidance", type=finite_float, default=7.5, help="classifier-free guidance scale (default: 7.5)")
    g.add_argument("--negative", help="negative prompt")
    g.add_argument("--scheduler", default="default", metavar="{default,ddim,dpm}",
                   help="sampler: default (the run's saved scheduler), ddim (DDIM, as the research code), "
                   "dpm (DPM-Solver++ multistep) (default: default)")
    g.add_argument("--height", type=int, help="image height in px (default: the run's resolution)")
    g.add_argument("--width", type=int, help="image width in px (default: the run's resolution)")
    g.add_argument("--dtype", default="fp32", metavar="{fp32,fp16,bf16}",
                   help="weights and compute precision; fp16 needs a GPU (default: fp32)")
    g.add_argument("--batch-size", type=int, metavar="N", help="images per pipeline call, each with its own seed "
                   "(default: all images of a prompt on a GPU, 1 on CPU)")
    g.add_argument("--attention-maps", action="store_true",
                   help="also save NAME-attention.png: where each handle of the prompt looks in the image")
    g.add_argument("--no-grid", dest="grid", action="store_false", help="do not write the contact sheet grids/grid.png")
    g.add_argument("--device", help="cuda, mps or cpu (default: cuda if available, else mps, else cpu)")
    g.add_argument("--overwrite", action="store_true", help="replace images of the same prompt and seed (and grid.png)")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    return common


def _generation_kwargs(args) -> dict:
    return dict(
        seed=args.seed, steps=args.steps, guidance=args.guidance, negative=args.negative, height=args.height,
        width=args.width, device=args.device, overwrite=args.overwrite, progress=not args.quiet,
        scheduler=args.scheduler, dtype=args.dtype, batch_size=args.batch_size, grid=args.grid,
        attention_maps=args.attention_maps,
    )


def add_generate_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "generate", parents=[_common(), _generation_options()], help="generate images with a finished run's handles",
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
    from .errors import ConfigError
    from .generation import generate, read_prompts_file
    from .handles import HANDLE_PATTERN, handles_meant
    from .run_folder import read_scene_json

    tokens = [h["token"] for h in read_scene_json(args.run)["handles"]]
    prompts = list(args.prompts) + (read_prompts_file(args.prompts_file) if args.prompts_file else [])
    if not prompts:
        raise ConfigError("no prompt given; pass prompts after RUN or --prompts-file FILE")
    for prompt in prompts:  # before the wait, so that a mistyped prompt can be stopped at once
        if not HANDLE_PATTERN.search(prompt):
            meant = handles_meant(prompt, tokens)
            hint = f"; did you mean {' or '.join(meant)}?" if meant else ""
            print(f"note: {prompt!r} uses no handle, so it shows what the fine-tuned model makes of plain text{hint}")
    images = generate(args.run, prompts, num_images=args.num_images or 1, out=args.out, **_generation_kwargs(args))
    for image in images:
        print(image.path)
    return 0


def add_variations_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "variations", parents=[_common(), _generation_options()],
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
    from .generation import variations

    images = variations(args.run, num_images=args.num_images or 4, with_background=args.with_background,
                        out=args.out, **_generation_kwargs(args))
    if images:
        print(f"prompt: {images[0].prompt}")
    for image in images:
        print(image.path)
    return 0


def add_export_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "export", parents=[_common()], help="export the handles (textual inversion) or the pipeline (diffusers)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Export a finished run for other tools.\n\n"
        "  textual-inversion: one <name>.safetensors per handle (pipe.load_textual_inversion(file) loads it), "
        "handles.safetensors (N, dim) + tokens.txt, and README.md with the loading code. The handles were "
        "trained with the run's fine-tuned UNet/text encoder and look right only with them.\n"
        "  diffusers: a copy of the run's pipeline folder as safetensors (--fp16: fp16 variant) to share.\n\n"
        "examples:\n  break-a-scene export RUN --format textual-inversion --out RUN-ti\n"
        "  break-a-scene export RUN --format diffusers --fp16 --out RUN-fp16 --push-to-hub me/my-scene",
    )
    p.add_argument("run", help="a finished run folder (written by extract)")
    p.add_argument("--format", default="textual-inversion", metavar="{textual-inversion,diffusers}",
                   help="what to write (default: textual-inversion)")
    p.add_argument("--out", required=True, metavar="DIR", help="folder to write; it appears only when complete")
    p.add_argument("--fp16", action="store_true", help="diffusers: save fp16 weights as the fp16 variant")
    p.add_argument("--push-to-hub", metavar="REPO_ID", help="also upload DIR to this Hub repo (needs `hf auth login`)")
    p.add_argument("--private", action="store_true", help="--push-to-hub: create the repo private")
    p.add_argument("--overwrite", action="store_true", help="replace an existing DIR")
    p.set_defaults(func=run_export)
    return p


def run_export(args) -> int:
    from .exports import export

    out = export(args.run, args.out, format=args.format, fp16=args.fp16, overwrite=args.overwrite,
                 push_to_hub=args.push_to_hub, private=args.private)
    print(f"{args.format} export written to {out} (see {out / 'README.md'})")
    if args.push_to_hub:
        print(f"uploaded to https://huggingface.co/{args.push_to_hub}")
    return 0


def add_edit_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "edit",
        parents=[_common()],
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
    p.add_argument("image", help="the photo to edit (kept at its size, rounded to multiples of 8)")
    p.add_argument("--region", nargs=2, action="append", required=True, metavar=("MASK", "PROMPT"),
                   help="a region mask and the prompt for it (repeat; applied in order)")
    p.add_argument("--out", help="output folder (default: a new numbered folder RUN/edits/NNN-<image stem>)")
    p.add_argument("--seed", type=int, default=0, help="seed of region 1; region i uses seed+i-1 (default: 0)")
    p.add_argument("--steps", type=int, default=50, help="DDIM steps (default: 50)")
    p.add_argument("--guidance", type=finite_float, default=7.5, help="classifier-free guidance scale (default: 7.5)")
    p.add_argument("--blend-start", type=finite_float, default=0.25,
                   help="fraction of the steps skipped: start from the photo noised to that step (default: 0.25)")
    p.add_argument("--device", help="cuda, mps or cpu (default: cuda if available, else mps, else cpu)")
    p.add_argument("--overwrite", action="store_true", help="replace outputs already in the output folder")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run_edit)
    return p


def run_edit(args) -> int:
    from .editing import edit

    paths = edit(
        args.run, args.image, [tuple(region) for region in args.region], seed=args.seed, steps=args.steps,
        guidance=args.guidance, blend_start=args.blend_start, out=args.out, overwrite=args.overwrite,
        device=args.device, progress=not args.quiet,
    )
    for path in paths:
        print(path)
    return 0


def add_bench_parser(subparsers) -> argparse.ArgumentParser:
    from .bench import DEFAULT_BENCH_MODEL, OPTIONS, RANDOM_MODELS

    p = subparsers.add_parser(
        "bench",
        parents=[_common()],
        help="measure s/step and peak memory of both phases, for several configurations side by side",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Measure what a training step costs: median s/step and peak memory (CUDA allocator peak, or "
        "peak RSS on the CPU) of phase 1 and phase 2, and the projected time of a full 400 + 400-step run. By "
        f"default the model is {DEFAULT_BENCH_MODEL}: the full-size architecture with random weights (nothing is "
        "downloaded; it costs what the real model costs). --compare measures several configurations in one "
        "process, one after the other, and prints ratios over the first.\n\nexamples:\n"
        "  break-a-scene bench                                  # the paper's settings, on cuda if there is one\n"
        "  break-a-scene bench --compare explicit-everywhere default lora low-vram --mixed-precision bf16\n"
        "  break-a-scene bench --model builtin:tiny --resolution 128 --steps 1 --json   # a quick self-test",
    )
    p.add_argument("--model", default=DEFAULT_BENCH_MODEL, metavar="ID_OR_DIR",
                   help=f"{', '.join(RANDOM_MODELS)} (random weights), builtin:tiny, or a real model like extract's "
                   f"--model (default: {DEFAULT_BENCH_MODEL})")
    p.add_argument("--compare", nargs="+", default=["default"], metavar="CONFIG",
                   help=f"configurations to measure, in order; join options with '+' (e.g. lora+bf16). Known: "
                   f"{', '.join(OPTIONS)} (default: default)")
    p.add_argument("--device", help="cuda, cuda:1, mps or cpu (default: cuda if available, else mps, else cpu)")
    p.add_argument("--resolution", type=int, default=512, help="square training size in px (default: 512)")
    p.add_argument("--steps", type=int, default=3, help="measured steps per phase (default: 3)")
    p.add_argument("--warmup", type=int, default=1, help="steps run first and not counted (default: 1; use more with --compile)")
    p.add_argument("--phases", type=int, nargs="+", choices=(1, 2), default=[1, 2], help="which phases (default: 1 2)")
    p.add_argument("--threads", type=int, help="torch.set_num_threads on the CPU (default: PyTorch's choice)")
    p.add_argument("--profile", action="store_true", help="print the ops that took the most time in each phase (torch.profiler)")
    p.add_argument("--json", nargs="?", const="-", default=None, metavar="PATH",
                   help="write the report as JSON to PATH, or to stdout without PATH (the table then goes to stderr)")
    _memory_options(p)
    p.set_defaults(func=run_bench)
    return p


def run_bench(args) -> int:
    import json

    import torch

    from .bench import compare, format_report, parse_configuration
    from .recipe import resolve_device

    if args.steps < 1 or args.warmup < 0:
        raise BreakASceneError("--steps must be >= 1 and --warmup >= 0")
    for name in args.compare:
        parse_configuration(name)  # unknown names fail before anything is built
    if args.threads:
        torch.set_num_threads(args.threads)
    base = {name: getattr(args, name) for name in MEMORY_FIELDS if getattr(args, name) is not None}
    device = resolve_device(ExtractConfig(device=args.device))
    log = (lambda line: print(line, file=sys.stderr, flush=True))
    report = compare(args.compare, base, model=args.model, device=device, resolution=args.resolution,
                     steps=args.steps, warmup=args.warmup, phases=sorted(set(args.phases)), profile=args.profile,
                     progress=log)
    table = format_report(report)
    for result in report["results"]:
        for phase, numbers in result.get("phases", {}).items():
            if "profile" in numbers:
                log(f"[bench] {result['name']} {phase}: where the time goes\n{numbers['profile']}")
    if args.json == "-":
        print(table, file=sys.stderr)
        print(json.dumps(report, indent=2))
    else:
        print(table)
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


def add_env_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("env", parents=[_common()], help="print versions and devices, for bug reports")
    p.set_defaults(func=run_env)
    return p


def run_env(args) -> int:
    import torch

    from .recipe import library_versions

    for name, version in library_versions().items():
        print(f"- {name}: {version}")
    print(f"- cuda available: {torch.cuda.is_available()}")
    if torch.cuda.is_available():
        print(f"- gpu: {torch.cuda.get_device_name()}")
    return 0


def add_ui_parser(subparsers) -> argparse.ArgumentParser:
    from .segment import DEFAULT_DETECTOR_MODEL, DEFAULT_SAM_MODEL

    p = subparsers.add_parser(
        "ui", parents=[_common()], help="the web app: paint or click masks, train with live progress, generate, edit",
        description="Start the web app (gradio; pip install 'break-a-scene[ui]'). It listens on 127.0.0.1 only, "
        "unless --host or --share asks otherwise. See docs/ui.md.",
    )
    p.add_argument("--model", help=f"base model preselected in the Extract tab (default: {DEFAULT_MODEL})",
                   metavar="ID_OR_DIR")
    p.add_argument("--port", type=int, default=7860, help="port to listen on (default: 7860)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on; anything but loopback lets other "
                   "machines in, without a login (default: 127.0.0.1)")
    p.add_argument("--share", action="store_true", help="also make a public gradio.live link (anyone with it can use the app)")
    p.add_argument("--runs-dir", default="runs", metavar="DIR", help="where runs are written and listed (default: runs)")
    p.add_argument("--sam-model", default=DEFAULT_SAM_MODEL, metavar="ID_OR_DIR", help=f"SAM model for clicks and boxes (default: {DEFAULT_SAM_MODEL})")
    p.add_argument("--detector-model", default=DEFAULT_DETECTOR_MODEL, metavar="ID_OR_DIR",
                   help=f"OWLv2 model for text masks (default: {DEFAULT_DETECTOR_MODEL})")
    p.set_defaults(func=run_ui)
    return p


def run_ui(args) -> int:
    try:  # gradio is an optional extra and slow to import, so only this command imports it
        from .ui import serve
    except ImportError as error:
        raise BreakASceneError(f"the web app needs gradio ({error}); install it with pip install 'break-a-scene[ui]'") from error
    return serve(args.model, args.host, args.port, args.share, args.runs_dir, args.sam_model, args.detector_model)


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = OneLineErrorParser(
        prog="break-a-scene",
        description="Extract text handles for the concepts of one photo (Break-A-Scene) and generate with them.",
    )
    parser.add_argument("--version", action="version", version=f"break-a-scene {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    add_extract_parser(subparsers)
    add_masks_parser(subparsers)
    add_generate_parser(subparsers)
    add_variations_parser(subparsers)
    add_export_parser(subparsers)
    add_edit_parser(subparsers)
    add_env_parser(subparsers)
    add_ui_parser(subparsers)
    from .evaluation.cli import add_eval_parser  # argparse only; pycocotools, metric models, matplotlib load per step

    add_eval_parser(subparsers, _common)
    add_bench_parser(subparsers)
    return parser


def _one_line_warnings(message, category, filename, lineno, file=None, line=None):
    print(f"warning: {message}", file=sys.stderr)


def _interrupt_hint(args) -> str:
    """What an interrupted command kept: for extract, whether there is a checkpoint to --resume from."""
    if args.command != "extract":
        return ""
    from .run_folder import CHECKPOINT_DIR, partial_path

    partial = partial_path(Path(args.out))
    if (partial / CHECKPOINT_DIR / "state.json").is_file():
        return f"; continue with the same command plus --resume (the last checkpoint is kept in {partial})"
    if args.checkpoint_every:
        return "; nothing was saved: it stopped before its first checkpoint; run the same command again"
    return "; nothing was saved: a run keeps progress only with --checkpoint-every N (then --resume continues it)"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_BAD_INPUT
    from .quiet import quiet_libraries

    quiet_libraries()
    warnings.showwarning = _one_line_warnings
    # Library deprecation chatter is not the user's business; our own warnings are UserWarnings.
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    try:
        return args.func(args)
    except BreakASceneError as error:
        if args.debug:
            raise
        print(f"error: {' '.join(str(error).split())}", file=sys.stderr)  # one line, whatever a message holds
        return error.exit_code
    except KeyboardInterrupt:
        print(f"interrupted{_interrupt_hint(args)}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as error:  # noqa: BLE001 - the last line of defence: one line, not a traceback
        if args.debug:
            raise
        from .failures import describe_failure

        message, code = describe_failure(error, resumable=args.command == "extract")
        print(f"error: {message}", file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
