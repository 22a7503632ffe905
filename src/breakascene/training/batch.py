"""What one training step takes (:class:`TrainBatch`, from ``Trainer.sample_batch``) and what a progress callback
gets after it (:class:`Progress`). Shapes as in :mod:`.trainer`."""

from __future__ import annotations

from dataclasses import dataclass

import torch


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
class TrainBatch:
    """One step's inputs, every random choice already made (:meth:`Trainer.sample_batch`).

    Row 0 is the scene (or a collection image); with prior preservation row 1 is a class image, unless nothing
    the phase trains can receive its loss (``prior_skipped``: the row was drawn, then dropped).
    """

    noisy_latents: torch.Tensor  # (B, C, h, w) float32 on the device: latents noised at ``timesteps``
    timesteps: torch.Tensor  # (B,) on the device: int64 steps 0..999, or float (flow matching: 1000 * sigma)
    target: torch.Tensor  # (B, C, h, w): what the denoiser should predict (noise, or velocity)
    prompts: list[str]  # B prompts: "a photo of <asset0> and <bg>" [, the class prompt]
    # the prompts to encode, tokenized on the CPU (family.tokenize): (B, T), (B, E, T), FLUX's FluxTokens; only
    # row 0 when ``class_conditioning`` holds the class row's encoding
    input_ids: object
    latent_mask: torch.Tensor | None  # (1, h, w) float {0,1}: the union of the subset's masks; None: unmasked loss
    grid_masks: torch.Tensor | None  # (k, gh, gw) float {0,1}: the subset's masks; None: no attention loss
    handle_positions: list[int]  # k token positions of the subset's handles in ``input_ids[0]``
    subset: list[int]  # the k handles this step trains, indices into the trainer's handles
    flip: bool  # row 0 is the mirror image
    prior: bool  # row 1 is a class image (prior preservation)
    size_conditioning: torch.Tensor | None = None  # (rows of input_ids, 6) for a family that takes one (SDXL)
    prior_skipped: bool = False  # prior preservation, but the class row was dropped: its loss is not computed
    class_conditioning: object | None = None  # the class prompt's encoding (1 row), fixed for the phase
