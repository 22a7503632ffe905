"""The models ``bench`` measures: full-size architectures with random weights (nothing is downloaded; a step costs
what the real model's does; each family names its own, ``ModelFamily.random_models``), the built-in tiny ones, or
a real model."""

from __future__ import annotations

DEFAULT_BENCH_MODEL = "random:sd2.1-base"


def random_model_family(model: str):
    """The ``ModelFamily`` of a ``random:`` model, or None for any other model (told from the model)."""
    from ..models.families.registry import FAMILIES

    return next((family for family in FAMILIES if family.has_random_model(model)), None)


def is_random_model(model: str) -> bool:
    return random_model_family(model) is not None


def build_components(model: str):
    """The model to measure: a random-weight architecture (``random:...``), ``builtin:tiny``, or a real one."""
    from ..models.loading import Components, load_components

    family = random_model_family(model)
    if family is None:
        return load_components(model)
    return Components(**family.build_random(model), family=family)
