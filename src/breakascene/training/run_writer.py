"""Writing a finished run folder: the pipeline (or LoRA adapters), the handles, the scene as used, scene.json.

Everything is written into the unfinished ``RUN.partial``; ``run_folder.finalize`` renames it when complete.
"""

from __future__ import annotations

import importlib.metadata
import platform
from pathlib import Path

import torch

from .. import masks as mask_ops
from ..config import ExtractConfig
from ..figures import attention_figure
from ..handles import Handle, merge_handles, save_handles
from ..lora import LORA_WEIGHTS_FILE, save_lora
from ..models.loading import Components
from ..run_folder import HANDLES_FILE
from ..run_info import HandleInfo, LoraInfo, RunInfo
from ..scene import Scene


def library_versions() -> dict[str, str]:
    """The versions of Python and of every library a run depends on (scene.json, ``break-a-scene env``)."""
    versions = {"python": platform.python_version()}
    for name in ("break-a-scene", "torch", "diffusers", "transformers", "accelerate", "safetensors", "peft",
                 "gradio", "bitsandbytes"):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def save_attention_figure(path: Path, scene: Scene, config: ExtractConfig, handles: list[Handle],
                          maps: torch.Tensor, scores: torch.Tensor) -> None:
    """``attention/PHASE.png``: each handle's map (N, gh, gw) over the scene, beside its mask, with its score."""
    masks = mask_ops.with_background(scene.masks) if config.background else scene.masks
    path.parent.mkdir(parents=True, exist_ok=True)
    labels = [h.token for h in handles]
    attention_figure(scene.image, maps, masks, labels, scores.diagonal().tolist()).save(path)


def write_run(partial: Path, scene: Scene, config: ExtractConfig, components: Components, handles: list[Handle],
              *, attention_scores: dict, losses: list[dict], train_seconds: float) -> torch.Tensor:
    """Writes the pipeline folder, handles.safetensors, the scene folder and scene.json into ``partial``.

    Returns:
        The learned handle vectors, (K, dim) float32.
    """
    c = components
    encoders = c.family.text_encoders(c)
    vectors, *second = [merge_handles(encoder) for encoder in encoders]
    for model in (c.unet, *encoders, c.vae):
        model.to("cpu")
    alpha = config.lora_alpha or config.lora_rank
    text_lora_files = []
    if config.lora_rank:
        # Small output: the adapters in diffusers' LoRA format; the base model is loaded again to generate.
        text_lora_files = save_lora(partial, c.family.pipeline_class, c.family.denoiser_name, c.unet,
                                    c.family.named_text_encoders(c) if config.lora_text_encoder else [],
                                    config.lora_rank, alpha, c.family.text_lora_targets)
    else:
        c.family.remove_capture(c.unet)  # drop the capture hooks: the saved UNet is stock
        c.family.make_pipeline(c).save_pretrained(partial, safe_serialization=True)
    save_handles(partial / HANDLES_FILE, handles, vectors, second[0] if second else None)
    # The scene as used (resized, cropped), as a scene folder that extract reads back; <bg>'s mask beside it.
    concepts = [h.name for h in handles if not h.is_background]
    background = scene.background_mask() if config.background else None
    scene.save(partial / "scene", concepts, background=background)
    lora = None
    if config.lora_rank:
        files = dict(zip([name for name, _ in c.family.named_text_encoders(c)], text_lora_files))
        lora = LoraInfo(config.lora_rank, alpha, LORA_WEIGHTS_FILE, files.get("text_encoder"), files.get("text_encoder_2"))
    RunInfo(
        base_model=config.model,
        vae=config.vae,
        pipeline=c.family.pipeline_class.__name__,
        resolution=config.resolution,
        prediction_type=c.prediction_type,
        lora=lora,
        handles=[HandleInfo(h.name, h.token, h.init_word, h.is_background) for h in handles],
        masks=list(scene.mask_names),
        seed=config.seed,
        steps={phase.name: phase.steps for phase in config.phases},
        total_steps=config.total_steps,
        train_seconds_this_process=train_seconds,
        attention_scores=attention_scores,
        losses=losses,
        config=config.to_dict(),
        versions=library_versions(),
    ).write(partial)
    return vectors
