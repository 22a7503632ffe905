"""LoRA adapters for a parameter-efficient phase 2 (``extract --lora-rank``): add, save, and merge back.

The UNet's adapters are saved in diffusers' LoRA format (``pipe.load_lora_weights(run)`` finds them); the text
encoder's go through peft directly and are saved with peft's own keys (see :func:`add_text_encoder_lora`).
"""

from __future__ import annotations

from pathlib import Path

import torch

from .errors import RunError

LORA_UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]  # every attention projection, as diffusers' LoRA scripts
LORA_TEXT_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]
LORA_WEIGHTS_FILE = "pytorch_lora_weights.safetensors"  # diffusers' name: pipe.load_lora_weights(run) finds it
TEXT_LORA_FILE = "text_encoder_lora.safetensors"  # peft's own keys; see save_lora for why not diffusers' file
TEXT_2_LORA_FILE = "text_encoder_2_lora.safetensors"  # SDXL's second text encoder, the same way


def add_text_encoder_lora(text_encoder, rank: int, alpha: float) -> None:
    """LoRA on the text encoder's attention projections, through peft directly.

    transformers' own ``add_adapter``/``load_adapter`` (which diffusers' text-encoder LoRA loading calls) refuse
    peft releases older than the one transformers 5.24 asks for, which is not on PyPI yet; peft's
    ``inject_adapter_in_model`` does the same injection with any peft.
    """
    from peft import LoraConfig, inject_adapter_in_model

    config = LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights="gaussian", target_modules=LORA_TEXT_TARGETS)
    inject_adapter_in_model(config, text_encoder)


def add_lora(unet, text_encoders: list, rank: int, alpha: float, *, on_text_encoder: bool) -> None:
    """LoRA adapters (peft) on the UNet's attention projections, and optionally every text encoder's; all frozen.

    The adapters' B matrices start at zero, so the model is unchanged until phase 2 trains them; phase 1
    runs with them in place (frozen).
    """
    from peft import LoraConfig

    unet.add_adapter(LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights="gaussian", target_modules=LORA_UNET_TARGETS))
    for text_encoder in text_encoders if on_text_encoder else []:
        add_text_encoder_lora(text_encoder, rank, alpha)
    for model in (unet, *text_encoders):
        model.requires_grad_(False)


def lora_parameters(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """The model's LoRA adapter parameters, by name."""
    return {name: p for name, p in model.named_parameters() if "lora_" in name}


def save_lora(folder: Path, pipeline_class, unet, text_encoders: list, rank: int, alpha: float) -> list[str]:
    """Writes the UNet's adapters as ``pytorch_lora_weights.safetensors`` (float32), the format
    ``pipeline_class.load_lora_weights`` reads, and each of ``text_encoders`` (empty: not trained) its adapters
    as :data:`TEXT_LORA_FILE` (:data:`TEXT_2_LORA_FILE` for a second), which :func:`merge_text_encoder_lora`
    loads back. Returns the text encoders' file names."""
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    def layers(model):
        return {k: v.float() for k, v in convert_state_dict_to_diffusers(get_peft_model_state_dict(model)).items()}

    pipeline_class.save_lora_weights(
        folder,
        unet_lora_layers=layers(unet),
        # rank and alpha travel in the file, so loading needs no flags
        unet_lora_adapter_metadata=unet.peft_config["default"].to_dict(),
        weight_name=LORA_WEIGHTS_FILE,
        safe_serialization=True,
    )
    from safetensors.torch import save_file

    names = [TEXT_LORA_FILE, TEXT_2_LORA_FILE][: len(text_encoders)]
    for name, text_encoder in zip(names, text_encoders):  # see add_text_encoder_lora
        tensors = {k: v.float().contiguous() for k, v in text_encoder.state_dict().items() if "lora_" in k}
        save_file(tensors, str(Path(folder) / name), metadata={"rank": str(rank), "alpha": str(alpha)})
    return names


def merge_text_encoder_lora(text_encoder, path: Path) -> None:
    """Adds a run's text-encoder LoRA (peft keys, see :func:`add_text_encoder_lora`) and merges it in."""
    from peft.tuners.tuners_utils import BaseTunerLayer
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    add_text_encoder_lora(text_encoder, int(meta["rank"]), float(meta["alpha"]))
    unexpected = text_encoder.load_state_dict(load_file(str(path)), strict=False).unexpected_keys
    if unexpected:
        raise RunError(f"{path.name} does not fit the base model's text encoder (e.g. {unexpected[0]})")
    for module in text_encoder.modules():
        if isinstance(module, BaseTunerLayer):
            module.merge()
