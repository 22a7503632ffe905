"""Memory and speed options of a training run: mixed precision, TF32, 8-bit Adam, and what ``--low-vram`` picks.

``docs/performance.md`` has the numbers behind every choice. bitsandbytes itself stays hidden until 8-bit Adam
is asked for (:mod:`.optional_bnb`, which must stay importable before any library).
"""

from __future__ import annotations

import contextlib

import torch

from ..errors import ConfigError
from . import optional_bnb

HALF_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}

LOW_VRAM_OPTIONS = {
    "mixed_precision": "bf16",  # fp16 on a GPU without bf16, fp32 on a CPU without it (see low_vram_options)
    "gradient_checkpointing": True,
    "use_8bit_adam": True,
    "train_text_encoder": False,
}


def autocast(device: torch.device, mixed_precision: str):
    """``torch.autocast`` in bf16/fp16 for ``mixed_precision``, or nothing for ``"no"``."""
    if mixed_precision == "no":
        return contextlib.nullcontext()
    dtype = torch.float16 if mixed_precision == "fp16" else torch.bfloat16
    return torch.autocast(device_type=device.type, dtype=dtype)


def set_tf32(device: torch.device, allow: bool) -> None:
    """TF32 matmuls on Ampere+ GPUs ("high"), or strict fp32 ("highest"). Process-wide, as in PyTorch."""
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high" if allow else "highest")


def load_bitsandbytes(device: torch.device):
    """bitsandbytes for 8-bit Adam, or a ConfigError that says what to do instead."""
    if device.type != "cuda":
        raise ConfigError(
            f"--use-8bit-adam needs a CUDA GPU (bitsandbytes), not {device.type}; drop it, or use --lora-rank N "
            "to make the optimiser state small"
        )
    if not optional_bnb.installed():
        raise ConfigError("--use-8bit-adam needs bitsandbytes: pip install 'break-a-scene[bnb]'")
    return optional_bnb.load()


def check_quantization(device: torch.device) -> None:
    """``--quantize-base nf4`` on ``device``: a ConfigError that says what to do instead, before anything loads
    (diffusers quantizes with bitsandbytes on a GPU only)."""
    if device.type != "cuda":
        raise ConfigError(f"--quantize-base nf4 needs a CUDA GPU (diffusers quantizes with bitsandbytes there), not "
                          f"{device.type}; drop it")
    if not optional_bnb.installed():
        raise ConfigError("--quantize-base nf4 needs bitsandbytes: pip install 'break-a-scene[bnb]'")


def disable_dropout(models: list[torch.nn.Module]) -> None:
    """Sets every dropout of ``models`` to p = 0: the ``nn.Dropout`` modules and the attention probabilities'
    rate that transformers' attention layers keep as a float ``dropout``. SD's CLIP has none, but T5-XXL's config
    (FLUX.1's) has 0.1, which would be active whenever a phase trains it, and transformers checkpoints layers
    only in training mode."""
    for model in models:
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
            elif isinstance(getattr(module, "dropout", None), float):
                module.dropout = 0.0


def enable_gradient_checkpointing(unet, text_encoders: list) -> None:
    unet.enable_gradient_checkpointing()
    for encoder in text_encoders:  # transformers 5 renamed it; 4.x only has the old name
        (getattr(encoder, "activation_checkpointing_enable", None) or encoder.gradient_checkpointing_enable)()


def make_optimizer(params: list[torch.nn.Parameter], lr: float, config, device: torch.device):
    """``config``'s optimiser (Adam or AdamW, 8-bit with ``use_8bit_adam``) over ``params`` at ``lr``; with
    ``optimizer_in_backward``, one per parameter stepped in the backward pass (:mod:`.optimizer_in_backward`)."""
    if config.optimizer_in_backward:
        from .optimizer_in_backward import OptimizerInBackward

        return OptimizerInBackward(params, lambda group: _make_optimizer(group, lr, config, device))
    return _make_optimizer(params, lr, config, device)


def _make_optimizer(params: list[torch.nn.Parameter], lr: float, config, device: torch.device) -> torch.optim.Optimizer:
    betas = (config.adam_beta1, config.adam_beta2)
    if config.use_8bit_adam:
        optim = load_bitsandbytes(device).optim
        kind = optim.AdamW8bit if config.optimizer == "adamw" else optim.Adam8bit
        return kind(params, lr=lr, betas=betas, weight_decay=config.weight_decay)
    kind = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
    # The fused update (one kernel over all tensors) instead of several per tensor: phase 2 updates 1.2 B
    # parameters, and on the CPU the fused step measured 3.3x faster (docs/performance.md).
    fused = device.type in ("cuda", "cpu")
    return kind(params, lr=lr, betas=betas, weight_decay=config.weight_decay, fused=fused)


def store_frozen_weights_in_half(models: list[torch.nn.Module], mixed_precision: str) -> None:
    """Stores ``models`` (weights that never train in this run) in bf16/fp16; their LoRA adapters stay float32.

    What trains keeps float32 master weights: the handle vectors, LoRA adapters, and in a full phase 2 the
    whole UNet (and text encoder). Autocast does the compute in half precision either way.
    """
    dtype = HALF_DTYPES.get(mixed_precision)
    if dtype is None:
        return
    for model in models:
        if getattr(model, "is_quantized", False):  # a 4-bit base (--quantize-base) keeps its own storage
            continue
        model.to(dtype)
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.data = p.data.float()


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX), so that oneDNN runs bf16 convolutions.

    Without it PyTorch falls back to reference kernels. Measured on a 2-core AVX2 EPYC (torch 2.13): a 320-channel
    3x3 convolution at 64x64 took 29 s in bf16 against 0.056 s in fp32, a 1280-wide linear layer 5.5x longer.
    """
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)  # (PyTorch's own test for it)
    return True if check is None else bool(check())


def machine_facts(device: str | None) -> tuple[str, bool, bool]:
    """(device type, fast bf16, bitsandbytes installed) for ``--device`` (None: the default device)."""
    if device:
        device_type = device.split(":")[0]
    else:
        device_type = "cuda" if torch.cuda.is_available() else "cpu"
    if device_type == "cuda":
        bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    else:
        bf16 = device_type != "cpu" or cpu_has_fast_bf16()
    return device_type, bf16, optional_bnb.installed()


def low_vram_options(device_type: str, bf16_supported: bool, bitsandbytes_available: bool,
                     family=None) -> tuple[dict, list[str]]:
    """What ``--low-vram`` sets, for this machine and model ``family`` (a ``ModelFamily``; None: SD's): (config
    overrides, one line per choice).

    The budget is a 12 GB GPU with the full (not LoRA) phase 2, the paper's method. What phase 2 holds is
    UNet weights + gradients in fp32 (2 x 3.46 GB) + optimiser state: 8-bit Adam makes that 1.7 GB instead of
    6.9 GB. The text encoder (340 M parameters) stays frozen in phase 2, in half precision, which is the usual
    12 GB recipe (diffusers' and kohya's DreamBooth guides); the paper trains it, so this is a deviation.
    Gradient checkpointing keeps the activations of a 512 px step around 1 GB.

    A family with another budget changes or replaces that plan (``ModelFamily.low_vram_plan``): SDXL's 16 GB
    adds LoRA on the UNet, FLUX.1's 24 GB has its own.
    """
    options, notes = dict(LOW_VRAM_OPTIONS), []
    if device_type == "cuda" and not bf16_supported:
        options["mixed_precision"] = "fp16"
    if device_type != "cuda" and not bf16_supported:
        options["mixed_precision"] = "no"
        notes.append("fp32: this CPU has no native bf16 (AVX512-BF16 or AMX), and bf16 convolutions would run "
                     "hundreds of times slower")
    else:
        notes.append(f"mixed precision {options['mixed_precision']}: frozen weights stored in it, autocast compute")
    notes.append("gradient checkpointing: activations are recomputed in the backward pass")
    if device_type == "cuda" and bitsandbytes_available:
        notes.append("8-bit Adam (bitsandbytes): optimiser state 1.7 GB instead of 6.9 GB")
    else:
        options["use_8bit_adam"] = False
        why = "no CUDA GPU" if device_type != "cuda" else "bitsandbytes is not installed (pip install 'break-a-scene[bnb]')"
        notes.append(f"fp32 Adam: 8-bit Adam needs CUDA and bitsandbytes ({why}); add --lora-rank 4 to fit 12 GB")
    notes.append("text encoder frozen in phase 2 (the paper trains it): saves its gradients and optimiser state")
    if family is None:
        return options, notes
    return family.low_vram_plan((options, notes), device_type, bf16_supported, bitsandbytes_available)


def with_low_vram(overrides: dict, family=None) -> dict:
    """``ExtractConfig.from_preset`` overrides with ``--low-vram``'s choices for this machine put in under them.

    When ``overrides["low_vram"]`` is set, the result is this machine's :func:`low_vram_options`, then every
    given (not None) override: the order preset < ``--low-vram`` < the user's own flags. Otherwise ``overrides``.
    ``family``: the model's ``ModelFamily`` (None: told from ``overrides["model"]``,
    :func:`models.loading.model_family`).
    """
    if not overrides.get("low_vram"):
        return overrides
    if family is None and overrides.get("model"):
        from ..models.loading import model_family

        family = model_family(overrides["model"])
    chosen = low_vram_options(*machine_facts(overrides.get("device")), family=family)[0]
    return {**chosen, **{k: v for k, v in overrides.items() if v is not None}}
