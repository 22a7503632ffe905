"""The import path of ``builtin:tiny-sdxl``'s builder that exported READMEs and user scripts name
(``from breakascene.models.tiny_sdxl import build_tiny_sdxl_components``); the builder lives with its family, in
:mod:`.families.sdxl.tiny`."""

from .families.sdxl.tiny import (  # noqa: F401  (re-exported)
    SDXL_BASE_SHAPE,
    TINY_SDXL_MODEL_ID,
    TINY_SDXL_RESOLUTION,
    TINY_SDXL_SHAPE,
    build_sdxl_components,
    build_tiny_sdxl_components,
)
