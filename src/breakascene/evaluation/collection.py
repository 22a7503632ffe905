"""The masked baselines' training set (paper Fig. 6): a small collection made from one image and its masks.

Each item pastes a random subset of the masked concepts, each *inside its own mask and at its own position*,
on a random solid colour, and with probability 1/2 mirrors the whole item (image and masks together). Its
caption is "a photo of [v_x] and [v_y]" over the present concepts (:func:`caption`). The subset is drawn like
union sampling: k ~ U{1..N}, then k distinct concepts. Everything comes from one ``torch.Generator`` seeded with
``seed``, so a seed always gives the same collection.

This is a pure function of tensors; TI-m, DB-m and CD-m train on its output.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import ConfigError
from ..union_sampling import build_prompt

DEFAULT_COLLECTION_SIZE = 10
"""The paper says "a small collection" without a size; 10 is our choice (``--collection-size``)."""


@dataclass
class CollectionItem:
    """One image of the collection.

    Attributes:
        image: (3, R, R) float in [0, 1]: the present concepts on a solid colour.
        masks: (N, R, R) float in {0, 1}: concept i's mask where i is present (flipped with the image), zeros
            where it is absent.
        present: the present concept indices, ascending.
        colour: (3,) the background colour, in [0, 1].
        flipped: whether the item was mirrored left-right.
    """

    image: torch.Tensor
    masks: torch.Tensor
    present: list[int]
    colour: torch.Tensor
    flipped: bool


def caption(tokens: list[str], present: list[int]) -> str:
    """"a photo of <asset0> and <asset2>" for ``present`` = [0, 2] (the research code's prompt form)."""
    return build_prompt([tokens[i] for i in present])


def paste(image: torch.Tensor, masks: torch.Tensor, present: list[int], colour: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The present concepts of ``image`` on a solid ``colour``.

    Args:
        image: (3, R, R) in [0, 1]. masks: (N, R, R), > 0.5 inside. present: concept indices. colour: (3,).

    Returns:
        (image (3, R, R), masks (N, R, R) float with absent concepts zeroed). Where present masks overlap the
        pixels are the photo's own, so the paste order does not matter.
    """
    keep = torch.zeros(masks.shape[0], dtype=torch.bool)
    keep[list(present)] = True
    out_masks = (masks > 0.5).float() * keep[:, None, None].float()
    union = out_masks.amax(dim=0, keepdim=True)  # (1, R, R)
    out_image = image * union + colour.view(3, 1, 1).to(image) * (1 - union)
    return out_image, out_masks


def build_collection(image: torch.Tensor, masks: torch.Tensor, seed: int, size: int = DEFAULT_COLLECTION_SIZE) -> list[CollectionItem]:
    """``size`` items made from one image (module docstring).

    Args:
        image: (3, R, R) float in [0, 1] (``Scene.image``).
        masks: (N, R, R) float, 1 inside each concept (``Scene.masks``; the background is not a concept).
        seed: seeds the subsets, colours and flips.
        size: number of items.

    Returns:
        ``size`` :class:`CollectionItem`.

    Raises:
        ConfigError: size < 1, no masks, or shapes that do not match.
    """
    if size < 1:
        raise ConfigError(f"--collection-size must be >= 1, got {size}")
    if image.ndim != 3 or image.shape[0] != 3:
        raise ConfigError(f"the image must be (3, R, R), got {tuple(image.shape)}")
    if masks.ndim != 3 or masks.shape[0] < 1 or masks.shape[1:] != image.shape[1:]:
        raise ConfigError(f"masks must be (N, {image.shape[1]}, {image.shape[2]}) with N >= 1, got {tuple(masks.shape)}")
    n = masks.shape[0]
    rng = torch.Generator().manual_seed(seed)
    items = []
    for _ in range(size):
        k = int(torch.randint(1, n + 1, (1,), generator=rng))
        present = sorted(torch.randperm(n, generator=rng)[:k].tolist())
        colour = torch.rand(3, generator=rng)
        flipped = bool(torch.rand(1, generator=rng) < 0.5)
        item_image, item_masks = paste(image.float(), masks.float(), present, colour)
        if flipped:
            item_image, item_masks = item_image.flip(-1), item_masks.flip(-1)
        items.append(CollectionItem(item_image, item_masks, present, colour, flipped))
    return items
