"""Loading the base model's components: Hub id, local diffusers folder, single .safetensors file, or tiny.

Only Stable Diffusion 1.x / 2.x (one CLIP text encoder, a 4-channel UNet) are supported now; the parts that
touch the model family are here and in ``recipe.encode_prompt``, so SDXL is an addition, not a rewrite.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import ConfigError
from .tiny import TINY_MODEL_ID, build_tiny_components

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass
class Components:
    """The pieces of a Stable Diffusion pipeline that training touches; passed in explicitly, never global."""

    tokenizer: object
    text_encoder: torch.nn.Module
    unet: torch.nn.Module
    vae: torch.nn.Module
    scheduler: object  # the pipeline's sampling scheduler; training builds a DDPMScheduler from its config

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def native_resolution(self) -> int:
        return int(self.unet.config.sample_size) * self.vae_scale_factor

    @property
    def prediction_type(self) -> str:
        return self.scheduler.config.get("prediction_type", "epsilon")


def check_model_reference(model: str) -> None:
    """Fails fast (before any download) on a reference that can be nothing: a missing path or a .ckpt file."""
    if model == TINY_MODEL_ID:
        return
    path = Path(model).expanduser()
    if path.suffix in (".ckpt", ".pt", ".pth", ".bin"):
        raise ConfigError(
            f"--model {model}: pickled checkpoints are not loaded (they can run code); convert it to .safetensors"
        )
    if path.exists():
        if path.is_file() and path.suffix != ".safetensors":
            raise ConfigError(f"--model {model} is a file but not .safetensors; give a diffusers folder or .safetensors")
        if path.is_dir() and not (path / "model_index.json").is_file():
            raise ConfigError(f"--model {model} is a folder without model_index.json; is it a diffusers pipeline folder?")
        return
    if path.suffix == ".safetensors" or not _HUB_ID.match(model):
        raise ConfigError(f"--model {model}: no such file or folder, and not a Hub id like 'owner/name'")


def load_components(model: str, *, torch_dtype: torch.dtype = torch.float32) -> Components:
    """Loads the base model on the CPU. A Hub id needs network access the first time (then it is cached)."""
    check_model_reference(model)
    if model == TINY_MODEL_ID:
        return Components(**build_tiny_components())

    from diffusers import StableDiffusionPipeline

    path = Path(model).expanduser()
    try:
        if path.is_file():
            pipe = StableDiffusionPipeline.from_single_file(str(path), torch_dtype=torch_dtype, safety_checker=None)
        else:
            pipe = StableDiffusionPipeline.from_pretrained(
                str(path) if path.exists() else model,
                torch_dtype=torch_dtype,
                safety_checker=None,
                feature_extractor=None,
                requires_safety_checker=False,
                use_safetensors=True,
            )
    except (OSError, ValueError) as error:  # missing repo, no network, no safetensors weights, bad file
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConfigError(
            f"could not load --model {model}: {first_line} (a Hub id is downloaded once and needs network access "
            "then; or pass a local diffusers folder or a .safetensors file)"
        ) from error
    if pipe.unet.config.in_channels != 4:
        raise ConfigError(f"--model {model} has a {pipe.unet.config.in_channels}-channel UNet; use a text-to-image model")
    return Components(pipe.tokenizer, pipe.text_encoder, pipe.unet, pipe.vae, pipe.scheduler)


def default_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")
