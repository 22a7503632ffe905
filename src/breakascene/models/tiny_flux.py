"""The import path of ``builtin:tiny-flux``'s builder that exported READMEs and user scripts name
(``from breakascene.models.tiny_flux import build_tiny_flux_components``); the builder lives with its family, in
:mod:`.families.flux.tiny`."""

from .families.flux.tiny import (  # noqa: F401  (re-exported)
    FLUX_DEV_SHAPE,
    TINY_FLUX_MODEL_ID,
    TINY_FLUX_RESOLUTION,
    TINY_FLUX_SHAPE,
    build_flux_components,
    build_tiny_flux_components,
    flux_dev_shape,
    flux_scheduler,
    flux_transformer,
    tiny_t5_tokenizer,
)
