"""``builtin:shapes``: the project's own small text-to-image model of the shapes world (:mod:`breakascene.shapes_world`).

Unlike ``builtin:tiny`` it knows something: it was trained from scratch on the world's scenes by
``break-a-scene world train`` (:mod:`breakascene.world.train`, whose seed and settings made the shipped weights),
and it ships with the package as a stock diffusers ``StableDiffusionPipeline`` folder of safetensors: fp16
values, the text encoder stored in fp32 so that ``from_pretrained(folder)`` with no dtype loads every part in fp32
(diffusers casts its models to fp32, transformers 5 keeps the stored dtype; ``world.train.save_pipeline``).

Its architecture is SD-shaped where it matters to Break-A-Scene, at 64 px:
- a VAE trained for the world that divides by 2 (64 px -> 32x32x4 latents);
- a UNet with cross-attention at three resolutions (32, 16, 8) on the down and up paths and in the mid block;
  the attention loss's grid is latent/4 = 8x8 (``down_blocks.2`` and ``up_blocks.0``), as 16x16 is for SD 2.1
  at 512 px. The 32x32 level attends only to the text (``only_cross_attention``): self-attention over 1,024
  tokens would cost more than the rest of the UNet on a CPU;
- a 3-layer CLIP text encoder, 64 wide, with a tokenizer that has a whole-word token for every word of the
  world's captions (and every ASCII character, so any prompt tokenizes).
"""

from __future__ import annotations

from pathlib import Path

from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from ..shapes_world import SIZE, WORDS
from .tiny import tiny_vocabulary, tokenizer_from_vocabulary

SHAPES_MODEL_ID = "builtin:shapes"
SHAPES_RESOLUTION = SIZE
SHAPES_FOLDER = Path(__file__).resolve().parent / "shapes_model"
"""Where the shipped weights are: a diffusers pipeline folder inside the package."""

# The noise schedule: cosine (better than SD's scaled-linear for a small model at a small size). The UNet predicts
# v (as SD 2.1 at 768 px does), so that training can weight the noisiest steps, where the text decides what is
# drawn, without dividing by their near-zero SNR (``world.train``).
SCHEDULE = dict(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction")


def build_shapes_tokenizer():
    """Every ASCII character, and one token for each of the world's words (:data:`~breakascene.shapes_world.WORDS`).

    A BPE merge that one word needs can be pre-empted by an earlier word's ("t r" of "triangle" splits
    "striped"), so the merges that the split words still need are appended until every word is one token.
    """
    vocab, merges = tiny_vocabulary(WORDS)
    for _ in range(len(WORDS)):
        tokenizer = tokenizer_from_vocabulary(vocab, merges)
        split = [tokenizer.tokenize(word) for word in WORDS]
        split = [pieces for pieces in split if len(pieces) > 1]
        if not split:
            return tokenizer
        for pieces in split:
            merged = pieces[0]
            for piece in pieces[1:]:
                merges.append(f"{merged} {piece}")
                merged += piece
                vocab.setdefault(merged, len(vocab))
    raise AssertionError("the world's words do not become single tokens")


def build_shapes_components(seed: int = 0, unet_channels: tuple = (32, 64, 96), unet_heads: tuple = (2, 4, 4),
                            vae_channels: tuple = (16, 32), vae_attention: bool = True) -> dict:
    """The ``builtin:shapes`` architecture with fresh random weights (what ``world train`` starts from).

    Args:
        unet_channels: the UNet's width at its 32x32, 16x16 and 8x8 levels.
        unet_heads: attention heads at each level.
        vae_channels: the VAE's width at 64x64 and at 32x32.
        vae_attention: whether the VAE's mid blocks hold self-attention (over all 1,024 latent pixels).

    Returns:
        ``tokenizer``, ``text_encoder``, ``unet``, ``vae`` and ``scheduler``, as ``StableDiffusionPipeline`` takes
        them. The VAE's ``scaling_factor`` is 1 until training measures it.
    """
    import torch

    tokenizer = build_shapes_tokenizer()
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=3,
            num_attention_heads=4, max_position_embeddings=tokenizer.model_max_length, projection_dim=64,
            hidden_act="gelu", bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    torch.manual_seed(seed + 1)
    unet = UNet2DConditionModel(
        sample_size=SIZE // 2,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D",) * 3,
        up_block_types=("CrossAttnUpBlock2D",) * 3,
        block_out_channels=tuple(unet_channels),
        layers_per_block=1,
        attention_head_dim=tuple(unet_heads),  # diffusers' legacy name: these are head counts
        cross_attention_dim=64,
        only_cross_attention=(True, False, False),
        use_linear_projection=True,
        norm_num_groups=16,
    )
    torch.manual_seed(seed + 2)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=tuple(vae_channels),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        mid_block_add_attention=vae_attention,
        sample_size=SIZE,
        scaling_factor=1.0,
    )
    scheduler = DDIMScheduler(**SCHEDULE, clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    return {"tokenizer": tokenizer, "text_encoder": text_encoder, "unet": unet, "vae": vae, "scheduler": scheduler}


SCALED_SETTINGS = {
    "phase1_steps": 200,
    "phase2_steps": 200,
    "phase1_lr": 5e-3,
    "phase2_lr": 1e-4,
    "lambda_attn": 0.01,
    "default_init_word": "object",
}
"""What ``extract --model builtin:shapes`` (and ``world bench``) use unless told otherwise, scaled to this model
from the paper's 400 + 400 steps at 5e-4 / 2e-6 on SD 2.1 (docs/method.md says how): the same two phases, the
same loss weight, the same ordering of the learning rates. Handles start from "object", the world's word for an
object it does not name (a rare word, the default elsewhere, would be a colour or a pattern here)."""
