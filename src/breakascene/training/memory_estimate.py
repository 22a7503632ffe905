"""What phase 2 will hold in memory, from the model's parameter counts, told before a run that cannot fit.

A full phase 2 keeps, besides the activations, the weights (fp32 for what trains, the half dtype for what is
frozen under ``--mixed-precision``), one gradient per trained weight (none held with
``--optimizer-in-backward``: each is used and dropped as it appears), and Adam's two moments per trained weight
(fp32, or one byte each with 8-bit Adam); a ``--quantize-base nf4`` denoiser holds about 0.56 bytes a parameter.
For SDXL that is 10.4 + 10.4 + 20.8 GB for the UNet alone. The
activations depend on the resolution and on gradient checkpointing and are not counted, so the estimate is a
lower bound: a run over it will not fit; one under it may still not.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from ..handles import layer_parameters

GB = 1024**3


@dataclass(frozen=True)
class MemoryEstimate:
    weights: float  # GiB
    gradients: float
    optimizer: float

    @property
    def total(self) -> float:
        return self.weights + self.gradients + self.optimizer

    def describe(self) -> str:
        return (f"{self.total:.1f} GB (weights {self.weights:.1f}, gradients {self.gradients:.1f}, Adam state "
                f"{self.optimizer:.1f}; activations not counted)")


def _count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def estimate_phase2(components, config) -> MemoryEstimate:
    """The phase-2 estimate for ``config`` on ``components`` (before the handles and any LoRA are added; LoRA
    adapters count as nothing, their size is a few MB)."""
    from ..models.quantization import NF4_BYTES_PER_PARAMETER

    unet = _count(components.unet)
    encoders = components.family.text_encoders(components)
    text = sum(_count(e) for e in [*encoders, *components.family.other_text_encoders(components)])
    text_layers = sum(p.numel() for e in encoders for _, p in layer_parameters(e))  # the tables never train
    if config.lora_rank:
        trained_unet, trained_text = 0, 0
    elif config.phase2_params == "cross_attention_kv":
        trained_unet = sum(p.numel() for n, p in components.unet.named_parameters()
                           if ".attn2.to_k." in n or ".attn2.to_v." in n)
        trained_text = 0
    else:
        trained_unet, trained_text = unet, (text_layers if config.train_text_encoder else 0)
    trained = trained_unet + trained_text
    frozen_bytes = 2 if config.mixed_precision in ("bf16", "fp16") else 4
    if getattr(components.unet, "is_quantized", False):  # loaded in 4 bits already: its packed storage
        frozen_unet = sum(p.numel() * p.element_size() for p in components.unet.parameters())
    elif config.quantize_base:
        frozen_unet = NF4_BYTES_PER_PARAMETER * unet
    else:
        frozen_unet = frozen_bytes * (unet - trained_unet)
    weights = 4 * trained + frozen_unet + frozen_bytes * (text - trained_text) + 4 * _count(components.vae)
    gradients = 0 if config.optimizer_in_backward else 4 * trained
    optimizer = (2 if config.use_8bit_adam else 8) * trained
    return MemoryEstimate(weights / GB, gradients / GB, optimizer / GB)


def device_memory(device: torch.device) -> float | None:
    """GiB the device has: a CUDA GPU's memory, the machine's RAM on the CPU; None where it cannot be told."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory / GB
    if device.type == "cpu" and hasattr(os, "sysconf"):
        try:
            return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GB
        except (ValueError, OSError):
            return None
    return None


def memory_warning(estimate: MemoryEstimate, available: float | None, where: str) -> str | None:
    """One line for a run whose phase 2 cannot fit ``available`` GiB (``where``: "this GPU"), else None."""
    if available is None or estimate.total <= available:
        return None
    return (f"phase 2 needs at least {estimate.describe()}, more than {where}'s {available:.1f} GB: "
            "--lora-rank 4, --optimizer-in-backward, --use-8bit-adam or --low-vram need less")
