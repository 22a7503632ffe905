"""Attention capture on FLUX.1's joint attention: the per-token maps the attention loss and the views read.

FLUX has no cross-attention. In a dual-stream block the text tokens and the image tokens are projected apart,
QK-RMS-normed, put side by side (text first), rotated by RoPE and attended over together, so a text token
reaches the image only as one of the keys the image queries attend to. The map of a handle is therefore the
image-query x text-key part of that attention: for every image token, ``softmax`` over the text keys of
``Q K^T / sqrt(d)`` (with exactly the norms and RoPE the block applies), averaged over heads, on the packed
latent grid (32x32 at 512 px, 64x64 at 1024 px).

:class:`FluxCaptureProcessor` replaces ``FluxAttnProcessor`` in the dual-stream blocks
:func:`capture_block_names` chooses. It computes the block's output exactly as the stock processor does (the
same projections, norms, RoPE and attention call, so the output is bit-identical), and while a store is
recording it also computes the map explicitly from the same normed, rotated Q and K. Every other block, and
every call that does not record, is the stock processor.
"""

from __future__ import annotations

import math

import torch
from diffusers.models.attention_dispatch import dispatch_attention_fn
from diffusers.models.embeddings import apply_rotary_emb
from diffusers.models.transformers.transformer_flux import FluxAttnProcessor

# The dual-stream blocks the maps come from: the later ones, where attention-probing work on FLUX.1 finds
# per-token maps most localised (ConceptAttention reads blocks 15-18 of FLUX.1's 19). Kept as that fraction of
# the depth, so a model with fewer blocks (the tiny one) reads its last ones.
FIRST_CAPTURED_BLOCK_FRACTION = 15 / 19


def capture_block_names(transformer) -> list[str]:
    """Processor keys of the dual-stream blocks the maps come from: ``transformer_blocks.{15..18}.attn.processor``
    for FLUX.1's 19 blocks (:data:`FIRST_CAPTURED_BLOCK_FRACTION`), the last one for a model with one or two."""
    count = len(transformer.transformer_blocks)
    first = min(count - 1, round(count * FIRST_CAPTURED_BLOCK_FRACTION))
    return [f"transformer_blocks.{i}.attn.processor" for i in range(first, count)]


def _split_heads(tensor: torch.Tensor, head_dim: int) -> torch.Tensor:
    """(B, N, heads*d) -> (B, N, heads, d): the layout FLUX's processor works in."""
    return tensor.unflatten(-1, (-1, head_dim))


class FluxCaptureProcessor:
    """``FluxAttnProcessor`` for a dual-stream block, which also records the image-to-text map for a store.

    The store (:class:`breakascene.attention.AttentionStore`) gets (B, image tokens, text tokens) maps,
    averaged over heads, each row a distribution over the text tokens.
    """

    def __init__(self, store, name: str):
        self.store = store
        self.name = name
        self.stock = FluxAttnProcessor()

    # Adapted from diffusers.models.transformers.transformer_flux.FluxAttnProcessor.__call__ (diffusers 0.42):
    # its unfused projections, norms, concatenation, RoPE and attention call, in the same order, plus the map.
    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, image_rotary_emb=None) -> torch.Tensor:
        records = (encoder_hidden_states is not None and attn.added_kv_proj_dim is not None
                   and not attn.fused_projections and self.store.wants(hidden_states.shape[1]))
        if not records:
            return self.stock(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)
        d = attn.head_dim
        query = attn.norm_q(_split_heads(attn.to_q(hidden_states), d))  # (B, image, heads, d)
        key = attn.norm_k(_split_heads(attn.to_k(hidden_states), d))
        value = _split_heads(attn.to_v(hidden_states), d)
        text_query = attn.norm_added_q(_split_heads(attn.add_q_proj(encoder_hidden_states), d))  # (B, text, heads, d)
        text_key = attn.norm_added_k(_split_heads(attn.add_k_proj(encoder_hidden_states), d))
        text_value = _split_heads(attn.add_v_proj(encoder_hidden_states), d)
        query, key = torch.cat([text_query, query], dim=1), torch.cat([text_key, key], dim=1)
        value = torch.cat([text_value, value], dim=1)
        if image_rotary_emb is not None:
            query = apply_rotary_emb(query, image_rotary_emb, sequence_dim=1)
            key = apply_rotary_emb(key, image_rotary_emb, sequence_dim=1)

        text = encoder_hidden_states.shape[1]
        # image queries x text keys, softmax over the text keys, in float32; then the mean over heads
        logits = torch.einsum("bqhd,bkhd->bhqk", query[:, text:].float(), key[:, :text].float()) / math.sqrt(d)
        self.store.record(self.name, logits.softmax(dim=-1).mean(dim=1))  # (B, image, text)

        out = dispatch_attention_fn(query, key, value, attn_mask=attention_mask).flatten(2, 3).to(query.dtype)
        text_out, image_out = out.split_with_sizes([text, out.shape[1] - text], dim=1)
        image_out = attn.to_out[1](attn.to_out[0](image_out.contiguous()))
        return image_out, attn.to_add_out(text_out.contiguous())


def install_flux_capture(transformer, store) -> None:
    """Gives the :func:`capture_block_names` blocks a :class:`FluxCaptureProcessor`, every other the stock one."""
    capture = set(capture_block_names(transformer))
    transformer.set_attn_processor({name: FluxCaptureProcessor(store, name) if name in capture else FluxAttnProcessor()
                                    for name in transformer.attn_processors})


def remove_flux_capture(transformer) -> None:
    transformer.set_attn_processor(FluxAttnProcessor())
