"""Names and prompts typed into the page: run names, handle names and init words, prompts with handles."""

from __future__ import annotations

import re
from typing import Sequence

from ..errors import ConfigError

RUN_NAME_LIMIT = 64


def sanitize_run_name(text: str | None) -> str:
    """A run name that is one plain folder name: letters, digits, ``-`` and ``_`` (others become ``-``).

    ``"my scene/../x"`` -> ``"my-scene-x"``. Dots are replaced too, so the result can never be ``..``, hidden,
    or end in ``.partial``.

    Raises:
        ConfigError: nothing usable is left.
    """
    name = re.sub(r"[^A-Za-z0-9_-]+", "-", str(text or "").strip())
    name = re.sub(r"-{2,}", "-", name).strip("-_")[:RUN_NAME_LIMIT].strip("-_")
    if not name:
        raise ConfigError("give the run a name (letters, digits, '-' and '_'), e.g. my-scene")
    return name


def parse_word_list(text: str | None, count: int, what: str, commas_only: bool = False) -> list[str] | None:
    """``"dog, red_shirt"`` or ``"dog red_shirt"`` -> ``["dog", "red_shirt"]``; empty text -> None (the default).

    With ``commas_only`` (init words, which may be phrases) only commas separate: ``"dog, red shirt"``.

    Raises:
        ConfigError: a number of words other than ``count`` (one per mask).
    """
    separators = r"\s*,\s*" if commas_only else r"[,\s]+"
    words = [w for w in re.split(separators, str(text or "").strip()) if w]
    if not words:
        return None
    if len(words) != count:
        listed = ", ".join(words)
        raise ConfigError(f"{count} masks but {len(words)} {what} ({listed}); give one per mask, in mask order")
    return words


def mask_labels(names_text: str | None, count: int) -> list[str]:
    """Labels for the preview and stats: the handle tokens, ``<asset0>``, ... unless the names parse."""
    try:
        names = parse_word_list(names_text, count, "names")
    except ConfigError:
        names = None
    return [f"<{n}>" for n in (names or [f"asset{i}" for i in range(count)])]


def insert_handle(prompt: str | None, token: str) -> str:
    """The prompt with ``token`` appended where the user is typing (at the end), separated by one space."""
    prompt = (prompt or "").rstrip()
    return f"{prompt} {token}" if prompt else token


def background_prompt(thing: str | None, tokens: Sequence[str], background_token: str = "<bg>") -> str:
    """``"a car"`` -> ``"a photo of a car at <bg>"``: something new in the learned background.

    Raises:
        ConfigError: the run has no background handle, or ``thing`` is empty.
    """
    if background_token not in tokens:
        raise ConfigError(f"this run has no {background_token} handle (it was trained with --no-background)")
    thing = (thing or "").strip()
    if not thing:
        raise ConfigError("say what to put into the background, e.g. 'a car' or '<asset0>'")
    return f"a photo of {thing} at {background_token}"


def split_prompts(text: str | None) -> list[str]:
    """One prompt per non-empty line."""
    prompts = [line.strip() for line in str(text or "").splitlines() if line.strip()]
    if not prompts:
        raise ConfigError("write a prompt first, e.g. 'a photo of <asset0> at the beach' (click a handle to insert it)")
    return prompts
