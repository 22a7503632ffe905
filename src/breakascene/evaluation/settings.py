"""``eval run``'s settings: everything it needs besides the scenes."""

from __future__ import annotations

import dataclasses
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
    steps: int | None = None  # sampling steps; None: the model family's (50 for SD and SDXL: the paper's protocol)
    guidance: float | None = None  # None: the model family's (7.5 for SD and SDXL)
    scheduler: str = "default"
    prompts_per_batch: int = 10  # prompts in one generation work item
    collection_size: int = DEFAULT_COLLECTION_SIZE  # baselines: images in the Fig. 6 collection
    device: str | None = None  # None: the process's accelerate device
    mixed_precision: str = "no"

    def validate(self) -> None:
        for name in ("images_per_prompt", "steps", "prompts_per_batch", "collection_size"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        choose_templates(self.templates)
        from ..inference.pipeline import SCHEDULERS

        if self.scheduler not in SCHEDULERS:
            raise ConfigError(f"unknown --scheduler {self.scheduler!r}; choose one of {', '.join(SCHEDULERS)}")


def with_sampling_defaults(settings: EvalSettings) -> EvalSettings:
    """``settings`` with ``steps`` and ``guidance`` that are None set to what ``generate`` samples a run of
    ``settings.model`` with: its family's defaults (:func:`model_sampling_defaults`), so that the results' hash
    and ``config.json`` hold the numbers actually used. A model whose family cannot be told without loading it
    gets the paper's protocol (50 steps, guidance 7.5), as ``--resolution`` gets the paper's 512: loading it will
    then say what is wrong with it."""
    if settings.steps is not None and settings.guidance is not None:
        return settings
    steps, guidance = model_sampling_defaults(settings.model) or (SD_STEPS, SD_GUIDANCE)
    return dataclasses.replace(settings, steps=steps if settings.steps is None else settings.steps,
                               guidance=guidance if settings.guidance is None else settings.guidance)


def model_sampling_defaults(model: str) -> tuple[int, float] | None:
    """(steps, guidance) that ``generate`` uses for a run trained from ``model``: its family's
    ``sampling_defaults`` for its denoiser's config (50 and 7.5 for SD and SDXL; 28 and 3.5 for FLUX.1-dev, 4 and
    0 for schnell), told without loading weights. The config is read from a folder, or from a Hub id's repo (the
    cache when the Hub cannot be reached); a built-in model or a single file gets the family's defaults for an
    unknown config. None when the family cannot be told (:func:`~breakascene.models.loading.model_family`)."""
    from ..models.loading import model_family

    family = model_family(model)
    return family.run_sampling_defaults(model) if family is not None else None
