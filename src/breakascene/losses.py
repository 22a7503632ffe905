"""The two losses of Break-A-Scene (paper Eq. 1 and Eq. 2), as pure functions of tensors."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .attention import normalize_maps


def masked_diffusion_loss(
    model_pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, normalize_by_area: bool = False
) -> torch.Tensor:
    """Eq. 1: ``|| target * M - model_pred * M ||^2`` on the latent grid.

    Args:
        model_pred: (B, C, h, w) the UNet's prediction (epsilon or v).
        target: (B, C, h, w) what it should predict (the noise, or the velocity for v-prediction models).
        mask: (B, 1, h, w) or (B, h, w) union mask at the latent resolution, values in [0, 1].
        normalize_by_area: False averages the squared error over *all* latent elements, as the research code
            does (a small concept then gets a small loss); True averages over the masked elements only, so the
            loss is per-pixel-of-concept whatever the concept's size.
    Returns:
        Scalar float32 loss; 0 (not NaN) for an all-zero mask.
    """
    if mask.ndim == 3:
        mask = mask[:, None]
    mask = mask.to(torch.float32)
    squared = (model_pred.float() * mask - target.float() * mask) ** 2  # (B, C, h, w)
    if not normalize_by_area:
        return squared.mean()
    covered = mask.expand_as(squared).sum()
    return squared.sum() / covered.clamp_min(1.0)


def cross_attention_loss(attention_maps: torch.Tensor, masks: torch.Tensor, reduction: str = "sum") -> torch.Tensor:
    """Eq. 2: ``MSE(normalised CA(v_i), M_i)`` for each sampled handle, summed (or averaged) over the handles.

    Args:
        attention_maps: (K, h, w) each sampled handle's cross-attention probabilities, averaged over heads and
            layers (non-negative).
        masks: (K, h, w) the same handles' masks resized to (h, w), values in [0, 1].
        reduction: "sum" adds the K errors, as the research code does (its lambda = 0.01 is for the sum, so a
            step that samples more handles pulls harder on their maps); "mean" averages them.
    Returns:
        Scalar float32: each map is divided by its maximum (so it spans [0, 1]), compared with its mask by mean
        squared error over the grid, and the K errors are summed or averaged.
    """
    if attention_maps.shape != masks.shape:
        raise ValueError(f"attention maps {tuple(attention_maps.shape)} and masks {tuple(masks.shape)} differ")
    if reduction not in ("sum", "mean"):
        raise ValueError(f"reduction must be sum or mean, got {reduction!r}")
    normalized = normalize_maps(attention_maps.float())
    per_handle = F.mse_loss(normalized, masks.float(), reduction="none").flatten(1).mean(dim=1)  # (K,)
    return per_handle.sum() if reduction == "sum" else per_handle.mean()


def diffusion_loss(model_pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The plain, unmasked diffusion loss (MSE, float32): DreamBooth's prior-preservation term on class images,
    and the ``--no-masked-loss`` ablation."""
    return F.mse_loss(model_pred.float(), target.float())


def reconstruction_loss(
    model_pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None, normalize_by_area: bool = False
) -> torch.Tensor:
    """The step's diffusion term: Eq. 1 under ``mask`` (B, h, w), or with ``mask`` None the plain loss (the
    ``--no-masked-loss`` ablation). ``model_pred``/``target``: (B, C, h, w). Scalar float32."""
    if mask is None:
        return diffusion_loss(model_pred, target)
    return masked_diffusion_loss(model_pred, target, mask, normalize_by_area)


def total_loss(terms: dict[str, torch.Tensor], weights: dict[str, float]) -> torch.Tensor:
    """``terms["rec"]`` plus each other term present, times its weight (Eq. 3: ``rec + lambda * attention``,
    and ``+ w * prior`` with prior preservation). Added out of place, in the order of ``weights``."""
    total = terms["rec"]
    for name, weight in weights.items():
        if name in terms:
            total = total + weight * terms[name]
    return total
