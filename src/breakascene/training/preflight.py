"""Every check an extraction makes before any weights load, in one place and one wording.

Front ends (the command line, the web app) can call :func:`preflight` themselves to fail early; :func:`extract`
calls it first. Nothing here downloads, loads a model or writes a file.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import ExtractConfig
from ..errors import ConfigError, SceneError
from ..handles import Handle, make_handles
from ..models.loading import Components, check_device, check_model_reference, model_family
from ..models.vae import check_vae_reference
from ..run_folder import check_clear_of_inputs
from ..scene import Scene
from .log import check_tracker
from . import memory

PAPER_CONCEPT_LIMIT = 4  # the paper reports good results for up to 4 concepts


@dataclass(frozen=True)
class Plan:
    """What :func:`preflight` found: everything ``extract`` needs to go ahead.

    ``model_path`` is ``config.model`` as a local path when the model is loaded from it (None when
    ``components`` were given); ``overwrite``/``resume`` are checked against ``out`` under the run lock.
    """

    config: ExtractConfig
    out: Path
    handles: list[Handle]  # one per mask, then <bg> when config.background
    device: torch.device
    model_path: Path | None
    overwrite: bool = False
    resume: bool = False


def preflight(
    scene: Scene,
    config: ExtractConfig,
    out: str | Path,
    *,
    components: Components | None = None,
    collection: list | None = None,
    overwrite: bool = False,
    resume: bool = False,
) -> Plan:
    """Checks the config, the scene against it, the collection, the model reference, the output folder, the
    device and the tracker; warns beyond the paper's concept limit.

    Raises:
        ConfigError, SceneError: bad input (the message names it and what to do).
    """
    family = components.family if components is not None else model_family(config.model)
    config = config.with_defaults(family.training_defaults if family is not None else {})
    config.validate()
    out = Path(out)
    handles = make_handles(scene.num_concepts, config.names, config.init_words, config.background)
    if scene.resolution != config.resolution:
        raise SceneError(f"the scene is {scene.resolution} px but the config says --resolution {config.resolution}")
    if config.background and scene.background_mask().sum() == 0:
        raise SceneError("the masks together cover the whole image, leaving nothing for <bg>; pass --no-background")
    if collection is not None:
        check_collection(collection, scene, config)
    if scene.num_concepts > PAPER_CONCEPT_LIMIT:
        warnings.warn(
            f"{scene.num_concepts} concepts: the paper reports good results for up to {PAPER_CONCEPT_LIMIT}; "
            "expect weaker disentanglement"
        )
    if components is None:
        check_model_reference(config.model)
    if config.vae is not None:
        check_vae_reference(config.vae)
    model_path = Path(config.model).expanduser() if components is None else None
    vae_path = Path(config.vae).expanduser() if config.vae is not None else None
    check_clear_of_inputs(out, [("class images", config.class_images),
                                ("model", model_path if model_path is not None and model_path.exists() else None),
                                ("VAE", vae_path if vae_path is not None and vae_path.exists() else None)])
    device = resolve_device(config)
    check_tracker(config.report_to)
    return Plan(config, out, handles, device, model_path, overwrite, resume)


def resolve_device(config: ExtractConfig) -> torch.device:
    """The training device (:func:`models.loading.check_device`), with the checks that depend on the config."""
    device = check_device(config.device)
    if config.mixed_precision == "fp16" and device.type == "cpu":
        raise ConfigError("--mixed-precision fp16 needs a GPU; use bf16 or no on the CPU")
    if config.mixed_precision == "bf16" and device.type == "cpu" and not memory.cpu_has_fast_bf16():
        warnings.warn("--mixed-precision bf16 on a CPU without native bf16 (AVX512-BF16 or AMX): its convolutions "
                      "run hundreds of times slower than in fp32 here; --mixed-precision no is faster")
    if config.use_8bit_adam:
        memory.load_bitsandbytes(device)  # fail before any weights are loaded
    if config.quantize_base:
        memory.check_quantization(device)
    return device


def check_collection(collection: list, scene: Scene, config: ExtractConfig) -> None:
    """A training collection (the evaluation's masked baselines) must fit the scene and learn no ``<bg>``."""
    if config.background:
        raise ConfigError("training on a collection learns no <bg> handle; set background=False")
    if not collection:
        raise ConfigError("the collection is empty")
    side = config.resolution
    for i, item in enumerate(collection):
        if tuple(item.image.shape) != (3, side, side) or tuple(item.masks.shape) != (scene.num_concepts, side, side):
            raise SceneError(
                f"collection item {i}: image {tuple(item.image.shape)} and masks {tuple(item.masks.shape)} must be "
                f"(3, {side}, {side}) and ({scene.num_concepts}, {side}, {side})"
            )
        if not item.present or not all(0 <= j < scene.num_concepts for j in item.present):
            raise SceneError(f"collection item {i}: present {item.present} must name concepts 0..{scene.num_concepts - 1}")
