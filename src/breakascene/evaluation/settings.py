"""``eval run``'s settings: everything it needs besides the scenes."""

from __future__ import annotations

from dataclasses import dataclass

from ..config import DEFAULT_MODEL
from ..errors import ConfigError
from ..inference.options import SD_GUIDANCE, SD_STEPS
from .collection import DEFAULT_COLLECTION_SIZE
from .prompts import choose_templates



@dataclass
class EvalSettings:
    """Everything ``eval run`` needs besides the scenes; the learning rates and steps are shared by all methods."""

    method: str = "ours"
    model: str = DEFAULT_MODEL
    resolution: int = 512
    phase1_steps: int = 400
    phase2_steps: int = 400
    phase1_lr: float = 5e-4
    phase2_lr: float = 2e-6
    seed: int = 0  # training seed of every scene; image i of every prompt uses seed + i
    templates: int | None = None  # the first N of the 10 templates; None: all
    images_per_prompt: int = 1
    steps: int = SD_STEPS  # sampling steps (the evaluation is the paper's, on SD)
    guidance: float = SD_GUIDANCE
    scheduler: str = "default"
    prompts_per_batch: int = 10  # prompts in one generation work item
    collection_size: int = DEFAULT_COLLECTION_SIZE  # baselines: images in the Fig. 6 collection
    device: str | None = None  # None: the process's accelerate device
    mixed_precision: str = "no"

    def validate(self) -> None:
        for name in ("images_per_prompt", "steps", "prompts_per_batch", "collection_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        choose_templates(self.templates)
        from ..inference.pipeline import SCHEDULERS

        if self.scheduler not in SCHEDULERS:
            raise ConfigError(f"unknown --scheduler {self.scheduler!r}; choose one of {', '.join(SCHEDULERS)}")
