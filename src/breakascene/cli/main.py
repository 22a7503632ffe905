"""The ``break-a-scene`` command: the top-level parser, and the one way every command ends.

Each command is a small module of this package over the library's functions (:mod:`.extract`, :mod:`.masks`,
:mod:`.generate` with ``variations``, :mod:`.export`, :mod:`.edit`, :mod:`.env`, :mod:`.ui`, :mod:`.evaluate`,
:mod:`.bench`, :mod:`.world`; the flags several share are in :mod:`.shared`). Bad input ends with one line on stderr and exit
status 2; an unexpected failure with one line and status 1 (``--debug`` shows the traceback); Ctrl-C with
status 130 and a hint to ``--resume``.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

# Keep the libraries from importing bitsandbytes, which prints on import, until 8-bit Adam is asked for (importing
# the package has already quietened their import-time chatter: breakascene.quiet).
from ..training import optional_bnb  # noqa: E402

optional_bnb.hide()

from ..errors import BreakASceneError  # noqa: E402
from .arguments import EXIT_BAD_INPUT, OneLineErrorParser  # noqa: E402
from .bench import add_bench_parser  # noqa: E402
from .edit import add_edit_parser  # noqa: E402
from .env import add_env_parser  # noqa: E402
from .export import add_export_parser  # noqa: E402
from .extract import add_extract_parser  # noqa: E402
from .generate import add_generate_parser, add_variations_parser  # noqa: E402
from .masks import add_masks_parser  # noqa: E402
from .ui import add_ui_parser  # noqa: E402
from .world import add_world_parser  # noqa: E402

EXIT_INTERRUPTED = 130


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

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
    from .evaluate import add_eval_parser  # argparse only; pycocotools, metric models, matplotlib load per step

    add_eval_parser(subparsers)
    add_bench_parser(subparsers)
    add_world_parser(subparsers)
    return parser


def _one_line_warnings(message, category, filename, lineno, file=None, line=None):
    print(f"warning: {message}", file=sys.stderr)


def _interrupt_hint(args) -> str:
    """What an interrupted command kept: for extract, whether there is a checkpoint to --resume from."""
    if args.command != "extract":
        return ""
    from ..run_folder import CHECKPOINT_DIR, partial_path

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
    from ..quiet import quiet_libraries

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
        from ..failures import describe_failure

        message, code = describe_failure(error, resumable=args.command == "extract")
        print(f"error: {message}", file=sys.stderr)
        return code

