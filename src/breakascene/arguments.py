"""Argument parsing pieces shared by every ``break-a-scene`` subcommand: one-line usage errors, finite numbers."""

from __future__ import annotations

import argparse
import math
import sys

EXIT_BAD_INPUT = 2


class OneLineErrorParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors are one line on stderr (exit 2), not argparse's usage block.

    Subparsers made with ``add_subparsers().add_parser`` are of the parent's class, so setting it on the top
    parser covers every subcommand.
    """

    def error(self, message: str):  # noqa: D102 - argparse's hook
        print(f"error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)


def finite_float(text: str) -> float:
    """``type=`` for float flags: a number, and not NaN or infinite (NaN slips through every range check)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value
