"""The Break-A-Scene trainer: the cached scene, the two phases, and one training step as two hooks.

    trainer = Trainer(scene, config, components, handles, device)
    trainer.setup(class_images)           # handles attached, attention capture in, latents cached
    trainer.load_state_dict(state, ...)   # only when resuming from a checkpoint
    trainer.train(run_folder)             # every phase: sample_batch -> loss_step -> backward -> step
    trainer.cleanup()

A step is :meth:`Trainer.sample_batch` (every random choice: image, subset, flip, class image, latents, noise,
timesteps) followed by :meth:`Trainer.loss_step` (the model calls and the losses), so a subclass (the bench's
research baseline) overrides a documented hook rather than patching the loop. With prior preservation, a phase
whose trainable set the class prompt cannot reach skips the class row, and one whose text encoders do not train
encodes the class prompt once (:mod:`.class_branch`). What is model-family specific
(prompt encoding, the denoiser call, the prediction target) goes through ``components.family``.

Shapes: B batch (1, or 2 with a class image), C latent channels, h x w the latent grid, gh x gw the attention
grid, k handles in the step's subset, N handles in all, E training images, T tokens.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

from .. import masks as mask_ops
from ..attention import AttentionStore, attention_grid
from ..config import ExtractConfig, PhaseConfig
from ..errors import RunError, first_line
from ..handles import Handle, HandleEmbedding, attach_handles_to_each, find_handle_positions, handle_table_names
from ..handles import layer_parameters, resolve_init_words
from ..lora import add_lora, lora_parameters
from ..losses import cross_attention_loss, diffusion_loss, reconstruction_loss, total_loss
from ..models.loading import Components
from ..run_folder import CHECKPOINT_DIR
from ..scene import Scene
from ..union_sampling import build_prompt, choose_handles
from . import memory
from .batch import Progress, TrainBatch
from .checkpoint import load_trained_weights, restore_optimizer, restore_rng, save_checkpoint, stop_if_not_finite
from .checkpoint import training_inputs
from .class_branch import ClassBranch, cat_rows, plan_class_branch
from .diagnostics import attention_snapshot
from .log import TrainingLog, loss_terms, make_tracker
from .optimizer_in_backward import OptimizerInBackward
from .run_writer import save_attention_figure

LOG_EVERY = 10  # read losses back (a device sync) only every this many steps


class Trainer:
    """Holds the models, the cached scene and the random generators, and runs the phases.

    Construct with ready components (handles not yet attached); :meth:`setup` attaches the handles, installs
    the attention capture and caches latents; :meth:`train` runs every phase (:meth:`run_phase` one).
    """

    # False: the class row (prior preservation) runs, and its prompt is encoded, every step of every phase, as
    # the research code does (the bench's baseline; tests compare it). True: only where it changes something.
    prune_class_branch = True

    def __init__(self, scene: Scene, config: ExtractConfig, components: Components, handles: list[Handle], device,
                 collection: list | None = None, inputs: dict | None = None):
        self.scene, self.config, self.components, self.handles = scene, config, components, handles
        self.family = components.family
        self.collection = collection
        # recorded in every checkpoint, checked on resume (training_inputs; extract has it already)
        self.inputs = inputs if inputs is not None else training_inputs(scene, collection)
        self.device = torch.device(device)
        self.noise_scheduler = self.family.training_scheduler(components.scheduler)
        # One generator for host-side choices (subset, flip, class image), one on the device for tensors.
        self.host_rng = torch.Generator().manual_seed(config.seed)
        self.device_rng = torch.Generator(self.device).manual_seed(config.seed + 1)
        self.store = AttentionStore()
        self.loss_log: list[dict] = []  # every LOG_EVERY steps: {"phase", "step", loss terms}
        self.attention_scores: dict[str, list[list[float]]] = {}  # phase -> (N, N) mass_inside
        self.train_seconds = 0.0
        self.start_phase, self.start_step, self.resumed = 0, 0, False  # where train() begins (load_state_dict)
        self.training_log: TrainingLog | None = None  # train() opens RUN/logs/train.jsonl (and a tracker)
        self.class_branch = ClassBranch()  # what run_phase's phase needs of the class row; outside one, all of it

    # -- setup ------------------------------------------------------------------------------------------
    def setup(self, class_images: torch.Tensor | None = None) -> None:
        """Attaches the handles, adds LoRA, applies the memory options and caches the training latents.

        Args:
            class_images: (M, 3, R, R) in [0, 1] for prior preservation, else None.
        """
        c, cfg = self.components, self.config
        encoders = self.family.text_encoders(c)
        others = self.family.other_text_encoders(c)  # never trained, but run every step (FLUX's CLIP)
        for model in (c.vae, c.unet, *encoders, *others):
            model.requires_grad_(False)
        memory.disable_dropout([*encoders, *others])
        self.handles = resolve_init_words(c.tokenizer, self.handles, default=cfg.default_init_word)
        self.embeddings: list[HandleEmbedding] = attach_handles_to_each(self.family.tokenizers(c), encoders, self.handles)
        self.embedding = self.embeddings[0]
        self.handle_ids = self.embedding.handle_ids.tolist()
        if cfg.lora_rank:
            add_lora(c.unet, encoders, cfg.lora_rank, cfg.lora_alpha or cfg.lora_rank,
                     on_text_encoder=cfg.lora_text_encoder, targets=self.family.lora_targets,
                     text_targets=self.family.text_lora_targets)
        frozen = ([c.unet] if not cfg.trains_unet else []) + (encoders if not cfg.trains_text_encoder_weights else [])
        memory.store_frozen_weights_in_half(frozen + others, cfg.mixed_precision)
        for embedding in self.embeddings:
            embedding.handle_vectors.data = embedding.handle_vectors.data.float()
        self.family.install_capture(c.unet, self.store)
        memory.set_tf32(self.device, cfg.allow_tf32)
        if cfg.compile:
            c.unet.compile()  # in place: parameter names (checkpoints, saving) stay those of the plain UNet
        if cfg.gradient_checkpointing:
            memory.enable_gradient_checkpointing(c.unet, encoders)
        self._cache_training_images(class_images)
        for model in (c.unet, *encoders, *others):
            model.to(self.device)

    def _cache_training_images(self, class_images: torch.Tensor | None) -> None:
        """The VAE posteriors and masks of every training image, each with its mirror image (the random flip).

        The scene is example 0, then a collection's items if training on one (baselines); index [e, 0] is as
        is, [e, 1] flipped. Sets ``latent_mean``/``latent_std`` (E, 2, C, h, w), ``pixel_masks`` (E, 2, N, R, R),
        ``latent_masks`` (E, 2, N, h, w), ``grid_masks`` (E, 2, N, gh, gw) and ``grid`` (gh, gw).
        """
        c, cfg = self.components, self.config
        masks = mask_ops.with_background(self.scene.masks) if cfg.background else self.scene.masks
        images, all_masks = [self.scene.image], [masks]
        for item in self.collection or []:
            images.append(item.image)
            all_masks.append(item.masks)
        images, all_masks = torch.stack(images), torch.stack(all_masks)  # (E, 3, R, R), (E, N, R, R)
        self.pixel_masks = torch.stack([all_masks, all_masks.flip(-1)], dim=1)  # (E, 2, N, R, R)

        c.vae.to(self.device)
        mean, std = self.family.encode_images(c.vae, torch.cat([images, images.flip(-1)]))  # (2E, C, h, w)
        self.latent_mean = torch.stack(mean.chunk(2), dim=1)  # (E, 2, C, h, w)
        self.latent_std = torch.stack(std.chunk(2), dim=1)
        if class_images is not None:
            self.class_mean, self.class_std = self.family.encode_images(c.vae, class_images)
        c.vae.to("cpu")  # not needed again until the pipeline is saved

        latent_h, latent_w = self.latent_mean.shape[-2:]
        self.grid = attention_grid(latent_h, latent_w, self.family.attention_divisor or cfg.attention_divisor)
        self.store.query_tokens = self.grid[0] * self.grid[1]
        flat = self.pixel_masks.flatten(0, 2)
        self.latent_masks = mask_ops.resize(flat, latent_h, latent_w).view(*self.pixel_masks.shape[:3], latent_h, latent_w).to(self.device)
        self.grid_masks = mask_ops.resize(flat, *self.grid).view(*self.pixel_masks.shape[:3], *self.grid).to(self.device)
        self.latent_mean, self.latent_std = self.latent_mean.to(self.device), self.latent_std.to(self.device)
        # (E, 2, 6) and (6,) for a family with size conditioning (SDXL), the second for a class image; else None
        self.size_conditioning, self.full_size_conditioning = self.family.size_conditioning_table(
            self.scene.original_size, self.scene.crop_box, cfg.resolution, len(self.collection or []), self.device)

    # -- one step ---------------------------------------------------------------------------------------
    def sample_latents(self, mean: torch.Tensor, std: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """A packed latent sample from the cached VAE posterior (mean, std): (B, C, h, w)."""
        sample = mean + std * torch.randn(mean.shape, generator=generator, device=self.device)
        return self.family.pack_latents(self.components.vae, sample)

    def sample_batch(self) -> TrainBatch:
        """Draws one step's random choices (hook): the image and handle subset (union sampling, or a collection
        image and its concepts), the flip, the class image, the latent sample, the noise and the timesteps.

        The draws come in a fixed order from ``host_rng`` and ``device_rng``, which checkpoints save: a resumed
        run draws the same numbers (and the pinned losses of tests/test_recipe_losses.py depend on the order).
        The class row's draws are made even when ``class_branch`` drops the row, so the stream never depends on it.
        """
        cfg, branch = self.config, self.class_branch
        if self.collection:
            e = 1 + int(torch.randint(len(self.collection), (1,), generator=self.host_rng))
            subset = list(self.collection[e - 1].present)
        else:
            e = 0
            subset = choose_handles(cfg.subset_sampling, len(self.handles), self.host_rng)
        flip = int(torch.rand(1, generator=self.host_rng) < cfg.flip_probability)
        prompts = [build_prompt([self.handles[i].token for i in subset])]

        mean, std = self.latent_mean[e, flip : flip + 1], self.latent_std[e, flip : flip + 1]
        latents = self.sample_latents(mean, std, self.device_rng)  # (1, C, h, w)
        if cfg.prior_preservation:
            pick = int(torch.randint(len(self.class_mean), (1,), generator=self.host_rng))
            latents = torch.cat([latents, self.sample_latents(self.class_mean[pick : pick + 1], self.class_std[pick : pick + 1], self.device_rng)])
            prompts.append(cfg.class_prompt)
        noise = torch.randn(latents.shape, generator=self.device_rng, device=self.device)
        timesteps = self.family.sample_timesteps(self.noise_scheduler, latents.shape[0], self.device_rng, self.device)
        rows = len(prompts) if branch.runs else 1  # every row's noising is its own: keeping row 0 changes nothing
        latents, noise, timesteps, prompts = latents[:rows], noise[:rows], timesteps[:rows], prompts[:rows]
        encoded = prompts[:1] if branch.conditioning is not None else prompts
        input_ids = self.family.tokenize(self.components, encoded)
        size_conditioning = None if self.size_conditioning is None else torch.stack(  # a class image: R x R
            [self.size_conditioning[e, flip], self.full_size_conditioning][: len(encoded)])
        return TrainBatch(
            noisy_latents=self.family.add_noise(self.noise_scheduler, latents, noise, timesteps),
            timesteps=timesteps,
            target=self.family.prediction_target(self.noise_scheduler, latents, noise, timesteps),
            prompts=prompts,
            input_ids=input_ids,
            latent_mask=self.latent_masks[e, flip, subset].amax(dim=0)[None] if cfg.masked_loss else None,
            grid_masks=self.grid_masks[e, flip, subset] if cfg.attention_loss else None,
            handle_positions=(find_handle_positions(self.family.handle_search_ids(input_ids)[0],
                                                    [self.handle_ids[i] for i in subset]) if cfg.attention_loss else []),
            subset=subset,
            flip=bool(flip),
            prior=rows == 2,
            size_conditioning=size_conditioning,
            prior_skipped=cfg.prior_preservation and rows == 1,
            class_conditioning=branch.conditioning,
        )

    def loss_step(self, batch: TrainBatch) -> dict[str, torch.Tensor]:
        """Runs the denoiser once on ``batch`` and returns the loss terms (hook), scalar float32 tensors:
        "rec" (Eq. 1), "attention" (Eq. 2) when ``batch.grid_masks`` is set, "prior" with a class image, "total".
        """
        c, cfg = self.components, self.config
        self.store.reset()
        self.store.recording = batch.grid_masks is not None
        with memory.autocast(self.device, cfg.mixed_precision):
            conditioning = self.family.encode_prompt(c, batch.input_ids, self.device, batch.size_conditioning)
            if batch.class_conditioning is not None:
                conditioning = cat_rows(conditioning, batch.class_conditioning)
            model_pred = self.family.denoise(c.unet, batch.noisy_latents, batch.timesteps, conditioning)

        terms = {"rec": reconstruction_loss(model_pred[:1], batch.target[:1], batch.latent_mask, cfg.normalize_by_mask_area)}
        if batch.grid_masks is not None:
            maps = self.store.mean_map(*self.grid)[0]  # (gh, gw, T) for the instance prompt
            handle_maps = maps[..., batch.handle_positions].permute(2, 0, 1)  # (k, gh, gw)
            terms["attention"] = cross_attention_loss(handle_maps, batch.grid_masks, cfg.attention_reduction)
        if batch.prior:
            terms["prior"] = diffusion_loss(model_pred[1:], batch.target[1:])
        terms["total"] = total_loss(terms, {"attention": cfg.lambda_attn, "prior": cfg.prior_loss_weight})
        return terms

    # -- a phase ----------------------------------------------------------------------------------------
    def trainable_parameters(self, trains: str) -> dict[str, torch.nn.Parameter]:
        """The parameters a phase that ``trains`` this (``PhaseConfig.trains``) optimises, made trainable:
        always the handle vectors; "lora": the adapters; "cross_attention_kv": the UNet's cross-attention K/V;
        "unet": the whole UNet; "full": the UNet and the text encoder's layers (not its token table)."""
        c = self.components
        encoders = self.family.named_text_encoders(self.components)
        params = {}
        for name, embedding in zip(handle_table_names(len(self.embeddings)), self.embeddings):
            params[name] = embedding.handle_vectors
            embedding.handle_vectors.requires_grad_(True)
        named: list[tuple[str, torch.nn.Parameter]] = []
        if trains == "lora":
            models = [("unet", c.unet)] + (encoders if self.config.lora_text_encoder else [])
            named = [(f"{prefix}.{n}", p) for prefix, model in models for n, p in lora_parameters(model).items()]
        elif trains == "cross_attention_kv":  # Custom Diffusion's choice (the CD-m baseline)
            named = [(f"unet.{n}", p) for n, p in c.unet.named_parameters() if ".attn2.to_k." in n or ".attn2.to_v." in n]
        elif trains in ("unet", "full"):
            named = [(f"unet.{n}", p) for n, p in c.unet.named_parameters()]
            if trains == "full":  # ordinary words keep their meaning; the handle rows are "handles" above
                named += [(f"{prefix}.{n}", p) for prefix, encoder in encoders for n, p in layer_parameters(encoder)]
        for name, p in named:
            p.requires_grad_(True)
            params[name] = p
        return params

    def run_phase(self, index: int, phase: PhaseConfig, *, start_step: int, global_offset: int,
                  checkpoint_folder: Path, optimizer_state: Path | None, callback: Callable[[Progress], None] | None,
                  bar: tqdm | None, started: float) -> None:
        """Trains ``phase`` (the ``index``-th of ``config.phases``) from ``start_step`` to its end with its own
        optimiser (restored from ``optimizer_state`` when resuming mid-phase), checkpointing as configured."""
        cfg = self.config
        params = self.trainable_parameters(phase.trains)
        optimizer = memory.make_optimizer(list(params.values()), phase.lr, cfg, self.device)
        scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.mixed_precision == "fp16")
        if optimizer_state is not None:
            restore_optimizer(optimizer_state, optimizer)
        self.components.unet.train(phase.trains_model)
        for encoder in self.family.text_encoders(self.components):  # transformers checkpoints in training mode
            encoder.train(phase.trains_model or cfg.gradient_checkpointing)  # only; dropout is off (setup)
        self.class_branch = plan_class_branch(self, params)  # skips or caches what cannot change the weights
        # Every step's losses go to the training log, which reads them back (a device sync) only every LOG_EVERY
        # steps, before a checkpoint and at the phase's end; that is also where a non-finite loss is caught.
        log = self.training_log or TrainingLog(checkpoint_folder.parent / "logs")  # (as in a run folder)

        for step in range(start_step, phase.steps):
            batch = self.sample_batch()
            terms = self.loss_step(batch)
            log.record(phase.name, step + 1, global_offset + step + 1, phase.lr, terms,
                       not_computed=("prior",) if batch.prior_skipped else ())
            scaler.scale(terms["total"]).backward()
            if cfg.max_grad_norm is not None:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(list(params.values()), cfg.max_grad_norm)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)

            done = step + 1
            losses = None
            checkpoint_now = cfg.checkpoint_every and done % cfg.checkpoint_every == 0 and done < phase.steps
            if done % LOG_EVERY == 0 or done == phase.steps or checkpoint_now:
                records = log.flush()
                stop_if_not_finite(records, phase.steps, checkpoint_folder, [p.name for p in cfg.phases])
                losses = loss_terms(records[-1])
                if done % LOG_EVERY == 0 or done == phase.steps:
                    self.loss_log.append({"phase": phase.name, "step": done, **losses})
            if bar is not None:
                bar.update(1)
                if losses is not None:
                    bar.set_postfix({k: f"{v:.4f}" for k, v in losses.items()}, refresh=False)
            if checkpoint_now:
                self.save_checkpoint(checkpoint_folder, index, done, params, optimizer)
            if callback is not None:
                callback(Progress(phase.name, done, phase.steps, global_offset + done, cfg.total_steps, losses,
                                  time.time() - started))
        # A checkpoint at each phase boundary lets --resume skip a finished phase even without --checkpoint-every.
        if cfg.checkpoint_every:
            self.save_checkpoint(checkpoint_folder, index, phase.steps, params, optimizer)
        if isinstance(optimizer, OptimizerInBackward):
            optimizer.remove()  # the next phase hooks its own optimisers onto the handles
        for p in params.values():
            p.requires_grad_(False)
        self.class_branch = ClassBranch()

    def train(self, folder: Path, *, callback: Callable[[Progress], None] | None = None, progress: bool = True) -> None:
        """Runs every phase from where :meth:`load_state_dict` left off (the start for a new run) inside the
        unfinished run folder ``folder``: logs, checkpoints and each phase's attention figure go there."""
        cfg, phases = self.config, self.config.phases
        checkpoint_folder = folder / CHECKPOINT_DIR
        done_before = sum(p.steps for p in phases[: self.start_phase]) + self.start_step
        tracker = make_tracker(cfg.report_to, folder / "logs", folder.name.removesuffix(".partial")) if cfg.report_to else None
        self.training_log = TrainingLog(folder / "logs", done_before if self.resumed else None, tracker)
        started = time.time()
        with self.training_log, tqdm(total=cfg.total_steps, disable=not progress, desc="extract", unit="step") as bar:
            bar.update(done_before)
            for index, phase in enumerate(phases):
                if index < self.start_phase:
                    continue
                first_step = self.start_step if index == self.start_phase else 0
                if first_step < phase.steps:
                    bar.set_description(phase.name)
                    self.run_phase(
                        index, phase, start_step=first_step, global_offset=sum(p.steps for p in phases[:index]),
                        checkpoint_folder=checkpoint_folder,
                        optimizer_state=checkpoint_folder if first_step > 0 else None,
                        callback=callback, bar=bar, started=started,
                    )
                maps, scores = attention_snapshot(self)
                self.attention_scores[phase.name] = scores.tolist()
                save_attention_figure(folder / "attention" / f"{phase.name}.png", self.scene, cfg, self.handles, maps, scores)
        self.train_seconds = time.time() - started

    def cleanup(self) -> None:
        """Ends the training log's tracker run and drops recorded attention maps."""
        if self.training_log is not None:
            self.training_log.close()
        self.store.reset()

    # -- checkpoints ------------------------------------------------------------------------------------
    def state_dict(self, phase_index: int, step: int) -> dict:
        """The JSON part of a checkpoint after ``step`` steps of phase ``phase_index``."""
        return {
            "phase_index": phase_index,
            "step": step,
            "fingerprint": self.config.training_fingerprint(),
            "inputs": self.inputs,
            "loss_log": self.loss_log,
            "attention_scores": self.attention_scores,
        }

    def save_checkpoint(self, folder: Path, phase_index: int, step: int, params: dict, optimizer) -> None:
        save_checkpoint(folder, trainable=params, optimizer=optimizer, state=self.state_dict(phase_index, step),
                        generators={"host": self.host_rng, "device": self.device_rng})

    def load_state_dict(self, state: dict, tensors: dict[str, torch.Tensor], folder: Path) -> None:
        """Resumes from the checkpoint in ``folder``: its ``state`` (:meth:`state_dict`), its trained ``tensors``
        (handles; UNet and text encoder weights or adapters if present) and its random generators' states.

        Raises:
            RunError: the tensors do not fit this model (missing, unexpected or of the wrong shape).
        """
        try:
            load_trained_weights(tensors, self.embeddings, self.components.unet, self.family.named_text_encoders(self.components),
                                 whole_unet=not self.config.lora_rank and self.config.phase2_params == "full")
        except (KeyError, RuntimeError) as error:  # a missing tensor, or one of the wrong shape
            raise RunError(f"the checkpoint in {folder} does not fit this run ({first_line(error)}); "
                           "start the run over with --overwrite") from error
        self.loss_log = state["loss_log"]
        self.attention_scores = state["attention_scores"]
        restore_rng(folder, {"host": self.host_rng, "device": self.device_rng})
        self.start_phase, self.start_step = state["phase_index"], state["step"]
        self.resumed = True
