"""The authors' research code's attention and VAE handling, reproduced for measurement only (never to train).

Every attention layer computes explicit softmax probabilities, and every map with <= 32x32 queries is kept with
its graph (their ``AttentionStore``); the VAE encodes the image every step. ``bench --compare
explicit-everywhere`` times it against the library's capture (:mod:`breakascene.attention`).
"""

from __future__ import annotations

import torch
from diffusers.models.attention_processor import Attention

from ..attention import capture_layer_names
from ..training.batch import TrainBatch
from .measured import MeasuredTrainer

RESEARCH_STORE_MAX_QUERIES = 32 * 32  # the research code's AttentionStore keeps maps with <= 32*32 queries


class ExplicitAttnProcessor:
    """diffusers' ``AttnProcessor`` (explicit softmax) that also keeps maps as the research code does.

    Every map with <= 32*32 queries goes, with its graph, into ``trainer.research_maps``; the down/up
    cross-attention layers also feed the library's ``AttentionStore``, so ``loss_step`` computes the same
    attention loss as ours.
    """

    def __init__(self, trainer: "ExplicitEverywhereTrainer", name: str, feeds_store: bool):
        self.trainer, self.name, self.feeds_store = trainer, name, feeds_store

    # Adapted from diffusers.models.attention_processor.AttnProcessor.__call__ (kept maps added)
    def __call__(self, attn: Attention, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args, **kwargs):
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            b, c, h, w = hidden_states.shape
            hidden_states = hidden_states.view(b, c, h * w).transpose(1, 2)
        batch, sequence_length, _ = (hidden_states if encoder_hidden_states is None else encoder_hidden_states).shape
        attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        is_cross = encoder_hidden_states is not None
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.head_to_batch_dim(attn.to_k(encoder_hidden_states))
        value = attn.head_to_batch_dim(attn.to_v(encoder_hidden_states))
        query = attn.head_to_batch_dim(query)

        probs = attn.get_attention_scores(query, key, attention_mask)  # (B*heads, Q, K), explicit softmax
        queries = probs.shape[1]
        trainer = self.trainer
        if trainer.research_recording and queries <= RESEARCH_STORE_MAX_QUERIES:
            trainer.research_maps.append(probs)  # all heads, with gradients, like their AttentionStore
        if self.feeds_store and is_cross and trainer.store.wants(queries):
            trainer.store.record(self.name, probs.reshape(batch, attn.heads, *probs.shape[1:]).mean(dim=1))

        hidden_states = attn.batch_to_head_dim(torch.bmm(probs, value))
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(b, c, h, w)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


class ExplicitEverywhereTrainer(MeasuredTrainer):
    """The trainer with the research code's attention (:class:`ExplicitAttnProcessor` on every layer) and its
    per-step VAE encoding (in :meth:`sample_batch`). Like the research code, it runs the class image's row
    (prior preservation) and encodes the class prompt in every step of every phase."""

    prune_class_branch = False

    def setup(self, class_images: torch.Tensor | None = None) -> None:
        super().setup(class_images)
        self.class_pixels = class_images
        unet = self.components.unet
        capture = set(capture_layer_names(unet))
        self.research_maps: list[torch.Tensor] = []
        self.research_recording = False
        unet.set_attn_processor({name: ExplicitAttnProcessor(self, name, name in capture) for name in unet.attn_processors})
        self.components.vae.to(self.device)  # the research code keeps the VAE on the device

    def sample_batch(self) -> TrainBatch:
        # The research code encodes the image (and the class image) every step.
        vae = self.components.vae
        mean, std = self.family.encode_images(vae, self.scene.image[None])
        self.latent_mean = torch.stack([mean, mean.flip(-1)], dim=1).to(self.device)  # (1, 2, C, h, w)
        self.latent_std = torch.stack([std, std.flip(-1)], dim=1).to(self.device)
        if self.config.prior_preservation:
            self.class_mean, self.class_std = self.family.encode_images(vae, self.class_pixels)
        return super().sample_batch()

    def loss_step(self, batch: TrainBatch) -> dict[str, torch.Tensor]:
        self.research_maps = []  # their store is reset between steps; kept maps live through backward
        self.research_recording = True  # off before backward, so checkpoint recomputation adds none
        try:
            return super().loss_step(batch)
        finally:
            self.research_recording = False
