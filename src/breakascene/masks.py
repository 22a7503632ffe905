"""Pure mask arithmetic: unions, the background complement, and resizing to the latent or attention grid.

Masks are float tensors in {0, 1}. Resizing to a coarser grid uses *area* interpolation, so a cell's value
is the fraction of its pixels the mask covers: a cell half inside a concept counts half in the masked
loss and is a 0.5 target for the attention loss, instead of nearest-neighbour's arbitrary 0 or 1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def union(masks: torch.Tensor) -> torch.Tensor:
    """(K, H, W) masks in {0, 1} -> (H, W) their union."""
    return masks.amax(dim=0)


def background(masks: torch.Tensor) -> torch.Tensor:
    """(K, H, W) concept masks -> (H, W) the complement of their union: where no concept is."""
    return 1.0 - union(masks)


def with_background(masks: torch.Tensor) -> torch.Tensor:
    """(K, H, W) concept masks -> (K+1, H, W), the background mask appended last (as ``<bg>`` is last)."""
    return torch.cat([masks, background(masks)[None]], dim=0)


def resize(masks: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(K, H, W) masks -> (K, height, width) area coverage in [0, 1] (exact when H, W are multiples)."""
    return F.interpolate(masks[:, None].float(), size=(height, width), mode="area")[:, 0]
