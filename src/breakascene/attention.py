"""Cross-attention capture: the maps the attention loss and the attention views read.

The research code swaps every attention layer for an explicit-softmax one and keeps all small maps with
gradients, which disables memory-efficient attention everywhere. Here only the cross-attention layers of
the down and up paths get :class:`CaptureAttnProcessor`, and it computes explicit probabilities only when
(a) a store is recording and (b) the layer's query grid is the one the store wants (16x16 for a 512 px
input: a quarter of the latent side). Every other call, and every other layer, runs PyTorch's
scaled-dot-product attention, as diffusers' ``AttnProcessor2_0`` does. Choosing layers by their query
count at run time, not by module names, is what keeps this independent of the model family and the
input size.

Nothing is written in place: recorded maps are new tensors appended to a list, so autograd, gradient
checkpointing (non-reentrant) and PEFT-wrapped projections all work.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention, AttnProcessor2_0


class AttentionStore:
    """Collects head-averaged cross-attention probabilities of one UNet forward pass.

    Usage::

        store = AttentionStore(query_tokens=16 * 16)
        install_capture(unet, store)
        store.reset(); unet(...); maps = store.mean_map(16, 16)   # (B, 16, 16, T)
    """

    def __init__(self, query_tokens: int | None = None):
        self.query_tokens = query_tokens  # record layers whose query length is this (h * w)
        self.recording = True
        self.maps: list[torch.Tensor] = []  # each (B, h*w, T), averaged over heads
        self.layer_names: list[str] = []

    def wants(self, num_queries: int) -> bool:
        return self.recording and num_queries == self.query_tokens

    def record(self, name: str, probs: torch.Tensor) -> None:
        self.maps.append(probs)
        self.layer_names.append(name)

    def reset(self) -> None:
        self.maps = []
        self.layer_names = []

    def mean_map(self, height: int, width: int) -> torch.Tensor:
        """Average of the recorded maps over layers: (B, height, width, T) float, each (b, y, x, :) sums to 1."""
        if not self.maps:
            raise RuntimeError(
                f"no cross-attention layer with {self.query_tokens} queries ran; the attention grid does not "
                "match this model and input size"
            )
        stacked = torch.stack(self.maps).mean(dim=0)  # (B, h*w, T)
        batch, _, tokens = stacked.shape
        return stacked.reshape(batch, height, width, tokens)


class CaptureAttnProcessor:
    """SDPA attention that can also record head-averaged probabilities for an :class:`AttentionStore`.

    Recording computes ``softmax(Q K^T * scale)`` explicitly with ``attn.get_attention_scores`` (the same call
    diffusers' ``AttnProcessor`` makes, so masks, upcasting and scale match), keeps the (B, h*w, T)
    head-average and multiplies the same probabilities with V, so the layer's output is what the loss sees.
    """

    def __init__(self, store: AttentionStore, name: str):
        self.store = store
        self.name = name
        self.sdpa = AttnProcessor2_0()

    # Adapted from diffusers.models.attention_processor.AttnProcessor.__call__ (diffusers 0.42): its explicit
    # get_attention_scores + bmm path, with the heads split and QK-normalised as in AttnProcessor2_0.__call__;
    # every call it does not record is AttnProcessor2_0 itself.
    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        *args,
        **kwargs,
    ) -> torch.Tensor:
        is_cross = encoder_hidden_states is not None
        # Transformer-block cross-attention always sees (B, h*w, C) tokens, so shape[1] is the query count.
        if not (is_cross and hidden_states.ndim == 3 and self.store.wants(hidden_states.shape[1])):
            return self.sdpa(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
        if attn.spatial_norm is not None or attn.group_norm is not None:
            raise RuntimeError(f"attention capture cannot record {self.name}: it normalises its input")

        residual = hidden_states
        batch, _, _ = hidden_states.shape  # (B, h*w, C)
        attention_mask = attn.prepare_attention_mask(attention_mask, encoder_hidden_states.shape[1], batch)
        if attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        query = _heads(attn.to_q(hidden_states), attn.heads)  # (B, heads, h*w, d)
        key = _heads(attn.to_k(encoder_hidden_states), attn.heads)  # (B, heads, T, d)
        value = _heads(attn.to_v(encoder_hidden_states), attn.heads)
        # QK normalisation (absent in SD 1/2), exactly where diffusers' own processors apply it: per head. A
        # recorded map must be the one the layer computes, so it is never skipped.
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        query, key, value = (t.flatten(0, 1) for t in (query, key, value))  # (B*heads, tokens, d)

        probs = attn.get_attention_scores(query, key, attention_mask)  # (B*heads, h*w, T)
        self.store.record(self.name, probs.reshape(batch, attn.heads, *probs.shape[1:]).mean(dim=1))

        hidden_states = attn.batch_to_head_dim(torch.bmm(probs, value))  # (B, h*w, heads*d)
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))  # linear, dropout
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


def _heads(tensor: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, N, heads*d) -> (B, heads, N, d), the layout diffusers' processors split heads into."""
    batch, tokens, inner = tensor.shape
    return tensor.view(batch, tokens, heads, inner // heads).transpose(1, 2)


def capture_layer_names(unet) -> list[str]:
    """Processor keys of the cross-attention layers on the down and up paths (the paper skips the mid block)."""
    return [
        name
        for name in unet.attn_processors
        if name.endswith("attn2.processor") and (name.startswith("down_blocks") or name.startswith("up_blocks"))
    ]


def install_capture(unet, store: AttentionStore) -> None:
    """Gives the down/up cross-attention layers a :class:`CaptureAttnProcessor`, every other layer SDPA."""
    capture = set(capture_layer_names(unet))
    processors = {
        name: CaptureAttnProcessor(store, name) if name in capture else AttnProcessor2_0()
        for name in unet.attn_processors
    }
    unet.set_attn_processor(processors)


def attention_grid(latent_height: int, latent_width: int, divisor: int = 4) -> tuple[int, int]:
    """The (h, w) grid of the maps the loss uses: the latent grid divided by ``divisor`` (64 -> 16 for SD 2.1)."""
    if latent_height % divisor or latent_width % divisor:
        raise ValueError(f"latent size {latent_height}x{latent_width} is not divisible by {divisor}")
    return latent_height // divisor, latent_width // divisor


def normalize_maps(maps: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Scales each map to [0, 1] by its maximum (probabilities are >= 0, so the minimum stays near 0).

    Args:
        maps: (..., h, w) non-negative maps.
    Returns:
        Same shape, each map divided by its own maximum.
    """
    peak = maps.flatten(-2).amax(dim=-1)[..., None, None]
    return maps / (peak + eps)


def mass_inside(maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """How much of each map's mass lies inside each mask: a (K, M) matrix, row k sums over masks m.

    Args:
        maps: (K, h, w) non-negative attention maps, one per handle.
        masks: (M, H, W) float masks in {0, 1}; resized to (h, w) by area coverage.
    Returns:
        (K, M) float: entry (k, m) is sum(map_k * mask_m) / sum(map_k). A handle that attends to its own
        concept has a large diagonal entry, compared with the mask's area fraction (chance).
    """
    small = F.interpolate(masks[:, None].float(), size=maps.shape[-2:], mode="area")[:, 0]  # (M, h, w)
    total = maps.flatten(1).sum(dim=1).clamp_min(1e-12)  # (K,)
    return torch.einsum("khw,mhw->km", maps.float(), small) / total[:, None]
