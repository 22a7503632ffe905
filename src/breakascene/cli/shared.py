"""Parser pieces several commands share: ``--debug``, the segmentation flags, the speed and memory flags, and
the mask-making steps of ``masks`` and ``extract``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .arguments import finite_float


def common_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show full tracebacks instead of one-line errors")
    return common


POINT_HELP = (
    "a point x,y in photo pixels (x right, y down) gives one mask; join points with '+' (on the concept) or "
    "'-' (off it) for one mask from several: 120,80+200,90-50,60"
)


BOX_HELP = "a box x0,y0,x1,y1 in photo pixels gives one mask"


def segment_options(text_flag: str) -> argparse.ArgumentParser:
    """Flags shared by ``masks`` and ``extract``: which models, detection threshold, mask clean-up."""
    from ..segmentation.loading import DEFAULT_DETECTOR_MODEL, DEFAULT_SAM_MODEL

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


def mask_request(args, points=(), boxes=(), text=None, auto=False):
    from ..segmentation.prompts import MaskRequest

    return MaskRequest(
        points=points or (), boxes=boxes or (), text=text, auto=auto, sam_model=args.sam_model,
        detector_model=args.detector_model, detection_threshold=args.detection_threshold,
        max_masks=getattr(args, "max_masks", 4), min_area=getattr(args, "min_area", 0.01),
        points_per_side=getattr(args, "points_per_side", 16), dilate=args.dilate, erode=args.erode,
        fill_holes=args.fill_holes, largest_component=args.largest_component, device=args.device,
    )


def report_masks(result, names: list[str]) -> None:
    """Scores of text masks, then mask_tools' stats lines (warnings on stderr)."""
    from ..segmentation.stats import describe_stats, mask_stats

    for label, score in zip(result.labels, result.scores or []):
        print(f"{label}: score {score:.2f}")
    stats, overlap = mask_stats(result.masks, names)
    for line in describe_stats(stats, overlap):
        print(line, file=sys.stderr if line.startswith("warning:") else sys.stdout)


def write_masks(folder: Path, photo_path: Path, photo, result, overwrite: bool) -> None:
    """A scene folder (img.<suffix>: the photo, copied; mask0.png ...; mask_names.txt for text masks) plus
    preview.png."""
    from ..segmentation.preview import preview
    from ..scene_folder import write_scene_folder

    names = result.labels if any(result.labels) else None
    write_scene_folder(folder, photo_path, result.masks, names, overwrite=overwrite)
    labels = [f"mask{i}" + (f" {n}" if n else "") for i, n in enumerate(result.labels)]
    preview(photo, result.masks, labels).save(folder / "preview.png")


def memory_options(p: argparse.ArgumentParser) -> None:
    """Speed and memory flags, shared by ``extract`` and ``bench`` (docs/performance.md has their costs)."""
    g = p.add_argument_group("speed and memory")
    g.add_argument("--mixed-precision", choices=["no", "fp16", "bf16"], help="autocast compute in bf16/fp16; weights that "
                   "never train in the run are stored in it, what trains stays fp32 (default: no)")
    g.add_argument("--gradient-checkpointing", action="store_true", default=None, help="recompute activations in backward to save memory")
    g.add_argument("--use-8bit-adam", action="store_true", default=None, help="8-bit Adam from bitsandbytes (CUDA only): 4x smaller optimiser state")
    g.add_argument("--optimizer-in-backward", action="store_true", default=None,
                   help="step each parameter as soon as its gradient exists (torchtune's optimizer-in-backward): a full "
                   "phase 2 never holds the whole gradient buffer; not with --max-grad-norm or fp16")
    g.add_argument("--lora-rank", type=int, metavar="R", help="phase 2 trains rank-R LoRA adapters (peft) instead of the whole "
                   "UNet: small output, far less memory; not the paper's method (default: 0, full fine-tuning; FLUX.1: "
                   "16, and 0 trains the whole transformer)")
    g.add_argument("--lora-alpha", type=finite_float, help="LoRA scale numerator (default: the rank)")
    g.add_argument("--quantize-base", choices=["nf4"], help="load the UNet/transformer frozen in 4-bit NF4 (QLoRA, "
                   "bitsandbytes; CUDA only): a quarter of bf16's memory; needs --lora-rank (FLUX.1's default)")
    g.add_argument("--lora-text-encoder", action="store_true", default=None, help="with --lora-rank: LoRA on the text encoder too")
    g.add_argument("--compile", action="store_true", default=None, help="torch.compile the UNet (slow first steps, faster after; GPU)")
    g.add_argument("--no-tf32", dest="allow_tf32", action="store_false", default=None, help="strict fp32 matmuls on Ampere+ GPUs (TF32 is on by default)")
    g.add_argument("--low-vram", action="store_true", default=None, help="pick the options that fit a 12 GB GPU (bf16, "
                   "gradient checkpointing, 8-bit Adam, frozen text encoder in phase 2; SDXL: 16 GB, adds LoRA rank 4; "
                   "FLUX.1: 24 GB, adds an NF4 transformer); prints what it chose; flags given explicitly win")


MEMORY_FIELDS = ("mixed_precision gradient_checkpointing use_8bit_adam optimizer_in_backward lora_rank lora_alpha "
                 "lora_text_encoder quantize_base compile allow_tf32 low_vram").split()


def local_models(args) -> list[tuple[str, Path]]:
    """The model folders or files of the command that exist on disk (Hub ids are not paths)."""
    found = []
    for what, name in (("model", "model"), ("VAE", "vae"), ("SAM model", "sam_model"), ("detector model", "detector_model")):
        value = getattr(args, name, None)
        if value and Path(value).expanduser().exists():
            found.append((what, Path(value).expanduser()))
    return found

