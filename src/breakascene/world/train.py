"""``world train``: trains ``builtin:shapes`` from scratch on the shapes world, then writes a diffusers folder.

Two stages, one process, deterministic for a seed:
1. the VAE (64 px <-> 32x32x4), on scenes where half the objects carry a texture, so that it can also draw the
   benchmark's novel objects (the text-to-image model never sees one);
2. the text encoder and the UNet together, on solid objects only, v prediction with the cosine schedule,
   min-SNR-5 + 1 loss weights (:func:`snr_weights`), optionally more weight on the objects' pixels
   (:func:`object_pixel_weights`; not for the shipped weights), 10 % empty captions (classifier-free guidance)
   and an EMA of the weights, which is what is saved.

Every draw of a step comes from ``(seed, stage, step)``, so a run resumed from a checkpoint continues exactly
as if it had never stopped. Checkpoints are safetensors + JSON (nothing is unpickled), every
``checkpoint_every`` steps, with a sample grid to look at.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..models.shapes import SCHEDULE, build_shapes_components
from ..shapes_world import GENERIC_OBJECT, SIZE, WorldScene, caption, random_scene, render

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
    checkpoint_every: int = 500
    sample_grids: bool = True  # a grid of the held-out prompts at every checkpoint (samples-NNNNN.png)
    threads: int = 2
    workers: int = 0  # processes that draw the scenes (0: the training process); a GPU outruns one drawer
    device: str = "cpu"  # "cuda": a few minutes on a GPU (random draws stay on the CPU, so a step draws the same)


def draw_training_scene(rng: np.random.Generator, textured: bool) -> WorldScene:
    """A scene of the training stream: redrawn until no object of it is a :data:`HELD_OUT` combination."""
    while True:
        scene = random_scene(rng, textured=textured)
        if not any((o.colour, o.shape, scene.background) in HELD_OUT for o in scene.objects):
            return scene


def training_caption(scene, rng: np.random.Generator) -> str:
    """The scene's caption with the variations the model learns from: objects in random order; 10 % of them
    without their colour, 10 % as "a <colour> object"; 10 % without the background."""
    described = []
    for i in rng.permutation(len(scene.objects)):
        o, r = scene.objects[i], rng.random()
        described.append(o.shape if r < 0.1 else f"{o.colour} {GENERIC_OBJECT}" if r < 0.2 else f"{o.colour} {o.shape}")
    return caption(described, None if rng.random() < 0.1 else scene.background)


def _images(scenes) -> torch.Tensor:
    """(B, 3, 64, 64) float32 in [-1, 1]."""
    pixels = np.stack([np.asarray(render(s)[0]) for s in scenes]).astype(np.float32)
    return torch.from_numpy(pixels).permute(0, 3, 1, 2) / 127.5 - 1


def batch_rng(config: WorldTrainConfig, stage: int, step: int) -> tuple[np.random.Generator, torch.Generator]:
    """The scene drawer and the noise generator of one step of one stage (1: VAE, 2: denoiser)."""
    return np.random.default_rng([config.seed, stage, step]), torch.Generator().manual_seed(
        config.seed * 1_000_003 + stage * 100_003 + step)


def _lr(config: WorldTrainConfig, step: int, total: int, peak: float) -> float:
    """Linear warm-up, then cosine decay to a tenth of the peak."""
    if step < config.warmup:
        return peak * (step + 1) / config.warmup
    progress = (step - config.warmup) / max(1, total - config.warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def object_boxes(scenes, margin: float = 2.0) -> torch.Tensor:
    """(B, 1, 64, 64) float32: 1 on the pixels within ``margin`` pixels of an object's bounding box, else 0.

    The box holds every pixel where a circle, a square and a triangle of that place and size differ.
    """
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32) + 0.5
    boxes = np.zeros((len(scenes), 1, SIZE, SIZE), np.float32)
    for i, scene in enumerate(scenes):
        for o in scene.objects:
            half = o.size / 2 + margin
            boxes[i, 0] = np.maximum(boxes[i, 0], (np.abs(xx - o.cx) < half) & (np.abs(yy - o.cy) < half))
    return torch.from_numpy(boxes)


def training_batch(config: WorldTrainConfig, stage: int, step: int):
    """One step of one stage: the pictures (B, 3, 64, 64) in [-1, 1]; for the denoiser (stage 2) also their
    captions ("" for the empty ones) and :func:`object_boxes`, else None and None. The VAE's scenes carry textures
    half of the time; the denoiser's never."""
    rng, _ = batch_rng(config, stage, step)
    if stage == 1:
        return _images([draw_training_scene(rng, textured=rng.random() < 0.5) for _ in range(config.batch)]), None, None
    scenes = [draw_training_scene(rng, textured=False) for _ in range(config.batch)]
    captions = ["" if rng.random() < config.empty_caption else training_caption(s, rng) for s in scenes]
    return _images(scenes), captions, object_boxes(scenes)


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
            group["lr"] = _lr(config, step, config.vae_steps, config.vae_lr)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        on_step(step, {"mse": mse.item()})
    vae.eval()


@torch.no_grad()
def latent_scale(vae, config: WorldTrainConfig, count: int = 256) -> float:
    """1 / std of the latents of ``count`` fresh scenes: the VAE's ``scaling_factor`` (as SD's 0.18215)."""
    rng = np.random.default_rng([config.seed, 9])
    images = _images([draw_training_scene(rng, False) for _ in range(count)]).to(config.device)
    latents = vae.encode(images).latent_dist.mean
    return float(1 / latents.std())


def train_denoiser(components: dict, config: WorldTrainConfig, start: int, optimizer, ema, on_step) -> None:
    from diffusers import DDPMScheduler
    from diffusers.training_utils import compute_snr

    tokenizer, text_encoder, unet, vae = (components[k] for k in ("tokenizer", "text_encoder", "unet", "vae"))
    noise_scheduler = DDPMScheduler(**SCHEDULE)
    scale = vae.config.scaling_factor
    params = [p for m in (text_encoder, unet) for p in m.parameters()]
    text_encoder.train(), unet.train()
    for step, (images, captions, boxes) in enumerate(stage_batches(config, 2, start, config.steps), start):
        _, gen = batch_rng(config, 2, step)
        with torch.no_grad():
            posterior = vae.encode(images.to(config.device)).latent_dist
            draw = torch.randn(posterior.mean.shape, generator=gen).to(config.device)
            latents = (posterior.mean + posterior.std * draw) * scale
        noise = torch.randn(latents.shape, generator=gen).to(config.device)
        timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (config.batch,), generator=gen)
        timesteps = timesteps.to(config.device)
        ids = tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                        return_tensors="pt").input_ids.to(config.device)
        prediction = unet(noise_scheduler.add_noise(latents, noise, timesteps), timesteps, text_encoder(ids)[0]).sample
        target = noise_scheduler.get_velocity(latents, noise, timesteps)
        weights = object_pixel_weights(boxes.to(config.device), config.object_weight)
        loss = ((F.mse_loss(prediction, target, reduction="none") * weights).mean(dim=(1, 2, 3))
                * snr_weights(compute_snr(noise_scheduler, timesteps), config.snr_gamma)).mean()
        for group in optimizer.param_groups:
            group["lr"] = _lr(config, step, config.steps, config.lr)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        ema.step(params)
        on_step(step, {"loss": loss.item()})


def object_pixel_weights(boxes: torch.Tensor, object_weight: float) -> torch.Tensor:
    """(B, 1, 32, 32) latent-pixel weights of the loss, each picture's averaging 1: ``object_weight`` times more
    on the objects' :func:`object_boxes` (B, 1, 64, 64) than on the background.

    Why: a circle and a square of one size differ on 2-3 % of a picture's pixels, a stripe pattern covers all
    of them, so under a uniform loss the shape words get a sliver of the gradient. Measured (docs/evaluation.md):
    a weight of 5 draws the asked shape more often (34 % -> 45 %) and a stray second object more often too
    (one object 75 % -> 65 %), so the shipped weights were trained without it (``object_weight`` 1).
    """
    weights = 1 + (object_weight - 1) * F.avg_pool2d(boxes, 2)  # the VAE halves
    return weights / weights.mean(dim=(1, 2, 3), keepdim=True)


def snr_weights(snr: torch.Tensor, gamma: float) -> torch.Tensor:
    """Weights (B,) of the v-MSE that weight the error of the clean latent by ``min(snr, gamma) + 1``.

    Min-SNR-gamma alone weights it by ``min(snr, gamma)``: about 0.03 at t = 900 of the cosine schedule, so the
    noisiest steps, the only ones where the caption decides which background, colour and shape appear (later
    the noisy latent shows them), hardly trained, and the model learned to denoise patterns without reading
    their words. The ``+ 1`` gives those steps the weight of a plain x0 loss; v-MSE is ``(snr + 1)`` times the
    x0 error, hence the division.
    """
    return (torch.clamp(snr, max=gamma) + 1) / (snr + 1)


def _optimizer(params, lr: float) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=lr, weight_decay=1e-2)


def _optimizer_tensors(optimizer: torch.optim.Optimizer, prefix: str) -> dict[str, torch.Tensor]:
    tensors = {}
    for i, state in optimizer.state_dict()["state"].items():
        for key, value in state.items():
            tensors[f"{prefix}.{i}.{key}"] = value.cpu() if torch.is_tensor(value) else torch.tensor(value)
    return tensors


def _load_optimizer_tensors(optimizer: torch.optim.Optimizer, tensors: dict, prefix: str) -> None:
    state = optimizer.state_dict()
    found: dict[int, dict] = {}
    for name, value in tensors.items():
        if name.startswith(prefix + "."):
            _, index, key = name.split(".", 2)
            found.setdefault(int(index), {})[key] = value
    state["state"] = found
    optimizer.load_state_dict(state)


def save_checkpoint(folder: Path, components: dict, optimizers: dict, ema, progress: dict) -> None:
    """``folder/weights.safetensors`` (models, EMA, optimiser state) and ``folder/progress.json``; atomic."""
    from safetensors.torch import save_file

    tensors = {}
    for name in ("text_encoder", "unet", "vae"):
        tensors.update({f"{name}.{k}": v.cpu().contiguous() for k, v in components[name].state_dict().items()})
    tensors.update({f"ema.{i}": p.cpu().contiguous() for i, p in enumerate(ema.shadow_params)})
    for name, optimizer in optimizers.items():
        tensors.update(_optimizer_tensors(optimizer, f"optim_{name}"))
    partial = folder.with_name(folder.name + ".partial")
    partial.mkdir(parents=True, exist_ok=True)
    save_file(tensors, partial / "weights.safetensors")
    (partial / "progress.json").write_text(json.dumps(progress, indent=2))
    if folder.exists():
        for child in folder.iterdir():
            child.unlink()
        folder.rmdir()
    partial.rename(folder)


def load_checkpoint(folder: Path, components: dict, optimizers: dict, ema) -> dict:
    from safetensors.torch import load_file

    tensors = load_file(folder / "weights.safetensors")
    for name in ("text_encoder", "unet", "vae"):
        prefix = name + "."
        components[name].load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
    for i, shadow in enumerate(ema.shadow_params):
        shadow.copy_(tensors[f"ema.{i}"])
    for name, optimizer in optimizers.items():
        _load_optimizer_tensors(optimizer, tensors, f"optim_{name}")
    return json.loads((folder / "progress.json").read_text())


def _ema_pipeline(components: dict, ema):
    """A ``StableDiffusionPipeline`` of copies of the models, the trained ones holding the EMA weights."""
    import copy

    from diffusers import StableDiffusionPipeline

    parts = {k: copy.deepcopy(v) if k in ("text_encoder", "unet", "vae") else v for k, v in components.items()}
    ema.copy_to([p for m in (parts["text_encoder"], parts["unet"]) for p in m.parameters()])
    return StableDiffusionPipeline(**parts, safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def save_pipeline(components: dict, ema, folder: Path) -> None:
    """The EMA weights as a stock ``StableDiffusionPipeline`` folder in fp16 safetensors (about 6 MB)."""
    _ema_pipeline(components, ema).to(torch.float16).save_pretrained(folder, safe_serialization=True)


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


def train_world_model(out: Path, config: WorldTrainConfig = WorldTrainConfig(), *, log=print) -> Path:
    """Trains ``builtin:shapes`` into ``out`` (``out/pipeline`` is the diffusers folder); resumes from
    ``out/checkpoint`` when it is there. Returns the pipeline folder."""
    from diffusers.training_utils import EMAModel
    from tqdm.auto import tqdm

    torch.set_num_threads(config.threads)
    out.mkdir(parents=True, exist_ok=True)
    components = build_shapes_components(config.seed)
    vae, text_encoder, unet = components["vae"], components["text_encoder"], components["unet"]
    for model in (vae, text_encoder, unet):
        model.to(config.device)
    params = [p for m in (text_encoder, unet) for p in m.parameters()]
    optimizers = {"vae": _optimizer(vae.parameters(), config.vae_lr), "denoiser": _optimizer(params, config.lr)}
    ema = EMAModel(params, decay=config.ema_decay)
    progress = {"stage": "vae", "step": 0, "config": asdict(config), "seconds": 0.0, "log": []}
    if (out / "checkpoint").is_dir():
        progress = load_checkpoint(out / "checkpoint", components, optimizers, ema)
        vae.register_to_config(scaling_factor=progress.get("scaling_factor", 1.0))
        ema.optimization_step = progress.get("ema_step", 0)
        log(f"resuming at {progress['stage']} step {progress['step']}")
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
                if stage == "denoiser" and config.sample_grids:
                    sample_grid(components, ema, out / f"samples-{done:05d}.png", config.seed)
        return on_step

    if progress["stage"] == "vae":
        with tqdm(total=config.vae_steps, initial=progress["step"], desc="VAE", unit="step") as bar:
            train_vae(vae, config, progress["step"], optimizers["vae"], make_on_step("vae", config.vae_steps, bar))
        scale = latent_scale(vae, config)
        vae.register_to_config(scaling_factor=scale)
        progress.update(stage="denoiser", step=0, scaling_factor=scale, seconds=time.monotonic() - started)
        save_checkpoint(out / "checkpoint", components, optimizers, ema, progress)
    vae.eval().requires_grad_(False)
    with tqdm(total=config.steps, initial=progress["step"], desc="UNet + text encoder", unit="step") as bar:
        train_denoiser(components, config, progress["step"], optimizers["denoiser"], ema,
                       make_on_step("denoiser", config.steps, bar))
    save_pipeline(components, ema, out / "pipeline")
    log(f"trained in {(time.monotonic() - started) / 60:.1f} min: {out / 'pipeline'}")
    return out / "pipeline"

