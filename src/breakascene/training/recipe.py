"""The Break-A-Scene training recipe: two phases of union-sampled, masked, attention-guided steps.

Read top to bottom: :func:`extract` checks everything (:func:`.preflight.preflight`), loads the model, runs
the phases (:class:`.trainer.Trainer`), and writes the run folder atomically (:mod:`.run_writer`). One
training step is ``Trainer.sample_batch`` then ``Trainer.loss_step``; the pieces they call (union sampling,
the two losses, attention capture, handles, the model family) are small modules of their own with their own tests.

    scene + masks --VAE once--> cached latents (and the flipped copy)
    every step: subset s ~ union sampling -> prompt "a photo of [v_i1] and ... [v_ik]"
                z_t = noise(z, t);  eps_theta(z_t, t, p_s) with the 16x16 cross-attention recorded
                loss = ||(eps - eps_theta) * M_s||^2 + 0.01 * mean_i MSE(CA(v_i) / max, M_i)
    phase 1: only the handle vectors train (lr 5e-4); phase 2: handles + UNet + text encoder (lr 2e-6)

Memory and speed options (``ExtractConfig``, :mod:`.memory`): mixed precision stores every weight that never
trains in this run in bf16/fp16 and keeps what trains in fp32; gradient checkpointing; 8-bit Adam; LoRA
adapters instead of the full UNet in phase 2 (``lora_rank``, :mod:`breakascene.lora`); ``torch.compile``; TF32.
``docs/performance.md`` has the numbers.
"""

from __future__ import annotations

import shutil
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from ..config import ExtractConfig
from ..handles import Handle
from ..models.loading import Components, load_components
from ..models.vae import load_vae
from ..run_folder import CHECKPOINT_DIR, finalize, prepare_output, run_lock
from ..scene import Scene
from .checkpoint import check_resume, load_checkpoint_tensors, read_checkpoint_state, training_inputs
from .memory_estimate import device_memory, estimate_phase2, memory_warning
from .preflight import Plan, preflight
from .prior import class_images
from .run_writer import write_run
from .trainer import Progress, Trainer


@dataclass
class ExtractResult:
    """What :func:`extract` returns: where the run is and what it learned."""

    out: Path
    handles: list[Handle]
    handle_vectors: torch.Tensor  # (K, dim) float32
    attention_scores: dict[str, list[list[float]]] = field(default_factory=dict)  # phase -> (K, K) mass_inside
    losses: list[dict] = field(default_factory=list)

    @property
    def tokens(self) -> list[str]:
        return [h.token for h in self.handles]


def extract(
    scene: Scene,
    config: ExtractConfig | None = None,
    out: str | Path = "runs/scene",
    *,
    components: Components | None = None,
    overwrite: bool = False,
    resume: bool = False,
    callback: Callable[[Progress], None] | None = None,
    progress: bool = True,
    write_extra: Callable[[Path], None] | None = None,
    collection: list | None = None,
) -> ExtractResult:
    """Learns one handle per masked concept (and ``<bg>``) and writes a run folder at ``out``.

    Args:
        scene: the photo and masks (:func:`breakascene.load_scene`), already at ``config.resolution``.
        config: the method's settings; ``ExtractConfig()`` is the paper's.
        out: the run folder to write. It appears only when the run has finished (see ``run_folder``).
        components: a ready base model (e.g. for tests or notebooks that keep one in memory); by default
            ``config.model`` is loaded. It is modified in place (handles added, weights trained).
        overwrite: replace an existing ``out`` (and a stale ``out.partial``).
        resume: continue the interrupted run in ``out.partial`` from its last checkpoint.
        callback: called with a :class:`Progress` after every step (raise inside it to stop the run).
        progress: show a tqdm progress bar.
        write_extra: called with the unfinished run folder just before it is renamed to ``out``, to add files
            (e.g. the masks ``extract --text-masks`` made) that must appear atomically with the run.
        collection: train on these images instead of union-sampling the scene (the evaluation's masked
            baselines, paper Fig. 6): items with ``image`` (3, R, R), ``masks`` (N, R, R), zero for a concept
            not in the image, and ``present`` (the concept indices in it, which make its prompt). Needs
            ``config.background`` off. The scene is still what the attention snapshots are taken on.

    Raises:
        ConfigError, SceneError, RunError: bad input, before any weights are loaded where possible.
    """
    plan = preflight(scene, config or ExtractConfig(), out, components=components, collection=collection,
                     overwrite=overwrite, resume=resume)
    with run_lock(plan.out):
        partial = prepare_output(plan.out, overwrite=overwrite, resume=resume)
        try:
            trainer = _train(scene, plan, partial, components, callback, progress, collection)
            vectors = write_run(partial, scene, plan.config, trainer.components, trainer.handles,
                                attention_scores=trainer.attention_scores, losses=trainer.loss_log,
                                train_seconds=trainer.train_seconds)
            if write_extra is not None:
                write_extra(partial)
        except BaseException:
            # A run that got as far as a checkpoint stays resumable; anything less leaves nothing behind.
            if not (partial / CHECKPOINT_DIR / "state.json").is_file():
                shutil.rmtree(partial, ignore_errors=True)
            raise
        finalize(partial, plan.out)
    return ExtractResult(plan.out, trainer.handles, vectors, trainer.attention_scores, trainer.loss_log)


def _train(scene: Scene, plan: Plan, partial: Path, components: Components | None,
           callback: Callable[[Progress], None] | None, progress: bool, collection: list | None) -> Trainer:
    """Loads the model, restores a checkpoint if resuming, and runs the phases inside ``partial``."""
    config = plan.config
    checkpoint_folder = partial / CHECKPOINT_DIR
    state = read_checkpoint_state(checkpoint_folder) if plan.resume else None
    inputs = training_inputs(scene, collection)
    if state is not None:
        check_resume(state, config, inputs, checkpoint_folder)
    components = _ready_components(config, components)
    _warn_if_phase2_cannot_fit(config, components, torch.device(plan.device))
    prior = class_images(config, components, partial / "class_images", plan.device) if config.prior_preservation else None

    trainer = Trainer(scene, config, components, plan.handles, plan.device, collection, inputs)
    trainer.setup(prior)
    if state is not None:  # put the checkpoint's weights and random states back, and start where it stopped
        trainer.load_state_dict(state, load_checkpoint_tensors(checkpoint_folder), checkpoint_folder)
    try:
        trainer.train(partial, callback=callback, progress=progress)
    finally:
        trainer.cleanup()
    return trainer


def _warn_if_phase2_cannot_fit(config: ExtractConfig, components: Components, device: torch.device) -> None:
    """Prints :mod:`.memory_estimate`'s line when phase 2's weights, gradients and Adam state alone exceed the
    device's memory (the run goes on: the estimate leaves out what other options may save on the device)."""
    if not any(phase.name == "phase2" for phase in config.phases):
        return
    where = "this GPU" if device.type == "cuda" else "this machine"
    warning = memory_warning(estimate_phase2(components, config), device_memory(device), where)
    if warning:
        print(f"warning: {warning}", file=sys.stderr)


def _ready_components(config: ExtractConfig, components: Components | None) -> Components:
    """``config.model`` loaded (or the given components), with the prediction type the config asks for."""
    if components is None:
        components = load_components(config.model, prediction_type=config.prediction_type, vae=config.vae,
                                     quantize_base=config.quantize_base)
        if Path(config.model).expanduser().is_file():  # a single file's prediction type is a decision: say it
            print(f"{config.model}: {components.prediction_type} ({components.prediction_source}); "
                  "--prediction-type changes it", file=sys.stderr)
    else:
        if config.prediction_type and components.prediction_type != config.prediction_type:
            scheduler = components.scheduler
            components.scheduler = type(scheduler).from_config(scheduler.config, prediction_type=config.prediction_type)
        if config.vae is not None:
            components.vae = load_vae(config.vae, like=components.vae)
    if components.native_resolution != config.resolution:
        warnings.warn(
            f"the model's native resolution is {components.native_resolution} px but --resolution is "
            f"{config.resolution}; results are usually best at the native size"
        )
    return components
