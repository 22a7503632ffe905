"""A built-in tiny FLUX.1-shaped model with random weights (``--model builtin:tiny-flux``), built as diffusers' own
FLUX test components are: a ``FluxTransformer2DModel`` with dual-stream and single-stream blocks, a CLIP text
encoder (only its pooled vector conditions the image), a T5 encoder with a SentencePiece-style tokenizer (its
per-token states are what the image attends to), a 16-channel VAE, and flow matching.

Like :mod:`.tiny` it produces noise, not pictures; it exists so that the FLUX path runs offline on a CPU. Its
shape follows FLUX.1-dev where Break-A-Scene depends on it: latents packed 2x2 into image tokens (128 px ->
16x16 latent -> 8x8 tokens), text tokens before image tokens in joint attention with QK RMS-norm and RoPE, the
guidance embedding of the dev model, T5 padded to 512 tokens without a start token.
:data:`FLUX_DEV_SHAPE` is FLUX.1-dev's full-size architecture (its transformer: 11,901,408,320 parameters, tested).
"""

from __future__ import annotations

import string

import torch
from diffusers import FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel, T5TokenizerFast

from ...tiny import PROMPT_WORDS, build_tiny_tokenizer, random_vae

TINY_FLUX_MODEL_ID = "builtin:tiny-flux"
TINY_FLUX_RESOLUTION = 128

TINY_FLUX_SHAPE = dict(
    layers=2, single_layers=2, heads=2, head_dim=16, rope=(4, 6, 6), text_vocab=None, text_hidden=32, text_intermediate=37,
    text_layers=2, text_heads=4, t5_hidden=32, t5_kv=8, t5_ff=37, t5_layers=2, t5_heads=4, t5_vocab=None,
    vae_channels=(8, 16, 16, 16), vae_layers=1, vae_groups=8,
)
FLUX_DEV_SHAPE = dict(
    layers=19, single_layers=38, heads=24, head_dim=128, rope=(16, 56, 56), text_vocab=49408, text_hidden=768,
    text_intermediate=3072,
    text_layers=12, text_heads=12, t5_hidden=4096, t5_kv=64, t5_ff=10240, t5_layers=24, t5_heads=64,
    t5_vocab=32128, vae_channels=(128, 256, 512, 512), vae_layers=2, vae_groups=32,
)


def flux_dev_shape(dual: int | None = None, single: int | None = None, t5_layers: int | None = None) -> dict:
    """FLUX.1-dev's full width at another depth: ``dual`` dual-stream and ``single`` single-stream blocks and
    ``t5_layers`` T5 layers (None: FLUX.1-dev's 19, 38 and 24), for measuring what a block costs."""
    return {**FLUX_DEV_SHAPE, "layers": FLUX_DEV_SHAPE["layers"] if dual is None else dual,
            "single_layers": FLUX_DEV_SHAPE["single_layers"] if single is None else single,
            "t5_layers": FLUX_DEV_SHAPE["t5_layers"] if t5_layers is None else t5_layers}


def tiny_t5_tokenizer(max_length: int = 512) -> T5TokenizerFast:
    """A T5-style tokenizer (SentencePiece unigram, ``▁`` marks a word's start, ``</s>`` ends every prompt, no
    start token, ``<pad>`` pads) over the tiny vocabulary's words plus every ASCII character, so any prompt
    tokenizes. Written here, like :func:`.tiny.build_tiny_tokenizer`'s vocabulary: nothing is downloaded."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    pieces: dict[str, float] = {"<pad>": 0.0, "</s>": 0.0, "<unk>": 0.0}
    for word in PROMPT_WORDS:  # whole words score above their letters, so the unigram model prefers them
        pieces.setdefault("▁" + word, -1.0)
    for ch in string.ascii_lowercase + string.digits + string.punctuation:
        pieces.setdefault("▁" + ch, -8.0)
        pieces.setdefault(ch, -9.0)
    pieces.setdefault("▁", -10.0)
    backend = Tokenizer(models.Unigram(list(pieces.items()), unk_id=2))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    backend.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    backend.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                          special_tokens=[("</s>", 1)])
    return T5TokenizerFast(tokenizer_object=backend, eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
                           extra_ids=0, model_max_length=max_length)


def flux_scheduler(dev: bool = True) -> FlowMatchEulerDiscreteScheduler:
    """FLUX.1's sampler: flow-matching Euler with the resolution-dependent shift (dev) or a fixed one (schnell)."""
    if dev:
        return FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                               base_image_seq_len=256, max_image_seq_len=4096)
    return FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=False)


def flux_transformer(shape: dict, dev: bool = True) -> FluxTransformer2DModel:
    """The ``FluxTransformer2DModel`` of ``shape`` (random weights; on the meta device it only counts)."""
    return FluxTransformer2DModel(
        patch_size=1, in_channels=64, num_layers=shape["layers"], num_single_layers=shape["single_layers"],
        attention_head_dim=shape["head_dim"], num_attention_heads=shape["heads"],
        joint_attention_dim=shape["t5_hidden"], pooled_projection_dim=shape["text_hidden"], guidance_embeds=dev,
        axes_dims_rope=shape["rope"])


def build_flux_components(shape: dict = TINY_FLUX_SHAPE, seed: int = 0, dev: bool = True) -> dict:
    """Builds a FLUX.1-shaped model with random weights, seeded, on the CPU in float32.

    Args:
        shape: :data:`TINY_FLUX_SHAPE` or :data:`FLUX_DEV_SHAPE`.
        dev: the guidance-distilled dev model (with the guidance embedding) or schnell (without).

    Returns:
        ``FluxPipeline``'s keyword arguments: ``tokenizer`` (CLIP, the tiny vocabulary), ``text_encoder`` (CLIP),
        ``tokenizer_2`` (:func:`tiny_t5_tokenizer`), ``text_encoder_2`` (T5 encoder), ``transformer``, ``vae``
        (16 latent channels, FLUX's scale and shift) and ``scheduler``.
    """
    tokenizer = build_tiny_tokenizer()
    tokenizer_2 = tiny_t5_tokenizer()
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=shape["text_vocab"] or len(tokenizer), hidden_size=shape["text_hidden"],
        intermediate_size=shape["text_intermediate"], num_hidden_layers=shape["text_layers"],
        num_attention_heads=shape["text_heads"], max_position_embeddings=tokenizer.model_max_length,
        hidden_act="quick_gelu", bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id))
    torch.manual_seed(seed + 1)
    text_encoder_2 = T5EncoderModel(T5Config(
        vocab_size=shape["t5_vocab"] or len(tokenizer_2), d_model=shape["t5_hidden"], d_kv=shape["t5_kv"],
        d_ff=shape["t5_ff"], num_layers=shape["t5_layers"], num_heads=shape["t5_heads"],
        feed_forward_proj="gated-gelu", dropout_rate=0.0, pad_token_id=tokenizer_2.pad_token_id,
        eos_token_id=tokenizer_2.eos_token_id, decoder_start_token_id=tokenizer_2.pad_token_id))
    torch.manual_seed(seed + 2)
    transformer = flux_transformer(shape, dev)
    torch.manual_seed(seed + 3)
    vae = random_vae(shape, TINY_FLUX_RESOLUTION // 8, latent_channels=16, scaling_factor=0.3611, shift_factor=0.1159,
                     use_quant_conv=False, use_post_quant_conv=False)
    return {"tokenizer": tokenizer, "text_encoder": text_encoder, "tokenizer_2": tokenizer_2,
            "text_encoder_2": text_encoder_2, "transformer": transformer, "vae": vae, "scheduler": flux_scheduler(dev)}


def build_tiny_flux_components(seed: int = 0) -> dict:
    """The built-in tiny FLUX.1-dev-shaped model (``--model builtin:tiny-flux``): :func:`build_flux_components`."""
    return build_flux_components(TINY_FLUX_SHAPE, seed)
