"""Argument parsing pieces shared by every ``break-a-scene`` subcommand: one-line usage errors, finite numbers."""

from __future__ import annotations

import argparse
import difflib
import math
import sys

from ..errors import BreakASceneError, RunFailure

EXIT_BAD_INPUT = BreakASceneError.exit_code
EXIT_FAILURE = RunFailure.exit_code


class OneLineErrorParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors are one line on stderr (exit 2), not argparse's usage block.

    Subparsers made with ``add_subparsers().add_parser`` are of the parent's class, so setting it on the top
    parser covers every subcommand.
    """

    def error(self, message: str):  # noqa: D102 - argparse's hook
        print(f"error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)

    def parse_args(self, args=None, namespace=None):  # noqa: D102
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:  # argparse would only list them, from the top-level parser
            command = _innermost(self, parsed)
            command.error(unrecognized_message(command, extras))
        return parsed


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:  # noqa: SLF001 - argparse keeps its actions here and nowhere public
        if isinstance(action, argparse._SubParsersAction):  # noqa: SLF001
            return dict(action.choices)
    return {}


def _innermost(parser: argparse.ArgumentParser, parsed: argparse.Namespace) -> argparse.ArgumentParser:
    """The subcommand's parser the arguments went to (``eval run`` is two levels deep)."""
    for value in vars(parsed).values():
        sub = _subcommands(parser).get(value) if isinstance(value, str) else None
        if sub is not None:
            return _innermost(sub, parsed)
    return parser


def unrecognized_message(parser: argparse.ArgumentParser, extras: list[str]) -> str:
    """"unrecognized argument --phase1_steps; did you mean --phase1-steps?" for the first unknown argument."""
    options = [e for e in extras if e.startswith("-")] or extras  # a stray option's value is not news
    message = f"unrecognized argument{'s' if len(options) > 1 else ''} {' '.join(options)}"
    known = [o[2:] for a in parser._actions for o in a.option_strings if o.startswith("--")]  # noqa: SLF001
    if options[0].startswith("--"):
        typed = options[0][2:].split("=")[0].replace("_", "-").lower()
        guess = difflib.get_close_matches(typed, known, n=1, cutoff=0.6)
        if guess:
            message += f"; did you mean --{guess[0]}?"
    return message


def finite_float(text: str) -> float:
    """``type=`` for float flags: a number, and not NaN or infinite (NaN slips through every range check)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value
