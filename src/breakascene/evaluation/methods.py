"""The evaluation's methods: ours, its four ablations and the masked baselines (TI-m, DB-m, CD-m), each a set of
``ExtractConfig`` switches plus the function that trains it. :data:`METHODS` is the one place where a
``--method`` value becomes a training function.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..config import ExtractConfig
from ..errors import ConfigError
from .settings import EvalSettings



@dataclass
class TrainRequest:
    """What a method's training function gets for one scene."""

    scene: object  # breakascene.scene.Scene at config.resolution: image (3, R, R), masks (N, R, R)
    config: ExtractConfig  # the shared settings plus the method's overrides (same lrs and steps for all)
    out: Path  # the run folder to write; it must appear only when finished (extract's run_folder does that)
    settings: EvalSettings  # e.g. collection_size for the baselines
    components: object | None = None  # a ready base model (tests); None: load config.model
    progress: bool = True


TrainFunction = Callable[[TrainRequest], None]


@dataclass(frozen=True)
class Method:
    name: str
    label: str  # the name in tables and on the plot
    # ExtractConfig fields the method sets; a function of the settings where they depend on them (step counts)
    overrides: dict | Callable[[EvalSettings], dict]
    train: TrainFunction


def train_with_extract(request: TrainRequest) -> None:
    """Break-A-Scene and its ablations: ``recipe.extract`` with the method's config switches."""
    from ..training.recipe import extract

    extract(request.scene, request.config, request.out, components=request.components, overwrite=True,
            progress=request.progress)


def train_on_collection(request: TrainRequest) -> None:
    """The masked baselines (paper Fig. 6): the engine trains on a collection made from the one image."""
    from ..training.recipe import extract
    from .collection import build_collection

    collection = build_collection(request.scene.image, request.scene.masks, seed=request.settings.seed,
                                  size=request.settings.collection_size)
    extract(request.scene, request.config, request.out, components=request.components, overwrite=True,
            progress=request.progress, collection=collection)


def baseline(trains: str) -> Callable[[EvalSettings], dict]:
    """A masked baseline's switches: one phase of ``phase1_steps + phase2_steps`` steps (our total) on the
    collection, with the plain diffusion loss, no cross-attention loss and no <bg> handle.

    The plain loss is the baselines' own (TI, DreamBooth and Custom Diffusion have no mask): the collection pastes
    the concepts on solid colours precisely so that they can be trained on whole images (paper Sec. 4, Fig. 6).

    ``trains``: "embeddings" (TI-m, at our phase-1 learning rate), "unet" (DB-m: UNet + tokens, at our phase-2
    rate) or "cross_attention_kv" (CD-m: the cross-attention K/V projections + tokens, at our phase-2 rate).
    """

    def overrides(settings: EvalSettings) -> dict:
        steps = settings.phase1_steps + settings.phase2_steps
        common = {"background": False, "attention_loss": False, "masked_loss": False}
        if trains == "embeddings":
            return {**common, "phase1_steps": steps, "phase2_steps": 0}
        params = "full" if trains == "unet" else trains
        return {**common, "phase1": False, "phase2_steps": steps, "train_text_encoder": False, "phase2_params": params}

    return overrides


METHODS: dict[str, Method] = {
    "ours": Method("ours", "Ours", {}, train_with_extract),
    "ti-m": Method("ti-m", "TI-m", baseline("embeddings"), train_on_collection),
    "db-m": Method("db-m", "DB-m", baseline("unet"), train_on_collection),
    "cd-m": Method("cd-m", "CD-m", baseline("cross_attention_kv"), train_on_collection),
    "ours-no-phase1": Method("ours-no-phase1", "Ours w/o phase 1", {"phase1": False}, train_with_extract),
    "ours-no-masked-loss": Method("ours-no-masked-loss", "Ours w/o masked loss", {"masked_loss": False}, train_with_extract),
    "ours-no-attention-loss": Method(
        "ours-no-attention-loss", "Ours w/o attention loss", {"attention_loss": False}, train_with_extract
    ),
    "ours-no-union-sampling": Method(  # the paper's ablation: one concept per step (Sec. 4.1, Fig. 7)
        "ours-no-union-sampling", "Ours w/o union sampling", {"subset_sampling": "single"}, train_with_extract
    ),
}


def training_loss(config: ExtractConfig) -> str:
    """The loss a method trained with, in words, for the results' config.json and the report."""
    rec = "masked diffusion loss" if config.masked_loss else "plain diffusion loss"
    if config.attention_loss:
        rec += f" + {config.lambda_attn:g} x cross-attention loss ({config.attention_reduction} over handles)"
    if config.prior_preservation:
        rec += f" + {config.prior_loss_weight:g} x prior preservation"
    return rec


def get_method(name: str) -> Method:
    """The method of ``--method NAME``; ConfigError if unknown."""
    if name not in METHODS:
        raise ConfigError(f"unknown --method {name!r}; choose one of {', '.join(METHODS)}")
    return METHODS[name]


def extract_config(settings: EvalSettings, method: Method) -> ExtractConfig:
    """The ``ExtractConfig`` a method trains with: the shared settings, then the method's switches."""
    values = dict(
        model=settings.model, resolution=settings.resolution, phase1_steps=settings.phase1_steps,
        phase2_steps=settings.phase2_steps, phase1_lr=settings.phase1_lr, phase2_lr=settings.phase2_lr,
        seed=settings.seed, device=settings.device, mixed_precision=settings.mixed_precision,
    )
    values.update(method.overrides(settings) if callable(method.overrides) else method.overrides)
    return ExtractConfig.from_preset("paper", **values)
