"""``--vae``: a replacement VAE for the base model, such as SDXL's fp16-fix VAE.

SDXL's own VAE overflows in fp16, so its pipelines decode in fp32 (``force_upcast``). A VAE fine-tuned to stay
finite in fp16 (``madebyollin/sdxl-vae-fp16-fix``) decodes in half precision at the same quality. Training
encodes the one photo in fp32 either way; what the VAE changes is the saved pipeline and every later decode.

A VAE is a Hub id, a diffusers folder (its ``config.json`` at the top, or a pipeline folder's ``vae/``), or a
single ``.safetensors`` file in the original (LDM) or the diffusers key layout, as ComfyUI's ``models/vae``
and A1111's ``models/VAE`` hold them. A single file takes the base model's VAE config.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from ..errors import ConfigError, first_line
from ..hub import hub_options, is_hub_id, not_downloadable

def check_vae_reference(vae: str) -> None:
    """Fails fast (before any model is loaded) on a ``--vae`` that can be nothing: a missing path, a pickle."""
    path = Path(vae).expanduser()
    if path.suffix in (".ckpt", ".pt", ".pth", ".bin"):
        raise ConfigError(f"--vae {vae}: pickled files are not loaded (they can run code); convert it to .safetensors")
    if path.is_file():
        if path.suffix != ".safetensors":
            raise ConfigError(f"--vae {vae} is a file but not .safetensors; give a .safetensors file or a diffusers folder")
        return
    if path.is_dir():
        if not (path / "config.json").is_file() and not (path / "vae" / "config.json").is_file():
            raise ConfigError(f"--vae {vae} is a folder without config.json (or vae/config.json); "
                              "is it a diffusers VAE or pipeline folder?")
        return
    if path.suffix == ".safetensors" or not is_hub_id(vae):
        raise ConfigError(f"--vae {vae}: no such file or folder, and not a Hub id like 'owner/name'")


def load_vae(vae: str, like: torch.nn.Module) -> torch.nn.Module:
    """The VAE ``vae`` names (see the module docstring), in fp32 on the CPU, checked against the base model's.

    Args:
        vae: a ``--vae`` value.
        like: the base model's VAE; a single file is read with its config, and any VAE must encode to the same
            latent space (channels, downscale, scaling factor) or the UNet would see latents it never learned.

    Raises:
        ConfigError: a reference that cannot be loaded, or a VAE made for another latent space.
    """
    from diffusers import AutoencoderKL

    check_vae_reference(vae)
    path = Path(vae).expanduser()
    hub = hub_options(vae)
    try:
        if path.is_file():
            loaded = _load_single_file(path, like)
        else:
            where = str(path) if path.exists() else vae
            subfolder = "vae" if path.is_dir() and not (path / "config.json").is_file() else None
            loaded = AutoencoderKL.from_pretrained(where, subfolder=subfolder, dtype=torch.float32,
                                                   use_safetensors=True, **hub)
    except (OSError, ValueError, KeyError, RuntimeError) as error:  # no such repo, offline, not a VAE
        if hub.get("local_files_only") and not path.exists():
            raise not_downloadable(vae, "--vae", "VAE") from error
        raise ConfigError(f"could not load --vae {vae}: {first_line(error)}") from error
    check_same_latent_space(vae, loaded, like)
    return loaded


def _load_single_file(path: Path, like: torch.nn.Module) -> torch.nn.Module:
    from diffusers import AutoencoderKL
    from safetensors.torch import load_file

    state = load_file(str(path))
    if any(key.startswith("encoder.down_blocks.") for key in state):  # diffusers' own layout, renamed
        loaded = AutoencoderKL.from_config(like.config)
        loaded.load_state_dict(state)  # a missing or extra key is a RuntimeError: not this model's VAE
        return loaded
    if not any(key.startswith(("encoder.down.", "first_stage_model.encoder.down.")) for key in state):
        raise ValueError("it holds no VAE weights (no encoder.down.* or first_stage_model.encoder.down.* keys)")
    with tempfile.TemporaryDirectory() as config:  # from_single_file reads a config folder, not a dict
        like.save_config(config)
        return AutoencoderKL.from_single_file(state, config=config, dtype=torch.float32)


def check_same_latent_space(vae: str, loaded: torch.nn.Module, like: torch.nn.Module) -> None:
    """ConfigError unless ``loaded`` encodes to the latents ``like`` does (what the UNet was trained on)."""
    ours, theirs = loaded.config, like.config
    if ours.latent_channels != theirs.latent_channels:
        raise ConfigError(f"--vae {vae} makes {ours.latent_channels}-channel latents but the model's UNet takes "
                          f"{theirs.latent_channels}; give a VAE made for this model")
    if len(ours.block_out_channels) != len(theirs.block_out_channels):
        raise ConfigError(f"--vae {vae} downscales {2 ** (len(ours.block_out_channels) - 1)}x but the model's VAE "
                          f"{2 ** (len(theirs.block_out_channels) - 1)}x; give a VAE made for this model")
    if abs(ours.scaling_factor - theirs.scaling_factor) > 1e-6:
        raise ConfigError(f"--vae {vae} scales its latents by {ours.scaling_factor} but the model's VAE by "
                          f"{theirs.scaling_factor}: it is a VAE for another model family (SD 1/2 use 0.18215, "
                          "SDXL 0.13025)")
