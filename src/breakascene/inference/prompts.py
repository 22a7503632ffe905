"""The prompts of generation and editing: handles a run has, prompts files, the variations prompt."""

from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError
from ..handles import HANDLE_PATTERN


def check_prompt_handles(prompt: str, tokens: list[str]) -> list[str]:
    """The handles a prompt uses; raises ConfigError for a ``<name>`` the run does not have."""
    used = HANDLE_PATTERN.findall(prompt)
    unknown = [t for t in used if t not in tokens]
    if unknown:
        raise ConfigError(f"unknown handle {unknown[0]} in {prompt!r}; this run has {', '.join(tokens)}")
    return used


def read_prompts_file(path: str | Path) -> list[str]:
    """One prompt per line; blank lines and lines starting with ``#`` are skipped. Raises ConfigError if none."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"prompts file {path} does not exist")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as error:
        raise ConfigError(f"prompts file {path} is not UTF-8 text ({error.reason})") from error
    prompts = [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
    if not prompts:
        raise ConfigError(f"prompts file {path} holds no prompt (one per line; lines starting with # are comments)")
    return prompts


def variations_prompt(tokens: list[str], background_tokens: list[str], with_background: bool = False) -> str:
    """"a photo of <asset0> and <asset1>" over the run's handles in order; ``<bg>`` only ``with_background``."""
    from ..union_sampling import build_prompt

    chosen = [t for t in tokens if with_background or t not in background_tokens]
    if not chosen:
        raise ConfigError("this run has no concept handle to make variations of; try --with-background")
    return build_prompt(chosen)
