"""The Extract tab's resolution and steps, which follow the model: its defaults, kept where the user changed them."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

PAPER_STEPS = 400  # each phase, the paper's (ExtractConfig's defaults)
DEMO_STEPS = 30  # each phase, for builtin:tiny (random weights): enough to see the pieces work, seconds on a CPU


@dataclass(frozen=True)
class TrainingDefaults:
    """What the Extract tab proposes for a model: its resolution and the steps of the two phases."""

    resolution: int
    phase1_steps: int
    phase2_steps: int


def training_defaults(model: str) -> TrainingDefaults:
    """builtin:tiny: the demo's 30 + 30 steps at its native 128 px; builtin:shapes: its scaled steps at 64 px
    (:data:`~breakascene.models.shapes.SCALED_SETTINGS`); any other model: the paper's 400 + 400 steps
    at the model's native size where it is known without loading weights (``models.default_resolution``), else
    512.

    Never raises: while the user types, the model box holds half a name (``sd2-``), which is no valid Hub id; it
    gets 512 here, and *Start* says what is wrong with it.
    """
    from ..models.loading import PAPER_RESOLUTION, default_resolution
    from ..models.shapes import SCALED_SETTINGS, SHAPES_MODEL_ID, SHAPES_RESOLUTION
    from ..models.tiny import TINY_MODEL_ID, TINY_RESOLUTION

    model = (model or "").strip()
    if model == TINY_MODEL_ID:
        return TrainingDefaults(TINY_RESOLUTION, DEMO_STEPS, DEMO_STEPS)
    if model == SHAPES_MODEL_ID:
        return TrainingDefaults(SHAPES_RESOLUTION, SCALED_SETTINGS["phase1_steps"], SCALED_SETTINGS["phase2_steps"])
    try:
        resolution = default_resolution(model) if model else PAPER_RESOLUTION
    except (ValueError, OSError):  # a half-typed Hub id (HFValidationError), a file that is no checkpoint, ...
        resolution = PAPER_RESOLUTION
    return TrainingDefaults(resolution, PAPER_STEPS, PAPER_STEPS)


def follow_model(previous: TrainingDefaults, new: TrainingDefaults, resolution, phase1_steps,
                 phase2_steps) -> tuple:
    """The Extract tab's ``(resolution, phase 1 steps, phase 2 steps)`` after the model changed.

    A field still holding the previous model's default takes the new model's; a field the user has changed keeps
    its value, so typing a model name never throws away settings chosen on purpose.
    """
    fields = zip((resolution, phase1_steps, phase2_steps), dataclasses.astuple(previous), dataclasses.astuple(new))
    return tuple(new_default if _same_number(value, old_default) else value
                 for value, old_default, new_default in fields)


def _same_number(value, default: int) -> bool:
    """True if a number box's ``value`` (int, float, or None when cleared) equals ``default``."""
    try:
        return value is not None and float(value) == default
    except (TypeError, ValueError):
        return False


def scaled_settings(model: str) -> dict:
    """The settings besides the steps that a model brings as its defaults: builtin:shapes' learning rates, loss
    weight and init word; any other model's family's training defaults (``ModelFamily.training_defaults``: a FLUX.1
    model's LoRA rank 16, a full phase 2 being the whole 12 B-parameter transformer; nothing for SD and SDXL)."""
    from ..models.loading import model_family
    from ..models.shapes import SCALED_SETTINGS, SHAPES_MODEL_ID

    if model == SHAPES_MODEL_ID:
        return {k: v for k, v in SCALED_SETTINGS.items() if k not in ("phase1_steps", "phase2_steps")}
    family = model_family(model)
    return dict(family.training_defaults) if family is not None else {}
