"""FLUX.1's ``--low-vram`` plan, for a 24 GB GPU (``ModelFamily.low_vram_plan``)."""

from __future__ import annotations

FLUX_BF16_TRANSFORMER_GIB = 11_901_408_320 * 2 / 1024**3  # FLUX.1-dev's transformer in bf16: 22.2 GiB (23.8 GB)


def low_vram_plan(device_type: str, bf16_supported: bool, bitsandbytes_available: bool,
                  lora_rank: int) -> tuple[dict, list[str]]:
    """What ``--low-vram`` sets for FLUX.1, whose budget is a 24 GB GPU: (config overrides, one line per choice).

    FLUX.1-dev's transformer alone is 23.8 GB in bf16 (11.9 B parameters), so no bf16 run fits 24 GB: the
    transformer is loaded in 4-bit NF4 (about 6.7 GB, :mod:`breakascene.models.quantization`) and phase 2 trains
    LoRA ``lora_rank`` on it (FLUX's default, 16). T5-XXL (4.8 B parameters, 9.5 GB in bf16) stays frozen in bf16
    except the handle rows, which train through it. Gradient checkpointing on both; 8-bit Adam where it runs. NF4
    needs CUDA and bitsandbytes; without them the run keeps a bf16 transformer and says it will not fit 24 GB. Not
    yet measured on a GPU (``GPU_GROUPS=flux benchmarks/gpu.sh`` does).
    """
    options = {"mixed_precision": "bf16", "gradient_checkpointing": True, "train_text_encoder": False,
               "lora_rank": lora_rank, "use_8bit_adam": False}
    notes = []
    if device_type == "cuda" and not bf16_supported:
        options["mixed_precision"] = "fp16"
    if device_type != "cuda" and not bf16_supported:
        options["mixed_precision"] = "no"
        notes.append("fp32: this CPU has no native bf16 (AVX512-BF16 or AMX)")
    else:
        notes.append(f"mixed precision {options['mixed_precision']}: frozen weights stored in it, autocast compute")
    notes.append("gradient checkpointing on the transformer and T5")
    notes.append(f"FLUX.1: LoRA rank {lora_rank} on the transformer's attention in phase 2, T5's layers frozen")
    if device_type == "cuda" and bitsandbytes_available:
        options["quantize_base"] = "nf4"
        options["use_8bit_adam"] = True
        notes.append("transformer in 4-bit NF4 (bitsandbytes, QLoRA): about 6.7 GB instead of 23.8 GB in bf16")
        notes.append("8-bit Adam on the LoRA adapters")
    else:
        why = "no CUDA GPU" if device_type != "cuda" else "bitsandbytes is not installed (pip install 'break-a-scene[bnb]')"
        notes.append(f"transformer not quantized ({why}): FLUX.1-dev's alone holds {FLUX_BF16_TRANSFORMER_GIB:.1f} GiB "
                     "in bf16, which does not fit a 24 GB GPU")
    return options, notes
