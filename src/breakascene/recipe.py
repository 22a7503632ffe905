"""The Break-A-Scene training recipe: two phases of union-sampled, masked, attention-guided steps.

Read top to bottom: :func:`extract` checks everything, loads the model, caches the scene's latents, runs the
phases (:class:`Trainer`), and writes the run folder atomically. One training step is
:meth:`Trainer.loss_step`; the pieces it calls (union sampling, the two losses, attention capture, handles)
are small modules of their own with their own tests.

    scene + masks --VAE once--> cached latents (and the flipped copy)
    every step: subset s ~ union sampling -> prompt "a photo of [v_i1] and ... [v_ik]"
                z_t = noise(z, t);  eps_theta(z_t, t, p_s) with the 16x16 cross-attention recorded
                loss = ||(eps - eps_theta) * M_s||^2 + 0.01 * mean_i MSE(CA(v_i) / max, M_i)
    phase 1: only the handle vectors train (lr 5e-4); phase 2: handles + UNet + text encoder (lr 2e-6)

Memory and speed options (``ExtractConfig``): mixed precision stores every weight that never trains in this
run in bf16/fp16 and keeps what trains in fp32; gradient checkpointing; 8-bit Adam; LoRA adapters instead of
the full UNet in phase 2 (``lora_rank``); ``torch.compile``; TF32. ``docs/performance.md`` has the numbers.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import math
import platform
import shutil
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from diffusers import DDPMScheduler, StableDiffusionPipeline
from diffusers.models.attention_processor import AttnProcessor2_0
from tqdm.auto import tqdm

from . import masks as mask_ops
from . import optional_bnb
from .attention import AttentionStore, attention_grid, install_capture, mass_inside
from .checkpoint import (
    load_checkpoint_tensors,
    read_checkpoint_state,
    restore_optimizer,
    restore_rng,
    save_checkpoint,
)
from .config import ExtractConfig
from .errors import ConfigError, RunError, RunFailure, SceneError, first_line
from .handles import (
    Handle,
    HandleEmbedding,
    attach_handles,
    find_handle_positions,
    make_handles,
    merge_handles,
    resolve_init_words,
    save_handles,
)
from .losses import cross_attention_loss, diffusion_loss, masked_diffusion_loss
from .models import Components, check_device, check_model_reference, load_components
from .run_folder import (
    CHECKPOINT_DIR,
    HANDLES_FILE,
    SCENE_FILE,
    check_clear_of_inputs,
    finalize,
    prepare_output,
    run_lock,
    write_json,
)
from .scene import Scene
from .training_log import TrainingLog, check_tracker, make_tracker
from .union_sampling import build_prompt, choose_handles
from .visualize import attention_figure

PAPER_CONCEPT_LIMIT = 4  # the paper reports good results for up to 4 concepts
DIAGNOSTIC_TIMESTEPS = (250, 500, 750)  # noise levels at which the end-of-phase attention maps are averaged
LOG_EVERY = 10  # read losses back (a device sync) only every this many steps
LORA_UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]  # every attention projection, as diffusers' LoRA scripts
LORA_TEXT_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]
LORA_WEIGHTS_FILE = "pytorch_lora_weights.safetensors"  # diffusers' name: pipe.load_lora_weights(run) finds it
TEXT_LORA_FILE = "text_encoder_lora.safetensors"  # peft's own keys; see _save_lora for why not diffusers' file
HALF_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class Progress:
    """What a progress callback receives after every step."""

    phase: str
    step: int  # steps done in this phase
    phase_steps: int
    global_step: int
    total_steps: int
    losses: dict[str, float] | None  # every LOG_EVERY steps and at a phase's end, else None
    elapsed: float  # seconds since training started (this process)


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


# ----------------------------------------------------------------------------------------------------------
# Small helpers


def encode_prompt(tokenizer, text_encoder, prompts: list[str], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts -> (input_ids (B, T) on the CPU, encoder_hidden_states (B, T, dim) on ``device``), the way SD
    1.x/2.x pipelines do it. The ids stay on the host: finding the handles in them must not wait for the GPU."""
    input_ids = tokenizer(
        prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids
    return input_ids, text_encoder(input_ids.to(device))[0]


@torch.no_grad()
def encode_images(vae, images: torch.Tensor, batch_size: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 3, H, W) in [0, 1] -> the VAE posterior's (mean, std), each (N, C, H/8, W/8), float32.

    Caching the posterior rather than one sample keeps the research code's per-step sampling of the
    latent without running the encoder every step. Encodes ``batch_size`` images at a time to bound memory.
    """
    means, stds = [], []
    for chunk in images.split(batch_size):
        dist = vae.encode(chunk.to(vae.device, vae.dtype) * 2 - 1).latent_dist
        means.append(dist.mean.float())
        stds.append(dist.std.float())
    return torch.cat(means), torch.cat(stds)


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in ("break-a-scene", "torch", "diffusers", "transformers", "accelerate", "safetensors", "peft",
                 "gradio", "bitsandbytes"):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def load_bitsandbytes(device: torch.device):
    """bitsandbytes for 8-bit Adam, or a ConfigError that says what to do instead."""
    if device.type != "cuda":
        raise ConfigError(
            f"--use-8bit-adam needs a CUDA GPU (bitsandbytes), not {device.type}; drop it, or use --lora-rank N "
            "to make the optimiser state small"
        )
    if not optional_bnb.installed():
        raise ConfigError("--use-8bit-adam needs bitsandbytes: pip install 'break-a-scene[bnb]'")
    return optional_bnb.load()


def add_text_encoder_lora(text_encoder, rank: int, alpha: float) -> None:
    """LoRA on the text encoder's attention projections, through peft directly.

    transformers' own ``add_adapter``/``load_adapter`` (which diffusers' text-encoder LoRA loading calls) refuse
    peft releases older than the one transformers 5.24 asks for, which is not on PyPI yet; peft's
    ``inject_adapter_in_model`` does the same injection with any peft.
    """
    from peft import LoraConfig, inject_adapter_in_model

    config = LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights="gaussian", target_modules=LORA_TEXT_TARGETS)
    inject_adapter_in_model(config, text_encoder)


def set_tf32(device: torch.device, allow: bool) -> None:
    """TF32 matmuls on Ampere+ GPUs ("high"), or strict fp32 ("highest"). Process-wide, as in PyTorch."""
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high" if allow else "highest")


def _autocast(device: torch.device, mixed_precision: str):
    if mixed_precision == "no":
        return contextlib.nullcontext()
    dtype = torch.float16 if mixed_precision == "fp16" else torch.bfloat16
    return torch.autocast(device_type=device.type, dtype=dtype)


# ----------------------------------------------------------------------------------------------------------
# Prior preservation (the research code's default, not the paper's)


def _class_images(config: ExtractConfig, components: Components, folder: Path, device: torch.device) -> torch.Tensor:
    """(N, 3, R, R) class images in [0, 1]: from --class-images, or generated once with the base model."""
    import numpy as np
    from PIL import Image

    from .scene import open_image, to_rgb
    from .scene_folder import IMAGE_SUFFIXES

    if config.class_images is not None:
        source = Path(config.class_images)
        if not source.is_dir():
            raise ConfigError(f"--class-images {source} is not a folder")
        files = sorted(p for p in source.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[: config.num_class_images or None]
        if not files:
            raise ConfigError(f"--class-images {source} holds no images (.jpg, .png, .webp)")
        if len(files) < config.num_class_images:
            warnings.warn(f"--class-images has {len(files)} images, fewer than --num-class-images {config.num_class_images}")
    else:
        folder.mkdir(parents=True, exist_ok=True)
        files = sorted(folder.glob("*.png"))
        missing = config.num_class_images - len(files)
        if missing > 0:
            pipe = StableDiffusionPipeline(
                **components.pipeline_components(), safety_checker=None, feature_extractor=None, requires_safety_checker=False
            ).to(device)
            pipe.set_progress_bar_config(disable=True)
            generator = torch.Generator(device).manual_seed(config.seed)
            for index in tqdm(range(len(files), config.num_class_images), desc="class images"):
                image = pipe(
                    config.class_prompt, height=config.resolution, width=config.resolution, generator=generator
                ).images[0]
                image.save(folder / f"{index:04d}.png")
            files = sorted(folder.glob("*.png"))
    images = []
    for path in files:
        image = to_rgb(open_image(path, "class image"))
        side = min(image.size)
        left, top = (image.width - side) // 2, (image.height - side) // 2
        image = image.crop((left, top, left + side, top + side)).resize((config.resolution,) * 2, Image.BICUBIC)
        images.append(torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).float() / 255)
    return torch.stack(images)


# ----------------------------------------------------------------------------------------------------------
# The trainer


class Trainer:
    """Holds the models, the cached scene and the random generators, and runs the phases.

    Construct with ready components (handles not yet attached); :meth:`setup` attaches the handles, installs
    the attention capture and caches latents; :meth:`run_phase` trains one phase.
    """

    def __init__(self, scene: Scene, config: ExtractConfig, components: Components, handles: list[Handle], device,
                 collection: list | None = None, inputs: dict | None = None):
        self.scene, self.config, self.components, self.handles = scene, config, components, handles
        self.collection = collection
        # recorded in every checkpoint, checked on resume (training_inputs; extract has it already)
        self.inputs = inputs if inputs is not None else training_inputs(scene, collection)
        self.device = torch.device(device)
        self.noise_scheduler = DDPMScheduler.from_config(components.scheduler.config)
        # One generator for host-side choices (subset, flip, class image), one on the device for tensors.
        self.host_rng = torch.Generator().manual_seed(config.seed)
        self.device_rng = torch.Generator(self.device).manual_seed(config.seed + 1)
        self.store = AttentionStore()
        self.loss_log: list[dict] = []
        self.train_seconds = 0.0
        self.attention_scores: dict[str, list[list[float]]] = {}
        self.training_log: TrainingLog | None = None  # set by extract: RUN/logs/train.jsonl (and a tracker)

    # -- setup ------------------------------------------------------------------------------------------
    def setup(self, class_images: torch.Tensor | None = None) -> None:
        c, cfg = self.components, self.config
        for model in (c.vae, c.unet, c.text_encoder):
            model.requires_grad_(False)
        self.handles = resolve_init_words(c.tokenizer, self.handles)
        self.embedding: HandleEmbedding = attach_handles(c.tokenizer, c.text_encoder, self.handles)
        self.handle_ids = self.embedding.handle_ids.tolist()
        if cfg.lora_rank:
            self._add_lora()
        self._store_frozen_weights_in_half()
        install_capture(c.unet, self.store)
        set_tf32(self.device, cfg.allow_tf32)
        if cfg.compile:
            c.unet.compile()  # in place: parameter names (checkpoints, saving) stay those of the plain UNet
        if cfg.gradient_checkpointing:
            c.unet.enable_gradient_checkpointing()
            # transformers 5 renamed it; 4.x only has the old name.
            enable = getattr(c.text_encoder, "activation_checkpointing_enable", None) or c.text_encoder.gradient_checkpointing_enable
            enable()

        # The training images: the scene (example 0), then a collection's items if training on one (baselines).
        # Each with its mirror image for the random flip: [e, 0] as is, [e, 1] flipped.
        masks = mask_ops.with_background(self.scene.masks) if cfg.background else self.scene.masks
        images, all_masks = [self.scene.image], [masks]
        for item in self.collection or []:
            images.append(item.image)
            all_masks.append(item.masks)
        images, all_masks = torch.stack(images), torch.stack(all_masks)  # (E, 3, R, R), (E, N, R, R)
        self.pixel_masks = torch.stack([all_masks, all_masks.flip(-1)], dim=1)  # (E, 2, N, R, R)

        c.vae.to(self.device)
        mean, std = encode_images(c.vae, torch.cat([images, images.flip(-1)]))  # (2E, C, h, w)
        self.latent_mean = torch.stack(mean.chunk(2), dim=1)  # (E, 2, C, h, w)
        self.latent_std = torch.stack(std.chunk(2), dim=1)
        if class_images is not None:
            self.class_mean, self.class_std = encode_images(c.vae, class_images)
        c.vae.to("cpu")  # not needed again until the pipeline is saved

        latent_h, latent_w = self.latent_mean.shape[-2:]
        self.grid = attention_grid(latent_h, latent_w, cfg.attention_divisor)
        self.store.query_tokens = self.grid[0] * self.grid[1]
        flat = self.pixel_masks.flatten(0, 2)
        self.latent_masks = mask_ops.resize(flat, latent_h, latent_w).view(*self.pixel_masks.shape[:3], latent_h, latent_w).to(self.device)
        self.grid_masks = mask_ops.resize(flat, *self.grid).view(*self.pixel_masks.shape[:3], *self.grid).to(self.device)
        self.latent_mean, self.latent_std = self.latent_mean.to(self.device), self.latent_std.to(self.device)
        c.unet.to(self.device)
        c.text_encoder.to(self.device)

    def _add_lora(self) -> None:
        """LoRA adapters (peft) on the UNet's attention projections, and optionally the text encoder's.

        The adapters' B matrices start at zero, so the model is unchanged until phase 2 trains them; phase 1
        runs with them in place (frozen).
        """
        from peft import LoraConfig

        c, cfg = self.components, self.config
        alpha = cfg.lora_alpha or cfg.lora_rank
        c.unet.add_adapter(LoraConfig(r=cfg.lora_rank, lora_alpha=alpha, init_lora_weights="gaussian", target_modules=LORA_UNET_TARGETS))
        if cfg.lora_text_encoder:
            add_text_encoder_lora(c.text_encoder, cfg.lora_rank, alpha)
        for model in (c.unet, c.text_encoder):
            model.requires_grad_(False)

    def _store_frozen_weights_in_half(self) -> None:
        """With mixed precision, weights that never train in this run are stored in bf16/fp16 (half the memory).

        What trains keeps float32 master weights: the handle vectors, LoRA adapters, and in a full phase 2 the
        whole UNet (and text encoder). Autocast does the compute in half precision either way.
        """
        c, cfg = self.components, self.config
        dtype = HALF_DTYPES.get(cfg.mixed_precision)
        if dtype is None:
            return
        halved = []
        if not cfg.trains_unet:
            halved.append(c.unet.to(dtype))
        if not cfg.trains_text_encoder_weights:
            halved.append(c.text_encoder.to(dtype))
        for model in halved:
            for name, p in model.named_parameters():
                if "lora_" in name:
                    p.data = p.data.float()
        self.embedding.handle_vectors.data = self.embedding.handle_vectors.data.float()

    # -- one step ---------------------------------------------------------------------------------------
    def _latents(self, mean: torch.Tensor, std: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """A scaled latent sample from the cached VAE posterior (mean, std): (B, C, h, w)."""
        sample = mean + std * torch.randn(mean.shape, generator=generator, device=self.device)
        scaling = self.components.vae.config.scaling_factor
        shift = getattr(self.components.vae.config, "shift_factor", None) or 0.0
        return (sample - shift) * scaling

    def loss_step(self) -> dict[str, torch.Tensor]:
        """Samples a union, noises the scene, runs the UNet once and returns the loss terms (tensors).

        Training on a collection (the masked baselines), it samples one of its images instead, and the
        concepts present in that image are the subset.
        """
        c, cfg = self.components, self.config
        n = len(self.handles)
        if self.collection:
            e = 1 + int(torch.randint(len(self.collection), (1,), generator=self.host_rng))
            subset = list(self.collection[e - 1].present)
        else:
            e = 0
            subset = choose_handles(cfg.subset_sampling, n, self.host_rng)
        flip = int(torch.rand(1, generator=self.host_rng) < cfg.flip_probability)
        prompts = [build_prompt([self.handles[i].token for i in subset])]

        mean, std = self.latent_mean[e, flip : flip + 1], self.latent_std[e, flip : flip + 1]
        latents = self._latents(mean, std, self.device_rng)  # (1, C, h, w)
        if cfg.prior_preservation:
            pick = int(torch.randint(len(self.class_mean), (1,), generator=self.host_rng))
            latents = torch.cat([latents, self._latents(self.class_mean[pick : pick + 1], self.class_std[pick : pick + 1], self.device_rng)])
            prompts.append(cfg.class_prompt)
        batch = latents.shape[0]
        noise = torch.randn(latents.shape, generator=self.device_rng, device=self.device)
        timesteps = torch.randint(
            0, self.noise_scheduler.config.num_train_timesteps, (batch,), generator=self.device_rng, device=self.device
        )
        noisy_latents = self.noise_scheduler.add_noise(latents, noise, timesteps)
        if self.noise_scheduler.config.prediction_type == "v_prediction":
            target = self.noise_scheduler.get_velocity(latents, noise, timesteps)
        else:
            target = noise

        self.store.reset()
        self.store.recording = cfg.attention_loss
        with _autocast(self.device, cfg.mixed_precision):
            input_ids, encoder_hidden_states = encode_prompt(c.tokenizer, c.text_encoder, prompts, self.device)
            model_pred = c.unet(noisy_latents, timesteps, encoder_hidden_states).sample  # (B, C, h, w)

        terms: dict[str, torch.Tensor] = {}
        if cfg.masked_loss:
            union_mask = self.latent_masks[e, flip, subset].amax(dim=0)[None]  # (1, h, w)
            terms["rec"] = masked_diffusion_loss(model_pred[:1], target[:1], union_mask, cfg.normalize_by_mask_area)
        else:  # ablation: the plain, unmasked diffusion loss
            terms["rec"] = diffusion_loss(model_pred[:1], target[:1])
        if cfg.attention_loss:
            maps = self.store.mean_map(*self.grid)[0]  # (gh, gw, T) for the instance prompt
            positions = find_handle_positions(input_ids[0], [self.handle_ids[i] for i in subset])
            handle_maps = maps[..., positions].permute(2, 0, 1)  # (k, gh, gw)
            terms["attention"] = cross_attention_loss(handle_maps, self.grid_masks[e, flip, subset], cfg.attention_reduction)
        if cfg.prior_preservation:
            terms["prior"] = diffusion_loss(model_pred[1:], target[1:])
        total = terms["rec"]
        if "attention" in terms:
            total = total + cfg.lambda_attn * terms["attention"]
        if "prior" in terms:
            total = total + cfg.prior_loss_weight * terms["prior"]
        terms["total"] = total
        return terms

    # -- a phase ----------------------------------------------------------------------------------------
    def trainable_parameters(self, trains_model: bool) -> dict[str, torch.nn.Parameter]:
        """Phase 1: the handle vectors only. Phase 2: plus the UNet and the text encoder's layers, or with
        ``lora_rank`` plus the LoRA adapters only."""
        params = {"handles": self.embedding.handle_vectors}
        self.embedding.handle_vectors.requires_grad_(True)
        c = self.components
        if trains_model and self.config.lora_rank:
            models = [("unet", c.unet)] + ([("text_encoder", c.text_encoder)] if self.config.lora_text_encoder else [])
            for prefix, model in models:
                for name, p in model.named_parameters():
                    if "lora_" in name:
                        p.requires_grad_(True)
                        params[f"{prefix}.{name}"] = p
        elif trains_model and self.config.phase2_params == "cross_attention_kv":
            for name, p in c.unet.named_parameters():  # Custom Diffusion's choice (the CD-m baseline)
                if ".attn2.to_k." in name or ".attn2.to_v." in name:
                    p.requires_grad_(True)
                    params[f"unet.{name}"] = p
        elif trains_model:
            c.unet.requires_grad_(True)
            for name, p in c.unet.named_parameters():
                params[f"unet.{name}"] = p
            if self.config.train_text_encoder:
                for name, p in c.text_encoder.named_parameters():
                    if "token_embedding." in name:
                        continue  # ordinary words keep their meaning; the handle rows are "handles" above
                    p.requires_grad_(True)
                    params[f"text_encoder.{name}"] = p
        return params

    def make_optimizer(self, params: list[torch.nn.Parameter], lr: float) -> torch.optim.Optimizer:
        cfg = self.config
        if cfg.use_8bit_adam:
            optim = load_bitsandbytes(self.device).optim
            kind = optim.AdamW8bit if cfg.optimizer == "adamw" else optim.Adam8bit
            return kind(params, lr=lr, betas=(cfg.adam_beta1, cfg.adam_beta2), weight_decay=cfg.weight_decay)
        kind = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
        # The fused update (one kernel over all tensors) instead of several per tensor: phase 2 updates 1.2 B
        # parameters, and on the CPU the fused step measured 3.3x faster (docs/performance.md).
        fused = self.device.type in ("cuda", "cpu")
        return kind(params, lr=lr, betas=(cfg.adam_beta1, cfg.adam_beta2), weight_decay=cfg.weight_decay, fused=fused)

    def run_phase(
        self,
        index: int,
        name: str,
        steps: int,
        lr: float,
        trains_model: bool,
        *,
        start_step: int,
        global_offset: int,
        checkpoint_folder: Path,
        optimizer_state: Path | None,
        callback: Callable[[Progress], None] | None,
        bar: tqdm | None,
        started: float,
    ) -> None:
        cfg = self.config
        params = self.trainable_parameters(trains_model)
        optimizer = self.make_optimizer(list(params.values()), lr)
        scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.mixed_precision == "fp16")
        if optimizer_state is not None:
            restore_optimizer(optimizer_state, optimizer)
        self.components.unet.train(trains_model)
        self.components.text_encoder.train(trains_model)
        # Every step's losses go to the training log, which reads them back (a device sync) only every LOG_EVERY
        # steps, before a checkpoint and at the phase's end; that is also where a non-finite loss is caught.
        log = self.training_log or TrainingLog(checkpoint_folder.parent / "logs")  # (as in a run folder)

        for step in range(start_step, steps):
            terms = self.loss_step()
            log.record(name, step + 1, global_offset + step + 1, lr, terms)
            scaler.scale(terms["total"]).backward()
            if cfg.max_grad_norm is not None:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(list(params.values()), cfg.max_grad_norm)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)

            done = step + 1
            losses = None
            checkpoint_now = cfg.checkpoint_every and done % cfg.checkpoint_every == 0 and done < steps
            if done % LOG_EVERY == 0 or done == steps or checkpoint_now:
                records = log.flush()
                self._stop_if_not_finite(records, steps, checkpoint_folder)
                losses = {k: v for k, v in records[-1].items() if k not in ("phase", "step", "global_step", "lr")}
                if done % LOG_EVERY == 0 or done == steps:
                    self.loss_log.append({"phase": name, "step": done, **losses})
            if bar is not None:
                bar.update(1)
                if losses is not None:
                    bar.set_postfix({k: f"{v:.4f}" for k, v in losses.items()}, refresh=False)
            if checkpoint_now:
                self.save_checkpoint(checkpoint_folder, index, done, params, optimizer)
            if callback is not None:
                callback(Progress(name, done, steps, global_offset + done, cfg.total_steps, losses, time.time() - started))
        # A checkpoint at each phase boundary lets --resume skip a finished phase even without --checkpoint-every.
        if cfg.checkpoint_every:
            self.save_checkpoint(checkpoint_folder, index, steps, params, optimizer)
        for p in params.values():
            p.requires_grad_(False)

    def _stop_if_not_finite(self, records: list[dict], steps: int, checkpoint_folder: Path) -> None:
        """Raises RunFailure if a loss of these steps was NaN or infinite, before anything of them is saved."""
        bad = next((r for r in records if not math.isfinite(r["total"])), None)
        if bad is None:
            return
        state = read_checkpoint_state(checkpoint_folder)
        if state is None:
            kept = "no checkpoint was written before it (use --checkpoint-every N to keep one)"
        else:
            kept = (f"the last good checkpoint ({self.config.phases[state['phase_index']][0]} step {state['step']}) "
                    f"is kept in {checkpoint_folder.parent}")
        raise RunFailure(
            f"the loss became non-finite at {bad['phase']} step {bad['step']} of {steps}; {kept}. The same settings "
            "fail the same way: lower the learning rate or --lambda-attn and start over (--overwrite)"
        )

    def save_checkpoint(self, folder: Path, phase_index: int, step: int, params: dict, optimizer) -> None:
        save_checkpoint(
            folder,
            trainable=params,
            optimizer=optimizer,
            generators={"host": self.host_rng, "device": self.device_rng},
            state={
                "phase_index": phase_index,
                "step": step,
                "fingerprint": self.config.training_fingerprint(),
                "inputs": self.inputs,
                "loss_log": self.loss_log,
                "attention_scores": self.attention_scores,
            },
        )

    def load_trained_weights(self, tensors: dict[str, torch.Tensor]) -> None:
        """Puts a checkpoint's trained tensors back in place (handles; UNet and text encoder if present)."""
        with torch.no_grad():
            self.embedding.handle_vectors.copy_(tensors["handles"])
            unet = {k[len("unet."):]: v for k, v in tensors.items() if k.startswith("unet.")}
            text = {k[len("text_encoder."):]: v for k, v in tensors.items() if k.startswith("text_encoder.")}
        if unet:  # all of the UNet after a full phase 2; only its LoRA adapters with lora_rank
            whole = not self.config.lora_rank and self.config.phase2_params == "full"
            unexpected = self.components.unet.load_state_dict(unet, strict=whole).unexpected_keys
            if unexpected:
                raise RunError(f"the checkpoint does not fit this model (e.g. {unexpected[0]}); start the run again")
        if text:
            self.components.text_encoder.load_state_dict(text, strict=False)

    # -- diagnostics ------------------------------------------------------------------------------------
    @torch.no_grad()
    def attention_snapshot(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Each handle's map on the (unflipped) scene with all handles in the prompt, averaged over a few
        noise levels, with its own fixed noise so the training's random stream is untouched.

        Returns:
            maps: (N, gh, gw) float, non-negative; scores: (N, N) ``mass_inside`` against the pixel masks.
        """
        c = self.components
        rng = torch.Generator(self.device).manual_seed(self.config.seed + 12345)
        prompt = build_prompt([h.token for h in self.handles])
        self.store.recording = True
        maps = []
        for t in DIAGNOSTIC_TIMESTEPS:
            latents = self._latents(self.latent_mean[0, :1], self.latent_std[0, :1], rng)
            noise = torch.randn(latents.shape, generator=rng, device=self.device)
            timesteps = torch.tensor([t], device=self.device)
            self.store.reset()
            with _autocast(self.device, self.config.mixed_precision):
                input_ids, hidden = encode_prompt(c.tokenizer, c.text_encoder, [prompt], self.device)
                c.unet(self.noise_scheduler.add_noise(latents, noise, timesteps), timesteps, hidden)
            positions = find_handle_positions(input_ids[0], self.handle_ids)
            maps.append(self.store.mean_map(*self.grid)[0][..., positions].permute(2, 0, 1).float())
        self.store.reset()
        maps = torch.stack(maps).mean(dim=0).cpu()
        return maps, mass_inside(maps, self.pixel_masks[0, 0])


# ----------------------------------------------------------------------------------------------------------
# The entry point


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
    config = config or ExtractConfig()
    config.validate()
    out = Path(out)
    handles = make_handles(scene.num_concepts, config.names, config.init_words, config.background)
    if scene.resolution != config.resolution:
        raise SceneError(f"the scene is {scene.resolution} px but the config says --resolution {config.resolution}")
    if config.background and scene.background_mask().sum() == 0:
        raise SceneError("the masks together cover the whole image, leaving nothing for <bg>; pass --no-background")
    if collection is not None:
        _check_collection(collection, scene, config)
    if scene.num_concepts > PAPER_CONCEPT_LIMIT:
        warnings.warn(
            f"{scene.num_concepts} concepts: the paper reports good results for up to {PAPER_CONCEPT_LIMIT}; "
            "expect weaker disentanglement"
        )
    if components is None:
        check_model_reference(config.model)
    model_path = Path(config.model).expanduser() if components is None else None
    check_clear_of_inputs(out, [("class images", config.class_images),
                                ("model", model_path if model_path is not None and model_path.exists() else None)])
    device = resolve_device(config)
    check_tracker(config.report_to)
    with run_lock(out):
        partial = prepare_output(out, overwrite=overwrite, resume=resume)
        try:
            trainer = _train(scene, config, partial, handles, device, components, resume, callback, progress, collection)
            vectors = _write_run(partial, scene, config, trainer)
            if write_extra is not None:
                write_extra(partial)
        except BaseException:
            # A run that got as far as a checkpoint stays resumable; anything less leaves nothing behind.
            if not (partial / CHECKPOINT_DIR / "state.json").is_file():
                shutil.rmtree(partial, ignore_errors=True)
            raise
        finalize(partial, out)
    return ExtractResult(out, trainer.handles, vectors, trainer.attention_scores, trainer.loss_log)


def resolve_device(config: ExtractConfig) -> torch.device:
    """The training device (:func:`models.check_device`), with the checks that depend on the config."""
    device = check_device(config.device)
    if config.mixed_precision == "fp16" and device.type == "cpu":
        raise ConfigError("--mixed-precision fp16 needs a GPU; use bf16 or no on the CPU")
    if config.use_8bit_adam:
        load_bitsandbytes(device)  # fail before any weights are loaded
    return device


def _check_collection(collection: list, scene: Scene, config: ExtractConfig) -> None:
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


def training_inputs(scene: Scene, collection: list | None = None) -> dict:
    """What a run trains on, as content hashes: the scene as used, and a collection's images and masks."""
    from .scene import tensor_digest

    inputs = scene.fingerprint()
    if collection:
        inputs["collection"] = [[tensor_digest(item.image), tensor_digest(item.masks)] for item in collection]
    return inputs


def check_resume(state: dict, config: ExtractConfig, inputs: dict, folder: Path) -> None:
    """Refuses ``--resume`` when the checkpoint was made with other settings, another photo or other masks.

    Raises:
        ConfigError: the settings differ (named). SceneError: the photo, a mask, the number of masks or the
            collection differs (named), or the checkpoint records no inputs (written by an older version).
    """
    if state["fingerprint"] != config.training_fingerprint():
        changed = sorted(k for k, v in config.training_fingerprint().items() if state["fingerprint"].get(k) != v)
        raise ConfigError(f"--resume with different settings ({', '.join(changed)}); use the interrupted run's options")
    held = state.get("inputs")
    if held is None:
        raise SceneError(f"the checkpoint in {folder} does not record the photo and masks it was trained on (an "
                         "older break-a-scene wrote it); start over with --overwrite")
    if held["image"] != inputs["image"]:
        raise SceneError("--resume with another photo than the checkpoint was trained on (compared as resized and "
                         "cropped); give the same photo and masks, or start over with --overwrite")
    if len(held["masks"]) != len(inputs["masks"]):
        raise SceneError(f"--resume with {len(inputs['masks'])} masks, but the checkpoint was trained on "
                         f"{len(held['masks'])}; give the same masks, or start over with --overwrite")
    for i, (old, new) in enumerate(zip(held["masks"], inputs["masks"])):
        if old != new:
            raise SceneError(f"--resume with another mask {i} ({inputs['mask_names'][i]}) than the checkpoint was "
                             "trained on; give the same masks in the same order, or start over with --overwrite")
    if held.get("collection") != inputs.get("collection"):
        raise SceneError("--resume with another training collection than the checkpoint's; start over with --overwrite")


def _train(scene, config, partial, handles, device, components, resume, callback, progress, collection=None) -> Trainer:
    """Loads the model, restores a checkpoint if resuming, and runs the phases inside ``partial``."""
    checkpoint_folder = partial / CHECKPOINT_DIR
    state = read_checkpoint_state(checkpoint_folder) if resume else None
    inputs = training_inputs(scene, collection)
    if state is not None:
        check_resume(state, config, inputs, checkpoint_folder)

    if components is None:
        components = load_components(config.model, prediction_type=config.prediction_type)
        if Path(config.model).expanduser().is_file():  # a single file's prediction type is a decision: say it
            print(f"{config.model}: {components.prediction_type} ({components.prediction_source}); "
                  "--prediction-type changes it", file=sys.stderr)
    elif config.prediction_type and components.prediction_type != config.prediction_type:
        scheduler = components.scheduler
        components.scheduler = type(scheduler).from_config(scheduler.config, prediction_type=config.prediction_type)
    if components.native_resolution != config.resolution:
        warnings.warn(
            f"the model's native resolution is {components.native_resolution} px but --resolution is "
            f"{config.resolution}; results are usually best at the native size"
        )
    class_images = None
    if config.prior_preservation:
        class_images = _class_images(config, components, partial / "class_images", device)
    trainer = Trainer(scene, config, components, handles, device, collection, inputs)
    trainer.setup(class_images)

    # Resume: put the checkpoint's weights and random states back, and start where it stopped.
    start_phase, start_step = 0, 0
    if state is not None:
        tensors = load_checkpoint_tensors(checkpoint_folder)
        try:
            trainer.load_trained_weights(tensors)
        except (KeyError, RuntimeError) as error:  # a missing tensor, or one of the wrong shape
            raise RunError(f"the checkpoint in {checkpoint_folder} does not fit this run ({first_line(error)}); "
                           "start the run over with --overwrite") from error
        trainer.loss_log = state["loss_log"]
        trainer.attention_scores = state["attention_scores"]
        restore_rng(checkpoint_folder, {"host": trainer.host_rng, "device": trainer.device_rng})
        start_phase, start_step = state["phase_index"], state["step"]

    phases = config.phases
    done_before = sum(steps for _, steps, _, _ in phases[:start_phase]) + start_step
    tracker = make_tracker(config.report_to, partial / "logs", run_name(partial)) if config.report_to else None
    trainer.training_log = TrainingLog(partial / "logs", done_before if state is not None else None, tracker)
    started = time.time()
    with trainer.training_log, tqdm(total=config.total_steps, disable=not progress, desc="extract", unit="step") as bar:
        bar.update(done_before)
        for index, (name, steps, lr, trains_model) in enumerate(phases):
            if index < start_phase:
                continue
            first_step = start_step if index == start_phase else 0
            if first_step < steps:
                bar.set_description(name)
                trainer.run_phase(
                    index, name, steps, lr, trains_model,
                    start_step=first_step,
                    global_offset=sum(s for _, s, _, _ in phases[:index]),
                    checkpoint_folder=checkpoint_folder,
                    optimizer_state=checkpoint_folder if first_step > 0 else None,
                    callback=callback, bar=bar, started=started,
                )
            maps, scores = trainer.attention_snapshot()
            trainer.attention_scores[name] = scores.tolist()
            _save_attention_figure(partial / "attention" / f"{name}.png", scene, config, handles, maps, scores)
    trainer.train_seconds = time.time() - started
    return trainer


def run_name(partial: Path) -> str:
    """The run's name (its folder's), from the folder it trains in."""
    return partial.name.removesuffix(".partial")


def _save_attention_figure(path: Path, scene: Scene, config: ExtractConfig, handles, maps, scores) -> None:
    masks = mask_ops.with_background(scene.masks) if config.background else scene.masks
    path.parent.mkdir(parents=True, exist_ok=True)
    labels = [h.token for h in handles]
    attention_figure(scene.image, maps, masks, labels, scores.diagonal().tolist()).save(path)


def _write_run(partial: Path, scene: Scene, config: ExtractConfig, trainer: Trainer) -> torch.Tensor:
    """Writes the pipeline folder, handles.safetensors and scene.json into ``partial``."""
    c = trainer.components
    vectors = merge_handles(c.text_encoder)
    for model in (c.unet, c.text_encoder, c.vae):
        model.to("cpu")
    if config.lora_rank:
        # Small output: the adapters in diffusers' LoRA format; the base model is loaded again to generate.
        _save_lora(partial, c, config)
    else:
        c.unet.set_attn_processor(AttnProcessor2_0())  # drop the capture hooks: the saved UNet is stock
        pipe = StableDiffusionPipeline(
            vae=c.vae, text_encoder=c.text_encoder, tokenizer=c.tokenizer, unet=c.unet, scheduler=c.scheduler,
            safety_checker=None, feature_extractor=None, requires_safety_checker=False,
        )
        pipe.save_pretrained(partial, safe_serialization=True)
    save_handles(partial / HANDLES_FILE, trainer.handles, vectors)
    # The scene as used (resized, cropped), as a scene folder that extract reads back; <bg>'s mask beside it.
    concepts = [h.name for h in trainer.handles if not h.is_background]
    background = scene.background_mask() if config.background else None
    scene.save(partial / "scene", concepts, background=background)
    write_json(
        partial / SCENE_FILE,
        {
            "format": "break-a-scene run",
            "format_version": 1,
            "base_model": config.model,
            "resolution": config.resolution,
            "prediction_type": c.prediction_type,
            "lora": {"rank": config.lora_rank, "alpha": config.lora_alpha or config.lora_rank,
                     "weights": LORA_WEIGHTS_FILE,
                     "text_encoder": TEXT_LORA_FILE if config.lora_text_encoder else None} if config.lora_rank else None,
            "handles": [
                {"name": h.name, "token": h.token, "init_word": h.init_word, "background": h.is_background}
                for h in trainer.handles
            ],
            "masks": list(scene.mask_names),
            "seed": config.seed,
            "steps": {name: steps for name, steps, _, _ in config.phases},
            "total_steps": config.total_steps,
            "train_seconds_this_process": round(trainer.train_seconds, 1),
            "attention_mass_inside_own_mask": {
                phase: [row[i] for i, row in enumerate(matrix)] for phase, matrix in trainer.attention_scores.items()
            },
            "attention_mass_matrix": trainer.attention_scores,
            "losses": trainer.loss_log,
            "config": config.to_dict(),
            "versions": library_versions(),
        },
    )
    return vectors


def _save_lora(folder: Path, components: Components, config: ExtractConfig) -> None:
    """Writes the LoRA adapters as ``pytorch_lora_weights.safetensors`` (float32), the format
    ``StableDiffusionPipeline.load_lora_weights`` reads."""
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    def layers(model):
        return {k: v.float() for k, v in convert_state_dict_to_diffusers(get_peft_model_state_dict(model)).items()}

    StableDiffusionPipeline.save_lora_weights(
        folder,
        unet_lora_layers=layers(components.unet),
        # rank and alpha travel in the file, so loading needs no flags
        unet_lora_adapter_metadata=components.unet.peft_config["default"].to_dict(),
        weight_name=LORA_WEIGHTS_FILE,
        safe_serialization=True,
    )
    if config.lora_text_encoder:  # see add_text_encoder_lora: loaded back by generation._load_lora_run
        from safetensors.torch import save_file

        tensors = {k: v.float().contiguous() for k, v in components.text_encoder.state_dict().items() if "lora_" in k}
        save_file(tensors, str(folder / TEXT_LORA_FILE), metadata={"rank": str(config.lora_rank), "alpha": str(config.lora_alpha or config.lora_rank)})
