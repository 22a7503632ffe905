"""Model families: what a kind of text-to-image model fills in for training and generating.

The recipe and the attention capture never call a pipeline class, a text encoder or the denoiser directly;
they call the :class:`ModelFamily` that :class:`~breakascene.models.loading.Components` carries. Adding a family
(SDXL, SD3, ...) means one module here that subclasses it, plus its tiny model; not editing the recipe.

Shapes: B batch, T tokens, C latent channels, h x w the latent grid, R the image side.
"""

from __future__ import annotations

import abc

import torch


class ModelFamily(abc.ABC):
    """The interface a family fills (abstract: every method must be overridden). :mod:`.sd` is the reference."""

    name: str = ""  # "SD 1.x/2.x"
    pipeline_class: type = object  # the diffusers pipeline a run folder is saved as and loaded with

    @abc.abstractmethod
    def text_encoders(self, components) -> list[torch.nn.Module]:
        """Every text encoder of ``components`` (the handles live in the first one's token table)."""

    @abc.abstractmethod
    def tokenize(self, tokenizer, prompts: list[str]) -> torch.Tensor:
        """Prompts -> input_ids (B, T) int64 on the CPU, padded to the tokenizer's ``model_max_length``."""

    @abc.abstractmethod
    def encode_prompt(self, text_encoder, input_ids: torch.Tensor, device: torch.device) -> torch.Tensor:
        """input_ids (B, T) -> encoder_hidden_states (B, T, dim) on ``device``: what the denoiser attends to."""

    @abc.abstractmethod
    def encode_images(self, vae, images: torch.Tensor, batch_size: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, 3, R, R) in [0, 1] -> the VAE posterior's (mean, std), each (N, C, h, w) float32."""

    @abc.abstractmethod
    def pack_latents(self, vae, sample: torch.Tensor) -> torch.Tensor:
        """A VAE posterior sample (B, C, h, w) -> the latents the denoiser is trained on (scaled/shifted)."""

    @abc.abstractmethod
    def denoise(self, unet, noisy_latents: torch.Tensor, timesteps: torch.Tensor,
                encoder_hidden_states: torch.Tensor) -> torch.Tensor:
        """One denoiser call: (B, C, h, w), (B,), (B, T, dim) -> the prediction (B, C, h, w)."""

    @abc.abstractmethod
    def prediction_target(self, scheduler, latents: torch.Tensor, noise: torch.Tensor,
                          timesteps: torch.Tensor) -> torch.Tensor:
        """What the denoiser should predict for ``latents`` noised with ``noise`` at ``timesteps`` (B, C, h, w)."""

    @abc.abstractmethod
    def install_capture(self, unet, store) -> None:
        """Routes the cross-attention layers the attention loss reads through ``store`` (an AttentionStore)."""

    @abc.abstractmethod
    def remove_capture(self, unet) -> None:
        """Puts the stock attention back, so that a saved denoiser is the library's own."""

    @abc.abstractmethod
    def make_pipeline(self, components):
        """A ``pipeline_class`` over ``components`` (no safety checker: Break-A-Scene runs none)."""
