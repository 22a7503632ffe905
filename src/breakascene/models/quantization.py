"""A 4-bit (NF4) frozen denoiser for LoRA training on small GPUs: QLoRA's recipe, through diffusers' bitsandbytes
support (``BitsAndBytesConfig``), as diffusers' own FLUX LoRA script loads it.

Only the denoiser is quantized: its Linear layers become bitsandbytes ``Linear4bit`` (NF4 codes, one fp32 scale per
64 weights: about 0.56 bytes a parameter, against 2 in bf16), computing in ``compute_dtype``; norms and embeddings
stay as loaded. LoRA adapters (peft) sit on top in float32 and are the only weights of the denoiser that train, so
phase 2 must be LoRA (:class:`~breakascene.config.ExtractConfig` checks it). A LoRA trained on the 4-bit base is
applied to the full-precision base when the run is loaded (the usual QLoRA practice).

diffusers quantizes with bitsandbytes on a GPU only, so this needs CUDA and ``pip install 'break-a-scene[bnb]'``
(:func:`breakascene.training.memory.check_quantization` says so before anything loads).
"""

from __future__ import annotations

import tempfile

import torch

NF4_BYTES_PER_PARAMETER = 0.5 + 4 / 64  # a 4-bit code per weight plus an fp32 absmax per block of 64


def compute_dtype() -> torch.dtype:
    """What the 4-bit layers compute in: bf16 on GPUs that have it, fp16 on older ones."""
    return torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float16


def nf4_config(dtype: torch.dtype = torch.bfloat16):
    """diffusers' ``BitsAndBytesConfig`` for an NF4 base computing in ``dtype``."""
    from diffusers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype)


def load_quantized(model_class, where: str, subfolder: str, dtype: torch.dtype, **hub):
    """``model_class.from_pretrained(where, subfolder=...)`` with its Linear layers in NF4 computing in ``dtype``
    (on the current GPU)."""
    return model_class.from_pretrained(where, subfolder=subfolder, quantization_config=nf4_config(dtype),
                                       dtype=dtype, **hub)


def quantized_copy(model, dtype: torch.dtype | None = None):
    """An NF4 copy of an in-memory diffusers model (a built-in or a bench's random one), computing in ``dtype``
    (default :func:`compute_dtype`). diffusers quantizes only while loading, so the model is cast to ``dtype``,
    saved to a temporary folder (FLUX.1-dev's transformer is 24 GB on disk so, not 48) and loaded back quantized."""
    dtype = dtype or compute_dtype()
    with tempfile.TemporaryDirectory(prefix="breakascene-nf4-") as folder:
        model.to(dtype).save_pretrained(folder, safe_serialization=True)
        return type(model).from_pretrained(folder, quantization_config=nf4_config(dtype), dtype=dtype)
