"""``break-a-scene masks``: concept masks with SAM from points, boxes, phrases or automatically."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..run_folder import check_clear_of_inputs
from .arguments import finite_float
from .shared import BOX_HELP, POINT_HELP, common_options, local_models, mask_request, report_masks, segment_options, write_masks


def add_masks_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "masks",
        parents=[common_options(), segment_options("--text")],
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
    from ..errors import RunError
    from ..scene_folder import is_scene_file

    if out.exists() and not out.is_dir():
        raise RunError(f"{out} exists and is not a folder; choose another --out")
    if out.is_dir() and not overwrite:
        held = sorted(p.name for p in out.iterdir() if is_scene_file(p) or p.name == "preview.png")
        if held:
            raise RunError(f"{out} already holds {', '.join(held[:4])}; choose another --out or pass --overwrite")


def run_masks(args) -> int:
    from ..segmentation.make import make_masks, open_photo
    from ..segmentation.prompts import check_request

    source, out = Path(args.input), Path(args.out)
    request = mask_request(args, args.point, args.box, args.text, args.auto)
    check_request(request)  # malformed prompts fail before the photo or any model is opened
    check_clear_of_inputs(out, [("photo", source)] + local_models(args))
    photo = open_photo(source)
    _check_mask_folder(out, args.overwrite)
    result = make_masks(photo, request)
    report_masks(result, result.labels)
    if out.exists():  # a folder of the user's: only the layout's files (and preview.png) are replaced
        write_masks(out, source, photo, result, args.overwrite)
    else:
        from ..run_folder import written_atomically

        with written_atomically(out) as partial:
            write_masks(partial, source, photo, result, args.overwrite)
    print(f"{len(result.masks)} masks written to {out} (check {out / 'preview.png'}); "
          f"next: break-a-scene extract {out} --out RUN")
    return 0

