"""FLUX.1 (dev and schnell): a transformer with joint text-image attention, trained by flow matching.

What differs from the UNet families, each as diffusers' ``FluxPipeline`` and its FLUX training script
(``train_dreambooth_lora_flux.py``) do it (docs/method.md gives the reasons):

* per-token text conditioning comes only from T5 (``text_encoder_2``, padded to 512 tokens, no start token), so a
  handle is a new T5 token: its one row in T5's table is what phase 1 trains. CLIP (``text_encoder``) gives only
  the pooled vector and learns nothing;
* the denoiser is ``FluxTransformer2DModel`` (``Components.unet`` holds it) and sees the latents packed 2x2 into
  image tokens, with RoPE position ids; the loss here stays on the unpacked (B, 16, h, w) latents, so the masks
  line up with the latent grid exactly as for SD (a token is one 2x2 latent patch);
* flow matching: ``x_t = (1 - sigma) x_0 + sigma * noise`` with the model predicting ``noise - x_0``;
* the dev model's guidance embedding gets 1.0 in training (:data:`TRAINING_GUIDANCE`);
* the attention maps are the image-to-text part of joint attention in the later dual-stream blocks
  (:mod:`.attention`), on the packed grid: latent/2 (:attr:`Flux.attention_divisor`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from ....errors import ConfigError
from .. import ModelFamily
from . import exports
from .attention import install_flux_capture, remove_flux_capture
from .memory import low_vram_plan
from .tiny import TINY_FLUX_MODEL_ID, TINY_FLUX_RESOLUTION
from ..sd import StableDiffusion, tokenize_with

T5_MAX_LENGTH = 512  # FluxPipeline's max_sequence_length, for dev and schnell alike: training and sampling agree
# The dev model's distilled guidance in training: 1.0, as ai-toolkit and kohya's sd-scripts train FLUX.1-dev and as
# diffusers' FLUX DreamBooth example command passes it (the script's own default is 3.5).
TRAINING_GUIDANCE = 1.0
DEFAULT_LORA_RANK = 16  # extract's phase 2 on FLUX unless --lora-rank is given (ai-toolkit's FLUX default)
LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"]
T5_LORA_TARGETS = ["q", "k", "v", "o"]  # T5's attention projections
RANDOM_MODEL = re.compile(r"random:flux-dev(?:-(\d+)d(\d+)s(?:(\d+)t)?)?")  # bench's FLUX.1-dev at any depth


def check_flux_prediction_type(requested: str | None) -> None:
    """``--prediction-type`` is SD's choice; FLUX.1 always predicts the flow: a given one is a ConfigError."""
    if requested is not None:
        raise ConfigError(f"--prediction-type {requested} does not apply to FLUX.1, a flow-matching model; leave it out")


@dataclass
class FluxTokens:
    """A batch of prompts through both tokenizers (their lengths differ: 77 and 512)."""

    clip: torch.Tensor  # (B, 77) int64: for the pooled vector
    t5: torch.Tensor  # (B, 512) int64: the per-token conditioning, where handles are found


@dataclass
class FluxConditioning:
    """What a FLUX transformer is conditioned on, for B prompts."""

    hidden: torch.Tensor  # (B, 512, t5_dim): T5's last hidden states
    pooled: torch.Tensor  # (B, clip_dim): CLIP's pooled output


def pack(latents: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) -> (B, h/2 * w/2, 4C): 2x2 latent patches as tokens, row by row (``FluxPipeline._pack_latents``)."""
    b, c, h, w = latents.shape
    return latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)


def unpack(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The inverse of :func:`pack`: (B, h/2 * w/2, 4C) -> (B, C, h, w) for an h x w latent grid."""
    b, _, channels = tokens.shape
    grid = tokens.view(b, height // 2, width // 2, channels // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return grid.reshape(b, channels // 4, height, width)


def image_ids(height: int, width: int, device) -> torch.Tensor:
    """(h/2 * w/2, 3) RoPE position ids of the packed tokens: (0, row, column) (``_prepare_latent_image_ids``)."""
    ids = torch.zeros(height // 2, width // 2, 3, device=device)
    ids[..., 1] += torch.arange(height // 2, device=device)[:, None]
    ids[..., 2] += torch.arange(width // 2, device=device)[None, :]
    return ids.reshape(-1, 3)


class Flux(ModelFamily):
    """FLUX.1-dev, FLUX.1-schnell and their fine-tunes."""

    name = "FLUX.1"
    pipeline_names = ("FluxPipeline",)
    pipeline_options = {}
    prediction_type = "flow"
    denoiser_name = "transformer"
    attention_divisor = 2  # the packed grid: one map cell per image token
    lora_targets = LORA_TARGETS
    text_lora_targets = T5_LORA_TARGETS

    @property
    def pipeline_class(self):
        from diffusers import FluxPipeline

        return FluxPipeline

    @property
    def inpaint_pipeline_class(self):
        from diffusers import FluxInpaintPipeline

        return FluxInpaintPipeline

    def text_encoders(self, components) -> list[torch.nn.Module]:
        return [components.text_encoder_2]  # T5 only: CLIP's pooled vector carries no per-token meaning

    def tokenizers(self, components) -> list:
        return [components.tokenizer_2]

    def other_text_encoders(self, components) -> list[torch.nn.Module]:
        return [components.text_encoder]  # CLIP: the pooled vector only

    def named_text_encoders(self, components) -> list[tuple[str, torch.nn.Module]]:
        return [("text_encoder_2", components.text_encoder_2)]

    def tokenize(self, components, prompts: list[str]) -> FluxTokens:
        t5 = components.tokenizer_2(prompts, padding="max_length", max_length=T5_MAX_LENGTH, truncation=True,
                                    return_tensors="pt").input_ids
        return FluxTokens(tokenize_with(components.tokenizer, prompts), t5)

    def handle_search_ids(self, input_ids: FluxTokens) -> torch.Tensor:
        return input_ids.t5

    def encode_prompt(self, components, input_ids: FluxTokens, device, size_conditioning=None) -> FluxConditioning:
        pooled = components.text_encoder(input_ids.clip.to(device)).pooler_output
        return FluxConditioning(components.text_encoder_2(input_ids.t5.to(device))[0], pooled)

    encode_images = StableDiffusion.encode_images
    pack_latents = StableDiffusion.pack_latents  # (sample - shift) * scale: FLUX's VAE has both

    def denoise(self, unet, noisy_latents, timesteps, conditioning: FluxConditioning) -> torch.Tensor:
        """Packs (B, C, h, w) into tokens, runs the transformer at ``timesteps`` (0..1000), unpacks the prediction."""
        batch, _, height, width = noisy_latents.shape
        device, dtype = noisy_latents.device, conditioning.hidden.dtype
        guidance = None
        if unet.config.guidance_embeds:
            guidance = torch.full((batch,), TRAINING_GUIDANCE, device=device, dtype=torch.float32)
        out = unet(
            hidden_states=pack(noisy_latents).to(dtype),
            encoder_hidden_states=conditioning.hidden,
            pooled_projections=conditioning.pooled,
            timestep=timesteps / 1000,  # the transformer multiplies by 1000 again (as FluxPipeline passes it)
            img_ids=image_ids(height, width, device),
            txt_ids=torch.zeros(conditioning.hidden.shape[1], 3, device=device),
            guidance=guidance,
        ).sample
        return unpack(out, height, width)

    def training_scheduler(self, scheduler):
        from diffusers import FlowMatchEulerDiscreteScheduler

        return FlowMatchEulerDiscreteScheduler.from_config(scheduler.config)

    def sample_timesteps(self, scheduler, batch_size: int, generator: torch.Generator, device) -> torch.Tensor:
        """The training timesteps of diffusers' FLUX script with its default weighting ("none"): u ~ U[0, 1),
        index ``u * 1000`` into the scheduler's training timesteps. With FLUX.1-dev's dynamic shifting these are
        unshifted, so sigma = t / 1000 is uniform over {0.001, ..., 1}; schnell's fixed shift moves them up."""
        u = torch.rand((batch_size,), generator=generator, device=device)
        indices = (u * scheduler.config.num_train_timesteps).long().cpu()
        return scheduler.timesteps[indices].to(device)

    def add_noise(self, scheduler, latents, noise, timesteps) -> torch.Tensor:
        sigma = (timesteps / scheduler.config.num_train_timesteps).view(-1, 1, 1, 1).to(latents.dtype)
        return (1 - sigma) * latents + sigma * noise

    def prediction_target(self, scheduler, latents, noise, timesteps) -> torch.Tensor:
        """The flow-matching velocity ``noise - x_0``, what FLUX predicts."""
        return noise - latents

    def sampling_defaults(self, denoiser_config) -> tuple[int, float]:
        """FLUX.1-dev: 28 steps at distilled guidance 3.5 (FluxPipeline's documented use); schnell, distilled to few
        steps and without a guidance embedding: 4 steps, guidance 0. A config that does not say is dev's."""
        return (28, 3.5) if denoiser_config.get("guidance_embeds", True) else (4, 0.0)

    image_side_multiple = 16  # 8x the VAE's downscale, then the 2x2 packing

    def edit_scheduler(self, scheduler):
        """FLUX edits with its own flow-matching Euler sampler (DDIM does not apply to a flow model)."""
        return scheduler

    def edit_steps_run(self, steps: int, strength: float) -> int:
        """``FluxInpaintPipeline.get_timesteps``: it skips ``int(steps - steps * strength)`` steps, so with 50 steps
        at strength 0.75 it runs 38 where SD's runs 37."""
        return steps - int(max(steps - steps * strength, 0))

    def native_resolution(self, unet, vae) -> int:
        return int(vae.config.sample_size)  # the transformer has no sample size; the VAE's is FLUX.1's 1024

    def denoiser_input_channels(self, vae) -> int:
        return 4 * vae.config.latent_channels  # 2x2 patches of the 16 latent channels

    def install_capture(self, unet, store) -> None:
        install_flux_capture(unet, store)

    def remove_capture(self, unet) -> None:
        remove_flux_capture(unet)

    def pipeline_components(self, components) -> dict:
        return {"tokenizer": components.tokenizer, "text_encoder": components.text_encoder,
                "tokenizer_2": components.tokenizer_2, "text_encoder_2": components.text_encoder_2,
                "transformer": components.unet, "vae": components.vae, "scheduler": components.scheduler}

    builtin_models = {TINY_FLUX_MODEL_ID: TINY_FLUX_RESOLUTION}
    # FLUX.1-dev's width at any depth (the full model does not fit 24 GB of RAM): 19 dual-stream, 38 single-stream
    # blocks and 24 T5 layers, or random:flux-dev-<D>d<S>s[<T>t], e.g. random:flux-dev-1d1s2t
    random_models = ("random:flux-dev", "random:flux-dev-<D>d<S>s[<T>t]")

    def has_random_model(self, model: str) -> bool:
        return RANDOM_MODEL.fullmatch(model) is not None

    def build_random(self, model: str) -> dict:
        from .tiny import build_flux_components, flux_dev_shape

        dual, single, t5 = (int(n) if n is not None else None for n in RANDOM_MODEL.fullmatch(model).groups())
        return denoiser_as_unet(build_flux_components(flux_dev_shape(dual, single, t5)))
    training_defaults = {"lora_rank": DEFAULT_LORA_RANK}
    training_defaults_note = (f"FLUX.1: phase 2 trains LoRA rank {DEFAULT_LORA_RANK} on the transformer's attention "
                              "(--lora-rank 0: the whole 12 B-parameter transformer, which needs far more memory)")

    def build_builtin(self, model: str, prediction_type: str | None) -> dict:
        from .tiny import build_tiny_flux_components

        self.check_prediction_type(prediction_type)
        parts = build_tiny_flux_components()
        return denoiser_as_unet(parts)

    def builtin_pipeline_lines(self, model: str, pipeline: str, prediction_type: str | None) -> tuple[list[str], list[str]]:
        return [f"from diffusers import {pipeline}", "from breakascene.models.tiny_flux import build_tiny_flux_components"], [
            f"# {model} is built in code with random weights (it is not on the Hub): the same base model again",
            f"pipe = {pipeline}(**build_tiny_flux_components())",
        ]

    def check_prediction_type(self, requested: str | None) -> None:
        check_flux_prediction_type(requested)

    def low_vram_plan(self, generic, device_type, bf16_supported, bitsandbytes_available) -> tuple[dict, list[str]]:
        """FLUX.1's budget is a 24 GB GPU, and its plan its own (:func:`.memory.low_vram_plan`)."""
        return low_vram_plan(device_type, bf16_supported, bitsandbytes_available, DEFAULT_LORA_RANK)

    def run_sampling_defaults(self, where: str) -> tuple[int, float]:
        """Whether ``where`` is dev or schnell, from its transformer config; dev's where that cannot be read."""
        from diffusers import FluxTransformer2DModel

        from ....hub import hub_options

        try:
            config = FluxTransformer2DModel.load_config(where, subfolder="transformer", **hub_options(where))
        except (OSError, ValueError):  # a built-in base model, or a Hub id that is neither cached nor reachable
            config = {}
        return self.sampling_defaults(config)

    def check_sampling_options(self, negative: str | None, scheduler: str) -> None:
        if negative:
            raise ConfigError("--negative does not apply to FLUX.1: its guidance is distilled into the model, there is "
                              "no negative prompt; leave it out")
        if scheduler != "default":
            raise ConfigError(f"--scheduler {scheduler} does not apply to FLUX.1, a flow-matching model; leave it "
                              "out (its own flow-matching Euler sampler)")

    def check_export_format(self, format: str, lora_run: bool) -> None:
        exports.check_export_format(format, lora_run)

    def textual_inversion_key(self, token: str) -> str:
        return exports.TEXTUAL_INVERSION_KEY

    def textual_inversion_readme(self, readme) -> str:
        return exports.textual_inversion_readme(readme)

    webui_embedding_key = exports.WEBUI_EMBEDDING_KEY

    def kohya_base_model(self, text_width: int) -> dict[str, str]:
        return {"ss_base_model_version": "flux1"}  # kohya sd-scripts' FLUX.1 LoRAs

    def webui_lora_state_dict(self, run, info, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
        return exports.lora_state_dict(run, info, dtype)

    def webui_readme(self, readme) -> str:
        where = str(readme.run) if readme.info.lora is None else readme.info.base_model
        return exports.webui_readme(readme, self.run_sampling_defaults(where)[1])


def denoiser_as_unet(parts: dict) -> dict:
    """A pipeline's parts with the transformer under ``unet``, where Components keeps the denoiser."""
    parts = dict(parts)
    parts["unet"] = parts.pop("transformer")
    return parts


FLUX = Flux()
