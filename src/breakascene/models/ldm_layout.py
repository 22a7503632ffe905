"""The original (LDM / CompVis / SGM) key layout of an SD 1.x / 2.x or SDXL single-file checkpoint, written from
diffusers models.

This is the inverse of diffusers' ``convert_ldm_unet_checkpoint``, ``convert_ldm_vae_checkpoint``,
``convert_open_clip_checkpoint`` and ``convert_ldm_clip_checkpoint`` (diffusers ships only that direction, as
library code). ``StableDiffusionPipeline.from_single_file`` reads what :func:`single_file_state_dict` writes
back to the same weights (tests/test_single_file.py, tests/test_webui_export.py); A1111, Forge and ComfyUI load
this layout as a checkpoint.
"""

from __future__ import annotations

import torch

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
OPEN_CLIP_PREFIX = "cond_stage_model.model."  # SD 2.x: OpenCLIP ViT-H
CLIP_PREFIX = "cond_stage_model.transformer."  # SD 1.x: transformers' CLIPTextModel
SDXL_CLIP_PREFIX = "conditioner.embedders.0.transformer."  # SDXL's CLIP ViT-L, transformers' layout
SDXL_OPEN_CLIP_PREFIX = "conditioner.embedders.1.model."  # SDXL's OpenCLIP ViT-bigG, with its projection

_UNET_TOP = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
    "add_embedding.linear_1": "label_emb.0.0",  # SDXL: the pooled text and size conditioning's MLP
    "add_embedding.linear_2": "label_emb.0.2",
}
_UNET_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}


def ldm_unet_key(key: str, layers_per_block: int, up_levels_with_attention: set[int]) -> str:
    """The LDM name of a diffusers UNet2DConditionModel parameter.

    LDM numbers the down path's resnet(+attention) layers and each downsampler as consecutive
    ``input_blocks`` (0 is conv_in), so a down level spans ``layers_per_block + 1`` of them; the up path has
    ``layers_per_block + 1`` layers per level in ``output_blocks``, the upsampler sitting in the last one
    after its attention (index 2) or, in a level without attention, after its resnet (index 1).
    """
    head, leaf = key.rsplit(".", 1)
    if head in _UNET_TOP:
        return f"{_UNET_TOP[head]}.{leaf}"
    parts = head.split(".")
    per_level = layers_per_block + 1
    if parts[0] == "mid_block":
        kind, index, rest = parts[1], int(parts[2]), parts[3:]
        if kind == "resnets":  # middle_block.0 and .2 are the resnets, .1 the transformer
            return f"middle_block.{2 * index}.{_UNET_RESNET[rest[0]]}.{leaf}"
        return f"middle_block.1.{'.'.join(rest)}.{leaf}"
    path, level, kind, index, rest = parts[0], int(parts[1]), parts[2], int(parts[3]), parts[4:]
    if path == "down_blocks":
        block = 1 + level * per_level + index
        if kind == "resnets":
            return f"input_blocks.{block}.0.{_UNET_RESNET[rest[0]]}.{leaf}"
        if kind == "attentions":
            return f"input_blocks.{block}.1.{'.'.join(rest)}.{leaf}"
        return f"input_blocks.{1 + level * per_level + layers_per_block}.0.op.{leaf}"  # downsamplers.0.conv
    block = level * per_level + index
    if kind == "resnets":
        return f"output_blocks.{block}.0.{_UNET_RESNET[rest[0]]}.{leaf}"
    if kind == "attentions":
        return f"output_blocks.{block}.1.{'.'.join(rest)}.{leaf}"
    after = 2 if level in up_levels_with_attention else 1  # upsamplers.0.conv
    return f"output_blocks.{level * per_level + layers_per_block}.{after}.conv.{leaf}"


def ldm_unet(unet) -> dict[str, torch.Tensor]:
    """The UNet's weights under ``model.diffusion_model.`` in the LDM layout."""
    with_attention = {i for i, kind in enumerate(unet.config.up_block_types) if kind.startswith("CrossAttn")}
    return {
        UNET_PREFIX + ldm_unet_key(key, unet.config.layers_per_block, with_attention): value
        for key, value in unet.state_dict().items()
    }


_VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def ldm_vae_key(key: str, levels: int) -> str:
    """The LDM name of a diffusers AutoencoderKL parameter (the decoder's levels are numbered bottom-up there)."""
    head, leaf = key.rsplit(".", 1)
    if head in ("quant_conv", "post_quant_conv"):
        return key
    side, group, *rest = head.split(".")
    if group in ("conv_in", "conv_out"):
        return key
    if group == "conv_norm_out":
        return f"{side}.norm_out.{leaf}"
    if group == "mid_block":
        kind, index, *name = rest
        if kind == "resnets":
            return f"{side}.mid.block_{int(index) + 1}.{'.'.join(name)}.{leaf}"
        return f"{side}.mid.attn_1.{_VAE_ATTENTION['.'.join(name)]}.{leaf}"
    level, kind, index, *name = rest
    level = int(level) if side == "encoder" else levels - 1 - int(level)
    where = "down" if side == "encoder" else "up"
    if kind == "resnets":
        name = ".".join(name).replace("conv_shortcut", "nin_shortcut")
        return f"{side}.{where}.{level}.block.{index}.{name}.{leaf}"
    return f"{side}.{where}.{level}.{'downsample' if side == 'encoder' else 'upsample'}.conv.{leaf}"


def ldm_vae(vae) -> dict[str, torch.Tensor]:
    """The VAE's weights under ``first_stage_model.`` in the LDM layout."""
    out = {}
    for key, value in vae.state_dict().items():
        ldm_key = ldm_vae_key(key, len(vae.config.block_out_channels))
        if ".mid.attn_1." in ldm_key and ldm_key.endswith("weight") and value.ndim == 2:
            value = value[:, :, None, None]  # LDM's attention projections are 1x1 convolutions
        out[VAE_PREFIX + ldm_key] = value
    return out


_OPEN_CLIP_LAYER = {
    "self_attn.out_proj": "attn.out_proj",
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
}


def open_clip_text_encoder(text_encoder, prefix: str = OPEN_CLIP_PREFIX) -> dict[str, torch.Tensor]:
    """OpenCLIP's layout under ``prefix``, q/k/v fused into one in_proj per layer: SD 2.x's text encoder, or
    SDXL's second (a ``CLIPTextModelWithProjection``, whose projection is OpenCLIP's ``text_projection``,
    transposed).

    For SD 2.x diffusers keeps 23 of OpenCLIP ViT-H's 24 layers (SD 2.x reads the penultimate one) and drops
    the projection; neither is here, since neither changes what SD 2.x computes.
    """
    state = {key.removeprefix("text_model."): value for key, value in text_encoder.state_dict().items()}
    projection = state.pop("text_projection.weight", None)
    out = {
        prefix + "token_embedding.weight": state.pop("embeddings.token_embedding.weight"),
        prefix + "positional_embedding": state.pop("embeddings.position_embedding.weight"),
        prefix + "ln_final.weight": state.pop("final_layer_norm.weight"),
        prefix + "ln_final.bias": state.pop("final_layer_norm.bias"),
    }
    for layer in range(text_encoder.config.num_hidden_layers):
        source, target = f"encoder.layers.{layer}.", f"{prefix}transformer.resblocks.{layer}."
        for leaf in ("weight", "bias"):
            fused = [state.pop(f"{source}self_attn.{name}_proj.{leaf}") for name in ("q", "k", "v")]
            out[f"{target}attn.in_proj_{leaf}"] = torch.cat(fused)
            for name, open_clip_name in _OPEN_CLIP_LAYER.items():
                out[f"{target}{open_clip_name}.{leaf}"] = state.pop(f"{source}{name}.{leaf}")
    if projection is not None:
        out[prefix + "text_projection"] = projection.T.contiguous()
    if state:
        raise ValueError(f"text encoder weights with no OpenCLIP name: {sorted(state)[:3]}")
    return out


def clip_text_encoder(text_encoder, prefix: str = CLIP_PREFIX) -> dict[str, torch.Tensor]:
    """SD 1.x's layout (and SDXL's first encoder's): the transformers CLIPTextModel under
    ``prefix + "text_model."``."""
    return {
        prefix + "text_model." + key.removeprefix("text_model."): value
        for key, value in text_encoder.state_dict().items()
    }


def text_layout(text_encoder) -> str:
    """``"open_clip"`` (SD 2.x) or ``"clip"`` (SD 1.x) for a diffusers text encoder.

    OpenCLIP ViT-H (SD 2.x) uses exact GELU, OpenAI's CLIP ViT-L (SD 1.x) its quick GELU: the one part of the
    config that tells the two apart at any width, so a narrow test model gets the layout of its kind too.
    """
    return "clip" if text_encoder.config.hidden_act == "quick_gelu" else "open_clip"


def single_file_state_dict(unet, vae, text_encoder, layout: str | None = None,
                           text_encoder_2=None) -> dict[str, torch.Tensor]:
    """UNet, VAE and text encoder(s) as one original-layout state dict (contiguous, ready for ``save_file``).

    ``layout``: ``"open_clip"`` or ``"clip"`` for an SD text encoder; None chooses by :func:`text_layout`.
    With ``text_encoder_2`` it is SDXL's layout: ``conditioner.embedders.0`` (CLIP) and ``.1`` (OpenCLIP).
    """
    if text_encoder_2 is not None:
        text = {**clip_text_encoder(text_encoder, SDXL_CLIP_PREFIX),
                **open_clip_text_encoder(text_encoder_2, SDXL_OPEN_CLIP_PREFIX)}
        layout = "sdxl"
    else:
        layout = layout or text_layout(text_encoder)
        text = open_clip_text_encoder(text_encoder) if layout == "open_clip" else clip_text_encoder(text_encoder)
    state = {**ldm_unet(unet), **ldm_vae(vae), **text}
    return {key: value.detach().contiguous() for key, value in state.items()}
