"""Union sampling (paper Sec. 3): every step trains a random subset of the handles together.

The subset size k is uniform in 1..N and the k handles come in random order, as in the research code. The
background handle, when there is one, is simply one of the N: "a photo of <asset1> and <bg>" trains the
background and a concept together, with the union of their masks. That is what lets "a photo of a car at
<bg>" work later: <bg> has learned to share a picture with other things.
"""

from __future__ import annotations

import torch

PROMPT_TEMPLATE = "a photo of {}"
JOINER = " and "


def sample_subset(num_handles: int, generator: torch.Generator) -> list[int]:
    """A random non-empty subset of ``range(num_handles)`` in random order: k ~ U{1..N}, then k distinct indices."""
    k = int(torch.randint(1, num_handles + 1, (1,), generator=generator))
    return torch.randperm(num_handles, generator=generator)[:k].tolist()


def all_handles(num_handles: int) -> list[int]:
    """The subset used when union sampling is switched off (ablation): every handle, every step, in order."""
    return list(range(num_handles))


def build_prompt(tokens: list[str], template: str = PROMPT_TEMPLATE) -> str:
    """["<asset1>", "<bg>"] -> "a photo of <asset1> and <bg>"."""
    return template.format(JOINER.join(tokens))
