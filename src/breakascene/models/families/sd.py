"""Stable Diffusion 1.x / 2.x: one CLIP text encoder, a UNet, a 4-channel VAE; epsilon or v-prediction."""

from __future__ import annotations

import torch

from ...attention import install_capture
from . import ModelFamily


def tokenize_with(tokenizer, prompts: list[str]) -> torch.Tensor:
    """(B, T) ids, padded to the tokenizer's ``model_max_length`` and truncated there, on the host (finding
    the handles in them must not wait for the GPU)."""
    return tokenizer(
        prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids


class StableDiffusion(ModelFamily):
    """SD 1.x / 2.x, the way diffusers' ``StableDiffusionPipeline`` and its training scripts drive them."""

    name = "SD 1.x/2.x"
    pipeline_names = ("StableDiffusionPipeline",)
    # Break-A-Scene runs no safety checker; None for both keeps diffusers from loading or asking for one.
    pipeline_options = {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}

    @property
    def pipeline_class(self):
        from diffusers import StableDiffusionPipeline

        return StableDiffusionPipeline

    @property
    def inpaint_pipeline_class(self):
        from diffusers import StableDiffusionInpaintPipeline

        return StableDiffusionInpaintPipeline

    def tokenize(self, components, prompts: list[str]) -> torch.Tensor:
        return tokenize_with(components.tokenizer, prompts)

    def encode_prompt(self, components, input_ids, device, size_conditioning=None) -> torch.Tensor:
        return components.text_encoder(input_ids.to(device))[0]

    @torch.no_grad()
    def encode_images(self, vae, images: torch.Tensor, batch_size: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
        """Caching the posterior rather than one sample keeps the research code's per-step sampling of the
        latent without running the encoder every step. Encodes ``batch_size`` images at a time to bound memory.
        """
        means, stds = [], []
        for chunk in images.split(batch_size):
            dist = vae.encode(chunk.to(vae.device, vae.dtype) * 2 - 1).latent_dist
            means.append(dist.mean.float())
            stds.append(dist.std.float())
        return torch.cat(means), torch.cat(stds)

    def pack_latents(self, vae, sample: torch.Tensor) -> torch.Tensor:
        shift = getattr(vae.config, "shift_factor", None) or 0.0
        return (sample - shift) * vae.config.scaling_factor

    def denoise(self, unet, noisy_latents, timesteps, conditioning) -> torch.Tensor:
        return unet(noisy_latents, timesteps, conditioning).sample

    def prediction_target(self, scheduler, latents, noise, timesteps) -> torch.Tensor:
        """The noise (epsilon), or the velocity for a v-prediction model (SD 2.x at 768 px)."""
        if scheduler.config.prediction_type == "v_prediction":
            return scheduler.get_velocity(latents, noise, timesteps)
        return noise

    def install_capture(self, unet, store) -> None:
        install_capture(unet, store)

    def remove_capture(self, unet) -> None:
        from diffusers.models.attention_processor import AttnProcessor2_0

        unet.set_attn_processor(AttnProcessor2_0())

    def pipeline_components(self, components) -> dict:
        return {"tokenizer": components.tokenizer, "text_encoder": components.text_encoder, "unet": components.unet,
                "vae": components.vae, "scheduler": components.scheduler}


STABLE_DIFFUSION = StableDiffusion()
