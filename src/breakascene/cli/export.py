"""``break-a-scene export``: the handles as textual inversion, or the pipeline as a diffusers folder."""

from __future__ import annotations

import argparse

from .shared import common_options


def add_export_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "export", parents=[common_options()],
        help="export the run for diffusers, ComfyUI, A1111/Forge or kohya (weights + one embedding per handle)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Export a finished run for other tools.\n\n"
        "  textual-inversion: one <name>.safetensors per handle (pipe.load_textual_inversion(file) loads it), "
        "handles.safetensors (N, dim) + tokens.txt, and README.md with the loading code. The handles were "
        "trained with the run's fine-tuned UNet/text encoder and look right only with them.\n"
        "  diffusers: a copy of the run's pipeline folder as safetensors (--fp16: fp16 variant) to share.\n"
        "  comfyui, a1111, kohya: what those tools load, in their folder trees (kohya: flat): a single-file "
        "checkpoint (a full run) or a LoRA with WebUI keys (a --lora-rank run), plus one embedding per handle "
        "whose file name, NAME_<handle>, is its trigger word; README.md says where each file goes.\n\n"
        "examples:\n  break-a-scene export RUN --format textual-inversion --out RUN-ti\n"
        "  break-a-scene export RUN --format comfyui --name pets --out pets-comfy\n"
        "  break-a-scene export RUN --format diffusers --fp16 --out RUN-fp16 --push-to-hub me/my-scene",
    )
    p.add_argument("run", help="a finished run folder (written by extract)")
    p.add_argument("--format", default="textual-inversion", metavar="{textual-inversion,diffusers,comfyui,a1111,kohya}",
                   help="what to write (default: textual-inversion)")
    p.add_argument("--out", required=True, metavar="DIR", help="folder to write; it appears only when complete")
    p.add_argument("--fp16", action="store_true",
                   help="save the weights in fp16 (diffusers: as the fp16 variant); embeddings stay fp32")
    p.add_argument("--name", help="comfyui/a1111/kohya: the files' name and trigger-word prefix (default: the run "
                   "folder's name)")
    p.add_argument("--push-to-hub", metavar="REPO_ID", help="also upload DIR to this Hub repo (needs `hf auth login`)")
    p.add_argument("--private", action="store_true", help="--push-to-hub: create the repo private")
    p.add_argument("--overwrite", action="store_true", help="replace an existing DIR")
    p.set_defaults(func=run_export)
    return p


def run_export(args) -> int:
    from ..inference.exports import export

    out = export(args.run, args.out, format=args.format, fp16=args.fp16, overwrite=args.overwrite,
                 push_to_hub=args.push_to_hub, private=args.private, name=args.name)
    print(f"{args.format} export written to {out} (see {out / 'README.md'})")
    if args.push_to_hub:
        print(f"uploaded to https://huggingface.co/{args.push_to_hub}")
    return 0

