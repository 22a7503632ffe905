"""The prompt set of the evaluation: the paper's 10 templates x every non-empty subset of a scene's handles.

The templates are App. B.2's list, verbatim. ``{tokens}`` becomes the subset's handles joined by " and " (as
in training, ``union_sampling.build_prompt``), in the scene's concept order. The background handle ``<bg>`` is
not a concept and never enters the set. For prompt similarity every handle is replaced by its class name with
an indefinite article ("a photo of <asset0> at the beach" -> "a photo of a cat at the beach", App. B.2).
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass

from ..errors import ConfigError

TEMPLATES = (
    "a photo of {tokens} at the beach",
    "a photo of {tokens} in the jungle",
    "a photo of {tokens} in the snow",
    "a photo of {tokens} in the street",
    "a photo of {tokens} on top of a pink fabric",
    "a photo of {tokens} on top of a wooden floor",
    "a photo of {tokens} with a city in the background",
    "a photo of {tokens} with a mountain in the background",
    "a photo of {tokens} with the Eiffel tower in the background",
    "a photo of {tokens} floating on top of water",
)
"""App. B.2 of the paper, in its order."""


@dataclass(frozen=True)
class PromptItem:
    """One prompt of a scene's set."""

    index: int  # position in the scene's prompt set
    template: int  # index into the templates
    subset: tuple[int, ...]  # concept indices, ascending
    prompt: str  # with handles, for generation
    class_prompt: str  # handles replaced by "a <class>", for CLIP

    def record(self) -> dict:
        data = asdict(self)
        data["subset"] = list(self.subset)
        return data


def nonempty_subsets(n: int) -> list[tuple[int, ...]]:
    """Every non-empty subset of ``range(n)``, by size then lexicographically: n=2 -> (0,), (1,), (0, 1)."""
    return [s for k in range(1, n + 1) for s in itertools.combinations(range(n), k)]


def with_article(name: str) -> str:
    """``"cat"`` -> ``"a cat"``, ``"umbrella"`` -> ``"an umbrella"`` (by the first letter: a, e, i, o, u)."""
    name = name.strip()
    return f"{'an' if name[:1].lower() in 'aeiou' else 'a'} {name}"


def fill(template: str, words: list[str]) -> str:
    return template.format(tokens=" and ".join(words))


def prompt_set(tokens: list[str], class_names: list[str], templates: tuple[str, ...] | list[str] = TEMPLATES) -> list[PromptItem]:
    """The scene's prompts: for each subset (outer loop) each template (inner loop).

    Args:
        tokens: the concept handles in concept order (``["<asset0>", "<asset1>"]``), no ``<bg>``.
        class_names: the class of each concept, same order.
        templates: format strings with one ``{tokens}`` field.

    Returns:
        ``len(templates) * (2**N - 1)`` items, numbered in order.
    """
    if len(tokens) != len(class_names):
        raise ConfigError(f"{len(tokens)} handles but {len(class_names)} class names")
    if not tokens:
        raise ConfigError("a scene without concept handles has no prompt set")
    for template in templates:
        if "{tokens}" not in template:
            raise ConfigError(f"template {template!r} has no {{tokens}} field")
    items = []
    for subset in nonempty_subsets(len(tokens)):
        for t, template in enumerate(templates):
            items.append(
                PromptItem(
                    index=len(items),
                    template=t,
                    subset=subset,
                    prompt=fill(template, [tokens[i] for i in subset]),
                    class_prompt=fill(template, [with_article(class_names[i]) for i in subset]),
                )
            )
    return items


def choose_templates(count: int | None) -> tuple[str, ...]:
    """The first ``count`` templates (all 10 by default): ``--templates 2`` makes a quick, smaller set."""
    if count is None:
        return TEMPLATES
    if not 1 <= count <= len(TEMPLATES):
        raise ConfigError(f"--templates must be in 1..{len(TEMPLATES)}, got {count}")
    return TEMPLATES[:count]
