"""``break-a-scene ui``: start the web app."""

from __future__ import annotations

import argparse

from ..config import DEFAULT_MODEL
from ..errors import BreakASceneError
from .shared import common_options


def add_ui_parser(subparsers) -> argparse.ArgumentParser:
    from ..segmentation.loading import DEFAULT_DETECTOR_MODEL, DEFAULT_SAM_MODEL

    p = subparsers.add_parser(
        "ui", parents=[common_options()], help="the web app: paint or click masks, train with live progress, generate, edit",
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
        from ..ui.app import serve
    except ImportError as error:
        raise BreakASceneError(f"the web app needs gradio ({error}); install it with pip install 'break-a-scene[ui]'") from error
    return serve(args.model, args.host, args.port, args.share, args.runs_dir, args.sam_model, args.detector_model)

