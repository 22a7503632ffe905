"""``break-a-scene export``: the handles as textual inversion, or the pipeline as a diffusers folder."""

from __future__ import annotations

import argparse

from .shared import common_options


def add_export_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "export", parents=[common_options()], help="export the handles (textual inversion) or the pipeline (diffusers)",
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
    from ..inference.exports import export

    out = export(args.run, args.out, format=args.format, fp16=args.fp16, overwrite=args.overwrite,
                 push_to_hub=args.push_to_hub, private=args.private)
    print(f"{args.format} export written to {out} (see {out / 'README.md'})")
    if args.push_to_hub:
        print(f"uploaded to https://huggingface.co/{args.push_to_hub}")
    return 0

