"""Every family (one line each), and which one a model, a pipeline folder, a loaded pipeline or a run belongs to."""

from __future__ import annotations

from . import ModelFamily
from .flux import FLUX
from .sd import STABLE_DIFFUSION
from .sdxl import STABLE_DIFFUSION_XL

FAMILIES: tuple[ModelFamily, ...] = (STABLE_DIFFUSION, STABLE_DIFFUSION_XL, FLUX)
DEFAULT_FAMILY = STABLE_DIFFUSION  # builtin:shapes', and the paper's; runs from before SDXL name no other


def family_of_pipeline_class(class_name: str) -> ModelFamily | None:
    """The family that loads a pipeline folder whose model_index.json names ``class_name``; None if none does."""
    return next((f for f in FAMILIES if class_name in f.pipeline_names), None)


def family_of_run(info) -> ModelFamily:
    """The family of a run, from its :class:`~breakascene.run_info.RunInfo` (the pipeline class it was saved as)."""
    return family_of_pipeline_class(info.pipeline) or DEFAULT_FAMILY


def family_of_builtin(model: str) -> ModelFamily | None:
    """The family whose built-in models include ``model`` (``builtin:tiny``...); None if none does."""
    return next((f for f in FAMILIES if model in f.builtin_models), None)


def family_of_single_file(layout: str) -> ModelFamily:
    """The family that loads single files of ``layout`` (:func:`..single_file.inspect_single_file`'s ``family``)."""
    return next(f for f in FAMILIES if layout in f.single_file_layouts)


def family_of_pipeline(pipe) -> ModelFamily:
    """The family of a loaded pipeline: the one whose text-to-image or inpainting pipeline class it is."""
    family = next((f for f in FAMILIES if isinstance(pipe, (f.pipeline_class, f.inpaint_pipeline_class))), None)
    if family is None:
        raise TypeError(f"{type(pipe).__name__} is not the pipeline of a model family Break-A-Scene knows")
    return family
