"""Every family, and which one a pipeline folder or a loaded pipeline belongs to."""

from __future__ import annotations

from . import ModelFamily
from .flux import FLUX
from .sd import STABLE_DIFFUSION
from .sdxl import STABLE_DIFFUSION_XL

FAMILIES: tuple[ModelFamily, ...] = (STABLE_DIFFUSION, STABLE_DIFFUSION_XL, FLUX)


def family_of_pipeline_class(class_name: str) -> ModelFamily | None:
    """The family that loads a pipeline folder whose model_index.json names ``class_name``; None if none does."""
    return next((f for f in FAMILIES if class_name in f.pipeline_names), None)


def family_of_pipeline(pipe) -> ModelFamily:
    """The family of a loaded pipeline (FLUX's denoiser is a transformer; SDXL has a second text encoder)."""
    if getattr(pipe, "transformer", None) is not None:
        return FLUX
    return STABLE_DIFFUSION_XL if getattr(pipe, "text_encoder_2", None) is not None else STABLE_DIFFUSION
