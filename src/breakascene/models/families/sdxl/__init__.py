"""Stable Diffusion XL: two CLIP text encoders, a UNet with size and pooled-text conditioning, a 4-channel VAE.

What differs from SD 1.x/2.x, each as diffusers' ``StableDiffusionXLPipeline.encode_prompt`` and its SDXL
training scripts do it (docs/method.md gives the reasons):

* a prompt is tokenized by both tokenizers (the second pads with ``!``), and the denoiser attends to the two
  encoders' penultimate hidden states side by side, (B, 77, 768 + 1280);
* ``text_encoder_2``'s projected end-of-text embedding, (B, 1280), is the pooled text conditioning;
* six numbers condition on the image's size: the photo's (height, width) before resizing, the (top, left) of
  the crop in the resized photo, and the (height, width) trained at (``add_time_ids``).

The VAE, the latents and the prediction target are SD's, so they come from :class:`.sd.StableDiffusion`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ...single_file import SDXL
from ..sd import StableDiffusion, builtin_lines, tokenize_with
from ..sd import exports as sd_exports
from . import exports
from .tiny import TINY_SDXL_MODEL_ID, TINY_SDXL_RESOLUTION

LOW_VRAM_LORA_RANK = 4  # diffusers' SDXL DreamBooth-LoRA default; its quality here is not measured yet


@dataclass
class SDXLConditioning:
    """What an SDXL UNet is conditioned on, for B prompts."""

    hidden: torch.Tensor  # (B, T, dim_1 + dim_2): both encoders' penultimate layers, concatenated
    pooled: torch.Tensor  # (B, projection_2): text_encoder_2's projected end-of-text embedding
    time_ids: torch.Tensor  # (B, 6): original (h, w), crop (top, left), target (h, w)


class StableDiffusionXL(StableDiffusion):
    """SDXL-base and its fine-tunes (not the refiner, which has one text encoder and an aesthetic score)."""

    name = "SDXL"
    pipeline_names = ("StableDiffusionXLPipeline",)
    # No invisible watermark: it needs a package of its own and changes every output pixel.
    pipeline_options = {"add_watermarker": False}

    @property
    def pipeline_class(self):
        from diffusers import StableDiffusionXLPipeline

        return StableDiffusionXLPipeline

    @property
    def inpaint_pipeline_class(self):
        from diffusers import StableDiffusionXLInpaintPipeline

        return StableDiffusionXLInpaintPipeline

    def text_encoders(self, components) -> list[torch.nn.Module]:
        return [components.text_encoder, components.text_encoder_2]

    def tokenizers(self, components) -> list:
        return [components.tokenizer, components.tokenizer_2]

    def tokenize(self, components, prompts: list[str]) -> torch.Tensor:
        """(B, 2, T): the prompts through ``tokenizer`` and ``tokenizer_2``."""
        return torch.stack([tokenize_with(tokenizer, prompts) for tokenizer in self.tokenizers(components)], dim=1)

    def size_conditioning(self, original_size, crop_top_left, target_size) -> torch.Tensor:
        return torch.tensor([*original_size, *crop_top_left, *target_size], dtype=torch.float32)

    def encode_prompt(self, components, input_ids, device, size_conditioning=None) -> SDXLConditioning:
        """``size_conditioning`` (B, 6) is required: SDXL has no neutral value for it."""
        if size_conditioning is None:
            raise ValueError("SDXL needs the size conditioning (original size, crop, target size) of every image")
        hidden, pooled = [], None
        for k, encoder in enumerate(self.text_encoders(components)):
            output = encoder(input_ids[:, k].to(device), output_hidden_states=True)
            hidden.append(output.hidden_states[-2])  # SDXL reads the penultimate layer of both encoders
            pooled = output[0]  # kept from the last encoder: CLIPTextModelWithProjection's text_embeds
        return SDXLConditioning(torch.cat(hidden, dim=-1), pooled, size_conditioning.to(device))

    def denoise(self, unet, noisy_latents, timesteps, conditioning: SDXLConditioning) -> torch.Tensor:
        added = {"text_embeds": conditioning.pooled, "time_ids": conditioning.time_ids}
        return unet(noisy_latents, timesteps, conditioning.hidden, added_cond_kwargs=added).sample

    def pipeline_components(self, components) -> dict:
        return {"tokenizer": components.tokenizer, "tokenizer_2": components.tokenizer_2,
                "text_encoder": components.text_encoder, "text_encoder_2": components.text_encoder_2,
                "unet": components.unet, "vae": components.vae, "scheduler": components.scheduler}

    builtin_models = {TINY_SDXL_MODEL_ID: TINY_SDXL_RESOLUTION}
    single_file_layouts = (SDXL,)

    def single_file_resolution(self, layout: str, prediction_type: str) -> int:
        return 1024

    random_models = ("random:sdxl-base",)

    def build_random(self, model: str) -> dict:
        from .tiny import SDXL_BASE_SHAPE, build_sdxl_components

        return build_sdxl_components(SDXL_BASE_SHAPE, prediction_type="epsilon", sample_size=128)

    def build_builtin(self, model: str, prediction_type: str | None) -> dict:
        from .tiny import build_tiny_sdxl_components

        return build_tiny_sdxl_components(prediction_type=prediction_type or "epsilon")

    def builtin_pipeline_lines(self, model: str, pipeline: str, prediction_type: str | None) -> tuple[list[str], list[str]]:
        return builtin_lines(model, pipeline, "tiny_sdxl", "build_tiny_sdxl_components", prediction_type,
                             "add_watermarker=False")

    def low_vram_plan(self, generic, device_type, bf16_supported, bitsandbytes_available) -> tuple[dict, list[str]]:
        """SDXL's budget is a 16 GB GPU, which no full phase 2 fits (``training.memory_estimate``: 25.7 GiB before
        activations even with the generic plan's choices, 49.6 GiB in fp32), so LoRA on the UNet
        (:data:`LOW_VRAM_LORA_RANK`) joins them; the text encoders then stay frozen. Not yet measured on a GPU
        (``GPU_GROUPS=sdxl benchmarks/gpu.sh`` does)."""
        options, notes = generic
        return {**options, "lora_rank": LOW_VRAM_LORA_RANK}, [
            *notes, f"SDXL: LoRA rank {LOW_VRAM_LORA_RANK} on the UNet in phase 2 (a full SDXL phase 2 holds over 25 GB "
            "even in bf16 with 8-bit Adam)"]

    def textual_inversion_readme(self, readme) -> str:
        return exports.textual_inversion_readme(readme)

    def webui_lora_state_dict(self, run, info, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
        return sd_exports.webui_lora_state_dict(run, info, dtype, exports.TEXT_LORA_PREFIXES)

    def kohya_base_model(self, text_width: int) -> dict[str, str]:
        return {"ss_base_model_version": "sdxl_base_v1-0", "ss_v2": "False"}

    def checkpoint_layout(self, pipe) -> str:
        return "sdxl"  # CLIP ViT-L and OpenCLIP ViT-bigG under conditioner.embedders (ldm_layout)

    def webui_readme(self, readme) -> str:
        return sd_exports.webui_readme(readme, "`lora_te1_*`, `lora_te2_*`", exports.embedding_lines)


STABLE_DIFFUSION_XL = StableDiffusionXL()

