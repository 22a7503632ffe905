"""Union sampling (paper Sec. 3): every step trains a random subset of the handles together.

Three ways to choose a step's handles (``ExtractConfig.subset_sampling``): ``union`` (:func:`sample_subset`, the
method), ``single`` (:func:`sample_single`, one handle per step: the paper's "w/o union sampling" ablation,
Sec. 4.1 and Fig. 7, "sampling a single concept at a time") and ``all`` (:func:`all_handles`, every handle
every step; not in the paper).

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


def sample_single(num_handles: int, generator: torch.Generator) -> list[int]:
    """One handle, uniform over ``range(num_handles)``: the paper's ablation without union sampling."""
    return [int(torch.randint(num_handles, (1,), generator=generator))]


def all_handles(num_handles: int) -> list[int]:
    """Every handle, every step, in order (``subset_sampling="all"``; not the paper's ablation)."""
    return list(range(num_handles))


def choose_handles(mode: str, num_handles: int, generator: torch.Generator) -> list[int]:
    """The handles one step trains, for ``subset_sampling`` = ``union`` | ``single`` | ``all``."""
    if mode == "union":
        return sample_subset(num_handles, generator)
    if mode == "single":
        return sample_single(num_handles, generator)
    if mode == "all":
        return all_handles(num_handles)
    raise ValueError(f"unknown subset sampling {mode!r}")


def build_prompt(tokens: list[str], template: str = PROMPT_TEMPLATE) -> str:
    """["<asset1>", "<bg>"] -> "a photo of <asset1> and <bg>"."""
    return template.format(JOINER.join(tokens))
