"""A built-in tiny SDXL-shaped model with random weights (``--model builtin:tiny-sdxl``), as diffusers' own SDXL
test components are built: two CLIP text encoders (the second with a projection, for the pooled embedding), a
UNet with ``text_time`` added conditioning, and cross-attention at two grids.

Like :mod:`.tiny` it produces noise, not pictures; it exists so that the SDXL path runs offline on a CPU. Its
shape follows SDXL-base where Break-A-Scene depends on it: three UNet levels, the first without attention and
the other two with it (SDXL: 128, 64 and 32 latents at 1024 px; here 16, 8 and 4 at 128 px), so the attention
loss's grid (a quarter of the latent side) is the innermost level of the down and up paths, mid block skipped;
text states that are both encoders' penultimate layers side by side; and a 6-number size conditioning.
:data:`SDXL_BASE_SHAPE` builds the full-size architecture (2.6 B UNet parameters) for cost measurements.
"""

from __future__ import annotations

import torch
from diffusers import UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from ...tiny import build_tiny_tokenizer, ddim_scheduler, random_vae

TINY_SDXL_MODEL_ID = "builtin:tiny-sdxl"
TINY_SDXL_RESOLUTION = 128

# The two text encoders differ in width, as SDXL's do (768 and 1280): diffusers' single-file loader tells them
# apart by it.
TINY_SDXL_SHAPE = dict(
    text_hidden=32, text_intermediate=37, text_layers=2, text_heads=4, text_2_hidden=48, text_2_intermediate=37,
    text_2_layers=2, text_2_heads=4, text_vocab=None, unet_channels=(32, 32, 64), unet_layers=1,
    unet_heads=(2, 2, 4), transformer_layers=(1, 1, 2), time_embed_dim=8, vae_channels=(8, 16, 16, 16),
    vae_layers=1, vae_groups=8,
)
SDXL_BASE_SHAPE = dict(
    text_hidden=768, text_intermediate=3072, text_layers=12, text_heads=12, text_2_hidden=1280,
    text_2_intermediate=5120, text_2_layers=32, text_2_heads=20, text_vocab=49408, unet_channels=(320, 640, 1280),
    unet_layers=2, unet_heads=(5, 10, 20), transformer_layers=(1, 2, 10), time_embed_dim=256,
    vae_channels=(128, 256, 512, 512), vae_layers=2, vae_groups=32,
)


def _text_config(shape: dict, prefix: str, tokenizer, **extra) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=shape["text_vocab"] or len(tokenizer),
        hidden_size=shape[f"{prefix}hidden"],
        intermediate_size=shape[f"{prefix}intermediate"],
        num_hidden_layers=shape[f"{prefix}layers"],
        num_attention_heads=shape[f"{prefix}heads"],
        max_position_embeddings=tokenizer.model_max_length,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **extra,
    )


def build_sdxl_components(shape: dict = TINY_SDXL_SHAPE, seed: int = 0, prediction_type: str = "epsilon",
                          sample_size: int = TINY_SDXL_RESOLUTION // 8) -> dict:
    """Builds an SDXL-shaped model with random weights, seeded, on the CPU in float32.

    Returns:
        The keyword arguments of ``StableDiffusionXLPipeline``: ``tokenizer``, ``tokenizer_2`` (the tiny
        vocabulary; the second pads with ``!`` as SDXL's does), ``text_encoder`` (CLIP, quick GELU),
        ``text_encoder_2`` (CLIP with projection, GELU), ``unet``, ``vae`` and ``scheduler``.
    """
    tokenizer, tokenizer_2 = build_tiny_tokenizer(), build_tiny_tokenizer()
    tokenizer_2.pad_token = "!"  # SDXL's second tokenizer pads with "!", its first with the end token
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(_text_config(shape, "text_", tokenizer, hidden_act="quick_gelu"))
    torch.manual_seed(seed + 1)
    projection = shape["text_2_hidden"]
    text_encoder_2 = CLIPTextModelWithProjection(
        _text_config(shape, "text_2_", tokenizer_2, hidden_act="gelu", projection_dim=projection))
    torch.manual_seed(seed + 2)
    time_dim = shape["time_embed_dim"]
    unet = UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=shape["unet_channels"],
        layers_per_block=shape["unet_layers"],
        attention_head_dim=shape["unet_heads"],
        transformer_layers_per_block=shape["transformer_layers"],
        cross_attention_dim=shape["text_hidden"] + shape["text_2_hidden"],
        addition_embed_type="text_time",
        addition_time_embed_dim=time_dim,
        projection_class_embeddings_input_dim=6 * time_dim + projection,  # 6 size numbers + the pooled text
        use_linear_projection=True,
        norm_num_groups=min(32, shape["unet_channels"][0]),
    )
    torch.manual_seed(seed + 3)
    # SDXL's VAE scale; it overflows in fp16, so diffusers decodes it in fp32 (force_upcast)
    vae = random_vae(shape, sample_size, scaling_factor=0.13025, force_upcast=True)
    scheduler = ddim_scheduler(prediction_type)
    return {"tokenizer": tokenizer, "tokenizer_2": tokenizer_2, "text_encoder": text_encoder,
            "text_encoder_2": text_encoder_2, "unet": unet, "vae": vae, "scheduler": scheduler}


def build_tiny_sdxl_components(seed: int = 0, prediction_type: str = "epsilon",
                               sample_size: int = TINY_SDXL_RESOLUTION // 8) -> dict:
    """The built-in tiny SDXL model (``--model builtin:tiny-sdxl``): see :func:`build_sdxl_components`."""
    return build_sdxl_components(TINY_SDXL_SHAPE, seed, prediction_type, sample_size)
