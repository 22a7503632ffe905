"""The sampling settings of generation and editing, with their defaults in one place.

:func:`inference.generation.generate` and :func:`inference.editing.edit` take these (or keyword arguments that
fill them), and the command line, the web app and the evaluation take their defaults and help texts from here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:  # the command line reads these defaults to build its parser: no torch import for that
    import torch

Options = TypeVar("Options", "GenerationOptions", "EditOptions")


@dataclass(frozen=True)
class GenerationOptions:
    """How :func:`~breakascene.inference.generation.generate` samples: image i of every prompt uses ``seed + i``.

    ``steps``/``guidance`` None: the run's model family's (50 and 7.5 for SD and SDXL, 28 and 3.5 for FLUX.1-dev,
    4 and 0 for FLUX.1-schnell). ``height``/``width`` None: the run's resolution. ``scheduler``: ``default`` (the run's saved scheduler),
    ``ddim`` or ``dpm`` (DPM-Solver++). ``dtype``: ``fp32``, ``fp16`` (GPU only) or ``bf16``. ``batch_size``
    None: all images of a prompt in one pipeline call on a GPU, one at a time on CPU. ``grid``: also write the
    contact sheet ``grids/grid.png``; ``attention_maps``: also ``<name>-attention.png`` per image.
    """

    num_images: int = 1
    seed: int = 0
    steps: int | None = None  # None: the model family's (ModelFamily.sampling_defaults; 50 for SD and SDXL)
    guidance: float | None = None  # None: the model family's (7.5 for SD and SDXL)
    negative: str | None = None
    height: int | None = None
    width: int | None = None
    scheduler: str = "default"
    dtype: str | torch.dtype = "fp32"
    batch_size: int | None = None
    grid: bool = True
    attention_maps: bool = False


SD_STEPS, SD_GUIDANCE = 50, 7.5
"""Sampling steps and guidance of SD 1.x/2.x and SDXL (diffusers' pipelines' defaults, the research code's):
editing's, the evaluation's, and generation's for those families."""

VARIATIONS_NUM_IMAGES = 4
"""Images :func:`~breakascene.inference.generation.variations` makes unless told (generate makes 1)."""


@dataclass(frozen=True)
class EditOptions:
    """How :func:`~breakascene.inference.editing.edit` samples: region i (from 1) with seed ``seed + i - 1``, the
    first ``blend_start`` fraction of the ``steps`` skipped (0 <= blend_start < 1); DDIM for SD and SDXL, FLUX.1's
    own sampler for FLUX. ``steps``/``guidance`` None: the model family's, as for :class:`GenerationOptions`."""

    seed: int = 0
    steps: int | None = None  # None: the model family's (50 for SD and SDXL, 28 for FLUX.1-dev)
    guidance: float | None = None  # None: the model family's (7.5 for SD and SDXL, 3.5 for FLUX.1-dev)
    blend_start: float = 0.25


def default_of(options: type, field: str):
    """The default of one field, e.g. ``default_of(GenerationOptions, "steps")`` -> 50 (for parsers and forms)."""
    return getattr(options(), field)


def with_family_defaults(options: Options, pipe) -> Options:
    """``options`` with the steps and guidance not given (None) set to the defaults of ``pipe``'s model family
    (``ModelFamily.sampling_defaults``, read from its denoiser's config)."""
    from ..models.families.registry import family_of_pipeline

    family = family_of_pipeline(pipe)
    steps, guidance = family.sampling_defaults(pipe.components[family.denoiser_name].config)
    return dataclasses.replace(options, steps=steps if options.steps is None else options.steps,
                               guidance=guidance if options.guidance is None else options.guidance)


def with_settings(options: Options | None, kind: type[Options], settings: dict) -> Options:
    """``options`` (or ``kind()``) with the fields in ``settings`` replaced; an unknown name is a TypeError, as
    for any function's keyword argument."""
    names = {f.name for f in dataclasses.fields(kind)}
    unknown = sorted(set(settings) - names)
    if unknown:
        raise TypeError(f"unexpected keyword argument {unknown[0]!r} (settings of {kind.__name__}: {', '.join(sorted(names))})")
    return dataclasses.replace(options if options is not None else kind(), **settings)
