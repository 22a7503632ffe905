"""The models ``bench`` measures: full-size architectures with random weights (nothing is downloaded; a step costs
what the real model's does), the built-in tiny ones, or a real model."""

from __future__ import annotations

import re

RANDOM_MODELS = {  # --model values that build an architecture with random weights:
    # (module of breakascene.models, its shape, prediction type, latent size)
    "random:sd2.1-base": ("tiny", "SD21_BASE_SHAPE", "epsilon", 64),
    "random:sd2.1": ("tiny", "SD21_BASE_SHAPE", "v_prediction", 96),
    "random:sdxl-base": ("tiny_sdxl", "SDXL_BASE_SHAPE", "epsilon", 128),
}
# FLUX.1-dev's width at any depth: random:flux-dev (19 dual-stream, 38 single-stream blocks, 24 T5 layers) or
# random:flux-dev-<D>d<S>s[<T>t], e.g. random:flux-dev-1d1s2t (the full model does not fit 24 GB of RAM)
FLUX_RANDOM_MODEL = re.compile(r"random:flux-dev(?:-(\d+)d(\d+)s(?:(\d+)t)?)?")
DEFAULT_BENCH_MODEL = "random:sd2.1-base"


def is_random_model(model: str) -> bool:
    return model in RANDOM_MODELS or FLUX_RANDOM_MODEL.fullmatch(model) is not None


def random_model_family(model: str) -> tuple[bool | None, bool | None]:
    """(SDXL?, FLUX.1?) of a random model, by its name; (None, None) for any other model (told from the model)."""
    if FLUX_RANDOM_MODEL.fullmatch(model):
        return False, True
    if model in RANDOM_MODELS:
        return RANDOM_MODELS[model][0] == "tiny_sdxl", False
    return None, None


def build_components(model: str):
    """The model to measure: a random-weight architecture (``random:...``), ``builtin:tiny``, or a real one."""
    from ..models import tiny, tiny_sdxl
    from ..models.families.sdxl import STABLE_DIFFUSION_XL
    from ..models.loading import Components, load_components

    if match := FLUX_RANDOM_MODEL.fullmatch(model):
        from ..models.families.flux import FLUX
        from ..models.tiny_flux import build_flux_components, flux_dev_shape

        dual, single, t5 = (int(n) if n is not None else None for n in match.groups())
        parts = build_flux_components(flux_dev_shape(dual, single, t5))
        return Components(**{k: v for k, v in parts.items() if k != "transformer"}, unet=parts["transformer"],
                          family=FLUX)
    if model not in RANDOM_MODELS:
        return load_components(model)
    module, shape, prediction, latent = RANDOM_MODELS[model]
    if module == "tiny_sdxl":
        parts = tiny_sdxl.build_sdxl_components(getattr(tiny_sdxl, shape), prediction_type=prediction, sample_size=latent)
        return Components(**parts, family=STABLE_DIFFUSION_XL)
    return Components(**tiny.build_random_components(getattr(tiny, shape), prediction_type=prediction, sample_size=latent))
