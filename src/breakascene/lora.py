"""LoRA adapters for a parameter-efficient phase 2 (``extract --lora-rank``): add, save, merge back as plain layers.

The denoiser's adapters (the UNet's, or FLUX's transformer's) are saved in diffusers' LoRA format
(``pipe.load_lora_weights(run)`` finds them); the text encoders' go through peft directly and are saved with peft's
own keys (see :func:`add_text_encoder_lora`). Which modules get adapters is the model family's choice
(``ModelFamily.lora_targets``); these are SD's and SDXL's.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .errors import RunError

LORA_UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]  # every attention projection, as diffusers' LoRA scripts
LORA_TEXT_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]
LORA_WEIGHTS_FILE = "pytorch_lora_weights.safetensors"  # diffusers' name: pipe.load_lora_weights(run) finds it
TEXT_LORA_FILE = "{name}_lora.safetensors"  # per text encoder, peft's own keys; see save_lora for why not diffusers'


def text_encoder_lora_config(rank: int, alpha: float, targets: list[str] = LORA_TEXT_TARGETS,
                             init: str | bool = "gaussian"):
    """The peft ``LoraConfig`` of a text encoder's adapters, from what a run's file records (rank, alpha, targets;
    :func:`save_lora`): training and merging build the same adapters."""
    from peft import LoraConfig

    return LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights=init, target_modules=targets)


def add_text_encoder_lora(text_encoder, rank: int, alpha: float, targets: list[str] = LORA_TEXT_TARGETS) -> None:
    """LoRA on the text encoder's attention projections (``targets``), through peft directly.

    transformers' own ``add_adapter``/``load_adapter`` (which diffusers' text-encoder LoRA loading calls) refuse
    peft releases older than the one transformers 5.24 asks for, which is not on PyPI yet; peft's
    ``inject_adapter_in_model`` does the same injection with any peft.
    """
    from peft import inject_adapter_in_model

    inject_adapter_in_model(text_encoder_lora_config(rank, alpha, targets), text_encoder)


def add_lora(unet, text_encoders: list, rank: int, alpha: float, *, on_text_encoder: bool,
             targets: list[str] = LORA_UNET_TARGETS, text_targets: list[str] = LORA_TEXT_TARGETS) -> None:
    """LoRA adapters (peft) on the denoiser's ``targets``, and optionally every text encoder's ``text_targets``;
    all frozen.

    The adapters' B matrices start at zero, so the model is unchanged until phase 2 trains them; phase 1
    runs with them in place (frozen).
    """
    from peft import LoraConfig

    unet.add_adapter(LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights="gaussian", target_modules=targets))
    for text_encoder in text_encoders if on_text_encoder else []:
        add_text_encoder_lora(text_encoder, rank, alpha, text_targets)
    for model in (unet, *text_encoders):
        model.requires_grad_(False)


def lora_parameters(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """The model's LoRA adapter parameters, by name."""
    return {name: p for name, p in model.named_parameters() if "lora_" in name}


def save_lora(folder: Path, pipeline_class, denoiser_name: str, unet, text_encoders: list[tuple[str, object]],
              rank: int, alpha: float, text_targets: list[str] = LORA_TEXT_TARGETS) -> list[str]:
    """Writes the denoiser's adapters as ``pytorch_lora_weights.safetensors`` (float32), the format
    ``pipeline_class.load_lora_weights`` reads (``denoiser_name``: "unet" or "transformer"), and each of
    ``text_encoders`` ((name, model) pairs; empty: not trained) its adapters as :data:`TEXT_LORA_FILE`, which
    :func:`merge_text_encoder_lora` loads back. Returns the text encoders' file names."""
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    def layers(model):
        # The key layout diffusers' own training scripts write: the UNet scripts convert peft's lora_A/lora_B
        # names to diffusers' lora.down/lora.up, the FLUX script keeps peft's (which ComfyUI reads as they are).
        state = get_peft_model_state_dict(model)
        if denoiser_name == "unet":
            state = convert_state_dict_to_diffusers(state)
        return {k: v.float() for k, v in state.items()}

    pipeline_class.save_lora_weights(
        folder,
        weight_name=LORA_WEIGHTS_FILE,
        safe_serialization=True,
        **{f"{denoiser_name}_lora_layers": layers(unet),
           # rank, alpha and the targets travel in the file, so loading needs no flags
           f"{denoiser_name}_lora_adapter_metadata": unet.peft_config["default"].to_dict()},
    )
    from safetensors.torch import save_file

    files = []
    for name, text_encoder in text_encoders:  # see add_text_encoder_lora
        tensors = {k: v.float().contiguous() for k, v in text_encoder.state_dict().items() if "lora_" in k}
        files.append(TEXT_LORA_FILE.format(name=name))
        save_file(tensors, str(Path(folder) / files[-1]),
                  metadata={"rank": str(rank), "alpha": str(alpha), "targets": ",".join(text_targets)})
    return files


def merge_text_encoder_lora(text_encoder, path: Path) -> None:
    """Merges a run's text-encoder LoRA (peft keys, see :func:`add_text_encoder_lora`) into ``text_encoder``, in
    place, and leaves no peft wrapper behind.

    Each adapted projection ends as the plain ``nn.Linear`` it was, holding W + (alpha / rank) · B·A, so
    ``save_pretrained`` writes the stock keys (``...k_proj.weight``) that transformers' own ``from_pretrained``
    reads. (Merging inside peft's wrappers kept W under ``...k_proj.base_layer.weight`` beside ``lora_A``/``lora_B``:
    stock transformers found no ``k_proj.weight`` and initialised it randomly.)

    Raises:
        RunError: the file's adapters do not fit this text encoder (a key too many, or one missing).
    """
    from peft import LoraModel
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    targets = meta["targets"].split(",") if meta.get("targets") else LORA_TEXT_TARGETS  # (older runs: CLIP's)
    config = text_encoder_lora_config(int(meta["rank"]), float(meta["alpha"]), targets, init=True)
    # The tuner object (what inject_adapter_in_model builds and drops) wraps the target modules in place and
    # owns peft's merge_and_unload, which merges and then puts each wrapper's base layer back where it was.
    tuner = LoraModel(text_encoder, config, "default")
    loaded = text_encoder.load_state_dict(load_file(str(path)), strict=False)
    missing = [key for key in loaded.missing_keys if "lora_" in key]  # (every base weight is "missing" here)
    if loaded.unexpected_keys or missing:
        example = (loaded.unexpected_keys or missing)[0]
        raise RunError(f"{path.name} does not fit the base model's text encoder (e.g. {example}); "
                       "was the run made from another base model?")
    tuner.merge_and_unload()
