"""``world train``: trains ``builtin:shapes`` from scratch on the shapes world, then writes a diffusers folder.

Two stages and an optional third, one process, deterministic for a seed:
1. the VAE (64 px <-> 32x32x4), on scenes where half the objects carry a texture, so that it can also draw the
   benchmark's novel objects (the text-to-image model never sees one);
2. the text encoder and the UNet together, on solid objects only, v prediction with the cosine schedule,
   min-SNR-5 + 1 loss weights (:func:`snr_weights`), optionally more weight on the objects' pixels
   (:func:`object_pixel_weights`; not for the shipped weights), 10 % empty captions (classifier-free guidance)
   and an EMA of the weights, which is what is saved;
3. (``one_object_steps`` > 0; not for the shipped weights) the same loss on scenes of one object only, from
   stage 2's EMA weights rounded to fp16 (what a saved pipeline holds, so ``init`` = a stage-2 pipeline folder
   runs this stage alone and gives the same weights), with a fresh optimiser and EMA. Why: with one object,
   "a red circle" can only mean that object. Measured (docs/evaluation.md): 500 steps draw one object 92 % of
   the time (75 %) and the asked shape 42 % (34 %), but the benchmark's prompt score and leakage got worse.

Every draw of a step comes from ``(seed, stage, step)``, so a run resumed from a checkpoint continues exactly
as if it had never stopped. Checkpoints are safetensors + JSON (nothing is unpickled), every
``checkpoint_every`` steps, with a sample grid to look at.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..models.shapes import SCHEDULE, build_shapes_components
from .checkpoint import has_checkpoint, load_checkpoint, save_checkpoint
from .loss_weights import object_boxes, object_pixel_weights, snr_weights
from ..shapes_world import GENERIC_OBJECT, WorldScene, caption, random_scene, render

HELD_OUT = (
    ("yellow", "triangle", "checkered"), ("red", "square", "dotted"), ("green", "circle", "striped"),
    ("blue", "triangle", "plain"), ("red", "circle", "plain"), ("blue", "square", "striped"),
)
"""(colour, shape, background) never drawn together in training: the knowledge check's held-out prompts."""


@dataclass(frozen=True)
class WorldTrainConfig:
    """The settings that made the shipped ``builtin:shapes`` (``world train``'s defaults)."""

    seed: int = 0
    vae_steps: int = 1500
    vae_lr: float = 1e-3
    kl_weight: float = 1e-6
    steps: int = 4000
    lr: float = 1e-3
    warmup: int = 200
    batch: int = 16
    empty_caption: float = 0.1
    snr_gamma: float = 5.0
    object_weight: float = 1.0  # loss weight of the pixels in and around the objects' boxes (the background: 1)
    ema_decay: float = 0.999
    one_object_steps: int = 0  # stage 3, on one-object scenes (0: none, the shipped weights; 500 tried)
    one_object_lr: float = 3e-4
    one_object_warmup: int = 50
    max_objects: int = 3  # objects per training scene, drawn uniformly from 1 to this
    object_sizes: tuple = ()  # ((low, high) for 1 object, for 2, for 3) in pixels; (): the world's OBJECT_SIZES
    ordered_captions: bool = False  # objects named left to right (True) or in random order
    unet_channels: tuple = (32, 64, 96)
    unet_heads: tuple = (2, 4, 4)
    vae_channels: tuple = (16, 32)
    vae_attention: bool = True
    train_text_encoder: bool = True  # False: it keeps its random initial weights, as SD keeps CLIP's
    mixed_precision: str = "no"  # "bf16": the text encoder and UNet run under bf16 autocast (AMX CPUs, GPUs)
    checkpoint_every: int = 500
    sample_grids: bool = True  # a grid of the held-out prompts at every checkpoint (samples-NNNNN.png)
    threads: int = 2
    workers: int = 0  # processes that draw the scenes (0: the training process); a GPU outruns one drawer
    device: str = "cpu"  # "cuda": a few minutes on a GPU (random draws stay on the CPU, so a step draws the same)


def build_world_components(config: WorldTrainConfig) -> dict:
    """``builtin:shapes``' components with fresh random weights, in ``config``'s architecture."""
    return build_shapes_components(config.seed, config.unet_channels, config.unet_heads, config.vae_channels,
                                   config.vae_attention)


def draw_training_scene(rng: np.random.Generator, textured: bool, num_objects: int | None = None,
                        config: WorldTrainConfig = WorldTrainConfig()) -> WorldScene:
    """A scene of the training stream (``num_objects`` None: 1 to ``config.max_objects``): redrawn until no
    object of it is a :data:`HELD_OUT` combination."""
    sizes = {i + 1: tuple(pair) for i, pair in enumerate(config.object_sizes)} or None
    while True:
        count = num_objects or int(rng.integers(1, config.max_objects + 1))
        scene = random_scene(rng, textured=textured, num_objects=count, object_sizes=sizes)
        if not any((o.colour, o.shape, scene.background) in HELD_OUT for o in scene.objects):
            return scene


def training_caption(scene, rng: np.random.Generator, ordered: bool = False) -> str:
    """The scene's caption with the variations the model learns from: objects left to right (``ordered``) or
    in random order; 10 % of them without their colour, 10 % as "a <colour> object"; 10 % without the
    background."""
    described = []
    for i in range(len(scene.objects)) if ordered else rng.permutation(len(scene.objects)):
        o, r = scene.objects[i], rng.random()
        described.append(o.shape if r < 0.1 else f"{o.colour} {GENERIC_OBJECT}" if r < 0.2 else f"{o.colour} {o.shape}")
    return caption(described, None if rng.random() < 0.1 else scene.background)


def scene_pixels(scenes) -> torch.Tensor:
    """The scenes rendered: (B, 3, 64, 64) float32 in [-1, 1]."""
    pixels = np.stack([np.asarray(render(s)[0]) for s in scenes]).astype(np.float32)
    return torch.from_numpy(pixels).permute(0, 3, 1, 2) / 127.5 - 1


def batch_rng(config: WorldTrainConfig, stage: int, step: int) -> tuple[np.random.Generator, torch.Generator]:
    """The scene drawer and the noise generator of one step of one stage (1: VAE, 2: denoiser, 3: one object)."""
    return np.random.default_rng([config.seed, stage, step]), torch.Generator().manual_seed(
        config.seed * 1_000_003 + stage * 100_003 + step)


def _lr(step: int, total: int, peak: float, warmup: int) -> float:
    """Linear warm-up, then cosine decay to a tenth of the peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def training_batch(config: WorldTrainConfig, stage: int, step: int):
    """One step of one stage: the pictures (B, 3, 64, 64) in [-1, 1]; for the denoiser (stages 2 and 3) also
    their captions ("" for the empty ones) and :func:`object_boxes`, else None and None. The VAE's scenes carry
    textures half of the time; the denoiser's never, and hold one object in stage 3."""
    rng, _ = batch_rng(config, stage, step)
    if stage == 1:
        return scene_pixels([draw_training_scene(rng, rng.random() < 0.5, config=config)
                        for _ in range(config.batch)]), None, None
    scenes = [draw_training_scene(rng, False, 1 if stage == 3 else None, config) for _ in range(config.batch)]
    captions = ["" if rng.random() < config.empty_caption else training_caption(s, rng, config.ordered_captions)
                for s in scenes]
    return scene_pixels(scenes), captions, object_boxes(scenes)


class _StageBatches(torch.utils.data.Dataset):
    """Item ``i``: :func:`training_batch` of step ``start + i``, so that ``config.workers`` processes can draw
    ahead of the training step and every step still draws what it would draw alone."""

    def __init__(self, config: WorldTrainConfig, stage: int, start: int, total: int):
        self.config, self.stage, self.start, self.total = config, stage, start, total

    def __len__(self) -> int:
        return max(0, self.total - self.start)

    def __getitem__(self, i: int):
        return training_batch(self.config, self.stage, self.start + i)


def stage_batches(config: WorldTrainConfig, stage: int, start: int, total: int):
    """The batches of steps ``start .. total - 1`` of a stage, in order (drawn by ``config.workers`` processes)."""
    return torch.utils.data.DataLoader(_StageBatches(config, stage, start, total), batch_size=None,
                                       num_workers=config.workers, persistent_workers=False)


def train_vae(vae, config: WorldTrainConfig, start: int, optimizer, on_step) -> None:
    vae.train()
    for step, (images, _, _) in enumerate(stage_batches(config, 1, start, config.vae_steps), start):
        _, gen = batch_rng(config, 1, step)
        images = images.to(config.device)
        posterior = vae.encode(images).latent_dist
        latents = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=gen).to(config.device)
        recon = vae.decode(latents).sample
        mse = F.mse_loss(recon, images)
        loss = mse + config.kl_weight * posterior.kl().mean()
        for group in optimizer.param_groups:
            group["lr"] = _lr(step, config.vae_steps, config.vae_lr, config.warmup)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        on_step(step, {"mse": mse.item()})
    vae.eval()


@torch.no_grad()
def latent_scale(vae, config: WorldTrainConfig, count: int = 256) -> float:
    """1 / std of the latents of ``count`` fresh scenes: the VAE's ``scaling_factor`` (as SD's 0.18215)."""
    rng = np.random.default_rng([config.seed, 9])
    images = scene_pixels([draw_training_scene(rng, False, config=config) for _ in range(count)]).to(config.device)
    latents = vae.encode(images).latent_dist.mean
    return float(1 / latents.std())


def train_denoiser(components: dict, config: WorldTrainConfig, stage: int, start: int, optimizer, ema, on_step) -> None:
    """Stage 2 (``stage`` 2: scenes of 1-3 objects) or stage 3 (one object) from step ``start``."""
    from diffusers import DDPMScheduler
    from diffusers.training_utils import compute_snr

    total, peak, warmup = ((config.steps, config.lr, config.warmup) if stage == 2 else
                           (config.one_object_steps, config.one_object_lr, config.one_object_warmup))
    tokenizer, text_encoder, unet, vae = (components[k] for k in ("tokenizer", "text_encoder", "unet", "vae"))
    noise_scheduler = DDPMScheduler(**SCHEDULE)
    scale = vae.config.scaling_factor
    params = [p for m in (text_encoder, unet) for p in m.parameters()]
    text_encoder.train(config.train_text_encoder).requires_grad_(config.train_text_encoder)
    unet.train()
    for step, (images, captions, boxes) in enumerate(stage_batches(config, stage, start, total), start):
        _, gen = batch_rng(config, stage, step)
        with torch.no_grad():
            posterior = vae.encode(images.to(config.device)).latent_dist
            draw = torch.randn(posterior.mean.shape, generator=gen).to(config.device)
            latents = (posterior.mean + posterior.std * draw) * scale
        noise = torch.randn(latents.shape, generator=gen).to(config.device)
        timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (config.batch,), generator=gen)
        timesteps = timesteps.to(config.device)
        ids = tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                        return_tensors="pt").input_ids.to(config.device)
        with torch.autocast(torch.device(config.device).type, torch.bfloat16,
                            enabled=config.mixed_precision == "bf16"):
            noisy = noise_scheduler.add_noise(latents, noise, timesteps)
            with torch.set_grad_enabled(config.train_text_encoder):
                states = text_encoder(ids)[0]
            prediction = unet(noisy, timesteps, states).sample.float()
        target = noise_scheduler.get_velocity(latents, noise, timesteps)
        weights = object_pixel_weights(boxes.to(config.device), config.object_weight)
        loss = ((F.mse_loss(prediction, target, reduction="none") * weights).mean(dim=(1, 2, 3))
                * snr_weights(compute_snr(noise_scheduler, timesteps), config.snr_gamma)).mean()
        for group in optimizer.param_groups:
            group["lr"] = _lr(step, total, peak, warmup)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        ema.step(params)
        on_step(step, {"loss": loss.item()})


def world_optimizer(params, lr: float) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=lr, weight_decay=1e-2)


def _ema_pipeline(components: dict, ema):
    """A ``StableDiffusionPipeline`` of copies of the models, the trained ones holding the EMA weights."""
    import copy

    from diffusers import StableDiffusionPipeline

    parts = {k: copy.deepcopy(v) if k in ("text_encoder", "unet", "vae") else v for k, v in components.items()}
    ema.copy_to([p for m in (parts["text_encoder"], parts["unet"]) for p in m.parameters()])
    return StableDiffusionPipeline(**parts, safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def save_pipeline(components: dict, ema, folder: Path) -> None:
    """The EMA weights rounded to fp16, as a stock ``StableDiffusionPipeline`` folder of safetensors (about 6 MB):
    the UNet and VAE stored in fp16, the text encoder in fp32 (the same fp16 values, exactly).

    Why the text encoder is fp32: ``from_pretrained`` with no dtype loads diffusers' models in fp32 but keeps a
    transformers model's stored dtype (transformers 5), so an fp16 text encoder met an fp32 UNet at the first
    prompt ("mat1 and mat2 must have the same dtype"). Stored in fp32 (0.5 MB), every part loads in fp32.
    """
    pipe = _ema_pipeline(components, ema).to(torch.float16)
    pipe.text_encoder.to(torch.float32)
    pipe.save_pretrained(folder, safe_serialization=True)


def sample_grid(components: dict, ema, path: Path, seed: int = 0) -> None:
    """A grid of the held-out prompts (rows) by 4 seeds: what a checkpoint can draw."""
    from PIL import Image

    pipe = _ema_pipeline(components, ema)
    pipe.set_progress_bar_config(disable=True)
    prompts = [caption([f"{c} {s}"], b) for c, s, b in HELD_OUT]
    rows = []
    for prompt in prompts:
        images = pipe([prompt] * 4, num_inference_steps=25, guidance_scale=4.0, height=64, width=64,
                      generator=torch.Generator().manual_seed(seed), output_type="np").images
        rows.append(np.concatenate(list(images), axis=1))
    Image.fromarray((np.concatenate(rows, axis=0) * 255).round().astype(np.uint8)).save(path)


def load_init_pipeline(components: dict, folder: Path) -> None:
    """Loads a ``builtin:shapes``-shaped pipeline folder's text encoder, UNet and VAE into ``components``, in
    fp32; ConfigError if it is not one (another architecture or vocabulary)."""
    from diffusers import StableDiffusionPipeline

    from ..errors import ConfigError

    if not (folder / "model_index.json").is_file():
        raise ConfigError(f"--init {folder}: not a diffusers pipeline folder (no model_index.json); pass a world "
                          f"train OUT/pipeline or builtin:shapes")
    pipe = StableDiffusionPipeline.from_pretrained(folder, dtype=torch.float32, safety_checker=None,
                                                   feature_extractor=None, requires_safety_checker=False)
    if pipe.tokenizer.get_vocab() != components["tokenizer"].get_vocab():
        raise ConfigError(f"--init {folder}: its tokenizer is not the shapes world's; pass a world train OUT/pipeline")
    for name in ("text_encoder", "unet", "vae"):
        try:
            components[name].load_state_dict(getattr(pipe, name).state_dict())
        except RuntimeError:
            raise ConfigError(f"--init {folder}: its {name} is not builtin:shapes' architecture; pass a world train "
                              f"OUT/pipeline") from None
    components["vae"].register_to_config(scaling_factor=pipe.vae.config.scaling_factor)


def train_world_model(out: Path, config: WorldTrainConfig = WorldTrainConfig(), *, init: Path | None = None,
                      log=print) -> Path:
    """Trains ``builtin:shapes`` into ``out`` (``out/pipeline`` is the diffusers folder); resumes from
    ``out/checkpoint`` when it is there. ``init``: a pipeline folder whose weights stage 3 starts from, instead
    of training stages 1 and 2. Returns the pipeline folder."""
    from diffusers.training_utils import EMAModel
    from tqdm.auto import tqdm

    torch.set_num_threads(config.threads)
    components = build_world_components(config)
    if init is not None and not has_checkpoint(out / "checkpoint"):
        load_init_pipeline(components, init)
    out.mkdir(parents=True, exist_ok=True)
    vae, text_encoder, unet = components["vae"], components["text_encoder"], components["unet"]
    for model in (vae, text_encoder, unet):
        model.to(config.device)
    params = [p for m in (text_encoder, unet) for p in m.parameters()]
    optimizers = {"vae": world_optimizer(vae.parameters(), config.vae_lr), "denoiser": world_optimizer(params, config.lr)}
    ema = EMAModel(params, decay=config.ema_decay)
    progress = {"stage": "vae", "step": 0, "config": asdict(config), "seconds": 0.0, "log": []}
    if has_checkpoint(out / "checkpoint"):
        progress = load_checkpoint(out / "checkpoint", components, optimizers, ema)
        vae.register_to_config(scaling_factor=progress.get("scaling_factor", 1.0))
        ema.optimization_step = progress.get("ema_step", 0)
        log(f"resuming at {progress['stage']} step {progress['step']}")
    elif init is not None:
        progress.update(stage="one_object_start", init=str(init), scaling_factor=vae.config.scaling_factor)
    started = time.monotonic() - progress["seconds"]

    def make_on_step(stage: str, total: int, bar):
        def on_step(step: int, values: dict) -> None:
            bar.update(1)
            if step % 50 == 0 or step == total - 1:
                bar.set_postfix({k: f"{v:.4f}" for k, v in values.items()})
                progress["log"].append({"stage": stage, "step": step, **values,
                                        "seconds": round(time.monotonic() - started, 1)})
            done = step + 1
            if done % config.checkpoint_every == 0 or done == total:
                progress.update(stage=stage, step=done, seconds=time.monotonic() - started,
                                ema_step=ema.optimization_step)
                save_checkpoint(out / "checkpoint", components, optimizers, ema, progress)
                if stage != "vae" and config.sample_grids:
                    prefix = "samples" if stage == "denoiser" else "samples-one-object"
                    sample_grid(components, ema, out / f"{prefix}-{done:05d}.png", config.seed)
        return on_step

    if progress["stage"] == "vae":
        with tqdm(total=config.vae_steps, initial=progress["step"], desc="VAE", unit="step") as bar:
            train_vae(vae, config, progress["step"], optimizers["vae"], make_on_step("vae", config.vae_steps, bar))
        scale = latent_scale(vae, config)
        vae.register_to_config(scaling_factor=scale)
        progress.update(stage="denoiser", step=0, scaling_factor=scale, seconds=time.monotonic() - started)
        save_checkpoint(out / "checkpoint", components, optimizers, ema, progress)
    vae.eval().requires_grad_(False)
    if progress["stage"] == "denoiser":
        with tqdm(total=config.steps, initial=progress["step"], desc="UNet + text encoder", unit="step") as bar:
            train_denoiser(components, config, 2, progress["step"], optimizers["denoiser"], ema,
                           make_on_step("denoiser", config.steps, bar))
        ema.copy_to(params)
        progress["stage"] = "one_object_start"
    if progress["stage"] == "one_object_start":
        for model in (vae, text_encoder, unet):
            model.to(torch.float16).to(torch.float32)  # a saved pipeline's weights: the same with or without init
        optimizers["denoiser"] = world_optimizer(params, config.one_object_lr)
        ema = EMAModel(params, decay=config.ema_decay)
        progress.update(stage="one_object", step=0, seconds=time.monotonic() - started, ema_step=0)
        save_checkpoint(out / "checkpoint", components, optimizers, ema, progress)
    with tqdm(total=config.one_object_steps, initial=progress["step"], desc="one-object scenes", unit="step") as bar:
        train_denoiser(components, config, 3, progress["step"], optimizers["denoiser"], ema,
                       make_on_step("one_object", config.one_object_steps, bar))
    save_pipeline(components, ema, out / "pipeline")
    log(f"trained in {(time.monotonic() - started) / 60:.1f} min: {out / 'pipeline'}")
    return out / "pipeline"
