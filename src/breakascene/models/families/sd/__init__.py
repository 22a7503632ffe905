"""Stable Diffusion 1.x / 2.x: one CLIP text encoder, a UNet, a 4-channel VAE; epsilon or v-prediction.

Its built-in model is ``builtin:tiny`` (:mod:`breakascene.models.tiny`, whose parts the other tiny models share),
its export layouts are in :mod:`.exports`.
"""

from __future__ import annotations

import torch

from ....attention import install_capture
from ...single_file import SD1, SD2
from ...tiny import TINY_MODEL_ID, TINY_RESOLUTION
from .. import ModelFamily
from ..readme import python_literal
from . import exports


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

    builtin_models = {TINY_MODEL_ID: TINY_RESOLUTION}
    single_file_layouts = (SD1, SD2)

    def single_file_resolution(self, layout: str, prediction_type: str) -> int:
        return 768 if (layout, prediction_type) == (SD2, "v_prediction") else 512  # SD 2.x-v at 768 px

    random_models = ("random:sd2.1-base", "random:sd2.1")  # 512 px epsilon, 768 px v-prediction

    def build_random(self, model: str) -> dict:
        from ...tiny import SD21_BASE_SHAPE, build_random_components

        prediction, latent = ("epsilon", 64) if model == "random:sd2.1-base" else ("v_prediction", 96)
        return build_random_components(SD21_BASE_SHAPE, prediction_type=prediction, sample_size=latent)

    def build_builtin(self, model: str, prediction_type: str | None) -> dict:
        from ...tiny import build_tiny_components

        return build_tiny_components(prediction_type=prediction_type or "epsilon")

    def builtin_pipeline_lines(self, model: str, pipeline: str, prediction_type: str | None) -> tuple[list[str], list[str]]:
        return builtin_lines(model, pipeline, "tiny", "build_tiny_components", prediction_type,
                             ", ".join(f"{k}={v}" for k, v in self.pipeline_options.items()))

    def textual_inversion_readme(self, readme) -> str:
        return exports.textual_inversion_readme(readme)

    def webui_lora_state_dict(self, run, info, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
        return exports.webui_lora_state_dict(run, info, dtype, exports.TEXT_LORA_PREFIXES)

    def kohya_base_model(self, text_width: int) -> dict[str, str]:
        v2 = text_width == 1024  # SD 2.x's OpenCLIP ViT-H; SD 1.x's CLIP ViT-L is 768 wide
        return {"ss_base_model_version": "sd_v2" if v2 else "sd_v1", "ss_v2": str(v2)}

    def checkpoint_layout(self, pipe) -> str:
        from ...ldm_layout import text_layout

        return text_layout(pipe.text_encoder)  # SD 1.x's CLIP or SD 2.x's OpenCLIP

    def webui_readme(self, readme) -> str:
        return exports.webui_readme(readme, "`lora_te_*`", exports.embedding_lines)


def builtin_lines(model: str, pipeline: str, module: str, builder: str, prediction_type: str | None,
                  options: str) -> tuple[list[str], list[str]]:
    """(imports, lines) that build a tiny SD-like built-in model again: ``breakascene.models.<module>.<builder>``
    with the run's prediction type, into a stock ``pipeline`` with ``options``."""
    kind = python_literal(prediction_type or "epsilon")
    return [f"from diffusers import {pipeline}", f"from breakascene.models.{module} import {builder}"], [
        f"# {model} is built in code with random weights (it is not on the Hub): the same base model again",
        f"pipe = {pipeline}(**{builder}(prediction_type={kind}), {options})",
    ]


STABLE_DIFFUSION = StableDiffusion()
